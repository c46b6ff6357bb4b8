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

import contextlib
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from .._observe import StepRecord
from .._task_gradients import TaskGradients, TaskInputError, compute_task_gradients
from ._base import LossClosure, Method
from ._base_optimizer import BaseOptimizer, OptimizerName
from ._common import check_adam_hyperparameters, check_finite_gradients, check_int, new_generator
from ._registry import register
from ._transaction import all_or_nothing

__all__ = ["GroupingMethod", "IndependentStepsMethod", "IOMethod", "IUSMethod", "SUSMethod"]


class IndependentStepsMethod(Method):
    """One optimizer step per group of tasks, with a forward pass per step.

    Args:
        group_size: tasks per group (the last group may be smaller); ``None`` puts all in one group.
        random_groups: draw the partition at random (from ``seed``) instead of taking tasks in order.
        redraw: with ``random_groups``, draw a new partition at every step instead of once.
        per_group_optimizers: give every group its own optimizer (own moments and step counts).
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        *,
        lr: float,
        betas: tuple[float, float],
        eps: float,
        weight_decay: float,
        optimizer: OptimizerName,
        num_tasks: int | None,
        group_size: int | None,
        random_groups: bool = False,
        redraw: bool = False,
        per_group_optimizers: bool = False,
        seed: int | None = None,
    ) -> None:
        super().__init__(params, num_tasks=num_tasks)
        check_adam_hyperparameters(lr, betas, eps, weight_decay)
        if group_size is not None:
            check_int("group_size", group_size, 1)
        if not isinstance(redraw, bool):
            raise ValueError(f"hyperparameter 'redraw' must be True or False, got {redraw!r}")
        if per_group_optimizers and random_groups:
            raise ValueError("per-group optimizers need a fixed partition: use them with groups in task order")
        self.group_size = group_size
        self.random_groups = random_groups
        self.redraw = redraw
        self.per_group_optimizers = per_group_optimizers
        self._optimizer_args = dict(kind=optimizer, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self._generator = new_generator(seed if seed is not None else 0) if random_groups else None
        self.partition: list[tuple[int, ...]] | None = None
        self.optimizers: list[BaseOptimizer] = []
        if not per_group_optimizers:
            self.optimizers = [BaseOptimizer(self.params, **self._optimizer_args)]
        elif num_tasks is not None:
            self._build_optimizers(self._num_groups(num_tasks))

    # -- groups and optimizers -----------------------------------------------------------------------

    def _num_groups(self, num_tasks: int) -> int:
        size = self.group_size or num_tasks
        return -(-num_tasks // size)

    def _build_optimizers(self, count: int) -> None:
        self.optimizers = [BaseOptimizer(self.params, **self._optimizer_args) for _ in range(count)]

    def _groups(self, num_tasks: int) -> list[tuple[int, ...]]:
        """This step's groups (each sorted), drawing a partition if the policy says so."""
        size = self.group_size or num_tasks
        if not self.random_groups:
            return [tuple(range(start, min(start + size, num_tasks))) for start in range(0, num_tasks, size)]
        if self.partition is None or self.redraw:
            order = torch.randperm(num_tasks, generator=self._generator).tolist()
            self.partition = [tuple(sorted(order[start:start + size])) for start in range(0, num_tasks, size)]
        return list(self.partition)

    def _optimizer_for(self, group: int) -> BaseOptimizer:
        return self.optimizers[group if self.per_group_optimizers else 0]

    # -- the step ------------------------------------------------------------------------------------

    def _step(self, closure: LossClosure, record: bool) -> StepRecord:
        names, losses = self._losses(closure)
        values = torch.stack([loss.detach().reshape(()) for loss in losses])
        num_tasks = len(names)
        first_step = self.per_group_optimizers and not self.optimizers
        single = self._num_groups(num_tasks) == 1 and not first_step and not self.random_groups
        guard = contextlib.nullcontext() if single else all_or_nothing(self)
        with guard:
            if first_step:
                self._build_optimizers(self._num_groups(num_tasks))
            groups = self._groups(num_tasks)
            per_task_grads: dict[int, list[Tensor | None]] = {}
            per_task_updates: dict[int, list[Tensor | None]] = {}
            for j, group in enumerate(groups):
                if j > 0:
                    again, losses = self._losses(closure)
                    if again != names:
                        raise TaskInputError(f"the closure returned tasks {again} at sub-step {j}, {names} at the first")
                self._sub_step(j, group, names, losses, record, per_task_grads, per_task_updates)
        if not record:
            return StepRecord(names, values, None, None)
        return StepRecord(names, values, self._assemble(names, per_task_grads), self._assemble(names, per_task_updates))

    def _sub_step(
        self,
        j: int,
        group: tuple[int, ...],
        names: tuple[str, ...],
        losses: list[Tensor],
        record: bool,
        per_task_grads: dict[int, list[Tensor | None]],
        per_task_updates: dict[int, list[Tensor | None]],
    ) -> None:
        """Backpropagate group ``j``'s summed loss and step its optimizer; record what each task did."""
        optimizer = self._optimizer_for(j)
        task_rows: list[list[Tensor | None]] = []
        with torch.enable_grad():
            if record:
                grads_of = compute_task_gradients({names[k]: losses[k] for k in group}, self.params)
                grads_of.check_finite()
                task_rows = [grads_of.for_task(row) for row in range(len(group))]
                grads = [_sum_present([rows[i] for rows in task_rows]) for i in range(len(self.params))]
            else:
                total = losses[group[0]]
                for k in group[1:]:
                    total = total + losses[k]
                grads = list(torch.autograd.grad(total, self.params, allow_unused=True, retain_graph=True))
                check_finite_gradients(grads, [losses[k] for k in group], [names[k] for k in group], self.params)
        before = [p.detach().clone() if record and g is not None else None for p, g in zip(self.params, grads)]
        optimizer.step(self.params, grads)
        if not record:
            return
        with torch.no_grad():
            for row, k in enumerate(group):
                per_task_grads[k] = task_rows[row]
                per_task_updates[k] = [None] * len(self.params)
            for i, (p, g, old) in enumerate(zip(self.params, grads, before)):
                if g is None or old is None:
                    continue
                D = optimizer.preconditioner(p)
                change = old * optimizer.decay_factor(p) - p.detach()
                reaching = [(k, task_rows[row][i]) for row, k in enumerate(group) if task_rows[row][i] is not None]
                history = (change - D * g) / len(reaching)
                for k, g_k in reaching:
                    per_task_updates[k][i] = D * g_k + history

    def _assemble(self, names: tuple[str, ...], per_task: dict[int, list[Tensor | None]]) -> TaskGradients:
        ordered = [per_task.get(k, [None] * len(self.params)) for k in range(len(names))]
        return TaskGradients.from_per_task(ordered, self.params, names)

    # -- state ---------------------------------------------------------------------------------------

    def _extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "optimizers": [o.state_dict() for o in self.optimizers],
            "partition": None if self.partition is None else [list(g) for g in self.partition],
        }
        if self._generator is not None:
            state["generator"] = self._generator.get_state()
        return state

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        if len(state["optimizers"]) != len(self.optimizers):
            self._build_optimizers(len(state["optimizers"]))
        for optimizer, saved in zip(self.optimizers, state["optimizers"]):
            optimizer.load_state_dict(saved)
        self.partition = None if state["partition"] is None else [tuple(g) for g in state["partition"]]
        if self._generator is not None:
            self._generator.set_state(state["generator"])


def _sum_present(tensors: list[Tensor | None]) -> Tensor | None:
    present = [t for t in tensors if t is not None]
    if not present:
        return None
    total = present[0]
    for t in present[1:]:
        total = total + t
    return total


@register("sus", "SUS: one Adam step on the summed loss per batch (Pascal et al. 2021's baseline)")
class SUSMethod(IndependentStepsMethod):
    """Simultaneous update steps: all tasks in one group, one optimizer step on ``sum_k L_k``."""

    name = "sus"

    def __init__(
        self,
        params: Iterable[Tensor],
        *,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        optimizer: OptimizerName = "adam",
        num_tasks: int | None = None,
    ) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, optimizer=optimizer,
                         num_tasks=num_tasks, group_size=None)


@register("ius", "IUS: one shared Adam stepped once per task (group), a forward pass each (Pascal et al. 2021)")
class IUSMethod(IndependentStepsMethod):
    """Independent update steps: for each task (group of ``group_size`` consecutive tasks) in turn,
    forward, backward and a step of one shared optimizer."""

    name = "ius"

    def __init__(
        self,
        params: Iterable[Tensor],
        *,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        optimizer: OptimizerName = "adam",
        group_size: int = 1,
        num_tasks: int | None = None,
    ) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, optimizer=optimizer,
                         num_tasks=num_tasks, group_size=group_size)


@register("io", "IO: one Adam per task (group), stepped in turn, a forward pass each (Pascal et al. 2021)")
class IOMethod(IndependentStepsMethod):
    """Independent optimizers: as IUS, but every task (group) has its own optimizer over all parameters."""

    name = "io"

    def __init__(
        self,
        params: Iterable[Tensor],
        *,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        optimizer: OptimizerName = "adam",
        group_size: int = 1,
        num_tasks: int | None = None,
    ) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, optimizer=optimizer,
                         num_tasks=num_tasks, group_size=group_size, per_group_optimizers=True)


@register("grouping", "Random task grouping: a shared Adam stepped per random group of size s (Pascal et al. 2021)")
class GroupingMethod(IndependentStepsMethod):
    """Random groups of ``group_size`` tasks (the last may be smaller), each group's summed loss stepped
    in turn with one shared optimizer.  ``redraw=False`` draws the partition once, at the first step
    (as the public code); ``redraw=True`` draws a new one at every step.  ``group_size >= T`` is SUS,
    ``group_size = 1`` is IUS in a random task order."""

    name = "grouping"

    def __init__(
        self,
        params: Iterable[Tensor],
        *,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        optimizer: OptimizerName = "adam",
        group_size: int = 2,
        redraw: bool = False,
        seed: int = 0,
        num_tasks: int | None = None,
    ) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, optimizer=optimizer,
                         num_tasks=num_tasks, group_size=group_size, random_groups=True, redraw=redraw, seed=seed)
