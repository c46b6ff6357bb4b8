"""The ledger as small text files: ``ledger.csv``, ``ledger.json``, ``ledger.md``, ``methods.csv`` and ``validation.csv``
(no HTML, no plotly.js).

``python -m mao_lab.study.ledger STUDY_DIR --out docs/claims`` rewrites them from a finished study's folder;
:func:`run_study` writes them into the study folder itself.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from .._files import write_atomically
from ._analysis import BALANCE_THRESHOLD, CLAIMS, LEDGER_COLUMNS
from ._design import SINGLE_TASK_PREFIX, StudyDesign

__all__ = ["ledger_markdown", "load_ledger", "validation_levels", "write_ledger"]

SMOKE_WARNING = "**Smoke study: tiny data and a few steps. Its numbers and verdicts mean nothing.**"


def _number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _interval(row: Mapping[str, Any]) -> str:
    if not isinstance(row.get("estimate"), float) or not math.isfinite(row["estimate"]):
        return "—"
    return f"{_number(row['estimate'])} [{_number(row['low'])}, {_number(row['high'])}]"


def ledger_markdown(ledger: pd.DataFrame, provenance: Mapping[str, Any], design: StudyDesign) -> str:
    """The ledger as a Markdown page: the verdict of each claim, then every part with its interval."""
    versions = ", ".join(f"{k} {v}" for k, v in provenance.get("versions", {}).items() if v)
    lines = ["# Claims ledger", ""]
    if design.smoke:
        lines += [SMOKE_WARNING, ""]
    lines += [
        f"Study: {len(design.seeds)} seeds ({', '.join(map(str, design.seeds))}), learning rates {', '.join(f'{lr:g}' for lr in design.lrs)} "
        f"chosen on a validation split of the training data at seed {design.tuning_seed}; {design.steps} steps of {design.batch_size} "
        f"MultiMNIST images ({design.num_train} training images), {design.regression_steps} regression steps.",
        f"Machine: {provenance.get('host', '?')}, {provenance.get('processor', '?')}, {provenance.get('cpu_count', '?')} CPUs, "
        f"{provenance.get('threads_per_point', '?')} torch thread(s) per point, {provenance.get('workers', 0)} worker(s); "
        f"wall time {_number(provenance.get('wall_seconds', math.nan) / 60, 3)} min.",
        f"Commit {provenance.get('commit', '?')[:12]}{' (with uncommitted changes)' if provenance.get('uncommitted_changes') else ''}; {versions}.",
        "Regenerate: `make study` (or `python -m mao_lab.study --workers 2 --out runs/study`).",
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


def validation_levels(scores: pd.DataFrame, learning_rates: pd.DataFrame, design: StudyDesign) -> pd.DataFrame:
    """Every multi-task configuration's validation criterion at its chosen rate, per evaluation step, averaged over seeds.

    The criterion of :func:`~mao_lab.study.validation_curve` (validation Δm% on MultiMNIST, mean normalised
    validation MSE on the regression; lower is better).  Columns ``config, step, criterion, seeds``: whether the
    budget was long enough is read from the last steps.
    """
    from ._figures import validation_curve  # plotly and widgets only when a ledger is written

    frames = []
    for config in pd.unique(learning_rates[learning_rates["chosen"]]["config"]):
        if f".{SINGLE_TASK_PREFIX}" in str(config):
            continue  # measured against its own final value: zero at the end by construction
        curve = validation_curve(scores, learning_rates, str(config), design)
        if len(curve):
            mean = curve.groupby("step")["criterion"].agg(criterion="mean", seeds="count").reset_index()
            frames.append(mean.assign(config=str(config)))
    columns = ["config", "step", "criterion", "seeds"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def _validation_markdown(levels: pd.DataFrame) -> str:
    lines = ["", "## Has the validation criterion levelled off? (chosen rate, mean over seeds; lower is better)", "",
             "Validation Δm% on MultiMNIST, mean normalised validation MSE on the regression, at the last three "
             "evaluation steps; the last column is the change over the last evaluation interval.", "",
             "| configuration | last three evaluations (step: value) | last change |", "|---|---|---|"]
    for config, part in levels.groupby("config", sort=False):
        tail = part.sort_values("step").tail(3)
        shown = ", ".join(f"{int(step)}: {_number(float(value))}" for step, value in zip(tail["step"], tail["criterion"]))
        change = float(tail["criterion"].iloc[-1] - tail["criterion"].iloc[-2]) if len(tail) > 1 else math.nan
        lines.append(f"| {config} | {shown} | {_number(change)} |")
    return "\n".join(lines) + "\n"


def write_ledger(
    out_dir: str | os.PathLike[str], ledger: pd.DataFrame, provenance: Mapping[str, Any], design: StudyDesign,
    *, delta_m_intervals: pd.DataFrame | None = None, learning_rates: pd.DataFrame | None = None,
    validation: pd.DataFrame | None = None,
) -> list[Path]:
    """Write ``ledger.csv``, ``ledger.json`` (ledger, design, provenance) and ``ledger.md`` into ``out_dir``; with
    the study's ``delta_m_intervals`` and ``learning_rates`` tables also ``methods.csv`` (each method's Δm% interval
    and chosen rate), with ``validation`` (:func:`validation_levels`) also ``validation.csv``; each with a section
    of ``ledger.md`` showing it."""
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
        written.append(write_atomically(out / "validation.csv", lambda tmp: validation.to_csv(tmp, index=False, float_format="%.6g")))
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
