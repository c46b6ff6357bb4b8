"""Gradient aggregation: a TorchJD ``Aggregator`` over the per-task gradients of the shared parameters,
then one step of a base optimizer.

At every step the per-task gradients are computed once (``T`` backward passes).  The parameters that
several tasks reach are stacked into the Jacobian ``J`` (``T`` rows, zeros where a task does not reach
a parameter), the aggregator turns ``J`` into one direction, and that direction is written into
``p.grad``; a parameter that a single task reaches (a head) gets that task's gradient, as with
TorchJD's ``mtl_backward``.  Then the base optimizer steps.

The record splits the step by task only where the aggregator's rule gives the split for free: an
aggregator built from a TorchJD ``Weighting`` (all but GradDrop) returns weights ``alpha`` with
``d = alpha^T J``, so task ``k``'s part is ``alpha_k g_k``.  An aggregator that returns no weights
(GradDrop, whose random sign masks stay inside TorchJD) records the task gradients but no split: its
record's ``task_updates`` is ``None`` (the recorder then has no update rows for it; see
:mod:`mao_lab.recorder`).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchjd.aggregation import Aggregator, WeightedAggregator

from .._observe import StepRecord
from .._task_gradients import TaskGradients, TaskInputError
from ._base import LossClosure
from ._base_optimizer import SteppedMethod
from ._common import private_rng
from ._contributions import preconditioned_parts

__all__ = ["AggregatorMethod"]


class AggregatorMethod(SteppedMethod):
    """A TorchJD aggregator of the shared parameters' Jacobian, applied through a base optimizer.

    Subclasses make the aggregator (:meth:`_make_aggregator`, given the number of tasks), and, for
    aggregators that keep state between steps, save it (:meth:`_method_state` /
    :meth:`_load_method_state`).  Aggregators built from a TorchJD ``Weighting`` split the direction
    by task as ``alpha_k g_k``; for others the record says the split is not available
    (``task_updates=None``).  A :class:`~mao_lab.methods._common.Seeded` one draws its random numbers
    from its own generator, never from the global RNG.
    """

    aggregator: Aggregator | None = None

    # -- what subclasses supply ----------------------------------------------------------------------

    def _make_aggregator(self, num_tasks: int) -> Aggregator:
        """The TorchJD aggregator for ``num_tasks`` tasks (default: ``torchjd_class()``); an aggregator
        with state between steps also saves it in :meth:`_method_state` (see :class:`SteppedMethod`)."""
        assert self.torchjd_class is not None, f"{type(self).__name__} sets torchjd_class or makes its aggregator"
        return self.torchjd_class()

    def _build(self, num_tasks: int) -> None:
        self.aggregator = self._make_aggregator(num_tasks)

    def _unbuild(self) -> None:
        self.aggregator = None

    # -- the step ------------------------------------------------------------------------------------

    def _aggregate(self, matrix: Tensor, record: bool) -> tuple[Tensor, Tensor | None]:
        """The direction for the Jacobian ``matrix`` and, when recording, each task's row of it
        (``alpha_k g_k`` for a weighted aggregator; ``None`` for one that returns no weights)."""
        assert self.aggregator is not None
        if isinstance(self.aggregator, WeightedAggregator):
            weights = self.aggregator.weighting(matrix)
            return weights @ matrix, weights.unsqueeze(1) * matrix if record else None
        return self.aggregator(matrix), None

    def _shared_direction(self, matrix: Tensor, record: bool) -> tuple[Tensor, Tensor | None]:
        """:meth:`_aggregate`, on the method's own random stream if it has one; refuses non-finite output."""
        generator = getattr(self, "_generator", None)
        if generator is not None:
            with private_rng(generator, matrix.device):
                direction, rows = self._aggregate(matrix, record)
        else:
            direction, rows = self._aggregate(matrix, record)
        if not bool(torch.isfinite(direction).all()):
            raise TaskInputError(f"method {self.name!r}: the aggregator returned a non-finite direction")
        return direction, rows

    def _step(self, closure: LossClosure, record: bool) -> StepRecord:
        names, losses = self._losses(closure)
        values = torch.stack([loss.detach().reshape(()) for loss in losses])
        path = self._path  # averaged over replicas, loss-scaled, clipped per task
        with torch.enable_grad():
            task_grads = path.task_gradients(dict(zip(names, losses)), self.params)
        task_grads.check_finite()
        self._ensure_built(len(names))
        shared = [i for i, ks in enumerate(task_grads.tasks) if len(ks) > 1]
        direction, rows = None, None
        if shared:
            matrix = torch.cat([task_grads.dense(i).reshape(len(names), -1) for i in shared], dim=1)
            direction, rows = self._shared_direction(matrix, record)
        grads, split = _per_parameter(task_grads, direction, rows)
        splits = rows is not None or not shared  # no shared parameter: every task's part is its own gradient
        factor = path.total_clip_factor(grads)
        if factor is not None:
            grads = [None if g is None else g * factor for g in grads]
            split = type(split)(split.task_names, split.params, split.tasks, tuple(d * factor for d in split.grads))
        self.base.step(self.params, grads)
        task_updates = None
        if record and splits:
            task_updates = preconditioned_parts(split, self.base, [g is not None for g in grads])
        return StepRecord(names, values, task_grads if record else None, task_updates)


def _per_parameter(
    task_grads: TaskGradients, direction: Tensor | None, rows: Tensor | None
) -> tuple[list[Tensor | None], TaskGradients]:
    """Cut the shared direction (and its per-task rows) back into parameters.

    A parameter several tasks reach gets its slice of ``direction``; one a single task reaches (a
    head) gets that task's gradient, as with TorchJD's ``mtl_backward``.  Returns the gradient to
    step with per parameter, and each task's part of it (the rows' slices, or the head's gradient).
    """
    num_tasks = task_grads.num_tasks
    grads: list[Tensor | None] = []
    parts: list[Tensor] = []
    part_tasks: list[tuple[int, ...]] = []
    start = 0
    for p, ks, g in zip(task_grads.params, task_grads.tasks, task_grads.grads):
        if len(ks) > 1:
            assert direction is not None
            n = p.numel()
            grads.append(direction[start : start + n].view_as(p).to(p.dtype))
            if rows is not None:
                parts.append(rows[:, start : start + n].reshape(num_tasks, *p.shape).to(p.dtype))
                part_tasks.append(tuple(range(num_tasks)))
            start += n
        else:
            grads.append(g[0] if ks else None)
            parts.append(g)
            part_tasks.append(ks)
    if rows is None:  # not recording: no split
        return grads, task_grads
    return grads, TaskGradients(task_grads.task_names, task_grads.params, tuple(part_tasks), tuple(parts))
