"""The ledger as small text files: ``ledger.csv``, ``ledger.json``, ``ledger.md``, ``methods.csv``, ``validation.csv``
``levelling.csv`` and ``budgets.csv`` (no HTML, no plotly.js).

``python -m mao_lab.study.ledger STUDY_DIR --out docs/claims`` rewrites them from a finished study's folder;
:func:`run_study` writes them into the study folder itself.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .._files import write_atomically
from ._analysis import BALANCE_THRESHOLD, CLAIMS, LEDGER_COLUMNS
from ._design import SINGLE_TASK_PREFIX, StudyDesign
from ._stats import mean_interval

__all__ = [
    "BUDGET_FRACTIONS",
    "LEVELLING_FRACTION",
    "LEVELLING_STATUSES",
    "ledger_markdown",
    "levelling_by_budget",
    "levelling_off",
    "load_ledger",
    "regenerate_command",
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
        return ("the shipped MultiMNIST (`mao_lab.problems:multimnist_problem`) and GradNorm's regression "
                "(`mao_lab.problems:regression_problem`)")
    return f"`{design.problem}` ({design.description or 'no description'}), options {dict(design.problem_options)}"


def regenerate_command(design: StudyDesign) -> str:
    """The documented command that makes a study of ``design`` (the full design, a smoke study, or other steps).

    >>> from mao_lab.study import full_design
    >>> regenerate_command(full_design())
    '`make study` (or `python -m mao_lab.study --workers 2 --out runs/study`)'
    >>> regenerate_command(dataclasses.replace(full_design(), steps=1600))
    '`make study STUDY=runs/study-1600 STUDY_FLAGS="--steps 1600"` (or `python -m mao_lab.study --workers 2 --steps 1600 --out runs/study-1600`)'
    >>> regenerate_command(dataclasses.replace(full_design(), lrs=(1e-3, 1e-2, 1e-1)))
    'no documented command: this design differs from the full study in more than its steps (lrs)'
    """
    from ._design import full_design, smoke_design

    if design.problem:  # your problem: its study file holds the rest of the design (design.json has all of it)
        smoke = " --smoke" if design.smoke else ""
        return f"`python -m mao_lab.study --problem {design.problem}{smoke} --study-file <your study file> --out <folder>`"
    if design.smoke:
        base, flags, out = smoke_design(), ["--smoke"], "runs/study-smoke"
    else:
        base, flags, out = full_design(), [], "runs/study"
    if design.steps != base.steps:
        flags.append(f"--steps {design.steps}")
        out += f"-{design.steps}"
    other = sorted(k for k, v in dataclasses.replace(design, steps=base.steps).as_dict().items() if base.as_dict()[k] != v)
    if other:
        return f"no documented command: this design differs from the full study in more than its steps ({', '.join(other)})"
    make = f'make study STUDY={out} STUDY_FLAGS="{" ".join(flags)}"' if flags else "make study"
    return f"`{make}` (or `python -m mao_lab.study --workers 2 {' '.join(flags + [''])}--out {out}`)"


def _wall_time(provenance: Mapping[str, Any]) -> str:
    """The wall time, saying which phases an earlier invocation had partly done (their time is not counted)."""
    text = f"wall time {_number(provenance.get('wall_seconds', math.nan) / 60, 3)} min"
    phases = provenance.get("phases") or {}
    resumed = [f"{name} {p['finished_before']} of {p['points']} points" for name, p in phases.items() if p.get("finished_before")]
    if resumed:
        text += (" in the invocation that finished the study, which resumed points finished earlier ("
                 + ", ".join(resumed) + "); their time is not counted")
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
        f"Study: {len(design.seeds)} seeds ({', '.join(map(str, design.seeds))}), learning rates {', '.join(f'{lr:g}' for lr in design.lrs)} "
        f"chosen on a validation split of the training data at seed {design.tuning_seed}; {design.steps} steps of {design.batch_size} "
        + ("examples of the problem below." if design.problem else
           f"MultiMNIST images ({design.num_train} training images), {design.regression_steps} regression steps."),
        f"Machine: {provenance.get('host', '?')}, {provenance.get('processor', '?')}, {provenance.get('cpu_count', '?')} CPUs, "
        f"{provenance.get('threads_per_point', '?')} torch thread(s) per point, {provenance.get('workers', 0)} worker(s); "
        f"{_wall_time(provenance)}.",
        f"Commit {provenance.get('commit', '?')[:12]}{' (with uncommitted changes)' if provenance.get('uncommitted_changes') else ''}; {versions}.",
        f"Problem: {problem_line(design)}.",
        f"Regenerate: {regenerate_command(design)}.",
        "",
        "| claim | statement | verdict | seeds |",
        "|---|---|---|---|",
    ]
    claims = ledger[ledger["part"] == "(claim)"]
    for row in claims.to_dict("records"):
        lines.append(f"| {row['claim']} | {CLAIMS[row['claim']]} | **{row['verdict']}** | {_number(row['seeds'])} |")
    lines += ["", "Every part: the 95 % t-interval over seeds (paired by seed for differences) and its verdict "
              f"(M1's bound on the worst imbalance index is {BALANCE_THRESHOLD}).", "",
              "| claim | part | effect | estimate [95 % CI] | predicted | seeds | verdict |", "|---|---|---|---|---|---|---|"]
    for row in ledger[ledger["part"] != "(claim)"].to_dict("records"):
        side = "<" if row["direction"] == "less" else ">"
        lines.append(f"| {row['claim']} | {row['part']} | {row['effect']} | {_interval(row)} | {side} {_number(row['threshold'])} "
                     f"| {_number(row['seeds'])} | {row['verdict']} |")
    return "\n".join(lines) + "\n"


def _methods_markdown(intervals: pd.DataFrame, rates: pd.DataFrame) -> str:
    chosen = dict(zip(rates[rates["chosen"]]["config"], rates[rates["chosen"]]["lr"]))
    lines = ["", "## Δm% of every method (test metrics against the single-task baselines; lower is better)", "",
             "| setting | method | Δm% [95 % CI] | seeds | chosen learning rate |", "|---|---|---|---|---|"]
    for row in intervals.to_dict("records"):
        lines.append(f"| {row['setting']} | {row['variant']} | {_interval(row)} | {row['n']} | {_number(chosen.get(row['config']))} |")
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
        rows.append({"config": config, "from_step": int(start), "to_step": int(last),
                     "change": change.estimate if change else math.nan, "low": change.low if change else math.nan,
                     "high": change.high if change else math.nan, "seeds": change.n if change else 0, "status": status})
    return pd.DataFrame(rows, columns=["config", "from_step", "to_step", "change", "low", "high", "seeds", "status"])


BUDGET_FRACTIONS = (0.5, 0.75, 1.0)
"""The budgets :func:`levelling_by_budget` reads by default, as fractions of the study's MultiMNIST steps."""


def levelling_by_budget(scores: pd.DataFrame, design: StudyDesign, budgets: Sequence[int] | None = None) -> pd.DataFrame:
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
        budgets: MultiMNIST step counts at most ``design.steps``; default: the evaluation steps at
            :data:`BUDGET_FRACTIONS` of it.

    Returns:
        One row per (budget, MultiMNIST multi-task configuration): ``budget, config, lr, same_rate, final``
        (mean validation criterion at step ``B``), ``best`` (lowest ``final`` of its setting) and the
        :func:`levelling_off` columns.
    """
    from ._analysis import choose_learning_rates

    if budgets is None:
        budgets = sorted({max(design.eval_every, int(design.steps * f) // design.eval_every * design.eval_every) for f in BUDGET_FRACTIONS})
    bad = [b for b in budgets if isinstance(b, bool) or not isinstance(b, int) or not 0 < b <= design.steps]
    if bad:
        raise ValueError(f"budgets must be step counts in 1..{design.steps} (the study's MultiMNIST steps), got {bad}")
    multimnist = {c.name for c in design.configs() if c.problem != "regression"}  # MultiMNIST's, or your problem's
    val = scores[(scores["split"] == "val") & scores["config"].isin(multimnist)]
    full = choose_learning_rates(val, design)
    full_rates = dict(zip(full[full["chosen"]]["config"], full[full["chosen"]]["lr"]))
    frames = []
    for budget in budgets:
        shorter = dataclasses.replace(design, steps=budget)
        choice = choose_learning_rates(val[val["step"] <= budget], shorter)
        curves = validation_curves(val[val["step"] <= budget], choice, shorter)
        if curves.empty:
            continue
        levels = validation_levels(curves)
        final = levels[levels["step"] == levels.groupby("config")["step"].transform("max")].set_index("config")["criterion"]
        best = set(_best_per_setting(levels).values())
        rates = dict(zip(choice[choice["chosen"]]["config"], choice[choice["chosen"]]["lr"]))
        table = levelling_off(curves).assign(budget=budget)
        table["lr"] = table["config"].map(rates)
        table["same_rate"] = [rates.get(c) == full_rates.get(c) for c in table["config"]]
        table["final"] = table["config"].map(final)
        table["best"] = table["config"].isin(best)
        frames.append(table)
    columns = ["budget", "config", "lr", "same_rate", "final", "best", "from_step", "to_step", "change", "low", "high", "seeds", "status"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def _budgets_markdown(budgets: pd.DataFrame) -> str:
    lines = ["", "## The levelling rule at shorter budgets (this study's runs cut at each budget)", "",
             "What a study of this design with fewer MultiMNIST steps would have chosen and read (`budgets.csv`; "
             "`mao_lab.study.levelling_by_budget`): a run's first B steps are a B-step run, so this is exact for every "
             "configuration whose rate at B is this study's.", "",
             "| budget | rates as chosen at the full budget | best on the four tasks: final validation Δm% | its change over the "
             "last quarter [95 % CI] | its status | configurations still improving |", "|---|---|---|---|---|---|"]
    for budget, part in budgets.groupby("budget"):
        best = part[part["best"] & part["config"].str.startswith(("mm4.", "all."))]  # all tasks: shipped, or yours
        if best.empty:
            continue
        row = best.iloc[0]
        change = _interval({"estimate": float(row["change"]), "low": float(row["low"]), "high": float(row["high"])})
        improving = int((part["status"] == "still improving").sum())
        lines.append(f"| {int(budget)} | {int(part['same_rate'].sum())} of {len(part)} | {row['config']}: {_number(float(row['final']))} "
                     f"| {change} | {row['status']} | {improving} of {len(part)} |")
    return "\n".join(lines) + "\n"


def _best_per_setting(levels: pd.DataFrame) -> dict[str, str]:
    """The configuration with the lowest final mean criterion in each setting (``mm4``, ``reg2`` ...)."""
    final = levels[levels["step"] == levels.groupby("config")["step"].transform("max")]
    final = final.assign(setting=final["config"].str.split(".").str[0])
    return {str(s): str(part.loc[part["criterion"].idxmin(), "config"]) for s, part in final.groupby("setting", sort=False)}


def _validation_markdown(curves: pd.DataFrame) -> str:
    levels, levelling = validation_levels(curves), levelling_off(curves).set_index("config")
    best = _best_per_setting(levels)
    lines = ["", "## Has the validation criterion levelled off? (chosen rate; lower is better)", "",
             "Validation Δm% on MultiMNIST, mean normalised validation MSE on the regression: its mean over seeds at the "
             f"last three evaluation steps, and the change over the last quarter of the budget (from the last evaluation at "
             f"or before {LEVELLING_FRACTION:g} of the final step) with its 95 % t-interval, paired by seed. "
             "*still improving*: the interval lies below 0; *levelled off*: it holds 0; *getting worse*: it lies above 0.", "",
             "Best configuration of each setting (lowest final validation criterion): "
             + "; ".join(f"{config} ({levelling['status'].get(config, 'unknown')})" for config in best.values()) + ".", "",
             "| configuration | last three evaluations (step: mean) | change over the last quarter [95 % CI] | status |",
             "|---|---|---|---|"]
    for config, part in levels.groupby("config", sort=False):
        tail = part.sort_values("step").tail(3)
        shown = ", ".join(f"{int(step)}: {_number(float(value))}" for step, value in zip(tail["step"], tail["criterion"]))
        if config in levelling.index:
            row = levelling.loc[config]
            change = _interval({"estimate": float(row["change"]), "low": float(row["low"]), "high": float(row["high"])})
            status = f"**{row['status']}**" if config in best.values() else str(row["status"])
        else:
            change, status = "—", "unknown"
        lines.append(f"| {config} | {shown} | {change} | {status} |")
    return "\n".join(lines) + "\n"


def write_ledger(
    out_dir: str | os.PathLike[str], ledger: pd.DataFrame, provenance: Mapping[str, Any], design: StudyDesign,
    *, delta_m_intervals: pd.DataFrame | None = None, learning_rates: pd.DataFrame | None = None,
    validation: pd.DataFrame | None = None, budgets: pd.DataFrame | None = None,
) -> list[Path]:
    """Write ``ledger.csv``, ``ledger.json`` (ledger, design, provenance) and ``ledger.md`` into ``out_dir``; with
    the study's ``delta_m_intervals`` and ``learning_rates`` tables also ``methods.csv`` (each method's Δm% interval
    and chosen rate), with ``validation`` (per-seed :func:`validation_curves`) also ``validation.csv`` (their mean
    over seeds, :func:`validation_levels`) and ``levelling.csv`` (:func:`levelling_off`); each with a section of
    ``ledger.md`` showing it; with ``budgets`` (:func:`levelling_by_budget`) also ``budgets.csv`` and its section."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = json.loads(ledger.to_json(orient="records"))
    document = {"smoke": design.smoke, "claims": CLAIMS, "ledger": records, "design": design.as_dict(), "provenance": dict(provenance)}
    text = ledger_markdown(ledger, provenance, design)
    written = []
    if delta_m_intervals is not None and learning_rates is not None:
        picked = learning_rates[learning_rates["chosen"]][["config", "lr"]].rename(columns={"lr": "chosen_lr"})
        methods = delta_m_intervals.merge(picked, on="config", how="left")
        text += _methods_markdown(delta_m_intervals, learning_rates)
        written.append(write_atomically(out / "methods.csv", lambda tmp: methods.to_csv(tmp, index=False, float_format="%.6g")))
    if validation is not None and len(validation):
        text += _validation_markdown(validation)
        levels, levelling = validation_levels(validation), levelling_off(validation)
        written.append(write_atomically(out / "validation.csv", lambda tmp: levels.to_csv(tmp, index=False, float_format="%.6g")))
        written.append(write_atomically(out / "levelling.csv", lambda tmp: levelling.to_csv(tmp, index=False, float_format="%.6g")))
    if budgets is not None and len(budgets):
        text += _budgets_markdown(budgets)
        written.append(write_atomically(out / "budgets.csv", lambda tmp: budgets.to_csv(tmp, index=False, float_format="%.6g")))
    written += [
        write_atomically(out / "ledger.csv", lambda tmp: ledger.to_csv(tmp, index=False, float_format="%.6g")),
        write_atomically(out / "ledger.json", lambda tmp: tmp.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")),
        write_atomically(out / "ledger.md", lambda tmp: tmp.write_text(text)),
    ]
    return written


def load_ledger(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The ledger, design and provenance kept in a folder's ``ledger.json`` (e.g. the committed ``docs/claims``).

    Raises:
        FileNotFoundError: naming the missing file.
    """
    path = Path(folder) / "ledger.json"
    if not path.is_file():
        raise FileNotFoundError(f"no ledger at {path}: write one with `python -m mao_lab.study --ledger-only STUDY_DIR --out {folder}`")
    document = json.loads(path.read_text())
    ledger = pd.DataFrame(document["ledger"]).reindex(columns=LEDGER_COLUMNS)
    return {"design": StudyDesign.from_dict(document["design"]), "provenance": document["provenance"], "ledger": ledger}
