"""Plotly figures of landscape trajectories: parameter space, loss space, distance to the Pareto set."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from ..problems import PARETO_X1_RANGE, PARETO_X2, landscape_grid, landscape_losses
from ._figures import panel_line, scatter_trace
from ._landscape import arc_distance, pareto_stationary_arc

__all__ = ["distance_figure", "loss_space_figure", "parameter_space_figure", "rescaling_figure"]

_COLORS = qualitative.Plotly


def _start_label(part: pd.DataFrame) -> str:
    first = part.sort_values("step").iloc[0]
    return f"start ({first['x1']:g}, {first['x2']:g})"


_SHARED_AXES = {"shared_xaxes": True, "shared_yaxes": True, "horizontal_spacing": 0.04}
"""The panels of the figures drawn on one scale: both axes shared, the panels close together."""


def _grid(
    trajectories: pd.DataFrame, title: str, max_columns: int = 4, **options: object
) -> tuple[list[str], go.Figure, int]:
    """A panel per method of ``trajectories`` (``max_columns`` a row) under ``title``; ``options`` go to
    ``make_subplots``.  Returns the methods, the figure and its number of columns."""
    methods = [str(m) for m in pd.unique(trajectories["method"])]
    columns = min(max_columns, len(methods))
    rows = math.ceil(len(methods) / columns)
    figure = make_subplots(rows=rows, cols=columns, subplot_titles=methods, **options)
    figure.update_layout(title=title, height=330 * rows + 90, legend_title_text="run")  # width: the page's
    return methods, figure, columns


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
            panel_line(
                part[x],
                part[y],
                label,
                showlegend,
                line={"color": color, "width": 2},
                customdata=part["step"],
                hovertemplate=f"step %{{customdata}}<br>{x} %{{x:.3f}}<br>{y} %{{y:.3f}}<extra>{label}</extra>",
            ),
            **cell,
        )
        ends = part.iloc[[0, -1]]
        figure.add_trace(
            scatter_trace(
                ends[x],
                ends[y],
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
    methods, figure, columns = _grid(
        trajectories,
        title or f"Trajectories in parameter space over the mean loss (L1 scaled by {l1_scale:g})",
        vertical_spacing=0.08,
        **_SHARED_AXES,
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
            scatter_trace(
                list(PARETO_X1_RANGE),
                [PARETO_X2, PARETO_X2],
                "Pareto segment (papers)",
                line={"color": "black", "width": 4},
                legendgroup="pareto",
                showlegend=i == 0,
            ),
            **cell,
        )
        figure.add_trace(
            scatter_trace(
                arc["x1"],
                arc["x2"],
                "Pareto-stationary arc (exact)",
                line={"color": "crimson", "width": 2, "dash": "dot"},
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
    methods, figure, columns = _grid(
        trajectories,
        title or "Trajectories in loss space (L1 unscaled) and the Pareto front",
        vertical_spacing=0.08,
        **_SHARED_AXES,
    )
    arc = pareto_stationary_arc(141)
    import torch

    with torch.no_grad():
        front = landscape_losses(torch.from_numpy(arc[["x1", "x2"]].to_numpy(copy=True))).numpy()
    for i, method in enumerate(methods):
        cell = _cell(i, columns)
        figure.add_trace(
            scatter_trace(
                front[:, 0],
                front[:, 1],
                "Pareto front",
                line={"color": "black", "width": 4},
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

    methods, figure, columns = _grid(
        trajectories, title or "Distance to the Pareto set over the steps", vertical_spacing=0.1, **_SHARED_AXES
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
                panel_line(
                    part["step"], part["distance"], label, i == 0, line={"color": _COLORS[int(start) % len(_COLORS)]}
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
    scales = list(pd.unique(trajectories["l1_scale"]))
    methods, figure, columns = _grid(
        trajectories,
        title or "Does rescaling L1 change the trajectory? (solid vs dashed)",
        shared_yaxes=True,
        horizontal_spacing=0.05,
    )
    dashes = ["solid", "dash", "dot", "dashdot"]
    arc = pareto_stationary_arc(57)
    for i, method in enumerate(methods):
        cell = _cell(i, columns)
        figure.add_trace(
            scatter_trace(
                arc["x1"],
                arc["x2"],
                "Pareto set",
                line={"color": "black", "width": 4},
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
                    panel_line(
                        part["x1"],
                        part["x2"],
                        name,
                        i == 0 and int(start) == int(rows["start"].min()),
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
