"""Gradient aggregation: a TorchJD ``Aggregator`` over the per-task gradients of the shared parameters,
then one step of a base optimizer.

At every step the per-task gradients are computed once (``T`` backward passes).  The parameters that
several tasks reach are stacked into the Jacobian ``J`` (``T`` rows, zeros where a task does not reach
a parameter), the aggregator turns ``J`` into one direction, and that direction is written into
``p.grad``; a parameter that a single task reaches (a head) gets that task's gradient, as with
TorchJD's ``mtl_backward``.  Then the base optimizer steps.
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torchjd.aggregation import Aggregator, WeightedAggregator

from .._observe import StepRecord
from .._task_gradients import TaskGradients, TaskInputError, compute_task_gradients
from ._base import LossClosure, Method
from ._base_optimizer import BaseOptimizer, OptimizerName
from ._common import get_rng_states, private_rng, set_rng_states
from ._contributions import preconditioned_parts

__all__ = ["AggregatorMethod"]


class AggregatorMethod(Method):
    """A TorchJD aggregator of the shared parameters' Jacobian, applied through a base optimizer.

    Subclasses make the aggregator (:meth:`_make_aggregator`, given the number of tasks), and, for
    aggregators that keep state between steps, save it (:meth:`_aggregator_state`).  Aggregators
    built from a TorchJD ``Weighting`` split the direction by task as ``alpha_k g_k`` out of the box;
    others override :meth:`_task_rows`.  With a generator (``self._generator``) the aggregator's random
    draws come from it, never from the global RNG.

    ``__init__`` is the public signature every aggregator shares (the registry reads hyperparameters
    from it), so a subclass with no hyperparameters of its own needs no ``__init__``.  One with more
    repeats it, fully typed, sets them, then calls this one; a random one sets ``self._generator``
    (from its ``seed``) first, so that ``generator`` stays out of the others' signatures.
    """

    aggregator: Aggregator | None
    _generator: torch.Generator | None = None

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
        super().__init__(params, num_tasks=num_tasks)
        self.base = BaseOptimizer(self.params, optimizer, lr, betas, eps, weight_decay)
        self.aggregator = None
        if num_tasks is not None:
            self.aggregator = self._make_aggregator(num_tasks)

    # -- what subclasses supply ----------------------------------------------------------------------

    @abstractmethod
    def _make_aggregator(self, num_tasks: int) -> Aggregator:
        """The TorchJD aggregator for ``num_tasks`` tasks."""

    def _aggregator_state(self) -> dict[str, Any]:
        """The aggregator's own state between steps (none by default)."""
        return {}

    def _load_aggregator_state(self, state: dict[str, Any]) -> None:
        pass

    def _task_rows(self, matrix: Tensor, weights: Tensor | None, replay: Any) -> Tensor:
        """Row ``k``: task ``k``'s part of the aggregate (they sum to it).  ``weights`` are the
        aggregator's weighting output when it has one; ``replay`` is what :meth:`_before_aggregate`
        saved, to draw the same random numbers again."""
        if weights is None:
            raise NotImplementedError(f"{type(self).__name__} must say how its aggregate splits by task")
        return weights.unsqueeze(1) * matrix

    def _before_aggregate(self, matrix: Tensor) -> Any:
        """Whatever :meth:`_task_rows` needs to replay the aggregation (the RNG and aggregator state)."""
        return None

    # -- the step ------------------------------------------------------------------------------------

    def _aggregate(self, matrix: Tensor, record: bool) -> tuple[Tensor, Tensor | None]:
        assert self.aggregator is not None
        replay = self._before_aggregate(matrix) if record else None
        if isinstance(self.aggregator, WeightedAggregator):
            weights = self.aggregator.weighting(matrix)
            direction = weights @ matrix
        else:
            weights = None
            direction = self.aggregator(matrix)
        rows = None
        if record:
            after = get_rng_states(matrix.device)
            rows = self._task_rows(matrix, weights, replay)
            set_rng_states(after, matrix.device)
        return direction, rows

    def _step(self, closure: LossClosure, record: bool) -> StepRecord:
        names, losses = self._losses(closure)
        values = torch.stack([loss.detach().reshape(()) for loss in losses])
        with torch.enable_grad():
            task_grads = compute_task_gradients(dict(zip(names, losses)), self.params)
        task_grads.check_finite()
        num_tasks = len(names)
        shared = [i for i, ks in enumerate(task_grads.tasks) if len(ks) > 1]
        snapshot = self._snapshot()
        try:
            if self.aggregator is None:
                self.aggregator = self._make_aggregator(num_tasks)
            direction, rows = None, None
            if shared:
                matrix = torch.cat([task_grads.dense(i).reshape(num_tasks, -1) for i in shared], dim=1)
                if self._generator is not None:
                    with private_rng(self._generator, matrix.device):
                        direction, rows = self._aggregate(matrix, record)
                else:
                    direction, rows = self._aggregate(matrix, record)
                if not bool(torch.isfinite(direction).all()):
                    raise TaskInputError(f"method {self.name!r}: the aggregator returned a non-finite direction")
        except BaseException:
            self._restore(snapshot)
            raise
        grads: list[Tensor | None] = []
        parts: list[Tensor] = []
        part_tasks: list[tuple[int, ...]] = []
        start = 0
        for i, (p, ks, g) in enumerate(zip(task_grads.params, task_grads.tasks, task_grads.grads)):
            if len(ks) > 1:
                assert direction is not None
                n = p.numel()
                grads.append(direction[start:start + n].view_as(p).to(p.dtype))
                if rows is not None:
                    parts.append(rows[:, start:start + n].reshape(num_tasks, *p.shape).to(p.dtype))
                    part_tasks.append(tuple(range(num_tasks)))
                start += n
            else:
                grads.append(g[0] if ks else None)
                parts.append(g)
                part_tasks.append(ks)
        self.base.step(self.params, grads)
        task_updates = None
        if record:
            split = TaskGradients(names, task_grads.params, tuple(part_tasks), tuple(parts))
            task_updates = preconditioned_parts(split, self.base, [g is not None for g in grads])
        return StepRecord(names, values, task_grads if record else None, task_updates)

    # -- state ---------------------------------------------------------------------------------------

    def _snapshot(self) -> tuple[bool, dict[str, Any] | None, Tensor | None]:
        built = self.aggregator is not None
        return (
            built,
            copy.deepcopy(self._aggregator_state()) if built else None,
            self._generator.get_state() if self._generator is not None else None,
        )

    def _restore(self, snapshot: tuple[bool, dict[str, Any] | None, Tensor | None]) -> None:
        built, state, generator_state = snapshot
        if generator_state is not None and self._generator is not None:
            self._generator.set_state(generator_state)
        if not built:
            self.aggregator = None
        elif state is not None:
            self._load_aggregator_state(state)

    def _extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"optimizer": self.base.state_dict()}
        if self.aggregator is not None:
            state["aggregator"] = self._aggregator_state()
        if self._generator is not None:
            state["generator"] = self._generator.get_state()
        return state

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state["optimizer"])
        if self._generator is not None:
            self._generator.set_state(state["generator"])
        if "aggregator" in state:
            self.aggregator = self._make_aggregator(state["num_tasks"])
            self._load_aggregator_state(state["aggregator"])
        elif self.num_tasks is None:
            self.aggregator = None
