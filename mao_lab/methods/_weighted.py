"""Scalarizations: one step of a base optimizer on ``sum_k w_k L_k``, with the weights from a subclass.

:class:`WeightedLossMethod` is the shared machinery (validation, the cheap single backward, the
recorded path built from per-task gradients, state and roll-back); subclasses only say how the weights
``w`` of a step are found.  :class:`ScalarizerMethod` fills that in for any TorchJD ``Scalarizer``
``S``: the weights are ``w_k = dS/dL_k`` at this step's losses, so stepping on ``sum_k w_k L_k`` moves
the model exactly as stepping on ``S(L)`` would, whatever ``S`` is.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor
from torchjd.scalarization import Scalarizer

from .._observe import StepRecord
from .._task_gradients import TaskGradients, TaskInputError
from ._base import LossClosure
from ._base_optimizer import BaseOptimizer, SteppedMethod
from ._common import check_finite_gradients, private_rng
from ._contributions import preconditioned_parts, weighted_parts

__all__ = ["ScalarizerMethod", "WeightedLossMethod"]

_FOLLOWED = frozenset({"lr", "betas", "eps"})


class WeightedLossMethod(SteppedMethod):
    """Step a base optimizer on ``sum_k w_k L_k``; subclasses supply the weights ``w`` of each step.

    Without a recorder the gradient comes from a single backward pass of the weighted sum.  With one,
    the per-task gradients ``g_k`` are computed instead (``T`` backward passes, no extra one) and
    combined as ``sum_k w_k g_k``; the record's contributions are ``D ⊙ w_k g_k`` (see
    :mod:`mao_lab.methods._contributions`).

    Per-task state (the weighting) is built and saved as :class:`SteppedMethod` says.
    """

    # -- what subclasses supply ----------------------------------------------------------------------

    @abstractmethod
    def _weights(
        self, losses: Tensor, graph_losses: list[Tensor], names: tuple[str, ...], task_grads: TaskGradients | None
    ) -> Tensor:
        """The weights ``w`` (shape ``(T,)``) of this step, from the detached ``losses``.

        May update the weighting's own state (rolled back if the step fails later).  ``graph_losses``
        (with their graphs), the task ``names`` and ``task_grads`` (only when recording) are there for
        weightings that look at gradients, like GradNorm.
        """

    # -- the step ------------------------------------------------------------------------------------

    def _step(self, closure: LossClosure, record: bool) -> StepRecord:
        names, losses = self._losses(closure)
        values = torch.stack([loss.detach().reshape(()) for loss in losses])
        task_grads = None
        path = self._path  # averaged over replicas, loss-scaled, clipped (see mao_lab._gradient_path)
        if record or path.needs_task_gradients:
            with torch.enable_grad():
                task_grads = path.task_gradients(dict(zip(names, losses)), self.params)
            task_grads.check_finite()
        self._ensure_built(len(names))
        weights = self._weights(values, losses, names, task_grads).detach()
        if not bool(torch.isfinite(weights).all()):
            raise TaskInputError(f"method {self.name!r}: the task weights are not finite: {weights.tolist()}")
        if task_grads is not None:
            parts = weighted_parts(task_grads, weights)
            grads: list[Tensor | None] = [d.sum(0) if ks else None for ks, d in zip(parts.tasks, parts.grads)]
        else:
            with torch.enable_grad():
                total = weights[0] * losses[0]
                for k in range(1, len(losses)):
                    total = total + weights[k] * losses[k]
            grads = path.gradient(total, self.params)  # one backward, one reduction
            check_finite_gradients(grads, losses, names, self.params)
        factor = path.total_clip_factor(grads)
        if factor is not None:
            grads = [None if g is None else g * factor for g in grads]
            if task_grads is not None:
                parts = type(parts)(parts.task_names, parts.params, parts.tasks, tuple(d * factor for d in parts.grads))
        self.base.step(self.params, grads)
        task_updates = None
        if record and task_grads is not None:
            task_updates = preconditioned_parts(parts, self.base, [g is not None for g in grads])
        return StepRecord(names, values, task_grads if record else None, task_updates)


class ScalarizerMethod(WeightedLossMethod):
    """A TorchJD ``Scalarizer`` ``S`` as a method: ``w_k = dS/dL_k`` at this step's losses.

    Subclasses make the scalarizer (:meth:`_make_scalarizer`); scalarizers with learnable parameters
    (UW's log-variances, IMTL-L's log-scales) name them in :meth:`_learned`, and they are trained
    jointly with the model by an optimizer of the same kind and hyperparameters (no weight decay),
    from the gradient ``dS/dθ``.  A scalarizer that draws random numbers draws them from the method's
    own generator (``seed``), never from the global RNG.
    """

    #: ``torchjd_class`` is made for the number of tasks: ``torchjd_class(num_tasks)``.
    takes_num_tasks: ClassVar[bool] = False
    #: The scalarizer's attributes learned with the model (UW's log-variances, IMTL-L's log-scales).
    learned_attributes: ClassVar[tuple[str, ...]] = ()
    # Class-level defaults instead of an ``__init__``: both exist only once :meth:`_build` has run.
    scalarizer: Scalarizer | None = None
    weighting_optimizer: BaseOptimizer | None = None

    def _make_scalarizer(self, num_tasks: int) -> Scalarizer:
        """The TorchJD scalarizer for ``num_tasks`` tasks: ``torchjd_class()`` by default, or
        ``torchjd_class(num_tasks)`` with ``takes_num_tasks``."""
        assert self.torchjd_class is not None, f"{type(self).__name__} sets torchjd_class or makes its scalarizer"
        return self.torchjd_class(num_tasks) if self.takes_num_tasks else self.torchjd_class()

    def _learned(self) -> list[Tensor]:
        """The scalarizer's parameters learned with the model (its ``learned_attributes``)."""
        if self.scalarizer is None:
            return []
        return [getattr(self.scalarizer, name) for name in self.learned_attributes]

    def _build(self, num_tasks: int) -> None:
        self.scalarizer = self._make_scalarizer(num_tasks)
        learned = self._learned()
        if learned:
            self.weighting_optimizer = BaseOptimizer.from_hparams(learned, self.hparams, weight_decay=0.0)

    def _unbuild(self) -> None:
        self.scalarizer = None
        self.weighting_optimizer = None

    def _followers(self) -> list[tuple[BaseOptimizer, frozenset[str] | None]]:
        # The learned weights take the model's scheduled rate (and betas, eps), never its weight decay.
        return [] if self.weighting_optimizer is None else [(self.weighting_optimizer, _FOLLOWED)]

    def _scalarize(self, values: Tensor) -> Tensor:
        assert self.scalarizer is not None
        generator = getattr(self, "_generator", None)  # a Seeded method's own random stream
        if generator is None:
            return self.scalarizer(values)
        with private_rng(generator):
            return self.scalarizer(values)

    def _weights(
        self, losses: Tensor, graph_losses: list[Tensor], names: tuple[str, ...], task_grads: TaskGradients | None
    ) -> Tensor:
        ell = losses.detach().clone().requires_grad_(True)
        learned = self._learned()
        with torch.enable_grad():
            scalar = self._scalarize(ell)
            grads = torch.autograd.grad(scalar, [ell, *learned], allow_unused=True)
        weights = grads[0] if grads[0] is not None else torch.zeros_like(ell)
        if learned:
            learned_grads = [g if g is not None else torch.zeros_like(p) for p, g in zip(learned, grads[1:])]
            check_finite_gradients(learned_grads)
            assert self.weighting_optimizer is not None
            self.weighting_optimizer.step(learned, learned_grads)
        return weights

    def _method_state(self) -> dict[str, Any]:
        state = super()._method_state()
        if self.scalarizer is not None:  # built: the scalarizer's module state and its learned weights' optimizer
            balancer = {"scalarizer": self.scalarizer.state_dict()}
            if self.weighting_optimizer is not None:
                balancer["optimizer"] = self.weighting_optimizer.state_dict()
            state["balancer"] = balancer
        return state

    def _load_method_state(self, state: Mapping[str, Any]) -> None:
        super()._load_method_state(state)  # checks the whole state, then builds a fresh scalarizer
        balancer = state.get("balancer", {})
        if self.scalarizer is not None and "scalarizer" in balancer:
            self.scalarizer.load_state_dict(balancer["scalarizer"])
        if self.weighting_optimizer is not None and "optimizer" in balancer:
            self.weighting_optimizer.load_state_dict(balancer["optimizer"])
