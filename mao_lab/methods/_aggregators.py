"""The gradient aggregators, each a ``torchjd.aggregation`` class behind :class:`AggregatorMethod`.

============  ==================================  =================================================
name          TorchJD class                       record: task ``k``'s part of the direction
============  ==================================  =================================================
mgda_fw       ``MGDA``                            ``alpha_k g_k`` (Frank-Wolfe estimate of it)
pcgrad        ``PCGrad``                          ``alpha_k g_k``, ``alpha = 1^T C`` (see below)
cagrad        ``CAGrad(c)``                       ``alpha_k g_k``
imtl_g        ``IMTLG``                           ``alpha_k g_k``
nash_mtl      ``NashMTL``                         ``alpha_k g_k``
aligned_mtl   ``AlignedMTL``                      ``alpha_k g_k``
upgrad        ``UPGrad``                          ``alpha_k g_k``
graddrop      ``GradDrop``                        not available (``task_updates=None``)
gradvac       ``GradVac(beta)``                   ``alpha_k g_k``, ``alpha = 1^T C`` (see below)
============  ==================================  =================================================

PCGrad and GradVac correct each task's gradient into row ``k`` of ``C J``; TorchJD's weighting
returns only the summed coefficients ``alpha = 1^T C``, so their record splits the direction as every
weighted aggregator does, ``alpha_k g_k`` (the part of the direction along task ``k``'s own gradient),
not as the corrected rows.  GradDrop's sign masks are drawn inside TorchJD and only the masked sum comes
back: its record holds the task gradients and says the split is not available (``task_updates=None``).

``mgda`` itself is the exact min-norm point (:mod:`._min_norm`); ``mgda_fw`` keeps TorchJD's
Frank-Wolfe solver (exact for two tasks, approximate from three on).

CAGrad and Nash-MTL need ``cvxpy`` (with ``clarabel``, ``ecos``), UPGrad ``quadprog``: the
``torchjd[quadprog-projector,cagrad,nash-mtl]`` extras that ``requirements.txt`` installs.  The
random ones (PCGrad's and GradVac's task orders, GradDrop's masks) draw from the method's own
generator (``seed``).

>>> import torch
>>> from mao_lab.methods import make
>>> p = torch.zeros(2, requires_grad=True)
>>> method = make("mgda_fw", [p], lr=0.1, optimizer="sgd")
>>> _ = method.step(lambda: [p @ torch.tensor([1.0, 0.0]), p @ torch.tensor([0.0, 1.0])])
>>> p.detach()  # the mean of two orthogonal gradients of equal norm, times -lr
tensor([-0.0500, -0.0500])
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from torch import Tensor
from torchjd import aggregation

from .._validate import Hyperparameter, boolean, choice, integer, number
from ._aggregated import AggregatorMethod
from ._common import Seeded
from ._registry import register
from ._torchjd import (
    gradvac_phi,
    load_balancer,
    load_gradvac_phi,
    load_nash_mtl_state,
    nash_mtl_state,
    require_private_state_support,
    save_balancer,
)

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


@register(
    "mgda_fw",
    "MGDA by TorchJD's Frank-Wolfe (eps 1e-3, 100 iterations): approximate for 3+ tasks (Sener & Koltun 2018)",
    "torchjd",
)
class MGDAMethod(AggregatorMethod):
    """MGDA's min-norm direction estimated by Sener & Koltun's Frank-Wolfe solver with TorchJD's
    defaults (stops when the step falls below 1e-3, at most 100 iterations).  Exact for two tasks; with
    three or more, on ill-conditioned gradients it can stop far from the min-norm point
    (``python -m mao_lab.bench mgda``).  ``mgda`` is the exact solver."""

    torchjd_class = aggregation.MGDA


@register("pcgrad", "PCGrad: each conflicting gradient projected off the others, summed (Yu et al. 2020)", "torchjd")
class PCGradMethod(Seeded, AggregatorMethod):
    """PCGrad; the order in which each task visits the others is drawn from the method's ``seed``.

    The record splits the direction as ``alpha_k g_k`` with TorchJD's summed weights ``alpha = 1^T C``
    (not as the projected gradients, which TorchJD does not return)."""

    torchjd_class = aggregation.PCGrad


@register("cagrad", "CAGrad: the best worst-case improvement near the mean gradient (Liu et al. 2021)", "torchjd")
class CAGradMethod(AggregatorMethod):
    """CAGrad with radius scale ``c`` (the paper's 0.4; 0 gives the mean gradient).

    The direction is ``d = g_0 + c |g_0| g_w / |g_w|``, the best worst-case improvement in the ball of
    radius ``c |g_0|`` around the mean gradient ``g_0``, as TorchJD returns it.  The authors' code then
    divides it by ``1 + c^2`` (so that its length stays near ``|g_0|``); ``rescale=True`` does the same.
    Under Adam the two differ by a constant factor only; under SGD it is a smaller step.
    """

    hyperparameters = {
        "c": Hyperparameter(0.4, number(0.0), "radius of the ball around the mean gradient"),
        "rescale": Hyperparameter(False, boolean, "divide the direction by 1 + c^2, as the authors' code does"),
    }

    def _make_aggregator(self, num_tasks: int) -> aggregation.Aggregator:
        cagrad = aggregation.CAGrad(c=self.hparams["c"])
        if not self.hparams["rescale"]:
            return cagrad
        return aggregation.WeightedAggregator(_Scaled(cagrad.weighting, 1.0 / (1.0 + self.hparams["c"] ** 2)))


class _Scaled(aggregation.Weighting):
    """A weighting's weights times a constant factor."""

    def __init__(self, weighting: aggregation.Weighting, factor: float) -> None:
        super().__init__()
        self.weighting = weighting
        self.factor = factor

    def forward(self, stat: Tensor, /) -> Tensor:
        return self.factor * self.weighting(stat)


@register("imtl_g", "IMTL-G: the direction with equal projections on every task gradient (Liu et al. 2021)", "torchjd")
class IMTLGMethod(AggregatorMethod):
    """IMTL-G: ``d = sum_k a_k g_k``, ``sum_k a_k = 1``, with equal projections ``d . g_k / |g_k|``.

    TorchJD's pseudo-inverse form: the paper's closed form when the gradients are linearly independent,
    and still defined when they are not."""

    torchjd_class = aggregation.IMTLG


@register("nash_mtl", "Nash-MTL: the Nash bargaining solution among the tasks (Navon et al. 2022)", "torchjd")
class NashMTLMethod(AggregatorMethod):
    """Nash-MTL: ``max_norm`` clips the direction's norm (0: no clipping); the weights are solved for
    every ``update_weights_every`` steps with ``optim_niter`` iterations (the paper's defaults)."""

    hyperparameters = {
        "max_norm": Hyperparameter(1.0, number(0.0), "clips the direction's norm (0: no clipping)"),
        "update_weights_every": Hyperparameter(1, integer(1), "steps between two solves for the weights"),
        "optim_niter": Hyperparameter(20, integer(1), "iterations of each solve"),
    }

    def _make_aggregator(self, num_tasks: int) -> aggregation.Aggregator:
        require_private_state_support(self.name)
        hp = self.hparams
        return aggregation.NashMTL(num_tasks, hp["max_norm"], hp["update_weights_every"], hp["optim_niter"])

    def _aggregate(self, matrix: Tensor, record: bool) -> tuple[Tensor, Tensor | None]:
        with warnings.catch_warnings():
            # cvxpy notes on every fresh problem that Nash-MTL's problem is not DPP; nothing to act on.
            warnings.filterwarnings("ignore", message=".*not DPP.*")
            return super()._aggregate(matrix, record)

    def _method_state(self) -> dict[str, Any]:
        return save_balancer(super()._method_state(), self.aggregator, aggregation.NashMTL, nash_mtl_state)

    def _load_method_state(self, state: Mapping[str, Any]) -> None:
        super()._load_method_state(state)  # checks the whole state, then builds a fresh aggregator
        load_balancer(state, self.aggregator, aggregation.NashMTL, load_nash_mtl_state)


@register(
    "aligned_mtl",
    "Aligned-MTL: the gradient matrix aligned to a well-conditioned one (Senushkin et al. 2023)",
    "torchjd",
)
class AlignedMTLMethod(AggregatorMethod):
    """Aligned-MTL with uniform preference; ``scale_mode`` picks the eigenvalue that sets the scale.

    The preference weights are ``1/T`` (the paper's are 1): the direction is the paper's divided by ``T``."""

    hyperparameters = {
        "scale_mode": Hyperparameter("min", choice("min", "median", "rmse"), "the eigenvalue that sets the scale")
    }

    def _make_aggregator(self, num_tasks: int) -> aggregation.Aggregator:
        return aggregation.AlignedMTL(scale_mode=self.hparams["scale_mode"])


@register(
    "upgrad", "UPGrad: every task gradient projected onto the dual cone, averaged (Quinton & Rey 2024)", "torchjd"
)
class UPGradMethod(AggregatorMethod):
    """UPGrad with uniform preference (quadprog projector): each task gradient projected onto the dual
    cone of all of them, averaged.  TorchJD solves the projections' dual on the trace-normalised Gram
    matrix with ``1e-4`` added to its diagonal, so they are off by up to about 1e-4 to 1e-3 of the largest
    gradient (``tests/test_conformance.py``)."""

    torchjd_class = aggregation.UPGrad


@register("graddrop", "GradDrop: per-coordinate sign dropout by gradient sign purity (Chen et al. 2020)", "torchjd")
class GradDropMethod(Seeded, AggregatorMethod):
    """GradDrop (identity purity function, no leak); the random masks are drawn from ``seed``.

    The signs are dropped in the shared parameters' gradients; the paper drops them in the gradients of
    the activations at the layer before the heads.  The record holds the task gradients but no split of
    the step by task (``task_updates=None``): TorchJD returns only the summed masked gradients."""

    torchjd_class = aggregation.GradDrop


@register("gradvac", "GradVac: gradients pulled toward target similarities kept as EMAs (Wang et al. 2021)", "torchjd")
class GradVacMethod(Seeded, AggregatorMethod):
    """GradVac with EMA rate ``beta`` (TorchJD's default 0.5); task orders drawn from ``seed``.

    Over the whole shared Jacobian, one target similarity per task pair; the paper also applies it per
    layer.  The record splits the direction as ``alpha_k g_k`` with TorchJD's summed weights
    ``alpha = 1^T C`` (not as the corrected gradients, which TorchJD does not return)."""

    hyperparameters = {"beta": Hyperparameter(0.5, number(0.0, 1.0), "EMA rate of the target similarities")}

    def _make_aggregator(self, num_tasks: int) -> aggregation.Aggregator:
        require_private_state_support(self.name)
        return aggregation.GradVac(beta=self.hparams["beta"])

    def _method_state(self) -> dict[str, Any]:
        state = super()._method_state()
        return save_balancer(state, self.aggregator, aggregation.GradVac, lambda gradvac: {"phi": gradvac_phi(gradvac)})

    def _load_method_state(self, state: Mapping[str, Any]) -> None:
        super()._load_method_state(state)  # checks the whole state, then builds a fresh aggregator
        load_balancer(
            state, self.aggregator, aggregation.GradVac, lambda gradvac, saved: load_gradvac_phi(gradvac, saved["phi"])
        )
