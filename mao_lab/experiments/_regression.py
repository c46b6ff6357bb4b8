r"""GradNorm's imbalanced regression under any method, recorder on: train and score.

The notebook ``02_imbalanced_regression`` draws what these functions compute (with the shared analysis of
:mod:`mao_lab.experiments`), and ``tests/test_experiments.py`` asserts what it claims: under Adam on the
summed loss the task with the largest target scale owns nearly all of every shared layer's update, while
MAO and IO give every task a comparable share.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from .._validate import Int, require
from ..problems import ImbalancedRegression, RegressionProblem, seeded_init
from ..recorder import combine_runs
from ._labels import method_label
from ._training import Autocast, recording, resolve_device, train

__all__ = ["compare_methods", "final_losses", "train_with_recorder"]


def train_with_recorder(
    problem: ImbalancedRegression,
    method: str,
    *,
    steps: int = 300,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    every: int = 5,
    eval_every: int | None = None,
    run_dir: str | Path | None = None,
    progress: bool = False,
    device: torch.device | str | None = None,
    autocast: Autocast = None,
    **hyperparameters: object,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train ``regression_model`` on ``problem`` with ``method`` (:func:`~mao_lab.experiments.train`),
    recording every ``every``-th step.

    The initial network and the order of the batches depend on ``seed`` only, so runs differ only by
    the method.  With ``run_dir`` the recorder's log is saved there (``metrics.parquet`` and
    ``params.json``, readable by :func:`mao_lab.recorder.load_run`).  The problem is
    :class:`~mao_lab.problems.RegressionProblem` on ``problem``'s whole training split; ``device`` and
    ``autocast`` are :func:`~mao_lab.experiments.train`'s (by default the GPU when present, full precision).

    Returns:
        ``(metrics, losses)``: the recorder's tidy table (parameter level, see :mod:`mao_lab.recorder`),
        and one row per evaluation (every ``eval_every`` steps, by default 20 over the run) and task with
        columns ``method, step, task, sigma, train_loss, test_loss, normalised_test_loss`` (the test MSE
        divided by ``sigma^2``; ``train_loss`` is the loss on that step's batch, NaN at step 0).

    >>> data = ImbalancedRegression(2, num_samples=200, in_dim=8, out_dim=4)
    >>> metrics, losses = train_with_recorder(data, "mao", steps=4, every=2, batch_size=16)
    >>> sorted(metrics["step"].unique().tolist()), int(losses["step"].max())
    ([0, 2], 4)
    """
    require("steps", steps, Int(min=1))
    data = RegressionProblem(problem, batch_size=batch_size, metrics=("mse",))
    target = resolve_device(device)

    def build() -> torch.nn.Module:
        with seeded_init(seed):
            return data.build_model()

    def test_losses(model: torch.nn.Module) -> list[dict[str, Any]]:
        return [
            {"task": s.task, "sigma": data.sigmas[s.task], "test_loss": s.value} for s in data.evaluate(model, "test")
        ]

    params = {
        "method": method,
        "label": method_label(method),
        "num_tasks": problem.num_tasks,
        "sigmas": problem.sigmas.tolist(),
        "steps": steps,
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
    }
    run = train(
        build,
        method,
        data.task_losses,
        steps=steps,
        batches=lambda s: data.batches("train", seed=s),
        seed=seed,
        lr=lr,
        evaluate=test_losses,
        eval_every=eval_every or max(1, steps // 20),
        progress=progress,
        desc=method_label(method),
        device=target,
        autocast=autocast,
        **recording(params, hyperparameters, every=every, run_dir=run_dir),
    )
    losses = run.evaluations.merge(
        run.train_losses.rename(columns={"loss": "train_loss"}), on=["step", "task"], how="left"
    )
    losses = losses.assign(method=method, normalised_test_loss=losses["test_loss"] / losses["sigma"] ** 2)
    columns = ["method", "step", "task", "sigma", "train_loss", "test_loss", "normalised_test_loss"]
    return run.metrics, losses[columns]


def compare_methods(
    methods: Sequence[str],
    *,
    num_tasks: int = 4,
    sigma_range: tuple[float, float] = (1.0, 100.0),
    sigmas: Sequence[float] | None = None,
    num_samples: int = 4000,
    data_seed: int = 0,
    run_root: str | Path | None = None,
    progress: bool = True,
    **options: Any,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`train_with_recorder` for each method on one dataset.

    With ``run_root`` each run's recorder log goes to ``run_root/<method>/``.

    Returns:
        ``(metrics, losses)``: the recorder tables of all runs combined (a ``run`` column holding the
        method's name first) and the loss tables concatenated.
    """
    problem = ImbalancedRegression(
        num_tasks, sigmas=sigmas, sigma_range=tuple(sigma_range), num_samples=num_samples, seed=data_seed
    )
    metrics, losses = [], []
    for method in tqdm(list(methods), desc="methods", disable=not progress):
        run_dir = Path(run_root) / method if run_root is not None else None
        frame, curve = train_with_recorder(problem, method, run_dir=run_dir, progress=progress, **options)
        metrics.append(frame.assign(run=method))
        losses.append(curve)
    return combine_runs(metrics), pd.concat(losses, ignore_index=True)


def final_losses(losses: pd.DataFrame) -> pd.DataFrame:
    """The normalised test loss of every task at the last evaluation: methods as rows, tasks as columns.

    >>> losses = pd.DataFrame({"method": "sum", "step": [0, 5, 5], "task": ["task0", "task0", "task1"],
    ...                        "sigma": [1.0, 1.0, 10.0], "normalised_test_loss": [1.0, 0.5, 0.2]})
    >>> final_losses(losses).to_dict("records")
    [{'method': 'sum', 'task0 (σ=1)': 0.5, 'task1 (σ=10)': 0.2, 'worst': 0.5}]
    """
    last = losses[losses["step"] == losses.groupby("method")["step"].transform("max")]
    label = last["task"] + " (σ=" + last["sigma"].map(lambda s: f"{s:.3g}") + ")"
    table = last.assign(task=label).pivot(index="method", columns="task", values="normalised_test_loss")
    table = table.reindex(list(pd.unique(losses["method"])))
    table["worst"] = table.max(axis=1)
    table.columns.name = None
    return table.reset_index()
