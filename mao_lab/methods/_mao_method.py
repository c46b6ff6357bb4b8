"""MAO as a method of the registry (the optimizer itself lives in :mod:`mao_lab._mao`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from .._mao import MAO, Reduction
from .._observe import StepRecord
from .._task_gradients import compute_task_gradients
from ._base import LossClosure, Method
from ._registry import register

__all__ = ["MAOMethod"]


@register("mao", "MAO: per-task Adam normalisation of every parameter, then sum (Hervella et al. 2024)")
class MAOMethod(Method):
    """Multi-Adaptive Optimization behind the method interface; see :class:`mao_lab.MAO`."""

    name = "mao"

    def __init__(
        self,
        params: Iterable[Tensor],
        *,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        reduction: Reduction = "sum",
        task_weights: Sequence[float] | None = None,
        num_tasks: int | None = None,
    ) -> None:
        super().__init__(params, num_tasks=num_tasks)
        self.optimizer = MAO(self.params, lr, betas, eps, weight_decay, reduction, task_weights)

    def _step(self, closure: LossClosure, record: bool) -> StepRecord:
        names, losses = self._losses(closure)
        with torch.enable_grad():
            task_grads = compute_task_gradients(dict(zip(names, losses)), self.params)
        task_updates = self.optimizer.apply_task_gradients(task_grads, keep_task_updates=record)
        loss_values = torch.stack([loss.detach().reshape(()) for loss in losses])
        return StepRecord(names, loss_values, task_grads if record else None, task_updates)

    def _extra_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
