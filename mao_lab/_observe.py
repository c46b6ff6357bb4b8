"""What a training step tells the instruments: the record and the observer protocol."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor
from torch.utils.hooks import RemovableHandle

from ._task_gradients import TaskGradients, TaskUpdates

__all__ = ["StepObserver", "StepRecord", "ObservableMixin"]


@dataclass(frozen=True)
class StepRecord:
    """Everything a method knows about one training step, handed to observers after the update.

    Attributes:
        task_names: the tasks, in order.
        losses: the per-task losses of the step, detached, shape ``(T,)``.
        task_grads: every task's gradient of the parameters (``None`` for a method that never forms them).
        task_updates: every task's contribution to the parameter change, so that the step moved each
            parameter by ``-sum_k task_updates[k]`` (plus decoupled weight decay, which belongs to no
            task); what it is for each method is defined in :mod:`mao_lab.methods._contributions`.
            ``None`` when the method cannot split its update by task.
    """

    task_names: tuple[str, ...]
    losses: Tensor
    task_grads: TaskGradients | None
    task_updates: TaskUpdates | None


@runtime_checkable
class StepObserver(Protocol):
    """Something that watches training steps (the recorder is one)."""

    def wants_record(self) -> bool:
        """Asked before each step: should the coming step build a full :class:`StepRecord`?"""

    def __call__(self, record: StepRecord) -> None:
        """Receive the record of a step that asked for one."""


class ObservableMixin:
    """Gives a method or optimizer a list of observers, and builds records only when one wants them."""

    _observers: OrderedDict[int, StepObserver]

    def add_observer(self, observer: StepObserver) -> RemovableHandle:
        """Attach an observer; ``handle.remove()`` detaches it."""
        if not isinstance(observer, StepObserver):
            raise TypeError("an observer needs wants_record() and __call__(record)")
        if not hasattr(self, "_observers"):
            self._observers = OrderedDict()  # RemovableHandle keeps a weak reference: a plain dict has none
        handle = RemovableHandle(self._observers)
        self._observers[handle.id] = observer
        return handle

    def _observers_wanting_record(self) -> list[StepObserver]:
        return [o for o in getattr(self, "_observers", {}).values() if o.wants_record()]

    @staticmethod
    def _notify(observers: list[StepObserver], record: StepRecord) -> None:
        for observer in observers:
            observer(record)
