r"""Who trains each shared layer? GradNorm's imbalanced regression under any method, with the recorder on.

The notebook ``02_imbalanced_regression`` draws what these functions compute, and
``tests/test_experiments.py`` asserts what it claims: under Adam on the summed loss the task with the
largest target scale owns nearly all of every shared layer's update, while MAO and IO give every task a
comparable share.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.colors import qualitative
from plotly.subplots import make_subplots
from tqdm.auto import tqdm

from ..methods import available, make
from ..problems import ImbalancedRegression, regression_model
from ..recorder import Recorder, by_module, combine_runs

__all__ = [
    "METHOD_LABELS",
    "compare_methods",
    "final_losses",
    "layer_ownership",
    "magnitude_figure",
    "module_level",
    "ownership_figure",
    "shared_layers",
    "train_with_recorder",
]

METHOD_LABELS: dict[str, str] = {
    "sum": "Adam on the sum",
    "mean": "Adam on the mean",
    "uw": "uncertainty weighting",
    "gradnorm": "GradNorm",
    "io": "IO (one Adam per task)",
    "ius": "IUS",
    "mao": "MAO",
}
"""Readable names of the methods the notebooks use most (others show their registry name)."""


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
    **hyperparameters: object,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train ``regression_model`` on ``problem`` with ``method``, recording every ``every``-th step.

    The initial network (``seed``) and the order of the batches are the same for every method, so
    runs differ only by the method.  With ``run_dir`` the recorder's log is saved there
    (``metrics.parquet`` and ``params.json``, readable by :func:`mao_lab.recorder.load_run`).

    Returns:
        ``(metrics, losses)``: the recorder's tidy table (parameter level, see :mod:`mao_lab.recorder`),
        and one row per evaluation with columns ``method, step, task, sigma, train_loss,
        test_loss, normalised_test_loss`` (the test MSE divided by ``sigma^2``).

    >>> data = ImbalancedRegression(2, num_samples=200, in_dim=8, out_dim=4)
    >>> metrics, losses = train_with_recorder(data, "mao", steps=4, every=2, batch_size=16)
    >>> sorted(metrics["step"].unique().tolist()), int(losses["step"].max())
    ([0, 2], 4)
    """
    if method not in available():
        raise ValueError(f"unknown method {method!r}; available: {', '.join(available())}")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("every", every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    eval_every = eval_every or max(1, steps // 20)
    model = regression_model(problem.num_tasks, in_dim=problem.in_dim, out_dim=problem.out_dim, seed=seed)
    optimizer = make(method, model.parameters(), lr=lr, **hyperparameters)
    params = {
        "method": method, "label": METHOD_LABELS.get(method, method), "num_tasks": problem.num_tasks,
        "sigmas": problem.sigmas.tolist(), "steps": steps, "lr": lr, "batch_size": batch_size, "seed": seed,
        "every": every, **{k: v for k, v in hyperparameters.items()},
    }
    recorder = Recorder(model, optimizer, every, run_dir=run_dir, params=params, overwrite=True) if run_dir else Recorder(model, optimizer, every)
    x_test, y_test = problem.split("test")
    task_names = [f"task{k}" for k in range(problem.num_tasks)]
    sigmas = problem.sigmas.tolist()
    rows: list[dict[str, Any]] = []

    def evaluate(step: int, train: list[float]) -> None:
        with torch.no_grad():
            test = problem.task_losses(model(x_test), y_test)
        for k, name in enumerate(task_names):
            rows.append({
                "method": method, "step": step, "task": name, "sigma": sigmas[k], "train_loss": train[k],
                "test_loss": float(test[k]), "normalised_test_loss": float(test[k]) / sigmas[k] ** 2,
            })

    x_train, y_train = problem.split("train")
    with torch.no_grad():  # step 0: the untrained network, its "train loss" on the first batch_size samples
        evaluate(0, [float(v) for v in problem.task_losses(model(x_train[:batch_size]), [y[:batch_size] for y in y_train])])
    step, epoch = 0, 0
    with tqdm(total=steps, desc=METHOD_LABELS.get(method, method), disable=not progress, leave=False) as bar:
        while step < steps:
            # Every method sees the same batches: their order depends on the seed and epoch only.
            for x, ys in problem.batches(batch_size, seed=seed * 100_003 + epoch):
                losses = optimizer.step(lambda: dict(zip(task_names, problem.task_losses(model(x), ys))))
                step += 1
                bar.update()
                if step % eval_every == 0 or step == steps:
                    evaluate(step, losses.tolist())
                if step == steps:
                    break
            epoch += 1
    recorder.close()
    return recorder.to_frame(), pd.DataFrame(rows)


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
    problem = ImbalancedRegression(num_tasks, sigmas=sigmas, sigma_range=tuple(sigma_range), num_samples=num_samples, seed=data_seed)
    metrics, losses = [], []
    for method in tqdm(list(methods), desc="methods", disable=not progress):
        run_dir = Path(run_root) / method if run_root is not None else None
        frame, curve = train_with_recorder(problem, method, run_dir=run_dir, progress=progress, **options)
        metrics.append(frame.assign(run=method))
        losses.append(curve)
    return combine_runs(metrics), pd.concat(losses, ignore_index=True)


def module_level(frame: pd.DataFrame) -> pd.DataFrame:
    """:func:`mao_lab.recorder.by_module`, keeping the runs in the order they come in the table.

    (``by_module`` itself returns the runs sorted by name.)
    """
    if "run" not in frame.columns:
        return by_module(frame)
    order = [str(r) for r in pd.unique(frame["run"].dropna().astype(str))]
    modules = by_module(frame)
    modules["run"] = pd.Categorical(modules["run"].astype(str), categories=order)
    return modules.sort_values("run", kind="stable", ignore_index=True)


def shared_layers(frame: pd.DataFrame) -> list[str]:
    """The shared layers of a recorder table, in the model's order."""
    rows = frame[(frame["kind"] == "shared") & (frame["metric"] == "update_share")]
    return [str(layer) for layer in pd.unique(rows["layer"].dropna())]


def _with_run(frame: pd.DataFrame) -> pd.DataFrame:
    return frame if "run" in frame.columns else frame.assign(run="run")


def layer_ownership(frame: pd.DataFrame, *, level: str = "module", tail: float = 0.5) -> pd.DataFrame:
    """Each task's mean share of each shared layer's update, over the last ``tail`` of the recorded steps.

    Args:
        frame: a recorder table, with or without a ``run`` column.
        level: ``"module"`` (a layer's weight and bias together) or ``"parameter"``.
        tail: the fraction of the recorded steps (the latest ones) to average over; 1 = all.

    Returns:
        One row per (run, layer, task): ``share`` (mean share), ``owner`` (the task with the largest
        share of that layer), ``owner_share``, ``imbalance`` (the layer's mean imbalance index, 0 =
        balanced, 1 = one task owns it) and ``num_tasks``.

    >>> frame = pd.DataFrame({"step": [0, 0], "layer": "w", "module": "(model)", "kind": "shared",
    ...                       "task": ["a", "b"], "other_task": None, "metric": "update_share", "value": [0.9, 0.1]})
    >>> layer_ownership(frame, level="parameter")[["layer", "task", "share", "owner"]].values.tolist()
    [['w', 'a', 0.9, 'a'], ['w', 'b', 0.1, 'a']]
    """
    if level not in ("module", "parameter"):
        raise ValueError(f"level must be 'module' or 'parameter', got {level!r}")
    if not 0 < tail <= 1:
        raise ValueError(f"tail must be in (0, 1], got {tail!r}")
    frame = _with_run(frame)
    if level == "module":
        frame = module_level(frame)
    parts = []
    for run, rows in frame.groupby("run", sort=False, observed=True):
        steps = np.sort(rows["step"].unique())
        kept = steps[int(math.floor(len(steps) * (1 - tail))):]
        rows = rows[rows["step"].isin(kept)]
        shares = rows[rows["metric"] == "update_share"]
        counts = shares.groupby("layer", observed=True)["task"].nunique()
        multi = set(counts[counts > 1].index.astype(str))  # reached by several tasks: shared
        shares = shares[shares["layer"].astype(str).isin(multi)]
        mean = shares.groupby(["layer", "task"], sort=False, observed=True)["value"].mean().rename("share").reset_index()
        imbalance = rows[rows["metric"] == "imbalance"].groupby("layer", observed=True)["value"].mean()
        mean["layer"] = mean["layer"].astype(str)
        mean["task"] = mean["task"].astype(str)
        top = mean.loc[mean.groupby("layer", sort=False)["share"].idxmax()].set_index("layer")
        mean["owner"] = mean["layer"].map(top["task"])
        mean["owner_share"] = mean["layer"].map(top["share"])
        mean["imbalance"] = mean["layer"].map({str(k): v for k, v in imbalance.items()})
        mean["num_tasks"] = mean["layer"].map(mean.groupby("layer")["task"].nunique())
        parts.append(mean.assign(run=str(run)))
    if not parts:
        return pd.DataFrame(columns=["run", "layer", "task", "share", "owner", "owner_share", "imbalance", "num_tasks"])
    table = pd.concat(parts, ignore_index=True)
    return table[["run", "layer", "task", "share", "owner", "owner_share", "imbalance", "num_tasks"]]


def final_losses(losses: pd.DataFrame) -> pd.DataFrame:
    """The normalised test loss of every task at the last evaluation: methods as rows, tasks as columns."""
    last = losses[losses["step"] == losses.groupby("method")["step"].transform("max")]
    label = last["task"] + " (σ=" + last["sigma"].map(lambda s: f"{s:.3g}") + ")"
    table = last.assign(task=label).pivot(index="method", columns="task", values="normalised_test_loss")
    table = table.reindex(list(pd.unique(losses["method"])))
    table["worst"] = table.max(axis=1)
    table.columns.name = None
    return table.reset_index()


def _label(run: str, labels: Mapping[str, str] | None) -> str:
    labels = METHOD_LABELS if labels is None else labels
    return labels.get(run, run)


def ownership_figure(ownership: pd.DataFrame, *, labels: Mapping[str, str] | None = None, title: str | None = None) -> go.Figure:
    """Stacked bars: for each run (a panel) and shared layer (a bar), each task's share of the update.

    A bar filled by one colour is a layer that one task trains alone; equal slices are a balanced layer.
    """
    runs = [str(r) for r in pd.unique(ownership["run"])]
    tasks = [str(t) for t in pd.unique(ownership["task"])]
    columns = min(len(runs), 5)
    rows = math.ceil(len(runs) / columns)
    figure = make_subplots(rows=rows, cols=columns, shared_yaxes=True, subplot_titles=[_label(r, labels) for r in runs],
                           horizontal_spacing=0.03, vertical_spacing=0.18)
    colors = qualitative.Plotly + qualitative.D3
    for i, run in enumerate(runs):
        part = ownership[ownership["run"] == run]
        layers = list(pd.unique(part["layer"]))
        for k, task in enumerate(tasks):
            values = part[part["task"] == task].set_index("layer")["share"].reindex(layers)
            figure.add_trace(
                go.Bar(x=layers, y=values.to_numpy(), name=task, legendgroup=task, showlegend=i == 0,
                       marker_color=colors[k % len(colors)],
                       hovertemplate="%{x}<br>" + task + ": %{y:.3f}<extra>" + _label(run, labels) + "</extra>"),
                row=i // columns + 1, col=i % columns + 1,
            )
    figure.update_layout(
        barmode="stack", title=title or "Who trains each shared layer: the tasks' shares of its update",
        legend_title_text="task", height=360 * rows + 60,
    )
    figure.update_yaxes(range=[0, 1])
    figure.update_yaxes(title_text="share of the update", col=1)
    return figure


def magnitude_figure(
    frame: pd.DataFrame,
    layer: str,
    metric: str = "update_norm",
    *,
    labels: Mapping[str, str] | None = None,
    title: str | None = None,
) -> go.Figure:
    """One panel per run: a line per task of ``metric`` (``grad_norm`` or ``update_norm``) of ``layer`` over the steps.

    ``layer`` is a parameter (``trunk.0.weight``) or a module (``trunk.0``), in which case the module's
    parameters are combined (:func:`mao_lab.recorder.by_module`).  Log scale.
    """
    if metric not in ("grad_norm", "update_norm", "update_share"):
        raise ValueError(f"metric must be 'grad_norm', 'update_norm' or 'update_share', got {metric!r}")
    frame = _with_run(frame)
    if layer not in set(frame["layer"].astype(str)):
        frame = module_level(frame)
        if layer not in set(frame["layer"].astype(str)):
            raise ValueError(f"no layer or module {layer!r} in the table")
    rows_all = frame[(frame["metric"] == metric) & (frame["layer"].astype(str) == layer)]
    runs = [str(r) for r in pd.unique(frame["run"])]
    columns = min(len(runs), 5)
    rows = math.ceil(len(runs) / columns)
    figure = make_subplots(rows=rows, cols=columns, shared_yaxes=True, subplot_titles=[_label(r, labels) for r in runs],
                           horizontal_spacing=0.03, vertical_spacing=0.18)
    colors = qualitative.Plotly + qualitative.D3
    tasks = [str(t) for t in pd.unique(rows_all["task"].dropna())]
    for i, run in enumerate(runs):
        part = rows_all[rows_all["run"] == run]
        for k, task in enumerate(tasks):
            series = part[part["task"] == task].sort_values("step")
            figure.add_trace(
                go.Scatter(x=series["step"], y=series["value"], mode="lines", name=task, legendgroup=task,
                           showlegend=i == 0, line={"color": colors[k % len(colors)]}),
                row=i // columns + 1, col=i % columns + 1,
            )
    names = {"grad_norm": "gradient norm", "update_norm": "update norm", "update_share": "share of the update"}
    figure.update_layout(
        title=title or f"Per-task {names[metric]} of {layer} over the steps",
        legend_title_text="task", height=330 * rows + 60,
    )
    figure.update_xaxes(title_text="step")
    figure.update_yaxes(type="log" if metric != "update_share" else "linear")  # every panel: the axes are shared
    figure.update_yaxes(title_text=names[metric], col=1)
    return figure
