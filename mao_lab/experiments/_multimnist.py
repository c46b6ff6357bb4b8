r"""Real data: MultiMNIST with four tasks of different nature, every method against single-task baselines.

The notebook ``03_multimnist`` draws what these functions compute, and
``tests/test_experiments_multimnist.py`` checks them.  The analysis follows the MAO paper (Hervella et
al., *Neural Networks* 170, 2024; ``docs/references.md`` §1): task performance relative to single-task
training of the same budget, and the learning balance across tasks, layers and training steps recorded
by :class:`mao_lab.recorder.Recorder`.

The comparison measure is Delta_m (``docs/references.md`` §6), with ``B`` the single-task baseline:

.. math::

    \Delta_m = \frac{100}{T} \sum_t \frac{1}{M_t} \sum_m (-1)^{s_{tm}} \frac{M_{tm} - B_{tm}}{B_{tm}},
    \qquad s_{tm} = 1 \text{ where higher is better,}

so a *negative* Delta_m means better than the baselines on average.  The mean is LibMTL's: first over
each task's metrics, then over the tasks (with one metric per task, as here, it equals Nash-MTL's flat
mean; LibMTL's own ``count_improvement`` reports the opposite sign).

Runs are named ``<method>-seed<k>`` (:func:`run_name`); with ``run_root`` each multi-task run's
recorder log goes to ``run_root/<method>-seed<k>/``, which ``04_balance_explorer`` opens.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.colors import qualitative
from plotly.subplots import make_subplots
from tqdm.auto import tqdm

from ..methods import available, make
from ..problems import MultiMNIST, evaluate_multimnist, load_multimnist, multimnist_model, task_losses
from ..recorder import Recorder, combine_runs, metric_lines, share_areas
from ._regression import METHOD_LABELS, module_level, shared_layers
from ._runs import imbalance_over_steps
from ._widgets import show_figure

__all__ = [
    "MULTIMNIST_LABELS",
    "MULTIMNIST_TASK_NAMES",
    "MultiMNISTExplorer",
    "SINGLE_TASK",
    "compare_on_multimnist",
    "delta_m",
    "delta_m_figure",
    "delta_m_table",
    "imbalance_by_method",
    "imbalance_by_method_figure",
    "largest_shares",
    "method_label",
    "method_ownership",
    "multimnist_results",
    "parse_run_name",
    "results_wide",
    "run_name",
    "task_metric_figure",
    "train_multimnist",
    "train_single_task",
]

MULTIMNIST_TASK_NAMES: tuple[str, ...] = ("left", "right", "sum", "reconstruct")
"""The four MultiMNIST tasks: two classifications, a regression and a per-pixel reconstruction."""

SINGLE_TASK = "single-task"
"""The ``method`` of the single-task baselines' rows: the same network with one head, trained by Adam."""

SCORE_COLUMNS = ["method", "seed", "step", "task", "metric", "value", "higher_is_better", "seconds"]

MULTIMNIST_LABELS: dict[str, str] = {
    **METHOD_LABELS, "mgda": "MGDA", "pcgrad": "PCGrad", "upgrad": "UPGrad", "cagrad": "CAGrad", "nash_mtl": "Nash-MTL",
    "famo": "FAMO", "mtadam": "MTAdam", SINGLE_TASK: "single task (Adam)",
}
"""Readable names of the methods in this experiment's tables and figures (others show their registry name)."""

Key = str | tuple[str, str]


# -- names --------------------------------------------------------------------------------------------


def run_name(method: str, seed: int) -> str:
    """The name (and folder) of a run.

    >>> run_name("mao", 2)
    'mao-seed2'
    """
    return f"{method}-seed{seed}"


def parse_run_name(name: str) -> tuple[str, int]:
    """The inverse of :func:`run_name`.

    >>> parse_run_name("single-task-seed10")
    ('single-task', 10)
    """
    method, separator, seed = str(name).rpartition("-seed")
    if not separator or not method or not seed.isdigit():
        raise ValueError(f"{name!r} is not a run name of the form '<method>-seed<k>'")
    return method, int(seed)


# -- Delta_m -----------------------------------------------------------------------------------------


def _as_key(key: Key) -> tuple[str, str]:
    return (key, "") if isinstance(key, str) else (str(key[0]), str(key[1]))


def delta_m(values: Mapping[Key, float], baseline: Mapping[Key, float], higher_is_better: Mapping[Key, bool]) -> float:
    """Delta_m in percent (``docs/references.md`` §6): the mean relative change against the baseline, signed so that
    *lower is better* (a negative value beats the baseline).

    Keys are task names (one metric per task) or ``(task, metric)`` pairs; the relative changes are averaged
    over each task's metrics first, then over the tasks (LibMTL's per-task mean).

    Args:
        values: the method's metrics.
        baseline: the single-task baseline's metrics, for the same keys (none may be 0).
        higher_is_better: for each key, whether a higher value is better (``s_tm = 1``).

    >>> delta_m({"acc": 0.9, "mae": 1.0}, {"acc": 0.8, "mae": 2.0}, {"acc": True, "mae": False})
    -31.25
    >>> delta_m({("a", "x"): 2.0, ("a", "y"): 4.0, ("b", "z"): 1.0}, {("a", "x"): 1.0, ("a", "y"): 4.0, ("b", "z"): 1.0},
    ...         {("a", "x"): False, ("a", "y"): False, ("b", "z"): False})
    25.0
    """
    keys = {_as_key(k): k for k in values}
    if not keys:
        raise ValueError("delta_m needs at least one metric")
    if set(values) != set(baseline) or not set(values) <= set(higher_is_better):
        odd = sorted(map(str, set(values) ^ set(baseline) | (set(values) - set(higher_is_better))))
        raise ValueError(f"values and baseline must have the same keys, and higher_is_better one for each; mismatch at {odd}")
    by_task: dict[str, list[float]] = {}
    for (task, _), key in keys.items():
        value, base = float(values[key]), float(baseline[key])
        if base == 0 or not math.isfinite(base) or not math.isfinite(value):
            raise ValueError(f"metric {key!r}: the baseline must be finite and non-zero and the value finite, got {base} and {value}")
        sign = -1.0 if higher_is_better[key] else 1.0
        by_task.setdefault(task, []).append(sign * (value - base) / base)
    return 100.0 * float(np.mean([np.mean(changes) for changes in by_task.values()]))


# -- training -------------------------------------------------------------------------------------------


def _index_batches(num_samples: int, batch_size: int, seed: int, steps: int) -> Iterator[torch.Tensor]:
    """``steps`` batches of row indices, epoch after epoch; the order depends on ``seed`` (and the epoch) only."""
    size = min(batch_size, num_samples)
    step, epoch = 0, 0
    while True:
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(num_samples, generator=generator)
        for start in range(0, num_samples - size + 1, size):  # full batches only
            if step == steps:
                return
            yield order[start : start + size]
            step += 1
        epoch += 1


def _check_training(steps: int, batch_size: int, every: int, seed: int) -> None:
    for name, value in (("steps", steps), ("batch_size", batch_size), ("every", every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")


def _score_rows(model: torch.nn.Module, test: MultiMNIST, method: str, seed: int, step: int, seconds: float) -> list[dict[str, Any]]:
    return [
        {"method": method, "seed": seed, "step": step, "task": s.task, "metric": s.metric, "value": s.value,
         "higher_is_better": s.higher_is_better, "seconds": seconds}
        for s in evaluate_multimnist(model, test)
    ]


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
    **hyperparameters: object,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train :func:`~mao_lab.problems.multimnist_model` on ``train``'s tasks with ``method``, recorder on.

    The initial network and the order of the batches depend on ``seed`` only, so runs with the same seed
    differ only by the method; random draws a method makes (RLW, GradDrop, ...) are seeded too, so a run
    is repeatable.  The recorder logs every ``every``-th step; with ``run_dir`` it saves the log there.

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
    if method not in available():
        raise ValueError(f"unknown method {method!r}; available: {', '.join(available())}")
    _check_training(steps, batch_size, every, seed)
    if tuple(test.tasks) != tuple(train.tasks):
        raise ValueError(f"train and test must have the same tasks, got {train.tasks} and {test.tasks}")
    tasks = tuple(train.tasks)
    params = {"problem": "multimnist", "method": method, "label": method_label(method), "tasks": list(tasks),
              "seed": seed, "steps": steps, "lr": lr, "batch_size": batch_size, "every": every, **hyperparameters}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = multimnist_model(tasks, seed=seed)
        optimizer = make(method, model.parameters(), lr=lr, **hyperparameters)
        recorder = Recorder(model, optimizer, every, run_dir=run_dir, params=params if run_dir else None, overwrite=True)
        rows = _score_rows(model, test, method, seed, 0, 0.0)
        started = time.perf_counter()
        for indices in tqdm(_index_batches(len(train), batch_size, seed, steps), total=steps,
                            desc=run_name(method, seed), disable=not progress, leave=False):
            x, ys = train.images[indices], [target[indices] for target in train.targets]
            optimizer.step(lambda: dict(zip(tasks, task_losses(model(x), ys, tasks))))
        seconds = time.perf_counter() - started
        recorder.close()
    rows += _score_rows(model, test, method, seed, steps, seconds)
    return recorder.to_frame(), pd.DataFrame(rows, columns=SCORE_COLUMNS)


def train_single_task(
    task: str,
    train: MultiMNIST,
    test: MultiMNIST,
    *,
    steps: int = 250,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = False,
) -> pd.DataFrame:
    """The single-task baseline of the same budget: the same network with ``task``'s head only, the same
    batches (``seed``), ``steps`` steps of ``torch.optim.Adam(lr=lr)``.

    With the same seed its trunk starts where the multi-task network's does.  Returns the scores table of
    :func:`train_multimnist` with ``method`` = :data:`SINGLE_TASK`.

    >>> train = load_multimnist(tasks=("left", "sum"), limit=64)
    >>> test = load_multimnist(split="test", tasks=("left", "sum"), limit=32)
    >>> scores = train_single_task("sum", train, test, steps=2, batch_size=16)
    >>> scores[["method", "step", "task", "metric"]].values.tolist()
    [['single-task', 0, 'sum', 'mae'], ['single-task', 2, 'sum', 'mae']]
    """
    _check_training(steps, batch_size, 1, seed)
    train, test = _one_task(train, task), _one_task(test, task)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = multimnist_model((task,), seed=seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        rows = _score_rows(model, test, SINGLE_TASK, seed, 0, 0.0)
        started = time.perf_counter()
        for indices in tqdm(_index_batches(len(train), batch_size, seed, steps), total=steps,
                            desc=f"{task} alone, seed {seed}", disable=not progress, leave=False):
            optimizer.zero_grad(set_to_none=True)
            (loss,) = task_losses(model(train.images[indices]), [train.targets[0][indices]], (task,))
            loss.backward()
            optimizer.step()
        seconds = time.perf_counter() - started
    rows += _score_rows(model, test, SINGLE_TASK, seed, steps, seconds)
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


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
        options: ``steps``, ``lr``, ``batch_size`` (shared with the baselines) and ``every``.

    Returns:
        ``(metrics, scores)``: the recorder tables combined, with a ``run`` column (:func:`run_name`), and
        the scores of all runs, baselines included.
    """
    unknown = [m for m in methods if m not in available()]
    if not methods or unknown:
        raise ValueError(f"methods must name at least one method; unknown: {unknown}; available: {', '.join(available())}")
    train = load_multimnist(data_path, "train", tuple(tasks), limit=num_train)
    test = load_multimnist(data_path, "test", tuple(tasks), limit=num_test)
    shared = {k: options[k] for k in ("steps", "lr", "batch_size") if k in options}
    jobs = [(m, s) for s in seeds for m in methods] + ([(f"{SINGLE_TASK}:{t}", s) for s in seeds for t in tasks] if baselines else [])
    metrics, scores = [], []
    bar = tqdm(jobs, desc="runs", disable=not progress)
    for job, seed in bar:
        bar.set_postfix_str(run_name(job, seed))
        if job.startswith(f"{SINGLE_TASK}:"):
            scores.append(train_single_task(job.split(":", 1)[1], train, test, seed=seed, **shared))
            continue
        run_dir = Path(run_root) / run_name(job, seed) if run_root is not None else None
        frame, score = train_multimnist(job, train, test, seed=seed, run_dir=run_dir, **options)
        metrics.append(frame.assign(run=run_name(job, seed)))
        scores.append(score)
    return combine_runs(metrics), pd.concat(scores, ignore_index=True)


# -- results ------------------------------------------------------------------------------------------


def _final(scores: pd.DataFrame) -> pd.DataFrame:
    """The rows of each run's last evaluation."""
    last = scores.groupby(["method", "seed"], sort=False)["step"].transform("max")
    return scores[scores["step"] == last]


def _baseline(scores: pd.DataFrame) -> pd.DataFrame:
    rows = _final(scores)
    rows = rows[rows["method"] == SINGLE_TASK]
    if rows.empty:
        raise ValueError(f"the scores hold no single-task baseline (method {SINGLE_TASK!r})")
    return rows.groupby(["task", "metric"], sort=False).agg(value=("value", "mean"), higher_is_better=("higher_is_better", "first"))


def delta_m_table(scores: pd.DataFrame) -> pd.DataFrame:
    """:func:`delta_m` of every multi-task run (final scores) against the single-task baselines' mean over seeds.

    Returns:
        One row per (method, seed): ``delta_m`` (%, lower is better) and, per task, the signed relative
        change in % that enters it (columns ``change_<task>``).
    """
    base = _baseline(scores)
    final = _final(scores)
    rows = []
    for (method, seed), part in final[final["method"] != SINGLE_TASK].groupby(["method", "seed"], sort=False):
        values = {(r.task, r.metric): r.value for r in part.itertuples()}
        missing = [k for k in values if k not in base.index]
        if missing:
            raise ValueError(f"no single-task baseline for {missing}")
        reference = {k: float(base.loc[k, "value"]) for k in values}
        higher = {k: bool(base.loc[k, "higher_is_better"]) for k in values}
        row: dict[str, Any] = {"method": method, "seed": int(seed), "delta_m": delta_m(values, reference, higher)}
        for key, value in values.items():
            row[f"change_{key[0]}"] = delta_m({key: value}, {key: reference[key]}, {key: higher[key]})
        rows.append(row)
    return pd.DataFrame(rows)


def multimnist_results(scores: pd.DataFrame) -> pd.DataFrame:
    """The tidy results table: per method (baselines included) and task, the final test metric's mean, std
    (over seeds, ``ddof=1``; NaN for one seed) and number of seeds; and per multi-task method one
    ``task = "(all)"``, ``metric = "delta_m"`` row (%, lower is better)."""
    final = _final(scores)
    order = list(pd.unique(final["method"]))
    table = (final.groupby(["method", "task", "metric"], sort=False)
             .agg(higher_is_better=("higher_is_better", "first"), mean=("value", "mean"), std=("value", "std"), seeds=("seed", "nunique"))
             .reset_index())
    if (final["method"] == SINGLE_TASK).any() and (final["method"] != SINGLE_TASK).any():
        dm = delta_m_table(scores).groupby("method", sort=False)["delta_m"].agg(["mean", "std", "count"]).reset_index()
        dm = dm.rename(columns={"count": "seeds"}).assign(task="(all)", metric="delta_m", higher_is_better=False)
        table = pd.concat([table, dm[table.columns]], ignore_index=True)
    table["method"] = pd.Categorical(table["method"], categories=order)
    return table.sort_values("method", kind="stable", ignore_index=True).assign(method=lambda t: t["method"].astype(str))


def _mean_std(row: pd.Series) -> str:
    digits = 2 if row["metric"] == "delta_m" else 4
    spread = "" if pd.isna(row["std"]) else f" ± {row['std']:.{digits}f}"
    return f"{row['mean']:.{digits}f}{spread}"


def results_wide(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`multimnist_results` for reading: methods (readable names) as rows, ``<task> <metric>`` columns in
    the tasks' order and Δm% last, cells ``mean ± std``.

    >>> table = pd.DataFrame({"method": ["mao", "mao"], "task": ["left", "(all)"], "metric": ["accuracy", "delta_m"],
    ...                       "higher_is_better": [True, False], "mean": [0.9, -1.0], "std": [0.01, 0.5], "seeds": 3})
    >>> results_wide(table).to_dict("index")
    {'MAO': {'left accuracy': '0.9000 ± 0.0100', 'Δm%': '-1.00 ± 0.50'}}
    """
    column = table["task"] + " " + table["metric"]
    column = column.where(table["metric"] != "delta_m", "Δm%")
    shown = table.assign(value=table.apply(_mean_std, axis=1), column=column)
    columns = [c for c in pd.unique(shown["column"]) if c != "Δm%"] + (["Δm%"] if (shown["column"] == "Δm%").any() else [])
    wide = shown.pivot(index="method", columns="column", values="value").reindex(index=list(pd.unique(table["method"])), columns=columns)
    wide.index = [method_label(m) for m in wide.index]
    wide.columns.name = None
    return wide.fillna("")


# -- balance ------------------------------------------------------------------------------------------


def method_ownership(ownership: pd.DataFrame) -> pd.DataFrame:
    """:func:`layer_ownership` of ``<method>-seed<k>`` runs averaged over the seeds: one ``run`` per method.

    The shares and imbalance are seed means; ``owner`` and ``owner_share`` are recomputed from the mean shares.
    """
    parsed = ownership["run"].map(parse_run_name)
    frame = ownership.assign(run=parsed.str[0])
    mean = (frame.groupby(["run", "layer", "task"], sort=False)
            .agg(share=("share", "mean"), imbalance=("imbalance", "mean"), num_tasks=("num_tasks", "first"))
            .reset_index())
    top = mean.loc[mean.groupby(["run", "layer"], sort=False)["share"].idxmax()].set_index(["run", "layer"])
    index = pd.MultiIndex.from_frame(mean[["run", "layer"]])
    mean["owner"] = top["task"].reindex(index).to_numpy()
    mean["owner_share"] = top["share"].reindex(index).to_numpy()
    return mean[["run", "layer", "task", "share", "owner", "owner_share", "imbalance", "num_tasks"]]


def largest_shares(ownership: pd.DataFrame) -> dict[str, dict[str, dict[str, Any]]]:
    """``{method: {layer: {"task": owner, "share": its share}}}`` from :func:`method_ownership`'s table.

    >>> table = pd.DataFrame({"run": "sum", "layer": "trunk.0", "task": ["a", "b"], "share": [0.7, 0.3],
    ...                       "owner": "a", "owner_share": 0.7})
    >>> largest_shares(table)
    {'sum': {'trunk.0': {'task': 'a', 'share': 0.7}}}
    """
    result: dict[str, dict[str, dict[str, Any]]] = {}
    for (run, layer), part in ownership.groupby(["run", "layer"], sort=False):
        result.setdefault(str(run), {})[str(layer)] = {"task": str(part["owner"].iloc[0]), "share": float(part["owner_share"].iloc[0])}
    return result


def imbalance_by_method(frame: pd.DataFrame) -> pd.DataFrame:
    """Per method and recorded step, the imbalance index averaged over the shared layers: mean and std over seeds.

    ``frame`` is a recorder table of ``<method>-seed<k>`` runs (module or parameter level).
    """
    table = imbalance_over_steps(frame)
    table["method"] = table["run"].map(lambda r: parse_run_name(r)[0])
    return (table.groupby(["method", "step"], sort=False)["imbalance"].agg(["mean", "std", "count"]).reset_index()
            .rename(columns={"count": "seeds"}))


# -- figures ------------------------------------------------------------------------------------------


def method_label(method: str) -> str:
    """The readable name of a method (:data:`MULTIMNIST_LABELS`), or its registry name.

    >>> method_label("mgda"), method_label("single-task"), method_label("rlw")
    ('MGDA', 'single task (Adam)', 'rlw')
    """
    return MULTIMNIST_LABELS.get(method, method)


def _colors(methods: Sequence[str]) -> dict[str, str]:
    palette = qualitative.Plotly + qualitative.D3
    return {m: palette[i % len(palette)] for i, m in enumerate(methods)}


def task_metric_figure(scores: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """One panel per task: each method's final test metric (bar: mean over seeds, whisker: std, dots: seeds);
    the single-task baseline's mean as a dashed line."""
    final = _final(scores)
    tasks = [str(t) for t in pd.unique(final["task"])]
    methods = [str(m) for m in pd.unique(final["method"]) if m != SINGLE_TASK]
    colors = _colors(methods)
    titles = []
    for task in tasks:
        row = final[final["task"] == task].iloc[0]
        titles.append(f"{task}: {row['metric']} ({'higher' if row['higher_is_better'] else 'lower'} is better)")
    figure = make_subplots(rows=1, cols=len(tasks), subplot_titles=titles, horizontal_spacing=0.06)
    for i, task in enumerate(tasks):
        part = final[final["task"] == task]
        for method in methods:
            values = part[part["method"] == method]["value"]
            figure.add_trace(go.Bar(
                x=[method_label(method)], y=[values.mean()], error_y={"type": "data", "array": [values.std() if len(values) > 1 else 0.0]},
                marker_color=colors[method], name=method_label(method), legendgroup=method, showlegend=i == 0,
                hovertemplate=f"{method_label(method)}<br>{task}: %{{y:.4f}} (mean of {len(values)})<extra></extra>"), row=1, col=i + 1)
            figure.add_trace(go.Scatter(
                x=[method_label(method)] * len(values), y=values.to_numpy(), mode="markers", marker={"color": "black", "size": 5},
                name="seeds", legendgroup="seeds", showlegend=i == 0 and method == methods[0],
                hovertemplate=f"{method_label(method)}<br>one seed: %{{y:.4f}}<extra></extra>"), row=1, col=i + 1)
        base = part[part["method"] == SINGLE_TASK]["value"]
        if len(base):
            figure.add_hline(y=float(base.mean()), line_dash="dash", line_color="gray", row=1, col=i + 1,
                             annotation_text="single task", annotation_position="top left")
    figure.update_layout(title=title or "Test metric of every task, by method (bar: mean over seeds; whisker: std; dots: seeds)",
                         barmode="overlay", height=430, legend_title_text="method")
    figure.update_xaxes(showticklabels=False)
    return figure


def delta_m_figure(table: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Bars of :func:`delta_m_table`: each method's Delta_m (mean over seeds, std whisker, seeds as dots).

    Below 0 (the dashed line) a method beats the single-task baselines on average.
    """
    methods = [str(m) for m in pd.unique(table["method"])]
    colors = _colors(methods)
    figure = go.Figure()
    for method in methods:
        values = table[table["method"] == method]["delta_m"]
        figure.add_trace(go.Bar(x=[method_label(method)], y=[values.mean()], marker_color=colors[method], name=method_label(method),
                                error_y={"type": "data", "array": [values.std() if len(values) > 1 else 0.0]},
                                hovertemplate=f"{method_label(method)}<br>Δm %{{y:.2f}}% (mean of {len(values)})<extra></extra>"))
        figure.add_trace(go.Scatter(x=[method_label(method)] * len(values), y=values.to_numpy(), mode="markers", showlegend=False,
                                    marker={"color": "black", "size": 6}, hovertemplate="one seed: %{y:.2f}%<extra></extra>"))
    figure.add_hline(y=0.0, line_dash="dash", line_color="gray")
    figure.update_layout(title=title or "Δm% against the single-task baselines (lower is better; below 0 beats them)",
                         yaxis_title="Δm (%)", showlegend=False, height=420)
    return figure


def imbalance_by_method_figure(table: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Lines of :func:`imbalance_by_method`: each method's mean imbalance over the steps, with a ±std band."""
    methods = [str(m) for m in pd.unique(table["method"])]
    colors = _colors(methods)
    figure = go.Figure()
    for method in methods:
        part = table[table["method"] == method].sort_values("step")
        spread = part["std"].fillna(0.0).to_numpy()
        steps, mean = part["step"].to_numpy(), part["mean"].to_numpy()
        figure.add_trace(go.Scatter(x=np.concatenate([steps, steps[::-1]]), y=np.concatenate([mean + spread, (mean - spread)[::-1]]),
                                    fill="toself", fillcolor=colors[method], opacity=0.2, line={"width": 0},
                                    hoverinfo="skip", showlegend=False, legendgroup=method))
        figure.add_trace(go.Scatter(x=steps, y=mean, mode="lines", name=method_label(method), line={"color": colors[method]}, legendgroup=method))
    figure.update_layout(
        title=title or "Across steps: imbalance of the shared layers' updates (mean over layers; band: ±std over seeds)",
        xaxis_title="step", yaxis_title="imbalance index (0 balanced, 1 one task owns them)", yaxis={"range": [0, 1]},
        legend_title_text="method",
    )
    return figure


# -- widget -------------------------------------------------------------------------------------------


class MultiMNISTExplorer:
    """Pick a method, a seed and a shared layer: the tasks' shares of that layer's update over the steps,
    and each task's gradient norm there.

    Built and driven without a browser (set a control's ``.value``); :meth:`static_figure` is the current
    share view, for exports where widgets are inert.

    Args:
        frame: a recorder table of ``<method>-seed<k>`` runs with a ``run`` column (module level is used).
        method, seed, layer: the starting choices.
    """

    def __init__(self, frame: pd.DataFrame, *, method: str | None = None, seed: int | None = None, layer: str | None = None) -> None:
        self.frame = module_level(frame)
        runs = [parse_run_name(r) for r in pd.unique(self.frame["run"].astype(str))]
        methods = list(dict.fromkeys(m for m, _ in runs))
        seeds = sorted({s for _, s in runs})
        layers = shared_layers(self.frame)
        self.method = widgets.Dropdown(options=[(method_label(m), m) for m in methods], value=method if method in methods else methods[0], description="method")
        self.seed = widgets.Dropdown(options=seeds, value=seed if seed in seeds else seeds[0], description="seed")
        self.layer = widgets.Dropdown(options=layers, value=layer if layer in layers else layers[0], description="layer")
        self.share_view, self.grad_view = widgets.Output(), widgets.Output()
        for control in (self.method, self.seed, self.layer):
            control.observe(lambda _: self._redraw(), names="value")
        self.widget = widgets.VBox([widgets.HBox([self.method, self.seed, self.layer]), self.share_view, self.grad_view])
        self._redraw()

    @property
    def run(self) -> str:
        """The run shown now."""
        return run_name(str(self.method.value), int(self.seed.value))

    def static_figure(self) -> go.Figure:
        """The share view shown now."""
        figure = share_areas(self.frame, str(self.layer.value), run=self.run)
        figure.update_layout(title=f"Tasks' shares of the update of {self.layer.value} — {method_label(str(self.method.value))}, seed {self.seed.value}")
        return figure

    def _redraw(self) -> None:
        show_figure(self.share_view, self.static_figure())
        grads = metric_lines(self.frame, "grad_norm", str(self.layer.value), run=self.run)
        grads.update_layout(yaxis_type="log", title=f"Per-task gradient norm of {self.layer.value} — {method_label(str(self.method.value))}, seed {self.seed.value}")
        show_figure(self.grad_view, grads)

    def _ipython_display_(self) -> None:  # pragma: no cover - needs a notebook front-end
        from IPython.display import display

        display(self.widget)
