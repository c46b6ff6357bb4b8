r"""Any problem (:class:`mao_lab.problems.Problem`), every method and the single-task baselines: train and score.

The one way to train and score on a problem, MultiMNIST (:func:`~mao_lab.problems.multimnist_problem`) as any
other: ``03_multimnist`` (any problem by its import path), ``04_balance_explorer``'s demo runs and
``07_your_problem`` call these.  Each run is the lab's one loop
(:func:`~mao_lab.experiments.train`) with the problem's network seeded on its own under the run's seed, so runs
with one seed start from one network and see the same batches; they are scored on one split of the problem
(``test`` by default) before training and after the last step.

Runs are named ``<method>-seed<k>`` (:func:`~mao_lab.experiments.run_name`); with ``run_root`` each multi-task
run's recorder log goes to ``run_root/<method>-seed<k>/`` (``04_balance_explorer`` opens it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from .._validate import Int, require
from ..methods import available
from ..problems import Problem, Split, metric_rows, seeded_init
from ..recorder import combine_runs
from ._labels import SINGLE_TASK, method_label, run_name
from ._training import Autocast, TrainingRun, recording, resolve_device, train

__all__ = ["SCORE_COLUMNS", "compare_on_problem", "train_on_problem"]

SCORE_COLUMNS = ["method", "seed", "step", "task", "metric", "value", "higher_is_better", "seconds"]
"""The columns of a scores table (:func:`train_on_problem`)."""


def run_on_problem(
    problem: Problem,
    method: str,
    tasks: Sequence[str],
    *,
    steps: int,
    lr: float,
    batch_size: int | None,
    seed: int,
    label: str,
    split: Split = "test",
    device: torch.device | str | None = None,
    autocast: Autocast = None,
    **options: Any,
) -> TrainingRun:
    """The one loop on ``problem``'s ``tasks``, scored on ``split`` at the start and the end.

    The network is seeded on its own (:func:`~mao_lab.problems.seeded_init` with ``seed``), so the method's
    random draws start from the fresh seed, as the MultiMNIST and regression experiments always did."""
    names = problem.tasks_or_all(tasks)

    def build() -> torch.nn.Module:
        with seeded_init(seed):
            return problem.build_model(names)

    return train(
        build,
        method,
        lambda model, batch: problem.task_losses(model, batch, names),
        steps=steps,
        batches=lambda s: problem.batches("train", seed=s, batch_size=batch_size),
        seed=seed,
        lr=lr,
        evaluate=lambda model: metric_rows(problem.evaluate(model, split, names)),
        desc=label,
        device=resolve_device(device),
        autocast=autocast,
        **options,
    )


def score_table(run: TrainingRun, method: str, seed: int) -> pd.DataFrame:
    """``run``'s evaluations as a scores table (:data:`SCORE_COLUMNS`): ``seconds`` is the training time after
    step 0, and 0 at step 0."""
    seconds = run.evaluations["step"].map(lambda step: run.seconds if step > 0 else 0.0)
    return run.evaluations.assign(method=method, seed=seed, seconds=seconds)[SCORE_COLUMNS]


def train_on_problem(
    problem: Problem,
    method: str,
    *,
    tasks: Sequence[str] | None = None,
    steps: int = 250,
    lr: float = 1e-3,
    batch_size: int | None = None,
    seed: int = 0,
    every: int | None = 10,
    run_dir: str | os.PathLike[str] | None = None,
    split: Split = "test",
    progress: bool = False,
    device: torch.device | str | None = None,
    autocast: Autocast = None,
    **hyperparameters: object,
) -> tuple[pd.DataFrame | None, pd.DataFrame]:
    """Train ``problem``'s network on ``tasks`` (all by default) with ``method``, the recorder logging every ``every``
    steps (``None``: no recorder); with ``run_dir`` the log is saved there.

    Returns:
        ``(metrics, scores)``: the recorder's tidy table (``None`` without ``every``), and the metrics of every
        task on ``split`` before training (step 0) and after ``steps`` steps (:data:`SCORE_COLUMNS`;
        ``seconds`` is the training time).

    >>> from mao_lab.problems import regression_problem
    >>> problem = regression_problem(2, num_samples=200, num_val=40, batch_size=16)
    >>> metrics, scores = train_on_problem(problem, "mao", steps=3, every=2, device="cpu")
    >>> sorted(metrics["step"].unique().tolist()), scores[["step", "task", "metric"]].values.tolist()[:2]
    ([0, 2], [[0, 'task0', 'normalised_mse'], [0, 'task1', 'normalised_mse']])
    """
    if method not in available():
        raise ValueError(f"unknown method {method!r}; available: {', '.join(available())}")
    require("steps", steps, Int(min=1))
    names = problem.tasks_or_all(tasks)
    params = {
        "problem": problem.name,
        "method": method,
        "label": method_label(method),
        "tasks": list(names),
        "seed": seed,
        "steps": steps,
        "lr": lr,
        "batch_size": batch_size,
    }
    run = run_on_problem(
        problem,
        method,
        names,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        label=run_name(method, seed),
        split=split,
        device=device,
        autocast=autocast,
        progress=progress,
        **recording(params, hyperparameters, every=every, run_dir=run_dir if every else None),
    )
    return run.metrics, score_table(run, method, seed)


def compare_on_problem(
    problem: Problem,
    methods: Sequence[str],
    *,
    tasks: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    baselines: bool = True,
    run_root: str | os.PathLike[str] | None = None,
    progress: bool = True,
    **options: Any,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every method with every seed (:func:`train_on_problem`), and each task alone with every seed (the same loop
    with Adam on that task's loss, ``method`` ``"sum"``), on ``problem``.

    Args:
        problem: any :class:`~mao_lab.problems.Problem`.
        methods: names from :func:`mao_lab.methods.available`.
        tasks: the problem's tasks to train (all by default).
        seeds: one run per method and seed (and per task and seed for the baselines).
        baselines: also train the single-task baselines (``method`` = :data:`~mao_lab.experiments.SINGLE_TASK`).
        run_root: each multi-task run's recorder log goes to ``run_root/<method>-seed<k>/``.
        progress: one tqdm bar over the runs.
        options: ``steps``, ``lr``, ``batch_size``, ``split``, ``device``, ``autocast`` (shared with the
            baselines) and ``every``.

    Returns:
        ``(metrics, scores)``: the recorder tables combined, with a ``run`` column (:func:`run_name`), and the
        scores of all runs, baselines included.
    """
    check_methods(methods)
    names = problem.tasks_or_all(tasks)
    shared = {k: options[k] for k in ("steps", "lr", "batch_size", "split", "device", "autocast") if k in options}

    def multi_task(method: str, seed: int, run_dir: Path | None) -> tuple[pd.DataFrame, pd.DataFrame]:
        frame, score = train_on_problem(problem, method, tasks=names, seed=seed, run_dir=run_dir, **options)
        assert frame is not None  # recorded: ``every`` is never None here
        return frame, score

    def single_task(task: str, seed: int) -> pd.DataFrame:
        _, score = train_on_problem(problem, "sum", tasks=(task,), seed=seed, every=None, **shared)
        return score.assign(method=SINGLE_TASK)

    return compare_runs(
        methods, names if baselines else (), seeds, multi_task, single_task, run_root=run_root, progress=progress
    )


def check_methods(methods: Sequence[str]) -> None:
    """``ValueError`` unless ``methods`` names at least one method, every one known."""
    unknown = [m for m in methods if m not in available()]
    if not methods or unknown:
        raise ValueError(
            f"methods must name at least one method; unknown: {unknown}; available: {', '.join(available())}"
        )


def compare_runs(
    methods: Sequence[str],
    baseline_tasks: Sequence[str],
    seeds: Sequence[int],
    multi_task: Callable[[str, int, Path | None], tuple[pd.DataFrame, pd.DataFrame]],
    single_task: Callable[[str, int], pd.DataFrame],
    *,
    run_root: str | os.PathLike[str] | None,
    progress: bool,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The runs of a comparison under one tqdm bar: ``multi_task(method, seed, run_dir)`` for every method and
    seed (``run_dir``: ``run_root/<method>-seed<k>/``, or ``None`` without ``run_root``), then
    ``single_task(task, seed)`` for every task of ``baseline_tasks`` and seed.

    Returns:
        ``(metrics, scores)``: the multi-task runs' recorder tables combined, with a ``run`` column
        (:func:`run_name`), and every run's scores.
    """
    jobs = [(m, s) for s in seeds for m in methods] + [(f"{SINGLE_TASK}:{t}", s) for s in seeds for t in baseline_tasks]
    metrics, scores = [], []
    bar = tqdm(jobs, desc="runs", disable=not progress)
    for job, seed in bar:
        bar.set_postfix_str(run_name(job, seed))
        if job.startswith(f"{SINGLE_TASK}:"):
            scores.append(single_task(job.split(":", 1)[1], seed))
            continue
        run_dir = Path(run_root) / run_name(job, seed) if run_root is not None else None
        frame, score = multi_task(job, seed, run_dir)
        metrics.append(frame.assign(run=run_name(job, seed)))
        scores.append(score)
    return combine_runs(metrics), pd.concat(scores, ignore_index=True)
