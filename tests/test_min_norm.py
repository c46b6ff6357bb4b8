"""The exact min-norm solver (MGDA's direction) against brute force, the KKT conditions and an independent
QP solver, on ill-conditioned, rank-deficient and conflicting gradients.

Every check computes the direction ``d = w @ J`` and the conditions from the task gradients ``J`` in
float64 here, never from the solver's own intermediate quantities.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import cvxpy as cp
import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torchjd.aggregation import MGDA

from mao_lab.methods._min_norm import ExactMGDA, MinNormWeighting, gramian, min_norm_direction, min_norm_weights

KKT_TOLERANCE = 1e-6  # the bar, relative (see kkt_residual)


# -- independent tools -----------------------------------------------------------------------------------


def weights_of(jacobian: np.ndarray) -> np.ndarray:
    matrix = torch.from_numpy(jacobian)
    return min_norm_weights(matrix @ matrix.T).numpy()


def kkt_residual(jacobian: np.ndarray, weights: np.ndarray) -> float:
    """Largest violation of the min-norm KKT conditions, relative to |d| max_k |g_k|.

    Optimal iff w is in the simplex, g_k . d >= |d|^2 for every task, with equality where w_k > 0.
    """
    assert weights.min() >= 0.0 and abs(weights.sum() - 1.0) < 1e-12, weights
    d = weights @ jacobian
    norm2 = float(d @ d)
    if norm2 == 0.0:
        return 0.0  # d = 0 is the smallest norm there is
    projections = jacobian @ d
    below = np.maximum(norm2 - projections, 0.0).max()
    off_plane = np.abs(projections - norm2)[weights > 1e-9].max()
    return float(max(below, off_plane) / (np.sqrt(norm2) * np.linalg.norm(jacobian, axis=1).max()))


def origin_in_hull(jacobian: np.ndarray) -> bool:
    """Whether some w >= 0, sum(w) = 1 has J^T w = 0 (a linear programme, solved by HiGHS)."""
    tasks = jacobian.shape[0]
    equalities = np.vstack([jacobian.T, np.ones((1, tasks))])
    result = linprog(
        np.zeros(tasks), A_eq=equalities, b_eq=np.r_[np.zeros(jacobian.shape[1]), 1.0], bounds=(0, None), method="highs"
    )
    return bool(result.status == 0)


def assert_min_norm(jacobian: np.ndarray, weights: np.ndarray) -> None:
    """The KKT conditions; where the origin is in the hull, |d| at round-off level instead (then the
    relative residual divides round-off by round-off)."""
    if origin_in_hull(jacobian):
        d = weights @ jacobian
        assert np.linalg.norm(d) <= 1e-12 * np.linalg.norm(jacobian, axis=1).max()
    else:
        assert kkt_residual(jacobian, weights) < KKT_TOLERANCE


def reference_min_norm(jacobian: np.ndarray) -> np.ndarray:
    """The min-norm point of the hull by an independent interior-point solver (Clarabel through cvxpy)."""
    w = cp.Variable(jacobian.shape[0], nonneg=True)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(jacobian.T @ w)), [cp.sum(w) == 1])
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    weights = np.clip(w.value, 0.0, None)
    return weights / weights.sum() @ jacobian


def simplex_grid(size: int, steps: int) -> np.ndarray:
    """All weightings of ``size`` tasks with coordinates in multiples of 1/steps."""
    if size == 2:
        t = np.arange(steps + 1) / steps
        return np.stack([t, 1 - t], axis=1)
    a, b = np.meshgrid(np.arange(steps + 1), np.arange(steps + 1), indexing="ij")
    keep = a + b <= steps
    a, b = a[keep], b[keep]
    return np.stack([a, b, steps - a - b], axis=1) / steps


def conflicting_ill_conditioned(rng: np.random.Generator, tasks: int, dim: int, condition: float) -> np.ndarray:
    """Task gradients with singular values spread over ``condition``, norms over two decades, and
    conflicts (the rows are rotated so that some pairs have negative inner products)."""
    left, _ = np.linalg.qr(rng.standard_normal((tasks, tasks)))
    right, _ = np.linalg.qr(rng.standard_normal((dim, min(tasks, dim))))
    singular = np.logspace(0.0, -np.log10(condition), min(tasks, dim))
    jacobian = left[:, : len(singular)] @ np.diag(singular) @ right.T
    return jacobian * rng.uniform(0.1, 10.0, size=(tasks, 1))


# -- brute force ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tasks, steps", [(2, 200_000), (3, 600)])
@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force_over_the_simplex(tasks: int, steps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    jacobian = conflicting_ill_conditioned(rng, tasks, 6, condition=10.0 ** rng.uniform(0, 4))
    exact = weights_of(jacobian)
    d = exact @ jacobian
    grid = simplex_grid(tasks, steps)
    values = np.square(grid @ jacobian).sum(axis=1)
    best = int(np.argmin(values))
    d_grid = grid[best] @ jacobian
    assert d @ d <= values[best] + 1e-12 * values.max()  # never worse than any grid point
    # On the hull, |d' - d*|^2 <= |d'|^2 - |d*|^2: the grid's best point bounds the exact one's distance.
    assert np.square(d_grid - d).sum() <= values[best] - d @ d + 1e-12 * values.max()


def test_two_tasks_closed_form() -> None:
    rng = np.random.default_rng(7)
    for _ in range(50):
        g1, g2 = rng.standard_normal((2, 5)) * rng.uniform(0.01, 100, size=(2, 1))
        t = np.clip((g2 - g1) @ g2 / np.square(g1 - g2).sum(), 0.0, 1.0)  # w = (t, 1 - t)
        np.testing.assert_allclose(weights_of(np.stack([g1, g2])), [t, 1 - t], atol=1e-12)


def _two_task_cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    g = rng.standard_normal(6)
    h = rng.standard_normal(6)
    h -= (h @ g) / (g @ g) * g  # orthogonal to g
    return {
        "identical": np.stack([g, g]),
        "opposite, equal norms": np.stack([g, -g]),
        "opposite, norms 1:7": np.stack([g, -7.0 * g]),
        "same direction, norms 1:3": np.stack([3.0 * g, g]),  # the shorter one alone is optimal
        "one zero": np.stack([np.zeros(6), g]),
        "orthogonal, norms 1:100": np.stack([g, 100.0 * h / np.linalg.norm(h) * np.linalg.norm(g)]),
        "nearly identical": np.stack([g, g + 1e-6 * h]),
        "obtuse, very different norms": np.stack([1e-4 * g, -g + 2.0 * h]),
        "random ill-conditioned": conflicting_ill_conditioned(rng, 2, 6, 1e5),
    }


@pytest.mark.parametrize("case", list(_two_task_cases()))
def test_two_task_fast_path_matches_brute_force_over_a_fine_grid(case: str) -> None:
    """Two tasks take a closed form (no Wolfe loop): on the cases where a formula's division, clamp or
    round-off could go wrong, the direction is as short as the best of 2,000,001 evenly spaced weightings
    (and within the distance that bound implies), and the weights are those of the exact optimum."""
    jacobian = _two_task_cases()[case]
    weights = weights_of(jacobian)
    assert weights.min() >= 0.0 and abs(weights.sum() - 1.0) < 1e-15
    d = weights @ jacobian
    gamma = np.linspace(0.0, 1.0, 2_000_001)[:, None]
    grid = gamma * jacobian[0] + (1.0 - gamma) * jacobian[1]
    values = np.square(grid).sum(axis=1)
    best = int(np.argmin(values))
    scale = np.square(jacobian).sum(axis=1).max()
    assert d @ d <= values[best] + 1e-13 * scale
    assert np.square(grid[best] - d).sum() <= values[best] - d @ d + 1e-13 * scale
    if case == "identical":
        np.testing.assert_array_equal(weights, [0.5, 0.5])  # every weighting is optimal: the least-norm one
    if case.startswith("opposite"):
        ratio = np.linalg.norm(jacobian[1]) / np.linalg.norm(jacobian[0])  # w1 |g1| = w2 |g2| puts d at 0
        np.testing.assert_allclose(weights, [ratio / (1 + ratio), 1 / (1 + ratio)], atol=1e-14)
        np.testing.assert_allclose(d, 0.0, atol=1e-14 * np.sqrt(scale))
    if case == "same direction, norms 1:3":
        np.testing.assert_allclose(weights, [0.0, 1.0], atol=1e-15)


def test_two_task_fast_path_agrees_with_wolfe_and_on_gram_matrices_of_float32_gradients() -> None:
    """The closed form and the general active-set solver (run here on the same Gram matrix) give the same
    weights, and a float32 Gram matrix of identical gradients still gives the least-norm (1/2, 1/2)."""
    from mao_lab.methods._min_norm import _least_norm_optimal, _wolfe

    rng = np.random.default_rng(21)
    for _ in range(100):
        jacobian = conflicting_ill_conditioned(rng, 2, 8, 10.0 ** rng.uniform(0, 6))
        gram = jacobian @ jacobian.T
        gram = gram / np.diag(gram).max()
        np.testing.assert_allclose(weights_of(jacobian), _least_norm_optimal(gram, _wolfe(gram)), atol=1e-10)
    same = torch.randn(2, 1000, generator=torch.Generator().manual_seed(0))[:1].expand(2, -1)
    assert min_norm_weights(same @ same.T).tolist() == [0.5, 0.5]
    # Identical gradients whose Gram matrix carries round-off (a diagonal entry one ulp off): still (1/2, 1/2).
    rounded = torch.tensor([[1.0 + 2.0**-52, 1.0], [1.0, 1.0]], dtype=torch.float64)
    assert min_norm_weights(rounded).tolist() == [0.5, 0.5]


# -- KKT conditions up to 16 tasks ----------------------------------------------------------------------


@pytest.mark.parametrize("tasks", [3, 4, 5, 8, 12, 16])
@pytest.mark.parametrize("condition", [1e2, 1e4, 1e6])
def test_kkt_on_ill_conditioned_conflicting_gradients(tasks: int, condition: float) -> None:
    rng = np.random.default_rng(tasks * 1000 + int(np.log10(condition)))
    for _ in range(10):
        jacobian = conflicting_ill_conditioned(rng, tasks, 40, condition)
        weights = weights_of(jacobian)
        assert_min_norm(jacobian, weights)


@pytest.mark.parametrize("tasks, dim", [(4, 2), (8, 3), (16, 5), (16, 15)])
def test_kkt_on_rank_deficient_gradients(tasks: int, dim: int) -> None:
    """More tasks than dimensions: G is singular, and the optimal weights are not unique."""
    rng = np.random.default_rng(tasks + dim)
    for _ in range(10):
        jacobian = rng.standard_normal((tasks, dim)) * rng.uniform(0.1, 10, size=(tasks, 1)) + rng.standard_normal(dim)
        assert_min_norm(jacobian, weights_of(jacobian))


def test_kkt_with_duplicated_dependent_and_zero_gradients() -> None:
    rng = np.random.default_rng(3)
    base = conflicting_ill_conditioned(rng, 5, 20, 1e4) + 0.5 * rng.standard_normal(20)
    cases = {
        "duplicate": np.vstack([base, base[1]]),
        "convex combination": np.vstack([base, 0.3 * base[0] + 0.7 * base[2]]),
        "scaled copy": np.vstack([base, 3.0 * base[4]]),
        "exactly dependent": np.vstack([base[:3], base[0] + base[1] - base[2]]),
    }
    for name, jacobian in cases.items():
        assert_min_norm(jacobian, weights_of(jacobian)), name
    with_zero = np.vstack([base, np.zeros(20)])
    np.testing.assert_allclose(weights_of(with_zero) @ with_zero, 0.0, atol=1e-14)  # 0 is in the hull


@pytest.mark.parametrize("scale", [1e-3, 1e-7, 1e-10, 1e-13, 1e-15])
def test_kkt_with_gradients_of_very_different_lengths(scale: float) -> None:
    """One task's gradient 1/scale times longer than the others': its weight can rightly be ~scale, and
    the min-norm point ~scale long, so every tolerance must be relative, never absolute."""
    rng = np.random.default_rng(int(-np.log10(scale)))
    for _ in range(20):
        jacobian = rng.standard_normal((4, 6))
        jacobian[1:] *= scale * rng.uniform(0.5, 2.0, size=(3, 1))
        assert kkt_residual(jacobian, weights_of(jacobian)) < KKT_TOLERANCE


@pytest.mark.parametrize("tasks", [3, 5, 8, 16])
def test_never_worse_than_an_independent_qp_solver(tasks: int) -> None:
    rng = np.random.default_rng(tasks)
    for _ in range(5):
        jacobian = conflicting_ill_conditioned(rng, tasks, 30, 1e3)
        d = weights_of(jacobian) @ jacobian
        reference = reference_min_norm(jacobian)
        scale = np.square(jacobian).sum(axis=1).max()
        assert d @ d <= reference @ reference + 1e-14 * scale
        # Both lie in the hull, so |reference - d*|^2 <= |reference|^2 - |d*|^2.
        assert np.square(reference - d).sum() <= reference @ reference - d @ d + 1e-14 * scale


def test_pareto_stationary_gradients_give_zero() -> None:
    """Opposite gradients (and gradients whose hull contains 0): the min-norm point is the origin."""
    g = np.array([[1.0, 2.0, 0.0], [-2.0, -4.0, 0.0], [0.0, 1.0, 1.0]])
    d = weights_of(g[:2]) @ g[:2]
    np.testing.assert_allclose(d, 0.0, atol=1e-15)
    triangle = np.array([[1.0, 0.0], [-1.0, 1.0], [-1.0, -1.0]])  # 0 inside the triangle
    np.testing.assert_allclose(weights_of(triangle) @ triangle, 0.0, atol=1e-15)


# -- properties ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tasks", [2, 3, 7, 16])
def test_orthogonal_equal_norm_gradients_give_their_mean(tasks: int) -> None:
    rng = np.random.default_rng(tasks)
    orthonormal, _ = np.linalg.qr(rng.standard_normal((32, tasks)))
    jacobian = 2.5 * orthonormal.T
    np.testing.assert_allclose(weights_of(jacobian), np.full(tasks, 1 / tasks), atol=1e-13)
    direction = min_norm_direction(torch.from_numpy(jacobian)).numpy()
    np.testing.assert_allclose(direction, jacobian.mean(axis=0), atol=1e-13)


@pytest.mark.parametrize("tasks", [3, 6, 12])
def test_permuting_tasks_permutes_weights(tasks: int) -> None:
    rng = np.random.default_rng(tasks)
    jacobian = conflicting_ill_conditioned(rng, tasks, 40, 1e3)
    weights = weights_of(jacobian)
    for _ in range(5):
        order = rng.permutation(tasks)
        np.testing.assert_allclose(weights_of(jacobian[order]), weights[order], atol=1e-9)


def test_identical_gradients_get_identical_weights_in_any_order() -> None:
    rng = np.random.default_rng(11)
    base = rng.standard_normal((3, 6))
    jacobian = np.vstack([base, base[0], base[0]])  # tasks 0, 3 and 4 share a gradient
    for order in itertools.permutations(range(5)):
        weights = weights_of(jacobian[list(order)])
        back = np.empty(5)
        back[list(order)] = weights
        np.testing.assert_allclose(back[[3, 4]], back[0], atol=1e-12)


def test_weights_do_not_depend_on_the_scale_of_all_gradients() -> None:
    jacobian = conflicting_ill_conditioned(np.random.default_rng(5), 6, 20, 1e4)
    for scale in (1e-30, 1e-8, 1e8, 1e30):
        np.testing.assert_allclose(weights_of(scale * jacobian), weights_of(jacobian), atol=1e-10)


def test_single_task_and_all_zero_gradients() -> None:
    assert min_norm_weights(torch.tensor([[4.0]])).tolist() == [1.0]
    np.testing.assert_allclose(min_norm_weights(torch.zeros(3, 3)).numpy(), np.full(3, 1 / 3))


# -- the TorchJD-compatible aggregator and weighting ---------------------------------------------------------


def test_aggregator_direction_is_the_weighted_rows_and_keeps_dtype_and_device() -> None:
    rng = np.random.default_rng(2)
    jacobian = conflicting_ill_conditioned(rng, 5, 30, 1e3)
    matrix = torch.from_numpy(jacobian).float()
    aggregator = ExactMGDA()
    direction = aggregator(matrix)
    weights = aggregator.weighting(matrix)
    assert direction.dtype == weights.dtype == torch.float32
    torch.testing.assert_close(direction, weights @ matrix)
    torch.testing.assert_close(
        aggregator.gramian_weighting(matrix.double() @ matrix.double().T), weights.double(), atol=1e-6, rtol=0
    )
    assert kkt_residual(matrix.double().numpy(), weights.double().numpy() / weights.double().sum().item()) < 1e-5


def test_float32_gradients_can_be_solved_on_a_float64_gram_matrix() -> None:
    """A million float32 coordinates, gradients a thousand times longer than their min-norm point: formed in
    float32 (as TorchJD does) the Gram matrix can put the direction off by about 1e-3; formed in float64
    (``gramian_dtype=torch.float64``) it stays within the float32 weights' own rounding."""
    rng = np.random.default_rng(0)
    size = 1 << 20
    basis = np.linalg.qr(rng.standard_normal((size, 3)))[0] * np.sqrt(size)  # entries of order 1
    angles = np.array([0.3, 2.4, 4.1])  # the hull of the in-plane parts contains the origin
    in_plane = np.cos(angles)[:, None] * basis[:, 0] + np.sin(angles)[:, None] * basis[:, 1]
    matrix = torch.from_numpy(1e3 * in_plane * np.array([[1.0], [1.5], [0.7]]) + basis[:, 2]).float()
    wide = ExactMGDA(gramian_dtype=torch.float64).weighting(matrix)
    assert wide.dtype == torch.float32
    rows = matrix.double().numpy()
    exact = weights_of(rows) @ rows
    relative_error = np.linalg.norm(wide.double().numpy() @ rows - exact) / np.linalg.norm(exact)
    assert relative_error < 1e-4
    torch.testing.assert_close(gramian(matrix, torch.float64), matrix.double() @ matrix.double().T)
    torch.testing.assert_close(gramian(matrix), matrix @ matrix.T)


def test_aggregator_does_not_build_a_graph() -> None:
    matrix = torch.randn(3, 4, requires_grad=True)
    assert not ExactMGDA()(matrix).requires_grad
    assert not MinNormWeighting()(matrix @ matrix.T).requires_grad


def test_two_tasks_agree_with_torchjd_frank_wolfe() -> None:
    """For two tasks Frank-Wolfe's first line search is exact, so both solvers must agree."""
    rng = np.random.default_rng(4)
    for _ in range(20):
        matrix = torch.from_numpy(rng.standard_normal((2, 7)) * rng.uniform(0.1, 10, size=(2, 1)))
        torch.testing.assert_close(ExactMGDA()(matrix), MGDA()(matrix), atol=1e-10, rtol=1e-9)


# -- bad input -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "gramian, message",
    [
        (torch.ones(2, 3), "square"),
        (torch.ones(3), "square"),
        (torch.zeros(0, 0), "empty"),
        (torch.eye(2, dtype=torch.int64), "floating"),
        (torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]), "NaN or Inf"),
        (torch.tensor([[1.0, 0.0], [0.0, -1.0]]), "negative diagonal entry G\\[1, 1\\]"),
        (torch.tensor([[1.0, 0.5], [0.0, 1.0]]), "not symmetric"),
    ],
)
def test_bad_gram_matrices_raise_a_clear_error(gramian: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        min_norm_weights(gramian)


def test_bad_matrices_raise_a_clear_error_and_are_left_intact() -> None:
    matrix = torch.tensor([[1.0, float("inf")], [0.0, 1.0]])
    kept = matrix.clone()
    with pytest.raises(ValueError, match="NaN or Inf"):
        ExactMGDA()(matrix)
    assert torch.equal(matrix, kept)
    with pytest.raises(ValueError, match="matrix \\(T, n\\)"):
        min_norm_direction(torch.ones(2, 2, 2))


# -- the accuracy and cost command -------------------------------------------------------------------------------


def test_mgda_bench_quick_prints_accuracy_and_cost(tmp_path: Path) -> None:
    output = tmp_path / "mgda.json"
    done = subprocess.run(
        [sys.executable, "-m", "mao_lab.bench", "mgda", "--quick", "--output", str(output)],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert json.loads(output.read_text()) == result
    assert [a["tasks"] for a in result["accuracy"]] == [2, 3, 5, 8, 16]
    assert [c["tasks"] for c in result["cost"]] == [2, 4, 8, 16]
    for entry in result["accuracy"]:
        assert entry["exact_kkt_residual_max"] < KKT_TOLERANCE
        assert entry["fw_norm_ratio_p90"] >= 1.0 - 1e-9  # nothing is shorter than the min-norm point
    for entry in result["cost"]:
        assert entry["exact_vs_torchjd"] > 0 and entry["weights_exact_vs_torchjd"] > 0
