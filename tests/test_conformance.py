"""Every aggregator and weighting against a characterisation written from its paper, not from the code.

Only the public API is used: ``make(name, [p], optimizer="sgd", lr=1.0)`` on a parameter vector ``p``
with linear task losses ``L_k = c_k + g_k . p``, so every task gradient is the known ``g_k`` whatever
``p`` is, and one SGD step of learning rate 1 moves ``p`` by exactly minus the method's direction ``d``.
Each test then checks ``d`` (or the weights ``w`` solving ``d = sum_k w_k g_k``) against what the paper
says, computed here independently (closed forms, brute force, or cvxpy on the paper's own programme).
References are in ``docs/references.md`` §3.

Where the lab departs from a paper on purpose, the test says so and checks the lab's documented variant.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import cvxpy as cp
import numpy as np
import pytest
import torch
from scipy import stats

from mao_lab.methods import make

# -- the probe: one method step on known gradients ------------------------------------------------------


def conflicting(seed: int, tasks: int = 3, dim: int = 6) -> np.ndarray:
    """Task gradients with norms over a decade and at least one conflicting (negative inner product) pair."""
    rng = np.random.default_rng(seed)
    while True:
        jacobian = rng.standard_normal((tasks, dim)) * rng.uniform(0.3, 3.0, size=(tasks, 1))
        gram = jacobian @ jacobian.T
        if (gram[np.triu_indices(tasks, 1)] < 0).any():
            return jacobian


class Probe:
    """A method on one float64 parameter vector with linear losses ``offsets_k + jacobian_k . p``."""

    def __init__(
        self, name: str, jacobian: np.ndarray, offsets: Sequence[float] | None = None, **hyperparameters: object
    ):
        self.jacobian = torch.from_numpy(jacobian)
        self.offsets = torch.tensor(offsets if offsets is not None else [10.0] * len(jacobian), dtype=torch.float64)
        self.p = torch.zeros(jacobian.shape[1], dtype=torch.float64, requires_grad=True)
        self.method = make(name, [self.p], optimizer="sgd", lr=1.0, **hyperparameters)

    def losses(self) -> list[torch.Tensor]:
        return [self.offsets[k] + self.jacobian[k] @ self.p for k in range(len(self.jacobian))]

    def loss_values(self) -> np.ndarray:
        with torch.no_grad():
            return torch.stack(self.losses()).numpy()

    def step(self) -> np.ndarray:
        """One step; the direction ``d`` it took."""
        before = self.p.detach().clone()
        self.method.step(self.losses)
        return (before - self.p.detach()).numpy()

    def weights(self, direction: np.ndarray) -> np.ndarray:
        """The ``w`` with ``d = J^T w`` (the rows are linearly independent in every probe here)."""
        jacobian = self.jacobian.numpy()
        w, *_ = np.linalg.lstsq(jacobian.T, direction, rcond=None)
        np.testing.assert_allclose(w @ jacobian, direction, atol=1e-9 * np.abs(direction).max() + 1e-300)
        return w


def direction(name: str, jacobian: np.ndarray, **hyperparameters: object) -> np.ndarray:
    return Probe(name, jacobian, **hyperparameters).step()


# -- MGDA (Désidéri 2012; Sener & Koltun 2018) ----------------------------------------------------------------


def ill_conditioned_conflicting(seed: int, tasks: int, dim: int = 24) -> np.ndarray:
    rng = np.random.default_rng(seed)
    left, _ = np.linalg.qr(rng.standard_normal((tasks, tasks)))
    right, _ = np.linalg.qr(rng.standard_normal((dim, tasks)))
    singular = np.logspace(0.0, -4.0, tasks)
    return left @ np.diag(singular) @ right.T * rng.uniform(0.1, 10.0, size=(tasks, 1))


def mgda_kkt_residual(jacobian: np.ndarray, d: np.ndarray, weights: np.ndarray) -> float:
    """The min-norm point of the hull: w in the simplex, g_k . d >= |d|^2, equality where w_k > 0."""
    norm2 = d @ d
    projections = jacobian @ d
    simplex = max(-weights.min(), abs(weights.sum() - 1.0))
    below = np.maximum(norm2 - projections, 0.0).max()
    off_plane = np.abs(projections - norm2)[weights > 1e-6].max()
    scale = np.sqrt(norm2) * np.linalg.norm(jacobian, axis=1).max()
    return float(max(simplex, max(below, off_plane) / scale))


def test_mgda_two_tasks_is_the_min_norm_point() -> None:
    for seed in range(10):
        jacobian = ill_conditioned_conflicting(seed, 2)
        probe = Probe("mgda", jacobian)
        d = probe.step()
        assert mgda_kkt_residual(jacobian, d, probe.weights(d)) < 1e-6


@pytest.mark.parametrize("tasks", [3, 5, 8, 16])
def test_mgda_is_the_min_norm_point_for_any_number_of_tasks(tasks: int) -> None:
    for seed in range(10):
        jacobian = ill_conditioned_conflicting(seed, tasks, dim=max(24, 2 * tasks))
        probe = Probe("mgda", jacobian)
        d = probe.step()
        assert mgda_kkt_residual(jacobian, d, probe.weights(d)) < 1e-6


def test_mgda_fw_keeps_torchjd_frank_wolfe_which_misses_the_min_norm_point() -> None:
    """``mgda_fw`` is TorchJD's solver: exact for two tasks, off on some ill-conditioned three-task cases."""
    jacobian = ill_conditioned_conflicting(0, 2)
    probe = Probe("mgda_fw", jacobian)
    d = probe.step()
    assert mgda_kkt_residual(jacobian, d, probe.weights(d)) < 1e-6
    residuals = []
    for seed in range(10):
        jacobian = ill_conditioned_conflicting(seed, 3)
        probe = Probe("mgda_fw", jacobian)
        d = probe.step()
        residuals.append(mgda_kkt_residual(jacobian, d, probe.weights(d)))
    assert max(residuals) > 1e-3


def test_mgda_orthogonal_equal_norm_gradients_give_their_mean() -> None:
    orthonormal, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((8, 4)))
    jacobian = 3.0 * orthonormal.T
    np.testing.assert_allclose(direction("mgda", jacobian), jacobian.mean(axis=0), atol=1e-6)


# -- PCGrad (Yu et al. 2020) ----------------------------------------------------------------------------------


def pcgrad_paper(jacobian: np.ndarray, orders: Sequence[Sequence[int]]) -> np.ndarray:
    """Algorithm 1 of Yu et al.: each g_i, in turn against every *other* g_j (the original g_j, in the
    given order), loses its component along g_j if they conflict; the projected gradients are summed."""
    total = np.zeros(jacobian.shape[1])
    for i, order in enumerate(orders):
        projected = jacobian[i].copy()
        for j in order:
            inner = projected @ jacobian[j]
            if inner < 0:
                projected -= inner / (jacobian[j] @ jacobian[j]) * jacobian[j]
        total += projected
    return total


def pcgrad_candidates(jacobian: np.ndarray) -> list[np.ndarray]:
    tasks = len(jacobian)
    per_task = [list(itertools.permutations([j for j in range(tasks) if j != i])) for i in range(tasks)]
    return [pcgrad_paper(jacobian, orders) for orders in itertools.product(*per_task)]


@pytest.mark.parametrize("seed", range(8))
def test_pcgrad_is_the_papers_pairwise_rule_in_some_order(seed: int) -> None:
    jacobian = conflicting(seed, tasks=3)
    d = direction("pcgrad", jacobian, seed=seed)
    distances = [np.abs(d - c).max() for c in pcgrad_candidates(jacobian)]
    assert min(distances) < 1e-9 * np.abs(jacobian).max(), distances


def test_pcgrad_never_projects_a_gradient_on_itself() -> None:
    """After its projections off the others, a gradient can conflict with its own original: here some
    orders of a self-including loop (the authors' code visits all T gradients) give results that no order
    of the paper's rule (j != i) gives, and the lab never lands on those."""
    jacobian = np.array([[4.0, 3.0], [-2.0, -4.0], [-2.0, 0.0]])
    tasks = len(jacobian)
    without = pcgrad_candidates(jacobian)
    with_self = [
        pcgrad_paper(jacobian, orders)
        for orders in itertools.product(*[list(itertools.permutations(range(tasks)))] * tasks)
    ]
    self_only = [c for c in with_self if min(np.abs(c - w).max() for w in without) > 1e-6]
    assert self_only  # the matrix tells the two rules apart
    for seed in range(16):
        d = direction("pcgrad", jacobian, seed=seed)
        assert min(np.abs(d - c).max() for c in without) < 1e-12


def test_pcgrad_leaves_agreeing_gradients_alone() -> None:
    jacobian = np.array([[1.0, 0.2, 0.0], [0.5, 1.0, 0.1], [0.3, 0.1, 2.0]])
    np.testing.assert_allclose(direction("pcgrad", jacobian), jacobian.sum(axis=0), atol=1e-12)


# -- IMTL-G (Liu et al. 2021) ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_imtl_g_projects_equally_on_every_normalised_task_gradient(seed: int) -> None:
    """IMTL-G: d = sum_k a_k g_k with sum_k a_k = 1 and d . u_k equal for every unit gradient u_k."""
    jacobian = conflicting(seed, tasks=4, dim=7)
    probe = Probe("imtl_g", jacobian)
    d = probe.step()
    units = jacobian / np.linalg.norm(jacobian, axis=1, keepdims=True)
    projections = units @ d
    np.testing.assert_allclose(projections, projections.mean(), rtol=1e-9)
    assert probe.weights(d).sum() == pytest.approx(1.0, abs=1e-9)
    # Solved from the condition: d = g_1 - a_{2..T} D with rows D_k = g_1 - g_k, and d . (u_1 - u_k) = 0
    # for every k give a_{2..T} = g_1 U^T (D U^T)^-1, rows U_k = u_1 - u_k.
    differences, unit_differences = jacobian[0] - jacobian[1:], units[0] - units[1:]
    rest = jacobian[0] @ unit_differences.T @ np.linalg.inv(differences @ unit_differences.T)
    closed = np.concatenate([[1 - rest.sum()], rest]) @ jacobian
    np.testing.assert_allclose(d, closed, rtol=1e-8, atol=1e-10)


# -- CAGrad (Liu et al. 2021) ---------------------------------------------------------------------------------


def cagrad_worst_case(jacobian: np.ndarray, c: float) -> np.ndarray:
    """The paper's programme, primal form: maximise min_k g_k . d subject to |d - g_0| <= c |g_0|,
    g_0 the mean gradient (solved by cvxpy; the lab's TorchJD code solves the dual)."""
    g0 = jacobian.mean(axis=0)
    d = cp.Variable(jacobian.shape[1])
    problem = cp.Problem(cp.Maximize(cp.min(jacobian @ d)), [cp.norm(d - g0, 2) <= c * np.linalg.norm(g0)])
    problem.solve(solver=cp.CLARABEL)
    return np.asarray(d.value)


def test_cagrad_two_tasks_brute_force_worst_case_improvement() -> None:
    """T = 2: the optimum lies in the plane of g_1, g_2; scan the circle of radius c|g_0| around g_0 there."""
    c = 0.4
    for seed in range(6):
        jacobian = conflicting(seed, tasks=2, dim=5)
        g0 = jacobian.mean(axis=0)
        basis, _ = np.linalg.qr(jacobian.T)  # orthonormal basis of the plane
        angles = np.linspace(0, 2 * np.pi, 400_001)
        circle = g0 + c * np.linalg.norm(g0) * (
            np.cos(angles)[:, None] * basis[:, 0] + np.sin(angles)[:, None] * basis[:, 1]
        )
        worst = (circle @ jacobian.T).min(axis=1)
        best = circle[np.argmax(worst)]
        d = direction("cagrad", jacobian, c=c)
        # The lab (TorchJD) returns the paper's d without the final 1 / (1 + c^2) of the authors' code,
        # to its interior-point solver's accuracy (about 1e-5 of |g_0|; the grid's is 1e-9).
        np.testing.assert_allclose(d, best, atol=2e-4 * np.linalg.norm(g0))
        assert (jacobian @ d).min() >= worst.max() * (1 - 2e-4)


@pytest.mark.parametrize("seed", range(4))
def test_cagrad_maximises_the_worst_task_improvement_in_the_ball(seed: int) -> None:
    jacobian = conflicting(seed, tasks=4, dim=6)
    for c in (0.2, 0.4, 0.8):
        d = direction("cagrad", jacobian, c=c)
        reference = cagrad_worst_case(jacobian, c)
        np.testing.assert_allclose(d, reference, atol=2e-4 * np.linalg.norm(jacobian.mean(axis=0)))


def test_cagrad_c_zero_is_the_mean_gradient() -> None:
    jacobian = conflicting(1, tasks=3)
    np.testing.assert_allclose(direction("cagrad", jacobian, c=0.0), jacobian.mean(axis=0), atol=1e-9)


def test_cagrad_paper_rescale_divides_the_direction_by_one_plus_c_squared() -> None:
    """The authors' code returns d / (1 + c^2); the lab does with rescale=True (default False: TorchJD's d)."""
    jacobian = conflicting(2, tasks=3)
    c = 0.5
    d = direction("cagrad", jacobian, c=c, rescale=True)
    scale = np.linalg.norm(jacobian.mean(axis=0))
    np.testing.assert_allclose(d, cagrad_worst_case(jacobian, c) / (1 + c**2), atol=2e-4 * scale)
    np.testing.assert_allclose(d * (1 + c**2), direction("cagrad", jacobian, c=c), atol=1e-12 * scale)


# -- Nash-MTL (Navon et al. 2022) -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_nash_mtl_satisfies_the_bargaining_condition(seed: int) -> None:
    """Navon et al., Claim 3.1: d = sum_k a_k g_k with a > 0 and (G a)_k = 1 / a_k, i.e. a_k g_k . d = 1.
    Their solver (kept by TorchJD) is up to 20 steps of a sequence of convex problems, so the condition
    holds to the solver's accuracy (3e-7 on 20 such cases; checked to 1e-5); without clipping (max_norm = 0)."""
    jacobian = conflicting(seed, tasks=3, dim=6)
    probe = Probe("nash_mtl", jacobian, max_norm=0.0)
    d = probe.step()
    alpha = probe.weights(d)
    assert (alpha > 0).all()
    np.testing.assert_allclose(alpha * (jacobian @ d), 1.0, rtol=1e-5)


def test_nash_mtl_clips_the_direction_norm() -> None:
    jacobian = 5.0 * conflicting(0, tasks=3)
    d = direction("nash_mtl", jacobian, max_norm=0.1)
    assert np.linalg.norm(d) == pytest.approx(0.1, rel=1e-6)


# -- UPGrad (Quinton & Rey 2024) ------------------------------------------------------------------------------


def dual_cone_projection(jacobian: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """argmin |x - v| subject to J x >= 0: the projection onto the dual cone of the rows (cvxpy, primal)."""
    x = cp.Variable(jacobian.shape[1])
    cp.Problem(cp.Minimize(cp.sum_squares(x - vector)), [jacobian @ x >= 0]).solve(solver=cp.CLARABEL)
    return np.asarray(x.value)


@pytest.mark.parametrize("seed", range(4))
def test_upgrad_averages_the_projections_onto_the_dual_cone(seed: int) -> None:
    """UPGrad: d = (1/T) sum_k pi_J(g_k). TorchJD normalises the Gram matrix by its trace and adds 1e-4
    to its diagonal before solving, so agreement is to about 1e-4 of the gradients' scale (4e-4 at worst on
    20 such cases; checked to 1e-3)."""
    jacobian = conflicting(seed, tasks=3, dim=6)
    d = direction("upgrad", jacobian)
    reference = np.mean([dual_cone_projection(jacobian, g) for g in jacobian], axis=0)
    scale = np.linalg.norm(jacobian, axis=1).max()
    np.testing.assert_allclose(d, reference, atol=1e-3 * scale)
    assert (jacobian @ d).min() > -1e-3 * scale**2  # no task gets worse, to first order


# -- Aligned-MTL (Senushkin et al. 2023) ----------------------------------------------------------------------


def test_aligned_mtl_combines_the_condition_number_one_matrix() -> None:
    """Aligned-MTL (Alg. 1): with G = J J^T = V diag(l) V^T, B = sqrt(l_min) V diag(l)^(-1/2) V^T and the
    direction J^T B w; the lab uses uniform preference w = 1/T (the paper's w = 1 up to the factor T)."""
    jacobian = conflicting(3, tasks=3, dim=6)
    eigenvalues, vectors = np.linalg.eigh(jacobian @ jacobian.T)
    balance = np.sqrt(eigenvalues.min()) * vectors @ np.diag(eigenvalues**-0.5) @ vectors.T
    expected = jacobian.T @ balance @ np.full(3, 1 / 3)
    np.testing.assert_allclose(direction("aligned_mtl", jacobian), expected, rtol=1e-6, atol=1e-9)


# -- GradDrop (Chen et al. 2020) ------------------------------------------------------------------------------


def test_graddrop_keeps_one_sign_per_coordinate_with_the_purity_probability() -> None:
    """GradDrop: per coordinate, P = (1 + sum g / sum |g|) / 2; with U ~ U(0, 1) the positive parts are kept
    when P > U, the negative ones when P < U.  Applied here to the parameters' gradients (the paper applies
    it to activations' gradients at the layer before the heads: a documented departure)."""
    jacobian = np.array([[1.0, -1.0, 2.0, 0.5], [3.0, -2.0, -1.0, -1.5], [0.5, -0.5, -1.0, 1.0]])
    positive = np.where(jacobian > 0, jacobian, 0).sum(axis=0)
    negative = np.where(jacobian < 0, jacobian, 0).sum(axis=0)
    purity = (1 + jacobian.sum(axis=0) / np.abs(jacobian).sum(axis=0)) / 2
    kept_positive = np.zeros(4)
    draws = 400
    for seed in range(draws):
        d = direction("graddrop", jacobian, seed=seed)
        is_positive = np.isclose(d, positive, atol=1e-12)
        assert (is_positive | np.isclose(d, negative, atol=1e-12)).all(), d
        kept_positive += is_positive & ~np.isclose(positive, negative)
    np.testing.assert_allclose(kept_positive[:2], [draws, 0])  # all agree: that sign is always kept
    assert stats.binomtest(int(kept_positive[2]), draws, purity[2]).pvalue > 1e-3
    assert stats.binomtest(int(kept_positive[3]), draws, purity[3]).pvalue > 1e-3


# -- GradVac (Wang et al. 2021) -------------------------------------------------------------------------------


def test_gradvac_first_step_is_pcgrad_and_agreeing_gradients_are_left_alone() -> None:
    """GradVac's first targets are 0, and raising a negative cosine to 0 is PCGrad's projection; with all
    cosines above their targets nothing moves."""
    jacobian = conflicting(5, tasks=3)
    d = direction("gradvac", jacobian, seed=1)
    assert min(np.abs(d - c).max() for c in pcgrad_candidates(jacobian)) < 1e-7 * np.abs(jacobian).max()
    agreeing = np.array([[1.0, 0.2, 0.0], [0.5, 1.0, 0.1], [0.3, 0.1, 2.0]])
    np.testing.assert_allclose(direction("gradvac", agreeing), agreeing.sum(axis=0), atol=1e-12)


# -- GradNorm (Chen et al. 2018) ------------------------------------------------------------------------------


def test_gradnorm_balances_the_gradient_norms_at_the_last_shared_layer() -> None:
    """With alpha = 0 GradNorm drives w_k |grad_W L_k| to a common value at the last shared layer W (not
    over the whole trunk), keeping sum_k w_k = T.  Two shared layers W1 -> W2, two heads of equal norm but
    different alignment with W2, and losses scaled 1 and 30: balance at W2 means w_1 / w_2 = 30 whatever W1
    sees."""
    torch.manual_seed(0)
    x = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    w1 = torch.tensor([[1.0, 0.3, -0.2], [0.1, 2.0, 0.5]], dtype=torch.float64, requires_grad=True)
    w2 = torch.tensor([[3.0, 0.0], [0.0, 0.2]], dtype=torch.float64, requires_grad=True)
    heads = [
        torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True),
        torch.tensor([0.0, 1.0], dtype=torch.float64, requires_grad=True),
    ]
    scales = (1.0, 30.0)
    params = [w1, w2, *heads]
    lr = 1e-7  # the model barely moves: the gradients stay put while the weights settle

    def losses() -> list[torch.Tensor]:
        z = w2 @ (w1 @ x)
        return [scale * (100.0 + head @ z) for scale, head in zip(scales, heads)]

    method = make("gradnorm", params, optimizer="sgd", lr=lr, alpha=0.0, weights_lr=0.01)
    for _ in range(600):
        before = w2.detach().clone()
        per_task = [torch.autograd.grad(loss, w2, retain_graph=True)[0] for loss in losses()]
        method.step(losses)
        update = ((before - w2.detach()) / lr).reshape(-1).numpy()
        basis = np.stack([g.reshape(-1).numpy() for g in per_task], axis=1)
        weights, *_ = np.linalg.lstsq(basis, update, rcond=None)
    norms_w2 = np.array([torch.linalg.norm(g).item() for g in per_task])
    assert weights.sum() == pytest.approx(2.0, rel=1e-3)
    balance = weights * norms_w2
    assert balance[0] / balance[1] == pytest.approx(1.0, abs=0.05)
    norms_w1 = np.array(
        [torch.linalg.norm(torch.autograd.grad(loss, w1, retain_graph=True)[0]).item() for loss in losses()]
    )
    assert abs((weights * norms_w1)[0] / (weights * norms_w1)[1] - 1.0) > 0.5  # not balanced over W1


# -- loss weightings: UW, DWA, RLW, FAMO, IMTL-L -----------------------------------------------------------


def weights_over_steps(
    name: str, jacobian: np.ndarray, offsets: Sequence[float], steps: int, **hyperparameters: object
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The weights of each step, and the losses each step saw (before it moved p)."""
    probe = Probe(name, jacobian, offsets, **hyperparameters)
    weights, losses = [], []
    for _ in range(steps):
        losses.append(probe.loss_values())
        weights.append(probe.weights(probe.step()))
    return weights, losses


def test_uw_weights_follow_the_learned_log_variances() -> None:
    """Kendall et al. (regression form, used for every task here): L = sum_k L_k / (2 sigma_k^2) + log sigma_k
    = sum_k (exp(-s_k) L_k + s_k) / 2 with s = log sigma^2, learned by the same SGD:
    s_k <- s_k - lr (1 - exp(-s_k) L_k) / 2.  (The paper's classification form 1/sigma^2 is not offered.)"""
    jacobian = conflicting(0, tasks=3, dim=5) * 0.01
    offsets = [0.5, 2.0, 4.0]
    weights, losses = weights_over_steps("uw", jacobian, offsets, steps=4)
    s = np.zeros(3)
    for w, loss in zip(weights, losses):
        np.testing.assert_allclose(w, np.exp(-s) / 2, rtol=1e-6)  # the log-variances are float32
        s = s - 1.0 * (1 - np.exp(-s) * loss) / 2


def test_dwa_weights_follow_the_ratio_of_the_last_two_losses() -> None:
    """Liu et al. 2019: w_k(t) = T exp(r_k(t-1)/temp) / sum_i exp(r_i(t-1)/temp), r_k(t-1) = L_k(t-1)/L_k(t-2),
    and w = 1 for the first two epochs (here one step per epoch)."""
    jacobian = np.array([[0.3, 0.0, 0.0], [0.0, 0.05, 0.0], [0.1, 0.1, 0.2]])
    weights, losses = weights_over_steps("dwa", jacobian, [5.0, 3.0, 8.0], steps=6, temperature=2.0)
    for t, w in enumerate(weights):
        if t < 2:
            np.testing.assert_allclose(w, 1.0, rtol=1e-9)
        else:
            ratios = losses[t - 1] / losses[t - 2]
            np.testing.assert_allclose(w, 3 * np.exp(ratios / 2.0) / np.exp(ratios / 2.0).sum(), rtol=1e-9)


def test_rlw_weights_are_a_softmax_of_standard_normal_draws() -> None:
    """Lin et al. 2022: w = softmax(lambda), lambda ~ N(0, I) each step; so log(w_i / w_j) ~ N(0, 2)."""
    jacobian = np.eye(3)
    weights, _ = weights_over_steps("rlw", jacobian, [1.0, 1.0, 1.0], steps=600, seed=3)
    w = np.array(weights)
    assert (w > 0).all()
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-9)
    log_ratios = np.log(w[:, 0] / w[:, 1])
    assert stats.kstest(log_ratios, stats.norm(scale=np.sqrt(2)).cdf).pvalue > 1e-3
    assert stats.kstest(np.log(w[:, 1] / w[:, 2]), stats.norm(scale=np.sqrt(2)).cdf).pvalue > 1e-3


def test_famo_first_step_and_logit_update_direction() -> None:
    """Liu et al. 2023: d = c sum_k z_k / (L_k - b_k) g_k with z = softmax(xi), c = (sum_k z_k / (L_k - b_k))^-1
    (the lab keeps TorchJD's +1e-8 in the denominators); xi starts at 0, and after the step it moves
    towards the tasks whose log-loss fell least."""
    jacobian = np.array([[0.5, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 0.02]])
    offsets = np.array([2.0, 4.0, 8.0])
    weights, losses = weights_over_steps("famo", jacobian, offsets, steps=2)
    z = np.full(3, 1 / 3)
    first = z / losses[0]
    np.testing.assert_allclose(weights[0], first / first.sum(), rtol=1e-6)
    # Step 2: the task whose loss fell least (in log) now has the largest logit, hence the largest z_k/L_k
    # relative to step 1's.
    log_drop = np.log(losses[0]) - np.log(losses[1])
    relative = (weights[1] * losses[1]) / (weights[0] * losses[0])
    assert np.argmax(relative) == np.argmin(log_drop)
    assert np.argmin(relative) == np.argmax(log_drop)


def test_imtl_l_weights_follow_the_learned_log_scales() -> None:
    """Liu et al. 2021 (IMTL-L): L = sum_k (exp(s_k) L_k - s_k), s learned: s_k <- s_k - lr (exp(s_k) L_k - 1)."""
    jacobian = conflicting(1, tasks=3, dim=5) * 0.01
    offsets = [0.5, 0.9, 1.2]
    weights, losses = weights_over_steps("imtl_l", jacobian, offsets, steps=4)
    s = np.zeros(3)
    for w, loss in zip(weights, losses):
        np.testing.assert_allclose(w, np.exp(s), rtol=1e-6)  # the log-scales are float32
        s = s - 1.0 * (np.exp(s) * loss - 1)


# -- IUS and grouping (Pascal et al. 2021): what a parameter the group does not reach gets -------------------


def two_head_problem(seed: int = 0) -> tuple[list[torch.Tensor], Callable[[], list[torch.Tensor]]]:
    generator = torch.Generator().manual_seed(seed)
    trunk = torch.randn(4, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    heads = [torch.randn(4, generator=generator, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    x = torch.randn(8, 3, generator=generator, dtype=torch.float64)
    targets = torch.randn(3, 8, generator=generator, dtype=torch.float64)

    def losses() -> list[torch.Tensor]:
        features = torch.tanh(x @ trunk.T)
        return [(features @ head - target).pow(2).mean() for head, target in zip(heads, targets)]

    return [trunk, *heads], losses


def authors_loop(
    params: list[torch.Tensor],
    losses: Callable[[], list[torch.Tensor]],
    groups: list[list[int]],
    steps: int,
    set_to_none: bool,
) -> None:
    """The public code's loop: for each group, zero_grad, forward, backward of the group's summed loss, one
    step of a single torch.optim.Adam.  Its torch 1.2 zero_grad zeroed existing gradients
    (``set_to_none=False`` here); today's default sets them to None."""
    adam = torch.optim.Adam(params, lr=0.05)
    for _ in range(steps):
        for group in groups:
            adam.zero_grad(set_to_none=set_to_none)
            values = losses()
            sum(values[k] for k in group).backward()
            adam.step()


@pytest.mark.parametrize("unreached, set_to_none", [("none", True), ("zero", False)])
def test_ius_follows_the_authors_loop_with_none_or_zero_gradients(unreached: str, set_to_none: bool) -> None:
    reference, reference_losses = two_head_problem()
    authors_loop(reference, reference_losses, [[0], [1], [2]], steps=4, set_to_none=set_to_none)
    params, losses = two_head_problem()
    method = make("ius", params, lr=0.05, unreached_grad=unreached)
    for _ in range(4):
        method.step(losses)
    for got, expected in zip(params, reference):
        torch.testing.assert_close(got.detach(), expected.detach(), rtol=1e-10, atol=1e-12)


def test_zero_gradients_change_more_than_a_scale() -> None:
    """With zeros, the shared Adam moves every head at every sub-step on its stale momentum."""
    finals = {}
    for unreached in ("none", "zero"):
        params, losses = two_head_problem()
        method = make("ius", params, lr=0.05, unreached_grad=unreached)
        for _ in range(4):
            method.step(losses)
        finals[unreached] = [p.detach().clone() for p in params]
    for none, zero in zip(finals["none"][1:], finals["zero"][1:]):
        cosine = torch.nn.functional.cosine_similarity(none - zero, none, dim=0)
        assert (none - zero).norm() > 1e-2 * none.norm() and abs(cosine) < 0.999


def test_grouping_with_zero_gradients_follows_the_authors_loop() -> None:
    params, losses = two_head_problem(1)
    method = make("grouping", params, lr=0.05, group_size=2, seed=4, unreached_grad="zero")
    for _ in range(3):
        method.step(losses)
    reference, reference_losses = two_head_problem(1)
    authors_loop(reference, reference_losses, [list(g) for g in method.partition], steps=3, set_to_none=False)
    for got, expected in zip(params, reference):
        torch.testing.assert_close(got.detach(), expected.detach(), rtol=1e-10, atol=1e-12)


def test_zero_gradient_records_still_add_up_to_the_change() -> None:
    class Keep:
        def __init__(self) -> None:
            self.records: list = []

        def wants_record(self) -> bool:
            return True

        def __call__(self, record: object) -> None:
            self.records.append(record)

    params, losses = two_head_problem()
    method = make("ius", params, lr=0.05, unreached_grad="zero")
    keep = Keep()
    method.add_observer(keep)
    for _ in range(3):
        before = [p.detach().clone() for p in params]
        method.step(losses)
    updates = keep.records[-1].task_updates
    position = {id(p): i for i, p in enumerate(params)}
    for p, contributions in zip(updates.params, updates.updates):
        i = position[id(p)]
        torch.testing.assert_close(contributions.sum(0), before[i] - p.detach(), rtol=1e-9, atol=1e-12)


# -- equal weights and GLS -------------------------------------------------------------------------------------


def test_sum_mean_and_gls_weights() -> None:
    """Sum: w = 1; mean: w = 1/T; GLS (Chennupati et al. 2019): the geometric mean S = (prod_k L_k)^(1/T),
    so w_k = dS/dL_k = S / (T L_k)."""
    jacobian = conflicting(4, tasks=3, dim=5) * 0.01
    offsets = [0.5, 2.0, 6.0]
    for name, rule in [
        ("sum", lambda loss: np.ones(3)),
        ("mean", lambda loss: np.full(3, 1 / 3)),
        ("gls", lambda loss: np.prod(loss) ** (1 / 3) / (3 * loss)),
    ]:
        weights, losses = weights_over_steps(name, jacobian, offsets, steps=3)
        for w, loss in zip(weights, losses):
            np.testing.assert_allclose(w, rule(loss), rtol=1e-9, err_msg=name)
