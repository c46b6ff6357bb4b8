"""The gradient aggregators, each a ``torchjd.aggregation`` class behind :class:`AggregatorMethod`.

============  ==================================  =================================================
name          TorchJD class                       record: task ``k``'s part of the direction
============  ==================================  =================================================
mgda          ``MGDA``                            ``alpha_k g_k`` (min-norm point of the hull)
pcgrad        ``PCGrad``                          task ``k``'s projected gradient
cagrad        ``CAGrad(c)``                       ``alpha_k g_k``
imtl_g        ``IMTLG``                           ``alpha_k g_k``
nash_mtl      ``NashMTL``                         ``alpha_k g_k``
aligned_mtl   ``AlignedMTL``                      ``alpha_k g_k``
upgrad        ``UPGrad``                          ``alpha_k g_k``
graddrop      ``GradDrop``                        task ``k``'s sign-masked gradient
gradvac       ``GradVac(beta)``                   task ``k``'s corrected gradient
============  ==================================  =================================================

CAGrad and Nash-MTL need ``cvxpy`` (with ``clarabel``, ``ecos``), UPGrad ``quadprog``: the
``torchjd[quadprog-projector,cagrad,nash-mtl]`` extras that ``requirements.txt`` installs.  The
random ones (PCGrad's and GradVac's task orders, GradDrop's masks) draw from the method's own
generator (``seed``).

>>> import torch
>>> from mao_lab.methods import make
>>> p = torch.zeros(2, requires_grad=True)
>>> method = make("mgda", [p], lr=0.1, optimizer="sgd")
>>> _ = method.step(lambda: [p @ torch.tensor([1.0, 0.0]), p @ torch.tensor([0.0, 1.0])])
>>> p.detach()  # the mean of two orthogonal gradients of equal norm, times -lr
tensor([-0.0500, -0.0500])
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torchjd import aggregation

from ._aggregated import AggregatorMethod
from ._base_optimizer import OptimizerName
from ._common import check_in_range, check_int, get_rng_states, new_generator, set_rng_states
from ._registry import register
from ._task_parts import graddrop_rows, gradvac_coefficients, pcgrad_coefficients

__all__ = [
    "AlignedMTLMethod",
    "CAGradMethod",
    "GradDropMethod",
    "GradVacMethod",
    "IMTLGMethod",
    "MGDAMethod",
    "NashMTLMethod",
    "PCGradMethod",
    "UPGradMethod",
]

@register("mgda", "MGDA: the min-norm convex combination of the task gradients (Sener & Koltun 2018)", "torchjd")
class MGDAMethod(AggregatorMethod):
    """MGDA's min-norm direction (Frank-Wolfe, TorchJD's defaults)."""

    name = "mgda"

    def _make_aggregator(self, num_tasks: int) -> aggregation.Aggregator:
        return aggregation.MGDA()


@register("imtl_g", "IMTL-G: the direction with equal projections on every task gradient (Liu et al. 2021)", "torchjd")
class IMTLGMethod(AggregatorMethod):
    """IMTL-G (TorchJD's generalisation to linearly dependent gradients)."""

    name = "imtl_g"

    def _make_aggregator(self, num_tasks: int) -> aggregation.Aggregator:
        return aggregation.IMTLG()


@register("upgrad", "UPGrad: every task gradient projected onto the dual cone, averaged (Quinton & Rey 2024)", "torchjd")
class UPGradMethod(AggregatorMethod):
    """UPGrad with uniform preference (quadprog projector)."""

    name = "upgrad"

    def _make_aggregator(self, num_tasks: int) -> aggregation.Aggregator:
        return aggregation.UPGrad()


@register("cagrad", "CAGrad: the best worst-case improvement near the mean gradient (Liu et al. 2021)", "torchjd")
class CAGradMethod(AggregatorMethod):
    """CAGrad with radius scale ``c`` (the paper's 0.4; 0 gives the mean gradient)."""

    name = "cagrad"

    def __init__(
        self,
        params: Iterable[Tensor],
        *,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        optimizer: OptimizerName = "adam",
        c: float = 0.4,
        num_tasks: int | None = None,
    ) -> None:
        check_in_range("c", c, 0.0)
        self.c = float(c)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, optimizer=optimizer,
                         num_tasks=num_tasks)

    def _make_aggregator(self, num_tasks: int) -> aggregation.Aggregator:
        return aggregation.CAGrad(c=self.c)


@register("aligned_mtl", "Aligned-MTL: the gradient matrix aligned to a well-conditioned one (Senushkin et al. 2023)", "torchjd")
class AlignedMTLMethod(AggregatorMethod):
    """Aligned-MTL with uniform preference; ``scale_mode`` picks the eigenvalue that sets the scale."""

    name = "aligned_mtl"

    def __init__(
        self,
        params: Iterable[Tensor],
        *,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        optimizer: OptimizerName = "adam",
        scale_mode: Literal["min", "median", "rmse"] = "min",
        num_tasks: int | None = None,
    ) -> None:
        if scale_mode not in ("min", "median", "rmse"):
            raise ValueError(f"hyperparameter 'scale_mode' must be 'min', 'median' or 'rmse', got {scale_mode!r}")
        self.scale_mode = scale_mode
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, optimizer=optimizer,
                         num_tasks=num_tasks)

    def _make_aggregator(self, num_tasks: int) -> aggregation.Aggregator:
        return aggregation.AlignedMTL(scale_mode=self.scale_mode)


@register("nash_mtl", "Nash-MTL: the Nash bargaining solution among the tasks (Navon et al. 2022)", "torchjd")
class NashMTLMethod(AggregatorMethod):
    """Nash-MTL: ``max_norm`` clips the direction's norm (0: no clipping); the weights are solved for
    every ``update_weights_every`` steps with ``optim_niter`` iterations (the paper's defaults)."""

    name = "nash_mtl"

    def __init__(
        self,
        params: Iterable[Tensor],
        *,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        optimizer: OptimizerName = "adam",
        max_norm: float = 1.0,
        update_weights_every: int = 1,
        optim_niter: int = 20,
        num_tasks: int | None = None,
    ) -> None:
        check_in_range("max_norm", max_norm, 0.0)
        self.max_norm = float(max_norm)
        self.update_weights_every = check_int("update_weights_every", update_weights_every, 1)
        self.optim_niter = check_int("optim_niter", optim_niter, 1)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, optimizer=optimizer,
                         num_tasks=num_tasks)

    def _make_aggregator(self, num_tasks: int) -> aggregation.Aggregator:
        return aggregation.NashMTL(num_tasks, self.max_norm, self.update_weights_every, self.optim_niter)

    def _aggregate(self, matrix: Tensor, record: bool) -> tuple[Tensor, Tensor | None]:
        with warnings.catch_warnings():
            # cvxpy notes on every fresh problem that Nash-MTL's problem is not DPP; nothing to act on.
            warnings.filterwarnings("ignore", message=".*not DPP.*")
            return super()._aggregate(matrix, record)

    def _aggregator_state(self) -> dict[str, Any]:
        weighting = self.aggregator.weighting  # type: ignore[union-attr]
        return {
            "step": float(weighting.step),
            "prvs_alpha": torch.from_numpy(np.array(weighting.prvs_alpha, copy=True)),
            "normalization_factor": torch.from_numpy(np.array(weighting.normalization_factor, copy=True)),
        }

    def _load_aggregator_state(self, state: dict[str, Any]) -> None:
        weighting = self.aggregator.weighting  # type: ignore[union-attr]
        weighting.reset()
        weighting.step = float(state["step"])
        weighting.prvs_alpha = state["prvs_alpha"].numpy().copy()
        weighting.normalization_factor = state["normalization_factor"].numpy().copy()
        if weighting.step > 0:  # the solver's problem is built at step 0; build it for the resumed run
            weighting._init_optim_problem()


@register("pcgrad", "PCGrad: each conflicting gradient projected off the others, summed (Yu et al. 2020)", "torchjd")
class PCGradMethod(AggregatorMethod):
    """PCGrad; the order in which each task visits the others is drawn from the method's ``seed``."""

    name = "pcgrad"

    def __init__(
        self,
        params: Iterable[Tensor],
        *,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        optimizer: OptimizerName = "adam",
        seed: int = 0,
        num_tasks: int | None = None,
    ) -> None:
        self._generator = new_generator(seed)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, optimizer=optimizer,
                         num_tasks=num_tasks)

    def _make_aggregator(self, num_tasks: int) -> aggregation.Aggregator:
        return aggregation.PCGrad()

    def _before_aggregate(self, matrix: Tensor) -> Any:
        return get_rng_states(matrix.device)

    def _task_rows(self, matrix: Tensor, weights: Tensor | None, replay: Any) -> Tensor:
        set_rng_states(replay, matrix.device)
        return pcgrad_coefficients(matrix @ matrix.T) @ matrix


@register("gradvac", "GradVac: gradients pulled toward target similarities kept as EMAs (Wang et al. 2021)", "torchjd")
class GradVacMethod(AggregatorMethod):
    """GradVac with EMA rate ``beta`` (TorchJD's default 0.5); task orders drawn from ``seed``."""

    name = "gradvac"

    def __init__(
        self,
        params: Iterable[Tensor],
        *,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        optimizer: OptimizerName = "adam",
        beta: float = 0.5,
        seed: int = 0,
        num_tasks: int | None = None,
    ) -> None:
        check_in_range("beta", beta, 0.0, 1.0)
        self.beta = float(beta)
        self._generator = new_generator(seed)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, optimizer=optimizer,
                         num_tasks=num_tasks)

    def _make_aggregator(self, num_tasks: int) -> aggregation.Aggregator:
        return aggregation.GradVac(beta=self.beta)

    def _before_aggregate(self, matrix: Tensor) -> Any:
        phi = self.aggregator.gramian_weighting._phi_t  # type: ignore[union-attr]
        return get_rng_states(matrix.device), None if phi is None else phi.clone()

    def _task_rows(self, matrix: Tensor, weights: Tensor | None, replay: Any) -> Tensor:
        rng, phi = replay
        set_rng_states(rng, matrix.device)
        vac = self.aggregator.gramian_weighting  # type: ignore[union-attr]
        return gradvac_coefficients(matrix @ matrix.T, phi, vac.beta, vac.eps) @ matrix

    def _aggregator_state(self) -> dict[str, Any]:
        phi = self.aggregator.gramian_weighting._phi_t  # type: ignore[union-attr]
        return {"phi": phi}

    def _load_aggregator_state(self, state: dict[str, Any]) -> None:
        vac = self.aggregator.gramian_weighting  # type: ignore[union-attr]
        phi = state["phi"]
        if phi is None:
            vac.reset()
        else:
            vac._phi_t = phi.clone()
            vac._state_key = (phi.shape[0], phi.dtype)


@register("graddrop", "GradDrop: per-coordinate sign dropout by gradient sign purity (Chen et al. 2020)", "torchjd")
class GradDropMethod(AggregatorMethod):
    """GradDrop (identity purity function, no leak); the random masks are drawn from ``seed``."""

    name = "graddrop"

    def __init__(
        self,
        params: Iterable[Tensor],
        *,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        optimizer: OptimizerName = "adam",
        seed: int = 0,
        num_tasks: int | None = None,
    ) -> None:
        self._generator = new_generator(seed)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, optimizer=optimizer,
                         num_tasks=num_tasks)

    def _make_aggregator(self, num_tasks: int) -> aggregation.Aggregator:
        return aggregation.GradDrop()

    def _before_aggregate(self, matrix: Tensor) -> Any:
        return get_rng_states(matrix.device)

    def _task_rows(self, matrix: Tensor, weights: Tensor | None, replay: Any) -> Tensor:
        set_rng_states(replay, matrix.device)
        return graddrop_rows(matrix)
