"""Plotly figures of the tidy balance table (see :mod:`mao_lab.recorder` for its columns).

Each builder takes the table (one run, or a combined table and the ``run`` to show) and returns a
``plotly.graph_objects.Figure`` with titled axes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ._frame import METRICS

__all__ = ["grad_norm_ratios", "layer_bars", "metric_lines", "share_areas", "share_heatmap"]

_LABELS = {
    "grad_norm": "gradient norm",
    "update_norm": "update norm",
    "update_share": "share of the update",
    "imbalance": "imbalance (1 - normalised entropy)",
    "cosine": "cosine between task gradients",
    "loss": "loss",
}


def select_run(frame: pd.DataFrame, run: str | None = None) -> pd.DataFrame:
    """The rows of one run; ``run`` may be omitted when the table holds a single run (or no ``run`` column)."""
    if "run" not in frame.columns:
        if run is not None:
            raise ValueError(f"run={run!r} was given but the table has no 'run' column (it holds one run)")
        return frame
    runs = list(pd.unique(frame["run"].dropna()))
    if run is None:
        if len(runs) > 1:
            raise ValueError(f"the table holds several runs {runs}: choose one with run=...")
        return frame
    if run not in runs:
        raise ValueError(f"no run {run!r} in the table; runs: {runs}")
    return frame[frame["run"] == run]


def _rows(frame: pd.DataFrame, metric: str, run: str | None) -> pd.DataFrame:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; metrics: {list(METRICS)}")
    rows = select_run(frame, run)
    return rows[rows["metric"] == metric]


def _layer_order(frame: pd.DataFrame) -> list[str]:
    """Layers in the order they first appear (the model's order)."""
    return [str(layer) for layer in pd.unique(frame["layer"].dropna())]


def _series_name(task: object, other_task: object, metric: str) -> str:
    if metric == "imbalance":
        return "imbalance"
    if metric == "cosine":
        return f"{task} · {other_task}"
    return str(task)


def _series(rows: pd.DataFrame, metric: str) -> dict[str, pd.DataFrame]:
    """Rows split into one series per task (per task pair for cosines, a single one for imbalance)."""
    names = [_series_name(t, o, metric) for t, o in zip(rows["task"].astype(object), rows["other_task"].astype(object))]
    labelled = rows.assign(_series=names)
    return {name: part for name, part in labelled.groupby("_series", sort=False, observed=True)}


def _title(text: str, run: str | None) -> str:
    return f"{text} — {run}" if run is not None else text


def share_heatmap(frame: pd.DataFrame, task: str, *, run: str | None = None) -> go.Figure:
    """Layer x step heatmap of one task's share of the update (0 = none of it, 1 = all of it).

    Layers the task does not reach stay blank.

    >>> frame = pd.DataFrame({"step": [0, 0, 1, 1], "layer": ["w", "w", "w", "w"], "task": ["a", "b", "a", "b"],
    ...                       "other_task": None, "metric": "update_share", "value": [0.5, 0.5, 0.9, 0.1]})
    >>> share_heatmap(frame, "a").data[0].z.tolist()
    [[0.5, 0.9]]
    """
    rows = _rows(frame, "update_share", run)
    if task not in set(rows["task"].astype(object)):
        raise ValueError(
            f"no update shares of task {task!r}; tasks: {sorted(map(str, rows['task'].dropna().unique()))}"
        )
    layers = _layer_order(rows)
    mine = rows[rows["task"] == task]
    grid = mine.pivot_table(index="layer", columns="step", values="value", aggfunc="mean", observed=True)
    grid = grid.reindex([layer for layer in layers if layer in grid.index])
    figure = go.Figure(
        go.Heatmap(
            z=grid.to_numpy(),
            x=grid.columns.to_numpy(),
            y=list(grid.index.astype(str)),
            zmin=0.0,
            zmax=1.0,
            colorscale="Viridis",
            colorbar={"title": {"text": "share"}},
            hovertemplate="step %{x}<br>%{y}<br>share %{z:.3f}<extra></extra>",
        )
    )
    figure.update_layout(
        title=_title(f"Share of the update owned by task {task!r}", run),
        xaxis_title="step",
        yaxis_title="layer",
        yaxis={"autorange": "reversed"},  # first layer (the input side) on top
    )
    return figure


def share_areas(frame: pd.DataFrame, layer: str, *, run: str | None = None) -> go.Figure:
    """Stacked areas of the tasks' shares of one layer's update over the steps (they fill 0..1).

    >>> frame = pd.DataFrame({"step": [0, 0], "layer": ["w", "w"], "task": ["a", "b"], "other_task": None,
    ...                       "metric": "update_share", "value": [0.25, 0.75]})
    >>> [trace.name for trace in share_areas(frame, "w").data]
    ['a', 'b']
    """
    rows = _rows(frame, "update_share", run)
    rows = rows[rows["layer"] == layer]
    if rows.empty:
        raise ValueError(
            f"no update shares for layer {layer!r}; layers: {_layer_order(_rows(frame, 'update_share', run))}"
        )
    figure = go.Figure()
    for name, part in _series(rows, "update_share").items():
        part = part.sort_values("step")
        figure.add_trace(
            go.Scatter(
                x=part["step"].to_numpy(), y=part["value"].to_numpy(), name=name, mode="lines", stackgroup="shares"
            )
        )
    figure.update_layout(
        title=_title(f"Tasks' shares of the update of {layer}", run),
        xaxis_title="step",
        yaxis_title="share of the update",
        yaxis={"range": [0.0, 1.0]},
        legend_title_text="task",
    )
    return figure


def layer_bars(frame: pd.DataFrame, step: int, metric: str = "update_share", *, run: str | None = None) -> go.Figure:
    """Per-layer grouped bars of a metric at one step (the nearest recorded step when it was not recorded).

    >>> frame = pd.DataFrame({"step": [0, 0, 4, 4], "layer": ["w", "w", "w", "w"], "task": ["a", "b", "a", "b"],
    ...                       "other_task": None, "metric": "grad_norm", "value": [1.0, 2.0, 3.0, 4.0]})
    >>> figure = layer_bars(frame, 3, "grad_norm")
    >>> [trace.y.tolist() for trace in figure.data], figure.layout.title.text
    ([[3.0], [4.0]], 'gradient norm per layer at step 4')
    """
    rows = _rows(frame, metric, run)
    if rows.empty:
        raise ValueError(f"no {metric!r} rows in the table")
    steps = np.unique(rows["step"].to_numpy())
    nearest = int(steps[np.argmin(np.abs(steps - step))])
    rows = rows[rows["step"] == nearest]
    figure = go.Figure()
    if metric == "loss":
        figure.add_trace(go.Bar(x=rows["task"].astype(str).to_numpy(), y=rows["value"].to_numpy(), name="loss"))
        axis = "task"
    else:
        layers = _layer_order(rows)
        for name, part in _series(rows, metric).items():
            values = part.groupby("layer", observed=True)["value"].mean().reindex(layers)
            figure.add_trace(go.Bar(x=layers, y=values.to_numpy(), name=name))
        axis = "layer"
    figure.update_layout(
        title=_title(f"{_LABELS[metric]} per {axis} at step {nearest}", run),
        xaxis_title=axis,
        yaxis_title=_LABELS[metric],
        barmode="group",
        legend_title_text="task pair" if metric == "cosine" else "task",
    )
    return figure


def grad_norm_ratios(
    frame: pd.DataFrame,
    *,
    run: str | None = None,
    layers: list[str] | None = None,
    metric: str = "grad_norm",
) -> go.Figure:
    """Per shared layer, the ratio of the largest to the smallest task gradient norm over the steps.

    A ratio of 1 means the tasks pull on the layer equally hard; 1000 means one task's gradient is a
    thousand times the other's — what Adam on the summed loss then follows.  ``metric="update_norm"``
    shows the same ratio for the update contributions (MAO keeps it near 1).  Log scale.

    >>> frame = pd.DataFrame({"step": [0, 0, 1, 1], "layer": "w", "kind": "shared", "task": ["a", "b"] * 2,
    ...                       "other_task": None, "metric": "grad_norm", "value": [1.0, 10.0, 2.0, 1.0]})
    >>> grad_norm_ratios(frame).data[0].y.tolist()
    [10.0, 2.0]
    """
    if metric not in ("grad_norm", "update_norm"):
        raise ValueError(f"metric must be 'grad_norm' or 'update_norm', got {metric!r}")
    rows = _rows(frame, metric, run)
    if "kind" in rows.columns:
        rows = rows[rows["kind"] == "shared"]
    chosen = layers if layers is not None else _layer_order(rows)
    figure = go.Figure()
    for layer in chosen:
        part = rows[rows["layer"] == layer]
        if part.empty:
            raise ValueError(f"no shared layer {layer!r} with {metric!r} rows")
        by_step = part.groupby("step")["value"]
        low = by_step.min()
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(low > 0, by_step.max() / low.where(low > 0, 1.0), np.inf)
        figure.add_trace(go.Scatter(x=low.index.to_numpy(), y=ratio, name=layer, mode="lines"))
    figure.update_layout(
        title=_title(f"Largest / smallest task {_LABELS[metric]} per shared layer", run),
        xaxis_title="step",
        yaxis_title=f"max / min {_LABELS[metric]} (log)",
        yaxis_type="log",
        legend_title_text="layer",
    )
    return figure


def metric_lines(
    frame: pd.DataFrame,
    metric: str,
    layer: str | None = None,
    *,
    run: str | None = None,
    steps: tuple[int, int] | None = None,
) -> go.Figure:
    """One metric of one layer over the steps: a line per task (per task pair for cosines).

    ``layer`` is ignored for ``loss``; ``steps`` is an inclusive ``(first, last)`` range.

    >>> frame = pd.DataFrame({"step": [0, 1, 2], "layer": None, "task": "a", "other_task": None,
    ...                       "metric": "loss", "value": [3.0, 2.0, 1.0]})
    >>> metric_lines(frame, "loss", steps=(1, 2)).data[0].y.tolist()
    [2.0, 1.0]
    """
    rows = _rows(frame, metric, run)
    if metric != "loss":
        if layer is None:
            raise ValueError(f"metric {metric!r} is per layer: give a layer")
        rows = rows[rows["layer"] == layer]
    if steps is not None:
        rows = rows[(rows["step"] >= steps[0]) & (rows["step"] <= steps[1])]
    figure = go.Figure()
    for name, part in _series(rows, metric).items():
        part = part.sort_values("step")
        figure.add_trace(go.Scatter(x=part["step"].to_numpy(), y=part["value"].to_numpy(), name=name, mode="lines"))
    where = "" if metric == "loss" else f" of {layer}"
    figure.update_layout(
        title=_title(f"{_LABELS[metric]}{where}", run),
        xaxis_title="step",
        yaxis_title=_LABELS[metric],
        legend_title_text="task pair" if metric == "cosine" else "task",
    )
    return figure
