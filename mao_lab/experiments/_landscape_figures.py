"""Plotly figures of landscape trajectories: parameter space, loss space, distance to the Pareto set."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from ..problems import PARETO_X1_RANGE, PARETO_X2, landscape_grid, landscape_losses
from ._landscape import arc_distance, pareto_stationary_arc

__all__ = ["distance_figure", "loss_space_figure", "parameter_space_figure", "rescaling_figure"]

_COLORS = qualitative.Plotly


def _start_label(part: pd.DataFrame) -> str:
    first = part.sort_values("step").iloc[0]
    return f"start ({first['x1']:g}, {first['x2']:g})"


def _grid(methods: list[str], title: str, max_columns: int = 4, **options: object) -> tuple[go.Figure, int, int]:
    columns = min(max_columns, len(methods))
    rows = math.ceil(len(methods) / columns)
    figure = make_subplots(rows=rows, cols=columns, subplot_titles=methods, **options)
    figure.update_layout(title=title, height=330 * rows + 90, legend_title_text="run")  # width: the page's
    return figure, rows, columns


def _cell(index: int, columns: int) -> dict[str, int]:
    return {"row": index // columns + 1, "col": index % columns + 1}


def _add_runs(figure: go.Figure, rows: pd.DataFrame, x: str, y: str, showlegend: bool, cell: dict[str, int]) -> None:
    """Each start's run in ``rows``, column ``x`` against ``y``: a line with markers at its start
    (circle) and end (cross), coloured by start.  Parameter and loss space plot runs the same way."""
    for start, part in rows.groupby("start", sort=True):
        part = part.sort_values("step")
        color = _COLORS[int(start) % len(_COLORS)]
        label = _start_label(part)
        figure.add_trace(
            go.Scatter(
                x=part[x],
                y=part[y],
                mode="lines",
                line={"color": color, "width": 2},
                name=label,
                legendgroup=label,
                showlegend=showlegend,
                customdata=part["step"],
                hovertemplate=f"step %{{customdata}}<br>{x} %{{x:.3f}}<br>{y} %{{y:.3f}}<extra>{label}</extra>",
            ),
            **cell,
        )
        ends = part.iloc[[0, -1]]
        figure.add_trace(
            go.Scatter(
                x=ends[x],
                y=ends[y],
                mode="markers",
                marker={"color": color, "size": [9, 11], "symbol": ["circle", "x"]},
                legendgroup=label,
                showlegend=False,
                hoverinfo="skip",
            ),
            **cell,
        )


def parameter_space_figure(
    trajectories: pd.DataFrame, l1_scale: float = 1.0, *, lim: float = 10.0, n: int = 100, title: str | None = None
) -> go.Figure:
    """Per method, contours of the mean loss ``(l1_scale * L1 + L2) / 2`` with the Pareto set and the
    trajectories from every start (circle: start, cross: end)."""
    methods = [str(m) for m in pd.unique(trajectories["method"])]
    figure, _, columns = _grid(
        methods,
        title or f"Trajectories in parameter space over the mean loss (L1 scaled by {l1_scale:g})",
        shared_xaxes=True,
        shared_yaxes=True,
        horizontal_spacing=0.04,
        vertical_spacing=0.08,
    )
    grid_x1, grid_x2, loss1, loss2 = landscape_grid(lim=lim, n=n, l1_scale=l1_scale)
    mean = (loss1 + loss2) / 2
    arc = pareto_stationary_arc(57)
    for i, method in enumerate(methods):
        cell = _cell(i, columns)
        figure.add_trace(
            go.Contour(
                x=grid_x1[0],
                y=grid_x2[:, 0],
                z=mean,
                colorscale="Greys",
                reversescale=True,
                ncontours=25,
                showscale=False,
                opacity=0.55,
                hoverinfo="skip",
                contours={"showlines": False},
                name="mean loss",
                showlegend=False,
            ),
            **cell,
        )
        figure.add_trace(
            go.Scatter(
                x=list(PARETO_X1_RANGE),
                y=[PARETO_X2, PARETO_X2],
                mode="lines",
                line={"color": "black", "width": 4},
                name="Pareto segment (papers)",
                legendgroup="pareto",
                showlegend=i == 0,
            ),
            **cell,
        )
        figure.add_trace(
            go.Scatter(
                x=arc["x1"],
                y=arc["x2"],
                mode="lines",
                line={"color": "crimson", "width": 2, "dash": "dot"},
                name="Pareto-stationary arc (exact)",
                legendgroup="arc",
                showlegend=i == 0,
            ),
            **cell,
        )
        _add_runs(figure, trajectories[trajectories["method"] == method], "x1", "x2", i == 0, cell)
    figure.update_xaxes(range=[-lim, lim], title_text="x1")
    figure.update_yaxes(range=[-lim, lim], title_text="x2")
    return figure


def loss_space_figure(trajectories: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Per method, the runs in loss space (unscaled ``L1`` against ``L2``) with the Pareto front."""
    methods = [str(m) for m in pd.unique(trajectories["method"])]
    figure, _, columns = _grid(
        methods,
        title or "Trajectories in loss space (L1 unscaled) and the Pareto front",
        shared_xaxes=True,
        shared_yaxes=True,
        horizontal_spacing=0.04,
        vertical_spacing=0.08,
    )
    arc = pareto_stationary_arc(141)
    import torch

    with torch.no_grad():
        front = landscape_losses(torch.from_numpy(arc[["x1", "x2"]].to_numpy(copy=True))).numpy()
    for i, method in enumerate(methods):
        cell = _cell(i, columns)
        figure.add_trace(
            go.Scatter(
                x=front[:, 0],
                y=front[:, 1],
                mode="lines",
                line={"color": "black", "width": 4},
                name="Pareto front",
                legendgroup="front",
                showlegend=i == 0,
            ),
            **cell,
        )
        _add_runs(figure, trajectories[trajectories["method"] == method], "L1", "L2", i == 0, cell)
    figure.update_xaxes(title_text="L1 (unscaled)")
    figure.update_yaxes(title_text="L2")
    return figure


def distance_figure(trajectories: pd.DataFrame, tol: float | None = None, *, title: str | None = None) -> go.Figure:
    """Per method, each run's distance to the Pareto set (the nearer of segment and arc) over the steps; log scale."""
    from ..problems import pareto_distance

    methods = [str(m) for m in pd.unique(trajectories["method"])]
    figure, _, columns = _grid(
        methods,
        title or "Distance to the Pareto set over the steps",
        shared_xaxes=True,
        shared_yaxes=True,
        horizontal_spacing=0.04,
        vertical_spacing=0.1,
    )
    points = trajectories[["x1", "x2"]].to_numpy(copy=True)
    distance = np.minimum(pareto_distance(points).numpy(), arc_distance(points))
    frame = trajectories.assign(distance=np.maximum(distance, 1e-6))
    for i, method in enumerate(methods):
        cell = _cell(i, columns)
        for start, part in frame[frame["method"] == method].groupby("start", sort=True):
            part = part.sort_values("step")
            label = _start_label(part)
            figure.add_trace(
                go.Scatter(
                    x=part["step"],
                    y=part["distance"],
                    mode="lines",
                    name=label,
                    legendgroup=label,
                    showlegend=i == 0,
                    line={"color": _COLORS[int(start) % len(_COLORS)]},
                ),
                **cell,
            )
        if tol:
            figure.add_hline(y=tol, line={"dash": "dash", "color": "grey"}, **cell)
    figure.update_yaxes(type="log", title_text="distance to Pareto set")
    figure.update_xaxes(title_text="step")
    return figure


def rescaling_figure(trajectories: pd.DataFrame, *, lim: float = 10.0, title: str | None = None) -> go.Figure:
    """Per method, the trajectories with task 1's loss at each scale (solid: first scale, dashed: second)."""
    methods = [str(m) for m in pd.unique(trajectories["method"])]
    scales = list(pd.unique(trajectories["l1_scale"]))
    figure, _, columns = _grid(
        methods,
        title or "Does rescaling L1 change the trajectory? (solid vs dashed)",
        shared_yaxes=True,
        horizontal_spacing=0.05,
    )
    dashes = ["solid", "dash", "dot", "dashdot"]
    arc = pareto_stationary_arc(57)
    for i, method in enumerate(methods):
        cell = _cell(i, columns)
        figure.add_trace(
            go.Scatter(
                x=arc["x1"],
                y=arc["x2"],
                mode="lines",
                line={"color": "black", "width": 4},
                name="Pareto set",
                legendgroup="pareto",
                showlegend=i == 0,
            ),
            **cell,
        )
        for j, scale in enumerate(scales):
            rows = trajectories[(trajectories["method"] == method) & (trajectories["l1_scale"] == scale)]
            for start, part in rows.groupby("start", sort=True):
                part = part.sort_values("step")
                name = f"L1 x {scale:g}"
                figure.add_trace(
                    go.Scatter(
                        x=part["x1"],
                        y=part["x2"],
                        mode="lines",
                        name=name,
                        legendgroup=name,
                        showlegend=i == 0 and int(start) == int(rows["start"].min()),
                        line={
                            "color": _COLORS[int(start) % len(_COLORS)],
                            "dash": dashes[j % len(dashes)],
                            "width": 3 - j,
                        },
                    ),
                    **cell,
                )
    figure.update_xaxes(range=[-lim, lim], title_text="x1")
    figure.update_yaxes(range=[-lim, lim], title_text="x2")
    return figure
