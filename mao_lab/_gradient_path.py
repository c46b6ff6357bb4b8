"""Where every gradient of a step comes from: averaged over replicas, loss-scaled, clipped.

MAO and every method compute their gradients with ``torch.autograd.grad`` instead of
``loss.backward()``, so the tools of a training stack that work on ``.grad`` (DDP's hooks,
``GradScaler.unscale_``, ``clip_grad_norm_``) do not reach them.  A :class:`GradientPath` is what a
step uses instead, made afresh at every step from the step's options:

- ``replicas`` (:mod:`mao_lab._distributed`): loss values and gradients averaged over the processes;
- ``scale`` (:mod:`mao_lab._loss_scaling`): gradients of the scaled losses, checked for overflow
  (:class:`~mao_lab._loss_scaling.LossScaleOverflow` skips the step), then unscaled;
- ``max_task_grad_norm`` / ``max_grad_norm`` (:mod:`mao_lab._clipping`).

The order is fixed: average, then look for overflow (so every replica skips together), unscale, clip.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ._clipping import clip_factor, clipped, norm_of
from ._distributed import Replicas
from ._loss_scaling import LossScaleOverflow, found_non_finite, unscaled
from ._task_gradients import GradientReserve, TaskGradients, compute_task_gradients

__all__ = ["GradientPath"]


@dataclass(frozen=True)
class GradientPath:
    """How a step turns losses into gradients (see the module docstring); the default is plain autograd.

    >>> w = torch.tensor([3.0, 4.0], requires_grad=True)
    >>> path = GradientPath(scale=1024.0, max_grad_norm=1.0)
    >>> g = path.gradient((w * w).sum() / 2, [w])  # the gradient w, of norm 5, scaled then clipped
    >>> [round(x, 4) for x in path.clip_total(g)[0].tolist()]
    [0.6, 0.8]
    """

    replicas: Replicas | None = None
    scale: float | None = None
    max_task_grad_norm: float | None = None
    max_grad_norm: float | None = None

    @property
    def needs_task_gradients(self) -> bool:
        """Whether the step must compute per-task gradients even where one weighted sum would do."""
        return self.max_task_grad_norm is not None

    # -- losses ------------------------------------------------------------------------------------------

    def losses(self, losses: list[Tensor]) -> list[Tensor]:
        """The losses a method reads: their values averaged over the replicas, their gradients local."""
        return losses if self.replicas is None else self.replicas.average_losses(losses)

    def values(self, values: Tensor) -> Tensor:
        """Loss values without a graph (FAMO's second look), averaged over the replicas."""
        return values if self.replicas is None else self.replicas.average_values(values).to(values.dtype)

    # -- gradients -------------------------------------------------------------------------------------

    def task_gradients(
        self,
        losses: Mapping[str, Tensor],
        params: Iterable[Tensor],
        *,
        features: Tensor | Sequence[Tensor] | None = None,
        batched: bool = False,
        reserve: GradientReserve | None = None,
        check_finite: bool = False,
        retain_graph: bool = False,
    ) -> TaskGradients:
        """Every task's gradient (see :func:`~mao_lab.compute_task_gradients`), averaged, unscaled, clipped."""
        return compute_task_gradients(
            losses, params, features=features, batched=batched, reserve=reserve, check_finite=check_finite,
            retain_graph=retain_graph, replicas=self.replicas, loss_scale=self.scale,
            max_task_grad_norm=self.max_task_grad_norm,
        )  # fmt: skip

    def gradient(self, total: Tensor, params: Sequence[Tensor], retain_graph: bool = True) -> list[Tensor | None]:
        """The gradient of one scalar (a weighted sum of the losses): one backward, one reduction."""
        grad_output = None if self.scale is None else torch.full_like(total, self.scale)
        with torch.enable_grad():
            grads = list(
                torch.autograd.grad(
                    total, params, grad_outputs=grad_output, allow_unused=True, retain_graph=retain_graph
                )
            )
        return self.finish(grads)

    def finish(self, grads: list[Tensor | None]) -> list[Tensor | None]:
        """Gradients computed locally (of scaled losses, if scaling): averaged, checked, unscaled."""
        if self.replicas is not None:
            grads = self.replicas.average(grads)
        if self.scale is not None:
            if found_non_finite(grads):
                raise LossScaleOverflow
            grads = unscaled(grads, self.scale)
        return grads

    def seed(self, loss: Tensor) -> Tensor | None:
        """What starts a backward pass of ``loss``: ``None`` (one) or the loss scale (then :meth:`finish`)."""
        return None if self.scale is None else torch.full_like(loss, self.scale)

    def clip_total(self, grads: Sequence[Tensor | None]) -> list[Tensor | None]:
        """The gradient a method steps with, clipped to ``max_grad_norm``."""
        return clipped(grads, self.max_grad_norm)

    def total_clip_factor(self, grads: Sequence[Tensor | None]) -> float | None:
        """What ``max_grad_norm`` multiplies the gradient ``grads`` by (``None``: nothing to clip)."""
        if self.max_grad_norm is None:
            return None
        factor = float(clip_factor(norm_of(grads), self.max_grad_norm))
        return None if factor >= 1.0 else factor

    def joint(self, task_grads: TaskGradients) -> TaskGradients:
        """All the tasks' gradients together clipped to ``max_grad_norm`` (MAO, MTAdam)."""
        if self.max_grad_norm is None:
            return task_grads
        per_task = [task_grads.for_task(k) for k in range(task_grads.num_tasks)]
        flat = clipped([g for grads in per_task for g in grads], self.max_grad_norm)
        n = len(task_grads.params)
        rows = [flat[k * n : (k + 1) * n] for k in range(task_grads.num_tasks)]
        return TaskGradients.from_per_task(rows, task_grads.params, task_grads.task_names)

    def given_task_gradients(self, task_grads: TaskGradients) -> TaskGradients:
        """Per-task gradients computed elsewhere (of the scaled losses, if scaling): averaged over the
        replicas, checked for overflow, unscaled and clipped per task, as :meth:`task_gradients` does."""
        if self.replicas is None and self.scale is None and self.max_task_grad_norm is None:
            return task_grads
        per_task = [task_grads.for_task(k) for k in range(task_grads.num_tasks)]
        if self.replicas is not None:
            per_task = [pending.wait() for pending in [self.replicas.launch(grads) for grads in per_task]]
        if self.scale is not None:
            if found_non_finite([g for grads in per_task for g in grads]):
                raise LossScaleOverflow
            per_task = [unscaled(grads, self.scale) for grads in per_task]
        per_task = [clipped(grads, self.max_task_grad_norm) for grads in per_task]
        return TaskGradients.from_per_task(per_task, task_grads.params, task_grads.task_names)
