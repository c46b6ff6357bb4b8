"""How long will a study take here?  Time a few steps of every configuration and schedule the points.

``python -m mao_lab.study --estimate --workers 2`` prints, for every configuration, the measured seconds per
training step and per run, and the predicted wall time of each phase: the points (as the study groups them)
are placed longest first on ``workers`` workers, each point paying a notebook start-up.  The prediction is
as good as the machine is quiet: it measures this machine now, with one torch thread.
"""

from __future__ import annotations

import dataclasses
import heapq
import time
from collections.abc import Sequence

import pandas as pd
import torch

from ._design import StudyDesign
from ._runs import run_config

__all__ = ["estimate_study", "schedule"]


def schedule(durations: Sequence[float], workers: int) -> float:
    """The makespan of ``durations`` placed longest first, each on the worker that frees up first.

    >>> schedule([4.0, 3.0, 3.0, 2.0], 2)
    6.0
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    free = [0.0] * workers
    for duration in sorted(durations, reverse=True):
        heapq.heappush(free, heapq.heappop(free) + duration)
    return max(free)


def estimate_study(
    design: StudyDesign, workers: int = 2, *, sample_steps: int = 40, startup_seconds: float = 8.0, threads: int = 1
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Time ``sample_steps`` steps of every configuration (lr 1e-3, seed 0) and predict the study's wall time.

    Returns:
        ``(per_config, totals)``: per configuration the seconds per step, the evaluation overhead and the
        predicted seconds of one run; totals: predicted seconds of the tuning and final phases and in all.
    """
    torch.set_num_threads(threads)
    sample = dataclasses.replace(
        design,
        steps=sample_steps,
        regression_steps=sample_steps,
        eval_every=sample_steps,
        record_every=min(design.record_every, sample_steps),
    )
    rows = []
    for config in design.configs():
        started = time.perf_counter()
        tables = run_config(config, sample, 1e-3, 0)
        wall = time.perf_counter() - started
        train_seconds = float(tables["runs"]["seconds"].iloc[0])
        step = train_seconds / sample_steps
        steps = design.steps_of(config)
        overhead = wall - train_seconds  # set-up, two validation passes and one test pass
        evaluations = steps // design.eval_every + 1
        run = steps * step + overhead * (evaluations + 1) / 3
        rows.append({"config": config.name, "ms_per_step": 1000 * step, "overhead_s": overhead, "run_s": run})
    table = pd.DataFrame(rows)
    per_run = dict(zip(table["config"], table["run_s"]))
    configs = design.configs()
    per_point = max(1, design.configs_per_point)

    def phase(runs_per_config: int) -> float:
        costs = sorted((per_run[c.name] * runs_per_config for c in configs), reverse=True)
        points = [sum(costs[i : i + per_point]) + startup_seconds for i in range(0, len(costs), per_point)]
        return schedule(points, workers)

    tuning = phase(design.tuning_runs_per_config)  # every rate at the first tuning seed, the finalists at the others
    final = phase(len(design.final_seeds))
    totals = {
        "tuning_s": tuning,
        "final_s": final,
        "total_s": tuning + final,
        "compute_s": float(table["run_s"].sum() * (design.tuning_runs_per_config + len(design.final_seeds))),
        "workers": float(workers),
    }
    return table, totals
