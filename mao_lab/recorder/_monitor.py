"""A live balance monitor: while a model trains in JupyterLab, each shared layer's task shares and imbalance.

It is an observer like the recorder (see :class:`mao_lab.StepObserver`), but keeps only what it shows:
every ``every``-th step it asks the method for the step's record, turns each task's part of the update
into its share of every shared layer, and redraws one stacked-bar figure.  Steps it does not ask for
cost nothing: the method then builds no record at all.

**Throttling.**  A refresh costs the monitor's own work (norms, the figure sent to the front-end) plus
the method keeping each task's part of that step's update.  The monitor times both and keeps an
account: after the first refresh (shown at once), it refreshes once ``every`` steps have passed *and*
its time so far plus one more refresh stays within ``budget`` (default 5 %) of the training time so far.
So over a run its share of the time stays at most ``budget`` once the first refresh is paid off.  The cost it
measured is shown under the figure and kept in :attr:`BalanceMonitor.cost_fraction`;
``python -m mao_lab.bench recorder`` measures it from outside, side by side with the monitor off.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from torch.utils.hooks import RemovableHandle

from .._observe import StepRecord
from ._frame import imbalance_index, module_of, task_shares
from ._recorder import NamedParameters, Observable, _check_same_parameters, _parameter_names, _Watcher

__all__ = ["BalanceMonitor"]

_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#393b79", "#e7ba52", "#637939", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363",
)  # fmt: skip


class BalanceMonitor(_Watcher):
    """Show each shared layer's task shares and imbalance index live, refreshed every ``every`` steps or more.

    Args:
        model: names the parameters (``model.named_parameters()`` or a name → parameter mapping).
        method: the method or optimizer to watch (a :class:`mao_lab.methods.Method` or :class:`mao_lab.MAO`).
        every: the shortest refresh interval, in steps.
        budget: the largest fraction of the training time the monitor may take (throttles the interval).
        level: ``"module"`` (a layer's weight and bias together) or ``"parameter"``.
        label: the run's name in :meth:`ownership` (e.g. the method's).
        clock: the timer the throttle reads (seconds; a test can pass a fake one).

    Display ``monitor.widget`` above the training loop; the loop does not change.  Without a front-end
    (papermill, a test) it works the same, and :meth:`ownership` and :meth:`history` give the numbers:

    >>> from torch import nn
    >>> from mao_lab import MAO
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = nn.ModuleDict({"trunk": nn.Linear(3, 4), "a": nn.Linear(4, 1), "b": nn.Linear(4, 1)})
    >>> optimizer = MAO(model.parameters(), lr=1e-2)
    >>> monitor = BalanceMonitor(model, optimizer, every=2, label="mao")
    >>> x = torch.randn(16, 3)
    >>> for _ in range(6):
    ...     z = model["trunk"](x).relu()
    ...     _ = optimizer.step({"a": model["a"](z).pow(2).mean(), "b": 1e3 * model["b"](z).abs().mean()})
    >>> monitor.refreshes >= 1, sorted(monitor.ownership()["layer"].unique())  # the throttle may skip refreshes
    (True, ['trunk'])
    >>> round(float(monitor.ownership()["share"].sum()), 9)  # two tasks' shares of one layer
    1.0
    >>> monitor.close()
    """

    def __init__(
        self,
        model: NamedParameters,
        method: Observable,
        every: int = 10,
        *,
        budget: float = 0.05,
        level: str = "module",
        label: str = "run",
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        if not (isinstance(budget, (int, float)) and 0 < budget <= 1):
            raise ValueError(f"budget must be a fraction in (0, 1], got {budget!r}")
        if level not in ("module", "parameter"):
            raise ValueError(f"level must be 'module' or 'parameter', got {level!r}")
        if not callable(getattr(method, "add_observer", None)):
            raise TypeError(f"cannot monitor {type(method).__name__}: it has no add_observer()")
        self.every, self.budget, self.level, self.label = every, float(budget), level, str(label)
        self.method = method
        self._clock = clock
        self._names, _ = _parameter_names(model)
        _check_same_parameters(self._names, method)
        self.interval = every  # steps between the last two refreshes
        self.steps_seen = 0
        self.refreshes = 0
        self._since_refresh = every  # refresh at the first step
        self._last_call: float | None = None
        self._step_time: float | None = None  # a running mean of an unmonitored step's wall time
        self._monitor_time = 0.0  # the monitor's own work plus the refreshed steps' extra time
        self._elapsed = 0.0
        self._refreshing_step = False
        self._rows: list[tuple[int, str, str, float]] = []  # (step, layer, task, share)
        self._imbalance: list[tuple[int, str, float]] = []
        self._latest: dict[str, Any] | None = None
        self._shown_step: int | None = None  # the step the figure shows (0-based)
        self.unavailable = ""  # why there is nothing to show (a method without a per-task split), or ""
        self.status = widgets.HTML("waiting for the first step…")
        self.output = widgets.Output()
        self.widget = widgets.VBox([self.output, self.status])
        self._handle: RemovableHandle | None = None
        self.attach()

    # -- the observer protocol ---------------------------------------------------------------------

    def wants_record(self) -> bool:
        now = self._clock()
        if self._last_call is not None:
            duration = now - self._last_call
            self._elapsed += duration
            if self._refreshing_step and self._step_time is not None:
                # What a refreshed step took beyond an ordinary one: the method kept per-task updates.
                self._monitor_time += max(0.0, duration - self._step_time)
            elif self._refreshing_step:
                self._step_time = duration  # no ordinary step seen yet: the best estimate there is
            else:
                self._step_time = duration if self._step_time is None else 0.8 * self._step_time + 0.2 * duration
        self._last_call = now
        self.steps_seen += 1
        self._since_refresh += 1
        if self.refreshes == 0:
            self._refreshing_step = True
        else:
            next_refresh = self._monitor_time / self.refreshes  # the mean cost of one, all included
            self._refreshing_step = (
                self._since_refresh >= self.every and self._monitor_time + next_refresh <= self.budget * self._elapsed
            )
        return self._refreshing_step

    @torch.no_grad()
    def __call__(self, record: StepRecord) -> None:
        started = self._clock()
        if record.task_updates is None:
            # GradDrop (and any method whose rule gives no per-task split) trains on; the monitor says why it
            # shows nothing rather than raising inside the user's training step.
            self._say_no_split(record)
            return
        step = self.steps_seen - 1
        shares = self._layer_shares(record)
        for layer, by_task in shares.items():
            values = np.array(list(by_task.values()))
            self._imbalance.append((step, layer, float(imbalance_index(values))))
            self._rows += [(step, layer, task, float(share)) for task, share in by_task.items()]
        if self.refreshes:
            self.interval = self._since_refresh
        self.refreshes += 1
        self._since_refresh = 0
        self._draw(step, shares)
        cost = self._clock() - started
        self._monitor_time += cost
        self._last_call = (self._last_call or started) + cost  # the monitor's time is not a step's

    # -- measuring --------------------------------------------------------------------------------------

    def _layer_shares(self, record: StepRecord) -> dict[str, dict[str, float]]:
        """Each shared layer's task shares of the update (norms of the tasks' parts, normalised to sum 1)."""
        updates = record.task_updates
        assert updates is not None
        norms = updates.norms().double().square()  # (T, parameters)
        squared: dict[str, dict[int, float]] = {}
        for i, (p, ks) in enumerate(zip(updates.params, updates.tasks)):
            name = self._names.get(id(p))
            # A parameter the model does not name is its own layer, never merged into "(model)".
            layer = f"(unnamed {i})" if name is None else (module_of(name) if self.level == "module" else name)
            by_task = squared.setdefault(layer, {})
            for k in ks:
                by_task[k] = by_task.get(k, 0.0) + float(norms[k, i])
        names = record.task_names
        shares: dict[str, dict[str, float]] = {}
        for layer, by_task in squared.items():
            if len(by_task) < 2:
                continue  # a task head: not shared
            tasks = sorted(by_task)
            values = task_shares(np.sqrt([by_task[k] for k in tasks]))
            if not np.isnan(values).any():  # NaN: no task moved the layer (or a norm is NaN): nothing to share
                shares[layer] = {names[k]: float(v) for k, v in zip(tasks, values)}
        return shares

    @property
    def cost_fraction(self) -> float:
        """The monitor's measured share of the training time since it attached (NaN before two steps)."""
        return self._monitor_time / self._elapsed if self._elapsed > 0 else float("nan")

    # -- showing ------------------------------------------------------------------------------------------

    def _draw(self, step: int, shares: dict[str, dict[str, float]]) -> None:
        """One stacked horizontal bar per shared layer, built as a plain plotly dict (no validation: cheap)."""
        layers = list(shares)
        tasks = list(dict.fromkeys(t for by_task in shares.values() for t in by_task))
        latest = {layer: value for s, layer, value in self._imbalance if s == step}
        labels = [f"{layer} · imbalance {latest[layer]:.2f}" for layer in layers]
        traces = [
            {
                "type": "bar", "orientation": "h", "name": task, "y": labels,
                "x": [shares[layer].get(task, 0.0) for layer in layers],
                "marker": {"color": _PALETTE[k % len(_PALETTE)]},
                "hovertemplate": f"{task}: %{{x:.1%}}<extra></extra>",
            }
            for k, task in enumerate(tasks)
        ]  # fmt: skip
        figure = {
            "data": traces,
            "layout": {
                "barmode": "stack", "height": 120 + 40 * len(layers), "margin": {"l": 10, "r": 10, "t": 50, "b": 30},
                "title": {"text": f"{self.label}: each task's share of every shared layer's update, step {step + 1}"},
                "xaxis": {"range": [0, 1], "tickformat": ".0%"}, "yaxis": {"autorange": "reversed", "automargin": True},
                "legend": {"orientation": "h", "y": -0.25, "traceorder": "normal"},
            },
        }  # fmt: skip
        self._latest, self._shown_step = figure, step
        self._show(figure, f"<live balance, step {step + 1}>")  # steps counted from 1 on screen
        cost = self.cost_fraction
        cost_text = "" if math.isnan(cost) else f"; monitor cost so far {cost:.1%} of the training time"
        self.status.value = (
            f"<span class='mao-monitor-status'>step {step + 1}: last refresh after {self.interval} steps "
            f"(at least {self.every}; the monitor keeps to {self.budget:.0%} of the time){cost_text}</span>"
        )

    def _say_no_split(self, record: StepRecord) -> None:
        """Once: the method records no per-task split of its update, so there are no shares to show."""
        if self.unavailable:
            return
        name = getattr(self.method, "name", type(self.method).__name__)
        self.unavailable = (
            f"{name} gives no per-task split of its update (its rule does not say which task moved a layer how "
            "much), so the monitor has no shares to show; the recorder still records its task gradients"
        )
        self.status.value = f"<span class='mao-monitor-status'>{html.escape(self.unavailable)}</span>"

    def _show(self, figure: dict[str, Any], text: str) -> None:
        self.output.outputs = (
            {
                "output_type": "display_data",
                "data": {"application/vnd.plotly.v1+json": figure, "text/plain": text},
                "metadata": {},
            },
        )

    def _say_finished(self) -> None:
        """Once training stops: say which step the bars show and how many steps the training ran.

        The last refresh is usually a few steps before the end (the monitor refreshes at most every ``every``
        steps, and less often when refreshing would cost more than its ``budget``)."""
        if self._latest is None or self._shown_step is None:
            return
        shown, total = self._shown_step + 1, self.steps_seen  # 1-based, as "of N steps" reads
        title = (
            f"{self.label}: each task's share of every shared layer's update, step {shown} of {total}"
            " (the last refresh)"
        )
        self._latest["layout"]["title"]["text"] = title
        self._show(self._latest, f"<balance, step {shown} of {total}>")
        cost = self.cost_fraction
        cost_text = "" if math.isnan(cost) else f"; the monitor took {cost:.1%} of the training time"
        self.status.value = (
            f"<span class='mao-monitor-status'>finished: {total} steps; the bars show step {shown}, the last refresh "
            f"(refreshes came every {self.interval} steps or so, at least {self.every}){cost_text}</span>"
        )

    def figure(self) -> go.Figure:
        """The latest view as a plain plotly figure (for ``write_html`` or a notebook's HTML export)."""
        if self._latest is None:
            raise ValueError("nothing shown yet: the monitor refreshes at the first step it sees")
        return go.Figure(self._latest)

    def _ipython_display_(self) -> None:  # pragma: no cover - needs a notebook front-end
        from IPython.display import display

        display(self.widget)

    # -- the numbers ----------------------------------------------------------------------------------------

    def history(self) -> pd.DataFrame:
        """Every refresh's shares: one row per (step, layer, task) with ``share``, and the layer's ``imbalance``."""
        shares = pd.DataFrame(self._rows, columns=["step", "layer", "task", "share"])
        imbalance = pd.DataFrame(self._imbalance, columns=["step", "layer", "imbalance"])
        return shares.merge(imbalance, on=["step", "layer"], how="left").assign(run=self.label)

    def ownership(self, tail: float = 0.5) -> pd.DataFrame:
        """Mean shares over the last ``tail`` of the refreshes, laid out like the notebooks' ownership tables."""
        if not 0 < tail <= 1:
            raise ValueError(f"tail must be in (0, 1], got {tail!r}")
        frame = self.history()
        if frame.empty:
            return pd.DataFrame(columns=["run", "layer", "task", "share", "imbalance"])
        steps = np.sort(frame["step"].unique())
        kept = frame[frame["step"].isin(steps[int(math.floor(len(steps) * (1 - tail))) :])]
        mean = kept.groupby(["layer", "task"], sort=False)[["share", "imbalance"]].mean().reset_index()
        return mean.assign(run=self.label)[["run", "layer", "task", "share", "imbalance"]]

    def _started(self) -> None:
        self._last_call = None  # time spent detached is not the steps' time

    def close(self) -> None:
        """Stop watching (the figure and the numbers stay; the figure's title and the line under it say which
        step the bars show, out of how many); :meth:`attach` resumes."""
        self.detach()
        self._say_finished()

    def __enter__(self) -> BalanceMonitor:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"BalanceMonitor({self.label!r}, every={self.every}, interval={self.interval}, refreshes={self.refreshes})"
        )
