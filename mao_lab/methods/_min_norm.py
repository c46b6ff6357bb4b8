"""The exact min-norm point of the convex hull of the task gradients (MGDA), for any number of tasks.

MGDA (Désidéri 2012; Sener & Koltun 2018, see ``docs/references.md`` §3) steps along
``d = J^T w``, where ``J`` holds the task gradients as rows and ``w`` solves the quadratic programme

    minimise  w^T G w   subject to  w >= 0,  sum(w) = 1,      with the Gram matrix  G = J J^T.

``d`` is the point of the hull of the gradients nearest to the origin; it is unique even where ``w``
is not.  It is optimal exactly when every task gradient's projection on it is at least its squared
norm, ``g_k . d >= |d|^2``, with equality for every task that has weight (the KKT conditions).

TorchJD's ``MGDA`` runs Sener & Koltun's Frank-Wolfe solver with a stopping tolerance of 1e-3 on the
step size and at most 100 iterations: exact for two tasks, but with three or more on ill-conditioned
gradients it can stop far from the min-norm point (``python -m mao_lab.bench mgda`` measures how far).
Here the programme is solved exactly by Wolfe's nearest-point algorithm (Wolfe 1976, "Finding the
nearest point in a polytope"), an active-set method that works on the Gram matrix alone, keeps its
working set affinely independent (so rank-deficient and duplicated gradients need no ridge), and ends
after finitely many steps on the optimal face; two tasks take the closed form
``gamma = clamp(<g2, g2 - g1> / |g1 - g2|^2, 0, 1)`` instead.  The solve runs in float64 on the CPU: the programme has
only ``T`` variables.  The Gram matrix itself is formed in the gradients' dtype by default, as TorchJD
does (forming it is the costly part: ``T^2 n`` multiply-adds); ``gramian_dtype=torch.float64`` forms it
in float64 instead, which matters when the gradients nearly cancel (a float32 Gram matrix carries errors
of about 1e-7 of the squared norms) at several times the cost on CPUs.

Where several weightings give the same direction (duplicated or linearly dependent gradients), the
weights returned are the least-norm ones among the optimal weightings when that choice is nonnegative,
so that tasks with identical gradients get identical weights and permuting the tasks permutes the
weights.

>>> import torch
>>> min_norm_weights(torch.tensor([[1.0, 0.0], [0.0, 4.0]]))  # |g_1| = 1, |g_2| = 2, orthogonal
tensor([0.8000, 0.2000])
>>> min_norm_direction(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # orthogonal, equal norms: the mean
tensor([0.5000, 0.5000])
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchjd.aggregation import WeightedAggregator, Weighting

from .._validate import Hyperparameter, choice
from ._aggregated import AggregatorMethod
from ._registry import register

__all__ = ["ExactMGDA", "ExactMGDAMethod", "MinNormWeighting", "gramian", "min_norm_direction", "min_norm_weights"]

# Tolerances, relative to |d| max_k |g_k| like the KKT residual, plus the round-off of an inner product
# g_k . d, about eps |g_k| sum_j w_j |g_j| (it does not shrink with |d| when large gradients cancel).
_STOP = 1e-12  # Wolfe stops when no gradient falls below |d|^2 by more than this
_FACE = 1e-9  # tasks this close to the supporting hyperplane lie on the optimal face (the weights' choice)
_ROUND_OFF = 64 * float(np.finfo(np.float64).eps)
_ZERO_WEIGHT = 1e-14  # in the least-norm choice, a weight this small is round-off of a zero one
_GRAM_CHUNK_ELEMENTS = 1 << 22  # float64 copies of the Jacobian made at a time: 32 MiB


def min_norm_weights(gramian: Tensor) -> Tensor:
    """The weights ``w`` of the min-norm point of the hull of ``T`` vectors, from their Gram matrix.

    Args:
        gramian: ``G = J J^T``, shape ``(T, T)``, symmetric positive semi-definite, finite.  Any
            floating dtype and device; the solve is in float64 on the CPU.

    Returns:
        ``w`` with ``w >= 0``, ``sum(w) = 1``, minimising ``w^T G w``; same dtype and device as
        ``gramian``.

    Raises:
        ValueError: if ``gramian`` is not a finite square matrix of a floating dtype, is not symmetric,
            or has a negative diagonal entry.

    >>> import torch
    >>> g = torch.tensor([[1.0, 0.0], [1.0, 2.0]])  # g_2 projects on g_1 with |g_1|^2: g_1 is optimal
    >>> min_norm_weights(g @ g.T)
    tensor([1., 0.])
    >>> min_norm_weights(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))  # opposite gradients: d = 0
    tensor([0.5000, 0.5000])
    """
    gram = _checked_gramian(gramian)
    weights = _solve(gram)
    return torch.from_numpy(weights).to(device=gramian.device, dtype=gramian.dtype)


def min_norm_direction(matrix: Tensor, gramian_dtype: torch.dtype | None = None) -> Tensor:
    """MGDA's direction: the point of the convex hull of the rows of ``matrix`` nearest to the origin.

    The Gram matrix is formed in ``gramian_dtype`` (default: the matrix's own, see :func:`gramian`);
    the direction is ``w @ matrix`` in the matrix's dtype.

    >>> import torch
    >>> min_norm_direction(torch.tensor([[2.0, 0.0], [-1.0, 1.0]]))  # the foot of the perpendicular
    tensor([0.2000, 0.6000])
    """
    weights = min_norm_weights(gramian(_checked_matrix(matrix), gramian_dtype))
    return weights.to(matrix.dtype) @ matrix


def gramian(matrix: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``matrix @ matrix.T`` in ``dtype`` (default: the matrix's); a wider dtype than the matrix's is
    formed a bounded block of columns at a time, so that no full widened copy of the matrix is made.

    >>> import torch
    >>> gramian(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.float64)
    tensor([[ 5., 11.],
            [11., 25.]], dtype=torch.float64)
    """
    matrix = matrix.detach()
    if dtype is None or dtype == matrix.dtype:
        return matrix @ matrix.T
    rows, columns = matrix.shape
    gram = torch.zeros(rows, rows, dtype=dtype, device=matrix.device)
    step = max(1, _GRAM_CHUNK_ELEMENTS // max(rows, 1))
    for start in range(0, columns, step):
        block = matrix[:, start : start + step].to(dtype)
        gram += block @ block.T
    return gram


class MinNormWeighting(Weighting[Tensor]):
    """TorchJD ``Weighting`` of a Gram matrix: the exact min-norm weights (:func:`min_norm_weights`).

    A drop-in for ``torchjd.aggregation.MGDAWeighting`` wherever TorchJD takes a Gramian weighting;
    not differentiable (the weights are computed without a graph).

    >>> import torch
    >>> MinNormWeighting()(torch.eye(3))
    tensor([0.3333, 0.3333, 0.3333])
    """

    def forward(self, gramian: Tensor, /) -> Tensor:
        return min_norm_weights(gramian.detach())


class _MatrixMinNormWeighting(Weighting[Tensor]):
    """The min-norm weights of a matrix's rows, from their Gram matrix formed in ``gramian_dtype``."""

    def __init__(self, gramian_dtype: torch.dtype | None) -> None:
        super().__init__()
        self.gramian_dtype = gramian_dtype

    def forward(self, matrix: Tensor, /) -> Tensor:
        return min_norm_weights(gramian(_checked_matrix(matrix), self.gramian_dtype)).to(matrix.dtype)


class ExactMGDA(WeightedAggregator):
    """TorchJD ``Aggregator``: MGDA's exact min-norm direction for any number of rows.

    A drop-in for ``torchjd.aggregation.MGDA`` (same weighting interface: ``weighting(matrix)`` gives
    the weights, ``gramian_weighting`` works on a Gram matrix), but solved exactly.

    Args:
        gramian_dtype: the dtype the Gram matrix is formed in (default: the matrix's, as TorchJD);
            ``torch.float64`` for float32 gradients that nearly cancel (see the module docstring).

    >>> import torch
    >>> ExactMGDA()(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    tensor([0.3333, 0.3333, 0.3333])
    """

    def __init__(self, gramian_dtype: torch.dtype | None = None) -> None:
        if gramian_dtype is not None and not gramian_dtype.is_floating_point:
            raise ValueError(f"gramian_dtype must be a floating dtype or None, got {gramian_dtype}")
        super().__init__(_MatrixMinNormWeighting(gramian_dtype))
        self.gramian_weighting = MinNormWeighting()
        self.gramian_dtype = gramian_dtype

    def forward(self, matrix: Tensor, /) -> Tensor:
        return super().forward(matrix.detach())


# -- checks ---------------------------------------------------------------------------------------------


def _checked_float_matrix(value: object, what: str, square: bool) -> Tensor:
    """``value`` as a non-empty floating 2-D tensor (square when asked), or a ValueError naming ``what``."""
    if not isinstance(value, Tensor) or value.dim() != 2 or (square and value.shape[0] != value.shape[1]):
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{what} must be {'square (T, T)' if square else 'a matrix (T, n)'}, got {shape}")
    if value.shape[0] == 0:
        raise ValueError(f"{what} is empty (no tasks)")
    if not value.dtype.is_floating_point:
        raise ValueError(f"{what} must have a floating dtype, got {value.dtype}")
    return value


def _checked_matrix(matrix: Tensor) -> Tensor:
    # NaN or Inf anywhere in the matrix makes its Gram matrix non-finite, which the solve refuses.
    return _checked_float_matrix(matrix, "the task gradient matrix", square=False)


def _checked_gramian(gramian: Tensor) -> np.ndarray:
    gram = (
        _checked_float_matrix(gramian, "the Gram matrix", square=True)
        .detach()
        .to(device="cpu", dtype=torch.float64)
        .numpy()
    )
    if not np.isfinite(gram).all():
        raise ValueError("the Gram matrix contains NaN or Inf (so do the gradients, or they overflow)")
    diagonal = np.diag(gram)
    if (diagonal < 0).any():
        k = int(np.argmin(diagonal))
        raise ValueError(f"the Gram matrix has a negative diagonal entry G[{k}, {k}] = {diagonal[k]}: not J J^T")
    scale = max(float(diagonal.max()), np.finfo(np.float64).tiny)
    if np.abs(gram - gram.T).max() > 1e-6 * scale:
        raise ValueError("the Gram matrix is not symmetric (|G - G^T| > 1e-6 of its largest diagonal entry)")
    return (gram + gram.T) / 2


# -- the solver -----------------------------------------------------------------------------------------


def _solve(gram: np.ndarray) -> np.ndarray:
    """Wolfe's nearest-point algorithm on the Gram matrix, then the canonical choice among optimal weights
    (two tasks in closed form)."""
    size = gram.shape[0]
    scale = float(np.diag(gram).max())
    if size == 1 or scale == 0.0:  # one task, or every gradient is zero: every weighting is optimal
        return np.full(size, 1.0 / size)
    gram = gram / scale
    if size == 2:
        return _two_tasks(gram)
    weights = _wolfe(gram)
    return _least_norm_optimal(gram, weights)


def _two_tasks(gram: np.ndarray) -> np.ndarray:
    """Two tasks in closed form: ``w = (gamma, 1 - gamma)`` with ``gamma = clamp(<g2, g2 - g1> / |g1 - g2|^2, 0, 1)``.

    The minimum of ``|gamma g1 + (1 - gamma) g2|^2``, a parabola in ``gamma``, clamped to the segment;
    read off the Gram matrix (``|g1 - g2|^2 = G11 + G22 - 2 G12``).  It skips Wolfe's loop, whose
    overhead is most of a two-task step's solve.  Where ``|g1 - g2|^2`` is round-off (identical
    gradients) every weighting gives the same direction, and ``(1/2, 1/2)`` is the least-norm one.
    """
    toward_first = gram[1, 1] - gram[0, 1]  # <g2, g2 - g1>
    gap = gram[0, 0] + gram[1, 1] - 2.0 * gram[0, 1]  # |g1 - g2|^2
    if gap <= _ROUND_OFF * (gram[0, 0] + gram[1, 1]):
        return np.full(2, 0.5)
    gamma = float(np.clip(toward_first / gap, 0.0, 1.0))
    return np.array([gamma, 1.0 - gamma])


def _wolfe(gram: np.ndarray) -> np.ndarray:
    """Wolfe (1976): grow a corral (affinely independent working set) with the most violating gradient,
    move to the corral's affine minimum, shrink it while that minimum leaves the simplex."""
    size = gram.shape[0]
    start = int(np.argmin(np.diag(gram)))
    corral = [start]
    weights = np.zeros(size)
    weights[start] = 1.0
    norms = np.sqrt(np.diag(gram))
    for _ in range(50 * size + 100):  # finite in exact arithmetic; the bound only guards round-off cycles
        products = gram @ weights  # g_k . d for every task
        norm2 = float(weights @ products)
        entering = int(np.argmin(products))
        if norm2 - products[entering] <= _tolerance(_STOP, norm2, norms, weights)[entering] or entering in corral:
            break
        corral.append(entering)
        weights = _minor_cycle(gram, corral, weights)
    return weights


def _minor_cycle(gram: np.ndarray, corral: list[int], weights: np.ndarray) -> np.ndarray:
    """Move to the affine minimum of the corral, dropping members until it has positive weights."""
    while True:
        affine = _affine_minimum(gram, corral)
        # Strictly positive, not above a threshold: a gradient 1e12 times longer than the others can
        # rightly have a weight of 1e-13.
        if (affine > 0.0).all():
            weights = np.zeros_like(weights)
            weights[corral] = affine
            return weights
        current = weights[corral]
        # The largest step from the current weights towards the affine minimum that stays feasible.
        leaving = affine <= 0.0
        ratios = current[leaving] / np.maximum(current[leaving] - affine[leaving], np.finfo(np.float64).tiny)
        theta = float(np.clip(ratios.min(), 0.0, 1.0))
        moved = (1.0 - theta) * current + theta * affine
        exhausted = moved <= 0.0
        exhausted[np.flatnonzero(leaving)[np.argmin(ratios)]] = True  # at least the blocking one leaves
        weights = np.zeros_like(weights)
        weights[corral] = np.where(exhausted, 0.0, moved)
        weights /= weights.sum()
        corral[:] = [k for k, gone in zip(corral, exhausted) if not gone]


def _affine_minimum(gram: np.ndarray, corral: list[int]) -> np.ndarray:
    """The weights (summing to 1, any sign) of the point of minimum norm in the corral's affine hull."""
    size = len(corral)
    if size == 1:
        return np.ones(1)
    # KKT of  min a^T G_S a  s.t. 1^T a = 1:  [[G_S, 1], [1^T, 0]] [a; -mu] = [0; 1], with G_S scaled to
    # a largest diagonal entry of 1 (a does not depend on the scale; the ones and G_S then compare).
    sub = gram[np.ix_(corral, corral)]
    system = np.zeros((size + 1, size + 1))
    system[:size, :size] = sub / max(float(sub.diagonal().max()), np.finfo(np.float64).tiny)
    system[:size, size] = 1.0
    system[size, :size] = 1.0
    rhs = np.zeros(size + 1)
    rhs[size] = 1.0
    try:
        solution = np.linalg.solve(system, rhs)
    except np.linalg.LinAlgError:  # round-off made the corral affinely dependent: the least-norm solution
        solution = np.linalg.lstsq(system, rhs, rcond=None)[0]
    return solution[:size]


def _least_norm_optimal(gram: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Among the weightings with the same direction as ``weights``, the least-norm one, when nonnegative.

    Every optimal weighting lives on the tasks whose gradients touch the supporting hyperplane
    (``g_k . d = |d|^2``) and differs from ``weights`` by a vector of G's null space, so it solves
    ``G[:, F] v = G w``, ``sum(v) = 1``; the least-norm solution of that system is symmetric in tasks
    with identical gradients.  It is kept only if it is nonnegative and gives the same direction.
    """
    norms = np.sqrt(np.diag(gram))
    products = gram @ weights
    norm2 = float(weights @ products)
    face = np.flatnonzero(products - norm2 <= _tolerance(_FACE, norm2, norms, weights))
    if len(face) == np.count_nonzero(weights):
        return weights  # no other task touches the face: the weights are already the only candidates
    system = np.vstack([gram[:, face], np.ones((1, len(face)))])
    rhs = np.concatenate([products, [1.0]])
    candidate_on_face = np.linalg.lstsq(system, rhs, rcond=1e-10)[0]
    if (candidate_on_face < -1e-12).any():
        return weights
    candidate = np.zeros_like(weights)
    candidate[face] = np.where(candidate_on_face > _ZERO_WEIGHT, candidate_on_face, 0.0)  # round-off to 0
    candidate /= candidate.sum()
    change = candidate - weights  # |J^T change| must vanish: the same direction, to the tolerances above
    if change @ gram @ change > _FACE**2 * norm2 + _ROUND_OFF * float(np.abs(change) @ norms) ** 2:
        return weights
    return candidate


def _tolerance(relative: float, norm2: float, norms: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per task: ``relative |d| max_k |g_k|`` (here max_k |g_k| = 1) plus the round-off of ``g_k . d``."""
    return relative * np.sqrt(max(norm2, 0.0)) + _ROUND_OFF * norms * float(weights @ norms)


# -- the method ------------------------------------------------------------------------------------------


@register(
    "mgda",
    "MGDA: the exact min-norm point of the convex hull of the task gradients (Désidéri 2012; Sener & Koltun 2018)",
)
class ExactMGDAMethod(AggregatorMethod):
    """MGDA with the exact min-norm direction (:class:`ExactMGDA`) for any number of tasks.

    ``gramian_dtype="float64"`` forms the Gram matrix in float64 rather than in the gradients' dtype
    (more accurate when float32 gradients nearly cancel, at several times the cost on CPUs).  TorchJD's
    Frank-Wolfe solver remains available as ``mgda_fw``.  A task's part of the direction is
    ``w_k g_k``.

    >>> import torch
    >>> from mao_lab.methods import make
    >>> p = torch.zeros(2, requires_grad=True)
    >>> method = make("mgda", [p], lr=1.0, optimizer="sgd")
    >>> _ = method.step(lambda: [p @ torch.tensor([2.0, 0.0]), p @ torch.tensor([-1.0, 1.0])])
    >>> p.detach()  # minus the foot of the perpendicular from 0 to the segment
    tensor([-0.2000, -0.6000])
    """

    hyperparameters = {
        "gramian_dtype": Hyperparameter(
            "native", choice("native", "float64"), "dtype of the Gram matrix: the gradients' ('native') or float64"
        )
    }

    def _make_aggregator(self, num_tasks: int) -> ExactMGDA:
        return ExactMGDA(torch.float64 if self.hparams["gramian_dtype"] == "float64" else None)
