"""Batch sweeps: one notebook over a grid of parameters, on a laptop or on a Dask cluster.

Every point of the grid runs the notebook headlessly (:func:`mao_lab.runner.execute_notebook`) into
its own folder; the sweep then gathers each run's ``summary.json`` into one tidy table::

    python -m mao_lab.sweep 00_quickstart -g lr=0.001,0.003 -g seed=0,1,2 --smoke --out runs/sweep
    python -m mao_lab.sweep 00_quickstart -g seed=0,1,2,3 --workers 4           # a local Dask cluster
    python -m mao_lab.sweep 00_quickstart -g seed=0,1 --scheduler tcp://host:8786  # an existing one

The same function runs from Python with ``client=`` any ``dask.distributed.Client``.  Points already
finished (their folder holds the executed notebook) are skipped, so an interrupted sweep resumes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .notebook import ResultsFolder
from .runner import NotebookRunError, execute_notebook, find_notebooks

__all__ = ["expand_grid", "run_sweep", "main"]


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in a stable order.

    >>> expand_grid({"lr": [0.1, 0.2], "seed": [0]})
    [{'lr': 0.1, 'seed': 0}, {'lr': 0.2, 'seed': 0}]
    """
    for name, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
            raise ValueError(f"grid entry {name!r} must be a non-empty list of values, got {values!r}")
    names = list(grid)
    return [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]


def _run_id(point: Mapping[str, Any]) -> str:
    return "-".join(f"{k}={v}" for k, v in point.items()).replace("/", "_") or "default"


def _run_point(notebook: str, folder: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """Run one grid point; never raises, so one failed point does not stop the sweep."""
    try:
        execute_notebook(notebook, folder, parameters)
        return {"status": "ok", "error": ""}
    except NotebookRunError as error:
        return {"status": "failed", "error": str(error)}


def run_sweep(
    notebook: str | Path,
    grid: Mapping[str, Sequence[Any]],
    out_dir: str | Path,
    *,
    fixed: Mapping[str, Any] | None = None,
    client: Any = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Run ``notebook`` at every point of ``grid`` (plus the ``fixed`` parameters) into ``out_dir``.

    Returns (and saves as ``out_dir/sweep``) one row per point: the point's parameters, ``status``,
    ``error``, ``run_dir`` and the flattened numbers of its ``summary.json``.
    """
    from tqdm.auto import tqdm

    notebook = str(Path(notebook).resolve())
    out = ResultsFolder(out_dir)
    points = expand_grid(grid)
    folders = [str((out.path / _run_id(point)).resolve()) for point in points]
    todo = [i for i, f in enumerate(folders) if not (Path(f) / f"{Path(notebook).stem}.ipynb").exists()]
    outcomes: dict[int, dict[str, Any]] = {i: {"status": "ok", "error": "", "resumed": True} for i in range(len(points)) if i not in todo}
    fixed = dict(fixed or {})
    if client is None:
        for i in tqdm(todo, desc="sweep", disable=not progress, file=sys.stderr):
            outcomes[i] = _run_point(notebook, folders[i], {**fixed, **points[i]})
    else:
        from dask.distributed import as_completed

        futures = {client.submit(_run_point, notebook, folders[i], {**fixed, **points[i]}, pure=False): i for i in todo}
        for future in tqdm(as_completed(futures), total=len(futures), desc="sweep", disable=not progress, file=sys.stderr):
            outcomes[futures[future]] = future.result()
    rows = []
    for i, point in enumerate(points):
        row = {**point, "run_dir": folders[i], "status": outcomes[i]["status"], "error": outcomes[i]["error"]}
        summary = Path(folders[i]) / "summary.json"
        if row["status"] == "ok" and summary.exists():
            row.update(_flatten(json.loads(summary.read_text())))
        rows.append(row)
    table = pd.DataFrame(rows)
    out.save_table(table, "sweep")
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


def main(argv: Sequence[str] | None = None) -> int:
    import yaml

    parser = argparse.ArgumentParser(prog="python -m mao_lab.sweep", description=__doc__.split("\n")[0])
    parser.add_argument("notebook", help="notebook name or prefix, e.g. 00_quickstart")
    parser.add_argument("-g", "--grid", action="append", default=[], metavar="NAME=V1,V2,...", help="a swept parameter")
    parser.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE", help="a fixed parameter")
    parser.add_argument("--smoke", action="store_true", help="every run in the notebook's smoke setting")
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"))
    parser.add_argument("--workers", type=int, default=0, help="start a local Dask cluster with this many workers")
    parser.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler")
    args = parser.parse_args(argv)
    try:
        notebook = find_notebooks([args.notebook])[0]
        grid = {}
        for item in args.grid:
            name, sep, values = item.partition("=")
            if not sep or not name.isidentifier() or not values:
                raise ValueError(f"bad grid entry {item!r}: expected NAME=V1,V2,...")
            grid[name] = [yaml.safe_load(v) for v in values.split(",")]
        fixed = {}
        for item in args.parameter:
            name, sep, value = item.partition("=")
            if not sep or not name.isidentifier():
                raise ValueError(f"bad parameter {item!r}: expected NAME=VALUE")
            fixed[name] = yaml.safe_load(value)
        if args.workers < 0:
            raise ValueError(f"--workers must be >= 0, got {args.workers}")
        expand_grid(grid)
    except ValueError as error:
        parser.error(str(error))
    fixed["smoke"] = args.smoke
    client = None
    if args.scheduler or args.workers:
        from dask.distributed import Client, LocalCluster

        client = Client(args.scheduler) if args.scheduler else Client(LocalCluster(n_workers=args.workers, threads_per_worker=1))
    try:
        table = run_sweep(notebook, grid, args.out, fixed=fixed, client=client)
    finally:
        if client is not None:
            client.close()
    failed = int((table["status"] != "ok").sum())
    print(table.drop(columns=["run_dir"]).to_string(index=False))
    print(f"{len(table) - failed} of {len(table)} runs ok; table in {args.out}/sweep.parquet")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
