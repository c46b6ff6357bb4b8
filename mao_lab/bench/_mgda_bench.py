"""``python -m mao_lab.bench mgda``: the exact min-norm MGDA against TorchJD's Frank-Wolfe MGDA.

Two parts, both on ill-conditioned, conflicting task gradients (:func:`conflicting_gradients`):

- ``accuracy``: for each number of tasks, on ``cases`` random matrices (float64, so that only the
  solvers differ), how far TorchJD's ``MGDA()`` (Frank-Wolfe, eps 1e-3, 100 iterations) lands from
  the exact min-norm direction of :class:`~mao_lab.methods._min_norm.ExactMGDA`: the 50th and 90th
  percentiles of ``|d_fw| / |d_exact|``, the number of cases whose cosine to the exact direction is
  below 0.9, and both solvers' KKT residuals (``max_k`` violation of ``g_k . d >= |d|^2``, with
  equality on the weighted tasks, relative to ``|d| max_k |g_k|``).
- ``cost``: one aggregation (matrix to direction) by each, on a float32 Jacobian of ``T`` rows and
  ``columns`` shared parameters (1,001,216, the step benchmark's MLP, in a full run), timed
  interleaved (:mod:`._timing`), with the ratio of medians ``exact_vs_torchjd`` and the median of the
  per-repetition ratios (``paired``); ``exact_float64_gram_vs_torchjd`` for the exact solver on a Gram
  matrix formed in float64 (``ExactMGDA(gramian_dtype=torch.float64)``); and the same for the weights
  alone, from a given Gram matrix.
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import torch
from torchjd.aggregation import MGDA

from ..methods._min_norm import ExactMGDA, MinNormWeighting
from ._timing import fix_threads, interleaved_timings

__all__ = ["conflicting_gradients", "kkt_residual", "run_mgda_benchmark"]

ACCURACY_TASKS = (2, 3, 5, 8, 16)
COST_TASKS = (2, 4, 8, 16)
CASES = 60
QUICK_CASES = 5
DIM = 64
COLUMNS = 1_001_216  # the step benchmark's MLP trunk
QUICK_COLUMNS = 4_096
CONDITION_RANGE = (1e2, 1e6)


def conflicting_gradients(rng: np.random.Generator, tasks: int, dim: int = DIM) -> np.ndarray:
    """``tasks`` gradients in ``R^dim`` with singular values spread log-uniformly over a condition number
    drawn log-uniformly in [1e2, 1e6], norms over two decades, and random rotations (which make many
    pairs conflict: negative inner products).

    >>> g = conflicting_gradients(np.random.default_rng(0), 3)
    >>> g.shape
    (3, 64)
    """
    condition = 10.0 ** rng.uniform(*np.log10(CONDITION_RANGE))
    rank = min(tasks, dim)
    left, _ = np.linalg.qr(rng.standard_normal((tasks, tasks)))
    right, _ = np.linalg.qr(rng.standard_normal((dim, rank)))
    singular = np.logspace(0.0, -np.log10(condition), rank)
    return left[:, :rank] @ np.diag(singular) @ right.T * rng.uniform(0.1, 10.0, size=(tasks, 1))


def kkt_residual(jacobian: np.ndarray, weights: np.ndarray) -> float:
    """How far ``d = w @ J`` is from the min-norm point: the largest violation of ``g_k . d >= |d|^2``
    (and of equality where ``w_k > 1e-9``), relative to ``|d| max_k |g_k|``; 0 when ``d = 0``.

    >>> kkt_residual(np.eye(2), np.array([0.5, 0.5]))
    0.0
    >>> round(kkt_residual(np.eye(2), np.array([0.9, 0.1])), 3)  # g_2 . d = 0.1 < |d|^2 = 0.82
    0.795
    """
    d = weights @ jacobian
    norm2 = float(d @ d)
    if norm2 == 0.0:
        return 0.0
    projections = jacobian @ d
    below = float(np.maximum(norm2 - projections, 0.0).max())
    active = weights > 1e-9
    off_plane = float(np.abs(projections - norm2)[active].max()) if active.any() else 0.0
    return float(max(below, off_plane) / (np.sqrt(norm2) * float(np.linalg.norm(jacobian, axis=1).max())))


def run_mgda_benchmark(quick: bool = False, seed: int = 0, threads: int = 1, progress: bool = True) -> dict:
    """Run both parts and return the JSON-ready result (see the module docstring).

    Args:
        quick: a run of seconds: 5 cases per T, 4,096 columns, two timing repetitions (rough ratios).
        seed: seeds the random gradient matrices.
        threads: ``torch.set_num_threads`` (default 1: the solvers are sequential, and one thread is the
            least disturbed by a busy machine).
        progress: a tqdm bar on stderr.
    """
    threads = fix_threads(threads)
    started = time.perf_counter()
    steps = len(ACCURACY_TASKS) + len(COST_TASKS)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="bench mgda", file=sys.stderr, unit="part")
    try:
        accuracy = []
        for tasks in ACCURACY_TASKS:
            accuracy.append(_accuracy(tasks, QUICK_CASES if quick else CASES, np.random.default_rng([seed, tasks])))
            if bar is not None:
                bar.update(1)
        cost = []
        for tasks in COST_TASKS:
            cost.append(
                _cost(tasks, QUICK_COLUMNS if quick else COLUMNS, quick, np.random.default_rng([seed, 100 + tasks]))
            )
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    import torchjd

    return {
        "benchmark": "mgda",
        "device": "cpu",
        "threads": threads,
        "quick": quick,
        "seed": seed,
        "torch": torch.__version__,
        "torchjd": getattr(torchjd, "__version__", "unknown"),
        "condition_range": list(CONDITION_RANGE),
        "seconds": round(time.perf_counter() - started, 1),
        "accuracy": accuracy,
        "cost": cost,
    }


def _accuracy(tasks: int, cases: int, rng: np.random.Generator) -> dict:
    frank_wolfe, exact = MGDA(), ExactMGDA()
    ratios, cosines, fw_residuals, exact_residuals = [], [], [], []
    for _ in range(cases):
        jacobian = conflicting_gradients(rng, tasks)
        matrix = torch.from_numpy(jacobian)
        w_fw = frank_wolfe.weighting(matrix).numpy()
        w_exact = exact.weighting(matrix).numpy()
        d_fw, d_exact = w_fw @ jacobian, w_exact @ jacobian
        norm_fw, norm_exact = float(np.linalg.norm(d_fw)), float(np.linalg.norm(d_exact))
        ratios.append(norm_fw / norm_exact if norm_exact > 0 else float("inf"))
        cosines.append(float(d_fw @ d_exact) / (norm_fw * norm_exact) if norm_fw * norm_exact > 0 else 1.0)
        fw_residuals.append(kkt_residual(jacobian, w_fw))
        exact_residuals.append(kkt_residual(jacobian, w_exact))
    return {
        "tasks": tasks,
        "cases": cases,
        "fw_norm_ratio_p50": _round(float(np.percentile(ratios, 50))),
        "fw_norm_ratio_p90": _round(float(np.percentile(ratios, 90))),
        "fw_cosine_below_0.9": int(sum(c < 0.9 for c in cosines)),
        "fw_cosine_min": _round(min(cosines)),
        "fw_kkt_residual_p90": _round(float(np.percentile(fw_residuals, 90))),
        "exact_kkt_residual_max": float(f"{max(exact_residuals):.3g}"),
    }


def _cost(tasks: int, columns: int, quick: bool, rng: np.random.Generator) -> dict:
    small = conflicting_gradients(rng, tasks, dim=tasks)
    generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
    spread = torch.randn(tasks, columns, generator=generator) / columns**0.5  # nearly orthonormal rows
    matrix = (torch.from_numpy(small).float() @ spread).contiguous()
    gramian = matrix.double() @ matrix.double().T
    frank_wolfe, exact, exact_weighting = MGDA(), ExactMGDA(), MinNormWeighting()
    exact_wide = ExactMGDA(gramian_dtype=torch.float64)
    candidates = {
        "exact": lambda: exact(matrix),
        "exact_float64_gram": lambda: exact_wide(matrix),
        "torchjd": lambda: frank_wolfe(matrix),
        "exact_weights": lambda: exact_weighting(gramian),
        "torchjd_weights": lambda: frank_wolfe.gramian_weighting(gramian),
    }
    timings = interleaved_timings(
        candidates,
        repetitions=2 if quick else 40,
        warmup=1 if quick else 3,
        min_sample_s=0.002 if quick else 0.05,
        budget_s=None if quick else 20.0,
        min_repetitions=7,
    )

    def paired(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(timings.samples[a], timings.samples[b]))

    return {
        "tasks": tasks,
        "columns": columns,
        "exact_vs_torchjd": _round(timings.median("exact") / timings.median("torchjd")),
        "paired": _round(paired("exact", "torchjd")),
        "exact_float64_gram_vs_torchjd": _round(timings.median("exact_float64_gram") / timings.median("torchjd")),
        "weights_exact_vs_torchjd": _round(timings.median("exact_weights") / timings.median("torchjd_weights")),
        "weights_paired": _round(paired("exact_weights", "torchjd_weights")),
        "median_ms": {name: _round(timings.median(name) * 1e3) for name in candidates},
        "spread": {name: _round(timings.spread(name)) for name in candidates},
        "repetitions": len(timings.samples["exact"]),
    }


def _round(value: float) -> float:
    return float(f"{value:.4g}")
