"""Run folders: the metrics table and the run's parameters, written so that a crash never leaves half a file.

A run folder holds ``params.json`` and ``metrics.parquet`` (``metrics.csv`` where pyarrow is missing).
While training, a recorder with ``flush_every`` adds numbered part files (``metrics.part-000001.parquet``,
...) holding the steps recorded since the previous flush; the final save gathers everything into
``metrics.parquet`` and removes the parts.  Every file is written to a temporary file in the same
folder and moved into place with :func:`os.replace`, which is atomic: a reader sees the old file or
the new one, never a partial one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Union

import pandas as pd

from .._files import write_atomically
from ._frame import empty_frame, normalise_dtypes

__all__ = ["RunFileError", "RunPath", "load_run", "load_runs", "save_run"]

RunPath = Union[str, "os.PathLike[str]"]

METRICS_STEM = "metrics"
PARAMS_FILE = "params.json"
_PART_PREFIX = f"{METRICS_STEM}.part-"


def parquet_available() -> bool:
    """Whether pyarrow is installed (otherwise tables are stored as CSV)."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def _suffix(use_parquet: bool | None) -> str:
    if use_parquet is None:
        use_parquet = parquet_available()
    return ".parquet" if use_parquet else ".csv"


def write_table(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` atomically as Parquet or CSV, according to ``path``'s suffix."""
    if path.suffix == ".parquet":
        write_atomically(path, lambda tmp: frame.to_parquet(tmp, index=False))
    else:
        write_atomically(path, lambda tmp: frame.to_csv(tmp, index=False))


def read_table(path: Path) -> pd.DataFrame:
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    return normalise_dtypes(frame)


def write_params(run_dir: Path, params: Mapping[str, Any]) -> None:
    """Write the run's parameters as JSON (anything JSON cannot hold is written as its ``repr``)."""
    text = _params_text(params)
    write_atomically(run_dir / PARAMS_FILE, lambda tmp: tmp.write_text(text))


def _params_text(params: Mapping[str, Any]) -> str:
    return json.dumps(dict(params), indent=2, sort_keys=True, default=repr) + "\n"


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def full_tables(run_dir: Path) -> list[Path]:
    """The whole-run tables in a folder (``metrics.parquet``, ``metrics.csv``)."""
    return [p for p in (run_dir / f"{METRICS_STEM}.parquet", run_dir / f"{METRICS_STEM}.csv") if p.is_file()]


def part_path(run_dir: Path, number: int, use_parquet: bool | None = None) -> Path:
    return run_dir / f"{_PART_PREFIX}{number:06d}{_suffix(use_parquet)}"


def part_paths(run_dir: Path) -> list[Path]:
    """The part files a flushing recorder left, in order."""
    return sorted(p for p in run_dir.glob(f"{_PART_PREFIX}*") if p.suffix in (".parquet", ".csv"))


def save_run(
    run_dir: RunPath,
    frame: pd.DataFrame,
    params: Mapping[str, Any] | None = None,
    *,
    use_parquet: bool | None = None,
    parts_of_this_run: bool = False,
) -> Path:
    """Write a run folder: the whole table as ``metrics.parquet`` (or ``.csv``) and ``params.json``.

    Part files of earlier flushes are removed once the full table is in place.  Returns the table's path.

    The folder never pairs parameters with metrics of another run, whenever the process dies: the new
    table is first written completely under a hidden name; if ``params`` differ from the folder's
    ``params.json``, the metrics there (and its part files, unless ``parts_of_this_run``: the
    flushes of the run being saved) are removed before the new ``params.json`` is written; only then
    is the table moved into place.

    >>> import tempfile
    >>> from mao_lab.recorder._frame import empty_frame
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = save_run(folder, empty_frame(), {"method": "mao", "lr": 1e-3})
    ...     frame, params = load_run(folder)
    >>> path.name.startswith("metrics."), len(frame), params
    (True, 0, {'lr': 0.001, 'method': 'mao'})
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / f"{METRICS_STEM}{_suffix(use_parquet)}"
    pending = run_dir / f".{METRICS_STEM}.new{path.suffix}"  # complete and on disk, but invisible to load_run
    write_table(frame, pending)
    try:
        if params is not None and _params_text(params) != _read_text(run_dir / PARAMS_FILE):
            for old in full_tables(run_dir) + ([] if parts_of_this_run else part_paths(run_dir)):
                old.unlink()
            write_params(run_dir, params)
        os.replace(pending, path)
    finally:
        pending.unlink(missing_ok=True)
    # Only now are the parts redundant; a crash before this line leaves both, and load_run then
    # trusts the full table.
    for part in part_paths(run_dir):
        part.unlink()
    other = run_dir / f"{METRICS_STEM}{'.csv' if path.suffix == '.parquet' else '.parquet'}"
    if other.exists():
        other.unlink()
    return path


def load_run(run_dir: RunPath) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a run folder: ``(table, params)``.

    A finished run's ``metrics.parquet``/``.csv`` is read whole; a run interrupted while flushing has only
    part files, and they are concatenated.  ``params`` is ``{}`` when the run saved none.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run folder at {run_dir}")
    params = _read_params(run_dir / PARAMS_FILE)
    for suffix in (".parquet", ".csv"):
        path = run_dir / f"{METRICS_STEM}{suffix}"
        if path.exists():
            return _read_metrics(path), params
    parts = part_paths(run_dir)
    if not parts:
        raise FileNotFoundError(
            f"{run_dir} holds no metrics ({METRICS_STEM}.parquet, {METRICS_STEM}.csv or part files): "
            "was anything recorded and saved or flushed there?"
        )
    frames = [_read_metrics(p) for p in parts]
    return normalise_dtypes(pd.concat(frames, ignore_index=True)) if frames else empty_frame(), params


class RunFileError(ValueError):
    """A file of a run folder cannot be read as what it should hold; the message names the file."""


def _read_params(path: Path) -> dict[str, Any]:
    """``params.json`` as a dict (``{}`` when absent); a damaged one is an error naming it."""
    if not path.exists():
        return {}
    try:
        params = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise RunFileError(f"{path} cannot be read as JSON ({type(error).__name__}: {_one_line(error)})") from None
    if not isinstance(params, dict):
        kind = {type(None): "null", list: "array", str: "string", bool: "boolean"}.get(type(params), "number")
        raise RunFileError(f"{path} holds a JSON {kind}, not an object of parameters")
    return params


def _read_metrics(path: Path) -> pd.DataFrame:
    """A metrics table; one that is damaged or lacks the recorder's columns is an error naming it."""
    try:
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as error:  # noqa: BLE001 - pyarrow and pandas raise many kinds for a damaged file
        reason = f"{type(error).__name__}: {_one_line(error)}"
        raise RunFileError(f"{path} is not a readable metrics table ({reason})") from None
    missing = [c for c in empty_frame().columns if c not in frame.columns]
    if missing:
        raise RunFileError(f"{path} is not a recorder's metrics table: it lacks the column(s) {missing}")
    try:
        return normalise_dtypes(frame)
    except (TypeError, ValueError) as error:
        raise RunFileError(f"{path} holds a step or value that is not a number ({_one_line(error)})") from None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300]


def load_runs(
    runs: Iterable[RunPath] | Mapping[str, RunPath],
) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """Read several run folders into one table with a ``run`` column first: ``(table, params by run)``.

    Runs are named by the mapping's keys, or else by their folder names.
    """
    named = dict(runs) if isinstance(runs, Mapping) else {Path(r).name: r for r in runs}
    if not named:
        raise ValueError("load_runs needs at least one run folder")
    frames, params = [], {}
    for name, run_dir in named.items():
        frame, params[name] = load_run(run_dir)
        frames.append(frame.assign(run=name))
    return combine_runs(frames), params


def combine_runs(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate tables that each carry a ``run`` column, putting ``run`` first."""
    frame = pd.concat(
        [f.astype({c: object for c in f.columns if c not in ("step", "value")}) for f in frames], ignore_index=True
    )
    frame = frame[["run", *[c for c in frame.columns if c != "run"]]]
    return normalise_dtypes(frame)
