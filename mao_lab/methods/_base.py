"""The one interface every task-balancing method implements, so that comparisons are fair.

A method owns its optimizer state and turns a *closure* that yields the per-task losses of the current
batch into parameter updates.  Methods that need one forward pass call the closure once; the
independent-steps family calls it once per task (group).  The training loop is the same for all::

    method = mao_lab.methods.make("pcgrad", model.parameters(), lr=1e-3)
    for x, y in loader:
        losses = method.step(lambda: task_losses(model(x), y))

A new method is one class (see ``docs/adding-a-method.md``): it declares the hyperparameters it adds
(``hyperparameters``), implements :meth:`Method._step`, and is registered with
:func:`mao_lab.methods.register`; everything else (checks, task identity, roll-back, checkpoints)
is here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer

from .._checkpoints import CheckpointError
from .._clipping import check_max_norm, refuse_written_grads
from .._copies import copyable_state
from .._distributed import DistributedSetting
from .._gradient_path import GradientPath
from .._loss_scaling import (
    LossScaleOverflow,
    check_eps_for_dtypes,
    in_callers_autocast,
    loss_scale,
    outside_autocast,
    report_found_inf,
)
from .._memory import tasks_reaching
from .._observe import ObservableMixin, StepRecord
from .._task_gradients import TaskInputError, TaskLosses, ordered_task_losses
from .._validate import ADAM_HYPERPARAMETERS, Hyperparameter, checked, integer, merged_spec
from ._transaction import all_or_nothing

__all__ = ["LossClosure", "Method", "OptimizerMethod", "trainable_parameters"]

_ADAM_NAMES = frozenset(ADAM_HYPERPARAMETERS)  # the hyperparameters a parameter group holds and a scheduler sets

LossClosure = Callable[[], TaskLosses]
"""Runs the forward pass on the current batch and returns the per-task losses."""


def trainable_parameters(params: Iterable[Tensor], owner: str) -> list[Tensor]:
    """The tensors of ``params`` that require gradients, in order; a tensor listed twice is refused
    (it would be stepped twice per step).

    >>> w = torch.zeros(2, requires_grad=True)
    >>> trainable_parameters([w, w], "sum")
    Traceback (most recent call last):
    ...
    ValueError: sum: parameter 1 (shape (2,)) is listed twice (it is parameter 0); list every parameter once
    """
    if isinstance(params, Tensor):
        raise TypeError(f"{owner}: params must be an iterable of tensors (e.g. model.parameters()), got one tensor")
    kept: list[Tensor] = []
    first_at: dict[int, int] = {}
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(
                f"{owner}: parameter {i} is a {type(p).__name__}, not a tensor (parameter groups "
                "are for mao_lab.MAO; a method takes one flat list)"
            )
        if id(p) in first_at:
            raise ValueError(
                f"{owner}: parameter {i} (shape {tuple(p.shape)}) is listed twice (it is parameter "
                f"{first_at[id(p)]}); list every parameter once"
            )
        first_at[id(p)] = i
        if p.requires_grad:
            kept.append(p)
    if not kept:
        raise ValueError(f"{owner}: no trainable parameters (all have requires_grad=False?)")
    return kept


class Method(ObservableMixin, Optimizer, ABC):
    """A task-balancing method behind the lab's single training-step interface.

    A method is a :class:`torch.optim.Optimizer`: PyTorch's learning-rate schedulers drive it
    (``StepLR(method, ...)``), Lightning wraps it, ``zero_grad`` clears its parameters' gradients.  Its
    :attr:`param_groups` (one group) are those of the optimizer that steps the parameters (``method.base``'s
    Adam or SGD, or the per-task optimizer of MAO and MTAdam), so a rate a scheduler writes there is the
    rate of the next step, and :attr:`hparams` shows it.  Optimizers that follow it (IO's per-group
    ones, a weighting's own) take its rate at every step.

    Subclasses declare the hyperparameters they add (``hyperparameters``, merged with their bases';
    the values are in :attr:`hparams`) and implement :meth:`_step`.  The base class checks the
    hyperparameters, validates the closure's losses, fixes the tasks at the first step (their
    number and, for losses given as a dict, their names: later steps match tasks by name), rolls a
    failed step back (:func:`~mao_lab.methods._transaction.all_or_nothing`), saves and loads state,
    and hands observers (the recorder) a :class:`~mao_lab.StepRecord` when they ask for one.

    Attributes:
        name: the registry name (set by :func:`mao_lab.methods.register`).
        hparams: the hyperparameters, checked (read-only mapping).
        params: the trainable parameters, in a fixed order.
        num_tasks: the number of tasks, given or fixed by the first step.
        task_names: the tasks' names in the order of the per-task state, fixed by the first step.
        steps_taken: steps that succeeded.
        skipped_steps: steps skipped because a loss-scaled gradient overflowed (``grad_scaler``).

    Besides the hyperparameters, the constructor takes options of the training stack (not saved
    with the state): ``distributed`` (data parallelism: ``None`` averages the loss values and every
    gradient over the default process group whenever ``torch.distributed`` runs several processes,
    ``False`` never, or a ``ProcessGroup`` / the ``DistributedDataParallel`` module; see
    :class:`~mao_lab._distributed.DistributedSetting`), ``max_grad_norm`` (clip the gradient the
    method steps with, as ``clip_grad_norm_`` before ``Adam.step``) and ``max_task_grad_norm``
    (clip every task's gradient before the method combines them).

    Copies (``copy.deepcopy``, ``pickle``) copy everything but the observers and the hooks, as
    ``torch.optim`` copies drop their hooks; copy the method *together with its model*
    (``copy.deepcopy((model, method))``) so that the copy steps the copied parameters.
    """

    name: ClassVar[str] = ""
    hyperparameters: ClassVar[Mapping[str, Hyperparameter]] = ADAM_HYPERPARAMETERS
    #: Methods that move the parameters more than once per step (IUS, IO, grouping, FAMO): a failure
    #: after a move must put them back, so every step first copies them and the whole state.
    moves_parameters_during_step: ClassVar[bool] = False
    #: Entries of :meth:`_method_state` a checkpoint may lack (a balancer not built yet); the others it must hold.
    _optional_state_entries: ClassVar[frozenset[str]] = frozenset({"balancer"})
    #: ``torch.amp.GradScaler.step(method, closure)`` hands the scaler to :meth:`step` (``grad_scaler``).
    _step_supports_amp_scaling: ClassVar[bool] = True
    #: How this step's gradients are made (set by :meth:`step` for the step's duration).
    _path: GradientPath = GradientPath()

    def __init__(
        self,
        params: Iterable[Tensor],
        *,
        num_tasks: int | None = None,
        distributed: Any = None,
        max_grad_norm: float | None = None,
        max_task_grad_norm: float | None = None,
        **hyperparameters: Any,
    ) -> None:
        owner = self.name or type(self).__name__
        self._hparams: dict[str, Any] = checked(merged_spec(type(self)), hyperparameters, owner)
        self.params: list[Tensor] = trainable_parameters(params, owner)
        self.num_tasks = None if num_tasks is None else integer(1).check("num_tasks", num_tasks)
        self.task_names: tuple[str, ...] | None = None
        self.steps_taken = 0
        self.skipped_steps = 0
        self.distributed = DistributedSetting(distributed)
        self.max_grad_norm = check_max_norm("max_grad_norm", max_grad_norm)
        self.max_task_grad_norm = check_max_norm("max_task_grad_norm", max_task_grad_norm)
        # The method's own group, until a subclass makes the optimizer that leads (_lead_optimizer).
        Optimizer.__init__(self, self.params, {k: v for k, v in self._hparams.items() if k in _ADAM_NAMES})

    # -- the torch.optim.Optimizer face ---------------------------------------------------------------

    @property
    def hparams(self) -> Mapping[str, Any]:
        """The hyperparameters, checked (read-only); the ones a scheduler can change (``lr``, ``betas``,
        ``eps``, ``weight_decay``) as the parameter group holds them now."""
        group = self.param_groups[0]
        return MappingProxyType({k: group.get(k, v) if k in _ADAM_NAMES else v for k, v in self._hparams.items()})

    @property  # type: ignore[override]
    def param_groups(self) -> list[dict[str, Any]]:
        """The one parameter group, that of the optimizer that steps the parameters (read by schedulers)."""
        lead = self._lead_optimizer()
        return self.__dict__["_own_param_groups"] if lead is None else lead.param_groups

    @param_groups.setter
    def param_groups(self, groups: list[dict[str, Any]]) -> None:
        self.__dict__["_own_param_groups"] = groups

    @property  # type: ignore[override]
    def defaults(self) -> dict[str, Any]:
        """The leading optimizer's defaults (``OneCycleLR`` looks for ``betas`` or ``momentum`` there)."""
        lead = self._lead_optimizer()
        return self.__dict__["_own_defaults"] if lead is None else lead.defaults

    @defaults.setter
    def defaults(self, defaults: dict[str, Any]) -> None:
        self.__dict__["_own_defaults"] = defaults

    def _lead_optimizer(self) -> Optimizer | None:
        """The optimizer whose parameter groups are the method's (``None`` while there is none yet)."""
        return None

    def _follow_lead(self) -> None:
        """Give the optimizers that follow the leading one its hyperparameters (before a step or a save)."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if self.__dict__.get("_own_param_groups"):
            raise ValueError(
                f"method {self.name!r} steps one flat list of parameters; parameter groups are for mao_lab.MAO"
            )
        super().add_param_group(param_group)

    def __getstate__(self) -> dict[str, Any]:
        return copyable_state(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        Optimizer.__setstate__(self, state)

    @classmethod
    def hyperparameter_spec(cls) -> dict[str, Hyperparameter]:
        """Every hyperparameter this method takes: its own and its bases', in declaration order."""
        return merged_spec(cls)

    def step(self, closure: LossClosure, *, grad_scaler: Any = None) -> Tensor:
        """Run one training step on the current batch; return the per-task losses seen (detached, ``(T,)``).

        The losses come back in the order of :attr:`task_names`.  For methods that take several
        sub-steps per batch, they are those of the first forward pass, before any parameter moved.
        If the step raises, the parameters and the method's state are as they were before it.

        With ``grad_scaler`` (a ``torch.amp.GradScaler``; ``scaler.step(method, closure)`` passes it)
        the losses are backpropagated times its scale; a step whose gradients overflow changes
        nothing, is counted in :attr:`skipped_steps`, and ``scaler.update()`` lowers the scale.
        Under ``torch.distributed`` every process takes the same step (see ``distributed``).  Under
        ``torch.autocast`` the closure's forward pass is autocast, the method's own arithmetic is not.
        """
        if not callable(closure):
            raise TypeError("Method.step needs a closure that returns the per-task losses of the batch")
        owner = f"method {self.name!r}"
        refuse_written_grads(self.params, owner)
        if self.hparams.get("optimizer", "adam") == "adam" and "eps" in self.hparams:
            check_eps_for_dtypes(self.params, self.hparams["eps"], owner)
        observers = self._observers_wanting_record()
        self._follow_lead()
        setting = self.__dict__.get("distributed") or DistributedSetting()
        self._path = GradientPath(
            replicas=setting.resolve(self.params, owner),
            scale=loss_scale(grad_scaler),
            max_task_grad_norm=self.__dict__.get("max_task_grad_norm"),
            max_grad_norm=self.__dict__.get("max_grad_norm"),
        )
        self._first_losses: Tensor | None = None
        try:
            # Under the caller's torch.autocast only the closure's forward pass is autocast.
            forward = in_callers_autocast(closure)
            with all_or_nothing(self), outside_autocast():
                record = self._step(forward, record=bool(observers))
        except LossScaleOverflow:
            self.skipped_steps = self.__dict__.get("skipped_steps", 0) + 1
            report_found_inf(grad_scaler, self, True)
            assert self._first_losses is not None
            return self._first_losses
        finally:
            del self._path  # back to the class default: a process group is never copied with the method
            self.__dict__.pop("_first_losses", None)
        report_found_inf(grad_scaler, self, False)
        self.task_names = record.task_names  # fixed only once a step has succeeded
        self.num_tasks = len(record.task_names)
        self.steps_taken += 1
        lead = self._lead_optimizer()
        if lead is not None:  # a scheduler of the leading optimizer itself counts this step as its own
            lead._opt_called = True  # type: ignore[attr-defined]
        if observers:
            self._notify(observers, record)
        return record.losses

    @abstractmethod
    def _step(self, closure: LossClosure, record: bool) -> StepRecord:
        """Update the parameters; return a record (``task_grads``/``task_updates`` only when ``record``).

        Update the optimizer state last, once every check has passed: a step that raises is rolled
        back, but only :attr:`moves_parameters_during_step` methods have their optimizer state copied.
        """

    # -- memory -----------------------------------------------------------------------------------------

    def state_bytes(
        self, num_tasks: int | None = None, *, reach: Mapping[Tensor, Collection[int]] | None = None
    ) -> int:
        """The bytes of the optimizer state (``state_dict()["optimizer"]``, what grows with the model) once
        every parameter has been stepped, for ``num_tasks`` tasks (default: the method's).  ``reach``:
        the tasks reaching each parameter (one not listed: every task).  See :func:`mao_lab.state_bytes`."""
        if num_tasks is None:
            num_tasks = self.num_tasks
        if num_tasks is None:
            raise ValueError(f"method {self.name!r}: state_bytes needs num_tasks (the method has not stepped yet)")
        return self._state_bytes(num_tasks, reach)

    def _state_bytes(self, num_tasks: int, reach: Mapping[Tensor, Collection[int]] | None) -> int:
        """:meth:`state_bytes`, for a method family (the base has no optimizer state)."""
        tasks_reaching(num_tasks, reach)  # checks the arguments
        return 0

    # -- helpers for subclasses ------------------------------------------------------------------------

    def _losses(self, closure: LossClosure) -> tuple[tuple[str, ...], list[Tensor]]:
        """Call the closure (with autograd on), validate its losses, and put the tasks in state order."""
        with torch.enable_grad():
            names, losses = ordered_task_losses(closure(), self.task_names)
            self._check_num_tasks(len(names))
            losses = self._path.losses(losses)  # under torch.distributed: the values averaged over processes
        if self.__dict__.get("_first_losses", 0) is None:
            self._first_losses = torch.stack([loss.detach().reshape(()) for loss in losses])
        return names, losses

    def _check_num_tasks(self, num_tasks: int) -> None:
        if self.num_tasks is not None and num_tasks != self.num_tasks:
            raise TaskInputError(
                f"method {self.name!r} is set up for {self.num_tasks} tasks, but the closure returned {num_tasks}"
            )

    # -- state ------------------------------------------------------------------------------------------
    #
    # One hook pair, _method_state / _load_method_state, overridden cooperatively (each class adds its
    # entries to super()'s).  The base adds the bookkeeping every method has (which method, the tasks,
    # the step count); a step that fails is rolled back, and a checkpoint loaded, through the same pair.

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume; ``"method"`` says which method it came from."""
        self._follow_lead()
        return {**self._bookkeeping(), **self._method_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`.  Everything is checked first (the method it came from, the
        tasks, the moments' shapes against the parameters); a state that does not fit raises
        :class:`~mao_lab.CheckpointError` and leaves the method exactly as it was."""
        self._check_bookkeeping(state)
        try:
            with all_or_nothing(self, everything=True):
                self._restore(state)
        except (CheckpointError, torch.OutOfMemoryError):
            raise
        except Exception as error:  # an entry the checks let through but the load could not take
            raise CheckpointError(f"method {self.name!r}: the state does not fit: {error}") from None

    def _method_state(self) -> dict[str, Any]:
        """The method's state beside the bookkeeping the base saves: a dict of entries, each class adding
        its own to ``super()._method_state()``'s.

        The entry ``"optimizer"`` holds the large state (the moments), which a step updates last, once
        every check has passed: a failed step is rolled back to a copy of every *other* entry.
        """
        return {"optimizer": None}

    def _load_method_state(self, state: Mapping[str, Any]) -> None:
        """Load the entries of :meth:`_method_state`: check those you read (raise
        :class:`~mao_lab.CheckpointError` naming the problem), then call ``super()._load_method_state(state)``,
        then set your attributes, so that a state that does not fit changes nothing.

        ``state`` comes from a checkpoint, or is the snapshot a failed step is rolled back to; the
        snapshot has no ``"optimizer"`` entry (the optimizer was not touched): keep the optimizer then.
        """

    def _bookkeeping(self) -> dict[str, Any]:
        return {
            "method": self.name,
            "task_names": None if self.task_names is None else list(self.task_names),
            "num_tasks": self.num_tasks,
            "steps_taken": self.steps_taken,
        }

    def _restore(self, state: Mapping[str, Any]) -> None:
        """Load a state whose bookkeeping is checked (a checkpoint, or a snapshot to roll back to)."""
        self._load_method_state(state)  # checks its entries before it changes anything
        self.task_names = None if state["task_names"] is None else tuple(state["task_names"])
        self.num_tasks = state["num_tasks"]
        self.steps_taken = state["steps_taken"]

    def _check_bookkeeping(self, state: object) -> None:
        if not isinstance(state, Mapping):
            raise CheckpointError(f"method {self.name!r}: a state_dict is a dict, got {type(state).__name__}")
        missing = [k for k in ("method", "task_names", "num_tasks", "steps_taken", "optimizer") if k not in state]
        if missing:
            raise CheckpointError(f"method {self.name!r}: not a method state_dict (missing {', '.join(missing)})")
        if state["method"] != self.name:
            raise CheckpointError(f"a state of method {state['method']!r} cannot be loaded into method {self.name!r}")
        # An entry missing would be kept as it is (as in a roll-back): refuse it instead.
        missing = [k for k in self._method_state() if k not in state and k not in self._optional_state_entries]
        if missing:
            raise CheckpointError(f"method {self.name!r}: the state lacks the entries {', '.join(missing)}")
        num_tasks, names = state["num_tasks"], state["task_names"]
        if num_tasks is not None and (isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1):
            raise CheckpointError(f"method {self.name!r}: num_tasks must be None or an integer >= 1, got {num_tasks!r}")
        if names is not None and (
            not isinstance(names, (list, tuple))
            or len(names) != num_tasks
            or not all(isinstance(n, str) for n in names)
            or len(set(names)) != len(names)
        ):
            raise CheckpointError(f"method {self.name!r}: task_names must be {num_tasks} distinct names, got {names!r}")
        steps = state["steps_taken"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise CheckpointError(f"method {self.name!r}: steps_taken must be an integer >= 0, got {steps!r}")
        if self.num_tasks is not None and num_tasks is not None and num_tasks != self.num_tasks:
            raise CheckpointError(
                f"method {self.name!r} is set up for {self.num_tasks} tasks; the state is for {num_tasks}"
            )
        if self.task_names is not None and names is not None and set(names) != set(self.task_names):
            raise CheckpointError(
                f"method {self.name!r} trains the tasks {self.task_names}; the state is for {tuple(names)}"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, num_tasks={self.num_tasks})"


class OptimizerMethod(Method):
    """A method whose optimizer state is all in ``self.optimizer``, an optimizer with ``state_dict``,
    ``check_state_dict`` and ``load_state_dict`` (:class:`mao_lab.MAO`, MTAdam)."""

    optimizer: Any

    def _lead_optimizer(self) -> Optimizer | None:
        return self.__dict__.get("optimizer")

    def _state_bytes(self, num_tasks: int, reach: Mapping[Tensor, Collection[int]] | None) -> int:
        return int(self.optimizer.state_bytes(num_tasks, reach=reach))

    def _method_state(self) -> dict[str, Any]:
        return {**super()._method_state(), "optimizer": self.optimizer.state_dict()}

    def _load_method_state(self, state: Mapping[str, Any]) -> None:
        if "optimizer" in state:
            self.optimizer.check_state_dict(state["optimizer"])
        super()._load_method_state(state)
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
