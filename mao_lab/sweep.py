"""Batch sweeps: one notebook over a grid of parameters, on a laptop or on a Dask cluster.

Every point of the grid runs the notebook headlessly (:func:`mao_lab.runner.execute_notebook`) into
its own folder; the sweep gathers each run's ``summary.json`` into one tidy table::

    python -m mao_lab.sweep 00_quickstart -g lr=1e-3,3e-3 -g seed=0,1,2 --smoke --out runs/sweep
    python -m mao_lab.sweep 00_quickstart -g seed=0,1,2,3 --workers 4              # a local Dask cluster
    python -m mao_lab.sweep 00_quickstart -g seed=0,1 --scheduler tls://host:8786  # an existing one

The same function runs from Python with ``client=`` any ``dask.distributed.Client``.

Workers need not share a file system with the client: a point's summary, provenance and small tables
come back through the Dask future (:class:`PointResult`) and the client writes them into its own
``out_dir/<run_id>/``; the point's full folder (executed notebook, HTML, large tables) goes to
``outputs``, a folder or an fsspec URL as the workers see it.

Points already finished are skipped, so an interrupted sweep resumes; a point that failed (its notebook
raised, its kernel or its worker was killed, its ``summary.json`` is missing or not valid JSON) is
recorded as failed with the reason, does not stop the others, and runs again on the next call.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ._files import FolderLock, write_atomically
from .runner import (
    FAILURE_FILE,
    PROVENANCE_FILE,
    RESERVED_PARAMETERS,
    NotebookRunError,
    OneLineArgumentParser,
    RunFolderBusyError,
    check_parameters,
    execute_notebook,
    find_notebooks,
    folder_argument,
    parse_assignment,
    parse_parameters,
    parse_value,
)

__all__ = [
    "DEFAULT_MAX_FILE_BYTES",
    "DEFAULT_MAX_TOTAL_BYTES",
    "MAX_GRID_POINTS",
    "PointResult",
    "check_local_workers",
    "check_scheduler_address",
    "expand_grid",
    "local_cluster",
    "main",
    "read_point",
    "run_id",
    "run_point",
    "run_sweep",
]

SUMMARY_FILE = "summary.json"
TABLE_NAME = "sweep"
# What comes back through the future: JSON files and tables (Parquet/CSV) up to this size each ...
DEFAULT_MAX_FILE_BYTES = 4 * 2**20
# ... and up to this much in all per point (the rest stays in the point's outputs folder).
DEFAULT_MAX_TOTAL_BYTES = 32 * 2**20
_RETURNED_SUFFIXES = (".json", ".parquet", ".csv")
# The most points one grid may have: each is a notebook run and a folder, so more is a typo (or a bomb).
MAX_GRID_POINTS = 100_000
_STATUS_COLUMNS = ["run_id", "status", "error", "run_dir", "outputs", "wall_s"]


@dataclass(frozen=True)
class PointResult:
    """What one grid point sends back to the client through its Dask future (and what :func:`read_point` reads).

    Attributes:
        run_id: the point's folder name (see :func:`run_id`).
        point: the grid values of the point.
        status: ``"ok"``, ``"failed"`` or ``"busy"`` (another process was running the same point).
        error: why it failed (empty when ok).
        summary: the notebook's ``summary.json`` (``None`` unless ok).
        provenance: ``provenance.json`` of the run (that of the failed attempt when failed).
        files: the small files of the point's folder, exact bytes by relative path: ``summary.json``,
            ``provenance.json`` (or ``failure.json``), and every ``.json``/``.parquet``/``.csv`` up to
            the size limits.
        left_out: the larger files, by relative path, with their sizes in bytes: they are only in ``outputs``.
        outputs: the point's full folder as the worker wrote it: a path or an fsspec URL.
    """

    run_id: str
    point: dict[str, Any]
    status: str
    error: str = ""
    summary: dict[str, Any] | None = None
    provenance: dict[str, Any] | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    left_out: dict[str, int] = field(default_factory=dict)
    outputs: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def table(self, name: str) -> pd.DataFrame:
        """A small table that came back, by name (``"test_curves"`` or ``"runs/mao/metrics"``)."""
        for suffix, read in ((".parquet", pd.read_parquet), (".csv", pd.read_csv)):
            data = self.files.get(f"{name}{suffix}")
            if data is not None:
                return read(io.BytesIO(data))
        if any(f"{name}{s}" in self.left_out for s in (".parquet", ".csv")):
            raise KeyError(
                f"table {name!r} of point {self.run_id} is too large to come back; read it from {self.outputs}"
            )
        raise KeyError(f"point {self.run_id} has no table {name!r}; tables: {', '.join(self.table_names) or 'none'}")

    @property
    def table_names(self) -> list[str]:
        return sorted(n.rsplit(".", 1)[0] for n in self.files if n.endswith((".parquet", ".csv")))


# -- the grid ----------------------------------------------------------------------------------------


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in a stable order; a value listed twice is one point.

    >>> expand_grid({"lr": [0.1, 0.2, 0.1], "seed": [0]})
    [{'lr': 0.1, 'seed': 0}, {'lr': 0.2, 'seed': 0}]
    """
    names = list(grid)
    for name in names:
        values = grid[name]
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(
                f"grid name {name!r} is not a Python identifier, so no notebook can have it as a parameter"
            )
        if name in RESERVED_PARAMETERS:
            raise ValueError(f"grid name {name!r} is set by the sweep itself")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
            raise ValueError(f"grid entry {name!r} must be a non-empty list of values, got {values!r}")
        for value in values:
            _check_json_value(name, value)
    unique = [_unique(grid[n]) for n in names]
    count = math.prod(len(values) for values in unique)
    if count > MAX_GRID_POINTS:
        sizes = " x ".join(f"{len(values)} {n}" for n, values in zip(names, unique))
        raise ValueError(
            f"the grid has {count} points ({sizes}), more than {MAX_GRID_POINTS}: split it into several sweeps"
        )
    points, seen = [], set()
    for combo in itertools.product(*unique):
        point = dict(zip(names, combo))
        key = _canonical(point)
        if key not in seen:
            seen.add(key)
            points.append(point)
    ids: dict[str, dict[str, Any]] = {}
    for point in points:
        other = ids.setdefault(run_id(point), point)
        if other is not point:
            raise ValueError(
                f"grid points {other} and {point} would share the folder {run_id(point)!r}; make the values distinct"
            )
    return points


def _unique(values: Sequence[Any]) -> list[Any]:
    out, seen = [], set()
    for value in values:
        key = _canonical(value)
        if key not in seen:
            seen.add(key)
            out.append(value)
    return out


def _canonical(value: Any) -> str:
    # 1 and 1.0 and True differ for a notebook (its checks look at types), so JSON text is the identity.
    return json.dumps(value, sort_keys=True, allow_nan=True)


def _check_json_value(name: str, value: Any) -> None:
    try:
        json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        raise ValueError(f"grid value {value!r} of {name!r} cannot be a notebook parameter (not JSON)") from None


def run_id(point: Mapping[str, Any]) -> str:
    """The folder name of a grid point: readable, one path component, at most 120 characters.

    >>> run_id({"lr": 0.001, "method": "a/b"}), run_id({})
    ('lr=0.001-method=a_b', 'default')
    """
    text = "-".join(f"{k}={_short(v)}" for k, v in point.items()) or "default"
    text = re.sub(r"[^A-Za-z0-9=.,+_\-\[\]]", "_", text)
    if text.startswith("."):
        text = "_" + text[1:]
    if len(text) > 120:
        import hashlib

        text = text[:100] + "-" + hashlib.sha256(_canonical(dict(point)).encode()).hexdigest()[:16]
    return text


def _short(value: Any) -> str:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


# -- one point (runs on a worker) ----------------------------------------------------------------------


def run_point(
    notebook: str | Path,
    run_id: str,
    point: Mapping[str, Any],
    fixed: Mapping[str, Any],
    outputs: str | Path,
    *,
    notebook_text: str | None = None,
    html: bool = True,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    cell_timeout: float | None = None,
) -> PointResult:
    """Run one grid point and return what the client needs; never raises for a failed run.

    Args:
        notebook: the notebook's path on the client.
        run_id: the point's folder name.
        point, fixed: the grid values and the fixed parameters.
        outputs: the folder or fsspec URL that receives ``<run_id>/`` (as this process sees it).
        notebook_text: the notebook itself, for a worker where ``notebook`` does not exist or differs.
    """
    point = dict(point)
    destination = f"{str(outputs).rstrip('/')}/{run_id}"
    try:
        with _notebook_here(notebook, notebook_text) as local_notebook:
            options = {"html": html, "cell_timeout": cell_timeout}
            job = _PointJob(run_id, point, fixed, max_file_bytes, max_total_bytes)
            if _is_url(outputs):
                return _run_to_url(local_notebook, job, destination, options)
            folder = Path(destination)
            return _run_local(local_notebook, job, folder, folder, options)
    except Exception as error:  # noqa: BLE001 - one broken point must not stop the sweep
        return PointResult(run_id, point, "failed", f"{type(error).__name__}: {error}", outputs=destination)


@dataclass(frozen=True)
class _PointJob:
    """One point as a worker runs it, or as the client reads it back: its folder name, grid values and fixed
    parameters, and the limits on the files that come back through its future."""

    rid: str
    point: dict[str, Any]
    fixed: Mapping[str, Any]
    max_file_bytes: int
    max_total_bytes: int

    def collect(self, folder: Path, shown: str) -> PointResult:
        """The point's ``folder`` read into a :class:`PointResult` (``shown``: where it says the outputs are)."""
        return _collect(folder, self.rid, self.point, shown, self.max_file_bytes, self.max_total_bytes)

    def finished(self, folder: Path, shown: str) -> PointResult | None:
        """The finished run of these parameters in ``folder``, if it holds one (the folder is the truth)."""
        done = self.collect(folder, shown)
        if done.ok and _same_parameters((done.provenance or {}).get("parameters"), {**self.fixed, **self.point}):
            return done
        return None


def _run_local(notebook: Path, job: _PointJob, folder: Path, shown: Any, options: Mapping[str, Any]) -> PointResult:
    record = {"sweep": {"run_id": job.rid, "point": job.point, "outputs": str(shown)}}
    done = job.finished(folder, str(shown))
    if done is not None:
        return done  # finished meanwhile (another sweep into the same folder): not run twice
    try:
        execute_notebook(
            notebook, folder, {**job.fixed, **job.point}, required=[SUMMARY_FILE], record=record, **options
        )
    except RunFolderBusyError as error:
        return PointResult(job.rid, job.point, "busy", str(error), outputs=str(shown))
    except NotebookRunError:
        pass  # failure.json says why; read below
    return job.collect(folder, str(shown))


def _run_to_url(notebook: Path, job: _PointJob, url: str, options: Mapping[str, Any]) -> PointResult:
    import fsspec

    scratch = Path(tempfile.mkdtemp(prefix="mao_lab-point-"))
    try:
        folder = scratch / job.rid
        result = _run_local(notebook, job, folder, url, options)
        if result.status != "busy":
            fs, remote = fsspec.core.url_to_fs(url)
            fs.makedirs(remote, exist_ok=True)
            # The small files last: a reader who finds provenance.json finds the rest.
            files = sorted(
                (p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.name in (PROVENANCE_FILE, FAILURE_FILE)
            )
            for path in files:
                target = f"{remote.rstrip('/')}/{path.relative_to(folder).as_posix()}"
                fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
                fs.put_file(str(path), target)
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class _notebook_here:
    """The notebook as a local file: the given path if it holds ``text``, else a temporary copy."""

    def __init__(self, notebook: str | Path, text: str | None) -> None:
        self.path, self.text, self._scratch = Path(notebook), text, None

    def __enter__(self) -> Path:
        if self.text is None or (self.path.is_file() and self.path.read_text(encoding="utf-8") == self.text):
            return self.path
        self._scratch = tempfile.mkdtemp(prefix="mao_lab-notebook-")
        copy = Path(self._scratch) / self.path.name
        copy.write_text(self.text, encoding="utf-8")
        return copy

    def __exit__(self, *exc: object) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)


def _collect(
    folder: Path, rid: str, point: dict[str, Any], shown: str, max_file_bytes: int, max_total_bytes: int
) -> PointResult:
    """Read a point's folder into a :class:`PointResult`: its status and the files small enough to send."""
    files: dict[str, bytes] = {}
    left_out: dict[str, int] = {}
    budget = max_total_bytes
    candidates = (
        sorted(
            (
                p
                for p in folder.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
            ),
            key=lambda p: (p.name not in (SUMMARY_FILE, PROVENANCE_FILE, FAILURE_FILE), p.stat().st_size, str(p)),
        )
        if folder.is_dir()
        else []
    )
    for path in candidates:
        name, size = path.relative_to(folder).as_posix(), path.stat().st_size
        essential = name in (SUMMARY_FILE, PROVENANCE_FILE, FAILURE_FILE)
        if path.suffix not in _RETURNED_SUFFIXES and not essential:
            left_out[name] = size
        elif essential or (size <= max_file_bytes and size <= budget):
            files[name] = path.read_bytes()
            budget -= size
        else:
            left_out[name] = size
    status, error, summary, info = _status_of(files)
    return PointResult(rid, point, status, error, summary, info, files, left_out, shown)


def _status_of(files: Mapping[str, bytes]) -> tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]:
    """``(status, error, summary, provenance)`` from a point's files (the folder is the truth)."""
    failure, failure_error = _json_object(files.get(FAILURE_FILE), FAILURE_FILE)
    info, info_error = _json_object(files.get(PROVENANCE_FILE), PROVENANCE_FILE)
    if failure is not None:
        return "failed", str(failure.get("error", "failed")), None, failure.get("provenance")
    if FAILURE_FILE in files:
        return "failed", failure_error, None, None
    if info is None or info.get("status") != "ok":
        return "failed", info_error or "provenance.json does not record a finished run", None, info
    summary, summary_error = _json_object(files.get(SUMMARY_FILE), SUMMARY_FILE)
    if summary is None:
        return "failed", summary_error, None, info
    return "ok", "", summary, info


def _json_object(data: bytes | None, name: str) -> tuple[dict[str, Any] | None, str]:
    if data is None:
        return None, f"{name} is missing"
    try:
        value = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        return None, f"{name} is not valid JSON (truncated?): {error}"
    if not isinstance(value, dict):
        return None, f"{name} is not a JSON object"
    return value, ""


def read_point(
    folder: str | Path, *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES
) -> PointResult:
    """A point's folder on the client's disk as a :class:`PointResult` (what a resumed sweep reports)."""
    folder = Path(folder)
    result = _collect(folder, folder.name, {}, str(folder), max_file_bytes, max_total_bytes)
    sweep = (result.provenance or {}).get("sweep", {})
    outputs = sweep.get("outputs") or str(folder)
    return PointResult(
        result.run_id,
        dict(sweep.get("point", {})),
        result.status,
        result.error,
        result.summary,
        result.provenance,
        result.files,
        result.left_out,
        outputs,
    )


# -- the sweep (runs on the client) ----------------------------------------------------------------------


def run_sweep(
    notebook: str | Path,
    grid: Mapping[str, Sequence[Any]],
    out_dir: str | Path,
    *,
    fixed: Mapping[str, Any] | None = None,
    client: Any = None,
    progress: bool = True,
    outputs: str | Path | None = None,
    html: bool = True,
    on_result: Callable[[PointResult], None] | None = None,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    cell_timeout: float | None = None,
    resources: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Run ``notebook`` at every point of ``grid`` (plus the ``fixed`` parameters) and tabulate the results.

    Args:
        notebook: the notebook (it must declare every grid and fixed name, and write ``summary.json``).
        grid: name -> values; every combination is a point; a repeated value is one point.
        out_dir: the client's folder: ``out_dir/<run_id>/`` per point and the table ``out_dir/sweep.parquet``.
        fixed: parameters shared by every point.
        client: a ``dask.distributed.Client``; ``None`` runs the points one after another here.
        outputs: where workers write each point's full folder (``<outputs>/<run_id>/``): a folder as the
            workers see it, or an fsspec URL (``s3://bucket/sweep``, anything fsspec can write).
            Default: ``out_dir`` itself (the right choice on one machine or a shared file system).
        html: write each executed notebook's HTML copy.
        on_result: called on the client with each point's :class:`PointResult` as it arrives (also for
            points already finished, read from ``out_dir``); a study can gather tables from it.
        max_file_bytes, max_total_bytes: the small files that come back through the future: JSON,
            Parquet and CSV files up to ``max_file_bytes`` each and ``max_total_bytes`` per point.
        cell_timeout: seconds one notebook cell may run; a point past it fails with that reason
            (``None``: no limit).
        resources: with a client, the Dask worker resources each point holds while it runs, e.g.
            ``{"GPU": 1}``: one point per GPU at a time, on workers started with ``--resources GPU=1``.

    Returns one row per point of this ``grid``, in grid order, and saves the folder's whole table as
    ``out_dir/sweep.parquet`` (the same rows, then those of points from earlier calls with other grids,
    so a smaller grid drops nothing).  The columns: the point's grid values, then

    - ``run_id``: the point's folder name; ``run_dir``: ``out_dir/<run_id>`` on the client, holding
      ``summary.json``, ``provenance.json`` (or ``failure.json``) and the small tables (by the same
      relative paths as in the notebook's ``output_dir``); ``outputs``: the full folder, as the workers see it;
    - ``status``: ``ok``, ``failed``, ``busy`` (another process was running it) or ``pending`` (not run);
      ``error``: why not ok; ``wall_s``: the run's wall time;
    - ``summary.<key>``: the numbers of ``summary.json``, nested keys joined with dots.

    A point that failed stays failed in the table until a rerun succeeds.

    Raises:
        ValueError: before anything runs: a name the notebook does not declare, a name both swept and
            fixed, a value that is not JSON, two points that would share a folder, an unknown ``outputs``
            protocol, or a finished point in ``out_dir`` that was run with other parameters (it would
            otherwise be taken as done).

    What comes back through each future is a :class:`PointResult`: ``summary`` (a dict),
    ``provenance`` (parameters, git commit, package versions, host, threads, wall time),
    ``files`` (exact bytes of the small files, relative path -> bytes), ``table(name)`` (one of them as a
    DataFrame), ``left_out`` (larger files, only in ``outputs``), ``status`` and ``error``.
    """
    from tqdm.auto import tqdm

    notebook = Path(notebook).resolve()
    out = Path(out_dir).resolve()
    fixed = dict(fixed or {})
    points = expand_grid(grid)
    _check_sweep_parameters(notebook, points, grid, fixed)
    _check_limits(max_file_bytes, max_total_bytes, cell_timeout)
    target = _resolve_target(outputs, out)
    out.mkdir(parents=True, exist_ok=True)
    ids = [run_id(p) for p in points]
    rows = _scan_rows(out)
    _refuse_other_notebook(out, notebook.name, rows)
    _refuse_other_parameters(out, ids, points, fixed, rows)
    limits = {"max_file_bytes": max_file_bytes, "max_total_bytes": max_total_bytes}
    todo = []
    for rid, point in zip(ids, points):
        existing = rows.get(rid)
        if existing is not None and existing["status"] == "ok":  # finished earlier: reported, not rerun
            if on_result is not None:
                on_result(read_point(out / rid, **limits))
            continue
        rows.setdefault(rid, _pending_row(rid, point, out))
        todo.append((rid, point))
    _save_table(out, rows, ids, list(grid))

    def finish(result: PointResult) -> None:
        result = _store(out / result.run_id, result, target)
        row = _row_from_disk(out / result.run_id) if result.status != "busy" else None
        rows[result.run_id] = row or {**rows[result.run_id], "status": result.status, "error": result.error}
        _save_table(out, rows, ids, list(grid))
        if on_result is not None:
            on_result(result)

    options = {"html": html, "cell_timeout": cell_timeout, **limits}
    with tqdm(total=len(todo), desc="sweep", disable=not progress, file=sys.stderr) as bar:
        for result in _results(notebook, todo, fixed, target, client, options, out, resources):
            finish(result)
            bar.update()
    table = _save_table(out, _scan_rows(out, rows), ids, list(grid))
    return table[table["run_id"].isin(set(ids))].reset_index(drop=True)


def _check_limits(max_file_bytes: int, max_total_bytes: int, cell_timeout: float | None) -> None:
    for name, value in (("max_file_bytes", max_file_bytes), ("max_total_bytes", max_total_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    if cell_timeout is not None and (
        isinstance(cell_timeout, bool) or not isinstance(cell_timeout, (int, float)) or not cell_timeout > 0
    ):
        raise ValueError(f"cell_timeout must be a positive number of seconds or None, got {cell_timeout!r}")


def _resolve_target(outputs: str | Path | None, out: Path) -> str:
    """Where workers write the points: ``outputs`` (a checked URL, or a folder made absolute), else ``out``."""
    if outputs is not None and not str(outputs).strip():  # "" would silently mean the current folder
        raise ValueError("outputs is empty: give a folder or an fsspec URL, or leave it out to write into out_dir")
    target = str(outputs) if outputs is not None else str(out)
    if _is_url(target):
        _check_url(target)
        return target
    return str(Path(target).resolve())


def _results(
    notebook: Path,
    todo: Sequence[tuple[str, dict[str, Any]]],
    fixed: Mapping[str, Any],
    target: str,
    client: Any,
    options: Mapping[str, Any],
    out: Path,
    resources: Mapping[str, float] | None = None,
) -> Iterator[PointResult]:
    """Each point's result as it arrives: one after another here, or from a Dask client as they finish."""
    if client is None:
        for rid, point in todo:
            yield run_point(notebook, rid, point, fixed, target, **options)
        return
    from dask.distributed import as_completed

    text = notebook.read_text(encoding="utf-8")  # workers need not see the client's files
    futures = {
        client.submit(
            run_point,
            str(notebook),
            rid,
            point,
            fixed,
            target,
            notebook_text=text,
            pure=False,
            **({"resources": dict(resources)} if resources else {}),  # Dask's own keyword, only when asked for
            **options,
        ): (rid, point)
        for rid, point in todo
    }
    for future in as_completed(futures):
        rid, point = futures[future]
        try:
            yield future.result()
        except Exception as error:  # noqa: BLE001 - a killed worker (KilledWorker), a lost connection
            job = _PointJob(rid, point, fixed, options["max_file_bytes"], options["max_total_bytes"])
            yield _lost_point(out / rid, job, target, error)


def _lost_point(folder: Path, job: _PointJob, target: str, error: BaseException) -> PointResult:
    """What to record when a point's Dask future raised instead of returning.

    A worker writes a local target's folder itself, so the run may well have finished there and only its
    reply been lost (the worker that held the result died before the client fetched it). The folder is the
    truth: a finished run of these parameters is kept as it is, never overwritten by a failure.
    """
    done = None if _is_url(target) else job.finished(folder, str(folder))
    if done is not None:
        return done
    return PointResult(
        job.rid,
        job.point,
        "failed",
        f"the Dask worker running this point died or was lost: {type(error).__name__}: {error}",
        outputs=f"{target}/{job.rid}",
    )


def _check_sweep_parameters(
    notebook: Path, points: list[dict[str, Any]], grid: Mapping[str, Any], fixed: Mapping[str, Any]
) -> None:
    clash = sorted(set(grid) & set(_STATUS_COLUMNS))
    if clash:
        raise ValueError(f"grid name {', '.join(map(repr, clash))} would hide the sweep table's column of that name")
    both = sorted(set(grid) & set(fixed))
    if both:
        raise ValueError(f"{', '.join(both)} is both swept and fixed; give it once")
    reserved = [n for n in fixed if n in RESERVED_PARAMETERS]
    if reserved:
        raise ValueError(f"{', '.join(reserved)} is set by the sweep itself")
    for name, value in fixed.items():
        _check_json_value(name, value)
    check_parameters(notebook, [*fixed, *grid])


def _same_parameters(stored: Any, wanted: Mapping[str, Any]) -> bool:
    """Whether parameters read back from JSON are ``wanted`` (compared as JSON: tuples are lists there)."""
    return _canonical(stored) == _canonical(json.loads(json.dumps(dict(wanted), default=repr)))


def _refuse_other_parameters(
    out: Path,
    ids: Sequence[str],
    points: Sequence[Mapping[str, Any]],
    fixed: Mapping[str, Any],
    rows: Mapping[str, Any],
) -> None:
    """A finished point run with other fixed parameters would be skipped as done: refuse instead."""
    for rid, point in zip(ids, points):
        if rows.get(rid, {}).get("status") != "ok":
            continue
        stored = json.loads((out / rid / PROVENANCE_FILE).read_text()).get("parameters")
        wanted = {**fixed, **point}
        if not _same_parameters(stored, wanted):
            stored = stored if isinstance(stored, dict) else {}
            changed = sorted(
                k for k in set(stored) | set(wanted) if _canonical(stored.get(k)) != _canonical(wanted.get(k))
            )
            raise ValueError(
                f"{out / rid} holds a finished run with other parameters ({', '.join(changed)} differ), which this "
                "sweep would take as done: choose another out_dir, or remove that folder to run it again"
            )


def _refuse_other_notebook(out: Path, name: str, rows: Mapping[str, Any]) -> None:
    """Points of another notebook in ``out`` (a study's folder, another sweep's) would share one table: refuse."""
    for rid in sorted(rows):
        info = _point_provenance(out / rid)
        other = info.get("notebook") if info is not None else None
        if isinstance(other, str) and other != name:
            raise ValueError(
                f"{out} holds points of another notebook ({out / rid} ran {other}, this sweep runs {name}): their "
                "results would be mixed in one table; choose another --out"
            )


def _point_provenance(folder: Path) -> dict[str, Any] | None:
    """A point folder's provenance (that of the failed attempt when it failed), or ``None`` if unreadable."""
    for name in (PROVENANCE_FILE, FAILURE_FILE):
        path = folder / name
        if path.is_file():
            value, _ = _json_object(path.read_bytes(), name)
            if value is not None:
                info = value.get("provenance", value) if name == FAILURE_FILE else value
                return info if isinstance(info, dict) else None
    return None


def _check_url(url: str) -> None:
    """Refuse an fsspec URL whose protocol fsspec does not know (a typo would fail every point)."""
    from fsspec.registry import known_implementations, registry

    protocol = url.split("://", 1)[0]
    if protocol not in known_implementations and protocol not in registry:
        raise ValueError(f"outputs {url!r}: fsspec knows no protocol {protocol!r} (file, memory, s3, gcs, ...)")


def _is_url(target: str | Path) -> bool:
    return isinstance(target, str) and "://" in target


def _store(folder: Path, result: PointResult, target: str) -> PointResult:
    """Write what came back into the client's folder of the point (skipping files already identical there)."""
    if result.status == "busy":
        return result
    files = dict(result.files)
    unsafe = [n for n in files if Path(n).is_absolute() or ".." in Path(n).parts or not n]
    if unsafe:
        return PointResult(
            result.run_id,
            result.point,
            "failed",
            f"the worker sent files outside the point's folder: {unsafe}",
            outputs=result.outputs,
        )
    if not files:  # the worker died before it could report: the client records the failure itself
        failure = {
            "error": result.error,
            "provenance": {"sweep": {"run_id": result.run_id, "point": result.point, "outputs": result.outputs}},
        }
        files[FAILURE_FILE] = (json.dumps(failure, indent=2, sort_keys=True, default=repr) + "\n").encode()
    try:
        for name, data in sorted(files.items(), key=lambda item: item[0] in (PROVENANCE_FILE, FAILURE_FILE)):
            path = folder / name
            if not (path.is_file() and path.read_bytes() == data):
                write_atomically(path, lambda tmp, data=data: tmp.write_bytes(data))
        if result.status == "ok":
            (folder / FAILURE_FILE).unlink(missing_ok=True)  # only now: the success is fully written
    except OSError as error:
        return PointResult(
            result.run_id,
            result.point,
            "failed",
            f"the run finished but its results could not be saved in {folder}: {error}",
            result.summary,
            result.provenance,
            result.files,
            result.left_out,
            result.outputs,
        )
    return result


def _pending_row(rid: str, point: Mapping[str, Any], out: Path) -> dict[str, Any]:
    return {
        **point,
        "run_id": rid,
        "status": "pending",
        "error": "",
        "run_dir": str(out / rid),
        "outputs": "",
        "wall_s": math.nan,
    }


def _row_from_disk(folder: Path) -> dict[str, Any] | None:
    """The table row of a point folder, or ``None`` if the folder is not a sweep point."""
    names = [FAILURE_FILE, PROVENANCE_FILE, SUMMARY_FILE]
    files = {n: (folder / n).read_bytes() for n in names if (folder / n).is_file()}
    status, error, summary, info = _status_of(files)
    sweep = (info or {}).get("sweep")
    if not isinstance(sweep, Mapping) or not isinstance(sweep.get("point"), Mapping):
        return None
    row = {
        **sweep["point"],
        "run_id": folder.name,
        "status": status,
        "error": error,
        "run_dir": str(folder),
        "outputs": str(sweep.get("outputs", "")),
        "wall_s": (info or {}).get("wall_s", math.nan),
    }
    if summary is not None:
        row.update(_flatten(summary))
    return row


def _scan_rows(out: Path, known: Mapping[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Every point folder under ``out`` as a row, by run id (``known`` rows kept where a folder says nothing)."""
    rows = dict(known or {})
    if out.is_dir():
        for folder in sorted(out.iterdir()):
            if folder.is_dir() and not folder.name.startswith("."):
                row = _row_from_disk(folder)
                if row is not None:
                    rows[folder.name] = row
    return rows


def _save_table(
    out: Path, rows: Mapping[str, dict[str, Any]], first: Sequence[str], names: Sequence[str]
) -> pd.DataFrame:
    """Write the sweep table: this grid's points first, in grid order, then the folder's other points."""
    order = [r for r in first if r in rows] + sorted(r for r in rows if r not in set(first))
    table = pd.DataFrame([rows[r] for r in order])
    others = [c for c in table.columns if c not in _STATUS_COLUMNS and not c.startswith("summary.") and c not in names]
    leading = [*[n for n in names if n in table.columns], *others]
    table = table[
        [
            *leading,
            *[c for c in _STATUS_COLUMNS if c in table.columns],
            *[c for c in table.columns if c.startswith("summary.")],
        ]
    ]
    with FolderLock(out / f"{TABLE_NAME}.table", wait=True):  # two sweeps into one folder write the table in turn
        try:
            write_atomically(out / f"{TABLE_NAME}.parquet", lambda tmp: table.to_parquet(tmp, index=False))
        except (TypeError, ValueError, ImportError) as error:  # mixed types across grids, or no pyarrow
            if not isinstance(error, ImportError):
                warnings.warn(f"sweep table has columns of mixed types ({error}); saved them as text", stacklevel=2)
                text = table.astype({c: str for c in table.columns if table[c].dtype == object})
                write_atomically(out / f"{TABLE_NAME}.parquet", lambda tmp: text.to_parquet(tmp, index=False))
            else:
                write_atomically(out / f"{TABLE_NAME}.csv", lambda tmp: table.to_csv(tmp, index=False))
    return table


def _flatten(data: Mapping[str, Any], prefix: str = "summary.") -> dict[str, Any]:
    """Nested JSON numbers as flat columns: ``{"a": {"b": 1}}`` -> ``{"summary.a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            flat[f"{prefix}{key}"] = value
    return flat


# -- Dask ----------------------------------------------------------------------------------------------


def local_cluster(workers: int, *, dashboard: bool = False, resources: Mapping[str, float] | None = None) -> Any:
    """A local Dask cluster whose every socket listens on 127.0.0.1 only.

    Dask's default dashboard listens on all interfaces (``0.0.0.0:8787``) without authentication;
    here it is off, or with ``dashboard=True`` on ``127.0.0.1:8787`` (reach it from elsewhere through
    an SSH tunnel, see the README).  With the dashboard off the scheduler still serves its health
    routes over HTTP: on a free port of 127.0.0.1.  ``resources`` (e.g. ``{"GPU": 1}``) are what each worker
    offers to points submitted with resources.
    """
    from dask.distributed import LocalCluster

    http = (
        {"dashboard": True, "dashboard_address": "127.0.0.1:8787"}
        if dashboard
        else {"dashboard": False, "dashboard_address": "127.0.0.1:0"}
    )
    return LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=http["dashboard_address"],
        scheduler_kwargs=http,
        **({"resources": dict(resources)} if resources else {}),
    )


def check_local_workers(workers: int, option: str = "--workers") -> int:
    """Refuse a local cluster of a negative size, or of more than four processes per CPU core (a typo, not a plan:
    every worker imports torch and runs notebook kernels).

    >>> check_local_workers(2)
    2
    """
    limit = 4 * (os.cpu_count() or 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"{option} must be >= 0, got {workers!r}")
    if workers > limit:
        raise ValueError(f"{option} {workers} is more than 4 worker processes per CPU core of this machine ({limit})")
    return workers


def check_scheduler_address(address: str, option: str = "scheduler") -> str:
    """Refuse a Dask scheduler address that no client could reach, before anything is started.

    >>> check_scheduler_address("tls://10.0.0.5:8786")
    'tls://10.0.0.5:8786'
    >>> check_scheduler_address("localhost")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: scheduler 'localhost' is not a Dask scheduler address (expected tls://HOST:PORT or ...): no port
    """
    from distributed.comm import registry
    from distributed.comm.addressing import parse_address, parse_host_port

    expected = "expected tls://HOST:PORT or tcp://HOST:PORT"
    if not isinstance(address, str) or not address.strip():
        raise ValueError(f"{option} is empty ({expected})")
    try:
        scheme, location = parse_address(address)
        if scheme not in registry.backends:
            raise ValueError(f"unknown scheme {scheme!r}")
        if scheme in ("tcp", "tls"):
            host, port = parse_host_port(location)
            if not host or not 0 < int(port) < 65536:
                raise ValueError("no host, or a port outside 1..65535")
    except (ValueError, TypeError) as error:
        reason = "no port" if "port" in str(error) and "missing" in str(error) else " ".join(str(error).split())
        raise ValueError(f"{option} {address!r} is not a Dask scheduler address ({expected}): {reason}") from None
    return address


def connect(scheduler: str, *, tls: tuple[str, str, str] | None = None) -> Any:
    """A client of an existing scheduler; ``tls=(ca_file, cert_file, key_file)`` for a ``tls://`` address."""
    from dask.distributed import Client

    if tls is not None:
        from distributed.security import Security

        ca, cert, key = tls
        security = Security(tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key, require_encryption=True)
        return Client(scheduler, security=security)
    host = re.sub(r"^\w+://", "", scheduler).rsplit(":", 1)[0].strip("[]")
    if scheduler.startswith("tcp://") and host not in ("127.0.0.1", "localhost", "::1"):
        warnings.warn(
            f"{scheduler} is plain TCP to another machine: anyone on the network can see the traffic and run code "
            "on the workers; reach it through an SSH tunnel (tcp://127.0.0.1:PORT) or use tls:// (see the README)",
            stacklevel=2,
        )
    return Client(scheduler)


# -- command line -------------------------------------------------------------------------------------


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``-g NAME=V1,V2`` options; values read like ``-p`` values (``1e-3`` is a number).

    A bracketed value keeps its commas: ``-g sigmas=[1,10],[1,100]`` is two lists.
    """
    grid: dict[str, list[Any]] = {}
    for item in items:
        name, values = parse_assignment(item, "grid entry")
        if not values:
            raise ValueError(f"bad grid entry {item!r}: expected NAME=V1,V2,...")
        if name in grid:
            raise ValueError(f"grid name {name!r} given twice")
        items = _split_values(values)
        if any(not item.strip() for item in items):
            raise ValueError(f"bad grid entry {item!r}: an empty value (write null for None)")
        grid[name] = [parse_value(v) for v in items]
    return grid


def _split_values(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def _one_notebook(name: str) -> Path:
    """The one notebook ``name`` names; a prefix that several notebooks share is refused, not guessed."""
    found = find_notebooks([name])
    exact = [p for p in found if name in (p.stem, p.name)]
    found = exact or found
    if len(found) > 1:
        stems = ", ".join(p.stem for p in found)
        raise ValueError(f"{name!r} names {len(found)} notebooks ({stems}); a sweep runs one")
    return found[0]


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineArgumentParser(prog="python -m mao_lab.sweep", description=__doc__.split("\n")[0])
    parser.add_argument("notebook", help="notebook name or prefix, e.g. 00_quickstart")
    parser.add_argument("-g", "--grid", action="append", default=[], metavar="NAME=V1,V2,...", help="a swept parameter")
    parser.add_argument(
        "-p", "--parameter", action="append", default=[], metavar="NAME=VALUE", help="a fixed parameter"
    )
    parser.add_argument("--smoke", action="store_true", help="every run in the notebook's smoke setting")
    parser.add_argument(
        "--out", type=folder_argument, default=Path("runs/sweep"), help="the client's folder (table and small results)"
    )
    parser.add_argument(
        "--outputs",
        default=None,
        help="where workers write full run folders: a folder or an fsspec URL (default: --out)",
    )
    parser.add_argument("--workers", type=int, default=0, help="start a local Dask cluster with this many workers")
    parser.add_argument(
        "--dashboard", action="store_true", help="with --workers: serve Dask's dashboard on 127.0.0.1:8787"
    )
    parser.add_argument(
        "--scheduler",
        default=None,
        help="address of an existing Dask scheduler (tls://... or an SSH-tunnelled tcp://127.0.0.1:...)",
    )
    parser.add_argument(
        "--cell-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="fail a point whose notebook cell runs longer",
    )
    parser.add_argument(
        "--tls", nargs=3, default=None, metavar=("CA", "CERT", "KEY"), help="files for a tls:// scheduler"
    )
    args = parser.parse_args(argv)
    try:
        notebook = _one_notebook(args.notebook)
        grid = parse_grid(args.grid)
        fixed = parse_parameters(args.parameter)
        check_local_workers(args.workers)
        if args.workers and args.scheduler:
            raise ValueError("give --workers (a local cluster) or --scheduler (an existing one), not both")
        if args.cell_timeout is not None and not args.cell_timeout > 0:
            raise ValueError(f"--cell-timeout must be a positive number of seconds, got {args.cell_timeout}")
        if "smoke" in grid:
            raise ValueError("smoke is set by --smoke, not swept")
        fixed["smoke"] = args.smoke
        if args.scheduler is not None:
            check_scheduler_address(args.scheduler, "--scheduler")
        if args.tls is not None:
            missing = [f for f in args.tls if not Path(f).is_file()]
            if missing:
                raise ValueError(f"--tls: no file {', '.join(missing)}")
        if args.out.exists() and not args.out.is_dir():
            raise ValueError(f"--out {args.out} is a file, not a folder")
        if args.outputs is not None:
            _resolve_target(args.outputs, args.out.resolve())  # "" or an unknown URL protocol: refused now
        _check_sweep_parameters(notebook, expand_grid(grid), grid, fixed)
    except (ValueError, OSError) as error:
        parser.error(str(error))
    client = None
    try:
        if args.scheduler:
            client = connect(args.scheduler, tls=tuple(args.tls) if args.tls else None)
        elif args.workers:
            from dask.distributed import Client

            client = Client(local_cluster(args.workers, dashboard=args.dashboard))
        table = run_sweep(
            notebook, grid, args.out, fixed=fixed, client=client, outputs=args.outputs, cell_timeout=args.cell_timeout
        )
    except (ValueError, OSError) as error:  # a refused rerun, an unreachable scheduler, an unwritable --out
        parser.error(" ".join(str(error).split()))
    finally:
        if client is not None:
            cluster = client.cluster
            client.close()
            if cluster is not None and args.workers:
                cluster.close()
    mine = table
    failed = int((mine["status"] != "ok").sum())
    print(mine.drop(columns=["run_dir", "outputs"]).to_string(index=False))
    print(f"{len(mine) - failed} of {len(mine)} runs ok; table in {args.out}/{TABLE_NAME}.parquet")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
