"""Sweeps run a notebook over a grid, locally and on a Dask cluster, and gather a tidy table.

Most cases use a tiny notebook written into ``tmp_path`` (a kernel start, no training), so that they
test the sweep machinery and not a notebook; one case runs the real quickstart on a Dask cluster.
"""

from __future__ import annotations

import io
import json
from functools import partial
from pathlib import Path

import pandas as pd
import pytest

from mao_lab.runner import NOTEBOOK_DIR
from mao_lab.sweep import PointResult, expand_grid, local_cluster, main, read_point, run_id, run_sweep

from _helpers import write_notebook

pytestmark = pytest.mark.notebook
QUICKSTART = NOTEBOOK_DIR / "00_quickstart.ipynb"

TINY_BODY = """\
import json, os, pathlib
import pandas as pd
out = pathlib.Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
if mode == "die":
    os.kill(os.getpid(), 9)          # what the out-of-memory killer does to a kernel
if mode == "kill_worker":
    os.kill(os.getppid(), 9)         # the kernel's parent: the process running the point
    os.kill(os.getpid(), 9)
if mode == "raise":
    raise ValueError(f"bad x = {x}")
pd.DataFrame({"x": [x, 2 * x]}).to_parquet(out / "table.parquet")
(out / "big.parquet").write_bytes(os.urandom(big))
if mode != "nosummary":
    text = json.dumps({"x": x, "seed": seed, "nested": {"y": 3 * x}})
    (out / "summary.json").write_text(text[:9] if mode == "truncated" else text)
"""


# A notebook with the lab's parameters contract; ``mode`` picks its fault.
tiny_notebook = partial(
    write_notebook,
    parameters="smoke = False\noutput_dir = 'out'\nx = 1.0\nmode = 'ok'\nseed = 0\nbig = 0",
    body=TINY_BODY,
)


def test_grid_expansion_and_bad_grids() -> None:
    assert expand_grid({"a": [1, 2], "b": ["x", "y"]}) == [
        {"a": 1, "b": "x"},
        {"a": 1, "b": "y"},
        {"a": 2, "b": "x"},
        {"a": 2, "b": "y"},
    ]
    # a repeated value is one point; 1 and 1.0 are distinct values for a notebook that checks types
    assert expand_grid({"a": [1, 1, 1.0], "b": [[1, 2], [1, 2]]}) == [{"a": 1, "b": [1, 2]}, {"a": 1.0, "b": [1, 2]}]
    with pytest.raises(ValueError, match="grid entry 'lr' must be a non-empty list"):
        expand_grid({"lr": []})
    with pytest.raises(ValueError, match="would share the folder"):
        expand_grid({"name": ["a/b", "a_b"]})
    with pytest.raises(ValueError, match="not a Python identifier"):
        expand_grid({"learning-rate": [1]})
    with pytest.raises(ValueError, match="not JSON"):
        expand_grid({"lr": [object()]})
    assert run_id({"p": "../../etc"}) == "p=.._.._etc" and "/" not in run_id({"p": "a/b\n"})
    assert len(run_id({"p": "x" * 500})) <= 120


def test_results_come_back_through_the_future_not_the_workers_disk(tmp_path: Path) -> None:
    """Workers write their folders elsewhere; the client's folder gets the small files, byte for byte."""
    notebook = tiny_notebook(tmp_path)
    worker_disk, client_disk = tmp_path / "worker", tmp_path / "client"
    results: list[PointResult] = []
    with local_cluster(2) as cluster, cluster.get_client() as client:
        table = run_sweep(
            notebook,
            {"x": [1.0, 2.0]},
            client_disk,
            fixed={"big": 5000},
            client=client,
            outputs=worker_disk,
            progress=False,
            html=False,
            on_result=results.append,
            max_file_bytes=4000,
        )
    assert sorted(r.point["x"] for r in results) == [1.0, 2.0] and all(r.ok for r in results)
    for result in results:
        point_dir = worker_disk / result.run_id
        assert result.summary == {"x": result.point["x"], "seed": 0, "nested": {"y": 3 * result.point["x"]}}
        assert result.table("table")["x"].tolist() == [result.point["x"], 2 * result.point["x"]]
        # the large file stays with the worker; the small ones travel and land byte-identical
        assert result.left_out["big.parquet"] == 5000 and "big.parquet" not in result.files
        assert set(result.files) == {"summary.json", "provenance.json", "table.parquet"}
        for name, data in result.files.items():
            assert (point_dir / name).read_bytes() == data == (client_disk / result.run_id / name).read_bytes()
        assert not (client_disk / result.run_id / "big.parquet").exists()
        assert not (client_disk / result.run_id / "tiny.ipynb").exists() and (point_dir / "tiny.ipynb").exists()
        info = result.provenance
        assert info["parameters"] == {"x": result.point["x"], "big": 5000} and info["wall_s"] > 0
        assert {"host", "commit", "uncommitted_changes", "versions", "threads", "notebook_sha256"} <= set(info)
        assert info["versions"]["torch"].startswith("2.13") and info["sweep"]["point"] == result.point
    assert list(table["status"]) == ["ok", "ok"] and list(table["summary.nested.y"]) == [3.0, 6.0]
    # the workers' disk gone, the client still resumes from its own copy and reads the same results back
    import shutil

    shutil.rmtree(worker_disk)
    again: list[PointResult] = []
    resumed = run_sweep(
        notebook, {"x": [1.0, 2.0]}, client_disk, fixed={"big": 5000}, progress=False, on_result=again.append
    )
    assert resumed.equals(table) and not worker_disk.exists()
    assert {r.run_id: r.files for r in again} == {r.run_id: r.files for r in results}
    assert read_point(client_disk / results[0].run_id).table("table").equals(results[0].table("table"))


def test_outputs_to_an_fsspec_url(tmp_path: Path) -> None:
    import fsspec

    notebook = tiny_notebook(tmp_path)
    table = run_sweep(
        notebook, {"x": [4.0]}, tmp_path / "client", outputs="memory://h4-sweep", progress=False, html=False
    )
    fs = fsspec.filesystem("memory")
    rid = table.loc[0, "run_id"]
    stored = {p.rsplit("/", 1)[-1] for p in fs.find(f"/h4-sweep/{rid}")}
    assert {"tiny.ipynb", "summary.json", "provenance.json", "table.parquet", "big.parquet"} <= stored
    assert fs.cat(f"/h4-sweep/{rid}/summary.json") == (tmp_path / "client" / rid / "summary.json").read_bytes()
    assert table.loc[0, "outputs"] == f"memory://h4-sweep/{rid}"


def test_sweep_of_the_quickstart_on_a_dask_cluster_collects_summaries_and_failures(tmp_path: Path) -> None:
    with local_cluster(2) as cluster, cluster.get_client() as client:
        table = run_sweep(
            QUICKSTART,
            {"lr": [0.003, -1.0]},
            tmp_path,
            fixed={"smoke": True, "steps": 5},
            client=client,
            progress=False,
        )
    assert list(table["status"]) == ["ok", "failed"]
    assert "bad notebook parameter `lr`" in table.loc[1, "error"]
    assert table.loc[0, "summary.steps"] == 5
    assert (tmp_path / "sweep.parquet").exists()
    # a second call with a smaller grid resumes: the finished point is not run again, the failed row stays
    before = (tmp_path / "lr=0.003" / "00_quickstart.ipynb").stat().st_mtime_ns
    again = run_sweep(QUICKSTART, {"lr": [0.003]}, tmp_path, fixed={"smoke": True, "steps": 5}, progress=False)
    assert (
        list(again["run_id"]) == ["lr=0.003"] and list(again["status"]) == ["ok"] and again.loc[0, "summary.steps"] == 5
    )
    assert (tmp_path / "lr=0.003" / "00_quickstart.ipynb").stat().st_mtime_ns == before
    saved = pd.read_parquet(tmp_path / "sweep.parquet")
    assert list(saved["run_id"]) == ["lr=0.003", "lr=-1.0"] and list(saved["status"]) == ["ok", "failed"]


def test_command_line_rejects_bad_grids(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["00_quickstart", "-g", "lr"])
    assert "bad grid entry 'lr'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["00_quickstart", "-g", "learning_rate=1e-3"])
    assert "00_quickstart.ipynb has no parameter 'learning_rate'" in capsys.readouterr().err


def test_point_result_travels_by_pickle() -> None:
    import pickle

    frame = pd.DataFrame({"a": [1, 2]})
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    result = PointResult(
        "a=1", {"a": 1}, "ok", summary={"m": 1}, files={"t.parquet": buffer.getvalue(), "summary.json": b"{}"}
    )
    copy = pickle.loads(pickle.dumps(result))
    assert copy == result and copy.table("t").equals(frame) and copy.table_names == ["t"]
    with pytest.raises(KeyError, match="no table 'nope'"):
        copy.table("nope")
    assert json.loads(copy.files["summary.json"]) == {}
