"""ipywidgets playgrounds for the notebooks: change a control, press *Run*, the figures follow.

Every playground is built and driven without a browser (set a control's ``.value`` and call
:meth:`run`), so constructing one in a headless papermill run never fails.  Figures go into
``ipywidgets.Output`` areas as plotly bundles, which JupyterLab renders and replaces on every change.
They are deliberately not ``go.FigureWidget``s: a FigureWidget's saved state carries plotly.js itself
(about 5 MB, through ``anywidget``), so every executed notebook would hold one copy per figure.
``static_figure()`` returns the current view as a plain figure for the notebook's HTML export, where
widgets are inert; :func:`mao_lab.notebook.display_live` shows it only there, not beside the live widget.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ipywidgets as widgets
import pandas as pd
import plotly.graph_objects as go

from ..methods import available
from ..recorder import by_module, metric_lines, share_areas, share_heatmap
from ._analysis import module_level, shared_layers
from ._labels import method_label, parse_run_name, run_name
from ._landscape import landscape_trajectories, pareto_table, reach_matrix
from ._landscape_figures import loss_space_figure, parameter_space_figure
from ._regression import compare_methods

__all__ = ["HeatmapExplorer", "LandscapePlayground", "MultiMNISTExplorer", "RegressionPlayground", "show_figure"]


def show_figure(output: widgets.Output, figure: go.Figure) -> None:
    """Show ``figure`` in ``output``, replacing what was there; needs no kernel or front-end."""
    output.outputs = (
        {
            "output_type": "display_data",
            "data": {
                # JupyterLab renders this with the jupyterlab-plotly extension that ships with plotly.
                "application/vnd.plotly.v1+json": json.loads(figure.to_json()),
                "text/plain": f"<figure: {figure.layout.title.text}>",
            },
            "metadata": {},
        },
    )


def _show_table(output: widgets.Output, table: pd.DataFrame) -> None:
    output.outputs = (
        {
            "output_type": "display_data",
            "data": {"text/html": table.to_html(index=False), "text/plain": table.to_string(index=False)},
            "metadata": {},
        },
    )


class _Playground:
    widget: widgets.Widget

    def _ipython_display_(self) -> None:  # pragma: no cover - needs a notebook front-end
        from IPython.display import display

        display(self.widget)


class LandscapePlayground(_Playground):
    """Methods, the scale of L1, learning rate, steps and eps on the two-task landscape.

    Args:
        methods, l1_scale, lr, steps, eps, tol: the starting values of the controls.
        trajectories: runs already computed for those values (shown at once, without running).
        record_every: recording interval of the runs the playground makes.
    """

    SCALES = ("1", "0.1", "free")

    def __init__(
        self,
        methods: Sequence[str] = ("mean", "mao"),
        *,
        l1_scale: float = 1.0,
        lr: float = 3e-2,
        steps: int = 1000,
        eps: float = 1e-16,
        tol: float = 0.1,
        record_every: int = 10,
        trajectories: pd.DataFrame | None = None,
    ) -> None:
        names = list(available())
        self.methods = widgets.SelectMultiple(options=names, value=tuple(methods), description="methods", rows=6)
        preset = "1" if l1_scale == 1 else "0.1" if l1_scale == 0.1 else "free"
        self.scale = widgets.ToggleButtons(options=self.SCALES, value=preset, description="L1 scale")
        self.free_scale = widgets.BoundedFloatText(value=float(l1_scale), min=1e-6, max=1e6, description="free scale")
        self.lr = widgets.FloatLogSlider(value=lr, base=10, min=-4, max=-0.5, description="lr", readout_format=".1e")
        # Steps of 1: the slider must be able to show whatever the notebook ran with (a smoke run's 30 as well).
        self.steps = widgets.IntSlider(value=steps, min=1, max=max(5000, steps), step=1, description="steps")
        self.eps = widgets.Dropdown(
            options=[("1e-16", 1e-16), ("1e-8 (Adam's default)", 1e-8)],
            value=eps if eps in (1e-16, 1e-8) else 1e-16,
            description="eps",
        )
        self.button = widgets.Button(description="Run", button_style="primary", icon="play")
        self.status = widgets.Label()
        self.log = widgets.Output()
        self.parameter_view, self.loss_view, self.table_view = widgets.Output(), widgets.Output(), widgets.Output()
        self.tol, self.record_every = tol, record_every
        self.button.on_click(lambda _: self.run())
        # Typing a scale means "use this scale": a value typed while a preset is chosen would otherwise do nothing.
        self.free_scale.observe(lambda _: setattr(self.scale, "value", "free"), names="value")
        for control in (self.methods, self.scale, self.free_scale, self.eps, self.lr, self.steps):
            control.observe(lambda _: self._mark_out_of_date(), names="value")
        controls = widgets.VBox(
            [
                widgets.HBox([self.methods, widgets.VBox([self.scale, self.free_scale, self.eps])]),
                widgets.HBox([self.lr, self.steps, self.button, self.status]),
            ]
        )
        self.widget = widgets.VBox([controls, self.log, self.parameter_view, self.loss_view, self.table_view])
        self.trajectories: pd.DataFrame | None = None
        if trajectories is not None:
            self._show(trajectories)
        else:
            self.status.value = "press Run"

    @property
    def l1_scale(self) -> float:
        """The scale chosen: a preset, or the free value."""
        return float(self.free_scale.value) if self.scale.value == "free" else float(self.scale.value)

    def run(self) -> pd.DataFrame:
        """Run the chosen methods from the five starts with the chosen settings, and redraw."""
        if not self.methods.value:
            self.status.value = "choose at least one method"
            return pd.DataFrame()
        self.status.value = "running…"
        started = time.perf_counter()
        self.log.outputs = ()
        with self.log:
            frame = landscape_trajectories(
                list(self.methods.value),
                l1_scale=self.l1_scale,
                steps=int(self.steps.value),
                lr=float(self.lr.value),
                record_every=self.record_every,
                eps=float(self.eps.value),
            )
        self._show(frame)
        self.status.value = f"done in {time.perf_counter() - started:.1f} s"
        return frame

    def _mark_out_of_date(self) -> None:
        """Runs take seconds, so they wait for *Run*; say meanwhile that the figures show older settings."""
        if self.trajectories is not None:
            self.status.value = "settings changed: the figures show the last run; press Run to redraw"

    def _show(self, frame: pd.DataFrame) -> None:
        self.trajectories = frame
        scale = float(frame["l1_scale"].iloc[0]) if "l1_scale" in frame.columns else self.l1_scale
        show_figure(self.parameter_view, parameter_space_figure(frame, scale))
        show_figure(self.loss_view, loss_space_figure(frame))
        _show_table(self.table_view, reach_matrix(pareto_table(frame, self.tol)))

    def static_figure(self) -> go.Figure:
        """The parameter-space view of the runs shown now."""
        if self.trajectories is None:
            raise ValueError("nothing has run yet: call run()")
        scale = float(self.trajectories["l1_scale"].iloc[0])
        return parameter_space_figure(self.trajectories, scale, title=f"Playground: parameter space (L1 x {scale:g})")


class RegressionPlayground(_Playground):
    """Number of tasks, the spread of their scales, method and layer on GradNorm's regression.

    Training happens on *Run* (or when a setting not seen before is asked for by :meth:`run`); runs are
    cached by ``(T, sigma_max, method)``, so switching back to a setting, or changing the layer, redraws
    at once.

    Args:
        num_tasks, sigma_max, method, layer: the starting values (the scales are spread
            geometrically over ``[sigma_min, sigma_max]``).
        sigma_min: the smallest scale (fixed).
        methods: the methods offered.
        runs: runs already made, ``{(T, sigma_max, method): recorder table}``.
        options: training options for new runs (``steps``, ``lr``, ``every``, ``num_samples``, ...).
    """

    def __init__(
        self,
        *,
        num_tasks: int = 4,
        sigma_max: float = 100.0,
        sigma_min: float = 1.0,
        method: str = "sum",
        layer: str = "trunk.0",
        methods: Sequence[str] = ("sum", "uw", "gradnorm", "io", "mao"),
        runs: Mapping[tuple[int, float, str], pd.DataFrame] | None = None,
        **options: Any,
    ) -> None:
        self.options = options
        self.sigma_min = float(sigma_min)
        self.cache: dict[tuple[int, float, str], pd.DataFrame] = {}
        for key, frame in (runs or {}).items():
            self.cache[(int(key[0]), float(key[1]), str(key[2]))] = by_module(
                frame.drop(columns=["run"], errors="ignore")
            )
        self.num_tasks = widgets.IntSlider(value=num_tasks, min=2, max=10, description="tasks T")
        low = math.log10(self.sigma_min)
        self.sigma_max = widgets.FloatLogSlider(
            value=sigma_max,
            base=10,
            min=low,
            max=max(low + 4, math.log10(sigma_max)),
            description="σ max",
            readout_format=".3g",
        )
        self.method = widgets.Dropdown(
            options=[(method_label(m), m) for m in methods], value=method, description="method"
        )
        self.layer = widgets.Dropdown(options=[layer], value=layer, description="layer")
        self.button = widgets.Button(description="Run", button_style="primary", icon="play")
        self.status = widgets.Label()
        self.log = widgets.Output()
        self.share_view, self.grad_view, self.update_view = widgets.Output(), widgets.Output(), widgets.Output()
        self.button.on_click(lambda _: self.run())
        for control in (self.num_tasks, self.sigma_max, self.method):
            control.observe(lambda _: self._redraw(), names="value")
        self.layer.observe(lambda _: self._redraw(), names="value")
        controls = widgets.VBox(
            [
                widgets.HBox([self.num_tasks, self.sigma_max]),
                widgets.HBox([self.method, self.layer, self.button, self.status]),
            ]
        )
        self.widget = widgets.VBox([controls, self.log, self.share_view, self.grad_view, self.update_view])
        self._redraw()

    def _key(self) -> tuple[int, float, str]:
        return int(self.num_tasks.value), float(self.sigma_max.value), str(self.method.value)

    def _cached(self) -> pd.DataFrame | None:
        key = self._key()
        for (t, s, m), frame in self.cache.items():
            if t == key[0] and m == key[2] and math.isclose(s, key[1], rel_tol=1e-6):
                return frame
        return None

    def run(self) -> pd.DataFrame:
        """Train the chosen setting (unless cached) and redraw."""
        frame = self._cached()
        if frame is None:
            self.status.value = "training…"
            started = time.perf_counter()
            self.log.outputs = ()
            with self.log:
                metrics, _ = compare_methods(
                    [self.method.value],
                    num_tasks=int(self.num_tasks.value),
                    sigma_range=(self.sigma_min, float(self.sigma_max.value)),
                    progress=True,
                    **self.options,
                )
            frame = by_module(metrics.drop(columns=["run"]))
            self.cache[self._key()] = frame
            self.status.value = f"trained in {time.perf_counter() - started:.1f} s"
        self._redraw()
        return frame

    def _redraw(self) -> None:
        frame = self._cached()
        if frame is None:
            self.status.value = "not trained yet: press Run"
            for view in (self.share_view, self.grad_view, self.update_view):
                view.outputs = ()
            return
        layers = shared_layers(frame)
        if list(self.layer.options) != layers:
            keep = self.layer.value if self.layer.value in layers else layers[0]
            self.layer.options = layers
            self.layer.value = keep
        t, sigma_max, method = self._key()
        where = f"{method_label(method)}, T={t}, σ in [{self.sigma_min:.3g}, {sigma_max:.3g}]"
        share = share_areas(frame, self.layer.value)
        share.update_layout(title=f"Tasks' shares of the update of {self.layer.value} — {where}")
        show_figure(self.share_view, share)
        for view, metric, name in (
            (self.grad_view, "grad_norm", "gradient"),
            (self.update_view, "update_norm", "update"),
        ):
            figure = metric_lines(frame, metric, self.layer.value)
            figure.update_layout(title=f"Per-task {name} norm of {self.layer.value} — {where}", yaxis_type="log")
            show_figure(view, figure)
        if not self.status.value.startswith("trained"):
            self.status.value = "cached run"

    def static_figure(self) -> go.Figure:
        """The share view of the current setting."""
        frame = self._cached()
        if frame is None:
            raise ValueError("the current setting has not been trained: call run()")
        t, sigma_max, method = self._key()
        figure = share_areas(frame, self.layer.value)
        figure.update_layout(
            title=f"Playground: shares of {self.layer.value} — {method_label(method)}, T={t}, σ max {sigma_max:.3g}"
        )
        return figure


class HeatmapExplorer(_Playground):
    """Pick a run and a task: the heatmap of that task's share of every layer's update over the steps."""

    def __init__(self, frame: pd.DataFrame, *, run: str | None = None, task: str | None = None) -> None:
        self.frame = frame if "run" in frame.columns else frame.assign(run="run")
        runs = [str(r) for r in pd.unique(self.frame["run"])]
        self.run = widgets.Dropdown(options=runs, value=run if run in runs else runs[0], description="run")
        self.task = widgets.Dropdown(description="task")
        self.view = widgets.Output()
        self._refresh_tasks(task)
        self.run.observe(lambda _: (self._refresh_tasks(self.task.value), self._redraw()), names="value")
        self.task.observe(lambda _: self._redraw(), names="value")
        self.widget = widgets.VBox([widgets.HBox([self.run, self.task]), self.view])
        self._redraw()

    def _rows(self) -> pd.DataFrame:
        rows = self.frame[self.frame["run"].astype(str) == self.run.value]
        return rows[rows["metric"] == "update_share"]

    def _refresh_tasks(self, keep: str | None) -> None:
        tasks = [str(t) for t in pd.unique(self._rows()["task"].dropna())]
        self.task.options = tasks
        if tasks:
            self.task.value = keep if keep in tasks else tasks[0]

    def static_figure(self) -> go.Figure:
        """The heatmap shown now."""
        return share_heatmap(self.frame, self.task.value, run=self.run.value)

    def _redraw(self) -> None:
        if self.task.value is not None:
            show_figure(self.view, self.static_figure())


class MultiMNISTExplorer(_Playground):
    """Pick a method, a seed and a shared layer: the tasks' shares of that layer's update over the steps,
    and each task's gradient norm there.

    Built and driven without a browser (set a control's ``.value``); :meth:`static_figure` is the current
    share view, for exports where widgets are inert.

    Args:
        frame: a recorder table of ``<method>-seed<k>`` runs with a ``run`` column (module level is used).
        method, seed, layer: the starting choices.
    """

    def __init__(
        self, frame: pd.DataFrame, *, method: str | None = None, seed: int | None = None, layer: str | None = None
    ) -> None:
        self.frame = module_level(frame)
        runs = [parse_run_name(r) for r in pd.unique(self.frame["run"].astype(str))]
        methods = list(dict.fromkeys(m for m, _ in runs))
        seeds = sorted({s for _, s in runs})
        layers = shared_layers(self.frame)
        self.method = widgets.Dropdown(
            options=[(method_label(m), m) for m in methods],
            value=method if method in methods else methods[0],
            description="method",
        )
        self.seed = widgets.Dropdown(options=seeds, value=seed if seed in seeds else seeds[0], description="seed")
        self.layer = widgets.Dropdown(
            options=layers, value=layer if layer in layers else layers[0], description="layer"
        )
        self.share_view, self.grad_view = widgets.Output(), widgets.Output()
        for control in (self.method, self.seed, self.layer):
            control.observe(lambda _: self._redraw(), names="value")
        self.widget = widgets.VBox(
            [widgets.HBox([self.method, self.seed, self.layer]), self.share_view, self.grad_view]
        )
        self._redraw()

    @property
    def run(self) -> str:
        """The run shown now."""
        return run_name(str(self.method.value), int(self.seed.value))

    def static_figure(self) -> go.Figure:
        """The share view shown now."""
        figure = share_areas(self.frame, str(self.layer.value), run=self.run)
        figure.update_layout(
            title=(
                f"Tasks' shares of the update of {self.layer.value} — {method_label(str(self.method.value))},"
                f" seed {self.seed.value}"
            )
        )
        return figure

    def _redraw(self) -> None:
        show_figure(self.share_view, self.static_figure())
        grads = metric_lines(self.frame, "grad_norm", str(self.layer.value), run=self.run)
        grads.update_layout(
            yaxis_type="log",
            title=(
                f"Per-task gradient norm of {self.layer.value} — {method_label(str(self.method.value))},"
                f" seed {self.seed.value}"
            ),
        )
        show_figure(self.grad_view, grads)
