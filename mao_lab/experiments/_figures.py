"""Plotly figures of the shared analyses (:mod:`mao_lab.experiments`): ownership, magnitudes, imbalance, Delta_m.

Methods are shown by their readable names (:func:`~mao_lab.experiments.method_label`) and keep one colour
across a figure.  Figures with a line per run or method give each one its own colour and dash
(:func:`line_styles`), so that no two lines look alike however many runs are open.  Titles are written to fit
a figure as wide as JupyterLab's notebook (long ones on two lines).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from .._validate import Choice, require
from ._analysis import _final, _with_run, balance_summary, imbalance_over_steps, module_level
from ._labels import SINGLE_TASK, method_label

__all__ = [
    "delta_m_figure",
    "imbalance_by_layer_figure",
    "imbalance_by_method_figure",
    "imbalance_over_steps_figure",
    "magnitude_figure",
    "ownership_figure",
    "task_metric_figure",
]


def _label(run: str, labels: Mapping[str, str] | None) -> str:
    return method_label(run) if labels is None else labels.get(run, run)


def scatter_trace(x: Any, y: Any, name: str | None = None, *, mode: str = "lines", **style: Any) -> go.Scatter:
    """A trace through the points ``(x, y)``, drawn as lines unless ``mode`` says otherwise and named ``name`` in the
    legend; ``style`` (``line``, ``marker``, ``legendgroup``, ``showlegend``, ...) goes to
    :class:`plotly.graph_objects.Scatter` as it is.  The line and marker traces of the lab's figures are these.

    >>> line = scatter_trace([0, 1], [2, 3], "a", line={"color": "red"})
    >>> line.mode, line.name, line.line.color
    ('lines', 'a', 'red')
    """
    return go.Scatter(x=x, y=y, name=name, mode=mode, **style)


def panel_line(x: Any, y: Any, name: str, first_panel: bool, **style: Any) -> go.Scatter:
    """One of the lines named ``name`` that a figure of panels draws in every panel: all of them one legend group,
    listed once (by the first panel's line), so that one click on the legend hides them in every panel.

    >>> [(line.legendgroup, line.showlegend) for line in (panel_line([0], [1], "a", i == 0) for i in range(2))]
    [('a', True), ('a', False)]
    """
    return scatter_trace(x, y, name, legendgroup=name, showlegend=first_panel, **style)


PALETTE: list[str] = qualitative.Plotly + qualitative.D3
"""Twenty distinct colours: plotly's ten, then D3's ten."""

DASHES: tuple[str, ...] = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
"""Line dashes, combined with :data:`PALETTE` once its colours are used up."""


def line_styles(count: int) -> list[dict[str, str]]:
    """``count`` line styles (``color`` and ``dash``), no two alike for up to ``len(PALETTE) * len(DASHES)`` lines.

    The first twenty lines get twenty colours, solid; then the colours come round again, dashed, and so on.

    >>> [(style["color"], style["dash"]) for style in line_styles(22)[19:]]
    [('#17BECF', 'solid'), ('#636EFA', 'dash'), ('#EF553B', 'dash')]
    """
    return [
        {"color": PALETTE[i % len(PALETTE)], "dash": DASHES[(i // len(PALETTE)) % len(DASHES)]} for i in range(count)
    ]


def interval_whisker(rows: pd.DataFrame | pd.Series) -> dict[str, Any]:
    """Plotly's ``error_x`` or ``error_y`` for intervals: from each row's ``estimate`` up to its ``high`` and down
    to its ``low`` (``rows`` a table, or one row).

    >>> whisker = interval_whisker(pd.Series({"estimate": 2.0, "low": 1.5, "high": 4.0}))
    >>> whisker["array"].tolist(), whisker["arrayminus"].tolist()
    ([2.0], [0.5])
    """
    return {
        "type": "data",
        "symmetric": False,
        "array": np.atleast_1d(np.asarray(rows["high"] - rows["estimate"], dtype=float)),
        "arrayminus": np.atleast_1d(np.asarray(rows["estimate"] - rows["low"], dtype=float)),
    }


def band(
    x: Sequence[float], low: Sequence[float], high: Sequence[float], *, color: str, opacity: float, group: str
) -> go.Scatter:
    """A filled band from ``low`` to ``high`` over ``x``, without a legend entry or hover, in legend group ``group``
    (so that it hides with its line)."""
    x, low, high = (np.asarray(values) for values in (x, low, high))
    return go.Scatter(
        x=np.concatenate([x, x[::-1]]),
        y=np.concatenate([high, low[::-1]]),
        fill="toself",
        fillcolor=color,
        opacity=opacity,
        line={"width": 0},
        hoverinfo="skip",
        showlegend=False,
        legendgroup=group,
    )


def _colors(methods: Sequence[str]) -> dict[str, str]:
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(methods)}


# A line at 0 (a balanced run, MAO's) would lie on the x axis and vanish under it: the range starts a little
# below 0, without plotly's white zero line, and the lines are thick enough to see beside each other.
IMBALANCE_RANGE = [-0.05, 1.05]
LINE_WIDTH = 3


def _lowest_on_top(means: Sequence[float]) -> list[int]:
    """The drawing order: the lines with the highest mean first, so that lines near 0 are drawn last, on top."""
    return sorted(range(len(means)), key=lambda i: -means[i])


def wrap_title(text: str, width: int) -> str:
    """``text`` on lines of at most ``width`` characters (``<br>`` between them), broken after `` /_-``.

    A single word longer than ``width`` keeps its own line.

    >>> wrap_title("uncertainty weighting", 16)
    'uncertainty<br>weighting'
    >>> wrap_title("02_imbalanced_regression/sum", 16)
    '02_imbalanced_<br>regression/sum'
    """
    lines: list[str] = []
    for token in re.split(r"(?<=[ /_-])", text):
        if lines and len(lines[-1]) + len(token.rstrip()) <= width:
            lines[-1] += token
        else:
            lines.append(token)
    return "<br>".join(line.rstrip() for line in lines)


def _run_panels(runs: list[str], labels: Mapping[str, str] | None) -> tuple[go.Figure, int, int]:
    """One panel per run (five to a row, y axes shared), titled by the runs' readable names.

    The titles are wrapped to their panel's width at JupyterLab's (about 16 characters of 12 px for 5 panels).
    """
    columns = min(len(runs), 5)
    rows = math.ceil(len(runs) / columns)
    titles = [wrap_title(_label(r, labels), 80 // columns) for r in runs]
    lines = max(title.count("<br>") + 1 for title in titles)
    figure = make_subplots(
        rows=rows,
        cols=columns,
        shared_yaxes=True,
        subplot_titles=titles,
        horizontal_spacing=0.03,
        vertical_spacing=0.12 + 0.04 * lines,
    )
    figure.update_annotations(font_size=12)
    figure.update_layout(margin={"t": 80 + 16 * lines})
    return figure, rows, columns


def ownership_figure(
    ownership: pd.DataFrame, *, labels: Mapping[str, str] | None = None, title: str | None = None
) -> go.Figure:
    """Stacked bars: for each run (a panel) and shared layer (a bar), each task's share of the update.

    A bar filled by one colour is a layer that one task trains alone; equal slices are a balanced layer.
    """
    runs = [str(r) for r in pd.unique(ownership["run"])]
    tasks = [str(t) for t in pd.unique(ownership["task"])]
    figure, rows, columns = _run_panels(runs, labels)
    colors = PALETTE
    for i, run in enumerate(runs):
        part = ownership[ownership["run"] == run]
        layers = list(pd.unique(part["layer"]))
        for k, task in enumerate(tasks):
            values = part[part["task"] == task].set_index("layer")["share"].reindex(layers)
            figure.add_trace(
                go.Bar(
                    x=layers,
                    y=values.to_numpy(),
                    name=task,
                    legendgroup=task,
                    showlegend=i == 0,
                    marker_color=colors[k % len(colors)],
                    hovertemplate="%{x}<br>" + task + ": %{y:.3f}<extra>" + _label(run, labels) + "</extra>",
                ),
                row=i // columns + 1,
                col=i % columns + 1,
            )
    figure.update_layout(
        barmode="stack",
        title=title or "Who trains each shared layer: the tasks' shares of its update",
        legend_title_text="task",
        height=360 * rows + 60,
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
    require("metric", metric, Choice(("grad_norm", "update_norm", "update_share")))
    frame = _with_run(frame)
    if layer not in set(frame["layer"].astype(str)):
        frame = module_level(frame)
        if layer not in set(frame["layer"].astype(str)):
            raise ValueError(f"no layer or module {layer!r} in the table")
    rows_all = frame[(frame["metric"] == metric) & (frame["layer"].astype(str) == layer)]
    runs = [str(r) for r in pd.unique(frame["run"])]
    figure, rows, columns = _run_panels(runs, labels)
    colors = PALETTE
    tasks = [str(t) for t in pd.unique(rows_all["task"].dropna())]
    for i, run in enumerate(runs):
        part = rows_all[rows_all["run"] == run]
        for k, task in enumerate(tasks):
            series = part[part["task"] == task].sort_values("step")
            figure.add_trace(
                panel_line(series["step"], series["value"], task, i == 0, line={"color": colors[k % len(colors)]}),
                row=i // columns + 1,
                col=i % columns + 1,
            )
    names = {"grad_norm": "gradient norm", "update_norm": "update norm", "update_share": "share of the update"}
    figure.update_layout(
        title=title or f"Per-task {names[metric]} of {layer} over the steps",
        legend_title_text="task",
        height=330 * rows + 60,
    )
    figure.update_xaxes(title_text="step")
    figure.update_yaxes(type="log" if metric != "update_share" else "linear")  # every panel: the axes are shared
    figure.update_yaxes(title_text=names[metric], col=1)
    return figure


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
        # Two short lines: one long line per panel runs into its neighbour's at JupyterLab's width.
        titles.append(f"{task}: {row['metric']}<br>({'higher' if row['higher_is_better'] else 'lower'} is better)")
    figure = make_subplots(rows=1, cols=len(tasks), subplot_titles=titles, horizontal_spacing=0.06)
    figure.update_annotations(font_size=13)
    for i, task in enumerate(tasks):
        part = final[final["task"] == task]
        for method in methods:
            values = part[part["method"] == method]["value"]
            figure.add_trace(
                go.Bar(
                    x=[method_label(method)],
                    y=[values.mean()],
                    error_y={"type": "data", "array": [values.std() if len(values) > 1 else 0.0]},
                    marker_color=colors[method],
                    name=method_label(method),
                    legendgroup=method,
                    showlegend=i == 0,
                    hovertemplate=(
                        f"{method_label(method)}<br>{task}: %{{y:.4f}} (mean of {len(values)})<extra></extra>"
                    ),
                ),
                row=1,
                col=i + 1,
            )
            figure.add_trace(
                scatter_trace(
                    [method_label(method)] * len(values),
                    values.to_numpy(),
                    "seeds",
                    mode="markers",
                    marker={"color": "black", "size": 5},
                    legendgroup="seeds",
                    showlegend=i == 0 and method == methods[0],
                    hovertemplate=f"{method_label(method)}<br>one seed: %{{y:.4f}}<extra></extra>",
                ),
                row=1,
                col=i + 1,
            )
        base = part[part["method"] == SINGLE_TASK]["value"]
        if len(base):
            figure.add_hline(
                y=float(base.mean()),
                line_dash="dash",
                line_color="gray",
                row=1,
                col=i + 1,
                annotation_text="single task",
                annotation_position="top left",
            )
    figure.update_layout(
        title=title
        or "Test metric of every task, by method<br><sup>bar: mean over seeds; whisker: std; dots: seeds</sup>",
        barmode="overlay",
        height=480,
        margin={"t": 120},
        legend_title_text="method",
        legend={"orientation": "h", "yanchor": "top", "y": -0.04},
    )  # below: the panels get the width
    figure.update_xaxes(showticklabels=False)
    return figure


def delta_m_figure(table: pd.DataFrame, *, setting: str | None = None, title: str | None = None) -> go.Figure:
    """Each method's Delta_m% against the single-task baselines, as a bar with a whisker (lower is better).

    ``table`` is either one row per run (:func:`delta_m_table`: ``method``, ``delta_m``), drawn as the mean over
    seeds with a std whisker and each seed as a dot, or one row per method with an interval already computed
    (the study's ``delta_m_intervals`` and ``methods.csv``: ``variant``, ``estimate``, ``low``, ``high``),
    drawn as the estimate with its interval.  ``setting`` keeps the rows of one setting of the study.
    Below 0 (the dashed line) a method beats the single-task baselines on average.
    """
    if setting is not None:
        table = table[table["setting"] == setting]
    per_seed = "delta_m" in table.columns
    bars = _seed_spread(table) if per_seed else table.rename(columns={"variant": "method"}).sort_values("estimate")
    methods = [str(m) for m in bars["method"]]
    colors = _colors(methods)
    figure = go.Figure()
    for method, (_, row) in zip(methods, bars.iterrows()):
        label = method_label(method)
        figure.add_trace(
            go.Bar(
                x=[label],
                y=[row["estimate"]],
                marker_color=colors[method],
                name=label,
                error_y=interval_whisker(row),
                hovertemplate=f"{label}<br>Δm %{{y:.2f}}% (mean of {row['n']})<extra></extra>",
            )
        )
        if per_seed:
            values = table[table["method"] == method]["delta_m"]
            figure.add_trace(
                scatter_trace(
                    [label] * len(values),
                    values.to_numpy(),
                    mode="markers",
                    showlegend=False,
                    marker={"color": "black", "size": 6},
                    hovertemplate="one seed: %{y:.2f}%<extra></extra>",
                )
            )
    figure.add_hline(y=0.0, line_dash="dash", line_color="gray")
    whisker = "whisker: std over seeds; dots: seeds" if per_seed else "whisker: 95 % interval over seeds"
    head = f"{setting}: " if setting is not None else ""
    figure.update_layout(
        title=title or f"{head}Δm% against the single-task baselines<br><sup>mean; {whisker}; lower is better</sup>",
        yaxis_title="Δm (%)",
        showlegend=False,
        height=420,
        margin={"t": 100},
    )
    return figure


def _seed_spread(per_run: pd.DataFrame) -> pd.DataFrame:
    """Per method (in order of appearance): the mean ``delta_m`` over seeds and mean ± std (0 for one seed)."""
    rows = []
    for method in pd.unique(per_run["method"]):
        values = per_run[per_run["method"] == method]["delta_m"]
        spread = float(values.std()) if len(values) > 1 else 0.0
        mean = float(values.mean())
        rows.append({"method": method, "estimate": mean, "low": mean - spread, "high": mean + spread, "n": len(values)})
    return pd.DataFrame(rows, columns=["method", "estimate", "low", "high", "n"])


def imbalance_by_method_figure(table: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Lines of :func:`imbalance_by_method`: each method's mean imbalance over the steps, with a ±std band."""
    methods = [str(m) for m in pd.unique(table["method"])]
    styles = dict(zip(methods, line_styles(len(methods))))
    parts = {m: table[table["method"] == m].sort_values("step") for m in methods}
    figure = go.Figure()
    for i in _lowest_on_top([float(parts[m]["mean"].mean()) for m in methods]):
        method = methods[i]
        part = parts[method]
        spread = part["std"].fillna(0.0).to_numpy()
        steps, mean = part["step"].to_numpy(), part["mean"].to_numpy()
        figure.add_trace(
            band(steps, mean - spread, mean + spread, color=styles[method]["color"], opacity=0.2, group=method)
        )
        figure.add_trace(
            scatter_trace(
                steps,
                mean,
                method_label(method),
                legendgroup=method,
                legendrank=i + 1,
                line={**styles[method], "width": LINE_WIDTH},
            )
        )
    return _imbalance_layout(figure, title, "mean over the layers; band: ±std over seeds", "method")


def imbalance_over_steps_figure(frame: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Lines: each run's imbalance index (mean over shared layers) over the training steps."""
    table = imbalance_over_steps(frame)
    parts = [(str(run), part) for run, part in table.groupby("run", sort=False)]
    styles = line_styles(len(parts))
    figure = go.Figure()
    for i in _lowest_on_top([float(part["imbalance"].mean()) for _, part in parts]):
        run, part = parts[i]
        figure.add_trace(
            scatter_trace(
                part["step"], part["imbalance"], run, legendrank=i + 1, line={**styles[i], "width": LINE_WIDTH}
            )
        )
    return _imbalance_layout(figure, title, "mean over the shared layers", "run")


def _imbalance_layout(figure: go.Figure, title: str | None, averaged: str, legend: str) -> go.Figure:
    """The layout both imbalance-over-steps figures share: the axis range keeps a line at 0 off the x axis."""
    figure.update_layout(
        title=title
        or (
            "Across steps: imbalance of the shared layers' updates"
            f"<br><sup>{averaged}; 0 balanced, 1 one task owns them</sup>"
        ),
        xaxis_title="step",
        yaxis_title="imbalance index",
        yaxis={"range": IMBALANCE_RANGE, "zeroline": False},
        legend_title_text=legend,
        margin={"t": 100},
    )
    return figure


def imbalance_by_layer_figure(frame: pd.DataFrame, *, tail: float = 0.5, title: str | None = None) -> go.Figure:
    """Heatmap: runs x shared layers, coloured by the mean imbalance index over the last ``tail`` of the steps."""
    summary = balance_summary(frame, tail=tail)
    summary = summary[summary["layer"] != "(all shared)"]
    runs = list(pd.unique(summary["run"]))
    layers = list(pd.unique(summary["layer"]))
    grid = summary.pivot(index="run", columns="layer", values="imbalance").reindex(index=runs, columns=layers)
    owner = summary.pivot(index="run", columns="layer", values="dominant_task").reindex(index=runs, columns=layers)
    share = summary.pivot(index="run", columns="layer", values="dominant_share").reindex(index=runs, columns=layers)
    text = [
        [f"{o} {s:.2f}" if isinstance(o, str) else "" for o, s in zip(orow, srow)]
        for orow, srow in zip(owner.to_numpy(), share.to_numpy())
    ]
    figure = go.Figure(
        go.Heatmap(
            z=grid.to_numpy(),
            x=layers,
            y=runs,
            zmin=0,
            zmax=1,
            colorscale="Viridis",
            text=text,
            texttemplate="%{text}",
            colorbar={"title": {"text": "imbalance"}},
            hovertemplate="%{y}<br>%{x}<br>imbalance %{z:.3f}<br>largest share: %{text}<extra></extra>",
        )
    )
    figure.update_layout(
        title=title
        or "Across layers: mean imbalance per shared layer<br><sup>text: the task with the largest share</sup>",
        xaxis_title="shared layer",
        yaxis_title="run",
        yaxis={"autorange": "reversed"},
        height=max(300, 60 * len(runs) + 160),
    )
    return figure
