r"""The two-task toy landscape of CAGrad, Nash-MTL and FAMO.

Two losses of a point ``x = (x1, x2)`` in the plane.  Above ``x2 = 0`` both are steep logarithmic
valleys; below it both are shallow bowls centred at ``x1 = +7`` (task 1) and ``x1 = -7`` (task 2).
Their conflict is along ``x1``, and their Pareto set is the segment ``x1 in [-7, 7]`` at
``x2 = -8.3552``.  With ``eps = 5e-6``::

    f1L = log(max(|0.5*(-x1-7) - tanh(-x2)|, eps)) + 6
    f2L = log(max(|0.5*(-x1+3) + tanh(-x2) + 2|, eps)) + 6
    f1S = ((-x1+7)^2 + 0.1*(-x2-8)^2)/10 - 20
    f2S = ((-x1-7)^2 + 0.1*(-x2-8)^2)/10 - 20
    c1 = max(tanh(x2/2), 0);  c2 = max(tanh(-x2/2), 0)
    L1 = c1*f1L + c2*f1S;     L2 = c1*f2L + c2*f2S

Nash-MTL and FAMO scale ``L1`` by 0.1 (``l1_scale=0.1`` here), which makes the two losses unbalanced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .._validate import Int, require

__all__ = [
    "LANDSCAPE_EPS",
    "LANDSCAPE_STARTS",
    "PARETO_X1_RANGE",
    "PARETO_X2",
    "landscape_grid",
    "landscape_losses",
    "pareto_distance",
    "pareto_front",
    "reaches_pareto_set",
]

LANDSCAPE_EPS: float = 5e-6
"""Floor inside the logarithms, so that the valley floors are finite."""

LANDSCAPE_STARTS: tuple[tuple[float, float], ...] = (
    (-8.5, 7.5),
    (0.0, 0.0),
    (9.0, 9.0),
    (-7.5, -0.5),
    (9.0, -1.0),
)
"""The five starting points used in the papers (Adam on the mean loss misses the Pareto set from one)."""

PARETO_X2: float = -8.3552
"""Height of the Pareto segment, as the papers give it: where both ``x2``-gradients vanish at ``x1 = 0``.

The exact Pareto-stationary set (where the two gradients are anti-parallel) is a shallow arc through
``(0, -8.3552)`` that bows down to ``x2 ~ -8.4345`` at ``x1 = +-7``; the segment is the papers'
convention, and :func:`reaches_pareto_set`'s default tolerance covers the gap.
"""

PARETO_X1_RANGE: tuple[float, float] = (-7.0, 7.0)
"""Extent of the Pareto segment along ``x1``: between the two bowls' centres."""


def _as_points(x: Tensor | Sequence[float] | np.ndarray, name: str = "x") -> Tensor:
    """``x`` as a floating tensor of shape (..., 2); tensors keep their dtype and device."""
    points = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float64))
    if points.ndim == 0 or points.shape[-1] != 2:
        raise ValueError(f"{name} must have shape (2,) or (..., 2), got {tuple(points.shape)}")
    if not points.is_floating_point():
        points = points.to(torch.get_default_dtype())
    return points


def landscape_losses(x: Tensor, l1_scale: float = 1.0) -> Tensor:
    """The two losses ``[L1 * l1_scale, L2]`` at ``x``; differentiable, batched over leading dims.

    Args:
        x: a point of shape ``(2,)``, or points of shape ``(..., 2)``.
        l1_scale: positive factor on the first loss (0.1 in Nash-MTL and FAMO).

    Returns:
        A tensor of shape ``x.shape`` whose last dimension holds ``(L1 * l1_scale, L2)``.

    >>> landscape_losses(torch.tensor([0.0, -8.3552]))
    tensor([-15.0916, -15.0916])
    >>> landscape_losses(torch.zeros(4, 3, 2)).shape
    torch.Size([4, 3, 2])
    """
    points = _as_points(x)
    if not (isinstance(l1_scale, (int, float)) and math.isfinite(l1_scale) and l1_scale > 0):
        raise ValueError(f"l1_scale must be a finite positive number, got {l1_scale!r}")
    x1, x2 = points[..., 0], points[..., 1]

    # The clamp (not a smooth floor) is what the original code uses: below eps the gradient of the
    # log term is exactly zero, which is part of what makes the valleys hard.
    f1_steep = torch.clamp(torch.abs(0.5 * (-x1 - 7) - torch.tanh(-x2)), min=LANDSCAPE_EPS).log() + 6
    f2_steep = torch.clamp(torch.abs(0.5 * (-x1 + 3) + torch.tanh(-x2) + 2), min=LANDSCAPE_EPS).log() + 6
    f1_bowl = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    f2_bowl = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20

    upper = torch.clamp(torch.tanh(x2 / 2), min=0)
    lower = torch.clamp(torch.tanh(-x2 / 2), min=0)
    loss1 = upper * f1_steep + lower * f1_bowl
    loss2 = upper * f2_steep + lower * f2_bowl
    return torch.stack([loss1 * l1_scale, loss2], dim=-1)


def pareto_distance(x: Tensor | Sequence[float] | np.ndarray) -> Tensor:
    """Euclidean distance from ``x`` (shape ``(2,)`` or ``(..., 2)``) to the Pareto segment.

    >>> pareto_distance([3.0, PARETO_X2])
    tensor(0., dtype=torch.float64)
    >>> pareto_distance(torch.tensor([[10.0, PARETO_X2], [0.0, 0.0]]))
    tensor([3.0000, 8.3552])
    """
    points = _as_points(x).detach()
    low, high = PARETO_X1_RANGE
    x1, x2 = points[..., 0], points[..., 1]
    dx = x1 - torch.clamp(x1, min=low, max=high)
    dy = x2 - PARETO_X2
    return torch.sqrt(dx**2 + dy**2)


def reaches_pareto_set(x: Tensor | Sequence[float] | np.ndarray, tol: float = 0.1) -> Tensor:
    """Whether ``x`` lies within ``tol`` of the Pareto segment; a bool tensor of shape ``x.shape[:-1]``.

    The default tolerance covers the exact Pareto arc, which lies up to 0.08 below the segment near its
    ends (see :data:`PARETO_X2`), plus the residual jitter of Adam at lr 1e-3.  A single point gives a
    0-d tensor, usable in ``if``.

    >>> bool(reaches_pareto_set([-2.0, -8.36]))
    True
    >>> reaches_pareto_set(torch.tensor([LANDSCAPE_STARTS[0], (9.0, -8.3552)]))
    tensor([False, False])
    """
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite non-negative number, got {tol!r}")
    return pareto_distance(x) <= tol


def landscape_grid(
    lim: float = 10.0, n: int = 200, l1_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Both losses on an ``n x n`` grid over ``[-lim, lim]^2``, for contour plots.

    Returns:
        ``(X1, X2, L1, L2)``, four float64 arrays of shape ``(n, n)`` laid out as by
        ``np.meshgrid(x1, x2)`` (rows follow ``x2``, columns ``x1``); ``L1`` includes ``l1_scale``.

    >>> X1, X2, L1, L2 = landscape_grid(lim=10, n=5)
    >>> X1.shape, float(X1[0, -1]), float(X2[-1, 0])
    ((5, 5), 10.0, 10.0)
    """
    if not (isinstance(lim, (int, float)) and math.isfinite(lim) and lim > 0):
        raise ValueError(f"lim must be a finite positive number, got {lim!r}")
    require("n", n, Int(min=2))
    axis = np.linspace(-lim, lim, n)
    grid_x1, grid_x2 = np.meshgrid(axis, axis)
    points = torch.from_numpy(np.stack([grid_x1, grid_x2], axis=-1))
    with torch.no_grad():
        losses = landscape_losses(points, l1_scale=l1_scale).numpy()
    return grid_x1, grid_x2, losses[..., 0], losses[..., 1]


def pareto_front(n: int = 100, l1_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The losses ``(L1, L2)`` at ``n`` evenly spaced points of the Pareto segment (float64 arrays).

    ``L1`` rises and ``L2`` falls along the segment, from ``x1 = -7`` to ``x1 = 7``.

    >>> front_l1, front_l2 = pareto_front(3)
    >>> np.round(front_l1, 3), np.round(front_l2, 3)
    (array([ -0.399, -15.092, -19.989]), array([-19.989, -15.092,  -0.399]))
    """
    require("n", n, Int(min=2))
    x1 = np.linspace(*PARETO_X1_RANGE, n)
    points = torch.from_numpy(np.stack([x1, np.full(n, PARETO_X2)], axis=-1))
    with torch.no_grad():
        losses = landscape_losses(points, l1_scale=l1_scale).numpy()
    return losses[:, 0], losses[:, 1]
