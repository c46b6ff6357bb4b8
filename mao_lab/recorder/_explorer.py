"""An ipywidgets explorer of recorded runs: pick run, layer, metric and step range; the figure follows.

The figure is a plain plotly figure shown in an ``ipywidgets.Output`` and replaced on every change, not a
``go.FigureWidget``: a FigureWidget's saved widget state carries plotly.js itself (about 5 MB, through
``anywidget``), so every executed notebook and its HTML export would carry a copy.  The explorer is built
and driven without a browser (set ``explorer.metric.value`` and the figure changes), and
:meth:`BalanceExplorer.static_figure` gives the current view for HTML export.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import ipywidgets as widgets
import pandas as pd
import plotly.graph_objects as go

from ._figures import metric_lines
from ._frame import METRICS, Level, by_module, normalise_dtypes
from ._recorder import Recorder
from ._storage import RunPath, combine_runs, full_tables, load_run, part_paths

__all__ = ["BalanceExplorer", "ExplorerApp", "find_runs"]

Source = Union[pd.DataFrame, Recorder, RunPath]
Sources = Union[Source, Sequence[Source], Mapping[str, Source]]

_ALL_LAYERS_METRICS = ("loss",)


def _as_frame(source: Source) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        return source
    if isinstance(source, Recorder):
        return source.to_frame()
    return load_run(source)[0]


def _default_name(source: Source, position: int) -> str:
    if isinstance(source, (str, Path)):
        return Path(source).name
    return f"run{position}"


def _combined(sources: Sources) -> pd.DataFrame:
    if isinstance(sources, pd.DataFrame):
        return sources if "run" in sources.columns else sources.assign(run="run0")
    if isinstance(sources, Mapping):
        named = {str(name): _as_frame(source) for name, source in sources.items()}
    elif isinstance(sources, (Recorder, str, Path)):
        named = {_default_name(sources, 0): _as_frame(sources)}
    else:
        named = {}
        for position, source in enumerate(sources):
            name = _default_name(source, position)
            named[name if name not in named else f"{name}.{position}"] = _as_frame(source)
    if not named:
        raise ValueError("BalanceExplorer needs at least one table, recorder or run folder")
    frames = []
    for name, frame in named.items():
        frames.append(frame.drop(columns=["run"]).assign(run=name) if "run" in frame.columns else frame.assign(run=name))
    return combine_runs(frames)


class BalanceExplorer:
    """Widgets to explore recorded balance metrics: run (method), metric, layer and step range.

    Args:
        sources: a table (with or without a ``run`` column), a :class:`Recorder`, a run folder, or a
            list or name → source mapping of those (each becomes a run).
        level: ``"parameter"`` or ``"module"`` (aggregates each run with :func:`by_module`).

    Display it in a notebook (``explorer`` as the cell's last line, or ``display(explorer.widget)``).

    >>> frame = pd.DataFrame({"step": [0, 1, 0, 1], "layer": "w", "kind": "shared", "task": ["a", "a", "b", "b"],
    ...                       "other_task": None, "metric": "grad_norm", "value": [1.0, 2.0, 3.0, 4.0]})
    >>> explorer = BalanceExplorer({"mao": frame})
    >>> [trace.name for trace in explorer.figure.data]
    ['a', 'b']
    >>> explorer.steps.value = (1, 1)
    >>> [trace.y.tolist() for trace in explorer.figure.data]
    [[2.0], [4.0]]
    """

    def __init__(self, sources: Sources, *, level: Level = "parameter") -> None:
        frame = _combined(sources)
        if level == "module":
            frame = by_module(frame)
        elif level != "parameter":
            raise ValueError(f"level must be 'parameter' or 'module', got {level!r}")
        self.frame = normalise_dtypes(frame)
        runs = [str(r) for r in pd.unique(self.frame["run"].dropna())]
        if not runs:
            raise ValueError("the tables hold no recorded steps")

        self.run = widgets.Dropdown(options=runs, value=runs[0], description="run")
        self.metric = widgets.Dropdown(description="metric")
        self.layer = widgets.Dropdown(description="layer")
        self.steps = widgets.IntRangeSlider(description="steps", continuous_update=False)
        self._figure = go.Figure()
        self._output = widgets.Output()
        self._updating = False

        self._refresh_choices()
        self.run.observe(self._on_run, names="value")
        self.metric.observe(self._on_metric, names="value")
        self.layer.observe(self._on_change, names="value")
        self.steps.observe(self._on_change, names="value")
        controls = widgets.HBox([self.run, self.metric, self.layer])
        self.widget = widgets.VBox([controls, self.steps, self._output])
        self._redraw()

    # -- the current view ----------------------------------------------------------------------------

    @property
    def figure(self) -> go.Figure:
        """The figure shown, rebuilt on each change."""
        return self._figure

    def static_figure(self) -> go.Figure:
        """The current view as a plain ``go.Figure`` (for ``write_html`` or a static notebook)."""
        return metric_lines(
            self.frame,
            self.metric.value,
            None if self.metric.value in _ALL_LAYERS_METRICS else self.layer.value,
            run=self.run.value,
            steps=tuple(self.steps.value),
        )

    def _ipython_display_(self) -> None:  # pragma: no cover - needs a notebook front-end
        from IPython.display import display

        display(self.widget)

    # -- reacting to the widgets ---------------------------------------------------------------------

    def _run_rows(self) -> pd.DataFrame:
        return self.frame[self.frame["run"] == self.run.value]

    def _refresh_choices(self) -> None:
        """Metrics, layers and step bounds available in the chosen run (keeping the choices that still apply)."""
        self._updating = True
        try:
            rows = self._run_rows()
            present = set(rows["metric"].astype(str))
            metrics = [m for m in METRICS if m in present]
            self.metric.options = metrics
            if self.metric.value not in metrics:
                self.metric.value = "update_share" if "update_share" in metrics else metrics[0]
            self._refresh_layers()
            low, high = int(rows["step"].min()), int(rows["step"].max())
            # Widen the slider first: a bound may never cross the current value.
            self.steps.max = max(high, self.steps.max)
            self.steps.min = min(low, self.steps.min)
            self.steps.value = (low, high)
            self.steps.min, self.steps.max = low, high
        finally:
            self._updating = False

    def _refresh_layers(self) -> None:
        rows = self._run_rows()
        rows = rows[rows["metric"] == self.metric.value]
        layers = [str(layer) for layer in pd.unique(rows["layer"].dropna())]
        previous = self.layer.value
        self.layer.options = layers
        self.layer.disabled = not layers  # the loss has no layer
        if layers:
            self.layer.value = previous if previous in layers else layers[0]

    def _on_run(self, change: dict[str, Any]) -> None:
        self._refresh_choices()
        self._redraw()

    def _on_metric(self, change: dict[str, Any]) -> None:
        if self._updating:
            return
        self._updating = True
        try:
            self._refresh_layers()
        finally:
            self._updating = False
        self._redraw()

    def _on_change(self, change: dict[str, Any]) -> None:
        if not self._updating:
            self._redraw()

    def _redraw(self) -> None:
        figure = self._figure = self.static_figure()
        # Setting the output directly needs no kernel: a notebook renders the plotly bundle, and a
        # front-end without plotly's renderer falls back to the HTML.
        self._output.outputs = (
            {
                "output_type": "display_data",
                "data": {
                    "application/vnd.plotly.v1+json": json.loads(figure.to_json()),
                    "text/html": figure.to_html(full_html=False, include_plotlyjs="cdn"),
                    "text/plain": f"<figure: {figure.layout.title.text}>",
                },
                "metadata": {},
            },
        )


def find_runs(root: RunPath) -> dict[str, Path]:
    """Every run folder at or under ``root`` (a folder holding ``metrics.parquet``/``.csv`` or part files).

    Named by their path below ``root`` (``"."`` when ``root`` is itself a run), in sorted order.

    >>> import tempfile
    >>> from mao_lab.recorder import save_run
    >>> from mao_lab.recorder._frame import empty_frame
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ("b/runs/mao", "a/runs/sum"):
    ...     _ = save_run(root / name, empty_frame(), {})
    >>> list(find_runs(root))
    ['a/runs/sum', 'b/runs/mao']
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no folder at {root}")
    found = {}
    for folder in sorted({p.parent for pattern in ("metrics.parquet", "metrics.csv", "metrics.part-*") for p in root.rglob(pattern)}):
        if full_tables(folder) or part_paths(folder):
            name = folder.relative_to(root).as_posix()
            found[name] = folder
    return dict(sorted(found.items()))


class ExplorerApp:
    """The balance explorer as a page for a class: type a folder, pick runs, explore; no code to touch.

    ``make explorer`` serves it with Voilà (``apps/balance_explorer.ipynb``).  Bad input (a folder that
    does not exist or holds no run, a run that cannot be read) is reported in the page's status line.

    Args:
        root: the folder searched for runs at start (recursively).
        level: ``"module"`` or ``"parameter"`` for the explorer.
        preselect: how many runs are ticked after a search.

    >>> import tempfile
    >>> app = ExplorerApp(tempfile.mkdtemp())
    >>> app.status.value
    'no run folders under that folder (a run folder holds metrics.parquet, metrics.csv or metrics.part-* files)'
    """

    def __init__(self, root: RunPath = "runs", *, level: Level = "module", preselect: int = 6) -> None:
        self.level: Level = level
        self.preselect = preselect
        self.root = widgets.Text(value=str(root), description="folder", layout=widgets.Layout(width="60%"))
        self.find = widgets.Button(description="Find runs", icon="search")
        self.runs = widgets.SelectMultiple(options=[], description="runs", rows=8, layout=widgets.Layout(width="60%"))
        self.open = widgets.Button(description="Open", button_style="primary", icon="folder-open")
        self.status = widgets.HTML()
        self.view = widgets.VBox()  # holds the explorer once runs are opened
        self.explorer: BalanceExplorer | None = None
        self._found: dict[str, Path] = {}
        self.find.on_click(lambda _: self.search())
        self.open.on_click(lambda _: self.show())
        self.widget = widgets.VBox(
            [widgets.HBox([self.root, self.find]), widgets.HBox([self.runs, self.open]), self.status, self.view]
        )
        self.search()

    def search(self) -> list[str]:
        """Look for run folders under the typed folder; tick the first ``preselect``."""
        try:
            self._found = find_runs(Path(self.root.value).expanduser())
        except FileNotFoundError as error:
            self._found = {}
            self.status.value = str(error)
        else:
            if self._found:
                self.status.value = f"{len(self._found)} run folders found: pick some and press Open"
            else:
                self.status.value = (
                    "no run folders under that folder (a run folder holds metrics.parquet, metrics.csv or "
                    "metrics.part-* files)"
                )
        names = list(self._found)
        self.runs.options = names
        self.runs.value = tuple(names[: self.preselect])
        return names

    def show(self) -> BalanceExplorer | None:
        """Open the ticked runs in a :class:`BalanceExplorer` under the controls."""
        chosen = list(self.runs.value)
        if not chosen:
            self.status.value = "tick at least one run first"
            return None
        try:
            explorer = BalanceExplorer({name: self._found[name] for name in chosen}, level=self.level)
        except (OSError, ValueError, KeyError) as error:
            self.status.value = f"could not open the runs: {error}"
            return None
        self.explorer = explorer
        self.view.children = (explorer.widget,)
        self.status.value = f"opened {len(chosen)} runs: {', '.join(chosen)}"
        return explorer

    def _ipython_display_(self) -> None:  # pragma: no cover - needs a notebook front-end
        from IPython.display import display

        display(self.widget)
