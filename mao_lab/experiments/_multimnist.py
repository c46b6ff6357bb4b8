r"""Real data: MultiMNIST with four tasks of different nature, every method and the single-task baselines:
train and score.

The notebook ``03_multimnist`` draws what these functions compute (with the shared analysis of
:mod:`mao_lab.experiments`: Delta_m, ownership, imbalance), and ``tests/test_experiments_multimnist.py``
checks them.  The analysis follows the MAO paper (Hervella et al., *Neural Networks* 170, 2024;
``docs/references.md`` §1) with the measures defined in ``docs/references.md`` §6: task performance
relative to single-task training of the same budget (Δm), and the learning balance across tasks, layers
and training steps recorded by :class:`mao_lab.recorder.Recorder`.

Runs are named ``<method>-seed<k>`` (:func:`~mao_lab.experiments.run_name`); with ``run_root`` each
multi-task run's recorder log goes to ``run_root/<method>-seed<k>/``, which ``04_balance_explorer`` opens.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from .._validate import Int, require
from ..problems import MultiMNIST, MultiMNISTProblem, load_multimnist
from ._labels import SINGLE_TASK
from ._problem import check_methods, compare_runs, run_on_problem, score_table, train_on_problem
from ._training import Autocast

__all__ = ["MULTIMNIST_TASK_NAMES", "SCORE_COLUMNS", "compare_on_multimnist", "train_multimnist", "train_single_task"]

MULTIMNIST_TASK_NAMES: tuple[str, ...] = ("left", "right", "sum", "reconstruct")
"""The four MultiMNIST tasks: two classifications, a regression and a per-pixel reconstruction."""

SCORE_COLUMNS = ["method", "seed", "step", "task", "metric", "value", "higher_is_better", "seconds"]
"""The columns of a scores table (:func:`train_multimnist`)."""


def _one_task(data: MultiMNIST, task: str) -> MultiMNIST:
    """The same images with the target of ``task`` only."""
    if task not in data.tasks:
        raise ValueError(f"task {task!r} is not among the data's tasks {data.tasks}")
    target = data.targets[data.tasks.index(task)]
    return MultiMNIST(data.images, [target], (task,), data.split, data.left_index, data.right_index)


def train_multimnist(
    method: str,
    train: MultiMNIST,
    test: MultiMNIST,
    *,
    steps: int = 250,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    every: int = 10,
    run_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
    device: torch.device | str | None = None,
    autocast: Autocast = None,
    **hyperparameters: object,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train :func:`~mao_lab.problems.multimnist_model` on ``train``'s tasks with ``method``, recorder on
    (:func:`~mao_lab.experiments.train`).

    The initial network and the order of the batches depend on ``seed`` only, so runs with the same seed
    differ only by the method; random draws a method makes (RLW, GradDrop, ...) are seeded too, so a run
    is repeatable.  The recorder logs every ``every``-th step; with ``run_dir`` it saves the log there.
    ``device`` and ``autocast`` are :func:`~mao_lab.experiments.train`'s (by default the GPU when present,
    full precision).

    Returns:
        ``(metrics, scores)``: the recorder's tidy table, and the test metrics of every task before
        training (step 0) and after ``steps`` steps (columns ``method, seed, step, task, metric, value,
        higher_is_better, seconds``; ``seconds`` is the training time).

    >>> train = load_multimnist(tasks=("left", "sum"), limit=64)
    >>> test = load_multimnist(split="test", tasks=("left", "sum"), limit=32)
    >>> metrics, scores = train_multimnist("mao", train, test, steps=3, batch_size=16, every=2)
    >>> sorted(metrics["step"].unique().tolist()), scores["step"].unique().tolist()
    ([0, 2], [0, 3])
    """
    if tuple(test.tasks) != tuple(train.tasks):
        raise ValueError(f"train and test must have the same tasks, got {train.tasks} and {test.tasks}")
    metrics, scores = train_on_problem(
        MultiMNISTProblem(train, test, batch_size=batch_size, eval_batch_size=1000),
        method,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        every=every,
        run_dir=run_dir,
        progress=progress,
        device=device,
        autocast=autocast,
        **hyperparameters,
    )
    assert metrics is not None  # recorded: train checks that ``every`` is at least 1
    return metrics, scores


def train_single_task(
    task: str,
    train: MultiMNIST,
    test: MultiMNIST,
    *,
    steps: int = 250,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    method: str = "sum",
    progress: bool = False,
    device: torch.device | str | None = None,
    autocast: Autocast = None,
) -> pd.DataFrame:
    """The single-task baseline of the same budget: the same loop (:func:`~mao_lab.experiments.train`) and
    network with ``task``'s head and loss only, the same batches (``seed``), ``steps`` steps of ``method``
    (``"sum"``: Adam on the one loss).

    With the same seed its trunk starts where the multi-task network's does.  Returns the scores table of
    :func:`train_multimnist` with ``method`` = :data:`~mao_lab.experiments.SINGLE_TASK`.

    >>> train = load_multimnist(tasks=("left", "sum"), limit=64)
    >>> test = load_multimnist(split="test", tasks=("left", "sum"), limit=32)
    >>> scores = train_single_task("sum", train, test, steps=2, batch_size=16)
    >>> scores[["method", "step", "task", "metric"]].values.tolist()
    [['single-task', 0, 'sum', 'mae'], ['single-task', 2, 'sum', 'mae']]
    """
    require("steps", steps, Int(min=1))
    problem = MultiMNISTProblem(
        _one_task(train, task), _one_task(test, task), batch_size=batch_size, eval_batch_size=1000
    )
    run = run_on_problem(
        problem,
        method,
        problem.task_names,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        label=f"{task} alone, seed {seed}",
        progress=progress,
        device=device,
        autocast=autocast,
    )
    return score_table(run, SINGLE_TASK, seed)


def compare_on_multimnist(
    methods: Sequence[str],
    *,
    tasks: Sequence[str] = MULTIMNIST_TASK_NAMES,
    seeds: Sequence[int] = (0, 1, 2),
    num_train: int | None = None,
    num_test: int | None = None,
    baselines: bool = True,
    run_root: str | os.PathLike[str] | None = None,
    data_path: str | os.PathLike[str] | None = None,
    progress: bool = True,
    **options: Any,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every method with every seed (:func:`train_multimnist`), and each task alone with every seed
    (:func:`train_single_task`), on the shipped MultiMNIST data.

    Args:
        methods: names from :func:`mao_lab.methods.available`.
        tasks: names from :data:`~mao_lab.problems.MULTIMNIST_TASKS`.
        seeds: one run per method and seed (and per task and seed for the baselines).
        num_train, num_test: use only the first images of each split (all by default).
        baselines: also train the single-task baselines.
        run_root: each multi-task run's recorder log goes to ``run_root/<method>-seed<k>/``.
        data_path: the ``.npz`` to read (the shipped file by default).
        progress: one tqdm bar over the runs.
        options: ``steps``, ``lr``, ``batch_size``, ``device``, ``autocast`` (shared with the baselines) and ``every``.

    Returns:
        ``(metrics, scores)``: the recorder tables combined, with a ``run`` column (:func:`run_name`), and
        the scores of all runs, baselines included.
    """
    check_methods(methods)
    train = load_multimnist(data_path, "train", tuple(tasks), limit=num_train)
    test = load_multimnist(data_path, "test", tuple(tasks), limit=num_test)
    shared = {k: options[k] for k in ("steps", "lr", "batch_size", "device", "autocast") if k in options}
    return compare_runs(
        methods,
        tasks if baselines else (),
        seeds,
        lambda method, seed, run_dir: train_multimnist(method, train, test, seed=seed, run_dir=run_dir, **options),
        lambda task, seed: train_single_task(task, train, test, seed=seed, **shared),
        run_root=run_root,
        progress=progress,
    )
