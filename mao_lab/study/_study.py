"""Run the whole study on the lab's sweep machinery, phase after phase, and write its tables and ledger.

``python -m mao_lab.study`` (``make study``) calls :func:`run_study`:

1. **tuning**: every configuration at every learning rate of the grid, at the first tuning seed; then
   **tuning-seeds**: the other tuning seeds at its ``finalists`` best rates; the rates are chosen on the
   validation split by the mean over the tuning seeds (:func:`~mao_lab.study.choose_learning_rates`);
2. **final**: every configuration at its chosen rate, at the other seeds (the tuning seeds' runs at the
   chosen rate are the same computation, so they are reused);
3. **ledger**: the tables, the per-method intervals and the claims ledger, written to the study folder.

Each phase is one batch of papermill runs of ``notebooks/study/point.ipynb`` (:func:`mao_lab.sweep.run_sweep`,
locally or on Dask): a finished point is skipped when the study runs again, so an interrupted study resumes.
A point trains one configuration (the full study) or several (the smoke study, to keep the notebook
start-ups few), one torch thread per point.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..notebook import ResultsFolder
from ..runner import provenance  # the one provenance record: also mao_lab.study.provenance
from ._analysis import (
    choose_learning_rates,
    chosen_rates,
    claims_ledger,
    delta_m_runs,
    finalist_rates,
    method_intervals,
    worst_balance,
)
from ._design import RunConfig, StudyDesign
from ._ledger import levelling_by_budget, recompute_tables, validation_curves, write_ledger

__all__ = ["POINT_NOTEBOOK", "StudyError", "gpu_resources", "load_study", "provenance", "run_study", "summarise"]

POINT_NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "study" / "point.ipynb"
"""The notebook every point of the study runs."""

TABLES = ("scores", "balance", "runs")


class StudyError(RuntimeError):
    """The study cannot go on (a folder made by another design, or points that failed)."""


def _points(design: StudyDesign, runs: Sequence[tuple[RunConfig, float, int]]) -> dict[str, dict[str, Any]]:
    """Group the runs into points of ``configs_per_point`` configurations, the costliest first."""
    by_config: dict[str, list[dict[str, Any]]] = {}
    costs: dict[str, float] = {}
    for config, lr, seed in runs:
        by_config.setdefault(config.name, []).append({"config": config.name, "lr": lr, "seed": seed})
        costs[config.name] = costs.get(config.name, 0.0) + config.relative_cost * design.steps_of(config)
    names = sorted(by_config, key=lambda n: -costs[n])
    points: dict[str, dict[str, Any]] = {}
    for start in range(0, len(names), design.configs_per_point):
        chunk = names[start : start + design.configs_per_point]
        label = chunk[0] if len(chunk) == 1 else f"{chunk[0]}+{len(chunk) - 1}"
        points[label] = {"design": design.as_dict(), "runs": [run for name in chunk for run in by_config[name]]}
    return points


def _run_phase(
    name: str,
    points: Mapping[str, dict[str, Any]],
    out: Path,
    client: Any,
    threads: int,
    progress: bool,
    outputs: str | None,
    timings: dict[str, dict[str, Any]],
    hardware: Mapping[str, str] | None = None,
) -> dict[str, pd.DataFrame]:
    """Run one phase's points (resuming finished ones) and gather their tables; ``timings[name]`` records its wall
    time in this invocation and how many of its points an earlier invocation had finished (their time is not in it)."""
    from ..sweep import run_sweep

    started = time.perf_counter()
    finished_before = sum(1 for _ in (out / name).glob("point=*/summary.json"))
    if not points:
        timings[name] = {"points": 0, "finished_before": 0, "wall_seconds": 0.0}
        return {table: pd.DataFrame() for table in TABLES}
    hardware = dict(hardware or {})  # device and autocast, when given: the shipped study's points stay as they were
    sweep = run_sweep(
        POINT_NOTEBOOK,
        {"point": list(points)},
        out / name,
        fixed={"specs": dict(points), "threads": threads, **hardware},
        client=client,
        progress=progress,
        html=False,  # a point's notebook has no figures: skip its HTML copy
        outputs=None if outputs is None else f"{str(outputs).rstrip('/')}/{name}",
        resources=gpu_resources(hardware.get("device"), client),
    )
    failed = sweep[sweep["status"] != "ok"]
    if len(failed):
        errors = "; ".join(f"{p}: {e}" for p, e in zip(failed["point"], failed["error"]))
        raise StudyError(
            f"{len(failed)} point(s) of the {name} phase failed (run the study again to retry them): {errors}"
        )
    tables: dict[str, list[pd.DataFrame]] = {table: [] for table in TABLES}
    for run_dir in sweep["run_dir"]:  # the client's copy of each point's small tables
        folder = ResultsFolder(run_dir)
        for table in TABLES:
            tables[table].append(folder.load_table(table))
    timings[name] = {
        "points": len(points),
        "finished_before": min(finished_before, len(points)),
        "wall_seconds": time.perf_counter() - started,
    }
    return {table: pd.concat([p for p in parts if len(p)], ignore_index=True) for table, parts in tables.items()}


def _check_folder(out: Path, design: StudyDesign) -> None:
    stored = out / "design.json"
    if stored.exists():
        previous = json.loads(stored.read_text())
        if previous != design.as_dict():
            changed = sorted(
                k for k in set(previous) | set(design.as_dict()) if previous.get(k) != design.as_dict().get(k)
            )
            raise StudyError(f"{out} holds a study of another design (fields {changed} differ): choose another --out")


def run_study(
    out_dir: str | os.PathLike[str],
    design: StudyDesign,
    *,
    client: Any = None,
    threads: int = 1,
    progress: bool = True,
    outputs: str | None = None,
    device: str | None = None,
    autocast: str | None = None,
) -> pd.DataFrame:
    """Run (or resume) the study into ``out_dir`` and write its tables and ledger there; returns the ledger.

    Args:
        out_dir: the study folder (``design.json``, ``provenance.json``, ``tuning/``, ``final/``, the tables,
            ``ledger.{csv,md,json}``).
        design: what to run; a folder made by another design is refused.
        client: a ``dask.distributed.Client`` to run the points on; ``None`` runs them one by one here.
        threads: torch threads per point (fixed and recorded, so a rerun on the same machine gives the same numbers).
        progress: tqdm bars over the points.
        outputs: where the workers write each point's full folder (a folder or an fsspec URL, see
            :func:`mao_lab.sweep.run_sweep`); the small tables the study reads come back through the futures.
        device: where each point trains (``"cpu"``, ``"cuda"``, ...); ``None``: the GPU when the point's machine
            has one.  With a client and a CUDA device each point holds one GPU (:func:`gpu_resources`).
        autocast: ``"bf16"`` or ``"fp16"``: the points' forward passes under :func:`torch.autocast`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_folder(out, design)
    results = ResultsFolder(out)
    results.save_json(design.as_dict(), "design")
    started = time.perf_counter()
    tuning_runs = [(c, lr, design.tuning_seed) for c in design.configs() for lr in design.lrs]
    timings: dict[str, dict[str, Any]] = {}
    hardware = {k: v for k, v in (("device", device), ("autocast", autocast)) if v}
    tuning = _run_phase(
        "tuning", _points(design, tuning_runs), out, client, threads, progress, outputs, timings, hardware
    )
    # The other tuning seeds run the first seed's best rates; the rate is chosen on the mean over every tuning seed.
    finalists = finalist_rates(choose_learning_rates(tuning["scores"], design, seeds=design.tuning_seeds[:1]), design)
    seed_runs = [
        (c, lr, seed) for c in design.configs() for lr in finalists.get(c.name, []) for seed in design.tuning_seeds[1:]
    ]
    seeds = _run_phase(
        "tuning-seeds", _points(design, seed_runs), out, client, threads, progress, outputs, timings, hardware
    )
    tuned = {name: pd.concat([t for t in (tuning[name], seeds[name]) if len(t)], ignore_index=True) for name in TABLES}
    choice = choose_learning_rates(tuned["scores"], design)
    rates = chosen_rates(choice)
    final_runs = [(c, rates[c.name], seed) for c in design.configs() if c.name in rates for seed in design.final_seeds]
    final = _run_phase("final", _points(design, final_runs), out, client, threads, progress, outputs, timings, hardware)
    tables = {name: pd.concat([t for t in (tuned[name], final[name]) if len(t)], ignore_index=True) for name in TABLES}
    for name, table in tables.items():
        results.save_table(table, name)
    results.save_table(choice, "learning_rates")
    ledger = summarise(tables, design, choice, results)
    wall = time.perf_counter() - started
    results.save_json(
        {
            **provenance(threads_per_point=threads),
            "wall_seconds": wall,
            "phases": timings,
            "workers": _workers(client),
            "smoke": design.smoke,
            **hardware,
        },
        "provenance",
    )
    write_ledger(
        out,
        ledger,
        json.loads((out / "provenance.json").read_text()),
        design,
        delta_m_intervals=results.load_table("delta_m_intervals"),
        learning_rates=choice,
        validation=validation_curves(tables["scores"], choice, design),
        budgets=levelling_by_budget(tables["scores"], design),
        tables=recompute_tables(tables["scores"], tables["balance"], tables["runs"], design),
    )
    return ledger


def summarise(
    tables: Mapping[str, pd.DataFrame], design: StudyDesign, choice: pd.DataFrame, results: ResultsFolder
) -> pd.DataFrame:
    """The derived tables (Δm% per run and per configuration, worst balance per run) and the ledger, saved."""
    dm = delta_m_runs(tables["scores"], choice, design)
    results.save_table(dm, "delta_m")
    results.save_table(method_intervals(dm, "delta_m", ("config", "setting", "variant")), "delta_m_intervals")
    results.save_table(worst_balance(tables["balance"], choice), "worst_balance")
    ledger = claims_ledger(tables["scores"], tables["balance"], tables["runs"], design, choice)
    results.save_table(ledger, "ledger")
    return ledger


def gpu_resources(device: str | None, client: Any) -> dict[str, float] | None:
    """``{"GPU": 1}`` when points train on a CUDA device through a Dask client: each point holds one GPU.

    Raises:
        StudyError: no worker of the client offers a ``GPU`` resource (the points would wait for ever).

    >>> gpu_resources("cuda", None), gpu_resources("cpu", object())
    (None, None)
    """
    if client is None or not device or not str(device).startswith("cuda"):
        return None
    try:
        workers = client.scheduler_info()["workers"].values()
        offered = any(w.get("resources", {}).get("GPU", 0) >= 1 for w in workers)
    except Exception:  # noqa: BLE001 - a client that cannot tell: let Dask place the points
        return {"GPU": 1}
    if not offered:
        raise StudyError(
            "no Dask worker offers a GPU resource: start one worker per GPU with "
            "`CUDA_VISIBLE_DEVICES=k dask worker <scheduler> --nthreads 1 --resources GPU=1` (README)"
        )
    return {"GPU": 1}


def _workers(client: Any) -> int:
    if client is None:
        return 0
    try:
        return len(client.scheduler_info()["workers"])
    except Exception:  # noqa: BLE001 - only for the record
        return -1


def load_study(study_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """A finished study's design, provenance and tables (``scores``, ``balance``, ``runs``, ``learning_rates``,
    ``delta_m``, ``delta_m_intervals``, ``worst_balance``, ``ledger``).

    Raises:
        FileNotFoundError: naming the missing file and the command that makes it.
    """
    folder = ResultsFolder(study_dir)
    if not (folder.path / "provenance.json").exists():
        raise FileNotFoundError(
            f"{folder.path} holds no finished study (no provenance.json): "
            f"run `python -m mao_lab.study --out {folder.path}`"
        )
    data: dict[str, Any] = {
        "design": StudyDesign.from_dict(folder.load_json("design")),
        "provenance": folder.load_json("provenance"),
    }
    for name in (*TABLES, "learning_rates", "delta_m", "delta_m_intervals", "worst_balance", "ledger"):
        data[name] = folder.load_table(name)
    return data
