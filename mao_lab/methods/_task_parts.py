"""Each task's part of the PCGrad, GradVac and GradDrop aggregates, for the record.

TorchJD's PCGrad and GradVac return only the summed weights ``1^T C`` of the aggregate ``1^T C J``
(row ``i`` of ``C J`` is task ``i``'s corrected gradient), and GradDrop only the summed masked rows.
The functions here compute the per-task rows by the same algorithms, drawing the same random numbers
in the same order, so that run from the same random state they reproduce TorchJD's aggregate exactly
in sum (``tests/test_methods.py`` checks this).  They are used only when a step is recorded; the step
itself always comes from TorchJD.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["graddrop_rows", "gradvac_coefficients", "pcgrad_coefficients", "pcgrad_rows"]


def pcgrad_coefficients(gramian: Tensor) -> Tensor:
    """``C`` such that row ``i`` of ``C J`` is task ``i``'s gradient after PCGrad's projections.

    One ``torch.randperm(m)`` per task, as ``torchjd.aggregation.PCGradWeighting`` draws them.

    >>> J = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    >>> C = pcgrad_coefficients(J @ J.T)
    >>> C @ J  # each gradient loses its component along the other: the rows are now orthogonal to it
    tensor([[0.5000, 0.5000],
            [0.0000, 1.0000]])
    """
    dtype = gramian.dtype
    G = gramian.to(device="cpu")
    m = G.shape[0]
    rows = torch.zeros(m, m, dtype=dtype)
    for i in range(m):
        permutation = torch.randperm(m)
        current = torch.zeros(m, dtype=dtype)
        current[i] = 1.0
        for j in permutation:
            if j == i:
                continue
            inner = G[j] @ current
            if inner < 0.0:
                current[j] -= inner / G[j, j]
        rows[i] = current
    return rows.to(gramian.device)


def pcgrad_rows(matrix: Tensor) -> Tensor:
    """Each row of ``matrix`` (task ``k``'s gradient) after PCGrad's projections: ``C J``."""
    return pcgrad_coefficients(matrix @ matrix.T) @ matrix


def gradvac_coefficients(gramian: Tensor, phi: Tensor | None, beta: float, eps: float) -> Tensor:
    """``C`` such that row ``i`` of ``C J`` is task ``i``'s gradient after GradVac's corrections.

    ``phi`` is GradVac's EMA of target cosine similarities *before* the step (``None`` or a stale
    shape means zeros, as in TorchJD); it is not modified.  The visiting order of the other tasks is
    drawn as ``torchjd.aggregation.GradVacWeighting`` draws it.
    """
    dtype = gramian.dtype
    G = gramian.to(device="cpu")
    m = G.shape[0]
    phi_t = torch.zeros(m, m, dtype=dtype) if phi is None or phi.shape != (m, m) or phi.dtype != dtype else phi.clone()
    C = torch.eye(m, dtype=dtype)
    for i in range(m):
        cG = C[i] @ G
        others = [j for j in range(m) if j != i]
        perm = torch.randperm(len(others))
        for j in [others[idx] for idx in perm.tolist()]:
            dot_ij = cG[j]
            norm_i = (cG * C[i]).sum().clamp(min=0.0).sqrt()
            norm_j = G[j, j].clamp(min=0.0).sqrt()
            phi_ijk = dot_ij / (norm_i * norm_j + eps)
            phi_hat = phi_t[i, j]
            if phi_ijk < phi_hat:
                sqrt_1_phi2 = (1.0 - phi_ijk * phi_ijk).clamp(min=0.0).sqrt()
                sqrt_1_hat2 = (1.0 - phi_hat * phi_hat).clamp(min=0.0).sqrt()
                w = norm_i * (phi_hat * sqrt_1_phi2 - phi_ijk * sqrt_1_hat2) / (norm_j * sqrt_1_hat2 + eps)
                C[i, j] = C[i, j] + w
                cG = cG + w * G[j]
            phi_t[i, j] = (1.0 - beta) * phi_hat + beta * phi_ijk
    return C.to(gramian.device)


def graddrop_rows(matrix: Tensor) -> Tensor:
    """Each row of ``matrix`` after GradDrop's sign mask (identity ``f``, no leak); they sum to the aggregate.

    One ``torch.rand`` of the row length, as ``torchjd.aggregation.GradDrop`` draws it.

    >>> rows = graddrop_rows(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))  # no conflict: nothing dropped
    >>> rows
    tensor([[1., 2.],
            [3., 4.]])
    """
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        return torch.zeros_like(matrix)
    purity = 0.5 * (torch.ones_like(matrix[0]) + matrix.sum(dim=0) / matrix.abs().sum(dim=0))
    u = torch.rand(purity.shape, dtype=matrix.dtype, device=matrix.device)
    keep = (purity > u) * (matrix > 0) + (purity < u) * (matrix < 0)
    return keep * matrix
