"""Trajectories of any method on the two-task toy landscape, and which of them reach the Pareto set."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..methods import make
from ..problems import LANDSCAPE_STARTS, landscape_losses, pareto_distance, reaches_pareto_set

__all__ = ["landscape_trajectories", "pareto_table"]


def landscape_trajectories(
    methods: Sequence[str],
    *,
    starts: Iterable[Sequence[float]] = LANDSCAPE_STARTS,
    l1_scale: float = 1.0,
    steps: int = 3000,
    lr: float = 1e-2,
    record_every: int = 10,
    progress: bool = True,
    **hyperparameters: object,
) -> pd.DataFrame:
    """Run every method from every start on the landscape; return the tidy trajectories.

    Each run optimises one point ``x`` (a shared parameter of both tasks) with
    ``mao_lab.methods.make(method, [x], lr=lr, **hyperparameters)`` on the losses
    ``[l1_scale * L1, L2]`` of :func:`~mao_lab.problems.landscape_losses`.

    Returns:
        One row per (method, start, recorded step) with columns ``method, start, step, x1, x2,
        L1, L2`` where ``L1`` is the *unscaled* loss of task 1, so runs with different ``l1_scale``
        compare on the same axes.

    >>> frame = landscape_trajectories(["mao"], starts=[(0.0, 0.0)], steps=20, record_every=10, progress=False)
    >>> frame[["method", "start", "step"]].values.tolist()
    [['mao', 0, 0], ['mao', 0, 10], ['mao', 0, 20]]
    """
    starts = [tuple(float(v) for v in s) for s in starts]
    runs = [(method, k, start) for method in methods for k, start in enumerate(starts)]
    rows = []
    for method, k, start in tqdm(runs, desc="landscape runs", disable=not progress):
        x = torch.tensor(start, dtype=torch.float64, requires_grad=True)
        optimizer = make(method, [x], lr=lr, **hyperparameters)

        def closure() -> list[torch.Tensor]:
            losses = landscape_losses(x, l1_scale)
            return [losses[0], losses[1]]

        for step in range(steps + 1):
            if step % record_every == 0 or step == steps:
                with torch.no_grad():
                    l1, l2 = landscape_losses(x).tolist()
                rows.append({"method": method, "start": k, "step": step, "x1": x[0].item(), "x2": x[1].item(), "L1": l1, "L2": l2})
            if step < steps:
                optimizer.step(closure)
    return pd.DataFrame(rows)


def pareto_table(trajectories: pd.DataFrame, tol: float = 0.1) -> pd.DataFrame:
    """For each method and start: the final point, its distance to the Pareto set and whether it got there.

    >>> frame = pd.DataFrame({"method": ["a"], "start": [0], "step": [5], "x1": [1.0], "x2": [-8.3552], "L1": [0.0], "L2": [0.0]})
    >>> pareto_table(frame)[["method", "start", "reached"]].values.tolist()
    [['a', 0, True]]
    """
    final = trajectories.sort_values("step").groupby(["method", "start"], sort=False).tail(1)
    points = torch.tensor(final[["x1", "x2"]].to_numpy(), dtype=torch.float64)
    table = final[["method", "start", "x1", "x2"]].copy()
    table["distance"] = pareto_distance(points).numpy()
    table["reached"] = reaches_pareto_set(points, tol=tol).numpy()
    return table.sort_values(["method", "start"]).reset_index(drop=True)
