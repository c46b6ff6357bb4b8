r"""The analyses every experiment shares: who owns each shared layer, the imbalance over steps, Delta_m, result tables.

They read the recorder's tidy table (:mod:`mao_lab.recorder`) or a scores table (columns ``method, seed, step,
task, metric, value, higher_is_better``), whatever the problem.  The measures follow the MAO paper (Hervella
et al., *Neural Networks* 170, 2024; ``docs/references.md`` §1): the learning balance across *tasks* (each
task's share of a layer's update), across *layers* (the imbalance index per shared layer) and across
*training steps* (the imbalance index over time).

Delta_m (``docs/references.md`` §6), with ``B`` the single-task baseline:

.. math::

    \Delta_m = \frac{100}{T} \sum_t \frac{1}{M_t} \sum_m (-1)^{s_{tm}} \frac{M_{tm} - B_{tm}}{B_{tm}},
    \qquad s_{tm} = 1 \text{ where higher is better,}

so a *negative* Delta_m means better than the baselines on average.  The mean is LibMTL's: first over
each task's metrics, then over the tasks (with one metric per task it equals Nash-MTL's flat mean;
LibMTL's own ``count_improvement`` reports the opposite sign).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from .._validate import Choice, Number, require
from ..recorder import by_module
from ._labels import SINGLE_TASK, method_label, parse_run_name

__all__ = [
    "balance_summary",
    "delta_m",
    "delta_m_table",
    "imbalance_by_method",
    "imbalance_over_steps",
    "largest_shares",
    "layer_ownership",
    "method_ownership",
    "module_level",
    "multimnist_results",
    "results_wide",
    "shared_layers",
]

Key = str | tuple[str, str]
OWNERSHIP_COLUMNS = ["run", "layer", "task", "share", "owner", "owner_share", "imbalance", "num_tasks"]


# -- who owns each shared layer ---------------------------------------------------------------------------


def module_level(frame: pd.DataFrame) -> pd.DataFrame:
    """:func:`mao_lab.recorder.by_module`, keeping the runs in the order they come in the table.

    (``by_module`` itself returns the runs sorted by name.)
    """
    if "run" not in frame.columns:
        return by_module(frame)
    order = [str(r) for r in pd.unique(frame["run"].dropna().astype(str))]
    modules = by_module(frame)
    modules["run"] = pd.Categorical(modules["run"].astype(str), categories=order)
    return modules.sort_values("run", kind="stable", ignore_index=True)


def shared_layers(frame: pd.DataFrame) -> list[str]:
    """The shared layers of a recorder table, in the model's order."""
    rows = frame[(frame["kind"] == "shared") & (frame["metric"] == "update_share")]
    return [str(layer) for layer in pd.unique(rows["layer"].dropna())]


def _with_run(frame: pd.DataFrame) -> pd.DataFrame:
    return frame if "run" in frame.columns else frame.assign(run="run")


def layer_ownership(frame: pd.DataFrame, *, level: str = "module", tail: float = 0.5) -> pd.DataFrame:
    """Each task's mean share of each shared layer's update, over the last ``tail`` of the recorded steps.

    Args:
        frame: a recorder table, with or without a ``run`` column.
        level: ``"module"`` (a layer's weight and bias together) or ``"parameter"``.
        tail: the fraction of the recorded steps (the latest ones) to average over; 1 = all.

    Returns:
        One row per (run, layer, task): ``share`` (mean share), ``owner`` (the task with the largest
        share of that layer), ``owner_share``, ``imbalance`` (the layer's mean imbalance index, 0 =
        balanced, 1 = one task owns it) and ``num_tasks``.

    >>> frame = pd.DataFrame({"step": [0, 0], "layer": "w", "module": "(model)", "kind": "shared",
    ...                       "task": ["a", "b"], "other_task": None, "metric": "update_share", "value": [0.9, 0.1]})
    >>> layer_ownership(frame, level="parameter")[["layer", "task", "share", "owner"]].values.tolist()
    [['w', 'a', 0.9, 'a'], ['w', 'b', 0.1, 'a']]
    """
    require("level", level, Choice(("module", "parameter")))
    require("tail", tail, Number(positive=True, max=1))
    frame = _with_run(frame)
    if level == "module":
        frame = module_level(frame)
    parts = []
    for run, rows in frame.groupby("run", sort=False, observed=True):
        steps = np.sort(rows["step"].unique())
        kept = steps[int(math.floor(len(steps) * (1 - tail))) :]
        rows = rows[rows["step"].isin(kept)]
        shares = rows[rows["metric"] == "update_share"]
        counts = shares.groupby("layer", observed=True)["task"].nunique()
        multi = set(counts[counts > 1].index.astype(str))  # reached by several tasks: shared
        shares = shares[shares["layer"].astype(str).isin(multi)]
        mean = (
            shares.groupby(["layer", "task"], sort=False, observed=True)["value"].mean().rename("share").reset_index()
        )
        imbalance = rows[rows["metric"] == "imbalance"].groupby("layer", observed=True)["value"].mean()
        mean["layer"] = mean["layer"].astype(str)
        mean["task"] = mean["task"].astype(str)
        top = mean.loc[mean.groupby("layer", sort=False)["share"].idxmax()].set_index("layer")
        mean["owner"] = mean["layer"].map(top["task"])
        mean["owner_share"] = mean["layer"].map(top["share"])
        mean["imbalance"] = mean["layer"].map({str(k): v for k, v in imbalance.items()})
        mean["num_tasks"] = mean["layer"].map(mean.groupby("layer")["task"].nunique())
        parts.append(mean.assign(run=str(run)))
    if not parts:
        return pd.DataFrame(columns=["run", "layer", "task", "share", "owner", "owner_share", "imbalance", "num_tasks"])
    table = pd.concat(parts, ignore_index=True)
    return table[["run", "layer", "task", "share", "owner", "owner_share", "imbalance", "num_tasks"]]


def method_ownership(ownership: pd.DataFrame) -> pd.DataFrame:
    """:func:`layer_ownership` of ``<method>-seed<k>`` runs averaged over the seeds: one ``run`` per method.

    The shares and imbalance are seed means; ``owner`` and ``owner_share`` are recomputed from the mean shares.
    """
    parsed = ownership["run"].map(parse_run_name)
    frame = ownership.assign(run=parsed.str[0])
    mean = (
        frame.groupby(["run", "layer", "task"], sort=False)
        .agg(share=("share", "mean"), imbalance=("imbalance", "mean"), num_tasks=("num_tasks", "first"))
        .reset_index()
    )
    top = mean.loc[mean.groupby(["run", "layer"], sort=False)["share"].idxmax()].set_index(["run", "layer"])
    index = pd.MultiIndex.from_frame(mean[["run", "layer"]])
    mean["owner"] = top["task"].reindex(index).to_numpy()
    mean["owner_share"] = top["share"].reindex(index).to_numpy()
    return mean[["run", "layer", "task", "share", "owner", "owner_share", "imbalance", "num_tasks"]]


def largest_shares(ownership: pd.DataFrame) -> dict[str, dict[str, dict[str, Any]]]:
    """``{method: {layer: {"task": owner, "share": its share}}}`` from :func:`method_ownership`'s table.

    >>> table = pd.DataFrame({"run": "sum", "layer": "trunk.0", "task": ["a", "b"], "share": [0.7, 0.3],
    ...                       "owner": "a", "owner_share": 0.7})
    >>> largest_shares(table)
    {'sum': {'trunk.0': {'task': 'a', 'share': 0.7}}}
    """
    result: dict[str, dict[str, dict[str, Any]]] = {}
    for (run, layer), part in ownership.groupby(["run", "layer"], sort=False):
        result.setdefault(str(run), {})[str(layer)] = {
            "task": str(part["owner"].iloc[0]),
            "share": float(part["owner_share"].iloc[0]),
        }
    return result


# -- imbalance over steps and layers ------------------------------------------------------------------


def _shared_imbalance(frame: pd.DataFrame) -> pd.DataFrame:
    rows = frame[frame["metric"] == "imbalance"]
    if "run" not in rows.columns:
        rows = rows.assign(run="run")
    return rows.assign(layer=rows["layer"].astype(str), run=rows["run"].astype(str))


def imbalance_over_steps(frame: pd.DataFrame) -> pd.DataFrame:
    """Per run and step, the imbalance index averaged over the shared layers (0 balanced, 1 one task owns all)."""
    rows = _shared_imbalance(frame)
    table = rows.groupby(["run", "step"], sort=False)["value"].mean().rename("imbalance").reset_index()
    return table.sort_values(
        ["run", "step"],
        kind="stable",
        key=lambda c: c if c.name == "step" else c.map({r: i for i, r in enumerate(pd.unique(rows["run"]))}),
    ).reset_index(drop=True)


def imbalance_by_method(frame: pd.DataFrame) -> pd.DataFrame:
    """Per method and recorded step, the imbalance index averaged over the shared layers: mean and std over seeds.

    ``frame`` is a recorder table of ``<method>-seed<k>`` runs (module or parameter level).
    """
    table = imbalance_over_steps(frame)
    table["method"] = table["run"].map(lambda r: parse_run_name(r)[0])
    return (
        table.groupby(["method", "step"], sort=False)["imbalance"]
        .agg(["mean", "std", "count"])
        .reset_index()
        .rename(columns={"count": "seeds"})
    )


def balance_summary(frame: pd.DataFrame, *, tail: float = 0.5) -> pd.DataFrame:
    """Per run and shared layer, over the last ``tail`` of the recorded steps: the mean imbalance index,
    the task with the largest mean share of the update (``dominant_task``) and that share.

    Layers in the model's order; one extra row per run with ``layer = "(all shared)"`` averages them.
    """
    require("tail", tail, Number(positive=True, max=1))
    frame = frame if "run" in frame.columns else frame.assign(run="run")
    rows = []
    for run, part in frame.groupby(frame["run"].astype(str), sort=False):
        steps = np.sort(part["step"].unique())
        part = part[part["step"].isin(steps[int(math.floor(len(steps) * (1 - tail))) :])]
        imbalance = part[part["metric"] == "imbalance"]
        layers = [str(x) for x in pd.unique(imbalance["layer"].dropna())]
        shares = part[(part["metric"] == "update_share") & part["layer"].astype(str).isin(layers)]
        mean_share = shares.groupby([shares["layer"].astype(str), shares["task"].astype(str)])["value"].mean()
        for layer in layers:
            layer_shares = (
                mean_share.loc[layer] if layer in mean_share.index.get_level_values(0) else pd.Series(dtype=float)
            )
            rows.append(
                {
                    "run": run,
                    "layer": layer,
                    "imbalance": float(imbalance[imbalance["layer"].astype(str) == layer]["value"].mean()),
                    "dominant_task": str(layer_shares.idxmax()) if len(layer_shares) else None,
                    "dominant_share": float(layer_shares.max()) if len(layer_shares) else math.nan,
                    "num_tasks": int(len(layer_shares)),
                }
            )
        if layers:
            mine = [r for r in rows if r["run"] == run]
            rows.append(
                {
                    "run": run,
                    "layer": "(all shared)",
                    "imbalance": float(np.mean([r["imbalance"] for r in mine])),
                    "dominant_task": pd.Series([r["dominant_task"] for r in mine]).mode().iloc[0],
                    "dominant_share": float(np.mean([r["dominant_share"] for r in mine])),
                    "num_tasks": int(max(r["num_tasks"] for r in mine)),
                }
            )
    return pd.DataFrame(rows, columns=["run", "layer", "imbalance", "dominant_task", "dominant_share", "num_tasks"])


# -- Delta_m and result tables -------------------------------------------------------------------------


def _as_key(key: Key) -> tuple[str, str]:
    return (key, "") if isinstance(key, str) else (str(key[0]), str(key[1]))


def delta_m(values: Mapping[Key, float], baseline: Mapping[Key, float], higher_is_better: Mapping[Key, bool]) -> float:
    """Delta_m in percent (``docs/references.md`` §6): the mean relative change against the baseline, signed so that
    *lower is better* (a negative value beats the baseline).

    Keys are task names (one metric per task) or ``(task, metric)`` pairs; the relative changes are averaged
    over each task's metrics first, then over the tasks (LibMTL's per-task mean).

    Args:
        values: the method's metrics.
        baseline: the single-task baseline's metrics, for the same keys (none may be 0).
        higher_is_better: for each key, whether a higher value is better (``s_tm = 1``).

    >>> delta_m({"acc": 0.9, "mae": 1.0}, {"acc": 0.8, "mae": 2.0}, {"acc": True, "mae": False})
    -31.25
    >>> delta_m({("a", "x"): 2.0, ("a", "y"): 4.0, ("b", "z"): 1.0},
    ...         {("a", "x"): 1.0, ("a", "y"): 4.0, ("b", "z"): 1.0},
    ...         {("a", "x"): False, ("a", "y"): False, ("b", "z"): False})
    25.0
    """
    keys = {_as_key(k): k for k in values}
    if not keys:
        raise ValueError("delta_m needs at least one metric")
    if set(values) != set(baseline) or not set(values) <= set(higher_is_better):
        odd = sorted(map(str, set(values) ^ set(baseline) | (set(values) - set(higher_is_better))))
        raise ValueError(
            f"values and baseline must have the same keys, and higher_is_better one for each; mismatch at {odd}"
        )
    by_task: dict[str, list[float]] = {}
    for (task, _), key in keys.items():
        value, base = float(values[key]), float(baseline[key])
        if base == 0 or not math.isfinite(base) or not math.isfinite(value):
            raise ValueError(
                f"metric {key!r}: the baseline must be finite and non-zero and the value finite, got {base} and {value}"
            )
        sign = -1.0 if higher_is_better[key] else 1.0
        by_task.setdefault(task, []).append(sign * (value - base) / base)
    return 100.0 * float(np.mean([np.mean(changes) for changes in by_task.values()]))


def _final(scores: pd.DataFrame) -> pd.DataFrame:
    """The rows of each run's last evaluation."""
    last = scores.groupby(["method", "seed"], sort=False)["step"].transform("max")
    return scores[scores["step"] == last]


def _baseline(scores: pd.DataFrame) -> pd.DataFrame:
    rows = _final(scores)
    rows = rows[rows["method"] == SINGLE_TASK]
    if rows.empty:
        raise ValueError(f"the scores hold no single-task baseline (method {SINGLE_TASK!r})")
    return rows.groupby(["task", "metric"], sort=False).agg(
        value=("value", "mean"), higher_is_better=("higher_is_better", "first")
    )


def delta_m_table(scores: pd.DataFrame) -> pd.DataFrame:
    """:func:`delta_m` of every multi-task run (final scores) against the single-task baselines' mean over seeds.

    Returns:
        One row per (method, seed): ``delta_m`` (%, lower is better) and, per task, the signed relative
        change in % that enters it (columns ``change_<task>``).
    """
    base = _baseline(scores)
    final = _final(scores)
    rows = []
    for (method, seed), part in final[final["method"] != SINGLE_TASK].groupby(["method", "seed"], sort=False):
        values = {(r.task, r.metric): r.value for r in part.itertuples()}
        missing = [k for k in values if k not in base.index]
        if missing:
            raise ValueError(f"no single-task baseline for {missing}")
        reference = {k: float(base.loc[k, "value"]) for k in values}
        higher = {k: bool(base.loc[k, "higher_is_better"]) for k in values}
        row: dict[str, Any] = {"method": method, "seed": int(seed), "delta_m": delta_m(values, reference, higher)}
        for key, value in values.items():
            row[f"change_{key[0]}"] = delta_m({key: value}, {key: reference[key]}, {key: higher[key]})
        rows.append(row)
    return pd.DataFrame(rows)


def multimnist_results(scores: pd.DataFrame) -> pd.DataFrame:
    """The tidy results table: per method (baselines included) and task, the final test metric's mean, std
    (over seeds, ``ddof=1``; NaN for one seed) and number of seeds; and per multi-task method one
    ``task = "(all)"``, ``metric = "delta_m"`` row (%, lower is better)."""
    final = _final(scores)
    order = list(pd.unique(final["method"]))
    table = (
        final.groupby(["method", "task", "metric"], sort=False)
        .agg(
            higher_is_better=("higher_is_better", "first"),
            mean=("value", "mean"),
            std=("value", "std"),
            seeds=("seed", "nunique"),
        )
        .reset_index()
    )
    if (final["method"] == SINGLE_TASK).any() and (final["method"] != SINGLE_TASK).any():
        dm = delta_m_table(scores).groupby("method", sort=False)["delta_m"].agg(["mean", "std", "count"]).reset_index()
        dm = dm.rename(columns={"count": "seeds"}).assign(task="(all)", metric="delta_m", higher_is_better=False)
        table = pd.concat([table, dm[table.columns]], ignore_index=True)
    table["method"] = pd.Categorical(table["method"], categories=order)
    return table.sort_values("method", kind="stable", ignore_index=True).assign(
        method=lambda t: t["method"].astype(str)
    )


def _mean_std(row: pd.Series) -> str:
    digits = 2 if row["metric"] == "delta_m" else 4
    spread = "" if pd.isna(row["std"]) else f" ± {row['std']:.{digits}f}"
    return f"{row['mean']:.{digits}f}{spread}"


def results_wide(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`multimnist_results` for reading: methods (readable names) as rows, ``<task> <metric>`` columns in
    the tasks' order and Δm% last, cells ``mean ± std``.

    >>> table = pd.DataFrame({"method": ["mao", "mao"], "task": ["left", "(all)"], "metric": ["accuracy", "delta_m"],
    ...                       "higher_is_better": [True, False], "mean": [0.9, -1.0], "std": [0.01, 0.5], "seeds": 3})
    >>> results_wide(table).to_dict("index")
    {'MAO': {'left accuracy': '0.9000 ± 0.0100', 'Δm%': '-1.00 ± 0.50'}}
    """
    column = table["task"] + " " + table["metric"]
    column = column.where(table["metric"] != "delta_m", "Δm%")
    shown = table.assign(value=table.apply(_mean_std, axis=1), column=column)
    columns = [c for c in pd.unique(shown["column"]) if c != "Δm%"] + (
        ["Δm%"] if (shown["column"] == "Δm%").any() else []
    )
    wide = shown.pivot(index="method", columns="column", values="value").reindex(
        index=list(pd.unique(table["method"])), columns=columns
    )
    wide.index = [method_label(m) for m in wide.index]
    wide.columns.name = None
    return wide.fillna("")
