"""The notebooks' ``summary.json``, as tested functions.

Each ``*_summary`` function turns a notebook's result tables into the dictionary it saves as
``summary.json``.  The prose written from a summary lives in its notebook (the findings cell), which sets out
its sentences with :func:`findings_paragraph` and lists a summary's numbers with :func:`ranked`, so that no
number in a notebook's text comes from anywhere but its own run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from ..notebook import smoke_note
from ._analysis import largest_shares
from ._labels import method_label

__all__ = [
    "explorer_summary",
    "findings_paragraph",
    "landscape_summary",
    "multimnist_summary",
    "ranked",
    "regression_summary",
]


def _by_run(table: pd.DataFrame, column: str = "run") -> dict[str, pd.DataFrame]:
    return {str(key): part for key, part in table.groupby(column, sort=False)}


def _mean_imbalance(ownership: pd.DataFrame) -> dict[str, float]:
    """Per run: the imbalance index averaged over its shared layers (each layer counted once)."""
    return {run: float(part.groupby("layer")["imbalance"].first().mean()) for run, part in _by_run(ownership).items()}


def landscape_summary(
    pareto: pd.DataFrame, gaps: pd.DataFrame, gaps_default_eps: pd.DataFrame, **settings: Any
) -> dict[str, Any]:
    """Notebook 01: who reached the Pareto set from where, how far the others stopped, and the rescaling gaps.

    Args:
        pareto: :func:`~mao_lab.experiments.pareto_table`.
        gaps, gaps_default_eps: :func:`~mao_lab.experiments.rescaling_gap`'s gaps with the notebook's eps and 1e-8.
        settings: the run's parameters, saved as they are.

    >>> pareto = pd.DataFrame({"method": ["mao", "mao"], "x1_start": [0.0, 9.0], "x2_start": [0.0, 9.0],
    ...                        "reached": [True, False], "distance": [0.0, 0.5], "arc_distance": [0.0, 0.3],
    ...                        "conflict_band": [True, True]})
    >>> gaps = pd.DataFrame({"method": ["mao"], "max_gap": [1e-12], "final_x1_mean_scale_1": [2.0]})
    >>> summary = landscape_summary(pareto, gaps, gaps.assign(max_gap=1e-3), steps=10)
    >>> summary["reached_count"], summary["reached_from"], summary["final_distance"]["mao"]["(9, 9)"]
    ({'mao': 1}, {'mao': ['(0, 0)']}, 0.3)
    >>> summary["unreached_in_conflict_band"], summary["rescaling_max_gap_eps_1e-8"], summary["steps"]
    ({'mao': 1}, {'mao': 0.001}, 10)
    """

    def label(row: Any) -> str:
        return f"({row.x1_start:g}, {row.x2_start:g})"

    def per_method(table: pd.DataFrame, column: str) -> dict[str, float]:
        return {str(m): float(v) for m, v in zip(table["method"], table[column])}

    runs = _by_run(pareto, "method")
    return {
        **settings,
        "reached_count": {m: int(part["reached"].sum()) for m, part in runs.items()},
        "reached_from": {m: [label(r) for r in part[part["reached"]].itertuples()] for m, part in runs.items()},
        "final_distance": {
            m: {label(r): round(float(min(r.distance, r.arc_distance)), 4) for r in part.itertuples()}
            for m, part in runs.items()
        },
        "unreached_in_conflict_band": {
            m: int((part["conflict_band"] & ~part["reached"]).sum()) for m, part in runs.items()
        },
        "rescaling_max_gap": per_method(gaps, "max_gap"),
        "rescaling_max_gap_eps_1e-8": per_method(gaps_default_eps, "max_gap"),
        "rescaling_final_x1_mean": {
            f"scale {c.rsplit('_', 1)[-1]}": per_method(gaps, c) for c in gaps.columns if c.startswith("final_x1_mean")
        },
    }


def regression_summary(
    ownership: pd.DataFrame, final: pd.DataFrame, largest_task: str, **settings: Any
) -> dict[str, Any]:
    """Notebook 02: the largest-sigma task's smallest and largest share of a shared layer, each run's mean
    imbalance, each layer's owner, and the worst task's normalised test loss.

    Args:
        ownership: :func:`~mao_lab.experiments.layer_ownership` of the runs.
        final: :func:`~mao_lab.experiments.final_losses`.
        largest_task: the task with the largest sigma.
        settings: the run's parameters, saved as they are.

    >>> ownership = pd.DataFrame({"run": "sum", "layer": ["a", "a", "b", "b"], "task": ["t0", "t1"] * 2,
    ...                           "share": [0.1, 0.9, 0.3, 0.7], "owner": "t1", "imbalance": [0.5, 0.5, 0.1, 0.1]})
    >>> summary = regression_summary(ownership, pd.DataFrame({"method": ["sum"], "worst": [0.8]}), "t1")
    >>> summary["largest_sigma_task_min_share"], summary["mean_imbalance"], summary["layer_owner"]
    ({'sum': 0.7}, {'sum': 0.3}, {'sum': {'a': 't1', 'b': 't1'}})
    """
    runs = _by_run(ownership)
    largest = {run: part[part["task"] == largest_task]["share"] for run, part in runs.items()}
    return {
        **settings,
        "largest_sigma_task_min_share": {run: float(shares.min()) for run, shares in largest.items()},
        "largest_sigma_task_max_share": {run: float(shares.max()) for run, shares in largest.items()},
        "mean_imbalance": _mean_imbalance(ownership),
        "layer_owner": {
            run: {str(k): str(v) for k, v in part.groupby("layer", sort=False)["owner"].first().items()}
            for run, part in runs.items()
        },
        "worst_normalised_test_mse": {str(m): float(w) for m, w in zip(final["method"], final["worst"])},
    }


def multimnist_summary(
    results: pd.DataFrame, by_method: pd.DataFrame, seconds: Mapping[str, float], **settings: Any
) -> dict[str, Any]:
    """Notebook 03: Delta_m per method (mean, std, seeds), the best one, test metrics, layer owners, imbalance.

    Args:
        results: :func:`~mao_lab.experiments.multimnist_results`.
        by_method: :func:`~mao_lab.experiments.method_ownership`.
        seconds: mean training time per run, by method.
        settings: the run's parameters, saved as they are.

    >>> results = pd.DataFrame({"method": ["sum", "mao", "sum", "mao"], "task": ["left", "left", "(all)", "(all)"],
    ...                         "metric": ["accuracy", "accuracy", "delta_m", "delta_m"], "mean": [0.9, 0.8, 3.0, -1.0],
    ...                         "std": [0.01, 0.02, 1.0, 0.5], "seeds": 2})
    >>> by_method = pd.DataFrame({"run": ["sum", "sum", "mao", "mao"], "layer": "trunk.0", "task": ["left", "sum"] * 2,
    ...                           "share": [0.8, 0.2, 0.5, 0.5], "owner": ["left", "left", "left", "left"],
    ...                           "owner_share": [0.8, 0.8, 0.5, 0.5], "imbalance": [0.3, 0.3, 0.0, 0.0]})
    >>> summary = multimnist_summary(results, by_method, {"sum": 1.0})
    >>> summary["best_delta_m_method"], summary["delta_m_percent"]["mao"], summary["test_metric_mean"]["sum"]
    ('mao', {'mean': -1.0, 'std': 0.5, 'seeds': 2}, {'left': 0.9})
    >>> summary["largest_share_per_shared_layer"]["sum"], summary["mean_imbalance"]
    ({'trunk.0': {'task': 'left', 'share': 0.8}}, {'sum': 0.3, 'mao': 0.0})
    """
    dm = results[results["metric"] == "delta_m"].set_index("method")
    final = results[results["metric"] != "delta_m"]
    return {
        **settings,
        "delta_m_percent": {
            str(m): {"mean": float(r["mean"]), "std": float(r["std"]), "seeds": int(r["seeds"])}
            for m, r in dm.iterrows()
        },
        "best_delta_m_method": str(dm["mean"].idxmin()) if len(dm) else None,
        "test_metric_mean": {
            m: dict(zip(p["task"], p["mean"].astype(float))) for m, p in _by_run(final, "method").items()
        },
        "test_metric_std": {
            m: dict(zip(p["task"], p["std"].astype(float))) for m, p in _by_run(final, "method").items()
        },
        "largest_share_per_shared_layer": largest_shares(by_method),
        "mean_imbalance": _mean_imbalance(by_method),
        "train_seconds_per_run": {str(m): float(s) for m, s in seconds.items()},
    }


def explorer_summary(runs: Sequence[str], balance: pd.DataFrame, **settings: Any) -> dict[str, Any]:
    """Notebook 04: each run's mean imbalance and dominant task, the most and least imbalanced run, and
    each run's most imbalanced layer, from :func:`~mao_lab.experiments.balance_summary`.

    >>> balance = pd.DataFrame({"run": ["a", "a", "a", "b", "b", "b"], "layer": ["l0", "l1", "(all shared)"] * 2,
    ...                         "imbalance": [0.2, 0.6, 0.4, 0.05, 0.01, 0.03], "dominant_task": "t1"})
    >>> summary = explorer_summary(["a", "b"], balance)
    >>> summary["most_imbalanced_run"], summary["least_imbalanced_run"], summary["most_imbalanced_layer"]
    ('a', 'b', {'a': 'l1', 'b': 'l0'})
    """
    overall = balance[balance["layer"] == "(all shared)"].sort_values("imbalance", kind="stable").set_index("run")
    layers = balance[balance["layer"] != "(all shared)"]
    return {
        "runs": [str(r) for r in runs],
        **settings,
        "mean_imbalance": {str(r): float(v) for r, v in overall["imbalance"].items()},
        "dominant_task": {str(r): v for r, v in overall["dominant_task"].items()},
        "most_imbalanced_run": str(overall.index[-1]),
        "least_imbalanced_run": str(overall.index[0]),
        "most_imbalanced_layer": {
            run: str(part.sort_values("imbalance", kind="stable")["layer"].iloc[-1])
            for run, part in _by_run(layers).items()
        },
    }


def ranked(values: Mapping[str, float], digits: int = 3) -> str:
    """Methods and their values, lowest first, by readable name (``digits`` significant digits).

    >>> ranked({"sum": 0.41738, "mao": 0.0213})
    'MAO 0.0213, Adam on the sum 0.417'
    """
    ordered = sorted(values.items(), key=lambda item: item[1])
    return ", ".join(f"{method_label(m)} {v:.{digits}g}" for m, v in ordered)


def findings_paragraph(sentences: Sequence[str], *, smoke: bool = False) -> str:
    """A notebook's findings as one Markdown paragraph: ``**This run:**``, then each sentence capitalised and
    closed by a full stop; in a smoke run the smoke note (:data:`mao_lab.notebook.SMOKE_NOTE`) comes first.

    The sentences are the notebook's own (each notebook writes them from its ``summary``, so that no number in
    its text comes from anywhere but its own run); this only sets them out.

    >>> print(findings_paragraph(["worst task's MSE: " + ranked({"sum": 0.5, "mao": 0.2}), "done"]))
    **This run:** Worst task's MSE: MAO 0.2, Adam on the sum 0.5. Done.
    >>> findings_paragraph(["done"], smoke=True).startswith("**smoke setting")
    True
    """
    text = "**This run:** " + " ".join(sentence[0].upper() + sentence[1:] + "." for sentence in sentences)
    return f"**{smoke_note(True)}**\n\n{text}" if smoke else text
