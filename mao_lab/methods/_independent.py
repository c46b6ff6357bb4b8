"""Independent update steps (Pascal et al., arXiv 2109.11678): SUS, IUS, IO and random task grouping.

One batch, several optimizer steps: the tasks are split into groups, and for each group in turn the
closure runs a forward pass on the current parameters, the group's summed loss is backpropagated, and
an optimizer steps.  :class:`IndependentStepsMethod` is that loop, parameterised by

- the group size ``s`` (``None``: all tasks in one group),
- the partition policy: consecutive tasks in order, or a random partition drawn once or every step,
- one optimizer shared by all groups (moments and step counts shared) or one per group.

===========  ==============  ====================  =====================
name         group size      partition             optimizers
===========  ==============  ====================  =====================
sus          all (``T``)     —                     one
ius          ``group_size``  in task order         one, shared
io           ``group_size``  in task order         one per group
grouping     ``group_size``  random, once or anew  one, shared
===========  ==============  ====================  =====================

A parameter that a group's loss does not reach (another task's head) gets no gradient at that group's
sub-step (``None``: Adam leaves it and its moments alone), as ``zero_grad(set_to_none=True)`` does in
today's PyTorch.  The authors' code ran on torch 1.2, whose ``zero_grad`` zeroed the gradients instead,
so the shared Adam decayed the moments of the parameters the group does not reach and moved them on
their stale momentum; ``unreached_grad="zero"`` reproduces that (it changes the trajectories, not only
a scale).

A step costs one forward and one backward pass per group.  The losses it returns are those of the
first forward pass, before any parameter moved.  If any sub-step fails (a NaN loss at the third
forward pass, say), the parameters and every optimizer are put back as they were before the step.
All written here (TorchJD has no equivalent).

>>> import torch
>>> from mao_lab.methods import make
>>> p = torch.zeros(1, requires_grad=True)
>>> calls = []
>>> def closure():
...     calls.append(p.item())
...     return [(p - 1).pow(2).sum(), (p + 1).pow(2).sum()]
>>> ius = make("ius", [p], lr=0.1, optimizer="sgd")
>>> ius.step(closure)  # two forward passes: the second sees the parameter moved by task 0
tensor([1., 1.])
>>> [round(c, 4) for c in calls], round(p.item(), 4)
([0.0, 0.2], -0.04)
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from .._checkpoints import CheckpointError
from .._memory import tasks_reaching
from .._observe import StepRecord
from .._task_gradients import TaskGradients, TaskInputError, TaskUpdates
from .._validate import ADAM_HYPERPARAMETERS, Hyperparameter, boolean, choice, integer
from ._base import LossClosure
from ._base_optimizer import BaseOptimizer, SteppedMethod
from ._common import Seeded, check_finite_gradients
from ._registry import register

__all__ = ["GroupingMethod", "IndependentStepsMethod", "IOMethod", "IUSMethod", "SUSMethod"]


class IndependentStepsMethod(SteppedMethod):
    """One optimizer step per group of tasks, with a forward pass per step.

    Subclasses set the policy with class attributes: ``group_size`` comes from the hyperparameter of
    that name (absent: all tasks in one group); ``random_groups`` draws the partition at random
    (from the method's ``seed``), anew at every step when the ``redraw`` hyperparameter is true;
    ``per_group_optimizers`` gives every group its own optimizer (own moments and step counts).
    """

    hyperparameters = {
        "unreached_grad": Hyperparameter(
            "none",
            choice("none", "zero"),
            "what a parameter the group's loss does not reach gets: 'none' (skipped) or 'zero' (torch 1.2's zero_grad)",
        )
    }
    random_groups: bool = False
    per_group_optimizers: bool = False

    @property  # type: ignore[override]
    def moves_parameters_during_step(self) -> bool:  # type: ignore[override]
        """Every group after the first sees the parameters moved: a step that fails at a later group must
        put back the parameters and the optimizers, so it copies them first.  With one group (``group_size``
        at least the number of tasks) the only optimizer step comes last, after every check: no copy."""
        return self.num_tasks is None or self._num_groups(self.num_tasks) > 1

    def __init__(self, params: Iterable[Tensor], **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.group_size: int | None = self.hparams.get("group_size")
        self.redraw: bool = self.hparams.get("redraw", False)
        self.zero_unreached: bool = self.hparams["unreached_grad"] == "zero"
        self.partition: list[tuple[int, ...]] | None = None
        # The shared optimizer is the one SteppedMethod made; per-group ones are made at the first step.
        self.optimizers: list[BaseOptimizer] = [] if self.per_group_optimizers else [self.base]
        if self.per_group_optimizers and self.num_tasks is not None:
            self._build_optimizers(self._num_groups(self.num_tasks))

    # -- groups and optimizers -----------------------------------------------------------------------

    def _num_groups(self, num_tasks: int) -> int:
        size = self.group_size or num_tasks
        return -(-num_tasks // size)

    def _build_optimizers(self, count: int) -> None:
        self.optimizers = [BaseOptimizer.from_hparams(self.params, self.hparams) for _ in range(count)]

    def _groups(self, num_tasks: int) -> list[tuple[int, ...]]:
        """This step's groups (each sorted), drawing a partition if the policy says so."""
        size = self.group_size or num_tasks
        if not self.random_groups:
            return [tuple(range(start, min(start + size, num_tasks))) for start in range(0, num_tasks, size)]
        if self.partition is None or self.redraw:
            order = torch.randperm(num_tasks, generator=self._generator).tolist()  # type: ignore[attr-defined]
            self.partition = [tuple(sorted(order[start : start + size])) for start in range(0, num_tasks, size)]
        return list(self.partition)

    def _optimizer_for(self, group: int) -> BaseOptimizer:
        return self.optimizers[group if self.per_group_optimizers else 0]

    def _state_bytes(self, num_tasks: int, reach: Mapping[Tensor, Collection[int]] | None) -> int:
        """One optimizer per group: each keeps state for the parameters its group's tasks reach.  Random
        groups: the one shared optimizer, for the parameters any task reaches."""
        tasks_of = tasks_reaching(num_tasks, reach)
        groups = self._groups(num_tasks) if self.per_group_optimizers else [tuple(range(num_tasks))]
        return sum(self.base.state_bytes(p for p in self.params if set(tasks_of(p)) & set(group)) for group in groups)

    def _followers(self) -> list[tuple[BaseOptimizer, frozenset[str] | None]]:
        # IO: ``base`` leads (a scheduler sees it from construction on); the per-group optimizers follow.
        return [(o, None) for o in self.optimizers if o is not self.base]

    # -- the step ------------------------------------------------------------------------------------

    def _step(self, closure: LossClosure, record: bool) -> StepRecord:
        names, losses = self._losses(closure)
        values = torch.stack([loss.detach().reshape(()) for loss in losses])
        num_tasks = len(names)
        if self.per_group_optimizers and not self.optimizers:
            self._build_optimizers(self._num_groups(num_tasks))
        per_task_grads: dict[int, list[Tensor | None]] = {}
        per_task_updates: dict[int, list[Tensor | None]] = {}
        stale_moves: list[tuple[int, Tensor]] = []
        for j, group in enumerate(self._groups(num_tasks)):
            if j > 0:
                again, losses = self._losses(closure)
                if again != names:
                    raise TaskInputError(f"the closure returned tasks {again} at sub-step {j}, {names} at the first")
            self._sub_step(j, group, names, losses, record, per_task_grads, per_task_updates, stale_moves)
        if not record:
            return StepRecord(names, values, None, None)
        _share_stale_moves(stale_moves, per_task_grads, per_task_updates)
        grads = TaskGradients.from_per_task(self._in_task_order(names, per_task_grads), self.params, names)
        updates = TaskUpdates.from_per_task(self._in_task_order(names, per_task_updates), self.params, names)
        return StepRecord(names, values, grads, updates)

    def _sub_step(
        self,
        j: int,
        group: tuple[int, ...],
        names: tuple[str, ...],
        losses: list[Tensor],
        record: bool,
        per_task_grads: dict[int, list[Tensor | None]],
        per_task_updates: dict[int, list[Tensor | None]],
        stale_moves: list[tuple[int, Tensor]],
    ) -> None:
        """Backpropagate group ``j``'s summed loss and step its optimizer; record what each task did
        (a parameter the group does not reach but moves on stale momentum goes to ``stale_moves``)."""
        optimizer = self._optimizer_for(j)
        task_rows: list[list[Tensor | None]] = []
        path = self._path  # averaged over replicas, loss-scaled, clipped (see mao_lab._gradient_path)
        with torch.enable_grad():
            if record or path.needs_task_gradients:
                grads_of = path.task_gradients({names[k]: losses[k] for k in group}, self.params)
                grads_of.check_finite()
                task_rows = [grads_of.for_task(row) for row in range(len(group))]
                grads = [_sum_present([rows[i] for rows in task_rows]) for i in range(len(self.params))]
            else:
                total = losses[group[0]]
                for k in group[1:]:
                    total = total + losses[k]
                grads = path.gradient(total, self.params)
                check_finite_gradients(grads, [losses[k] for k in group], [names[k] for k in group], self.params)
        grads = path.clip_total(grads)
        if self.zero_unreached:
            grads = [
                torch.zeros_like(p) if g is None and optimizer.has_state(p) else g for p, g in zip(self.params, grads)
            ]
        before = [p.detach().clone() if record and g is not None else None for p, g in zip(self.params, grads)]
        optimizer.step(self.params, grads)
        if record:
            for row, k in enumerate(group):
                per_task_grads[k] = task_rows[row]
            self._split_sub_step(optimizer, group, task_rows, grads, before, per_task_updates, stale_moves)

    @torch.no_grad()
    def _split_sub_step(
        self,
        optimizer: BaseOptimizer,
        group: tuple[int, ...],
        task_rows: list[list[Tensor | None]],
        grads: list[Tensor | None],
        before: list[Tensor | None],
        per_task_updates: dict[int, list[Tensor | None]],
        stale_moves: list[tuple[int, Tensor]],
    ) -> None:
        """Each task's part of the change the sub-step made (see :mod:`._contributions`): ``D g_k`` plus an
        equal share of what the optimizer's history added."""
        for k in group:
            per_task_updates[k] = [None] * len(self.params)
        for i, (p, g, old) in enumerate(zip(self.params, grads, before)):
            if g is None or old is None:
                continue
            D = optimizer.preconditioner(p)
            change = old * optimizer.decay_factor(p) - p.detach()
            reaching = [(k, task_rows[row][i]) for row, k in enumerate(group) if task_rows[row][i] is not None]
            if not reaching:  # unreached_grad="zero": moved by the momentum of other tasks' sub-steps
                stale_moves.append((i, change))
                continue
            history = (change - D * g) / len(reaching)
            for k, g_k in reaching:
                per_task_updates[k][i] = D * g_k + history

    def _in_task_order(
        self, names: tuple[str, ...], per_task: dict[int, list[Tensor | None]]
    ) -> list[list[Tensor | None]]:
        return [per_task.get(k, [None] * len(self.params)) for k in range(len(names))]

    # -- state ---------------------------------------------------------------------------------------

    _optional_state_entries = frozenset({"balancer", "lead_group"})  # lead_group: saved since it exists

    def _method_state(self) -> dict[str, Any]:
        state = super()._method_state()
        state["optimizer"] = [o.state_dict() for o in self.optimizers]  # one per group (IO), or the shared one
        state["partition"] = None if self.partition is None else [list(g) for g in self.partition]
        if self.per_group_optimizers:  # the leading group is saved by no optimizer state: its rate, here
            state["lead_group"] = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        return state

    def _load_method_state(self, state: Mapping[str, Any]) -> None:
        if "optimizer" in state:
            self._check_optimizers(state["optimizer"])
        lead = state.get("lead_group")
        if lead is not None:
            self._check_lead_group(lead)
        super()._load_method_state({k: v for k, v in state.items() if k != "optimizer"})
        if "optimizer" in state:
            if len(state["optimizer"]) != len(self.optimizers):
                self._build_optimizers(len(state["optimizer"]))
            for optimizer, saved in zip(self.optimizers, state["optimizer"]):
                optimizer.load_state_dict(saved)
            if not self.per_group_optimizers:
                self.base = self.optimizers[0]
        if "partition" in state:
            self.partition = None if state["partition"] is None else [tuple(g) for g in state["partition"]]
        if lead is not None:
            self.param_groups[0].update(lead)

    def _check_optimizers(self, state: Any) -> None:
        if not isinstance(state, list) or not all(isinstance(s, dict) for s in state):
            raise CheckpointError(f"method {self.name!r}: the optimizer state must be a list of optimizer states")
        if not self.per_group_optimizers and len(state) != 1:
            raise CheckpointError(f"method {self.name!r} has one optimizer; the state has {len(state)}")
        probe = self.optimizers[0] if self.optimizers else BaseOptimizer.from_hparams(self.params, self.hparams)
        for j, saved in enumerate(state):
            probe.check_state_dict(saved, f"method {self.name!r}: optimizer {j}")

    def _check_lead_group(self, lead: object) -> None:
        if not isinstance(lead, Mapping):
            raise CheckpointError(f"method {self.name!r}: lead_group must be a dict, got {type(lead).__name__}")
        for name in ("lr", "weight_decay"):
            try:
                ADAM_HYPERPARAMETERS[name].check(name, lead.get(name))
            except ValueError as error:
                raise CheckpointError(f"method {self.name!r}: lead_group: {error}") from None


def _share_stale_moves(
    stale_moves: list[tuple[int, Tensor]],
    per_task_grads: dict[int, list[Tensor | None]],
    per_task_updates: dict[int, list[Tensor | None]],
) -> None:
    """Give a move made on stale momentum (``unreached_grad="zero"``) in equal parts to the tasks that
    reach that parameter in this step, so that the tasks' updates still add up to the change.  A
    parameter no task reaches in this step has no one to credit: its move is left out of the record."""
    for i, change in stale_moves:
        owners = [k for k, grads in per_task_grads.items() if grads[i] is not None]
        for k in owners:
            update = per_task_updates[k][i]
            assert update is not None
            per_task_updates[k][i] = update + change / len(owners)


def _sum_present(tensors: list[Tensor | None]) -> Tensor | None:
    present = [t for t in tensors if t is not None]
    if not present:
        return None
    total = present[0]
    for t in present[1:]:
        total = total + t
    return total


_GROUP_SIZE = Hyperparameter(1, integer(1), "tasks per group (the last group may be smaller)")


@register("sus", "SUS: one Adam step on the summed loss per batch (Pascal et al. 2021's baseline)")
class SUSMethod(IndependentStepsMethod):
    """Simultaneous update steps: all tasks in one group, one optimizer step on ``sum_k L_k``."""

    moves_parameters_during_step = False  # one group, from the first step on: one optimizer step, last


@register("ius", "IUS: one shared Adam stepped once per task (group), a forward pass each (Pascal et al. 2021)")
class IUSMethod(IndependentStepsMethod):
    """Independent update steps: for each task (group of ``group_size`` consecutive tasks) in turn,
    forward, backward and a step of one shared optimizer."""

    hyperparameters = {"group_size": _GROUP_SIZE}


@register("io", "IO: one Adam per task (group), stepped in turn, a forward pass each (Pascal et al. 2021)")
class IOMethod(IndependentStepsMethod):
    """Independent optimizers: as IUS, but every task (group) has its own optimizer over all parameters."""

    hyperparameters = {"group_size": _GROUP_SIZE}
    per_group_optimizers = True


@register("grouping", "Random task grouping: a shared Adam stepped per random group of size s (Pascal et al. 2021)")
class GroupingMethod(IndependentStepsMethod, Seeded):
    """Random groups of ``group_size`` tasks (the last may be smaller), each group's summed loss stepped
    in turn with one shared optimizer.  ``redraw=False`` draws the partition once, at the first step
    (as the public code); ``redraw=True`` draws a new one at every step.  ``group_size >= T`` is SUS,
    ``group_size = 1`` is IUS in a random task order."""

    hyperparameters = {
        "group_size": Hyperparameter(2, integer(1), "tasks per group (the last group may be smaller)"),
        "redraw": Hyperparameter(False, boolean, "draw a new partition at every step instead of once"),
    }
    random_groups = True
