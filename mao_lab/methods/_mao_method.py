"""MAO as a method of the registry: the optimizer :class:`mao_lab.MAO` behind the method interface.

``make("mao")`` runs exactly :meth:`MAO.step`'s step (``MAO._step_on_losses``: the gradient
reserve, the finiteness probes and the update), so the notebooks train the MAO the benchmark measures.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from .._mao import MAO, MAO_HYPERPARAMETERS
from .._observe import StepRecord
from ._base import LossClosure, OptimizerMethod
from ._registry import register

__all__ = ["MAOMethod"]


@register("mao", "MAO: per-task Adam normalisation of every parameter, then sum (Hervella et al. 2024)")
class MAOMethod(OptimizerMethod):
    """Multi-Adaptive Optimization behind the method interface; see :class:`mao_lab.MAO`."""

    hyperparameters = MAO_HYPERPARAMETERS

    def __init__(self, params: Iterable[Tensor], **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        hp = self.hparams
        self.optimizer = MAO(
            self.params, hp["lr"], hp["betas"], hp["eps"], hp["weight_decay"], hp["reduction"], hp["task_weights"]
        )

    def _step(self, closure: LossClosure, record: bool) -> StepRecord:
        names, losses = self._losses(closure)
        return self.optimizer._step_on_losses(names, losses, keep=record, path=self._path)
