r"""From a study's tables to learning-rate choices, Δm% per run, and the claims ledger.

**Learning rates** are chosen on the validation split only, at the tuning seed, from the last evaluation:

* a single-task baseline: its task's validation metric (accuracy up, errors down);
* a MultiMNIST multi-task configuration: its validation Δm% against the tuned baselines' validation metrics;
* a regression configuration: the mean over tasks of the normalised validation MSE.

A learning rate whose run diverged (a NaN or Inf loss) is never chosen.

**Δm%** (``docs/references.md`` §6) of a run compares its final *test* metrics with the single-task
baselines' (each at its chosen rate, averaged over the seeds); lower is better.

**The claims** (Hervella et al. 2024, ``docs/references.md`` §1; Pascal et al. 2021, §2) and their parts.  Every
part is an interval over seeds (:mod:`._stats`), paired by seed when it compares methods, with the predicted
direction; a claim's verdict is the conjunction of its parts (:func:`~mao_lab.study.combine_verdicts`).

* **M1** balance: for each setting (regression with T = 2, 4, 8; MultiMNIST's four tasks), a run's *worst*
  imbalance index — the largest over every shared layer and every recorded step — (a) for MAO below
  :data:`BALANCE_THRESHOLD`, and (b) MAO's minus Adam-on-the-sum's below 0.
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
from ._stats import Direction, Interval, combine_verdicts, mean_interval, paired_interval, verdict

__all__ = [
    "BALANCE_THRESHOLD",
    "CLAIMS",
    "LEDGER_COLUMNS",
    "choose_learning_rates",
    "chosen_rates",
    "claims_ledger",
    "delta_m_runs",
    "final_runs",
    "grouping_points",
    "method_intervals",
    "worst_balance",
]

BALANCE_THRESHOLD = 0.1
"""M1's bound on the worst imbalance index (0 balanced, 1 one task owns the layer), fixed before any run."""

CLAIMS: dict[str, str] = {
    "M1": "MAO produces balanced learning across tasks, in every shared layer, throughout training, for any number of tasks",
    "M2": "MAO outperforms previous task-balancing methods (loss weightings and gradient aggregators)",
    "P1": "Independent task steps (IUS / IO) reach better metrics than Adam on the sum and other MTL methods",
    "P2": "That benefit is largest when the tasks are of different nature",
    "P3": "Independent steps explore the shared parameter space more widely",
    "P4": "Random task grouping trades those benefits off against compute",
}
"""The six claims of the two papers' abstracts, as the ledger states them."""

LEDGER_COLUMNS = ["claim", "part", "effect", "direction", "threshold", "estimate", "low", "high", "seeds", "verdict"]

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


def choose_learning_rates(scores: pd.DataFrame, design: StudyDesign) -> pd.DataFrame:
    """The validation criterion of every configuration at every rate (tuning seed), and the chosen rate.

    Returns:
        One row per (config, lr): ``criterion`` (lower is better; NaN if the run diverged or is missing)
        and ``chosen`` (True for the configuration's chosen rate).
    """
    val = _last(scores, "val")
    val = val[val["seed"] == design.tuning_seed]
    configs = design.configs()
    rows: list[dict[str, Any]] = []
    for config in configs:
        if config.single_task:
            task = config.tasks[0]
            for lr in design.lrs:
                part = val[(val["config"] == config.name) & (val["lr"] == lr) & (val["task"] == task)]
                rows.append({"config": config.name, "lr": lr, "criterion": float(_signed(part).iloc[0]) if len(part) else math.nan})
    table = pd.DataFrame(rows)
    baselines = _chosen_baselines(table)
    finite = table.dropna(subset=["criterion"])
    best = finite.loc[finite.groupby("config")["criterion"].idxmin()][["config", "lr"]]
    reference = _reference(val.merge(best, on=["config", "lr"]), baselines) if len(best) == len(baselines) else {}
    for config in configs:
        if config.single_task:
            continue
        for lr in design.lrs:
            part = val[(val["config"] == config.name) & (val["lr"] == lr)]
            if part.empty or part["value"].isna().any():
                criterion = math.nan
            elif config.problem == "regression":
                criterion = float(part["value"].mean())
            else:
                criterion = _run_delta_m(part, reference) if reference else math.nan
            rows.append({"config": config.name, "lr": lr, "criterion": criterion})
    table = pd.DataFrame(rows)
    table["chosen"] = False
    finite = table.dropna(subset=["criterion"])
    if len(finite):
        best = finite.groupby("config", sort=False)["criterion"].idxmin()
        table.loc[best.to_numpy(), "chosen"] = True
    return table


def _chosen_baselines(table: pd.DataFrame) -> dict[str, str]:
    """task -> the single-task baseline configuration (setting ``mm4``)."""
    names = [str(c) for c in pd.unique(table["config"]) if f".{SINGLE_TASK_PREFIX}" in str(c)]
    return {name.split(f".{SINGLE_TASK_PREFIX}", 1)[1]: name for name in names}


def chosen_rates(choice: pd.DataFrame) -> dict[str, float]:
    """``{config: chosen lr}`` from :func:`choose_learning_rates`'s table (configurations that all diverged are absent)."""
    picked = choice[choice["chosen"]]
    return {str(c): float(lr) for c, lr in zip(picked["config"], picked["lr"])}


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
            rows.append({"config": config.name, "setting": config.setting, "variant": config.variant, "seed": int(seed),
                         "delta_m": _run_delta_m(part, reference)})
    return pd.DataFrame(rows, columns=["config", "setting", "variant", "seed", "delta_m"])


def worst_balance(balance: pd.DataFrame, choice: pd.DataFrame) -> pd.DataFrame:
    """Per final run: the largest imbalance index and the largest task share over every shared layer and step."""
    picked = choice[choice["chosen"]][["config", "lr"]]
    rows = balance.merge(picked, on=["config", "lr"])
    return (rows.groupby(["config", "seed"]).agg(worst_imbalance=("imbalance", "max"), worst_share=("largest_share", "max"))
            .reset_index())


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


def _part(claim: str, part: str, effect: str, interval: Interval | None, direction: Direction, threshold: float = 0.0) -> dict[str, Any]:
    if interval is None:  # a configuration had no successful runs
        interval = Interval(math.nan, math.nan, math.nan, 0)
    return {"claim": claim, "part": part, "effect": effect, "direction": direction, "threshold": threshold,
            "estimate": interval.estimate, "low": interval.low, "high": interval.high, "seeds": interval.n,
            "verdict": verdict(interval, direction, threshold)}


def _safe(compute: Callable[[], Interval]) -> Interval | None:
    try:
        return compute()
    except ValueError:
        return None


def claims_ledger(
    scores: pd.DataFrame, balance: pd.DataFrame, runs: pd.DataFrame, design: StudyDesign,
    choice: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The ledger: one row per part of every claim, then one ``part = "(claim)"`` row per claim with its verdict."""
    choice = choose_learning_rates(scores, design) if choice is None else choice
    dm = delta_m_runs(scores, choice, design)
    worst = worst_balance(balance, choice)
    picked = choice[choice["chosen"]][["config", "lr"]]
    final = runs[runs["status"] == "ok"].merge(picked, on=["config", "lr"])
    parts: list[dict[str, Any]] = []

    def paired(table: pd.DataFrame, value: str, a: str, b: str) -> Interval | None:
        return _safe(lambda: paired_interval(_by_seed(table, a, value), _by_seed(table, b, value)))

    main = design.main_setting  # mm4 in the shipped study, all on your problem
    settings = [f"reg{t}" for t in design.regression_tasks] + [main]
    for setting in settings:
        mao, total = f"{setting}.mao", f"{setting}.sum"
        parts.append(_part("M1", f"{setting}: MAO's worst imbalance < {BALANCE_THRESHOLD}", "max imbalance index over shared layers and steps",
                           _safe(lambda: mean_interval(_by_seed(worst, mao, "worst_imbalance"))), "less", BALANCE_THRESHOLD))
        parts.append(_part("M1", f"{setting}: MAO − sum, worst imbalance < 0", "paired difference of the max imbalance index",
                           paired(worst, "worst_imbalance", mao, total), "less"))
    for other in BALANCING:
        parts.append(_part("M2", f"MAO − {other}", f"paired difference of Δm% ({main})", paired(dm, "delta_m", f"{main}.mao", f"{main}.{other}"), "less"))
    others = ["sum", *BALANCING, "mao"]
    for method in INDEPENDENT:
        for other in others:
            parts.append(_part("P1", f"{method} − {other}", f"paired difference of Δm% ({main})",
                               paired(dm, "delta_m", f"{main}.{method}", f"{main}.{other}"), "less"))
    same, different = design.p2_settings or ("(none)", "(none)")  # no task sets: P2's parts are untested
    for method in INDEPENDENT:
        def benefit_gap(method: str = method) -> Interval:
            def benefit(setting: str) -> pd.Series:
                return _by_seed(dm, f"{setting}.sum", "delta_m") - _by_seed(dm, f"{setting}.{method}", "delta_m")
            return paired_interval(benefit(different).dropna(), benefit(same).dropna())
        parts.append(_part("P2", f"{method}: benefit over sum, different − same nature",
                           "paired difference of Δm%(sum) − Δm%(method) between the task sets", _safe(benefit_gap), "greater"))
    for method in INDEPENDENT:
        for quantity in ("distance", "path_length"):
            parts.append(_part("P3", f"{method} − sum, {quantity.replace('_', ' ')}", f"paired difference of the shared parameters' {quantity.replace('_', ' ')}",
                               paired(final, quantity, f"{main}.{method}", f"{main}.sum"), "greater"))
    slopes = _grouping_slopes(dm, final, design)
    parts.append(_part("P4", "slope of Δm% against group size > 0", "least-squares slope per seed (Δm% per task in a group)",
                       _safe(lambda: mean_interval(slopes["delta_m"].dropna())), "greater"))
    parts.append(_part("P4", "slope of seconds per epoch against group size < 0", "least-squares slope per seed (s per task in a group)",
                       _safe(lambda: mean_interval(slopes["seconds_per_epoch"].dropna())), "less"))
    ledger = pd.DataFrame(parts, columns=LEDGER_COLUMNS)
    claims = [{"claim": claim, "part": "(claim)", "effect": statement, "verdict": combine_verdicts(ledger[ledger["claim"] == claim]["verdict"]),
               "seeds": int(ledger[ledger["claim"] == claim]["seeds"].min())} for claim, statement in CLAIMS.items()]
    return pd.concat([pd.DataFrame(claims).reindex(columns=LEDGER_COLUMNS), ledger], ignore_index=True)


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
            rows.append({"seed": seed, "delta_m": float(np.polyfit(sizes, deltas, 1)[0]),
                         "seconds_per_epoch": float(np.polyfit(sizes, seconds, 1)[0])})
    return pd.DataFrame(rows, columns=["seed", "delta_m", "seconds_per_epoch"])
