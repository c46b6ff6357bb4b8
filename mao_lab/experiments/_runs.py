r"""Find saved recorder runs anywhere under some folders, load them together, and summarise their balance.

What ``04_balance_explorer`` opens.  A *run folder* is what :class:`mao_lab.recorder.Recorder` saves:
``params.json`` and ``metrics.parquet`` (or ``metrics.csv``, or the part files of a run that was
interrupted).  The notebooks keep theirs under ``<output_dir>/runs/<method>/`` and a batch sweep
(:func:`mao_lab.sweep.run_sweep`) writes one notebook output folder per grid point, so
:func:`find_run_dirs` searches every folder it is given recursively.

The summaries follow the analyses of the MAO paper (Hervella et al. 2024): the learning balance across
*tasks* (each task's share of a layer's update), across *layers* (the imbalance index per shared layer)
and across *training steps* (the imbalance index over time).
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from ..recorder import load_runs

__all__ = [
    "balance_summary",
    "find_run_dirs",
    "imbalance_by_layer_figure",
    "imbalance_over_steps",
    "imbalance_over_steps_figure",
    "is_run_dir",
    "load_balance_runs",
]


def is_run_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a recorder's log (a finished table or the parts of an interrupted run)."""
    path = Path(path)
    if not path.is_dir():
        return False
    return any((path / f"metrics{suffix}").is_file() for suffix in (".parquet", ".csv")) or any(
        path.glob("metrics.part-*")
    )


def find_run_dirs(patterns: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> dict[str, Path]:
    """The run folders at or under each pattern (a folder or a glob), named for display.

    A pattern that is itself a run folder gives that run, named by its folder; any other folder is
    searched recursively, and each run in it is named by its path below the folder (a ``runs``
    component is dropped: ``seed=1/runs/mao`` becomes ``seed=1/mao``).  Names are made unique.

    Raises:
        FileNotFoundError: naming the pattern that matched no run folder.

    >>> import tempfile
    >>> from mao_lab.recorder import save_run
    >>> from mao_lab.recorder._frame import empty_frame
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ("a/runs/mao", "b/runs/mao"):
    ...     _ = save_run(root / name, empty_frame(), {})
    >>> sorted(find_run_dirs([root]))
    ['a/mao', 'b/mao']
    """
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    found: dict[str, Path] = {}
    seen: set[Path] = set()
    for pattern in patterns:
        text = os.fspath(pattern)
        matches = sorted(Path(p) for p in glob.glob(text, recursive=True)) if glob.has_magic(text) else [Path(text)]
        runs: list[tuple[str, Path]] = []
        for match in matches:
            if is_run_dir(match):
                runs.append((match.resolve().name, match))
            elif match.is_dir():
                for metrics in sorted(match.rglob("metrics*")):
                    folder = metrics.parent
                    if is_run_dir(folder) and folder not in {f for _, f in runs}:
                        parts = [p for p in folder.relative_to(match).parts if p != "runs"]
                        runs.append(("/".join(parts) or folder.name, folder))
        if not runs:
            raise FileNotFoundError(
                f"no recorded run (a folder with metrics.parquet or metrics.csv) at or under {text!r}"
            )
        for name, folder in runs:
            key = folder.resolve()
            if key in seen:
                continue
            seen.add(key)
            unique, n = name, 2
            while unique in found:
                unique, n = f"{name} ({n})", n + 1
            found[unique] = folder
    return found


def load_balance_runs(patterns: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Load every run found by :func:`find_run_dirs` into one table with a ``run`` column.

    Returns:
        ``(metrics, runs)``: the combined recorder table, and one row per run with its ``run`` name,
        ``path``, number of recorded ``steps``, ``tasks`` and the scalar entries of its ``params.json``.
    """
    folders = find_run_dirs(patterns)
    metrics, params = load_runs(folders)
    rows = []
    for name, folder in folders.items():
        part = metrics[metrics["run"] == name]
        row: dict[str, Any] = {
            "run": name,
            "path": str(folder),
            "steps": int(part["step"].nunique()),
            "tasks": int(part["task"].dropna().nunique()),
        }
        for key, value in params.get(name, {}).items():
            if isinstance(value, (int, float, str, bool)) or value is None:
                row.setdefault(key, value)
            elif isinstance(value, Sequence):
                row.setdefault(key, ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value))
        rows.append(row)
    return metrics, pd.DataFrame(rows)


def _shared_imbalance(frame: pd.DataFrame) -> pd.DataFrame:
    rows = frame[frame["metric"] == "imbalance"]
    if "run" not in rows.columns:
        rows = rows.assign(run="run")
    return rows.assign(layer=rows["layer"].astype(str), run=rows["run"].astype(str))


def imbalance_over_steps(frame: pd.DataFrame) -> pd.DataFrame:
    """Per run and step, the imbalance index averaged over the shared layers (0 balanced, 1 one task owns all)."""
    rows = _shared_imbalance(frame)
    table = rows.groupby(["run", "step"], sort=False)["value"].mean().rename("imbalance").reset_index()
    return table.sort_values(["run", "step"], kind="stable", key=lambda c: c if c.name == "step" else c.map(
        {r: i for i, r in enumerate(pd.unique(rows["run"]))})).reset_index(drop=True)


def balance_summary(frame: pd.DataFrame, *, tail: float = 0.5) -> pd.DataFrame:
    """Per run and shared layer, over the last ``tail`` of the recorded steps: the mean imbalance index,
    the task with the largest mean share of the update (``dominant_task``) and that share.

    Layers in the model's order; one extra row per run with ``layer = "(all shared)"`` averages them.
    """
    if not 0 < tail <= 1:
        raise ValueError(f"tail must be in (0, 1], got {tail!r}")
    frame = frame if "run" in frame.columns else frame.assign(run="run")
    rows = []
    for run, part in frame.groupby(frame["run"].astype(str), sort=False):
        steps = np.sort(part["step"].unique())
        part = part[part["step"].isin(steps[int(math.floor(len(steps) * (1 - tail))):])]
        imbalance = part[part["metric"] == "imbalance"]
        layers = [str(x) for x in pd.unique(imbalance["layer"].dropna())]
        shares = part[(part["metric"] == "update_share") & part["layer"].astype(str).isin(layers)]
        mean_share = shares.groupby([shares["layer"].astype(str), shares["task"].astype(str)])["value"].mean()
        for layer in layers:
            layer_shares = mean_share.loc[layer] if layer in mean_share.index.get_level_values(0) else pd.Series(dtype=float)
            rows.append({
                "run": run, "layer": layer,
                "imbalance": float(imbalance[imbalance["layer"].astype(str) == layer]["value"].mean()),
                "dominant_task": str(layer_shares.idxmax()) if len(layer_shares) else None,
                "dominant_share": float(layer_shares.max()) if len(layer_shares) else math.nan,
                "num_tasks": int(len(layer_shares)),
            })
        if layers:
            mine = [r for r in rows if r["run"] == run]
            rows.append({
                "run": run, "layer": "(all shared)",
                "imbalance": float(np.mean([r["imbalance"] for r in mine])),
                "dominant_task": pd.Series([r["dominant_task"] for r in mine]).mode().iloc[0],
                "dominant_share": float(np.mean([r["dominant_share"] for r in mine])),
                "num_tasks": int(max(r["num_tasks"] for r in mine)),
            })
    return pd.DataFrame(rows, columns=["run", "layer", "imbalance", "dominant_task", "dominant_share", "num_tasks"])


def imbalance_over_steps_figure(frame: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Lines: each run's imbalance index (mean over shared layers) over the training steps."""
    table = imbalance_over_steps(frame)
    figure = go.Figure()
    colors = qualitative.Plotly + qualitative.D3
    for i, (run, part) in enumerate(table.groupby("run", sort=False)):
        figure.add_trace(go.Scatter(x=part["step"], y=part["imbalance"], mode="lines", name=str(run),
                                    line={"color": colors[i % len(colors)]}))
    figure.update_layout(
        title=title or "Across steps: imbalance of the shared layers' updates (0 = balanced, 1 = one task owns them)",
        xaxis_title="step", yaxis_title="imbalance index (mean over shared layers)", yaxis={"range": [0, 1]},
        legend_title_text="run",
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
    text = [[f"{o} {s:.2f}" if isinstance(o, str) else "" for o, s in zip(orow, srow)]
            for orow, srow in zip(owner.to_numpy(), share.to_numpy())]
    figure = go.Figure(
        go.Heatmap(
            z=grid.to_numpy(), x=layers, y=runs, zmin=0, zmax=1, colorscale="Viridis", text=text,
            texttemplate="%{text}", colorbar={"title": {"text": "imbalance"}},
            hovertemplate="%{y}<br>%{x}<br>imbalance %{z:.3f}<br>largest share: %{text}<extra></extra>",
        )
    )
    figure.update_layout(
        title=title or "Across layers: mean imbalance per shared layer (text: the task with the largest share)",
        xaxis_title="shared layer", yaxis_title="run", yaxis={"autorange": "reversed"},
        height=max(300, 60 * len(runs) + 160),
    )
    return figure
