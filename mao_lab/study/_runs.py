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
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from .._task_gradients import TaskInputError
from ..experiments import tensor_batches, train
from ..problems import ImbalancedRegression, MultiMNIST, load_multimnist, multimnist_model, regression_model, task_metrics
from ..problems import task_losses as multimnist_losses
from ._design import RunConfig, StudyDesign

__all__ = ["RunTables", "run_config", "run_point"]

SCORE_COLUMNS = ["config", "lr", "seed", "split", "step", "task", "metric", "value", "higher_is_better"]
BALANCE_COLUMNS = ["config", "lr", "seed", "step", "layer", "imbalance", "largest_share", "largest_task"]
RUN_COLUMNS = ["config", "setting", "variant", "lr", "seed", "steps", "epochs", "seconds", "seconds_per_epoch",
               "distance", "path_length", "status"]

RunTables = dict[str, pd.DataFrame]
"""``{"scores": ..., "balance": ..., "runs": ...}`` (columns above)."""


# -- data ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _multimnist(tasks: tuple[str, ...], num_train: int, num_val: int, num_test: int) -> tuple[MultiMNIST, MultiMNIST, MultiMNIST]:
    """Train, validation and test sets; validation is the last ``num_val`` images of the training file."""
    whole = load_multimnist(split="train", tasks=tasks)
    if num_train + num_val > len(whole):
        raise ValueError(f"num_train + num_val = {num_train + num_val} exceeds the {len(whole)} training images")

    def rows(part: slice) -> MultiMNIST:
        return MultiMNIST(whole.images[part], [t[part] for t in whole.targets], whole.tasks, "train",
                          whole.left_index[part], whole.right_index[part])

    val_start = len(whole) - num_val
    return rows(slice(0, num_train)), rows(slice(val_start, None)), load_multimnist(split="test", tasks=tasks, limit=num_test)


@functools.lru_cache(maxsize=8)
def _regression(num_tasks: int, num_samples: int) -> ImbalancedRegression:
    return ImbalancedRegression(num_tasks, sigma_range=(1.0, 100.0), num_samples=num_samples, seed=0)


def _multimnist_rows(model: nn.Module, data: MultiMNIST, split: str) -> list[dict[str, Any]]:
    outputs = model(data.images)
    return [{"split": split, "task": s.task, "metric": s.metric, "value": s.value, "higher_is_better": s.higher_is_better}
            for s in task_metrics(outputs, list(data.targets), data.tasks)]


def _regression_rows(model: nn.Module, problem: ImbalancedRegression, x: Tensor, ys: Sequence[Tensor], split: str) -> list[dict[str, Any]]:
    losses = problem.task_losses(model(x), list(ys), normalize=True)
    return [{"split": split, "task": f"task{k}", "metric": "normalised_mse", "value": float(loss), "higher_is_better": False}
            for k, loss in enumerate(losses)]


class _Problem:
    """What the loop needs for one configuration: model, losses, batches, validation and test rows."""

    def __init__(self, config: RunConfig, design: StudyDesign) -> None:
        self.config = config
        if config.problem == "multimnist":
            train_set, val, test = _multimnist(config.tasks, design.num_train, design.num_val, design.num_test)
            tasks = config.tasks
            self.batches = tensor_batches(train_set.images, list(train_set.targets), design.batch_size)
            self.train_size = len(train_set)
            self.build = lambda: multimnist_model(tasks)
            self.losses = lambda model, batch: dict(zip(tasks, multimnist_losses(model(batch[0]), batch[1], tasks)))
            self.validate = lambda model: _multimnist_rows(model, val, "val")
            self.test = lambda model: _multimnist_rows(model, test, "test")
        else:
            problem = _regression(len(config.tasks), design.regression_samples)
            x, ys = problem.split("train")
            cut = len(x) - design.regression_val
            x_val, ys_val = x[cut:], [y[cut:] for y in ys]
            x_test, ys_test = problem.split("test")
            names = config.tasks
            self.batches = tensor_batches(x[:cut], [y[:cut] for y in ys], design.batch_size)
            self.train_size = cut
            self.build = lambda: regression_model(problem.num_tasks, in_dim=problem.in_dim, out_dim=problem.out_dim)
            self.losses = lambda model, batch: dict(zip(names, problem.task_losses(model(batch[0]), batch[1])))
            self.validate = lambda model: _regression_rows(model, problem, x_val, ys_val, "val")
            self.test = lambda model: _regression_rows(model, problem, x_test, ys_test, "test")


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
    imbalance = shared[shared["metric"].astype(str) == "imbalance"][["step", "layer", "value"]].rename(columns={"value": "imbalance"})
    shares = shared[shared["metric"].astype(str) == "update_share"].dropna(subset=["value"])
    top = shares.loc[shares.groupby(["step", "layer"], sort=False, observed=True)["value"].idxmax()]
    top = top[["step", "layer", "value", "task"]].rename(columns={"value": "largest_share", "task": "largest_task"})
    imbalance = imbalance.assign(layer=imbalance["layer"].astype(str))
    top = top.assign(layer=top["layer"].astype(str), largest_task=top["largest_task"].astype(str))
    return imbalance.merge(top[["step", "layer", "largest_share", "largest_task"]], on=["step", "layer"], how="left")


def run_config(config: RunConfig, design: StudyDesign, lr: float, seed: int, *, progress: bool = False) -> RunTables:
    """Train ``config`` at ``lr`` under ``seed`` for the design's budget; the three tidy tables of the run.

    >>> from mao_lab.study import smoke_design
    >>> design = smoke_design()
    >>> tables = run_config(design.config("reg2.mao"), design, 1e-3, 0)
    >>> sorted(tables), tables["runs"][["steps", "seed"]].values.tolist()
    (['balance', 'runs', 'scores'], [[4, 0]])
    >>> sorted(tables["scores"]["split"].unique()), tables["balance"]["layer"].nunique()
    (['test', 'val'], 8)
    """
    problem = _Problem(config, design)
    meter = _PathMeter()

    def losses(model: nn.Module, batch: Any) -> Any:
        meter.observe(model)
        return problem.losses(model, batch)

    steps = design.steps_of(config)
    hyperparameters = dict(config.hyperparameters)
    if config.method == "grouping":
        hyperparameters["seed"] = seed  # the random partition is part of what a seed fixes
    key = {"config": config.name, "lr": float(lr), "seed": int(seed)}
    try:
        run = train(
            problem.build, config.method, losses, steps=steps, batches=problem.batches, seed=seed, lr=lr,
            hyperparameters=hyperparameters, record_every=None if config.single_task else design.record_every,
            evaluate=problem.validate, eval_every=design.eval_every, progress=progress, desc=f"{config.name} lr={lr:g} seed={seed}",
        )
    except TaskInputError as error:  # a loss or gradient became NaN/Inf: this learning rate diverged
        runs = pd.DataFrame([{**key, "setting": config.setting, "variant": config.variant, "steps": steps,
                              "status": f"diverged: {error}"}]).reindex(columns=RUN_COLUMNS)
        return {"scores": pd.DataFrame(columns=SCORE_COLUMNS), "balance": pd.DataFrame(columns=BALANCE_COLUMNS), "runs": runs}
    distance, path_length = meter.finish(run.model)
    run.model.eval()
    with torch.no_grad():
        test_rows = problem.test(run.model)
    scores = pd.concat([run.evaluations, pd.DataFrame([{"step": steps, **row} for row in test_rows])], ignore_index=True)
    scores = scores.assign(**key)[SCORE_COLUMNS]
    if run.metrics is not None and len(run.metrics):
        balance = _balance_rows(run.metrics).assign(**key)[BALANCE_COLUMNS]
    else:
        balance = pd.DataFrame(columns=BALANCE_COLUMNS)
    epochs = steps * design.batch_size / problem.train_size
    runs = pd.DataFrame([{**key, "setting": config.setting, "variant": config.variant, "steps": steps, "epochs": epochs,
                          "seconds": run.seconds, "seconds_per_epoch": run.seconds / epochs if epochs else math.nan,
                          "distance": distance, "path_length": path_length, "status": "ok"}])[RUN_COLUMNS]
    return {"scores": scores, "balance": balance, "runs": runs}


def run_point(
    spec: Mapping[str, Any], *, progress: bool = True
) -> RunTables:
    """Every run of a point: ``spec`` holds ``design`` (a :class:`StudyDesign` as a dict) and ``runs``, a list of
    ``{"config": name, "lr": ..., "seed": ...}``; the tables of all its runs concatenated."""
    from tqdm.auto import tqdm

    design = StudyDesign.from_dict(spec["design"])
    parts: dict[str, list[pd.DataFrame]] = {"scores": [], "balance": [], "runs": []}
    for item in tqdm(list(spec["runs"]), desc="runs", disable=not progress):
        tables = run_config(design.config(item["config"]), design, float(item["lr"]), int(item["seed"]))
        for name, table in tables.items():
            parts[name].append(table)
    return {name: pd.concat([t for t in tables if len(t)] or tables, ignore_index=True) for name, tables in parts.items()}
