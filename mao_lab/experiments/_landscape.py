r"""Trajectories of any method on the two-task toy landscape, and which of them reach the Pareto set.

The landscape is that of CAGrad, Nash-MTL and FAMO (:mod:`mao_lab.problems`); the notebook
``01_toy_landscape`` draws what these functions compute, and ``tests/test_experiments.py`` asserts
what it claims.

**Where the Pareto set is.**  The papers give the segment ``x1 in [-7, 7]`` at ``x2 = -8.3552``.  The
exact Pareto-stationary set (the two task gradients anti-parallel) is a shallow arc through
``(0, -8.3552)`` that bows down to ``x2 = -8.4345`` at ``x1 = +-7`` (:func:`pareto_stationary_arc`).
:func:`pareto_table` measures the distance of a final point to both, and counts it as *reached* when
it lies within ``tol`` of either.

**Where per-coordinate methods stop.**  Adam-style normalisation per task (MAO, IO) moves each
coordinate by roughly ``lr * sum_k sign(g_k)``; with exact (noise-free) gradients its resting points
are where, on *every* coordinate, the tasks' gradients have opposite signs — a band around the
Pareto arc, up to ~0.4 above it near the segment's ends (:func:`conflict_band`).  Inside it the
update cancels even though a common descent direction still exists (the points are not
Pareto-stationary), so such a method stalls there.  Adam on the mean has no such band: it converges
to the mean loss's minimiser, which is Pareto-stationary.

**The papers' setting and the lab's.**  Nash-MTL's and FAMO's code run the landscape with ``L1``
scaled by 0.1, in float32 (``torch.Tensor`` points), with ``torch.optim.Adam`` at ``lr = 1e-3``
(default ``eps = 1e-8``) for 35 000 (Nash-MTL) or 50 000 (FAMO) steps, and show the runs in loss space
(``(0.1 L1, L2)`` against the Pareto front); :data:`PAPERS_SETTING` holds those settings.  The lab runs
in float64 and measures reaching in parameter space; :func:`pareto_table` gives both readings
(``reached`` and ``reached_in_loss_space``, see :func:`loss_distance`), and :func:`papers_comparison`
runs the papers' setting next to the same runs in float64 and at ``L1 x 1``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .._validate import Choice, Int, Number, require
from ..methods import available
from ..problems import LANDSCAPE_STARTS, PARETO_X1_RANGE, PARETO_X2, landscape_losses, pareto_distance
from ._training import train

__all__ = [
    "ELEMENTWISE_METHODS",
    "PAPERS_SETTING",
    "PAPERS_VARIANTS",
    "arc_distance",
    "conflict_band",
    "landscape_gradients",
    "landscape_trajectories",
    "loss_distance",
    "papers_comparison",
    "pareto_stationary_arc",
    "pareto_table",
    "reach_matrix",
    "reached_counts",
    "rescaling_gap",
]

ELEMENTWISE_METHODS: frozenset[str] = frozenset({"sum", "mean", "sus", "mao", "io", "ius"})
"""Methods whose update of a coordinate depends only on that coordinate's gradients.

For them, running the five starts as one ``(5, 2)`` parameter on the summed losses is exactly five
independent runs (the gradient of ``sum_s L(x_s)`` with respect to ``x_s`` is ``dL/dx(x_s)``), and
about five times faster.  Gradient aggregators (MGDA, PCGrad, ...) and learned weightings couple the
coordinates, so they run start by start.
"""


PAPERS_SETTING: Mapping[str, Any] = MappingProxyType(
    {"l1_scale": 0.1, "dtype": torch.float32, "lr": 1e-3, "eps": 1e-8, "steps": 35_000}
)
"""How Nash-MTL's toy experiment runs (its code's defaults): ``L1`` times 0.1, float32 points, Adam at
``lr = 1e-3`` with its default ``eps``, 35 000 steps (FAMO's code: 50 000).  Keyword arguments of
:func:`landscape_trajectories`.  The papers then read the runs in loss space (:func:`loss_distance`)."""

PAPERS_VARIANTS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "papers (float32, L1 x 0.1)": MappingProxyType({}),
        "float64, L1 x 0.1": MappingProxyType({"dtype": torch.float64}),
        "float64, L1 x 1": MappingProxyType({"dtype": torch.float64, "l1_scale": 1.0}),
    }
)
"""The settings :func:`papers_comparison` runs: :data:`PAPERS_SETTING`, then with the lab's precision,
then also with the lab's scale (CAGrad's own toy), each otherwise as the papers ran it."""

_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}


def _check_methods(methods: Sequence[str]) -> list[str]:
    methods = [methods] if isinstance(methods, str) else list(methods)
    if not methods:
        raise ValueError("methods must name at least one method")
    known = available()
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; available: {', '.join(known)}")
    return methods


def landscape_trajectories(
    methods: Sequence[str],
    *,
    starts: Iterable[Sequence[float]] = LANDSCAPE_STARTS,
    l1_scale: float = 1.0,
    steps: int = 2000,
    lr: float = 3e-2,
    record_every: int = 10,
    batch_starts: bool | None = None,
    progress: bool = True,
    dtype: torch.dtype = torch.float64,
    step_progress: bool = False,
    **hyperparameters: object,
) -> pd.DataFrame:
    """Run every method from every start on the landscape; return the tidy trajectories.

    Each run optimises one point ``x`` (a parameter shared by both tasks) with the experiments' training
    loop (:func:`~mao_lab.experiments.train`: ``make(method, [x], lr=lr, **hyperparameters)``) on the
    losses ``[l1_scale * L1, L2]`` of :func:`~mao_lab.problems.landscape_losses`, in ``dtype``.

    Args:
        methods: registry names (:func:`mao_lab.methods.available`).
        starts: starting points ``(x1, x2)``; the papers' five by default.
        l1_scale: factor on task 1's loss (0.1 in Nash-MTL and FAMO).
        steps: optimisation steps per run.
        lr: learning rate.
        record_every: keep every this many steps (and always the last).
        batch_starts: run all starts as one batched parameter; ``None`` does so for the methods in
            :data:`ELEMENTWISE_METHODS` (where it is exact), ``False`` never.  ``True`` for another
            method raises, since its coordinates interact.
        progress: show a progress bar over the runs.
        dtype: the points' (and so every computation's) precision: ``torch.float64`` (the lab's) or
            ``torch.float32`` (the papers', :data:`PAPERS_SETTING`).
        step_progress: also show a bar over each run's steps (for long runs).
        hyperparameters: passed to every method (e.g. ``eps=1e-16``).

    Returns:
        One row per (method, start, recorded step) with columns ``method, start, step, x1, x2, L1,
        L2, l1_scale``; ``L1`` is the *unscaled* loss of task 1, so runs with different ``l1_scale``
        compare on the same axes.

    >>> frame = landscape_trajectories(["mao"], starts=[(0.0, 0.0)], steps=20, record_every=10, progress=False)
    >>> frame[["method", "start", "step"]].values.tolist()
    [['mao', 0, 0], ['mao', 0, 10], ['mao', 0, 20]]
    """
    methods = _check_methods(methods)
    starts = [tuple(float(v) for v in s) for s in starts]
    if not starts or any(len(s) != 2 for s in starts):
        raise ValueError(f"starts must be a non-empty list of (x1, x2) pairs, got {starts!r}")
    require("steps", steps, Int(min=0))
    require("record_every", record_every, Int(min=1))
    require("l1_scale", l1_scale, Number(positive=True))
    require("dtype", dtype, Choice(tuple(_DTYPES.values())))
    if batch_starts and any(m not in ELEMENTWISE_METHODS for m in methods):
        coupled = [m for m in methods if m not in ELEMENTWISE_METHODS]
        raise ValueError(f"batch_starts=True is exact only for {sorted(ELEMENTWISE_METHODS)}; not for {coupled}")

    plan = []  # (method, start indices run together)
    for method in methods:
        batched = method in ELEMENTWISE_METHODS if batch_starts is None else bool(batch_starts)
        plan += [(method, list(range(len(starts))))] if batched else [(method, [k]) for k in range(len(starts))]
    parts = [
        _trajectory(
            method,
            [starts[k] for k in indices],
            indices,
            l1_scale,
            steps,
            lr,
            record_every,
            dtype,
            step_progress,
            hyperparameters,
        )
        for method, indices in tqdm(plan, desc="landscape runs", disable=not progress)
    ]
    order = {m: i for i, m in enumerate(methods)}
    frame = pd.concat(parts, ignore_index=True).sort_values(
        ["method", "start", "step"], key=lambda c: c.map(order) if c.name == "method" else c, kind="stable"
    )
    return frame.assign(l1_scale=float(l1_scale)).reset_index(drop=True)


class _Points(torch.nn.Module):
    """The model of the landscape: the points themselves, one row per start, in ``dtype``."""

    def __init__(self, starts: Sequence[tuple[float, float]], dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.x = torch.nn.Parameter(torch.tensor(starts, dtype=dtype))


def _trajectory(
    method: str,
    starts: Sequence[tuple[float, float]],
    indices: list[int],
    l1_scale: float,
    steps: int,
    lr: float,
    record_every: int,
    dtype: torch.dtype,
    step_progress: bool,
    hyperparameters: dict[str, object],
) -> pd.DataFrame:
    """One run of :func:`~mao_lab.experiments.train` from the given starts (together), positions every
    ``record_every``."""

    def task_losses(points: torch.nn.Module, _: None) -> list[torch.Tensor]:
        losses = landscape_losses(points.x, l1_scale).sum(0)  # the starts are independent runs: sum over them
        return [losses[0], losses[1]]

    def position(points: torch.nn.Module) -> list[dict[str, Any]]:
        unscaled = landscape_losses(points.x)
        return [
            {"start": k, "x1": float(x[0]), "x2": float(x[1]), "L1": float(loss[0]), "L2": float(loss[1])}
            for k, x, loss in zip(indices, points.x, unscaled)
        ]

    run = train(
        lambda: _Points(starts, dtype),
        method,
        task_losses,
        steps=steps,
        lr=lr,
        hyperparameters=hyperparameters,
        evaluate=position,
        eval_every=record_every,
        progress=step_progress,
    )
    return run.evaluations.assign(method=method)[["method", "start", "step", "x1", "x2", "L1", "L2"]]


def landscape_gradients(
    points: np.ndarray | Sequence[float] | torch.Tensor, l1_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """The landscape's two task gradients ``(dL1/dx * l1_scale, dL2/dx)`` at ``points`` (shape ``(..., 2)``),
    as float64 arrays.

    >>> g1, g2 = landscape_gradients([[0.0, -8.3552]])
    >>> bool((g1 * g2).sum() < 0)  # on the Pareto set the tasks pull in opposite directions
    True
    """
    if isinstance(points, torch.Tensor):
        x = points.detach().to(torch.float64).clone().requires_grad_(True)
    else:
        x = torch.tensor(np.array(points, dtype=np.float64), dtype=torch.float64, requires_grad=True)
    losses = landscape_losses(x, l1_scale)
    g1 = torch.autograd.grad(losses[..., 0].sum(), x, retain_graph=True)[0]
    g2 = torch.autograd.grad(losses[..., 1].sum(), x)[0]
    return g1.numpy(), g2.numpy()


def _cross(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    g1, g2 = landscape_gradients(torch.stack([x1, x2], dim=-1))
    return torch.from_numpy(g1[..., 0] * g2[..., 1] - g1[..., 1] * g2[..., 0])


def pareto_stationary_arc(n: int = 141) -> pd.DataFrame:
    """The exact Pareto-stationary set: for ``n`` values of ``x1`` in ``[-7, 7]``, the ``x2`` where the
    two task gradients are anti-parallel (found by bisection of their cross product in ``[-9.5, -7.5]``).

    Rescaling a task's loss does not move it.

    >>> arc = pareto_stationary_arc(3)
    >>> arc.round(4).values.tolist()
    [[-7.0, -8.4345], [0.0, -8.3551], [7.0, -8.4345]]
    """
    require("n", n, Int(min=2))
    x1 = torch.linspace(*PARETO_X1_RANGE, n, dtype=torch.float64)
    low, high = torch.full_like(x1, -9.5), torch.full_like(x1, -7.5)
    f_low = _cross(x1, low)
    for _ in range(60):
        middle = (low + high) / 2
        f_middle = _cross(x1, middle)
        same = torch.sign(f_middle) == torch.sign(f_low)
        low, f_low = torch.where(same, middle, low), torch.where(same, f_middle, f_low)
        high = torch.where(same, high, middle)
    return pd.DataFrame({"x1": x1.numpy(), "x2": ((low + high) / 2).numpy()})


_ARC: np.ndarray | None = None


def arc_distance(points: np.ndarray | Sequence[float]) -> np.ndarray:
    """Euclidean distance from ``points`` (shape ``(..., 2)``) to the exact Pareto-stationary arc.

    >>> float(arc_distance([0.0, -8.3551]).round(3)), float(arc_distance([10.0, -8.4345]).round(3))
    (0.0, 3.0)
    """
    global _ARC
    if _ARC is None:
        _ARC = pareto_stationary_arc(2801)[["x1", "x2"]].to_numpy()
    points = np.asarray(points, dtype=np.float64)
    differences = points[..., None, :] - _ARC
    return np.sqrt((differences**2).sum(-1)).min(-1)


_FRONT: np.ndarray | None = None


def _front_losses() -> np.ndarray:
    """The unscaled losses ``(L1, L2)`` along the Pareto set: 2801 points of the exact arc and 2801 of
    the papers' segment (the front the papers draw), float64, shape ``(5602, 2)``."""
    global _FRONT
    if _FRONT is None:
        arc = pareto_stationary_arc(2801)[["x1", "x2"]].to_numpy()
        segment = np.stack([np.linspace(*PARETO_X1_RANGE, 2801), np.full(2801, PARETO_X2)], axis=1)
        with torch.no_grad():
            _FRONT = landscape_losses(torch.from_numpy(np.vstack([arc, segment]))).numpy()
    return _FRONT


def loss_distance(points: np.ndarray | Sequence[float], l1_scale: float | np.ndarray = 1.0) -> np.ndarray:
    """Distance *in loss space* from the losses ``(l1_scale * L1, L2)`` at ``points`` (shape ``(..., 2)``)
    to the Pareto front in the same axes: how the papers' loss-space figures show a run's end.

    The front is the image of the Pareto set (the exact arc and the papers' segment, sampled every
    0.005 in ``x1``).  The bowls are shallow across ``x2``, so a point well off the Pareto set in
    parameter space can lie close to the front in loss space.  ``l1_scale`` may be one value per point.

    >>> loss_distance([[0.0, -8.3552], [0.0, -7.3552]]).round(3).tolist()  # on the set; 1 above it: 0.02 in loss space
    [0.0, 0.021]
    >>> bool(loss_distance([9.0, 9.0], 0.1) > 5)  # the (9, 9) start, far above everything
    True
    """
    points = np.asarray(points, dtype=np.float64)
    scale = np.asarray(l1_scale, dtype=np.float64)
    with torch.no_grad():
        losses = landscape_losses(torch.from_numpy(np.ascontiguousarray(points))).numpy()
    factor = np.stack([scale, np.ones_like(scale)], axis=-1)
    scaled, front = losses * factor, _front_losses() * factor[..., None, :]
    return np.sqrt(((scaled[..., None, :] - front) ** 2).sum(-1)).min(-1)


def conflict_band(points: np.ndarray | Sequence[float], l1_scale: float = 1.0) -> np.ndarray:
    """Whether, at ``points``, the two tasks' gradients have opposite signs on *every* coordinate.

    That is where per-task sign-like steps (MAO, IO) cancel: their resting set with exact gradients.

    >>> conflict_band([[0.0, -8.3551], [-6.6, -8.2], [-6.6, -7.0]]).tolist()
    [False, True, False]
    """
    g1, g2 = landscape_gradients(points, l1_scale)
    return np.all(g1 * g2 < 0, axis=-1)


def pareto_table(trajectories: pd.DataFrame, tol: float = 0.1, loss_tol: float = 0.5) -> pd.DataFrame:
    """For each method and start: the final point, how far it is from the Pareto set, whether it got there.

    Columns: ``method, start, x1_start, x2_start, x1, x2, L1, L2`` and

    - ``distance``: to the papers' Pareto segment (``x1 in [-7, 7]``, ``x2 = -8.3552``);
    - ``arc_distance``: to the exact Pareto-stationary arc (:func:`pareto_stationary_arc`);
    - ``cosine``: between the two task gradients at the final point (-1 on the Pareto set);
    - ``conflict_band``: the tasks' gradients disagree in sign on every coordinate (:func:`conflict_band`);
    - ``reached``: within ``tol`` of the segment or of the arc;
    - ``loss_distance``: in loss space, ``(l1_scale * L1, L2)`` with the run's ``l1_scale`` (1 if the
      frame has none), to the Pareto front (:func:`loss_distance`);
    - ``reached_in_loss_space``: ``loss_distance <= loss_tol``, the papers' reading of their figures.

    >>> frame = pd.DataFrame({"method": ["a", "a"], "start": [0, 0], "step": [0, 5], "x1": [9.0, 1.0],
    ...                       "x2": [9.0, -8.3552], "L1": [0.0, 0.0], "L2": [0.0, 0.0]})
    >>> pareto_table(frame)[["method", "start", "x1_start", "reached"]].values.tolist()
    [['a', 0, 9.0, True]]
    """
    require("tol", tol, Number(min=0))
    require("loss_tol", loss_tol, Number(min=0))
    ordered = trajectories.sort_values("step", kind="stable").groupby(["method", "start"], sort=False)
    first, final = ordered.head(1).set_index(["method", "start"]), ordered.tail(1).set_index(["method", "start"])
    table = final[["x1", "x2", "L1", "L2"]].copy()
    table.insert(0, "x2_start", first["x2"].reindex(table.index))
    table.insert(0, "x1_start", first["x1"].reindex(table.index))
    points = table[["x1", "x2"]].to_numpy(copy=True)
    g1, g2 = landscape_gradients(points)
    norms = np.linalg.norm(g1, axis=-1) * np.linalg.norm(g2, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        table["cosine"] = np.where(norms > 0, (g1 * g2).sum(-1) / np.where(norms > 0, norms, 1.0), np.nan)
    table["distance"] = pareto_distance(points).numpy()
    table["arc_distance"] = arc_distance(points)
    table["conflict_band"] = np.all(g1 * g2 < 0, axis=-1)
    table["reached"] = np.minimum(table["distance"], table["arc_distance"]) <= tol
    scales = final["l1_scale"].to_numpy(dtype=np.float64) if "l1_scale" in final else 1.0
    table["loss_distance"] = loss_distance(points, scales)
    table["reached_in_loss_space"] = table["loss_distance"] <= loss_tol
    table = table.reset_index()
    order = {m: i for i, m in enumerate(pd.unique(trajectories["method"]))}
    return table.sort_values(["method", "start"], key=lambda c: c.map(order) if c.name == "method" else c).reset_index(
        drop=True
    )


def reach_matrix(table: pd.DataFrame, space: str = "parameter") -> pd.DataFrame:
    """Methods x starts: ``"yes"`` where the run reached the Pareto set, else the final distance to it.

    ``space="parameter"`` reads ``reached`` and the distance to the set; ``space="loss"`` reads
    ``reached_in_loss_space`` and ``loss_distance`` (:func:`pareto_table`).

    >>> table = pd.DataFrame({"method": ["m", "m"], "start": [0, 1], "x1_start": [0.0, 9.0], "x2_start": [0.0, 9.0],
    ...                       "reached": [True, False], "distance": [0.0, 2.5], "arc_distance": [0.0, 2.4]})
    >>> reach_matrix(table).to_dict("records")
    [{'method': 'm', '(0, 0)': 'yes', '(9, 9)': 'no (2.40 away)', 'reached': '1 of 2'}]
    """
    require("space", space, Choice(("parameter", "loss")))
    table = table.copy()
    table["start_label"] = [f"({a:g}, {b:g})" for a, b in zip(table["x1_start"], table["x2_start"])]
    if space == "loss":
        table["reached"], away = table["reached_in_loss_space"], table["loss_distance"]
    else:
        away = np.minimum(table["distance"], table["arc_distance"])
    table["cell"] = np.where(table["reached"], "yes", [f"no ({d:.2f} away)" for d in away])
    labels = list(pd.unique(table["start_label"]))
    methods = list(pd.unique(table["method"]))
    matrix = table.pivot(index="method", columns="start_label", values="cell").reindex(index=methods, columns=labels)
    counts = table.groupby("method", sort=False)["reached"].agg(["sum", "size"]).reindex(methods)
    matrix["reached"] = [f"{int(s)} of {int(n)}" for s, n in zip(counts["sum"], counts["size"])]
    matrix.columns.name = None
    return matrix.reset_index()


def reached_counts(table: pd.DataFrame) -> pd.DataFrame:
    """How many starts each method (per ``setting``, if the table has one) reached the Pareto set from,
    in parameter space (``reached``) and in loss space (``reached_in_loss_space``), of ``starts``.

    >>> table = pd.DataFrame({"method": ["m"] * 3, "reached": [True, False, False],
    ...                       "reached_in_loss_space": [True, True, False]})
    >>> reached_counts(table).to_dict("records")
    [{'method': 'm', 'reached': 1, 'reached_in_loss_space': 2, 'starts': 3}]
    """
    keys = [key for key in ("setting", "method") if key in table.columns]
    grouped = table.groupby(keys, sort=False)
    counts = grouped[["reached", "reached_in_loss_space"]].sum().astype(int)
    return counts.assign(starts=grouped.size()).reset_index()


def papers_comparison(
    methods: Sequence[str] = ("sum",),
    *,
    steps: int = PAPERS_SETTING["steps"],
    record_every: int = 500,
    tol: float = 0.1,
    loss_tol: float = 0.5,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run ``methods`` in each setting of :data:`PAPERS_VARIANTS`: the papers' (:data:`PAPERS_SETTING`),
    then in float64, then also at ``L1 x 1``; ``steps`` replaces the papers' 35 000.

    The papers' baseline is "LS", Adam on the sum of the losses (``sum``; FAMO's caption calls it the
    average, ``mean``, which under Adam differs only by how large ``eps`` is next to the gradients).

    Returns:
        ``(trajectories, table)``: the tidy trajectories with a ``setting`` and a ``dtype`` column, and
        :func:`pareto_table` of each setting (``setting`` first), with both readings of reaching.
    """
    require("steps", steps, Int(min=0))
    frames, tables = [], []
    for name, change in tqdm(PAPERS_VARIANTS.items(), desc="settings", disable=not progress):
        setting = {**PAPERS_SETTING, **change, "steps": steps}
        frame = landscape_trajectories(
            methods, record_every=record_every, progress=False, step_progress=progress, **setting
        )
        frame.insert(0, "setting", name)
        frame["dtype"] = str(setting["dtype"]).removeprefix("torch.")
        frames.append(frame)
        table = pareto_table(frame, tol=tol, loss_tol=loss_tol)
        table.insert(0, "setting", name)
        tables.append(table.assign(l1_scale=setting["l1_scale"], dtype=frame["dtype"].iloc[0]))
    return pd.concat(frames, ignore_index=True), pd.concat(tables, ignore_index=True)


def rescaling_gap(
    methods: Sequence[str] = ("mao", "mean"),
    scales: tuple[float, float] = (1.0, 0.1),
    *,
    progress: bool = True,
    **options: object,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run each method with task 1's loss scaled by each of ``scales``; how far apart are the trajectories?

    ``options`` go to :func:`landscape_trajectories` (``steps``, ``lr``, ``eps``, ...).  MAO gives
    every task its own normalisation, so rescaling a loss leaves its trajectory unchanged up to
    ``eps`` (exactly unchanged once ``eps`` is far below the gradients, e.g. ``1e-16`` here); Adam on
    the mean follows the larger loss, so its trajectory — and where it lands — moves.

    Returns:
        ``(trajectories, gaps)``: the trajectories of both scales (column ``l1_scale``), and one row
        per method with ``max_gap`` (largest distance between the two runs from the same start at the
        same step), ``final_gap`` (the largest over starts at the last step) and the final ``x1`` of
        each scale averaged over the starts.
    """
    if len(scales) != 2:
        raise ValueError(f"scales must hold two factors, got {scales!r}")
    frames = [landscape_trajectories(methods, l1_scale=s, progress=progress, **options) for s in scales]
    both = pd.concat(frames, ignore_index=True)
    keys = ["method", "start", "step"]
    paired = frames[0].merge(frames[1], on=keys, suffixes=("_a", "_b"))
    paired["gap"] = np.hypot(paired["x1_a"] - paired["x1_b"], paired["x2_a"] - paired["x2_b"])
    last = paired[paired["step"] == paired["step"].max()]
    gaps = pd.DataFrame(
        {
            "max_gap": paired.groupby("method", sort=False)["gap"].max(),
            "final_gap": last.groupby("method", sort=False)["gap"].max(),
            f"final_x1_mean_scale_{scales[0]:g}": last.groupby("method", sort=False)["x1_a"].mean(),
            f"final_x1_mean_scale_{scales[1]:g}": last.groupby("method", sort=False)["x1_b"].mean(),
        }
    ).reset_index()
    return both, gaps
