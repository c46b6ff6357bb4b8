"""Every notebook runs headlessly under papermill in its smoke setting, and rejects bad parameters."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from mao_lab.notebook import SMOKE_NOTE
from mao_lab.runner import NOTEBOOK_DIR, NotebookRunError, execute_notebook, find_notebooks

pytestmark = pytest.mark.notebook

NOTEBOOKS = find_notebooks()

# What each notebook must leave in its output folder (besides the executed copy and its HTML).
EXPECTED_FILES = {
    "00_quickstart": ["test_curves.parquet", "test_curves.html", "summary.json", "plotly.min.js"],
    "01_toy_landscape": [
        "trajectories.parquet",
        "pareto.parquet",
        "reach.parquet",
        "rescaling.parquet",
        "rescaled_trajectories.parquet",
        "parameter_space.html",
        "loss_space.html",
        "distance.html",
        "rescaling.html",
        "summary.json",
        "plotly.min.js",
    ],
    "02_imbalanced_regression": [
        "balance.parquet",
        "losses.parquet",
        "ownership.parquet",
        "final_losses.parquet",
        "ownership.html",
        "grad_norms.html",
        "update_norms.html",
        "test_curves.html",
        "summary.json",
        "plotly.min.js",
        "runs/sum/metrics.parquet",
        "runs/sum/params.json",
        "runs/mao/metrics.parquet",
        "runs/mao/params.json",
    ],
    "03_multimnist": [
        "balance.parquet",
        "scores.parquet",
        "results.parquet",
        "delta_m.parquet",
        "ownership.parquet",
        "ownership_by_method.parquet",
        "imbalance_over_steps.parquet",
        "samples.html",
        "task_metrics.html",
        "delta_m.html",
        "ownership.html",
        "imbalance_over_steps.html",
        "explorer.html",
        "summary.json",
        "plotly.min.js",
        "runs/sum-seed0/metrics.parquet",
        "runs/sum-seed0/params.json",
        "runs/mao-seed1/metrics.parquet",
        "runs/mao-seed1/params.json",
    ],
    "04_balance_explorer": [
        "balance.parquet",
        "runs.parquet",
        "balance_summary.parquet",
        "ownership.parquet",
        "imbalance_over_steps.html",
        "imbalance_by_layer.html",
        "ownership.html",
        "explorer.html",
        "share_heatmap.html",
        "summary.json",
        "plotly.min.js",
        "demo_runs/sum/metrics.parquet",
        "demo_runs/mao/metrics.parquet",
    ],
    "07_your_problem": [
        "my_problem.py",
        "ownership.parquet",
        "ownership.html",
        "scores.parquet",
        "results.parquet",
        "delta_m.html",
        "summary.json",
        "runs/sum/metrics.parquet",
        "runs/mao/metrics.parquet",
        "study/ledger.md",
        "study/design.json",
    ],
}


# The headline numbers each notebook's summary.json must hold (its prose is written from them).
SUMMARY_KEYS = {
    "00_quickstart": {"worst_normalised_test_mse", "worst_task_ratio_adam_over_mao"},
    "01_toy_landscape": {"reached_count", "final_distance", "unreached_in_conflict_band", "rescaling_max_gap"},
    "02_imbalanced_regression": {
        "largest_sigma_task_min_share",
        "mean_imbalance",
        "layer_owner",
        "worst_normalised_test_mse",
    },
    "03_multimnist": {"delta_m_percent", "best_delta_m_method", "largest_share_per_shared_layer", "mean_imbalance"},
    "04_balance_explorer": {"runs", "mean_imbalance", "most_imbalanced_run", "least_imbalanced_run"},
    "05_claims": {"verdicts", "smoke", "seeds", "tables", "parts"},
    "07_your_problem": {
        "delta_m_percent",
        "best_delta_m_method",
        "largest_share_per_shared_layer",
        "mean_imbalance",
        "problem",
    },
}


def _outputs(notebook: nbformat.NotebookNode, kind: str) -> list[str]:
    """The text of every output of ``kind`` (``stream`` or a mimetype such as ``text/markdown``)."""
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if kind == "stream" and output.get("output_type") == "stream":
                texts.append(output["text"])
            elif kind in output.get("data", {}):
                texts.append(output["data"][kind])
    return texts


def test_the_collection_is_found_and_committed_clean() -> None:
    assert [p.stem for p in NOTEBOOKS][:1] == ["00_quickstart"]
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        code = [c for c in notebook.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name} has outputs"
        tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1 and "smoke" in tagged[0].source, f"{path.name}: one `parameters` cell with `smoke`"
        assert code.index(tagged[0]) == 0, f"{path.name}: the parameters cell comes first"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_its_smoke_setting(path: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    parameters: dict[str, object] = {"smoke": True}
    if path.stem == "05_claims":
        # It reads the session's smoke study (conftest.py), where alone it would make its own, a minute more in CI;
        # the browser test runs it alone, making its own.
        parameters["study_dir"] = str(request.getfixturevalue("smoke_study").folder)
    executed = execute_notebook(path, tmp_path, parameters)
    for name in EXPECTED_FILES.get(path.stem, []):
        assert (tmp_path / name).is_file(), f"{path.stem} did not write {name}"
    html = (tmp_path / f"{path.stem}.html").read_text(encoding="utf-8")
    notebook = nbformat.read(executed, as_version=4)
    mimetypes = {key for c in notebook.cells if c.cell_type == "code" for o in c.outputs for key in o.get("data", {})}
    assert "application/vnd.plotly.v1+json" in mimetypes, "no plotly figure in the executed notebook"
    # The HTML export carries plotly.js itself, so the figures show offline.
    assert "Plotly.newPlot" in html and "cdn.plot.ly" not in html.split("Plotly.newPlot")[0][-20000:]
    if path.stem not in SUMMARY_KEYS:  # a notebook joins the checks below by listing its headline keys there
        return
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert SUMMARY_KEYS[path.stem] <= set(summary), sorted(SUMMARY_KEYS[path.stem] - set(summary))
    # A smoke run says that its numbers mean nothing, where it starts and above the findings written from summary.json.
    assert any(SMOKE_NOTE in text for text in _outputs(notebook, "stream")), "no smoke note printed"
    findings = [text for text in _outputs(notebook, "text/markdown") if "**This run:**" in text]
    assert len(findings) == 1 and findings[0].startswith(f"**{SMOKE_NOTE}**"), findings


@pytest.mark.parametrize(
    "parameters, message",
    [({"lr": -1.0}, "bad notebook parameter `lr` = -1.0"), ({"steps": 0}, "bad notebook parameter `steps` = 0")],
)
def test_bad_parameter_fails_with_the_notebooks_message_and_keeps_results(
    tmp_path: Path, parameters: dict, message: str
) -> None:
    path = NOTEBOOK_DIR / "00_quickstart.ipynb"
    (tmp_path / "summary.json").write_text('{"earlier": "result"}')
    with pytest.raises(NotebookRunError, match=message.replace("`", ".")):
        execute_notebook(path, tmp_path, {"smoke": True, **parameters}, html=False)
    assert json.loads((tmp_path / "summary.json").read_text()) == {"earlier": "result"}
    assert (tmp_path / "00_quickstart.failed.ipynb").exists()
    assert not (tmp_path / "00_quickstart.ipynb").exists()


def test_runner_rejects_unknown_notebooks() -> None:
    with pytest.raises(ValueError, match="no notebook matches 'nope'"):
        find_notebooks(["nope"])


@pytest.mark.parametrize(
    "notebook, parameters, message",
    [
        ("01_toy_landscape", {"methods": ["mean", "adamm"]}, "bad notebook parameter `methods` = ['mean', 'adamm']"),
        ("01_toy_landscape", {"lr": -1.0}, "bad notebook parameter `lr` = -1.0"),
        ("02_imbalanced_regression", {"methods": ["sum", "nope"]}, "bad notebook parameter `methods`"),
        ("03_multimnist", {"tasks": ["left", "colour"]}, "bad notebook parameter `tasks` = ['left', 'colour']"),
        ("04_balance_explorer", {"run_dirs": ["no/such/folder"]}, "bad notebook parameter `run_dirs`"),
        (
            "03_multimnist",
            {"problem": "mao_lab.problems:nope"},
            "bad notebook parameter `problem` = 'mao_lab.problems:nope'",
        ),
        ("04_balance_explorer", {"problem": "no_such_module:factory"}, "bad notebook parameter `problem`"),
        ("03_multimnist", {"device": "tpu"}, "bad notebook parameter `device` = 'tpu'"),
        ("07_your_problem", {"autocast": "fp8"}, "bad notebook parameter `autocast` = 'fp8'"),
    ],
    ids=[
        "01-unknown-method",
        "01-negative-lr",
        "02-unknown-method",
        "03-unknown-task",
        "04-missing-runs",
        "03-unknown-problem",
        "04-unknown-problem",
        "03-unknown-device",
        "07-unknown-autocast",
    ],
)
def test_bad_parameter_stops_the_toy_notebooks_with_their_message(
    tmp_path: Path, notebook: str, parameters: dict, message: str
) -> None:
    path = NOTEBOOK_DIR / f"{notebook}.ipynb"
    with pytest.raises(NotebookRunError, match=re.escape(message).replace("`", ".")):
        execute_notebook(path, tmp_path, {"smoke": True, **parameters}, html=False)
    assert not (tmp_path / "summary.json").exists()


def test_the_balance_explorer_opens_the_runs_of_the_regression_notebook(tmp_path: Path) -> None:
    regression = execute_notebook(
        NOTEBOOK_DIR / "02_imbalanced_regression.ipynb",
        tmp_path / "02",
        {"smoke": True, "methods": ["sum", "mao"], "num_tasks": 3},
        html=False,
    )
    assert regression.is_file()
    execute_notebook(
        NOTEBOOK_DIR / "04_balance_explorer.ipynb",
        tmp_path / "04",
        {"smoke": True, "run_dirs": [str(tmp_path / "02")]},
        html=False,
    )
    summary = json.loads((tmp_path / "04" / "summary.json").read_text())
    # 04 names each run by where it came from: the folder 02 wrote (its output folder, here "02").
    assert sorted(summary["runs"]) == ["02/mao", "02/sum"] and summary["most_imbalanced_run"] == "02/sum"
    assert not (tmp_path / "04" / "demo_runs").exists()


def test_notebook_03_and_04_run_on_another_problem_by_its_import_path(tmp_path: Path) -> None:
    """03's comparison and 04's demo runs on the regression, named by its import path (any Problem would do)."""
    problem = {
        "problem": "mao_lab.problems:regression_problem",
        "problem_options": {"num_tasks": 3, "num_samples": 300, "num_val": 60},
    }
    execute_notebook(
        NOTEBOOK_DIR / "03_multimnist.ipynb",
        tmp_path / "03",
        {"smoke": True, **problem, "tasks": [], "layer": "", "methods": ["sum", "mao"], "device": "cpu"},
        html=False,
    )
    scores = pd.read_parquet(tmp_path / "03" / "scores.parquet")
    assert set(scores["task"]) == {"task0", "task1", "task2"} and set(scores["metric"]) == {"normalised_mse"}
    assert not (tmp_path / "03" / "samples.html").exists()  # MultiMNIST's pictures only for MultiMNIST
    assert {"sum", "mao"} <= set(json.loads((tmp_path / "03" / "summary.json").read_text())["delta_m_percent"])
    execute_notebook(
        NOTEBOOK_DIR / "04_balance_explorer.ipynb",
        tmp_path / "04",
        {"smoke": True, **problem, "device": "cpu", "autocast": "bf16"},
        html=False,
    )
    assert sorted(json.loads((tmp_path / "04" / "summary.json").read_text())["runs"]) == [
        "demo_runs/mao",
        "demo_runs/sum",
    ]
    params = json.loads((tmp_path / "04" / "demo_runs" / "mao" / "params.json").read_text())
    assert params["problem"] == "regression" and params["tasks"] == ["task0", "task1", "task2"]


def test_the_runner_and_the_sweep_pass_a_problem_by_its_import_path() -> None:
    """``-p problem=package.module:factory`` reads as that string, and 03, 04 and 07's siblings declare it."""
    from mao_lab.runner import check_parameters, parse_parameters

    extra = parse_parameters(["problem=mao_lab.problems:regression_problem", "problem_options={num_tasks: 3}"])
    assert extra == {"problem": "mao_lab.problems:regression_problem", "problem_options": {"num_tasks": 3}}
    for name in ("03_multimnist", "04_balance_explorer"):
        check_parameters(NOTEBOOK_DIR / f"{name}.ipynb", [*extra, "device", "autocast", "smoke", "output_dir"])
