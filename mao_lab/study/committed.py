"""The claims study as committed in ``docs/claims``: its small tables, figures drawn from them, and an explorer.

A fresh clone has no study (``make study`` takes about 80 minutes) but ``docs/claims`` holds its ledger
(``ledger.json``) and the small tables written beside it: each method's Δm% interval and chosen learning rate
(``methods.csv``), each configuration's validation criterion at every evaluation, averaged over the seeds
(``validation.csv``), the levelling-off reading (``levelling.csv``) and the same reading at shorter budgets
(``budgets.csv``).  Notebook 05 draws every figure it can from those: the per-run tables (every learning rate's
criterion, balance at every recorded step, each run's distance and seconds per epoch) are not committed, so
the figures that need them are replaced by the nearest figure the committed tables allow, and each says so.

It also makes the ledger readable by a class: :data:`SETTINGS` defines the settings named in the parts,
:func:`readable_claim_figure` gives a claim's figure an axis with its unit, labelled thresholds and verdicts told
apart by marker shape as well as colour, and :func:`verdict_label` writes a verdict with a sign.

>>> verdict_label("not supported")
'✗ not supported'
>>> sorted(SETTINGS)[:2]
['mm4', 'mm_diff']
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import pandas as pd
import plotly.graph_objects as go

from ..experiments import delta_m_figure
from ..experiments._figures import interval_whisker, scatter_trace
from ._analysis import BALANCE_THRESHOLD, grouping_points
from ._design import StudyDesign
from ._figures import _PALETTE, _ClaimViews, _titled, claim_figure
from ._ledger import load_ledger

__all__ = [
    "CLAIM_UNITS",
    "COMMITTED_TABLES",
    "SETTINGS",
    "CommittedExplorer",
    "balance_summary_figure",
    "chosen_rate_figure",
    "grouping_figure",
    "load_committed",
    "readable_claim_figure",
    "settings_markdown",
    "validation_levels_figure",
    "verdict_label",
]

COMMITTED_TABLES = ("methods", "validation", "levelling", "budgets")
"""The CSV files written beside ``ledger.json`` (:func:`~mao_lab.study.write_ledger`) that 05 reads."""

SETTINGS: dict[str, str] = {
    "mm4": "MultiMNIST, four tasks: left digit, right digit, digit sum, reconstruction",
    "mm_same": "MultiMNIST, two tasks of one nature: left digit, right digit",
    "mm_diff": "MultiMNIST, three tasks of different natures: left digit, digit sum, reconstruction",
    "reg2": "GradNorm's imbalanced regression with 2 tasks (task scales differ up to 100×)",
    "reg4": "GradNorm's imbalanced regression with 4 tasks",
    "reg8": "GradNorm's imbalanced regression with 8 tasks",
}
"""What each setting named in the ledger is (``mao_lab/study/_design.py`` defines them)."""

CLAIM_UNITS: dict[str, str] = {
    "M1": "imbalance index (0: tasks move a layer equally, 1: one task alone)",
    "M2": "difference of Δm%, percentage points (below 0: MAO better)",
    "P1": "difference of Δm%, percentage points (below 0: IUS / IO better)",
    "P2": "difference of benefits over sum, Δm% points (above 0: as claimed)",
    "P3": "difference of Euclidean norms of the shared parameters",
    "P4": "slope per task in a group: Δm% points, or seconds per epoch",
}
"""The x-axis of each claim's figure: what its parts' estimates measure, with their unit."""

_VERDICT_SIGNS = {"supported": "✓", "not supported": "✗", "inconclusive": "?"}
_VERDICT_SYMBOLS = {"supported": "circle", "not supported": "x", "inconclusive": "diamond-open"}


def verdict_label(verdict: str) -> str:
    """The verdict with a sign (✓, ✗, ?), so that it reads without colour."""
    return f"{_VERDICT_SIGNS.get(str(verdict), '')} {verdict}".strip()


def settings_markdown(settings: Sequence[str] | None = None) -> str:
    """A Markdown table defining ``settings`` (default: all of :data:`SETTINGS`)."""
    names = list(SETTINGS) if settings is None else [s for s in settings if s in SETTINGS]
    rows = [f"| `{name}` | {SETTINGS[name]} |" for name in names]
    return "\n".join(["| setting | tasks |", "| --- | --- |", *rows])


def load_committed(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The ledger, design, provenance and the small tables kept in ``folder`` (e.g. ``docs/claims``).

    A table missing from the folder is ``None`` (an older ledger folder holds ``ledger.json`` only).

    Raises:
        FileNotFoundError: when ``folder`` holds no ``ledger.json``.
    """
    data = load_ledger(folder)
    for name in COMMITTED_TABLES:
        path = Path(folder) / f"{name}.csv"
        data[name] = pd.read_csv(path) if path.is_file() else None
    return data


def readable_claim_figure(ledger: pd.DataFrame, claim: str) -> go.Figure:
    """:func:`~mao_lab.study.claim_figure` for a class: the x-axis names its unit, each dashed line says what it
    is, and the verdicts differ in marker shape (✓ circle, ✗ cross, ? open diamond) as well as colour."""
    figure = claim_figure(ledger, claim)
    for trace in figure.data:
        trace.marker.symbol = _VERDICT_SYMBOLS.get(str(trace.name), "circle")
        trace.marker.size = 11
        trace.name = verdict_label(str(trace.name))
    parts = ledger[(ledger["claim"] == claim) & (ledger["part"] != "(claim)")]
    thresholds = [float(t) for t in pd.unique(parts["threshold"])]
    values = pd.concat([parts["low"], parts["high"], parts["estimate"]]).astype(float).tolist() + thresholds
    middle = (min(values) + max(values)) / 2 if values else 0.0
    for i, threshold in enumerate(thresholds):
        sides = sorted(set(parts[parts["threshold"] == threshold]["direction"]))
        wanted = " / ".join("claim: left of it" if side == "less" else "claim: right of it" for side in sides)
        top = i % 2 == 0  # two lines close together: one label at the top, the other at the bottom
        figure.add_annotation(
            x=threshold,
            xref="x",
            y=1 if top else 0,
            yref="paper",
            yanchor="top" if top else "bottom",
            xanchor="left" if threshold <= middle else "right",  # the label stays on the plot
            showarrow=False,
            font={"size": 11, "color": "gray"},
            text=f" dashed: threshold {threshold:g} ({wanted}) ",
        )
    figure.update_layout(xaxis_title=CLAIM_UNITS.get(claim, "effect"))
    verdict = ledger[(ledger["claim"] == claim) & (ledger["part"] == "(claim)")]["verdict"]
    if len(verdict):
        title = figure.layout.title.text
        head, _, tail = title.rpartition(
            str(verdict.iloc[0])
        )  # the verdict ends the title (perhaps after a line break)
        figure.update_layout(title_text=f"{head}{verdict_label(verdict.iloc[0])}{tail}" if head else title)
    return figure


def chosen_rate_figure(methods: pd.DataFrame, design: StudyDesign) -> go.Figure:
    """Each configuration's chosen learning rate, on the study's grid (from ``methods.csv``).

    Drawn from the committed tables: the validation criterion at every rate of the grid is in the study's own
    tables only (``make study``; then 05 draws it)."""
    figure = go.Figure()
    for i, (setting, rows) in enumerate(methods.groupby("setting", sort=False)):
        figure.add_trace(
            scatter_trace(
                rows["config"],
                rows["chosen_lr"],
                setting,
                mode="markers",
                marker={"size": 11, "color": _PALETTE[i % len(_PALETTE)]},
                hovertemplate="%{x}: lr %{y:g}<extra></extra>",
            )
        )
    lrs = sorted(float(lr) for lr in design.lrs)
    return _titled(
        figure,
        "The learning rate chosen for every method (tuning seed, validation split)",
        "from docs/claims/methods.csv; the criterion at every rate needs the study's tables (make study)",
        xaxis_title="configuration (setting.method)",
        legend_title_text="setting",
        yaxis={"type": "log", "title": "chosen learning rate", "tickvals": lrs, "ticktext": [f"{lr:g}" for lr in lrs]},
    )


def validation_levels_figure(validation: pd.DataFrame, configs: Sequence[str], title: str = "") -> go.Figure:
    """Each configuration's validation criterion over the steps, mean over seeds (``validation.csv``)."""
    figure = go.Figure()
    for i, config in enumerate(configs):
        rows = validation[validation["config"] == config].sort_values("step")
        width = 3 if i == 0 else 1.5
        figure.add_trace(
            scatter_trace(
                rows["step"],
                rows["criterion"],
                config,
                mode="lines+markers",
                line={"color": _PALETTE[i % len(_PALETTE)], "width": width},
            )
        )
    regression = all(str(c).startswith("reg") for c in configs)
    label = "validation MSE (norm.)" if regression else "validation Δm%"
    note = "mean normalised validation MSE" if regression else "validation Δm% against the single-task baselines"
    return _titled(
        figure,
        title or f"{', '.join(configs)}: validation criterion over the steps",
        f"{note}, mean over seeds; lower is better",
        xaxis_title="step",
        yaxis_title=label,
        legend_title_text="configuration",
    )


def balance_summary_figure(ledger: pd.DataFrame) -> go.Figure:
    """M1 from the ledger: per setting, MAO's worst imbalance (mean and 95 % interval over seeds) and Adam on
    the sum's mean (MAO's mean minus the paired mean difference: equal means, since every seed has both)."""
    parts = ledger[ledger["claim"] == "M1"]
    own = parts[parts["part"].str.contains("MAO's worst imbalance", regex=False)]
    differences = parts[parts["part"].str.contains("MAO − sum", regex=False)]
    settings = [str(p).split(":", 1)[0] for p in own["part"]]
    difference = {str(p).split(":", 1)[0]: float(e) for p, e in zip(differences["part"], differences["estimate"])}
    figure = go.Figure()
    figure.add_trace(
        scatter_trace(
            settings,
            own["estimate"],
            "MAO",
            mode="markers",
            marker={"size": 11, "color": _PALETTE[0]},
            error_y=interval_whisker(own),
        )
    )
    sums = [float(e) - difference[s] for s, e in zip(settings, own["estimate"]) if s in difference]
    figure.add_trace(
        scatter_trace(
            [s for s in settings if s in difference],
            sums,
            "Adam on the sum",
            mode="markers",
            marker={"size": 11, "symbol": "square", "color": _PALETTE[1]},
        )
    )
    figure.add_hline(
        y=BALANCE_THRESHOLD,
        line_dash="dash",
        line_color="gray",
        annotation_text=f"M1's bound {BALANCE_THRESHOLD:g}",
        annotation_position="top left",
    )
    return _titled(
        figure,
        "M1: the worst shared layer's imbalance over training, per setting",
        "mean over seeds (MAO: with its 95 % interval); from the ledger — balance at every step needs make study",
        xaxis_title="setting",
        yaxis={"range": [0, 1.05], "title": "worst imbalance"},
        legend_title_text="method",
    )


def grouping_figure(methods: pd.DataFrame, design: StudyDesign) -> go.Figure:
    """P4 from ``methods.csv``: Δm% (mean, 95 % interval) against the group size s (1: IUS … T: Adam on the sum)."""
    points = grouping_points(design)
    rows = methods[methods["config"].isin(points)].assign(size=lambda t: t["config"].map(points)).sort_values("size")
    figure = go.Figure(
        scatter_trace(
            rows["size"],
            rows["estimate"],
            "Δm%",
            mode="lines+markers",
            marker={"size": 11},
            text=rows["variant"],
            error_y=interval_whisker(rows),
            hovertemplate="s = %{x} (%{text}): Δm %{y:.2f}%<extra></extra>",
        )
    )
    return _titled(
        figure,
        "P4: Δm% against the group size s (s = 1: IUS, s = 4: Adam on the sum)",
        "mean and 95 % interval over seeds, from methods.csv; seconds per epoch need make study",
        xaxis={"title": "tasks per group s", "tickvals": rows["size"].tolist()},
        yaxis_title="Δm (%)",
    )


class CommittedExplorer(_ClaimViews):
    """The claims explorer on the committed tables: pick a claim (its parts' intervals), a configuration
    (its mean validation curve beside Adam on the sum's) and a setting (every method's Δm%).

    Built and driven without a browser (set a control's ``.value``); ``figures`` holds the current views, and
    :meth:`static_figure` the claim view (for :func:`mao_lab.notebook.display_live`).
    """

    def __init__(self, committed: Mapping[str, Any]) -> None:
        self.committed = committed
        validation: pd.DataFrame = committed["validation"]
        methods: pd.DataFrame = committed["methods"]
        configs = [str(c) for c in pd.unique(validation["config"])]
        settings = [str(s) for s in pd.unique(methods["setting"])]
        self.setting = widgets.Dropdown(options=settings, value=settings[0], description="setting")
        super().__init__(
            lambda claim: readable_claim_figure(committed["ledger"], claim),
            configs,
            (("curve",), self._draw_config),
            (self.setting, "setting", self._draw_setting),
        )

    def _draw_config(self) -> None:
        config = str(self.config.value)
        reference = f"{config.split('.', 1)[0]}.sum"
        configs = [config] + (
            [reference] if reference != config and reference in set(self.committed["validation"]["config"]) else []
        )
        title = f"{config}: the validation curve at its chosen learning rate"
        self._show("curve", validation_levels_figure(self.committed["validation"], configs, title))

    def _draw_setting(self) -> None:
        self._show("setting", delta_m_figure(self.committed["methods"], setting=str(self.setting.value)))
