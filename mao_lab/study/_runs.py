"""One point of the study: a configuration trained at some learning rates and seeds, into tidy tables.

Every run goes through the lab's one training loop (:func:`mao_lab.experiments._training.train`): under a
seed it builds the initial network, the batch order and the method's random draws, so runs with one seed
differ only by the method (they are *paired*).  Each run gives

* ``scores``: the validation metrics of every task every ``eval_every`` steps (the validation curve), and
  the test metrics after the last step (``split`` = ``val`` / ``test``);
* ``balance``: per recorded step and shared layer (every shared parameter tensor: a layer's weight and its
  bias apart), the imbalance index and the largest task's share of the update (:mod:`mao_lab.recorder`);
* ``runs``: one row with the training seconds, seconds per epoch, and the shared parameters' distance
  from their initial values and the length of their path (P3).

The path is measured at every forward pass the method asks for, so the sub-steps of IUS, IO and
grouping count: it is the sum of the Euclidean lengths of the moves between consecutive positions of the
shared parameters, plus the last move.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from .._task_gradients import TaskInputError
from ..experiments import train
from ..experiments._training import Autocast
from ..problems import Problem, Split, load_problem, metric_rows
from ._design import RunConfig, StudyDesign

__all__ = ["RunTables", "problem_of", "run_config", "run_point"]

SCORE_COLUMNS = ["config", "lr", "seed", "split", "step", "task", "metric", "value", "higher_is_better"]
BALANCE_COLUMNS = ["config", "lr", "seed", "step", "layer", "imbalance", "largest_share", "largest_task"]
RUN_COLUMNS = [
    "config",
    "setting",
    "variant",
    "lr",
    "seed",
    "steps",
    "epochs",
    "seconds",
    "seconds_per_epoch",
    "distance",
    "path_length",
    "status",
]

RunTables = dict[str, pd.DataFrame]
"""``{"scores": ..., "balance": ..., "runs": ...}`` (columns above)."""


# -- problems ------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _load(spec: str, options: str) -> Problem:
    """One problem per import path and options (as JSON) in a process: its data are loaded once."""
    return load_problem(spec, **json.loads(options))


def problem_of(config: RunConfig, design: StudyDesign) -> tuple[Problem, tuple[str, ...]]:
    """The problem ``config`` trains on, and its tasks there.

    The shipped study's MultiMNIST configurations load the problem of their own tasks (validation: the last
    ``num_val`` training images), its regression ones the regression of their task count; your problem is
    made once by its factory and each configuration trains a subset of its tasks.
    """
    if config.problem == "multimnist":
        factory = "mao_lab.problems:multimnist_problem"
        options: dict[str, Any] = {
            "tasks": list(config.tasks),
            "num_train": design.num_train,
            "num_val": design.num_val,
            "num_test": design.num_test,
        }
    elif config.problem == "regression":
        factory = "mao_lab.problems:regression_problem"
        options = {
            "num_tasks": len(config.tasks),
            "num_samples": design.regression_samples,
            "num_val": design.regression_val,
        }
    else:
        return _load(config.problem, json.dumps(dict(design.problem_options), sort_keys=True)), config.tasks
    return _load(factory, json.dumps({**options, "batch_size": design.batch_size})), config.tasks


def _rows(problem: Problem, model: nn.Module, split: Split, tasks: tuple[str, ...], name: str) -> list[dict[str, Any]]:
    return metric_rows(problem.evaluate(model, split, tasks), split=name)


# -- one run ------------------------------------------------------------------------------------------


class _PathMeter:
    """The shared parameters' positions at every forward pass: distance from the start and path length."""

    def __init__(self) -> None:
        self.start: Tensor | None = None
        self.last: Tensor | None = None
        self.length = 0.0

    def observe(self, model: nn.Module) -> None:
        with torch.no_grad():
            position = torch.cat([p.detach().flatten() for p in model.trunk.parameters()]).clone()
        if self.start is None:
            self.start = position
        elif self.last is not None:
            self.length += float(torch.linalg.vector_norm(position - self.last))
        self.last = position

    def finish(self, model: nn.Module) -> tuple[float, float]:
        self.observe(model)
        assert self.start is not None and self.last is not None
        return float(torch.linalg.vector_norm(self.last - self.start)), self.length


def _balance_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per step and shared parameter tensor: the imbalance index and the largest task's share of the update."""
    shared = metrics[metrics["kind"].astype(str) == "shared"]
    imbalance = shared[shared["metric"].astype(str) == "imbalance"][["step", "layer", "value"]].rename(
        columns={"value": "imbalance"}
    )
    shares = shared[shared["metric"].astype(str) == "update_share"].dropna(subset=["value"])
    top = shares.loc[shares.groupby(["step", "layer"], sort=False, observed=True)["value"].idxmax()]
    top = top[["step", "layer", "value", "task"]].rename(columns={"value": "largest_share", "task": "largest_task"})
    imbalance = imbalance.assign(layer=imbalance["layer"].astype(str))
    top = top.assign(layer=top["layer"].astype(str), largest_task=top["largest_task"].astype(str))
    return imbalance.merge(top[["step", "layer", "largest_share", "largest_task"]], on=["step", "layer"], how="left")


def run_config(
    config: RunConfig,
    design: StudyDesign,
    lr: float,
    seed: int,
    *,
    progress: bool = False,
    device: torch.device | str | None = None,
    autocast: Autocast = None,
) -> RunTables:
    """Train ``config`` at ``lr`` under ``seed`` for the design's budget; the three tidy tables of the run.

    ``device`` and ``autocast`` are :func:`~mao_lab.experiments.train`'s (by default the GPU when present,
    full precision).

    >>> from mao_lab.study import smoke_design
    >>> design = smoke_design()
    >>> tables = run_config(design.config("reg2.mao"), design, 1e-3, 0, device="cpu")
    >>> sorted(tables), tables["runs"][["steps", "seed"]].values.tolist()
    (['balance', 'runs', 'scores'], [[4, 0]])
    >>> sorted(tables["scores"]["split"].unique()), tables["balance"]["layer"].nunique()
    (['test', 'val'], 8)
    """
    problem, tasks = problem_of(config, design)
    meter = _PathMeter()

    def losses(model: nn.Module, batch: Any) -> Any:
        meter.observe(model)
        return problem.task_losses(model, batch, tasks)

    steps = design.steps_of(config)
    hyperparameters = dict(config.hyperparameters)
    if config.method == "grouping":
        hyperparameters["seed"] = seed  # the random partition is part of what a seed fixes
    key = {"config": config.name, "lr": float(lr), "seed": int(seed)}
    try:
        run = train(
            problem,
            config.method,
            losses,
            tasks=tasks,
            batch_size=design.batch_size,
            steps=steps,
            seed=seed,
            lr=lr,
            hyperparameters=hyperparameters,
            record_every=None if config.single_task else design.record_every,
            evaluate=lambda model: _rows(problem, model, "validation", tasks, "val"),
            eval_every=design.eval_every,
            progress=progress,
            desc=f"{config.name} lr={lr:g} seed={seed}",
            device=device,
            autocast=autocast,
        )
    except TaskInputError as error:  # a loss or gradient became NaN/Inf: this learning rate diverged
        runs = pd.DataFrame(
            [
                {
                    **key,
                    "setting": config.setting,
                    "variant": config.variant,
                    "steps": steps,
                    "status": f"diverged: {error}",
                }
            ]
        ).reindex(columns=RUN_COLUMNS)
        return {
            "scores": pd.DataFrame(columns=SCORE_COLUMNS),
            "balance": pd.DataFrame(columns=BALANCE_COLUMNS),
            "runs": runs,
        }
    distance, path_length = meter.finish(run.model)
    run.model.eval()
    with torch.no_grad():
        test_rows = _rows(problem, run.model, "test", tasks, "test")
    scores = pd.concat(
        [run.evaluations, pd.DataFrame([{"step": steps, **row} for row in test_rows])], ignore_index=True
    )
    scores = scores.assign(**key)[SCORE_COLUMNS]
    if run.metrics is not None and len(run.metrics):
        balance = _balance_rows(run.metrics).assign(**key)[BALANCE_COLUMNS]
    else:
        balance = pd.DataFrame(columns=BALANCE_COLUMNS)
    train_size = getattr(problem, "train_size", None)
    epochs = steps * design.batch_size / train_size if train_size else math.nan
    seconds_per_epoch = run.seconds / epochs if epochs and not math.isnan(epochs) else math.nan
    runs = pd.DataFrame(
        [
            {
                **key,
                "setting": config.setting,
                "variant": config.variant,
                "steps": steps,
                "epochs": epochs,
                "seconds": run.seconds,
                "seconds_per_epoch": seconds_per_epoch,
                "distance": distance,
                "path_length": path_length,
                "status": "ok",
            }
        ]
    )[RUN_COLUMNS]
    return {"scores": scores, "balance": balance, "runs": runs}


def run_point(
    spec: Mapping[str, Any],
    *,
    progress: bool = True,
    device: torch.device | str | None = None,
    autocast: Autocast = None,
) -> RunTables:
    """Every run of a point: ``spec`` holds ``design`` (a :class:`StudyDesign` as a dict) and ``runs``, a list of
    ``{"config": name, "lr": ..., "seed": ...}``; the tables of all its runs concatenated (on ``device``, under
    ``autocast``: :func:`run_config`)."""
    from tqdm.auto import tqdm

    design = StudyDesign.from_dict(spec["design"])
    parts: dict[str, list[pd.DataFrame]] = {"scores": [], "balance": [], "runs": []}
    for item in tqdm(list(spec["runs"]), desc="runs", disable=not progress):
        tables = run_config(
            design.config(item["config"]),
            design,
            float(item["lr"]),
            int(item["seed"]),
            device=device,
            autocast=autocast,
        )
        for name, table in tables.items():
            parts[name].append(table)
    return {
        name: pd.concat([t for t in tables if len(t)] or tables, ignore_index=True) for name, tables in parts.items()
    }
