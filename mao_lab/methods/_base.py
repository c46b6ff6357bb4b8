"""The one interface every task-balancing method implements, so that comparisons are fair.

A method owns its optimizer state and turns a *closure* that yields the per-task losses of the current
batch into parameter updates.  Methods that need one forward pass call the closure once; the
independent-steps family calls it once per task (group).  The training loop is the same for all::

    method = mao_lab.methods.make("pcgrad", model.parameters(), lr=1e-3)
    for x, y in loader:
        losses = method.step(lambda: task_losses(model(x), y))
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._observe import ObservableMixin, StepRecord
from .._task_gradients import TaskInputError, TaskLosses, as_task_losses

__all__ = ["LossClosure", "Method"]

LossClosure = Callable[[], TaskLosses]
"""Runs the forward pass on the current batch and returns the per-task losses."""


class Method(ObservableMixin, ABC):
    """A task-balancing method behind the lab's single training-step interface.

    Subclasses implement :meth:`_step`.  The base class validates the closure's losses, fixes the
    number of tasks at the first step (``num_tasks``), and hands observers (the recorder) a
    :class:`~mao_lab.StepRecord` when they ask for one.

    Attributes:
        name: the registry name (see :func:`mao_lab.methods.available`).
        params: the trainable parameters, in a fixed order.
        num_tasks: the number of tasks, given or fixed by the first step.
    """

    name: ClassVar[str] = ""

    def __init__(self, params: Iterable[Tensor], *, num_tasks: int | None = None) -> None:
        self.params: list[Tensor] = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError(f"{type(self).__name__}: no trainable parameters (all have requires_grad=False?)")
        if num_tasks is not None and num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        self.num_tasks = num_tasks
        self.steps_taken = 0

    def step(self, closure: LossClosure) -> Tensor:
        """Run one training step on the current batch; return the per-task losses seen (detached, ``(T,)``).

        For methods that take several sub-steps per batch, the returned losses are those of the
        first forward pass, before any parameter moved.
        """
        if not callable(closure):
            raise TypeError("Method.step needs a closure that returns the per-task losses of the batch")
        observers = self._observers_wanting_record()
        record = self._step(closure, record=bool(observers))
        self.num_tasks = len(record.task_names)  # fixed only once a step has succeeded
        self.steps_taken += 1
        if observers:
            self._notify(observers, record)
        return record.losses

    @abstractmethod
    def _step(self, closure: LossClosure, record: bool) -> StepRecord:
        """Update the parameters; return a record (``task_grads``/``task_updates`` only when ``record``)."""

    # -- helpers for subclasses ------------------------------------------------------------------------

    def _losses(self, closure: LossClosure) -> tuple[tuple[str, ...], list[Tensor]]:
        """Call the closure (with autograd on) and validate its losses and their count."""
        with torch.enable_grad():
            names, losses = as_task_losses(closure())
        self._check_num_tasks(len(names))
        return names, losses

    def _check_num_tasks(self, num_tasks: int) -> None:
        if self.num_tasks is not None and num_tasks != self.num_tasks:
            raise TaskInputError(
                f"method {self.name!r} is set up for {self.num_tasks} tasks, but the closure returned {num_tasks}"
            )

    # -- state ------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: subclasses extend :meth:`_extra_state` and optimizer states."""
        return {"num_tasks": self.num_tasks, "steps_taken": self.steps_taken, **self._extra_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_tasks = state["num_tasks"]
        self.steps_taken = state["steps_taken"]
        self._load_extra_state(state)

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, num_tasks={self.num_tasks})"
