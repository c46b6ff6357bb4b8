"""The figures and widgets as a workshop sees them: titles that fit JupyterLab's width, lines that stay visible
and distinct however many runs are open, run names that say where a run came from, explorers that agree.

Text widths are estimated independently of plotly: 0.6 x the font size per character (Open Sans and Arial
average about 0.55), against a figure 900 px wide — JupyterLab's notebook at a 1280 px screen with the file
browser open — with plotly's default margins (80 px left and right) and the legend's width taken off.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import pytest

from mao_lab.experiments import (
    HeatmapExplorer,
    LandscapePlayground,
    compare_methods,
    delta_m_figure,
    imbalance_by_method,
    imbalance_by_method_figure,
    imbalance_over_steps_figure,
    load_balance_runs,
    module_level,
    origin_names,
    ownership_figure,
    task_metric_figure,
)
from mao_lab.recorder import BalanceExplorer

WIDTH = 900
CHAR = 0.6  # of the font size


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _lines(text: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", line) for line in re.split(r"<br\s*/?>", text or "")]


def _text_width(text: str, size: float) -> float:
    return max(len(line) for line in _lines(text)) * CHAR * size


def _plot_area(figure: go.Figure) -> tuple[float, float]:
    """Width and height in px of the plotting area of ``figure`` drawn 900 px wide."""
    layout = figure.layout
    margin = {side: getattr(layout.margin, side) for side in "lrtb"}
    margin = {side: 80 if value is None else value for side, value in margin.items()}
    margin["t"] = 100 if layout.margin.t is None else layout.margin.t
    names = [trace.name for trace in figure.data if trace.name and trace.showlegend is not False]
    beside = layout.showlegend is not False and layout.legend.orientation != "h"  # a horizontal legend goes below
    legend = (max(map(len, names)) * CHAR * 12 + 60) if names and beside else 0
    height = layout.height or 450
    return WIDTH - margin["l"] - margin["r"] - legend, height - margin["t"] - margin["b"]


def _assert_fits(figure: go.Figure) -> None:
    """Titles that fit: the figure's title in its width, each subplot title in its panel, no axis title longer
    than its axis."""
    width, height = _plot_area(figure)
    title = figure.layout.title.text or ""
    assert _text_width(title, 17) <= WIDTH - 40, f"title too long for {WIDTH} px: {title!r}"
    axes = [figure.layout[name] for name in figure.layout.to_plotly_json() if name.startswith("xaxis")]
    domains = sorted(tuple(axis.domain or (0.0, 1.0)) for axis in axes) or [(0.0, 1.0)]
    for annotation in figure.layout.annotations:
        if (
            annotation.yref != "paper"
            or annotation.y is None
            or annotation.y < 1.0 - 1e-9
            and annotation.yanchor != "bottom"
        ):
            continue  # not a subplot title
        panel = min((d for d in domains if d[0] - 1e-9 <= annotation.x <= d[1] + 1e-9), key=lambda d: d[1] - d[0])
        size = annotation.font.size or 16
        assert _text_width(annotation.text, size) <= (panel[1] - panel[0]) * width + 10, (
            f"subplot title {annotation.text!r} is wider than its panel ({(panel[1] - panel[0]) * width:.0f} px)"
        )
    for name in figure.layout.to_plotly_json():
        if name.startswith("yaxis") and figure.layout[name].title.text:
            axis = figure.layout[name]
            low, high = axis.domain or (0.0, 1.0)
            span = (high - low) * height
            assert _text_width(axis.title.text, 14) <= span, (
                f"{name} title {axis.title.text!r} is longer than its axis ({span:.0f} px)"
            )


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[pd.DataFrame, Path]:
    root = tmp_path_factory.mktemp("runs")
    for seed in (0, 1):
        compare_methods(
            ["sum", "mao"],
            num_tasks=3,
            num_samples=400,
            steps=16,
            every=2,
            seed=seed,
            run_root=root / f"seed{seed}" / "runs",
            progress=False,
        )
    metrics, _ = load_balance_runs([root])  # runs "seed0/sum", ...: named "<method>-seed<k>" as 03 names them
    metrics["run"] = metrics["run"].astype(str).str.replace(r"seed(\d)/(\w+)", r"\2-seed\1", regex=True)
    return metrics, root


def _multimnist_like_scores() -> pd.DataFrame:
    tasks = {
        "left": ("accuracy", True),
        "right": ("accuracy", True),
        "sum": ("mae", False),
        "reconstruct": ("mse", False),
    }
    rows = [
        {
            "method": method,
            "seed": seed,
            "step": 10,
            "task": task,
            "metric": metric,
            "value": 0.5 + 0.1 * seed,
            "higher_is_better": higher,
            "seconds": 1.0,
        }
        for method in ("sum", "uw", "mgda", "io", "mao", "single_task")
        for seed in (0, 1)
        for task, (metric, higher) in tasks.items()
    ]
    return pd.DataFrame(rows)


def test_the_per_task_figure_and_the_across_steps_figure_fit_jupyterlabs_width(recorded) -> None:
    metrics, _ = recorded
    _assert_fits(task_metric_figure(_multimnist_like_scores()))
    view = module_level(metrics)
    _assert_fits(imbalance_by_method_figure(imbalance_by_method(view)))
    _assert_fits(imbalance_over_steps_figure(view))


def test_one_delta_m_figure_draws_runs_and_intervals() -> None:
    runs = pd.DataFrame(
        {"method": ["sum", "sum", "sum", "mao"], "seed": [0, 1, 2, 0], "delta_m": [1.0, 2.0, 6.0, -4.0]}
    )
    figure = delta_m_figure(runs)
    _assert_fits(figure)
    bars = [trace for trace in figure.data if trace.type == "bar"]
    assert [bar.x[0] for bar in bars] == ["Adam on the sum", "MAO"]
    assert bars[0].y[0] == pytest.approx(3.0) and bars[1].y[0] == pytest.approx(-4.0)
    std = ((1 - 3) ** 2 + (2 - 3) ** 2 + (6 - 3) ** 2) ** 0.5 / 2**0.5  # the sample std, by hand
    assert bars[0].error_y.array[0] == pytest.approx(std) and bars[0].error_y.arrayminus[0] == pytest.approx(std)
    assert bars[1].error_y.array[0] == 0.0  # one seed: no whisker
    assert [list(t.y) for t in figure.data if t.type == "scatter"] == [[1.0, 2.0, 6.0], [-4.0]]
    intervals = pd.DataFrame(
        {
            "setting": ["mm4", "mm4", "reg2"],
            "variant": ["sum", "mao", "sum"],
            "estimate": [2.0, -1.0, 9.0],
            "low": [1.5, -3.0, 8.0],
            "high": [4.0, 0.5, 10.0],
            "n": [5, 5, 5],
        }
    )
    figure = delta_m_figure(intervals, setting="mm4")
    _assert_fits(figure)
    assert all(trace.type == "bar" for trace in figure.data)  # no seeds to draw
    assert [t.x[0] for t in figure.data] == ["MAO", "Adam on the sum"]  # lowest first
    assert [(t.y[0], t.error_y.arrayminus[0], t.error_y.array[0]) for t in figure.data] == [
        (-1.0, 2.0, 1.5),
        (2.0, 0.5, 2.0),
    ]
    assert figure.layout.title.text.startswith("mm4: ")


def test_ownership_panels_titled_by_long_run_names_fit() -> None:
    runs = [
        "02_imbalanced_regression/uw",
        "02_imbalanced_regression/gradnorm",
        "uncertainty weighting",
        "03_multimnist/mao-seed0",
        "io",
    ]
    ownership = pd.DataFrame(
        [
            {"run": run, "layer": layer, "task": task, "share": 0.5}
            for run in runs
            for layer in ("trunk.0", "trunk.2")
            for task in ("task0", "task1")
        ]
    )
    _assert_fits(ownership_figure(ownership, labels={}))


def _line_traces(figure: go.Figure) -> list[go.Scatter]:
    return [trace for trace in figure.data if trace.mode == "lines" and trace.showlegend is not False]


def test_a_balanced_run_is_drawn_off_the_x_axis_on_top_of_the_others(recorded) -> None:
    metrics, _ = recorded
    view = module_level(metrics)
    for figure in (imbalance_over_steps_figure(view), imbalance_by_method_figure(imbalance_by_method(view))):
        lines = _line_traces(figure)
        lowest = min(float(pd.Series(trace.y).mean()) for trace in lines)
        assert lowest < 0.1, "MAO's runs are balanced: their line is near 0"
        low, high = figure.layout.yaxis.range
        # A line at its lowest value must lie inside the plot, not on its bottom edge (where the axis is).
        assert low < min(float(min(trace.y)) for trace in lines) - 0.02 and high > 1.0
        assert figure.layout.yaxis.zeroline is False  # plotly's white zero line would hide it
        assert float(pd.Series(lines[-1].y).mean()) == lowest, "the lowest line is drawn last, on top"
        assert all(trace.line.width >= 2 for trace in lines)


@pytest.mark.parametrize("count", [1, 10, 11, 20, 21, 45, 120])
def test_no_two_runs_look_alike(recorded, count: int) -> None:
    metrics, _ = recorded
    one = module_level(metrics[metrics["run"] == metrics["run"].iloc[0]])
    many = pd.concat([one.assign(run=f"run{i:03d}") for i in range(count)], ignore_index=True)
    lines = _line_traces(imbalance_over_steps_figure(many))
    assert len(lines) == count
    styles = {(trace.line.color, trace.line.dash or "solid") for trace in lines}
    assert len(styles) == count, "two runs share a colour and a dash"
    assert len({trace.line.color for trace in lines}) == min(count, 20), "twenty colours before any repeats"


def test_run_names_say_where_each_run_came_from(tmp_path: Path) -> None:
    folders = [
        tmp_path / "out" / origin / "runs" / run
        for origin, run in [
            ("02_imbalanced_regression", "mao"),
            ("02_imbalanced_regression", "sum"),
            ("03_multimnist", "mao-seed0"),
            ("sweep", "lr=0.1/runs/mao"),
        ]
    ]
    names = origin_names(folders)
    assert len(set(names)) == len(names)
    for folder, name in zip(folders, names):
        parts = name.split("/")
        assert parts[-1] == folder.name
        origin = folder.relative_to(tmp_path / "out").parts[0]
        assert parts[0] == origin, (name, origin)
    # From one folder only: the folder's name still comes first.
    alone = origin_names(folders[:2])
    assert alone == ["02_imbalanced_regression/mao", "02_imbalanced_regression/sum"]
    assert origin_names([tmp_path / "04" / "demo_runs" / "sum"]) == ["demo_runs/sum"]


def test_the_two_explorers_of_04_list_the_runs_in_the_same_order(recorded) -> None:
    metrics, _ = recorded
    loaded = [str(r) for r in pd.unique(metrics["run"])]
    order = loaded[::-1]  # not alphabetical: the runs as another folder order would load them
    reordered = pd.concat([metrics[metrics["run"] == run] for run in order], ignore_index=True)
    view = module_level(reordered)  # what 04 gives both explorers
    runs = BalanceExplorer(view).run.options
    assert list(runs) == order
    assert list(HeatmapExplorer(view).run.options) == order


@pytest.mark.parametrize("steps", [1, 30, 75, 120, 600, 1000, 7000])
def test_the_landscape_playground_steps_slider_shows_the_steps_the_notebook_ran_with(steps: int) -> None:
    slider = LandscapePlayground(steps=steps).steps
    assert slider.value == steps
    # The browser's slider snaps to min + k * step: the value must be on that grid and inside the range.
    assert slider.min <= steps <= slider.max and (steps - slider.min) % slider.step == 0
