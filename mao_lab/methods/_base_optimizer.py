"""The optimizer that turns a method's combined gradient into a parameter step: Adam (default) or SGD.

Weightings, aggregators and the independent-steps family all end the same way: write a gradient into
``p.grad`` and step a stock PyTorch optimizer.  :class:`BaseOptimizer` is that last stage, plus the one
thing PyTorch does not expose: the diagonal preconditioner ``D`` of the step just taken, which splits
the step by task (see :mod:`mao_lab.methods._contributions`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from ._common import check_adam_hyperparameters

__all__ = ["BaseOptimizer", "OptimizerName"]

OptimizerName = Literal["adam", "sgd"]


class BaseOptimizer:
    """``torch.optim.Adam`` (``foreach``, decoupled weight decay: AdamW) or plain ``torch.optim.SGD``.

    Args:
        params: the parameters it steps.
        kind: ``"adam"`` or ``"sgd"`` (no momentum: its step is exactly ``lr`` times the gradient).
        lr, betas, eps, weight_decay: as for ``torch.optim.AdamW`` (``betas``/``eps`` unused by SGD).

    >>> p = torch.zeros(2, requires_grad=True)
    >>> opt = BaseOptimizer([p], "sgd", lr=0.5)
    >>> opt.step([p], [torch.tensor([1.0, -2.0])])
    >>> p.detach(), opt.preconditioner(p)
    (tensor([-0.5000,  1.0000]), tensor([0.5000, 0.5000]))
    """

    def __init__(
        self,
        params: Sequence[Tensor],
        kind: OptimizerName = "adam",
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        check_adam_hyperparameters(lr, betas, eps, weight_decay)
        self.kind = kind
        if kind == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(
                list(params), lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                foreach=True, decoupled_weight_decay=True,
            )
        elif kind == "sgd":
            self.optimizer = torch.optim.SGD(list(params), lr=lr, weight_decay=weight_decay, foreach=True)
        else:
            raise ValueError(f"hyperparameter 'optimizer' must be 'adam' or 'sgd', got {kind!r}")

    def _group(self, p: Tensor) -> dict[str, Any]:
        for group in self.optimizer.param_groups:  # one group: the first test settles it
            if len(self.optimizer.param_groups) == 1 or any(q is p for q in group["params"]):
                return group
        raise KeyError("this parameter is not stepped by this optimizer")

    @torch.no_grad()
    def step(self, params: Sequence[Tensor], grads: Sequence[Tensor | None]) -> None:
        """Write ``grads`` into ``p.grad`` (``None`` leaves ``p`` alone, as Adam does), step, clear them."""
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        try:
            self.optimizer.step()
        finally:
            for p in params:
                p.grad = None

    def decay_factor(self, p: Tensor) -> float:
        """What the decoupled weight decay multiplied ``p`` by in a step: ``1 - lr * weight_decay``."""
        group = self._group(p)
        return 1.0 - float(group["lr"]) * float(group["weight_decay"])

    @torch.no_grad()
    def preconditioner(self, p: Tensor) -> Tensor:
        """The diagonal ``D`` of the last step on ``p``: the step was ``D ⊙ m̂`` (Adam) or ``D ⊙ g`` (SGD).

        Adam: ``D = lr / (sqrt(v_t / (1 - b2^t)) + eps)``, from the state *after* the step, computed as
        ``torch.optim.Adam`` does; the step was ``D ⊙ m̂_t`` with ``m̂_t = m_t / (1 - b1^t)`` the
        bias-corrected first moment (an estimate of the gradient).  SGD: ``D = lr`` everywhere.
        """
        group = self._group(p)
        lr = float(group["lr"])
        if self.kind == "sgd":
            return torch.full_like(p, lr)
        state = self.optimizer.state[p]
        t = float(state["step"])
        _, beta2 = group["betas"]
        denom = state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2**t) + group["eps"]
        return lr / denom

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)
