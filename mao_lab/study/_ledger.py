"""The ledger as small text files: ``ledger.csv``, ``ledger.json``, ``ledger.md``, ``methods.csv``, ``validation.csv``
``levelling.csv`` and ``budgets.csv`` (no HTML, no plotly.js), and the small per-seed tables that recompute every
interval and verdict of it (:data:`RECOMPUTE_TABLES`).

``python -m mao_lab.study --ledger-only STUDY_DIR --out docs/claims`` (:func:`ledger_only`) *recomputes* the ledger
from a finished study's folder, or from a folder of those small tables (``docs/claims`` itself), never copying a
stored verdict; :func:`run_study` writes them into the study folder itself.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._files import write_atomically
from ..runner import had_uncommitted_changes
from ._analysis import (
    BALANCE_BOUNDS,
    BALANCE_READINGS,
    BALANCE_THRESHOLD,
    CLAIMS,
    LEDGER_COLUMNS,
    balance_summary,
    choose_learning_rates,
    delta_m_runs,
    divergence_counts,
    final_runs,
    final_table,
    ledger_from_parts,
    ledger_from_tables,
    m1_by_budget,
    m1_sensitivity,
    m1_sensitivity_verdicts,
    method_intervals,
    rates_from_criteria,
    run_outcomes,
    tuning_criteria,
)
from ._design import SINGLE_TASK_PREFIX, StudyDesign
from ._stats import mean_interval

__all__ = [
    "RECOMPUTE_TABLES",
    "LedgerInputError",
    "ledger_only",
    "recompute_tables",
    "verdict_moves",
    "BUDGET_FRACTIONS",
    "balance_by_budget",
    "LEVELLING_FRACTION",
    "LEVELLING_STATUSES",
    "ledger_markdown",
    "levelling_by_budget",
    "levelling_off",
    "load_ledger",
    "validation_curves",
    "validation_levels",
    "write_ledger",
]

SMOKE_WARNING = "**Smoke study: tiny data and a few steps. Its numbers and verdicts mean nothing.**"


def _number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _interval(row: Mapping[str, Any]) -> str:
    if not isinstance(row.get("estimate"), float) or not math.isfinite(row["estimate"]):
        return "—"
    return f"{_number(row['estimate'])} [{_number(row['low'])}, {_number(row['high'])}]"


def problem_line(design: StudyDesign) -> str:
    """Which problem the ledger holds for, and at what scale (the problem's own description)."""
    if not design.problem:
        return (
            "the shipped MultiMNIST (`mao_lab.problems:multimnist_problem`) and GradNorm's regression "
            "(`mao_lab.problems:regression_problem`)"
        )
    options = dict(sorted(dict(design.problem_options).items()))  # sorted: design.json keeps its keys sorted
    return f"`{design.problem}` ({design.description or 'no description'}), options {options}"


def regenerate_command(design: StudyDesign) -> str:
    """The documented command that makes a study of ``design`` (the full design, a smoke study, or other steps).

    >>> from mao_lab.study import full_design
    >>> regenerate_command(full_design())
    '`make study` (or `python -m mao_lab.study --workers 2 --out runs/study`)'
    >>> regenerate_command(dataclasses.replace(full_design(), steps=1600))
    '`make study STUDY=runs/study-1600 STUDY_FLAGS="--steps 1600"` (or `python -m mao_lab.study --workers 2 --steps 1600 --out runs/study-1600`)'
    >>> regenerate_command(dataclasses.replace(full_design(), lrs=(1e-3, 1e-2, 1e-1)))
    'no documented command: this design differs from the full study in more than its steps (lrs)'
    """  # noqa: E501 (a doctest's expected output is one line)
    from ._design import full_design, smoke_design

    if design.problem:  # your problem: its study file holds the rest of the design (design.json has all of it)
        smoke = " --smoke" if design.smoke else ""
        return (
            f"`python -m mao_lab.study --problem {design.problem}{smoke} --study-file <your study file> --out <folder>`"
        )
    if design.smoke:
        base, flags, out = smoke_design(), ["--smoke"], "runs/study-smoke"
    else:
        base, flags, out = full_design(), [], "runs/study"
    if design.steps != base.steps:
        flags.append(f"--steps {design.steps}")
        out += f"-{design.steps}"
    tuning = {"tuning_seeds": base.tuning_seeds, "finalists": base.finalists}
    older = design.tuning_seeds != base.tuning_seeds or design.finalists != base.finalists
    other = sorted(
        k
        for k, v in dataclasses.replace(design, steps=base.steps, **tuning).as_dict().items()
        if base.as_dict()[k] != v
    )
    if other:
        return (
            "no documented command: this design differs from the full study in more than its steps "
            f"({', '.join(other)})"
        )
    make = f'make study STUDY={out} STUDY_FLAGS="{" ".join(flags)}"' if flags else "make study"
    command = f"`{make}` (or `python -m mao_lab.study --workers 2 {' '.join(flags + [''])}--out {out}`)"
    if older:
        command += (
            f"; it runs the current design, which chooses the rates {_tuning_text(base)} "
            f"(this study: {_tuning_text(design)})"
        )
    return command


def _wall_time(provenance: Mapping[str, Any]) -> str:
    """The wall time, saying which phases an earlier invocation had partly done (their time is not counted)."""
    text = f"wall time {_number(provenance.get('wall_seconds', math.nan) / 60, 3)} min"
    phases = provenance.get("phases") or {}
    resumed = [
        f"{name} {p['finished_before']} of {p['points']} points"
        for name, p in phases.items()
        if p.get("finished_before")
    ]
    if resumed:
        text += (
            " in the invocation that finished the study, which resumed points finished earlier ("
            + ", ".join(resumed)
            + "); their time is not counted"
        )
    if phases:
        text += " (" + ", ".join(f"{name} {_number(p['wall_seconds'] / 60, 3)} min" for name, p in phases.items()) + ")"
    return text


def ledger_markdown(ledger: pd.DataFrame, provenance: Mapping[str, Any], design: StudyDesign) -> str:
    """The ledger as a Markdown page: the verdict of each claim, then every part with its interval."""
    versions = ", ".join(f"{k} {v}" for k, v in provenance.get("versions", {}).items() if v)
    lines = ["# Claims ledger", ""]
    if design.smoke:
        lines += [SMOKE_WARNING, ""]
    lines += [
        f"Study: {len(design.seeds)} seeds ({', '.join(map(str, design.seeds))}), "
        f"learning rates {', '.join(f'{lr:g}' for lr in design.lrs)} "
        f"chosen on a validation split of the training data {_tuning_text(design)}; "
        f"{design.steps} steps of {design.batch_size} "
        + (
            "examples of the problem below."
            if design.problem
            else (
                f"MultiMNIST images ({design.num_train} training images), {design.regression_steps} regression steps."
            )
        ),
        f"Machine: {provenance.get('host', '?')}, {provenance.get('processor', '?')}, "
        f"{provenance.get('cpu_count', '?')} CPUs, "
        f"{provenance.get('threads_per_point', '?')} torch thread(s) per point, "
        f"{provenance.get('workers', 0)} worker(s); "
        f"{_wall_time(provenance)}.",
        f"Commit {(provenance.get('commit') or '?')[:12]}"
        f"{_DIRTY if had_uncommitted_changes(provenance) else ''}; {versions}.",
        f"Problem: {problem_line(design)}.",
        f"Regenerate: {regenerate_command(design)}.",
        "",
        "| claim | statement | verdict | seeds |",
        "|---|---|---|---|",
    ]
    claims = ledger[ledger["part"] == "(claim)"]
    for row in claims.to_dict("records"):
        lines.append(f"| {row['claim']} | {CLAIMS[row['claim']]} | **{row['verdict']}** | {_number(row['seeds'])} |")
    lines += [
        "",
        CLAIM_RULE,
        "",
        "Every part: the 95 % t-interval over seeds (paired by seed for differences) and its own verdict; then the "
        "two-sided p-value of its t-test against the threshold, Holm-adjusted over the parts of its claim, and the "
        "family-wise verdict it gives (5 % for the whole claim). "
        f"M1's bound {BALANCE_THRESHOLD} on the worst imbalance index is the lab's, not the paper's: the section "
        "*M1 under other bounds and readings* shows how the verdict moves with it.",
        "",
        "| claim | part | effect | estimate [95 % CI] | predicted | seeds | verdict | Holm p | family-wise |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in ledger[ledger["part"] != "(claim)"].to_dict("records"):
        side = "<" if row["direction"] == "less" else ">"
        lines.append(
            f"| {row['claim']} | {row['part']} | {row['effect']} | {_interval(row)} "
            f"| {side} {_number(row['threshold'])} "
            f"| {_number(row['seeds'])} | {row['verdict']} | {_p(row.get('p_holm'))} "
            f"| {row.get('family_verdict') or '—'} |"
        )
    return "\n".join(lines) + "\n"


_DIRTY = (
    " (with uncommitted changes: the working tree differed from this commit, so the commit alone may not "
    "reproduce these numbers)"
)

CLAIM_RULE = (
    "**Verdict rule.** A part is *supported* if its whole 95 % interval lies on the side the claim predicts, "
    "*not supported* if it lies wholly on the other side, else *inconclusive*. A claim is *supported* only if "
    "every part is supported by its own interval (an intersection-union test: 5 % without a correction), "
    "*not supported* if some part is not supported under the **family-wise** reading (Holm over the parts of "
    "the claim), else *inconclusive*."
)
"""How ``ledger.md`` states the claim rule (:func:`~mao_lab.study.claim_verdict`)."""


def _p(value: Any) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "—"
    return "< 0.001" if value < 0.001 else f"{value:.3g}"


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A Markdown table's lines: the header, its rule and a line per row (each cell as ``str`` writes it).

    >>> _table(["a", "b"], [[1, "x"]])
    ['| a | b |', '|---|---|', '| 1 | x |']
    """
    return [_table_row(header), "|" + "---|" * len(header), *(_table_row(row) for row in rows)]


def _table_row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def _tuning_text(design: StudyDesign) -> str:
    seeds = ", ".join(map(str, design.tuning_seeds))
    if len(design.tuning_seeds) == 1:
        return f"at seed {seeds} alone"
    finalists = "every rate" if design.finalists is None else f"the first seed's {design.finalists} best rates"
    return f"by the mean over the tuning seeds {seeds} (the later ones at {finalists})"


def _methods_markdown(intervals: pd.DataFrame, rates: pd.DataFrame) -> str:
    chosen = dict(zip(rates[rates["chosen"]]["config"], rates[rates["chosen"]]["lr"]))
    lines = [
        "",
        "## Δm% of every method (test metrics against the single-task baselines; lower is better)",
        "",
        *_table(
            ["setting", "method", "Δm% [95 % CI]", "seeds", "chosen learning rate"],
            (
                [row["setting"], row["variant"], _interval(row), row["n"], _number(chosen.get(row["config"]))]
                for row in intervals.to_dict("records")
            ),
        ),
    ]
    return "\n".join(lines) + "\n"


LEVELLING_FRACTION = 0.75
"""Where the last stretch of the budget starts, as a fraction of the final evaluation step (the last quarter)."""

LEVELLING_STATUSES = ("still improving", "levelled off", "getting worse", "unknown")


def validation_curves(scores: pd.DataFrame, learning_rates: pd.DataFrame, design: StudyDesign) -> pd.DataFrame:
    """Every multi-task configuration's validation criterion at its chosen rate, per seed and evaluation step.

    The criterion of :func:`~mao_lab.study.validation_curve` (validation Δm% on MultiMNIST, mean normalised
    validation MSE on the regression; lower is better).  Columns ``config, seed, step, criterion``.
    """
    from ._figures import validation_curve  # plotly and widgets only when a ledger is written

    frames = []
    for config in pd.unique(learning_rates[learning_rates["chosen"]]["config"]):
        if f".{SINGLE_TASK_PREFIX}" in str(config):
            continue  # measured against its own final value: zero at the end by construction
        curve = validation_curve(scores, learning_rates, str(config), design)
        if len(curve):
            frames.append(curve.assign(config=str(config)))
    columns = ["config", "seed", "step", "criterion"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def validation_levels(curves: pd.DataFrame) -> pd.DataFrame:
    """:func:`validation_curves` averaged over seeds: columns ``config, step, criterion, seeds``."""
    levels = curves.groupby(["config", "step"], sort=False)["criterion"].agg(criterion="mean", seeds="count")
    return levels.reset_index()[["config", "step", "criterion", "seeds"]]


def levelling_off(curves: pd.DataFrame, fraction: float = LEVELLING_FRACTION) -> pd.DataFrame:
    """Has each configuration's validation criterion levelled off by the end of its budget?

    The rule, fixed before the study's numbers are read: take the paired-by-seed change of the criterion from
    the last evaluation at or before ``fraction`` of the final step to the final step, with its 95 %
    t-interval (:func:`~mao_lab.study.paired_interval`).  The configuration is ``still improving`` if the whole
    interval lies below 0 (lower is better), ``getting worse`` if it lies above 0, ``levelled off`` if it holds
    0 (no change over the last stretch that the seeds can detect), ``unknown`` with fewer than two seeds.

    Columns ``config, from_step, to_step, change, low, high, seeds, status``.

    >>> curves = pd.DataFrame({"config": "a", "seed": [0, 1, 2] * 3, "step": [0] * 3 + [75] * 3 + [100] * 3,
    ...                        "criterion": [9.0, 9.5, 8.5, 5.0, 5.2, 4.9, 3.0, 3.1, 2.8]})
    >>> row = levelling_off(curves).iloc[0]
    >>> int(row["from_step"]), int(row["to_step"]), row["status"]
    (75, 100, 'still improving')
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie strictly between 0 and 1, got {fraction}")
    rows = []
    for config, part in curves.groupby("config", sort=False):
        last = part["step"].max()
        earlier = part.loc[part["step"] <= fraction * last, "step"]
        if earlier.empty or earlier.max() == last:
            continue  # a single evaluation: nothing to compare
        start = earlier.max()
        per_seed = part.pivot_table(index="seed", columns="step", values="criterion")[[start, last]].dropna()
        change = mean_interval((per_seed[last] - per_seed[start]).to_numpy()) if len(per_seed) else None
        if change is None or change.n < 2:
            status = "unknown"
        elif change.high < 0:
            status = "still improving"
        elif change.low > 0:
            status = "getting worse"
        else:
            status = "levelled off"
        rows.append(
            {
                "config": config,
                "from_step": int(start),
                "to_step": int(last),
                "change": change.estimate if change else math.nan,
                "low": change.low if change else math.nan,
                "high": change.high if change else math.nan,
                "seeds": change.n if change else 0,
                "status": status,
            }
        )
    return pd.DataFrame(rows, columns=["config", "from_step", "to_step", "change", "low", "high", "seeds", "status"])


BUDGET_FRACTIONS = (0.5, 0.75, 1.0)
"""The budgets :func:`levelling_by_budget` reads by default, as fractions of the study's MultiMNIST steps."""


def _budgets(design: StudyDesign, field_name: str, budgets: Sequence[int] | None) -> list[int]:
    """``budgets`` checked against the study's ``field_name`` steps; default: the evaluation steps at
    :data:`BUDGET_FRACTIONS` of them."""
    steps = getattr(design, field_name)
    if budgets is None:
        every = design.eval_every
        return sorted({max(every, int(steps * f) // every * every) for f in BUDGET_FRACTIONS})
    bad = [b for b in budgets if isinstance(b, bool) or not isinstance(b, int) or not 0 < b <= steps]
    if bad:
        problem = "MultiMNIST" if field_name == "steps" else "regression"
        raise ValueError(f"budgets must be step counts in 1..{steps} (the study's {problem} steps), got {bad}")
    return list(budgets)


def _validation_and_rates(
    scores: pd.DataFrame, design: StudyDesign, configs: set[str]
) -> tuple[pd.DataFrame, dict[str, float]]:
    """The validation rows of ``configs`` and the rates the full study chose for them."""
    from ._analysis import choose_learning_rates

    val = scores[(scores["split"] == "val") & scores["config"].isin(configs)]
    full = choose_learning_rates(val, design)
    return val, dict(zip(full[full["chosen"]]["config"], full[full["chosen"]]["lr"]))


def levelling_by_budget(
    scores: pd.DataFrame, design: StudyDesign, budgets: Sequence[int] | None = None, problem: str = "multimnist"
) -> pd.DataFrame:
    """What a study of the same design with ``budgets`` MultiMNIST steps would have chosen and read, from this
    study's runs cut at each budget.

    No learning-rate schedule or other part of a run depends on the budget, so a run's first ``B`` steps are a
    ``B``-step run: the rates chosen on the validation split at step ``B`` (tuning seed) and the
    :func:`levelling_off` rule on the curves cut at ``B`` are exactly those of a ``B``-step study, for every
    configuration whose rate at ``B`` is the one this study chose (``same_rate``; the others have only the
    tuning seed's curve, so their status is ``unknown``).  The regression's budget does not change.

    Args:
        scores: the study's ``scores`` table (every rate, every seed, every evaluation).
        design: the study's design.
        budgets: step counts at most the study's (``design.steps``, or ``design.regression_steps`` for the
            regression); default: the evaluation steps at :data:`BUDGET_FRACTIONS` of it.
        problem: ``multimnist`` (the default) or ``regression``: whose budget is cut (the other's does not change).

    Returns:
        One row per (budget, MultiMNIST multi-task configuration): ``budget, config, lr, same_rate, final``
        (mean validation criterion at step ``B``), ``best`` (lowest ``final`` of its setting) and the
        :func:`levelling_off` columns.
    """
    from ._analysis import choose_learning_rates

    if problem not in ("multimnist", "regression"):
        raise ValueError(f"problem must be 'multimnist' or 'regression', got {problem!r}")
    field_name = "steps" if problem == "multimnist" else "regression_steps"
    budgets = _budgets(design, field_name, budgets)
    # "multimnist": the all-task problem's configurations (MultiMNIST's, or your problem's), never the regression's
    configs = {c.name for c in design.configs() if (c.problem == "regression") == (problem == "regression")}
    val, full_rates = _validation_and_rates(scores, design, configs)
    frames = []
    for budget in budgets:
        shorter = dataclasses.replace(design, **{field_name: budget})
        choice = choose_learning_rates(val[val["step"] <= budget], shorter)
        curves = validation_curves(val[val["step"] <= budget], choice, shorter)
        if curves.empty:
            continue
        levels = validation_levels(curves)
        final = levels[levels["step"] == levels.groupby("config")["step"].transform("max")].set_index("config")[
            "criterion"
        ]
        best = set(_best_per_setting(levels).values())
        rates = dict(zip(choice[choice["chosen"]]["config"], choice[choice["chosen"]]["lr"]))
        table = levelling_off(curves).assign(budget=budget)
        table["lr"] = table["config"].map(rates)
        table["same_rate"] = [rates.get(c) == full_rates.get(c) for c in table["config"]]
        table["final"] = table["config"].map(final)
        table["best"] = table["config"].isin(best)
        frames.append(table)
    columns = [
        "budget",
        "config",
        "lr",
        "same_rate",
        "final",
        "best",
        "from_step",
        "to_step",
        "change",
        "low",
        "high",
        "seeds",
        "status",
    ]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def balance_by_budget(
    scores: pd.DataFrame, balance: pd.DataFrame, design: StudyDesign, budgets: Sequence[int] | None = None
) -> pd.DataFrame:
    """M1's per-seed balance on the regression as a study with fewer regression steps would have read it.

    The regression does not level off within its budget (see ``levelling.csv``), so M1 reads the balance of
    models still training.  This table shows whether the verdict hangs on where the budget stops: as in
    :func:`levelling_by_budget`, a run's first ``B`` steps are a ``B``-step run, so at each budget the rates are
    chosen on the validation split at step ``B`` and each run's balance is read over its recorded steps up to ``B``
    (:func:`~mao_lab.study.balance_summary`).  :func:`~mao_lab.study.m1_by_budget` reads M1 from it.

    Args:
        scores: the study's ``scores`` table.
        balance: the study's ``balance`` table (every recorded step of every run).
        design: the study's design.
        budgets: regression step counts at most ``design.regression_steps``; default: the evaluation steps at
            :data:`BUDGET_FRACTIONS` of it.

    Returns:
        :func:`~mao_lab.study.balance_summary`'s columns for the regression's MAO and sum runs at each budget's
        chosen rate, with ``budget`` first and ``same_rate`` (the rate chosen at ``B`` is the study's) last.
    """
    budgets = _budgets(design, "regression_steps", budgets)
    configs = {c.name for c in design.configs() if c.problem == "regression" and c.variant in ("mao", "sum")}
    val, full_rates = _validation_and_rates(scores, design, configs)
    rows = balance[balance["config"].isin(configs)]
    frames = []
    for budget in budgets:
        shorter = dataclasses.replace(design, regression_steps=budget)
        choice = choose_learning_rates(val[val["step"] <= budget], shorter)
        rates = dict(zip(choice[choice["chosen"]]["config"], choice[choice["chosen"]]["lr"]))
        summary = balance_summary(rows[rows["step"] <= budget], choice, shorter)
        summary.insert(0, "budget", budget)
        summary["same_rate"] = [rates.get(c) == full_rates.get(c) for c in summary["config"]]
        frames.append(summary)
    if not frames:
        return pd.DataFrame(columns=["budget", "config", "setting", "seed", "same_rate"])
    return pd.concat(frames, ignore_index=True)


def _m1_budgets_markdown(table: pd.DataFrame, levelling: pd.DataFrame | None) -> str:
    lines = [
        "",
        "## M1 on the regression at shorter budgets",
        "",
    ]
    if levelling is not None and len(levelling):
        regression = levelling[levelling["config"].astype(str).str.startswith("reg")]
        if len(regression):
            improving = int((regression["status"] == "still improving").sum())
            lines += [
                f"The regression's validation MSE is still improving at the end of its budget in {improving} of "
                f"{len(regression)} configurations (the levelling table below), so M1 reads the balance of models "
                "that are still training. Here M1's regression parts are read, the ledger's way, as studies of "
                "fewer regression steps would have read them (`m1_budgets.csv` from `balance_budgets.csv`; "
                "`mao_lab.study.balance_by_budget`, `mao_lab.study.m1_by_budget`): rates chosen at step B, "
                "balance over the recorded steps up to B. A part whose rate at B is not this study's is left "
                "inconclusive (its final seeds were never run).",
                "",
            ]
    lines += [
        "| budget | setting | MAO − sum [95 % CI] | verdict | MAO's worst imbalance [95 % CI] "
        f"| < {BALANCE_THRESHOLD:g} |",
        "|---|---|---|---|---|---|",
    ]
    parts = table[table["part"] != "(claim)"]
    for (budget, setting), part in parts.groupby(["budget", "setting"], sort=False):
        cells = []
        for row in part.to_dict("records"):
            rate = "" if row["same_rate"] else " (rate differs)"
            cells += [_interval(row), f"{row['verdict']}{rate}"]
        lines.append(f"| {int(budget)} | {setting} | " + " | ".join(cells) + " |")
    lines += ["", "| budget | M1's regression parts, by the claim rule |", "|---|---|"]
    for row in table[table["part"] == "(claim)"].to_dict("records"):
        lines.append(f"| {int(row['budget'])} | {row['verdict']} |")
    return "\n".join(lines) + "\n"


def _budgets_markdown(budgets: pd.DataFrame) -> str:
    lines = [
        "",
        "## The levelling rule at shorter budgets (this study's runs cut at each budget)",
        "",
        "What a study of this design with fewer MultiMNIST steps would have chosen and read (`budgets.csv`; "
        "`mao_lab.study.levelling_by_budget`): a run's first B steps are a B-step run, so this is exact for every "
        "configuration whose rate at B is this study's.",
        "",
        "| budget | rates as chosen at the full budget | best on the four tasks: final validation Δm% "
        "| its change over the "
        "last quarter [95 % CI] | its status | configurations still improving |",
        "|---|---|---|---|---|---|",
    ]
    for budget, part in budgets.groupby("budget"):
        best = part[part["best"] & part["config"].str.startswith(("mm4.", "all."))]  # all tasks: shipped, or yours
        if best.empty:
            continue
        row = best.iloc[0]
        change = _interval({"estimate": float(row["change"]), "low": float(row["low"]), "high": float(row["high"])})
        improving = int((part["status"] == "still improving").sum())
        lines.append(
            f"| {int(budget)} | {int(part['same_rate'].sum())} of {len(part)} "
            f"| {row['config']}: {_number(float(row['final']))} "
            f"| {change} | {row['status']} | {improving} of {len(part)} |"
        )
    return "\n".join(lines) + "\n"


def _best_per_setting(levels: pd.DataFrame) -> dict[str, str]:
    """The configuration with the lowest final mean criterion in each setting (``mm4``, ``reg2`` ...)."""
    final = levels[levels["step"] == levels.groupby("config")["step"].transform("max")]
    final = final.assign(setting=final["config"].str.split(".").str[0])
    return {
        str(s): str(part.loc[part["criterion"].idxmin(), "config"]) for s, part in final.groupby("setting", sort=False)
    }


def _validation_markdown(curves: pd.DataFrame) -> str:
    levels, levelling = validation_levels(curves), levelling_off(curves).set_index("config")
    best = _best_per_setting(levels)
    lines = [
        "",
        "## Has the validation criterion levelled off? (chosen rate; lower is better)",
        "",
        "Validation Δm% on MultiMNIST, mean normalised validation MSE on the regression: its mean over seeds at the "
        f"last three evaluation steps, and the change over the last quarter of the budget (from the last evaluation at "
        f"or before {LEVELLING_FRACTION:g} of the final step) with its 95 % t-interval, paired by seed. "
        "*still improving*: the interval lies below 0; *levelled off*: it holds 0; *getting worse*: it lies above 0.",
        "",
        "Best configuration of each setting (lowest final validation criterion): "
        + "; ".join(f"{config} ({levelling['status'].get(config, 'unknown')})" for config in best.values())
        + ".",
        "",
        "| configuration | last three evaluations (step: mean) | change over the last quarter [95 % CI] | status |",
        "|---|---|---|---|",
    ]
    for config, part in levels.groupby("config", sort=False):
        tail = part.sort_values("step").tail(3)
        shown = ", ".join(
            f"{int(step)}: {_number(float(value))}" for step, value in zip(tail["step"], tail["criterion"])
        )
        if config in levelling.index:
            row = levelling.loc[config]
            change = _interval({"estimate": float(row["change"]), "low": float(row["low"]), "high": float(row["high"])})
            status = f"**{row['status']}**" if config in best.values() else str(row["status"])
        else:
            change, status = "—", "unknown"
        lines.append(f"| {config} | {shown} | {change} | {status} |")
    return "\n".join(lines) + "\n"


RECOMPUTE_TABLES: dict[str, str] = {
    "tuning": "every tuning run's validation criterion (config, lr, seed): the rates are chosen from it",
    "learning_rates": "per (config, lr): the criterion's mean over the tuning seeds and the chosen rate",
    "test_metrics": "the final test metrics of every configuration at its chosen rate, per seed, baselines included",
    "delta_m": "per (config, seed): Δm% against the baselines (from test_metrics)",
    "balance_summary": "per (config, seed): the balance readings of M1",
    "final_runs": "per (config, seed): seconds per epoch, distance and path length (P3, P4)",
    "outcomes": "every run: its validation criterion at step 0 and at the end, and whether it diverged",
    "validation_seeds": "per (config, seed, step): the validation criterion at the chosen rate (the levelling rule)",
    "balance_budgets": "per (regression budget, config, seed): the balance readings of M1 up to that step",
}
"""The small per-seed tables written beside the ledger (``<name>.csv``): every interval and verdict of the ledger is
recomputed from them (:func:`ledger_only`)."""

PREVIOUS_LEDGER = "previous"
"""The subfolder of a ledger folder that holds the ledger it replaced (``previous/ledger.csv``): ``ledger.md`` says
how the verdicts moved from it."""


class LedgerInputError(ValueError):
    """A folder the ledger cannot be (re)computed from: missing, empty of a study, or with inconsistent tables."""


def recompute_tables(
    scores: pd.DataFrame, balance: pd.DataFrame, runs: pd.DataFrame, design: StudyDesign
) -> dict[str, pd.DataFrame]:
    """The :data:`RECOMPUTE_TABLES` of a study from its raw tables (the rates chosen afresh from ``scores``)."""
    choice = choose_learning_rates(scores, design)
    test = final_runs(scores, choice)
    columns = ["config", "lr", "seed", "task", "metric", "value", "higher_is_better", "split", "step"]
    return {
        "tuning": tuning_criteria(scores, design),
        "learning_rates": choice,
        "test_metrics": test[columns].sort_values(["config", "seed", "task"], kind="stable").reset_index(drop=True),
        "delta_m": delta_m_runs(scores, choice, design),
        "balance_summary": balance_summary(balance, choice, design),
        "final_runs": final_table(runs, choice),
        "outcomes": run_outcomes(scores, runs, choice, design),
        "validation_seeds": validation_curves(scores, choice, design),
        "balance_budgets": balance_by_budget(scores, balance, design),
    }


def verdict_moves(previous: pd.DataFrame, current: pd.DataFrame) -> pd.DataFrame:
    """Every claim, and every part whose verdict changed, between two ledgers (matched by claim and part).

    Columns ``claim, part, before, after, before_interval, after_interval`` (``—`` where a ledger lacks the row).
    """
    key = ["claim", "part"]
    merged = previous[key + ["verdict", "estimate", "low", "high"]].merge(
        current[key + ["verdict", "estimate", "low", "high"]],
        on=key,
        how="outer",
        suffixes=("_before", "_after"),
        sort=False,
    )
    rows = []
    for row in merged.to_dict("records"):
        before, after = row["verdict_before"], row["verdict_after"]
        if row["part"] != "(claim)" and before == after:
            continue
        rows.append(
            {
                "claim": row["claim"],
                "part": row["part"],
                "before": before if isinstance(before, str) else "—",
                "after": after if isinstance(after, str) else "—",
                "before_interval": _interval({k: _float(row[f"{k}_before"]) for k in ("estimate", "low", "high")}),
                "after_interval": _interval({k: _float(row[f"{k}_after"]) for k in ("estimate", "low", "high")}),
            }
        )
    return pd.DataFrame(rows, columns=["claim", "part", "before", "after", "before_interval", "after_interval"])


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _moves_markdown(moves: pd.DataFrame) -> str:
    claims, parts = moves[moves["part"] == "(claim)"], moves[moves["part"] != "(claim)"]
    lines = [
        "",
        f"## How the verdicts moved from the previous ledger (`{PREVIOUS_LEDGER}/`)",
        "",
        "Every claim, then every part whose verdict changed (a part's own verdict, by its interval).",
        "",
        "| claim | before | after |",
        "|---|---|---|",
    ]
    lines += [f"| {r['claim']} | {r['before']} | **{r['after']}** |" for r in claims.to_dict("records")]
    if len(parts):
        lines += ["", "| claim | part | before | after |", "|---|---|---|---|"]
        lines += [
            f"| {r['claim']} | {r['part']} | {r['before']} {r['before_interval']} "
            f"| {r['after']} {r['after_interval']} |"
            for r in parts.to_dict("records")
        ]
    else:
        lines += ["", "No part's own verdict changed."]
    return "\n".join(lines) + "\n"


def _family_markdown(ledger: pd.DataFrame) -> str:
    parts = ledger[(ledger["part"] != "(claim)") & ledger["family_verdict"].notna() & (ledger["family_verdict"] != "")]
    moved = parts[parts["family_verdict"] != parts["verdict"]]
    lines = [
        "",
        "## Where the family-wise reading differs from the parts' own",
        "",
        f"{len(moved)} of {len(parts)} parts read differently "
        "once Holm's correction is applied over the parts of each claim "
        "(their own 95 % interval excludes the threshold, the Holm-adjusted p-value is not below 5 %).",
    ]
    if len(moved):
        lines += [
            "",
            "| claim | part | estimate [95 % CI] | own verdict | Holm p | family-wise |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['claim']} | {r['part']} | {_interval(r)} | {r['verdict']} "
            f"| {_p(r['p_holm'])} | {r['family_verdict']} |"
            for r in moved.to_dict("records")
        ]
    return "\n".join(lines) + "\n"


def _sensitivity_markdown(table: pd.DataFrame) -> str:
    verdicts = m1_sensitivity_verdicts(table)
    lines = [
        "",
        "## M1 under other bounds and readings",
        "",
        "The ledger's M1 reads a run's *worst* imbalance index "
        "(the largest over every shared layer and recorded step) "
        f"against the bound {BALANCE_THRESHOLD}. "
        "Both are the lab's choice: the paper gives neither a number nor a reading. "
        "Here the claim is read again under the bounds "
        + ", ".join(f"{b:g}" for b in BALANCE_BOUNDS)
        + " and these readings "
        "(`m1_sensitivity.csv`; `mao_lab.study.m1_sensitivity`):",
        "",
    ]
    lines += [f"- `{name}`: {text}" for name, text in BALANCE_READINGS.items()]
    lines += [
        "",
        "MAO − Adam on the sum comes first: it needs no bound.",
        "",
        "| reading | setting | MAO − sum [95 % CI] | verdict | "
        + " | ".join(f"MAO < {b:g}" for b in BALANCE_BOUNDS)
        + " |",
        "|---|---|---|---|" + "---|" * len(BALANCE_BOUNDS),
    ]
    for (reading, setting), part in table.groupby(["reading", "setting"], sort=False):
        difference = part[part["bound"].isna()].iloc[0]
        own = part[part["bound"].notna()]
        cells = []
        for bound in BALANCE_BOUNDS:
            row = own[np.isclose(own["bound"], bound)]
            cells.append(f"{_interval(row.iloc[0].to_dict())}: {row.iloc[0]['verdict']}" if len(row) else "—")
        lines.append(
            f"| {reading} | {setting} | {_interval(difference.to_dict())} | {difference['verdict']} | "
            + " | ".join(cells)
            + " |"
        )
    lines += [
        "",
        "M1's verdict under each reading and bound (the claim rule above; its parts: every setting's MAO − sum and "
        "MAO < bound):",
        "",
        "| reading | bound | MAO − sum supported | MAO < bound supported | verdict |",
        "|---|---|---|---|---|",
    ]
    for row in verdicts.to_dict("records"):
        mark = (
            " (the ledger's)"
            if row["reading"] == "worst_imbalance" and math.isclose(row["bound"], BALANCE_THRESHOLD)
            else ""
        )
        lines.append(
            f"| {row['reading']} | {row['bound']:g}{mark} | {row['differences_supported']} | {row['bounds_supported']} "
            f"| {row['verdict']} |"
        )
    return "\n".join(lines) + "\n"


def _divergence_markdown(counts: pd.DataFrame, design: StudyDesign) -> str:
    lines = [
        "",
        "## Divergences (`divergences.csv`, per run in `outcomes.csv`)",
        "",
        "A run diverged if its loss became non-finite, or if its final validation criterion is worse than at step 0. "
        f"Rates chosen {_tuning_text(design)}; a rate at which a tuning seed diverged is never chosen.",
        "",
        f"{int(counts['diverged'].sum())} of {int(counts['runs'].sum())} runs diverged; "
        f"{int(counts['chosen_diverged'].sum())} of {int(counts['chosen_runs'].sum())} at the chosen rates.",
        "",
        *_table(
            ["configuration", "runs", "diverged (non-finite, worse than at step 0)", "at the chosen rate"],
            (
                [
                    row["config"],
                    row["runs"],
                    f"{row['diverged']} ({row['non_finite']}, {row['worse']})",
                    f"{row['chosen_diverged']} of {row['chosen_runs']}",
                ]
                for row in counts.to_dict("records")
            ),
        ),
    ]
    return "\n".join(lines) + "\n"


def _rerun_markdown(missing: Sequence[str]) -> str:
    lines = [
        "",
        "## Sections that need a rerun of the study",
        "",
        "This ledger was rewritten from a folder without the per-seed tables (an older study). Every verdict was "
        "recomputed from its stored interval, and the family-wise reading from the same intervals; these need the "
        "study's runs (`make study`):",
        "",
    ]
    return "\n".join(lines + [f"- {item}" for item in missing]) + "\n"


def _per_seed_markdown(delta_m: pd.DataFrame) -> str:
    table = delta_m.pivot_table(index="config", columns="seed", values="delta_m", sort=False)
    lines = [
        "",
        "## Δm% per seed (`delta_m.csv`)",
        "",
        *_table(
            ["configuration", *(f"seed {s}" for s in table.columns)],
            ([config, *(_number(float(v)) for v in row)] for config, row in table.iterrows()),
        ),
    ]
    return "\n".join(lines) + "\n"


def write_ledger(
    out_dir: str | os.PathLike[str],
    ledger: pd.DataFrame,
    provenance: Mapping[str, Any],
    design: StudyDesign,
    *,
    delta_m_intervals: pd.DataFrame | None = None,
    learning_rates: pd.DataFrame | None = None,
    validation: pd.DataFrame | None = None,
    budgets: pd.DataFrame | None = None,
    tables: Mapping[str, pd.DataFrame] | None = None,
    previous: pd.DataFrame | None = None,
    needs_rerun: Sequence[str] = (),
    levelling: pd.DataFrame | None = None,
) -> list[Path]:
    """Write ``ledger.csv``, ``ledger.json`` (ledger, design, provenance) and ``ledger.md`` into ``out_dir``; with
    the study's ``delta_m_intervals`` and ``learning_rates`` tables also ``methods.csv`` (each method's Δm% interval
    and chosen rate), with ``validation`` (per-seed :func:`validation_curves`) also ``validation.csv`` (their mean
    over seeds, :func:`validation_levels`) and ``levelling.csv`` (:func:`levelling_off`); each with a section of
    ``ledger.md`` showing it; with ``budgets`` (:func:`levelling_by_budget`) also ``budgets.csv`` and its section.

    With ``tables`` (:func:`recompute_tables`) also every one of them as ``<name>.csv``, ``m1_sensitivity.csv``
    and ``divergences.csv``, with their sections.  With ``previous`` (an older ledger; default: ``out_dir``'s
    ``previous/ledger.csv`` if there is one) a section says how the verdicts moved from it; ``needs_rerun`` lists
    the sections an older study folder could not give.  ``levelling``: a levelling table to show when ``validation``
    is not at hand (an older ledger folder's ``levelling.csv``).
    """
    out = Path(out_dir)
    if previous is None and (out / PREVIOUS_LEDGER / "ledger.csv").is_file():
        previous = pd.read_csv(out / PREVIOUS_LEDGER / "ledger.csv")
    out.mkdir(parents=True, exist_ok=True)
    records = json.loads(ledger.to_json(orient="records"))
    document = {
        "smoke": design.smoke,
        "claims": CLAIMS,
        "ledger": records,
        "design": design.as_dict(),
        "provenance": dict(provenance),
    }
    text = ledger_markdown(ledger, provenance, design)
    written = []

    def csv(name: str, table: pd.DataFrame) -> None:
        written.append(
            write_atomically(out / f"{name}.csv", lambda tmp: table.to_csv(tmp, index=False, float_format="%.6g"))
        )

    if "family_verdict" in ledger:
        text += _family_markdown(ledger)
    if previous is not None:
        text += _moves_markdown(verdict_moves(previous, ledger))
    if needs_rerun:
        text += _rerun_markdown(needs_rerun)
    if tables is not None:
        sensitivity = m1_sensitivity(tables["balance_summary"])
        text += _sensitivity_markdown(sensitivity)
        csv("m1_sensitivity", sensitivity)
        m1_budgets = m1_by_budget(tables["balance_budgets"])
        text += _m1_budgets_markdown(m1_budgets, levelling_off(validation) if validation is not None else levelling)
        csv("m1_budgets", m1_budgets)
        counts = divergence_counts(tables["outcomes"])
        text += _divergence_markdown(counts, design)
        csv("divergences", counts)
        for (
            name
        ) in RECOMPUTE_TABLES:  # every digit (pandas writes the shortest repr): recomputing gives the same ledger
            written.append(
                write_atomically(out / f"{name}.csv", lambda tmp, t=tables[name]: t.to_csv(tmp, index=False))
            )
    if delta_m_intervals is not None and learning_rates is not None:
        picked = learning_rates[learning_rates["chosen"]][["config", "lr"]].rename(columns={"lr": "chosen_lr"})
        methods = delta_m_intervals.drop(columns=["chosen_lr"], errors="ignore").merge(picked, on="config", how="left")
        text += _methods_markdown(delta_m_intervals, learning_rates)
        csv("methods", methods)
    if tables is not None:
        text += _per_seed_markdown(tables["delta_m"])
    if validation is not None and len(validation):
        text += _validation_markdown(validation)
        csv("validation", validation_levels(validation))
        csv("levelling", levelling_off(validation))
    elif levelling is not None and len(levelling):
        text += _levelling_markdown(levelling)
        csv("levelling", levelling)
    if budgets is not None and len(budgets):
        text += _budgets_markdown(budgets)
        csv("budgets", budgets)
    written += [
        write_atomically(out / "ledger.csv", lambda tmp: ledger.to_csv(tmp, index=False, float_format="%.6g")),
        write_atomically(
            out / "ledger.json", lambda tmp: tmp.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        ),
        write_atomically(out / "ledger.md", lambda tmp: tmp.write_text(text)),
    ]
    return written


def _levelling_markdown(levelling: pd.DataFrame) -> str:
    lines = [
        "",
        "## Has the validation criterion levelled off? (chosen rate; lower is better)",
        "",
        "From the older study's `levelling.csv` (each status re-read from its interval; the per-seed curves that "
        "would recompute the intervals need a rerun).",
        "",
        "| configuration | change over the last quarter [95 % CI] | status |",
        "|---|---|---|",
    ]
    for row in levelling.to_dict("records"):
        change = {"estimate": _float(row["change"]), "low": _float(row["low"]), "high": _float(row["high"])}
        lines.append(f"| {row['config']} | {_interval(change)} | {row['status']} |")
    return "\n".join(lines) + "\n"


def load_ledger(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The ledger, design and provenance kept in a folder's ``ledger.json`` (e.g. the committed ``docs/claims``).

    Raises:
        FileNotFoundError: naming the missing file.
    """
    path = Path(folder) / "ledger.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no ledger at {path}: write one with `python -m mao_lab.study --ledger-only STUDY_DIR --out {folder}`"
        )
    document = json.loads(path.read_text())
    ledger = pd.DataFrame(document["ledger"]).reindex(columns=LEDGER_COLUMNS)
    return {"design": StudyDesign.from_dict(document["design"]), "provenance": document["provenance"], "ledger": ledger}


def _read_csv(folder: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(folder / f"{name}.csv")


def _tables_from_folder(folder: Path, design: StudyDesign) -> dict[str, pd.DataFrame]:
    """The :data:`RECOMPUTE_TABLES` of a ledger folder, the rates and Δm% recomputed from the tuning criteria and test
    metrics and checked against the folder's own ``learning_rates.csv`` and ``delta_m.csv``."""
    tables = {name: _read_csv(folder, name) for name in RECOMPUTE_TABLES}
    choice = rates_from_criteria(tables["tuning"], len(design.tuning_seeds))
    stored = tables["learning_rates"]
    mine = sorted(zip(choice[choice["chosen"]]["config"], choice[choice["chosen"]]["lr"]))
    theirs = sorted(zip(stored[stored["chosen"].astype(bool)]["config"], stored[stored["chosen"].astype(bool)]["lr"]))
    if mine != theirs:
        raise LedgerInputError(
            f"{folder}/learning_rates.csv chooses other rates than tuning.csv gives "
            f"({sorted(set(theirs) ^ set(mine))[:3]}): fix or regenerate the folder"
        )
    delta_m = delta_m_runs(tables["test_metrics"], choice, design)
    merged = delta_m.merge(tables["delta_m"], on=["config", "seed"], how="outer", suffixes=("", "_stored"))
    if len(merged) != len(delta_m) or not np.allclose(
        merged["delta_m"], merged["delta_m_stored"], rtol=1e-4, atol=1e-6
    ):
        raise LedgerInputError(
            f"{folder}/delta_m.csv disagrees with the Δm% that test_metrics.csv gives: fix or regenerate the folder"
        )
    return {**tables, "learning_rates": choice, "delta_m": delta_m}


_OLD_FOLDER_RERUN = (
    "every interval recomputed from per-seed tables (" + ", ".join(f"`{n}.csv`" for n in RECOMPUTE_TABLES) + ")",
    "M1 under other bounds and readings (`m1_sensitivity.csv`: needs each run's balance per step)",
    "M1 on the regression at shorter budgets (`m1_budgets.csv`: needs each run's balance per step)",
    "divergences per configuration (`divergences.csv`: needs every run's validation criterion)",
    "Δm% per seed, and the rates chosen on the mean over two tuning seeds",
)


def ledger_only(study_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> tuple[list[Path], list[str]]:
    """Recompute the ledger of ``study_dir`` and write it into ``out_dir`` (``--ledger-only``); nothing is copied.

    ``study_dir`` is either a finished study's folder (its raw tables: everything is recomputed, the rates
    included), or a ledger folder such as ``docs/claims`` holding the :data:`RECOMPUTE_TABLES` (every interval and
    verdict is recomputed from them), or an older ledger folder with ``ledger.json`` alone (every verdict and the
    family-wise reading are recomputed from the stored intervals; ``ledger.md`` lists the sections that need a
    rerun).  Everything is read and checked before anything is written.

    Returns:
        ``(written, differences)``: the files written, and the parts whose stored verdict differs from the
        recomputed one (an edited or outdated ledger; the recomputed one is written).

    Raises:
        LedgerInputError: a missing folder, one holding neither a study nor a ledger, or inconsistent tables;
            nothing is created then.
    """
    from ._study import load_study

    folder = Path(study_dir)
    if not folder.is_dir():
        raise LedgerInputError(f"no study folder at {folder}")
    needs_rerun: Sequence[str] = ()
    budgets = levelling = validation = None
    try:
        if (folder / "provenance.json").is_file():  # a study's own folder: its raw tables
            study = load_study(folder)
            design, provenance, stored = study["design"], study["provenance"], study["ledger"]
            tables: dict[str, pd.DataFrame] | None = recompute_tables(
                study["scores"], study["balance"], study["runs"], design
            )
            budgets = levelling_by_budget(study["scores"], design)
        elif (folder / "ledger.json").is_file():
            document = load_ledger(folder)
            design, provenance, stored = document["design"], document["provenance"], document["ledger"]
            if all((folder / f"{name}.csv").is_file() for name in RECOMPUTE_TABLES):
                tables = _tables_from_folder(folder, design)
            else:
                tables, needs_rerun = None, _OLD_FOLDER_RERUN
                if (folder / "levelling.csv").is_file():
                    levelling = _checked_levelling(pd.read_csv(folder / "levelling.csv"))
            if (folder / "budgets.csv").is_file():
                budgets = _checked_levelling(pd.read_csv(folder / "budgets.csv"))
        else:
            raise LedgerInputError(
                f"{folder} holds neither a finished study (provenance.json) nor a ledger (ledger.json)"
            )
        if tables is not None:
            ledger = ledger_from_tables(tables["delta_m"], tables["balance_summary"], tables["final_runs"], design)
            validation = tables["validation_seeds"]
            intervals = method_intervals(tables["delta_m"], "delta_m", ("config", "setting", "variant"))
        else:
            ledger = ledger_from_parts(stored)
            intervals = None
            methods = folder / "methods.csv"
            if methods.is_file():
                intervals = pd.read_csv(methods)
    except (FileNotFoundError, KeyError, ValueError) as error:
        if isinstance(error, LedgerInputError):
            raise
        raise LedgerInputError(f"cannot recompute the ledger of {folder}: {error}") from error
    differences = _differences(stored, ledger)
    written = write_ledger(
        out_dir,
        ledger,
        provenance,
        design,
        delta_m_intervals=intervals if intervals is not None else None,
        learning_rates=tables["learning_rates"] if tables is not None else _chosen_from_methods(intervals),
        validation=validation,
        budgets=budgets,
        tables=tables,
        needs_rerun=needs_rerun,
        levelling=levelling,
    )
    return written, differences


def _chosen_from_methods(methods: pd.DataFrame | None) -> pd.DataFrame | None:
    """An older folder's chosen rates, as ``methods.csv`` records them (for the methods section only)."""
    if methods is None or "chosen_lr" not in methods:
        return None
    return pd.DataFrame({"config": methods["config"], "lr": methods["chosen_lr"], "chosen": True})


def _checked_levelling(table: pd.DataFrame) -> pd.DataFrame:
    """An older folder's levelling or budgets table with every status re-read from its interval."""
    table = table.copy()
    statuses = []
    for row in table.to_dict("records"):
        low, high, seeds = _float(row["low"]), _float(row["high"]), _float(row["seeds"])
        if not (seeds >= 2 and math.isfinite(low) and math.isfinite(high)):
            statuses.append("unknown")
        else:
            statuses.append("still improving" if high < 0 else "getting worse" if low > 0 else "levelled off")
    table["status"] = statuses
    return table


def _differences(stored: pd.DataFrame, ledger: pd.DataFrame) -> list[str]:
    """The parts (and claims) whose stored verdict or interval differs from the recomputed ones."""
    if stored is None or not len(stored):
        return []
    key = ["claim", "part"]
    merged = stored[key + ["verdict", "estimate"]].merge(
        ledger[key + ["verdict", "estimate"]], on=key, how="outer", suffixes=("_stored", "")
    )
    out = []
    for row in merged.to_dict("records"):
        a, b = _float(row["estimate_stored"]), _float(row["estimate"])
        same_estimate = (math.isnan(a) and math.isnan(b)) or (
            math.isfinite(a) and math.isfinite(b) and math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-9)
        )
        if row["verdict_stored"] != row["verdict"] or not same_estimate:
            out.append(f"{row['claim']} {row['part']}: stored {row['verdict_stored']}, recomputed {row['verdict']}")
    return out
