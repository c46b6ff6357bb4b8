"""An ipywidgets explorer of recorded runs: pick run, layer, metric and step range; the figure follows.

Tick other runs under "compare with" and they join the same figure (one y-axis, a legend group per run), so
runs are compared on one scale rather than one after the other.  Run names are shown as text: a folder
called ``<img src=x onerror=...>`` is written out, never inserted as HTML.

The figure is a plain plotly figure shown in an ``ipywidgets.Output`` and replaced on every change, not a
``go.FigureWidget``: a FigureWidget's saved widget state carries plotly.js itself (about 5 MB, through
``anywidget``), so every executed notebook and its HTML export would carry a copy.  The explorer is built
and driven without a browser (set ``explorer.metric.value`` and the figure changes), and
:meth:`BalanceExplorer.static_figure` gives the current view for HTML export.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from ._figures import metric_lines
from ._frame import METRICS, Level, by_module, normalise_dtypes
from ._recorder import Recorder
from ._storage import RunPath, combine_runs, full_tables, load_run, part_paths

__all__ = ["BalanceExplorer", "ExplorerApp", "RunChecklist", "find_runs", "run_label"]

Source = pd.DataFrame | Recorder | RunPath
Sources = Source | Sequence[Source] | Mapping[str, Source]

_ALL_LAYERS_METRICS = ("loss",)
_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")  # one per compared run
_SEED = re.compile(r"^(?P<method>.+?)[-_]seed[-_]?(?P<seed>\d+)$")
_NOTEBOOK = re.compile(r"^\d\d_[A-Za-z0-9_]+$")  # a lab notebook's output folder, e.g. 02_imbalanced_regression


def run_label(name: str) -> str:
    """A run's path below the runs folder as a person reads it: ``notebook / method / seed N``.

    The notebook is the path's ``NN_name`` part (when there is one), the method the run folder's name, and a
    ``-seedN`` suffix becomes ``seed N``; folders such as ``runs`` and the run time are left out.

    >>> run_label("2026-12-06_0912/03_multimnist/runs/sum-seed1")
    '03_multimnist / sum / seed 1'
    >>> run_label("02_imbalanced_regression/runs/mao")
    '02_imbalanced_regression / mao'
    >>> run_label("mao")
    'mao'
    """
    parts = [p for p in str(name).split("/") if p not in ("", ".")]
    if not parts:
        return str(name)
    last = parts[-1]
    match = _SEED.match(last)
    tail = [match["method"], f"seed {int(match['seed'])}"] if match else [last]
    notebooks = [p for p in parts[:-1] if _NOTEBOOK.match(p)]
    return " / ".join(notebooks[-1:] + tail)


def _text(name: object) -> str:
    """A run or task name for plotly text (titles, legends): HTML special characters escaped."""
    return html.escape(str(name), quote=False)


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
        frames.append(
            frame.drop(columns=["run"]).assign(run=name) if "run" in frame.columns else frame.assign(run=name)
        )
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
        # Other runs drawn on the same figure: nothing ticked at first (one run, as the explorer opens).
        self.compare = {
            name: widgets.Checkbox(
                value=False, description=name, indent=False, tooltip=name, layout=widgets.Layout(width="auto")
            )
            for name in runs
        }
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
        for box in self.compare.values():
            box.observe(self._on_change, names="value")
        controls = widgets.HBox([self.run, self.metric, self.layer])
        rows: list[widgets.Widget] = [controls, self.steps]
        if len(runs) > 1:
            rows.append(
                widgets.HBox(
                    [widgets.Label("compare with:"), *self.compare.values()],
                    layout=widgets.Layout(flex_flow="row wrap"),
                )
            )
        self.widget = widgets.VBox([*rows, self._output])
        self._sync_compare()
        self._redraw()

    # -- the current view ----------------------------------------------------------------------------

    @property
    def figure(self) -> go.Figure:
        """The figure shown, rebuilt on each change."""
        return self._figure

    def shown_runs(self) -> list[str]:
        """The runs on the figure: the chosen run, then the ticked ones in the order of the list."""
        return [self.run.value] + [name for name, box in self.compare.items() if box.value and name != self.run.value]

    def static_figure(self) -> go.Figure:
        """The current view as a plain ``go.Figure`` (for ``write_html`` or a static notebook).

        One run: a line per task.  Several: each run's lines on the same axes, the run in the legend group's
        title and the line's dash (the task keeps its colour across runs)."""
        layer = None if self.metric.value in _ALL_LAYERS_METRICS else self.layer.value
        runs = self.shown_runs()
        figures = [
            metric_lines(self.frame, self.metric.value, layer, run=run, steps=tuple(self.steps.value)) for run in runs
        ]
        first = figures[0]
        title = str(first.layout.title.text).rsplit(" — ", 1)[0]
        if len(runs) == 1:
            first.update_layout(title_text=f"{title} — {_text(runs[0])}")
            for trace in first.data:
                trace.name = _text(trace.name)
            return first
        figure = go.Figure()
        colours = qualitative.Plotly
        tasks: dict[str, str] = {}
        for i, (run, part) in enumerate(zip(runs, figures)):
            for trace in part.data:
                colour = tasks.setdefault(str(trace.name), colours[len(tasks) % len(colours)])
                trace.update(
                    name=_text(trace.name),
                    legendgroup=run,
                    legendgrouptitle_text=_text(run),
                    line={"color": colour, "dash": _DASHES[i % len(_DASHES)]},
                )
                figure.add_trace(trace)
        figure.update_layout(
            title_text=f"{title} — {len(runs)} runs",
            xaxis_title="step",
            yaxis_title=first.layout.yaxis.title.text,
            legend_title_text=first.layout.legend.title.text,
            legend_groupclick="toggleitem",
        )
        return figure

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

    def _sync_compare(self) -> None:
        """The chosen run is always drawn: its own box is ticked and disabled."""
        for name, box in self.compare.items():
            box.disabled = name == self.run.value

    def _on_run(self, change: dict[str, Any]) -> None:
        self._sync_compare()
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
    for folder in sorted(
        {p.parent for pattern in ("metrics.parquet", "metrics.csv", "metrics.part-*") for p in root.rglob(pattern)}
    ):
        if full_tables(folder) or part_paths(folder):
            name = folder.relative_to(root).as_posix()
            found[name] = folder
    return dict(sorted(found.items()))


class RunChecklist:
    """A checkbox per run, labelled as a person reads it (:func:`run_label`; the full path in its tooltip).

    ``options`` are the runs' names (paths below the runs folder), ``value`` the ticked ones in list order;
    a click ticks or unticks one run and leaves the others as they are.

    >>> checklist = RunChecklist()
    >>> checklist.options = ["03_multimnist/runs/sum-seed0", "03_multimnist/runs/mao-seed0"]
    >>> [box.description for box in checklist.boxes.values()]
    ['03_multimnist / sum / seed 0', '03_multimnist / mao / seed 0']
    >>> checklist.value = ("03_multimnist/runs/mao-seed0",)
    >>> checklist.value
    ('03_multimnist/runs/mao-seed0',)
    """

    def __init__(self) -> None:
        self.boxes: dict[str, widgets.Checkbox] = {}
        self.widget = widgets.VBox(layout=widgets.Layout(max_height="16em", overflow="auto", width="70%"))

    @property
    def options(self) -> tuple[str, ...]:
        return tuple(self.boxes)

    @options.setter
    def options(self, names: Sequence[str]) -> None:
        labels = {name: run_label(name) for name in names}
        repeated = {label for label in labels.values() if list(labels.values()).count(label) > 1}
        # A checkbox's description is plain text (ipywidgets escapes it): a run's name is never read as HTML.
        self.boxes = {
            name: widgets.Checkbox(
                value=False,
                description=name if labels[name] in repeated else labels[name],
                tooltip=name,
                indent=False,
                layout=widgets.Layout(width="auto"),
            )
            for name in names
        }
        self.widget.children = tuple(self.boxes.values())

    @property
    def value(self) -> tuple[str, ...]:
        return tuple(name for name, box in self.boxes.items() if box.value)

    @value.setter
    def value(self, names: Sequence[str]) -> None:
        unknown = [name for name in names if name not in self.boxes]
        if unknown:
            raise ValueError(f"no run named {unknown[0]!r}; runs: {list(self.boxes)}")
        for name, box in self.boxes.items():
            box.value = name in names

    def label(self, name: str) -> str:
        """The text shown for run ``name``."""
        return str(self.boxes[name].description)


def _notebook_of(name: str) -> str:
    """The part of a run's label before the method: the notebook (or folder) that wrote it."""
    return run_label(name).rsplit(" / ", 1)[0] if " / " in run_label(name) else ""


class ExplorerApp:
    """The balance explorer as a page for a class: type a folder, tick runs, explore; no code to touch.

    ``make explorer`` serves it with Voilà (``apps/balance_explorer.ipynb``).  Bad input (a folder that
    does not exist or holds no run, a run that cannot be read) is reported in the page's status line, with
    every name in it escaped (shown as text).

    Args:
        root: the folder searched for runs at start (recursively).
        level: ``"module"`` or ``"parameter"`` for the explorer.
        preselect: how many runs are ticked after a search when they all come from one notebook (runs of
            several notebooks are never ticked for you: their metrics need not be comparable).

    >>> import tempfile
    >>> app = ExplorerApp(tempfile.mkdtemp())
    >>> app.status.value
    'no run folders under that folder (a run folder holds metrics.parquet, metrics.csv or metrics.part-* files)'
    """

    def __init__(self, root: RunPath = "runs", *, level: Level = "module", preselect: int = 2) -> None:
        self.level: Level = level
        self.preselect = preselect
        self.root = widgets.Text(value=str(root), description="folder", layout=widgets.Layout(width="60%"))
        self.find = widgets.Button(description="Find runs")  # no icon: an icon font is a download
        self.runs = RunChecklist()
        self.open = widgets.Button(description="Open", button_style="primary")
        self.status = widgets.HTML()
        self.view = widgets.VBox()  # holds the explorer once runs are opened
        self.explorer: BalanceExplorer | None = None
        self._found: dict[str, Path] = {}
        self.find.on_click(lambda _: self.search())
        self.open.on_click(lambda _: self.show())
        self.widget = widgets.VBox(
            [widgets.HBox([self.root, self.find]), widgets.HBox([self.runs.widget, self.open]), self.status, self.view]
        )
        self.search()

    def _say(self, text: str) -> None:
        """Show ``text`` in the status line as text (run names and errors may hold ``<`` or ``&``)."""
        self.status.value = html.escape(text)

    def search(self) -> list[str]:
        """Look for run folders under the typed folder; tick the first ``preselect`` if one notebook wrote them all."""
        try:
            self._found = find_runs(Path(self.root.value).expanduser())
        except FileNotFoundError as error:
            self._found = {}
            self._say(str(error))
        else:
            if self._found:
                self._say(f"{len(self._found)} run folders found: tick the runs to compare and press Open")
            else:
                self._say(
                    "no run folders under that folder (a run folder holds metrics.parquet, metrics.csv or "
                    "metrics.part-* files)"
                )
        names = list(self._found)
        self.runs.options = names
        if len({_notebook_of(name) for name in names}) == 1:
            self.runs.value = tuple(names[: self.preselect])
        return names

    def show(self) -> BalanceExplorer | None:
        """Open the ticked runs in a :class:`BalanceExplorer` under the controls (named by their labels)."""
        chosen = list(self.runs.value)
        if not chosen:
            self._say("tick at least one run first")
            return None
        try:
            explorer = BalanceExplorer({self.runs.label(name): self._found[name] for name in chosen}, level=self.level)
        except (OSError, ValueError, KeyError) as error:
            self._say(f"could not open the runs: {error}")
            return None
        for box in list(explorer.compare.values())[1:]:
            box.value = True  # the ticked runs, all on one figure
        self.explorer = explorer
        self.view.children = (explorer.widget,)
        self._say(f"opened {len(chosen)} runs: {', '.join(self.runs.label(name) for name in chosen)}")
        return explorer

    def _ipython_display_(self) -> None:  # pragma: no cover - needs a notebook front-end
        from IPython.display import display

        display(self.widget)
