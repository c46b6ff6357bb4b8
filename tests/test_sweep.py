"""Sweeps run a notebook over a grid, locally and on a Dask cluster, and gather a tidy table."""

from __future__ import annotations

from pathlib import Path

import pytest

from mao_lab.runner import NOTEBOOK_DIR
from mao_lab.sweep import expand_grid, main, run_sweep

pytestmark = pytest.mark.notebook
QUICKSTART = NOTEBOOK_DIR / "00_quickstart.ipynb"


def test_grid_expansion_and_bad_grids() -> None:
    assert expand_grid({"a": [1, 2], "b": ["x", "y"]}) == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}
    ]
    with pytest.raises(ValueError, match="grid entry 'lr' must be a non-empty list"):
        expand_grid({"lr": []})


def test_sweep_on_a_dask_cluster_collects_summaries_and_failures(tmp_path: Path) -> None:
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
        table = run_sweep(QUICKSTART, {"lr": [0.003, -1.0]}, tmp_path, fixed={"smoke": True, "steps": 5}, client=client, progress=False)
    assert list(table["status"]) == ["ok", "failed"]
    assert "bad notebook parameter `lr`" in table.loc[1, "error"]
    assert table.loc[0, "summary.steps"] == 5
    assert (tmp_path / "sweep.parquet").exists()
    # a second call resumes: the finished point is not run again
    again = run_sweep(QUICKSTART, {"lr": [0.003]}, tmp_path, fixed={"smoke": True, "steps": 5}, progress=False)
    assert list(again["status"]) == ["ok"] and again.loc[0, "summary.steps"] == 5


def test_command_line_rejects_bad_grids(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["00_quickstart", "-g", "lr"])
    assert "bad grid entry 'lr'" in capsys.readouterr().err
