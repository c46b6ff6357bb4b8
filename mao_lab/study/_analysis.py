r"""From a study's tables to learning-rate choices, Δm% per run, and the claims ledger.

**Learning rates** are chosen on the validation split only, from the last evaluation, by the criterion's *mean
over the tuning seeds* (:attr:`StudyDesign.tuning_seeds <mao_lab.study.StudyDesign>`), so that a rate at which
some seeds fail is not chosen on one lucky seed.  Per run, the criterion (lower is better) is

* a single-task baseline: its task's validation metric (accuracy up, errors down);
* a MultiMNIST (or your problem's) multi-task configuration: its validation Δm% against the tuned baselines'
  validation metrics, per (task, metric) (at their chosen rates, mean over the tuning seeds);
* a regression configuration: the mean over tasks of the normalised validation MSE.

A rate is eligible only if every tuning seed ran it and none of those runs diverged (a NaN or Inf loss).  The
first tuning seed runs every rate; the others run the ``finalists`` best rates by its criterion
(:func:`finalist_rates`).

A run **diverged** (:func:`run_outcomes`) if its loss became non-finite, or if its final validation criterion
is worse than at step 0 (training made it worse than the untrained network).

**Δm%** (``docs/references.md`` §6) of a run compares its final *test* metrics with the single-task
baselines' (each at its chosen rate, averaged over the seeds); lower is better.

**The claims** (Hervella et al. 2024, ``docs/references.md`` §1; Pascal et al. 2021, §2) and their parts.  Every
part is an interval over seeds (:mod:`._stats`), paired by seed when it compares methods, with the predicted
direction, and a family-wise reading (Holm over the parts of its claim); a claim's verdict follows
:func:`~mao_lab.study.claim_verdict` (supported: every part's own interval; not supported: a part family-wise).

* **M1** balance: for each setting (regression with T = 2, 4, 8; MultiMNIST's four tasks), a run's *worst*
  imbalance index — the largest over every shared layer and every recorded step — (a) MAO's minus
  Adam-on-the-sum's below 0, and (b) MAO's below :data:`BALANCE_THRESHOLD`.  Neither the bound nor the "worst
  over every layer and step" reading comes from the paper: :func:`m1_sensitivity` reads the claim under
  other bounds and readings (:data:`BALANCE_READINGS`).
* **M2** MAO minus each previous balancing method (loss weightings, aggregators, MTAdam): Δm% below 0.
* **P1** IUS and IO, each minus Adam on the sum and minus every other method: Δm% below 0.
* **P2** for IUS and IO, the benefit ``Δm%(sum) - Δm%(method)`` on tasks of different nature (left digit, sum,
  reconstruction) minus the same benefit on tasks of one nature (the two digits): above 0.
* **P3** IUS and IO minus Adam on the sum: the shared parameters' distance from their start, and their path
  length, above 0.
* **P4** grouping at group sizes s = 1 (IUS), 2, 3 and T = 4 (Adam on the sum): per seed, the least-squares
  slope of Δm% against s above 0 (smaller groups, better results) and of seconds per epoch against s
  below 0 (smaller groups, more compute).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..experiments import delta_m
from ._design import AGGREGATORS, INDEPENDENT, MM4_TASKS, SINGLE_TASK_PREFIX, WEIGHTINGS, StudyDesign
from ._stats import (
    Direction,
    Interval,
    claim_verdict,
    family_verdicts,
    mean_interval,
    p_value,
    paired_interval,
    verdict,
)

__all__ = [
    "BALANCE_BOUNDS",
    "BALANCE_READINGS",
    "BALANCE_THRESHOLD",
    "CLAIMS",
    "balance_summary",
    "choose_learning_rates",
    "claims_ledger",
    "delta_m_runs",
    "divergence_counts",
    "ledger_from_tables",
    "m1_by_budget",
    "m1_sensitivity",
    "m1_sensitivity_verdicts",
    "method_intervals",
    "run_outcomes",
    "worst_balance",
]

BALANCE_THRESHOLD = 0.1
"""M1's bound on the worst imbalance index (0 balanced, 1 one task owns the layer), fixed by the lab before any
run: the papers give no number.  :func:`m1_sensitivity` shows how the verdict moves with it."""

BALANCE_BOUNDS: tuple[float, ...] = (0.05, 0.1, 0.2)
"""The bounds :func:`m1_sensitivity` reads M1 under (the lab's 0.1 among them)."""

LATE_FRACTION = 0.1
"""The ``after 10 %`` reading leaves out the recorded steps in the first tenth of the run (the start-up)."""

BALANCE_READINGS: dict[str, str] = {
    "worst_imbalance": "imbalance index, largest over every shared layer and recorded step (the ledger's reading)",
    "p95_imbalance": "imbalance index, 95th percentile over every shared layer and recorded step",
    "late_imbalance": (
        "imbalance index, largest over every shared layer and the recorded steps after the first 10 % of the run"
    ),
    "share_excess": (
        "the largest task's share of a shared layer's update minus 1/T (0: equal shares), largest over layers and steps"
    ),
}
"""M1's readings of a run's balance: a column of :func:`balance_summary` and what it is (0 is balanced)."""

CLAIMS: dict[str, str] = {
    "M1": (
        "MAO produces balanced learning across tasks, in every shared layer, throughout training, "
        "for any number of tasks"
    ),
    "M2": "MAO outperforms previous task-balancing methods (loss weightings and gradient aggregators)",
    "P1": "Independent task steps (IUS / IO) reach better metrics than Adam on the sum and other MTL methods",
    "P2": "That benefit is largest when the tasks are of different nature",
    "P3": "Independent steps explore the shared parameter space more widely",
    "P4": "Random task grouping trades those benefits off against compute",
}
"""The six claims of the two papers' abstracts, as the ledger states them."""

_TESTED_COLUMNS = ["direction", "threshold", "estimate", "low", "high", "seeds", "verdict"]
"""What :func:`_tested` writes: a part's test (direction, threshold), its interval and its verdict."""

LEDGER_COLUMNS = [
    "claim",
    "part",
    "effect",
    *_TESTED_COLUMNS,
    "p_value",
    "p_holm",
    "family_verdict",
]
"""A part's row: its interval and verdict, then the two-sided p-value of its t-test, that p-value Holm-adjusted over
the parts of its claim, and the part's family-wise verdict (:func:`~mao_lab.study.family_verdicts`)."""

BALANCING = (*WEIGHTINGS, *AGGREGATORS, "mtadam")
"""The previous balancing methods M2 compares MAO with."""


# -- learning rates -------------------------------------------------------------------------------------


def _last(scores: pd.DataFrame, split: str) -> pd.DataFrame:
    rows = scores[scores["split"] == split]
    last = rows.groupby(["config", "lr", "seed"])["step"].transform("max")
    return rows[rows["step"] == last]


def _signed(rows: pd.DataFrame) -> pd.Series:
    """Values signed so that lower is better."""
    return rows["value"].where(~rows["higher_is_better"].astype(bool), -rows["value"])


def _reference(final: pd.DataFrame, baselines: Mapping[str, str]) -> dict[tuple[str, str], tuple[float, bool]]:
    """Per (task, metric): the baseline's value (mean over the seeds present) and whether higher is better."""
    reference = {}
    for task, config in baselines.items():
        rows = final[(final["config"] == config) & (final["task"] == task)]
        if rows.empty:
            raise ValueError(f"no result of the single-task baseline {config!r}")
        for metric, part in rows.groupby("metric", sort=False):  # a task may have several metrics (your problem)
            reference[(task, str(metric))] = (float(part["value"].mean()), bool(part["higher_is_better"].iloc[0]))
    return reference


def _run_delta_m(rows: pd.DataFrame, reference: Mapping[tuple[str, str], tuple[float, bool]]) -> float:
    values = {(r.task, r.metric): float(r.value) for r in rows.itertuples()}
    missing = sorted(set(values) - set(reference))
    if missing:
        raise ValueError(f"no single-task baseline for the tasks' metrics {missing}")
    return delta_m(values, {k: reference[k][0] for k in values}, {k: reference[k][1] for k in values})


def _baseline_choice(
    val: pd.DataFrame,
    design: StudyDesign,
    seeds: Sequence[int],
) -> tuple[list[dict[str, Any]], dict[tuple[str, str], tuple[float, bool]]]:
    """The single-task baselines' per-seed criteria, and per (task, metric) the chosen baseline's value (mean over
    ``seeds``; a task of your problem may have several metrics)."""
    rows: list[dict[str, Any]] = []
    for config in design.configs():
        if not config.single_task:
            continue
        task = config.tasks[0]
        for lr in design.lrs:
            for seed in seeds:
                part = val[
                    (val["config"] == config.name) & (val["lr"] == lr) & (val["seed"] == seed) & (val["task"] == task)
                ]
                criterion = float(_signed(part).iloc[0]) if len(part) else math.nan
                rows.append({"config": config.name, "lr": lr, "seed": seed, "criterion": criterion})
    if not rows:
        return rows, {}
    means = _eligible_means(pd.DataFrame(rows), len(seeds))
    baselines = _chosen_baselines(means)
    if means.dropna(subset=["criterion"])["config"].nunique() < len(baselines):
        return rows, {}  # a baseline diverged at every rate: no reference, no multi-task criterion
    best = means.dropna(subset=["criterion"])
    best = best.loc[best.groupby("config")["criterion"].idxmin()][["config", "lr"]]
    chosen_rows = val[val["seed"].isin(seeds)].merge(best, on=["config", "lr"])
    return rows, _reference(chosen_rows, baselines)


def _eligible_means(per_seed: pd.DataFrame, seeds: int) -> pd.DataFrame:
    """Per (config, lr): the mean criterion over the seeds, NaN unless all ``seeds`` ran and none diverged."""
    grouped = per_seed.groupby(["config", "lr"], sort=False)["criterion"]
    table = grouped.agg(criterion="mean", seeds="count").reset_index()
    table.loc[table["seeds"] < seeds, "criterion"] = math.nan
    return table


def tuning_criteria(scores: pd.DataFrame, design: StudyDesign, seeds: Sequence[int] | None = None) -> pd.DataFrame:
    """Every tuning run's validation criterion (lower is better; NaN if it diverged or did not run).

    Args:
        scores: the study's scores (the validation rows at the last evaluation are read).
        design: the study's design.
        seeds: the tuning seeds to read; default ``design.tuning_seeds``.

    Returns:
        One row per (config, lr, seed): ``config, lr, seed, criterion``.
    """
    seeds = tuple(design.tuning_seeds if seeds is None else seeds)
    val = _last(scores, "val")
    val = val[val["seed"].isin(seeds)]
    rows, reference = _baseline_choice(val, design, seeds)
    for config in design.configs():
        if config.single_task:
            continue
        for lr in design.lrs:
            for seed in seeds:
                part = val[(val["config"] == config.name) & (val["lr"] == lr) & (val["seed"] == seed)]
                if part.empty or part["value"].isna().any():
                    criterion = math.nan
                elif config.problem == "regression":
                    criterion = float(part["value"].mean())
                else:
                    criterion = _run_delta_m(part, reference) if reference else math.nan
                rows.append({"config": config.name, "lr": lr, "seed": seed, "criterion": criterion})
    return pd.DataFrame(rows, columns=["config", "lr", "seed", "criterion"])


def choose_learning_rates(
    scores: pd.DataFrame, design: StudyDesign, seeds: Sequence[int] | None = None
) -> pd.DataFrame:
    """The validation criterion of every configuration at every rate (mean over the tuning seeds), and the chosen rate.

    Args:
        scores: the study's scores.
        design: the study's design.
        seeds: the tuning seeds the criterion is averaged over (default ``design.tuning_seeds``; the study's first
            tuning phase passes the first tuning seed alone, to pick the finalists).

    Returns:
        One row per (config, lr): ``criterion`` (the mean over ``seeds``, lower is better; NaN unless every one of
        them ran the rate without diverging), ``seeds`` (how many runs it averages) and ``chosen`` (True for the
        configuration's chosen rate: the lowest criterion).
    """
    seeds = tuple(design.tuning_seeds if seeds is None else seeds)
    return rates_from_criteria(tuning_criteria(scores, design, seeds), len(seeds))


def rates_from_criteria(criteria: pd.DataFrame, seeds: int) -> pd.DataFrame:
    """:func:`choose_learning_rates` from :func:`tuning_criteria`'s table: per (config, lr) the mean criterion over
    ``seeds`` tuning seeds (NaN unless all of them ran it without diverging), and the lowest one chosen.

    >>> criteria = pd.DataFrame({"config": "a", "lr": [0.1, 0.1, 0.2, 0.2], "seed": [0, 1, 0, 1],
    ...                          "criterion": [1.0, 3.0, 1.5, 1.6]})
    >>> rates_from_criteria(criteria, 2)[["lr", "criterion", "chosen"]].values.tolist()
    [[0.1, 2.0, False], [0.2, 1.55, True]]
    """
    table = _eligible_means(criteria, seeds)
    table["chosen"] = False
    finite = table.dropna(subset=["criterion"])
    if len(finite):
        best = finite.groupby("config", sort=False)["criterion"].idxmin()
        table.loc[best.to_numpy(), "chosen"] = True
    return table[["config", "lr", "criterion", "seeds", "chosen"]]


def finalist_rates(choice: pd.DataFrame, design: StudyDesign) -> dict[str, list[float]]:
    """Per configuration, the ``design.finalists`` rates with the lowest criterion in ``choice`` (the first tuning
    seed's :func:`choose_learning_rates`): the rates the other tuning seeds run.  Every rate with ``finalists=None``;
    a configuration that diverged at every rate has none.

    >>> from mao_lab.study import smoke_design
    >>> choice = pd.DataFrame({"config": ["a"] * 3, "lr": [1e-3, 3e-3, 1e-2], "criterion": [2.0, 1.0, math.nan]})
    >>> finalist_rates(choice, smoke_design())
    {'a': [0.003, 0.001]}
    """
    finite = choice.dropna(subset=["criterion"])
    limit = design.finalists or len(design.lrs)
    return {
        str(config): [float(lr) for lr in part.sort_values("criterion", kind="stable")["lr"].head(limit)]
        for config, part in finite.groupby("config", sort=False)
    }


def _chosen_baselines(table: pd.DataFrame) -> dict[str, str]:
    """task -> the single-task baseline configuration (setting ``mm4``)."""
    names = [str(c) for c in pd.unique(table["config"]) if f".{SINGLE_TASK_PREFIX}" in str(c)]
    return {name.split(f".{SINGLE_TASK_PREFIX}", 1)[1]: name for name in names}


def chosen_rates(choice: pd.DataFrame) -> dict[str, float]:
    """``{config: chosen lr}`` from :func:`choose_learning_rates`'s table.

    Configurations that all diverged are absent.
    """
    picked = choice[choice["chosen"]]
    return {str(c): float(lr) for c, lr in zip(picked["config"], picked["lr"])}


# -- divergences ------------------------------------------------------------------------------------------


def _criteria_by_step(scores: pd.DataFrame, choice: pd.DataFrame, design: StudyDesign) -> pd.DataFrame:
    """Every run's validation criterion at every evaluation: ``config, lr, seed, step, criterion`` (lower is better).

    MultiMNIST multi-task runs: validation Δm% against the chosen baselines' final validation metrics (mean over
    seeds); baselines: their own metric, signed; the regression: the mean normalised validation MSE."""
    val = scores[scores["split"] == "val"]
    picked = choice[choice["chosen"]][["config", "lr"]]
    last = _last(scores, "val").merge(picked, on=["config", "lr"])
    baselines = _chosen_baselines(choice)
    try:
        reference = _reference(last, baselines)
    except ValueError:
        reference = {}
    problems = {c.name: c for c in design.configs()}
    rows = []
    for (config, lr, seed, step), part in val.groupby(["config", "lr", "seed", "step"], sort=False):
        spec = problems.get(str(config))
        if spec is None:
            continue
        if part["value"].isna().any():
            criterion = math.nan
        elif spec.single_task:
            criterion = float(_signed(part).iloc[0])
        elif spec.problem == "regression":
            criterion = float(part["value"].mean())
        else:
            criterion = _run_delta_m(part, reference) if reference else math.nan
        rows.append({"config": config, "lr": float(lr), "seed": int(seed), "step": int(step), "criterion": criterion})
    return pd.DataFrame(rows, columns=["config", "lr", "seed", "step", "criterion"])


def run_outcomes(scores: pd.DataFrame, runs: pd.DataFrame, choice: pd.DataFrame, design: StudyDesign) -> pd.DataFrame:
    """Every run of the study (tuning and final) and whether it diverged.

    A run **diverged** if its loss became non-finite (``status`` is not ``ok``), or if its final validation
    criterion is worse than at step 0 (``worse``: training left it worse than the untrained network).

    Returns:
        One row per run: ``config, lr, seed, chosen`` (run at the configuration's chosen rate), ``status``,
        ``start`` and ``final`` (the validation criterion at step 0 and at the last evaluation; lower is better),
        ``non_finite``, ``worse`` and ``diverged``.
    """
    curves = _criteria_by_step(scores, choice, design)
    ends = {}
    for (config, lr, seed), part in curves.groupby(["config", "lr", "seed"], sort=False):
        part = part.sort_values("step")
        start = part.loc[part["step"] == 0, "criterion"]
        ends[(config, lr, seed)] = (float(start.iloc[0]) if len(start) else math.nan, float(part["criterion"].iloc[-1]))
    rates = chosen_rates(choice)
    rows = []
    for run in runs.itertuples():
        key = (str(run.config), float(run.lr), int(run.seed))
        start, final = ends.get(key, (math.nan, math.nan))
        non_finite = str(run.status) != "ok" or not math.isfinite(final)
        worse = bool(math.isfinite(start) and math.isfinite(final) and final > start)
        rows.append(
            {
                "config": key[0],
                "lr": key[1],
                "seed": key[2],
                "chosen": rates.get(key[0]) == key[1],
                "status": str(run.status),
                "start": start,
                "final": final,
                "non_finite": non_finite,
                "worse": worse,
                "diverged": non_finite or worse,
            }
        )
    columns = ["config", "lr", "seed", "chosen", "status", "start", "final", "non_finite", "worse", "diverged"]
    return pd.DataFrame(rows, columns=columns)


def divergence_counts(outcomes: pd.DataFrame) -> pd.DataFrame:
    """Per configuration, from :func:`run_outcomes`: its runs and how many diverged, over every rate and at its
    chosen rate.  Columns ``config, runs, diverged, non_finite, worse, chosen_runs, chosen_diverged``.

    >>> outcomes = pd.DataFrame({"config": ["a", "a", "a"], "chosen": [True, True, False],
    ...                          "non_finite": [False, False, True], "worse": [True, False, False]})
    >>> outcomes["diverged"] = outcomes["non_finite"] | outcomes["worse"]
    >>> divergence_counts(outcomes).iloc[0].to_dict()
    {'config': 'a', 'runs': 3, 'diverged': 2, 'non_finite': 1, 'worse': 1, 'chosen_runs': 2, 'chosen_diverged': 1}
    """
    rows = []
    for config, part in outcomes.groupby("config", sort=False):
        chosen = part[part["chosen"].astype(bool)]
        rows.append(
            {
                "config": config,
                "runs": len(part),
                "diverged": int(part["diverged"].sum()),
                "non_finite": int(part["non_finite"].sum()),
                "worse": int(part["worse"].sum()),
                "chosen_runs": len(chosen),
                "chosen_diverged": int(chosen["diverged"].sum()),
            }
        )
    return pd.DataFrame(
        rows, columns=["config", "runs", "diverged", "non_finite", "worse", "chosen_runs", "chosen_diverged"]
    )


# -- balance (M1) -----------------------------------------------------------------------------------------


def balance_summary(balance: pd.DataFrame, choice: pd.DataFrame, design: StudyDesign) -> pd.DataFrame:
    """Per final run (config, seed at the chosen rate): its balance under every reading of :data:`BALANCE_READINGS`.

    Columns ``config, setting, seed, tasks`` (T), ``worst_imbalance`` (largest imbalance index over every shared
    layer and recorded step), ``p95_imbalance`` (its 95th percentile over them, linear interpolation),
    ``late_imbalance`` (the largest over the recorded steps after the first :data:`LATE_FRACTION` of the run),
    ``worst_share`` (the largest task's largest share) and ``share_excess`` (``worst_share - 1/T``).
    """
    picked = choice[choice["chosen"]][["config", "lr"]]
    rows = balance.merge(picked, on=["config", "lr"])
    tasks = {c.name: len(c.tasks) for c in design.configs()}
    out = []
    for (config, seed), part in rows.groupby(["config", "seed"], sort=False):
        late = part[part["step"] > LATE_FRACTION * part["step"].max()]
        count = tasks.get(str(config), 0)
        worst_share = float(part["largest_share"].max())
        out.append(
            {
                "config": config,
                "setting": str(config).split(".")[0],
                "seed": int(seed),
                "tasks": count,
                "worst_imbalance": float(part["imbalance"].max()),
                "p95_imbalance": float(np.percentile(part["imbalance"].dropna(), 95))
                if part["imbalance"].notna().any()
                else math.nan,
                "late_imbalance": float(late["imbalance"].max()) if len(late) else math.nan,
                "worst_share": worst_share,
                "share_excess": worst_share - 1 / count if count else math.nan,
            }
        )
    columns = [
        "config",
        "setting",
        "seed",
        "tasks",
        "worst_imbalance",
        "p95_imbalance",
        "late_imbalance",
        "worst_share",
        "share_excess",
    ]
    return pd.DataFrame(out, columns=columns)


def _m1_settings(summary: pd.DataFrame) -> list[str]:
    configs = set(summary["config"])
    return [
        str(c).removesuffix(".mao")
        for c in pd.unique(summary["config"])
        if str(c).endswith(".mao") and f"{str(c).removesuffix('.mao')}.sum" in configs
    ]


def m1_sensitivity(summary: pd.DataFrame, bounds: Sequence[float] = BALANCE_BOUNDS) -> pd.DataFrame:
    """M1's parts under every reading of balance (:data:`BALANCE_READINGS`) and every bound, from
    :func:`balance_summary`: MAO − Adam on the sum first (paired by seed, < 0), then MAO's own value < each bound.

    Returns:
        One row per (reading, setting, part): ``reading, setting, part, bound`` (NaN for the difference),
        ``direction, threshold, estimate, low, high, seeds, verdict``.
    """
    rows = []
    for reading in BALANCE_READINGS:
        for setting in _m1_settings(summary):
            mao, total = _by_seed(summary, f"{setting}.mao", reading), _by_seed(summary, f"{setting}.sum", reading)
            difference = _safe(lambda mao=mao, total=total: paired_interval(mao.dropna(), total.dropna()))
            rows.append(_sensitivity_row(reading, setting, "MAO − sum < 0", math.nan, 0.0, difference))
            own = _safe(lambda mao=mao: mean_interval(mao.dropna()))
            for bound in bounds:
                rows.append(_sensitivity_row(reading, setting, f"MAO < {bound:g}", bound, bound, own))
    return pd.DataFrame(rows, columns=["reading", "setting", "part", "bound", *_TESTED_COLUMNS])


def _sensitivity_row(
    reading: str, setting: str, part: str, bound: float, threshold: float, interval: Interval | None
) -> dict[str, Any]:
    return {"reading": reading, "setting": setting, "part": part, "bound": bound} | _tested(interval, "less", threshold)


def m1_sensitivity_verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """M1's claim verdict per (reading, bound) from :func:`m1_sensitivity`'s table: its parts are every setting's
    MAO − sum under the reading and MAO < bound, read by :func:`~mao_lab.study.claim_verdict` (Holm over them).

    Columns ``reading, bound, differences_supported`` (MAO − sum < 0 supported, e.g. ``4 of 4``),
    ``bounds_supported`` (MAO < bound), ``family_not_supported`` (parts not supported family-wise), ``verdict``.
    """
    rows = []
    for reading, part in table.groupby("reading", sort=False):
        differences = part[part["bound"].isna()]
        for bound in pd.unique(part["bound"].dropna()):
            parts = pd.concat([differences, part[part["bound"] == bound]])
            intervals = [Interval(r.estimate, r.low, r.high, int(r.seeds)) for r in parts.itertuples()]
            family, _ = family_verdicts(intervals, list(parts["direction"]), list(parts["threshold"]))
            own = list(parts["verdict"])
            bounded = part[part["bound"] == bound]
            rows.append(
                {
                    "reading": reading,
                    "bound": float(bound),
                    "differences_supported": (
                        f"{int((differences['verdict'] == 'supported').sum())} of {len(differences)}"
                    ),
                    "bounds_supported": f"{int((bounded['verdict'] == 'supported').sum())} of {len(bounded)}",
                    "family_not_supported": int(sum(v == "not supported" for v in family)),
                    "verdict": claim_verdict(own, family),
                }
            )
    return pd.DataFrame(
        rows,
        columns=["reading", "bound", "differences_supported", "bounds_supported", "family_not_supported", "verdict"],
    )


def m1_by_budget(balance_budgets: pd.DataFrame) -> pd.DataFrame:
    """M1's parts on the regression, read the ledger's way, at each shorter budget of :func:`~mao_lab.study.
    balance_by_budget`'s table: per (budget, setting) MAO − Adam on the sum (paired by seed, < 0), then MAO's
    worst imbalance below :data:`BALANCE_THRESHOLD`, and the claim rule over those parts of each budget.

    A part whose configurations' rates at the budget are not the study's (``same_rate`` False) is left
    ``inconclusive`` with no interval: a study of that budget would have run its final seeds at another rate,
    which this study never ran.

    Returns:
        One row per (budget, setting, part) and a ``part = "(claim)"`` row per budget first: ``budget, setting,
        part, same_rate, direction, threshold, estimate, low, high, seeds, verdict``.
    """
    rows = []
    for budget, summary in balance_budgets.groupby("budget", sort=True):
        same = dict(zip(summary["config"], summary["same_rate"].astype(bool)))
        parts = []
        for setting in _m1_settings(summary):
            mao, total = f"{setting}.mao", f"{setting}.sum"
            comparable = same.get(mao, False) and same.get(total, False)
            mao_values, sum_values = (_by_seed(summary, c, "worst_imbalance").dropna() for c in (mao, total))
            difference = _safe(lambda a=mao_values, b=sum_values: paired_interval(a, b)) if comparable else None
            own = _safe(lambda a=mao_values: mean_interval(a)) if same.get(mao, False) else None
            head = {"budget": int(budget), "setting": setting}
            parts.append(head | {"part": "MAO − sum < 0", "same_rate": comparable} | _tested(difference, "less", 0.0))
            parts.append(
                head
                | {"part": f"MAO < {BALANCE_THRESHOLD:g}", "same_rate": same.get(mao, False)}
                | _tested(own, "less", BALANCE_THRESHOLD)
            )
        if not parts:
            continue
        intervals = [Interval(r["estimate"], r["low"], r["high"], int(r["seeds"])) for r in parts]
        family, _ = family_verdicts(intervals, [r["direction"] for r in parts], [r["threshold"] for r in parts])
        claim = claim_verdict([r["verdict"] for r in parts], family)
        rows.append(
            {
                "budget": int(budget),
                "setting": "(all)",
                "part": "(claim)",
                "same_rate": all(r["same_rate"] for r in parts),
            }
            | {c: math.nan for c in _TESTED_COLUMNS}
            | {"direction": "less", "verdict": claim}
        )
        rows += parts
    columns = ["budget", "setting", "part", "same_rate", *_TESTED_COLUMNS]
    return pd.DataFrame(rows, columns=columns)


# -- final results ------------------------------------------------------------------------------------------


def final_runs(scores: pd.DataFrame, choice: pd.DataFrame) -> pd.DataFrame:
    """The final test rows: every seed of every configuration at its chosen rate."""
    test = _last(scores, "test")
    picked = choice[choice["chosen"]][["config", "lr"]]
    return test.merge(picked, on=["config", "lr"])


def delta_m_runs(scores: pd.DataFrame, choice: pd.DataFrame, design: StudyDesign) -> pd.DataFrame:
    """Δm% of every final multi-task run (config, seed) of MultiMNIST or your problem against the baselines' mean
    over seeds."""
    final = final_runs(scores, choice)
    baselines = _chosen_baselines(choice)
    reference = _reference(final, baselines)
    rows = []
    for config in design.configs():
        if config.single_task or config.problem == "regression":
            continue
        for seed, part in final[final["config"] == config.name].groupby("seed"):
            rows.append(
                {
                    "config": config.name,
                    "setting": config.setting,
                    "variant": config.variant,
                    "seed": int(seed),
                    "delta_m": _run_delta_m(part, reference),
                }
            )
    return pd.DataFrame(rows, columns=["config", "setting", "variant", "seed", "delta_m"])


def worst_balance(balance: pd.DataFrame, choice: pd.DataFrame) -> pd.DataFrame:
    """Per final run: the largest imbalance index and the largest task share over every shared layer and step."""
    picked = choice[choice["chosen"]][["config", "lr"]]
    rows = balance.merge(picked, on=["config", "lr"])
    return (
        rows.groupby(["config", "seed"])
        .agg(worst_imbalance=("imbalance", "max"), worst_share=("largest_share", "max"))
        .reset_index()
    )


def method_intervals(per_seed: pd.DataFrame, value: str, by: Sequence[str] = ("config",)) -> pd.DataFrame:
    """The t-interval over seeds of ``value`` for every group (e.g. each configuration's Δm%)."""
    rows = []
    for key, part in per_seed.groupby(list(by), sort=False):
        interval = mean_interval(part[value].to_numpy())
        names = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, names)), **interval.as_dict()})
    return pd.DataFrame(rows)


# -- the ledger ------------------------------------------------------------------------------------------


def _by_seed(table: pd.DataFrame, config: str, value: str) -> pd.Series:
    rows = table[table["config"] == config]
    return pd.Series(rows[value].to_numpy(dtype=float), index=rows["seed"].astype(int).to_numpy())


def _part(
    claim: str, part: str, effect: str, interval: Interval | None, direction: Direction, threshold: float = 0.0
) -> dict[str, Any]:
    return {"claim": claim, "part": part, "effect": effect, **_tested(interval, direction, threshold)}


def _tested(interval: Interval | None, direction: Direction, threshold: float) -> dict[str, Any]:
    """A part's test, interval and verdict (:data:`_TESTED_COLUMNS`); no interval (a configuration had no
    successful runs) reads as an empty interval of 0 seeds, inconclusive."""
    if interval is None:
        interval = Interval(math.nan, math.nan, math.nan, 0)
    return {
        "direction": direction,
        "threshold": threshold,
        "estimate": interval.estimate,
        "low": interval.low,
        "high": interval.high,
        "seeds": interval.n,
        "verdict": verdict(interval, direction, threshold),
    }


def _safe(compute: Callable[[], Interval]) -> Interval | None:
    try:
        return compute()
    except ValueError:
        return None


def ledger_from_parts(parts: pd.DataFrame) -> pd.DataFrame:
    """The ledger from its parts' intervals alone: every part's verdict, p-value, Holm-adjusted p-value and
    family-wise verdict recomputed (nothing of them is read from ``parts``), then one ``part = "(claim)"`` row per
    claim first, with :func:`~mao_lab.study.claim_verdict`.

    Args:
        parts: one row per part with ``claim, part, effect, direction, threshold, estimate, low, high, seeds``
            (95 % intervals).

    Raises:
        ValueError: naming a part whose estimate lies outside its own interval, or whose interval is reversed.
    """
    parts = parts[parts["part"] != "(claim)"].reset_index(drop=True).copy()
    for column in ("threshold", "estimate", "low", "high"):
        parts[column] = parts[column].astype(float)
    seeds = pd.to_numeric(parts["seeds"], errors="coerce").fillna(0).astype(int)
    intervals = [Interval(r.estimate, r.low, r.high, int(n)) for r, n in zip(parts.itertuples(), seeds)]
    broken = [
        f"{r.claim} {r.part}: {r.estimate:g} [{r.low:g}, {r.high:g}]"
        for r, i in zip(parts.itertuples(), intervals)
        if all(math.isfinite(v) for v in (i.estimate, i.low, i.high)) and not i.low <= i.estimate <= i.high
    ]
    if broken:
        raise ValueError(f"{len(broken)} part(s) whose estimate lies outside its interval: {'; '.join(broken[:3])}")
    parts["seeds"] = seeds
    parts["verdict"] = [verdict(i, d, t) for i, d, t in zip(intervals, parts["direction"], parts["threshold"])]
    parts["p_value"] = [p_value(i, t) for i, t in zip(intervals, parts["threshold"])]
    parts["p_holm"], parts["family_verdict"] = math.nan, ""
    claims = []
    for claim in pd.unique(parts["claim"]):
        rows = parts.index[parts["claim"] == claim]
        family, adjusted = family_verdicts(
            [intervals[i] for i in rows], list(parts.loc[rows, "direction"]), list(parts.loc[rows, "threshold"])
        )
        parts.loc[rows, "p_holm"] = adjusted
        parts.loc[rows, "family_verdict"] = family
        claims.append(
            {
                "claim": claim,
                "part": "(claim)",
                "effect": CLAIMS.get(str(claim), ""),
                "verdict": claim_verdict(parts.loc[rows, "verdict"], family),
                "seeds": int(parts.loc[rows, "seeds"].min()),
            }
        )
    return pd.concat(
        [pd.DataFrame(claims).reindex(columns=LEDGER_COLUMNS), parts.reindex(columns=LEDGER_COLUMNS)], ignore_index=True
    )


def ledger_from_tables(
    delta_m: pd.DataFrame, balance: pd.DataFrame, final: pd.DataFrame, design: StudyDesign
) -> pd.DataFrame:
    """The ledger from the study's small per-seed tables (what ``docs/claims/`` keeps to recompute it).

    Args:
        delta_m: :func:`delta_m_runs` (``config, seed, delta_m``).
        balance: :func:`balance_summary` (``config, seed, worst_imbalance``, ...).
        final: the final runs at the chosen rates that finished (``config, seed, distance, path_length,
            seconds_per_epoch``).
        design: the study's design.
    """
    parts: list[dict[str, Any]] = []

    def paired(table: pd.DataFrame, value: str, a: str, b: str) -> Interval | None:
        return _safe(lambda: paired_interval(_by_seed(table, a, value), _by_seed(table, b, value)))

    dm = delta_m
    main = design.main_setting  # mm4 in the shipped study, all on your problem
    settings = [f"reg{t}" for t in design.regression_tasks] + [main]
    for setting in settings:
        mao, total = f"{setting}.mao", f"{setting}.sum"
        parts.append(
            _part(
                "M1",
                f"{setting}: MAO − sum, worst imbalance < 0",
                "paired difference of the max imbalance index",
                paired(balance, "worst_imbalance", mao, total),
                "less",
            )
        )
        parts.append(
            _part(
                "M1",
                f"{setting}: MAO's worst imbalance < {BALANCE_THRESHOLD}",
                "max imbalance index over shared layers and steps",
                _safe(lambda mao=mao: mean_interval(_by_seed(balance, mao, "worst_imbalance"))),
                "less",
                BALANCE_THRESHOLD,
            )
        )
    for other in BALANCING:
        parts.append(
            _part(
                "M2",
                f"MAO − {other}",
                f"paired difference of Δm% ({main})",
                paired(dm, "delta_m", f"{main}.mao", f"{main}.{other}"),
                "less",
            )
        )
    others = ["sum", *BALANCING, "mao"]
    for method in INDEPENDENT:
        for other in others:
            parts.append(
                _part(
                    "P1",
                    f"{method} − {other}",
                    f"paired difference of Δm% ({main})",
                    paired(dm, "delta_m", f"{main}.{method}", f"{main}.{other}"),
                    "less",
                )
            )
    same, different = design.p2_settings or ("(none)", "(none)")  # no task sets: P2's parts are untested
    for method in INDEPENDENT:

        def benefit_gap(method: str = method) -> Interval:
            def benefit(setting: str) -> pd.Series:
                return _by_seed(dm, f"{setting}.sum", "delta_m") - _by_seed(dm, f"{setting}.{method}", "delta_m")

            return paired_interval(benefit(different).dropna(), benefit(same).dropna())

        parts.append(
            _part(
                "P2",
                f"{method}: benefit over sum, different − same nature",
                "paired difference of Δm%(sum) − Δm%(method) between the task sets",
                _safe(benefit_gap),
                "greater",
            )
        )
    for method in INDEPENDENT:
        for quantity in ("distance", "path_length"):
            parts.append(
                _part(
                    "P3",
                    f"{method} − sum, {quantity.replace('_', ' ')}",
                    f"paired difference of the shared parameters' {quantity.replace('_', ' ')}",
                    paired(final, quantity, f"{main}.{method}", f"{main}.sum"),
                    "greater",
                )
            )
    slopes = _grouping_slopes(dm, final, design)
    parts.append(
        _part(
            "P4",
            "slope of Δm% against group size > 0",
            "least-squares slope per seed (Δm% per task in a group)",
            _safe(lambda: mean_interval(slopes["delta_m"].dropna())),
            "greater",
        )
    )
    parts.append(
        _part(
            "P4",
            "slope of seconds per epoch against group size < 0",
            "least-squares slope per seed (s per task in a group)",
            _safe(lambda: mean_interval(slopes["seconds_per_epoch"].dropna())),
            "less",
        )
    )
    return ledger_from_parts(pd.DataFrame(parts))


def final_table(runs: pd.DataFrame, choice: pd.DataFrame) -> pd.DataFrame:
    """The final runs at the chosen rates that finished.

    Columns: ``config, seed, lr, seconds_per_epoch, distance, path_length``.
    """
    picked = choice[choice["chosen"]][["config", "lr"]]
    final = runs[runs["status"] == "ok"].merge(picked, on=["config", "lr"])
    return final[["config", "seed", "lr", "seconds_per_epoch", "distance", "path_length"]].reset_index(drop=True)


def claims_ledger(
    scores: pd.DataFrame,
    balance: pd.DataFrame,
    runs: pd.DataFrame,
    design: StudyDesign,
    choice: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The ledger: one ``part = "(claim)"`` row per claim with its verdict, then one row per part of every claim
    (:func:`ledger_from_tables` on the per-seed tables derived from the study's tables)."""
    choice = choose_learning_rates(scores, design) if choice is None else choice
    return ledger_from_tables(
        delta_m_runs(scores, choice, design),
        balance_summary(balance, choice, design),
        final_table(runs, choice),
        design,
    )


def grouping_points(design: StudyDesign) -> dict[str, int]:
    """P4's configurations on all tasks and their group sizes: IUS is s = 1, Adam on the sum is s = T."""
    main = design.main_setting
    points = {f"{main}.ius": 1, f"{main}.sum": len(design.tasks or MM4_TASKS)}
    for variant in design.mm4_methods:
        if variant.startswith("grouping"):
            points[f"{main}.{variant}"] = int(variant.removeprefix("grouping"))
    return points


def _grouping_slopes(dm: pd.DataFrame, final: pd.DataFrame, design: StudyDesign) -> pd.DataFrame:
    """Per seed: the least-squares slopes of Δm% and of seconds per epoch against the group size."""
    points = grouping_points(design)
    rows = []
    seeds = sorted(set(dm["seed"]) & set(final["seed"]))
    for seed in seeds:
        sizes, deltas, seconds = [], [], []
        for config, size in points.items():
            d = dm[(dm["config"] == config) & (dm["seed"] == seed)]["delta_m"]
            s = final[(final["config"] == config) & (final["seed"] == seed)]["seconds_per_epoch"]
            if len(d) and len(s):
                sizes.append(size)
                deltas.append(float(d.iloc[0]))
                seconds.append(float(s.iloc[0]))
        if len(set(sizes)) >= 2:
            rows.append(
                {
                    "seed": seed,
                    "delta_m": float(np.polyfit(sizes, deltas, 1)[0]),
                    "seconds_per_epoch": float(np.polyfit(sizes, seconds, 1)[0]),
                }
            )
    return pd.DataFrame(rows, columns=["seed", "delta_m", "seconds_per_epoch"])
