"""The figures behind the ledger's verdicts, and a widget to look at any claim, configuration or task.

Every function takes the tables of :func:`~mao_lab.study.load_study` and returns a plotly figure:
the validation criterion against the learning rate (how each rate was chosen), the intervals of every
part of a claim (the verdict), balance over the training steps (M1), distance and path
length (P3), Δm% against seconds per epoch (P4) and the best method's validation curve (did it level off?).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ipywidgets as widgets
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from ..experiments import delta_m, show_figure
from ..experiments._figures import band, interval_whisker, scatter_trace, wrap_title
from ._analysis import BALANCE_THRESHOLD, CLAIMS, final_runs, grouping_points
from ._design import SINGLE_TASK_PREFIX, StudyDesign
from ._stats import mean_interval

__all__ = [
    "ClaimsExplorer",
    "balance_figure",
    "claim_figure",
    "compute_figure",
    "final_table",
    "learning_rate_figure",
    "spread_figure",
    "validation_curve",
    "validation_curve_figure",
]

_PALETTE = qualitative.Plotly + qualitative.D3


# Titles wrapped to fit a figure at JupyterLab's width (about 900 px: 70 characters of the title's font, 90 of a
# note's); the explanation goes in the note, so that axis titles stay short enough for their axis.
_TITLE_CHARS, _NOTE_CHARS = 70, 90


def _titled(figure: go.Figure, title: str, note: str = "", **layout: Any) -> go.Figure:
    """Set ``title`` (and a smaller ``note`` under it), both wrapped, with a top margin that holds them."""
    lines = wrap_title(title, _TITLE_CHARS).split("<br>")
    notes = [f"<sup>{line}</sup>" for line in wrap_title(note, _NOTE_CHARS).split("<br>")] if note else []
    figure.update_layout(
        title="<br>".join(lines + notes), margin={"t": 40 + 24 * len(lines) + 16 * len(notes)}, **layout
    )
    return figure


def learning_rate_figure(choice: pd.DataFrame, setting: str) -> go.Figure:
    """Each configuration's validation criterion (lower is better) against the learning rate.

    A ring marks the choice.
    """
    part = choice[choice["config"].str.startswith(f"{setting}.")]
    figure = go.Figure()
    for i, (config, rows) in enumerate(part.groupby("config", sort=False)):
        rows = rows.sort_values("lr")
        color = _PALETTE[i % len(_PALETTE)]
        figure.add_trace(
            scatter_trace(
                rows["lr"],
                rows["criterion"],
                config.split(".", 1)[1],
                mode="lines+markers",
                line={"color": color},
                legendgroup=config,
            )
        )
        picked = rows[rows["chosen"]]
        figure.add_trace(
            scatter_trace(
                picked["lr"],
                picked["criterion"],
                mode="markers",
                showlegend=False,
                legendgroup=config,
                marker={"size": 14, "symbol": "circle-open", "color": color, "line": {"width": 2}},
                hovertemplate="chosen: lr %{x:g}<extra></extra>",
            )
        )
    regression = setting.startswith("reg")
    note = (
        "mean normalised validation MSE"
        if regression
        else "validation Δm% (single-task baselines: their own metric, signed)"
    )
    return _titled(
        figure,
        f"{setting}: validation criterion against the learning rate (ring: the chosen rate)",
        f"{note}; lower is better",
        xaxis={"type": "log", "title": "learning rate"},
        yaxis_title="validation MSE (norm.)" if regression else "validation Δm%",
        legend_title_text="method",
    )


def claim_figure(ledger: pd.DataFrame, claim: str) -> go.Figure:
    """Every part of ``claim``: its estimate and 95 % interval, the threshold (dashed) and the verdict (colour)."""
    if claim not in CLAIMS:
        raise ValueError(f"unknown claim {claim!r}; claims: {list(CLAIMS)}")
    parts = ledger[(ledger["claim"] == claim) & (ledger["part"] != "(claim)")].iloc[::-1]
    colors = {"supported": "#2ca02c", "not supported": "#d62728", "inconclusive": "#7f7f7f"}
    figure = go.Figure()
    for verdict, rows in parts.groupby("verdict", sort=False):
        figure.add_trace(
            scatter_trace(
                rows["estimate"],
                rows["part"],
                str(verdict),
                mode="markers",
                marker={"color": colors[str(verdict)], "size": 9},
                error_x=interval_whisker(rows),
                customdata=np.stack([rows["low"], rows["high"], rows["seeds"]], axis=1),
                hovertemplate="%{y}<br>%{x:.4g} [%{customdata[0]:.4g}, %{customdata[1]:.4g}], "
                "%{customdata[2]} seeds<extra></extra>",
            )
        )
    for threshold in pd.unique(parts["threshold"]):
        figure.add_vline(x=float(threshold), line_dash="dash", line_color="gray")
    verdict = ledger[(ledger["claim"] == claim) & (ledger["part"] == "(claim)")]["verdict"]
    return _titled(
        figure,
        f"{claim}: {CLAIMS[claim]} — {verdict.iloc[0] if len(verdict) else '?'}",
        xaxis_title="effect: estimate and 95 % interval over seeds",
        height=max(360, 34 * len(parts) + 200),
        legend_title_text="part verdict",
    )


def balance_figure(
    balance: pd.DataFrame, choice: pd.DataFrame, setting: str, *, statistic: str = "imbalance"
) -> go.Figure:
    """Per method of ``setting``: the worst shared layer's ``imbalance`` (or ``largest_share``) at every recorded
    step, mean over the final seeds with a min–max band; the dashed line is M1's bound."""
    picked = choice[choice["chosen"]][["config", "lr"]]
    rows = balance.merge(picked, on=["config", "lr"])
    rows = rows[rows["config"].str.startswith(f"{setting}.")]
    worst = rows.groupby(["config", "seed", "step"])[statistic].max().reset_index()
    figure = go.Figure()
    for i, (config, part) in enumerate(worst.groupby("config", sort=False)):
        stats = part.groupby("step")[statistic].agg(["mean", "min", "max"]).reset_index()
        color = _PALETTE[i % len(_PALETTE)]
        figure.add_trace(band(stats["step"], stats["min"], stats["max"], color=color, opacity=0.15, group=config))
        figure.add_trace(
            scatter_trace(
                stats["step"], stats["mean"], config.split(".", 1)[1], line={"color": color}, legendgroup=config
            )
        )
    if statistic == "imbalance":
        figure.add_hline(y=BALANCE_THRESHOLD, line_dash="dash", line_color="gray")
    label = "imbalance index" if statistic == "imbalance" else "largest task share"
    return _titled(
        figure,
        f"{setting}: the worst shared layer's {label} at every recorded step",
        "the largest over the shared layers; mean over seeds, band: min–max",
        xaxis_title="step",
        yaxis_title=f"worst {'imbalance' if statistic == 'imbalance' else 'share'}",
        yaxis={"range": [0, 1]},
        legend_title_text="method",
    )


def spread_figure(runs: pd.DataFrame, choice: pd.DataFrame, setting: str = "mm4") -> go.Figure:
    """P3: each method's distance of the shared parameters from their start and path length (mean, 95 % interval)."""
    picked = choice[choice["chosen"]][["config", "lr"]]
    final = runs[
        (runs["status"] == "ok")
        & runs["config"].str.startswith(f"{setting}.")
        & ~runs["variant"].str.startswith(SINGLE_TASK_PREFIX)
    ]
    final = final.merge(picked, on=["config", "lr"])
    figure = go.Figure()
    for quantity, color in (("distance", "#1f77b4"), ("path_length", "#ff7f0e")):
        rows = []
        for variant, part in final.groupby("variant", sort=False):
            interval = mean_interval(part[quantity].to_numpy())
            rows.append((variant, interval.estimate, interval.low, interval.high))
        table = pd.DataFrame(rows, columns=["variant", "estimate", "low", "high"])
        figure.add_trace(
            scatter_trace(
                table["variant"],
                table["estimate"],
                quantity.replace("_", " "),
                mode="markers",
                marker={"color": color, "size": 9},
                error_y=interval_whisker(table),
            )
        )
    return _titled(
        figure,
        f"{setting}: how far the shared parameters went",
        "mean and 95 % interval over seeds; each method at its chosen rate",
        yaxis={"type": "log", "title": "Euclidean norm"},
        xaxis_title="method",
    )


def compute_figure(
    delta_m_runs: pd.DataFrame, runs: pd.DataFrame, choice: pd.DataFrame, design: StudyDesign
) -> go.Figure:
    """P4: Δm% against seconds per epoch for group sizes 1 (IUS) … T (Adam on the sum), one dot per seed."""
    points = grouping_points(design)
    picked = choice[choice["chosen"]][["config", "lr"]]
    final = runs[runs["status"] == "ok"].merge(picked, on=["config", "lr"])
    merged = delta_m_runs.merge(final[["config", "seed", "seconds_per_epoch"]], on=["config", "seed"])
    figure = go.Figure()
    for i, (config, size) in enumerate(sorted(points.items(), key=lambda kv: kv[1])):
        part = merged[merged["config"] == config]
        figure.add_trace(
            scatter_trace(
                part["seconds_per_epoch"],
                part["delta_m"],
                f"s = {size} ({config.split('.', 1)[1]})",
                mode="markers",
                marker={"size": 9, "color": _PALETTE[i % len(_PALETTE)]},
                hovertemplate="seed %{text}<br>%{x:.2f} s/epoch, Δm %{y:.2f}%<extra></extra>",
                text=part["seed"],
            )
        )
    return _titled(
        figure,
        "P4: Δm% against compute for group sizes s",
        "one dot per seed; lower and left is better",
        xaxis_title="seconds per epoch (training steps only)",
        yaxis_title="Δm (%)",
        legend_title_text="group size",
    )


def validation_curve(scores: pd.DataFrame, choice: pd.DataFrame, config: str, design: StudyDesign) -> pd.DataFrame:
    """Per seed and evaluation step: ``config``'s validation Δm% against the baselines' final validation metrics
    (at their chosen rates, mean over seeds) — or, for the regression, its mean normalised validation MSE."""
    picked = choice[choice["chosen"]][["config", "lr"]]
    val = scores[scores["split"] == "val"].merge(picked, on=["config", "lr"])
    rows = val[val["config"] == config]
    if config.startswith("reg"):
        return rows.groupby(["seed", "step"])["value"].mean().rename("criterion").reset_index()
    last = val.groupby(["config", "seed"])["step"].transform("max")
    final = val[(val["step"] == last) & val["config"].str.contains(f".{SINGLE_TASK_PREFIX}", regex=False)]
    # Keyed by (task, metric): a task of your problem may have several metrics.
    reference = final.groupby(["task", "metric"]).agg(value=("value", "mean"), higher=("higher_is_better", "first"))
    out = []
    for (seed, step), part in rows.groupby(["seed", "step"]):
        values = dict(zip(zip(part["task"], part["metric"]), part["value"]))
        out.append(
            {
                "seed": seed,
                "step": step,
                "criterion": delta_m(
                    values,
                    {k: float(reference.loc[k, "value"]) for k in values},
                    {k: bool(reference.loc[k, "higher"]) for k in values},
                ),
            }
        )
    return pd.DataFrame(out, columns=["seed", "step", "criterion"])


def validation_curve_figure(curve: pd.DataFrame, config: str) -> go.Figure:
    """One line per seed of :func:`validation_curve`, and their mean."""
    figure = go.Figure()
    for seed, part in curve.groupby("seed"):
        figure.add_trace(scatter_trace(part["step"], part["criterion"], f"seed {seed}", opacity=0.5))
    mean = curve.groupby("step")["criterion"].mean()
    figure.add_trace(scatter_trace(mean.index, mean.to_numpy(), "mean", line={"color": "black", "width": 3}))
    label = "validation MSE (norm.)" if config.startswith("reg") else "validation Δm%"
    note = (
        "mean normalised validation MSE"
        if config.startswith("reg")
        else "validation Δm% against the single-task baselines"
    )
    return _titled(
        figure,
        f"{config}: the validation curve at its chosen learning rate",
        f"{note}; lower is better",
        xaxis_title="step",
        yaxis_title=label,
    )


class _ClaimViews:
    """What the two claims explorers share: a claim above its view, a configuration above its views and a last
    control of the explorer's own above its view, each view drawn now and again whenever its control changes;
    ``widget`` (the controls and views), ``figures`` (the current views, the claim's under ``"claim"``) and how a
    notebook shows them."""

    widget: widgets.Widget
    figures: dict[str, go.Figure]

    def __init__(
        self,
        claim_figure: Callable[[str], go.Figure],
        configs: Sequence[str],
        config_views: tuple[Sequence[str], Callable[[], None]],
        last: tuple[widgets.Dropdown, str, Callable[[], None]],
    ) -> None:
        """``claim_figure(claim)`` draws a claim; ``configs`` are the configurations to pick from (``mm4.mao`` first
        when there); ``config_views`` names the views under the configuration and draws them; ``last`` is the last
        control, its view's name and what draws it."""
        self.claim = widgets.Dropdown(options=list(CLAIMS), value="M2", description="claim")
        self.config = widgets.Dropdown(
            options=configs, value="mm4.mao" if "mm4.mao" in configs else configs[0], description="method"
        )
        (under_config, draw_config), (control, view, draw_last) = config_views, last
        self.views = {name: widgets.Output() for name in ("claim", *under_config, view)}
        self.widget = widgets.VBox(
            [
                self.claim,
                self.views["claim"],
                self.config,
                *(self.views[v] for v in under_config),
                control,
                self.views[view],
            ]
        )
        self.figures = {}
        drawers = (
            (self.claim, lambda: self._show("claim", claim_figure(str(self.claim.value)))),
            (self.config, draw_config),
            (control, draw_last),
        )
        for dropdown, draw in drawers:
            dropdown.observe(lambda _, draw=draw: draw(), names="value")
        for _, draw in drawers:
            draw()

    def static_figure(self) -> go.Figure:
        """The claim view shown now: the copy an HTML export shows (see :func:`mao_lab.notebook.display_live`)."""
        return self.figures["claim"]

    def _ipython_display_(self) -> None:  # pragma: no cover - needs a notebook front-end
        from IPython.display import display

        display(self.widget)

    def _show(self, view: str, figure: go.Figure) -> None:
        """Show ``figure`` in the view named ``view``, and keep it in :attr:`figures`."""
        self.figures[view] = figure
        show_figure(self.views[view], figure)


class ClaimsExplorer(_ClaimViews):
    """Pick a claim (its parts' intervals), a configuration (its validation curve and balance over steps) and a
    task (every method's validation metric of that task over the steps).

    Built and driven without a browser (set a control's ``.value``); ``figures`` holds the current views.
    """

    def __init__(self, study: Mapping[str, Any]) -> None:
        self.study = study
        design: StudyDesign = study["design"]
        choice = study["learning_rates"]
        configs = [str(c) for c in pd.unique(choice["config"])]
        tasks = sorted({t for c in design.configs() for t in c.tasks})
        self.task = widgets.Dropdown(options=tasks, value=tasks[0], description="task")
        super().__init__(
            lambda claim: claim_figure(study["ledger"], claim),
            configs,
            (("curve", "balance"), self._draw_config),
            (self.task, "task", self._draw_task),
        )

    def _draw_config(self) -> None:
        config = str(self.config.value)
        curve = validation_curve(self.study["scores"], self.study["learning_rates"], config, self.study["design"])
        self._show("curve", validation_curve_figure(curve, config))
        setting = config.split(".", 1)[0]
        balance = self.study["balance"][self.study["balance"]["config"] == config]
        self._show("balance", balance_figure(balance, self.study["learning_rates"], setting))

    def _draw_task(self) -> None:
        task = str(self.task.value)
        picked = self.study["learning_rates"][self.study["learning_rates"]["chosen"]][["config", "lr"]]
        val = self.study["scores"][
            (self.study["scores"]["split"] == "val") & (self.study["scores"]["task"] == task)
        ].merge(picked, on=["config", "lr"])
        figure = go.Figure()
        for i, (config, part) in enumerate(val.groupby("config", sort=False)):
            mean = part.groupby("step")["value"].mean()
            figure.add_trace(
                scatter_trace(mean.index, mean.to_numpy(), config, line={"color": _PALETTE[i % len(_PALETTE)]})
            )
        metric = str(val["metric"].iloc[0]) if len(val) else ""
        _titled(
            figure,
            f"{task}: validation {metric} over the steps",
            "mean over seeds; each method at its chosen rate",
            xaxis_title="step",
            yaxis_title=metric,
        )
        self._show("task", figure)


def final_table(study: Mapping[str, Any]) -> pd.DataFrame:
    """Final test metrics per configuration and task: mean over seeds (each at its chosen rate)."""
    final = final_runs(study["scores"], study["learning_rates"])
    return final.groupby(["config", "task", "metric"], sort=False)["value"].agg(["mean", "std", "count"]).reset_index()
