r"""Find saved recorder runs anywhere under some folders and load them together.

What ``04_balance_explorer`` opens.  A *run folder* is what :class:`mao_lab.recorder.Recorder` saves:
``params.json`` and ``metrics.parquet`` (or ``metrics.csv``, or the part files of a run that was
interrupted).  The notebooks keep theirs under ``<output_dir>/runs/<method>/`` and a batch sweep
(:func:`mao_lab.sweep.run_sweep`) writes one notebook output folder per grid point, so
:func:`find_run_dirs` searches every folder it is given recursively.

Their balance is summarised by the shared analyses (:func:`~mao_lab.experiments.balance_summary`, ...).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..recorder import load_runs

__all__ = ["find_run_dirs", "is_run_dir", "load_balance_runs"]


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
    >>> runs = [save_run(root / name, empty_frame(), {}) for name in ("a/runs/mao", "b/runs/mao")]
    >>> sorted(find_run_dirs([root])), list(find_run_dirs([root / "a" / "runs" / "mao"]))
    (['a/mao', 'b/mao'], ['mao'])
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


def load_balance_runs(
    patterns: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
) -> tuple[pd.DataFrame, pd.DataFrame]:
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
