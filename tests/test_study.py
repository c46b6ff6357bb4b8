"""The claims study: its runs are paired and repeatable, validation comes from the training data, and the smoke
study runs end to end on the sweep machinery (then ``05_claims`` reads it under papermill)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mao_lab.problems import load_multimnist
from mao_lab.runner import NOTEBOOK_DIR, NotebookRunError, execute_notebook
from mao_lab.study import CLAIMS, LEVELLING_STATUSES, VERDICTS, StudyError, levelling_by_budget, run_config, run_study, smoke_design
from mao_lab.study.__main__ import main
from mao_lab.study._runs import _multimnist, _PathMeter
from mao_lab.study._study import POINT_NOTEBOOK


def test_runs_with_one_seed_start_from_one_network_and_are_repeatable() -> None:
    design = smoke_design()
    first = run_config(design.config("reg2.sum"), design, 1e-3, 0)["scores"]
    again = run_config(design.config("reg2.sum"), design, 1e-3, 0)["scores"]
    pd.testing.assert_frame_equal(first, again)  # same command, same numbers
    other_method = run_config(design.config("reg2.mao"), design, 1e-3, 0)["scores"]
    other_seed = run_config(design.config("reg2.sum"), design, 1e-3, 1)["scores"]

    def untrained(scores: pd.DataFrame) -> list[float]:
        return scores[(scores["step"] == 0) & (scores["split"] == "val")]["value"].tolist()

    assert untrained(other_method) == untrained(first)  # paired: the same initial network
    assert untrained(other_seed) != untrained(first)
    final = first[first["split"] == "test"]["value"].to_numpy()
    assert not (other_method[other_method["split"] == "test"]["value"].to_numpy() == final).all()


@pytest.mark.parametrize("config", ["mm4.mtadam", "mm4.io", "mm4.grouping2"])
def test_a_runs_first_steps_are_a_shorter_run(config: str) -> None:
    """What levelling_by_budget rests on: nothing in a run depends on its budget, so cutting a long run at step B
    gives a B-step run's validation scores and balance records, bit for bit."""
    long = dataclasses.replace(smoke_design(), steps=8, eval_every=2, record_every=2)
    short = dataclasses.replace(long, steps=4)
    whole = run_config(long.config(config), long, 1e-3, 1)
    part = run_config(short.config(config), short, 1e-3, 1)
    def val(scores: pd.DataFrame) -> pd.DataFrame:
        return scores[scores["split"] == "val"]

    cut, mine = val(whole["scores"]), val(part["scores"])
    assert sorted(mine["step"].unique()) == [0, 2, 4] and sorted(cut["step"].unique()) == [0, 2, 4, 6, 8]
    pd.testing.assert_frame_equal(mine.reset_index(drop=True), cut[cut["step"] <= 4].reset_index(drop=True), check_exact=True)
    balance = whole["balance"][whole["balance"]["step"] < 4].reset_index(drop=True)  # records are taken at steps 0..3
    assert len(balance) > 0
    pd.testing.assert_frame_equal(part["balance"].reset_index(drop=True), balance, check_exact=True)


def test_validation_images_are_carved_from_the_training_file_and_kept_apart() -> None:
    tasks = ("left", "sum")
    train, val, test = _multimnist(tasks, 300, 200, 50)
    whole = load_multimnist(split="train", tasks=tasks)
    assert torch.equal(val.images, whole.images[-200:])  # the end of the training file, never the test file
    assert torch.equal(train.images, whole.images[:300])
    assert len(train) + len(val) <= len(whole)
    assert torch.equal(test.images, load_multimnist(split="test", tasks=tasks, limit=50).images)


def test_path_length_is_at_least_the_distance_and_adds_every_move() -> None:
    model = torch.nn.Module()
    model.trunk = torch.nn.Linear(2, 1, bias=False)
    meter = _PathMeter()
    positions = [[0.0, 0.0], [3.0, 4.0], [0.0, 0.0], [0.0, 1.0]]
    with torch.no_grad():
        for position in positions[:-1]:
            model.trunk.weight.copy_(torch.tensor([position]))
            meter.observe(model)
        model.trunk.weight.copy_(torch.tensor([positions[-1]]))
    distance, length = meter.finish(model)
    assert distance == pytest.approx(1.0)
    assert length == pytest.approx(5.0 + 5.0 + 1.0)


def test_a_study_folder_of_another_design_is_refused(tmp_path: Path) -> None:
    other = smoke_design().as_dict() | {"steps": 5}
    (tmp_path / "design.json").write_text(json.dumps(other))
    with pytest.raises(StudyError, match=r"another design \(fields \['steps'\]"):
        run_study(tmp_path, smoke_design(), progress=False)
    assert json.loads((tmp_path / "design.json").read_text()) == other  # left intact


def test_bad_command_lines_are_refused() -> None:
    with pytest.raises(SystemExit):
        main(["--workers", "-1"])
    with pytest.raises(SystemExit):
        main(["--ledger-only", "somewhere"])  # needs --out


@pytest.mark.notebook
def test_the_point_notebook_names_a_bad_parameter(tmp_path: Path) -> None:
    with pytest.raises(NotebookRunError, match="bad notebook parameter `point`"):
        execute_notebook(POINT_NOTEBOOK, tmp_path, {"point": "nowhere", "specs": {"somewhere": {}}}, html=False)


@pytest.mark.notebook
def test_the_smoke_study_runs_end_to_end_resumes_and_05_claims_reads_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = tmp_path / "study"
    assert main(["--smoke", "--out", str(study)]) == 0
    for name in ("ledger.csv", "ledger.md", "ledger.json", "design.json", "provenance.json", "scores.parquet",
                 "balance.parquet", "runs.parquet", "learning_rates.parquet", "delta_m.parquet"):
        assert (study / name).is_file(), name
    ledger = pd.read_csv(study / "ledger.csv")
    claims = ledger[ledger["part"] == "(claim)"]
    assert list(claims["claim"]) == list(CLAIMS)
    assert set(ledger["verdict"]) <= set(VERDICTS)
    assert "mean nothing" in (study / "ledger.md").read_text()
    document = json.loads((study / "ledger.json").read_text())
    assert document["smoke"] is True and document["provenance"]["threads_per_point"] == 1
    phases = document["provenance"]["phases"]
    assert set(phases) == {"tuning", "tuning-seeds", "final"}
    assert all(p["finished_before"] == 0 and p["points"] > 0 for p in phases.values())
    design = smoke_design()
    choice = pd.read_parquet(study / "learning_rates.parquet")
    assert choice.groupby("config")["chosen"].sum().eq(1).all()  # one rate per configuration
    runs = pd.read_parquet(study / "runs.parquet")
    final = runs.merge(choice[choice["chosen"]][["config", "lr"]], on=["config", "lr"])
    assert (final.groupby("config")["seed"].nunique() == len(design.seeds)).all()  # every seed, paired
    assert set(runs["lr"]) == set(design.lrs)
    tuned = runs.merge(choice[~choice["chosen"]][["config", "lr"]], on=["config", "lr"])
    assert set(tuned["seed"]) <= set(design.tuning_seeds)  # the other rates ran at the tuning seeds only
    # the second tuning seed ran the first seed's finalists only, and the chosen rate is one of them
    second = runs[runs["seed"] == design.tuning_seeds[1]]
    assert (second.groupby("config")["lr"].nunique() <= design.finalists).all()
    assert (second.groupby("config")["lr"].nunique() == design.finalists).any()
    picked = choice[choice["chosen"]]
    assert (picked["seeds"] == len(design.tuning_seeds)).all()  # every chosen rate is a mean over both tuning seeds
    executed = sorted(p.name for p in study.glob("*/*/point.ipynb"))
    capsys.readouterr()
    assert main(["--smoke", "--out", str(study)]) == 0  # resumes: nothing runs again, the same ledger
    assert sorted(p.name for p in study.glob("*/*/point.ipynb")) == executed
    pd.testing.assert_frame_equal(pd.read_csv(study / "ledger.csv"), ledger)
    phases = json.loads((study / "provenance.json").read_text())["phases"]
    assert all(p["finished_before"] == p["points"] for p in phases.values())  # this invocation ran none of them
    assert "which resumed points finished earlier" in (study / "ledger.md").read_text()

    docs = tmp_path / "docs"
    assert main(["--ledger-only", str(study), "--out", str(docs)]) == 0  # what docs/claims/ is made with
    for name in ("ledger.csv", "ledger.md", "ledger.json", "methods.csv", "validation.csv", "levelling.csv", "budgets.csv"):
        assert (docs / name).read_text() == (study / name).read_text(), name
    # validation.csv: the regression's criterion written out by hand (mean validation value over tasks, then seeds)
    validation = pd.read_csv(docs / "validation.csv")
    scores = pd.read_parquet(study / "scores.parquet")
    reg = next(c for c in choice[choice["chosen"]]["config"] if c.startswith("reg"))
    rate = float(choice[choice["chosen"] & (choice["config"] == reg)]["lr"].iloc[0])
    val = scores[(scores["config"] == reg) & (scores["split"] == "val") & (scores["lr"] == rate)]
    by_hand = val.groupby(["seed", "step"])["value"].mean().groupby("step").mean()
    mine = validation[validation["config"] == reg].set_index("step")["criterion"]
    np.testing.assert_allclose(mine.to_numpy(), by_hand.loc[mine.index].to_numpy(), rtol=1e-5)
    assert list(mine.index) == sorted(by_hand.index) and not validation["config"].str.contains("single").any()
    assert "levelled off" in (docs / "ledger.md").read_text()
    # levelling.csv: the regression's change over the last quarter, paired by seed, by hand
    per_seed = val.groupby(["seed", "step"])["value"].mean().unstack("step")
    levelling = pd.read_csv(docs / "levelling.csv").set_index("config").loc[reg]
    last, start = per_seed.columns.max(), max(s for s in per_seed.columns if s <= 0.75 * per_seed.columns.max())
    assert (levelling["from_step"], levelling["to_step"]) == (start, last)
    assert levelling["change"] == pytest.approx((per_seed[last] - per_seed[start]).mean(), rel=1e-5)
    # budgets.csv: at the study's own budget the rule reads exactly what levelling.csv says
    budgets = pd.read_csv(docs / "budgets.csv")
    assert set(budgets["budget"]) == {2, 4}  # the evaluation steps at 0.5, 0.75 and 1 of the 4 smoke steps
    own = budgets[budgets["budget"] == design.steps].set_index("config")
    read = pd.read_csv(docs / "levelling.csv").set_index("config").loc[own.index]
    assert own["same_rate"].all() and (own["status"] == read["status"]).all()
    np.testing.assert_allclose(own["change"].to_numpy(), read["change"].to_numpy(), rtol=1e-5, equal_nan=True)
    with pytest.raises(ValueError, match=r"budgets must be step counts in 1\.\.4"):
        levelling_by_budget(scores, design, [5])
    methods = pd.read_csv(docs / "methods.csv")
    assert set(methods["config"]) == {c.name for c in design.configs() if not c.single_task and c.problem == "multimnist"}
    # every interval of the smoke ledger, recomputed by scipy from the per-seed tables written beside it
    spec = importlib.util.spec_from_file_location("_ledger_robust", Path(__file__).with_name("test_ledger_robust.py"))
    assert spec is not None and spec.loader is not None
    robust = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(robust)
    assert robust.check_every_interval(docs) == 44
    again = tmp_path / "docs-again"  # the ledger folder recomputes itself from its own tables, byte for byte
    assert main(["--ledger-only", str(docs), "--out", str(again)]) == 0
    assert (again / "ledger.csv").read_bytes() == (docs / "ledger.csv").read_bytes()
    assert (again / "m1_sensitivity.csv").read_bytes() == (docs / "m1_sensitivity.csv").read_bytes()

    out = tmp_path / "claims"
    execute_notebook(NOTEBOOK_DIR / "05_claims.ipynb", out, {"smoke": True, "study_dir": str(study), "claim": "P4"})
    summary = json.loads((out / "summary.json").read_text())
    assert summary["smoke"] is True and summary["best_mm4_levelling"] in LEVELLING_STATUSES
    assert summary["verdicts"] == dict(zip(claims["claim"], claims["verdict"]))
    for figure in ("claim_M1", "claim_P4", "balance_reg8", "learning_rate_mm4", "validation_curve", "compute", "spread"):
        assert (out / f"{figure}.html").is_file(), figure
    assert "mean nothing" in (out / "05_claims.html").read_text()

    ledger_only = tmp_path / "ledger-only"  # a folder like the committed docs/claims: ledger.json, no tables
    execute_notebook(NOTEBOOK_DIR / "05_claims.ipynb", ledger_only, {"smoke": True, "study_dir": str(docs)}, html=False)
    summary = json.loads((ledger_only / "summary.json").read_text())
    assert summary["tables"] is False and summary["verdicts"] == dict(zip(claims["claim"], claims["verdict"]))
    assert (ledger_only / "claim_M2.html").is_file() and not (ledger_only / "compute.html").exists()
    assert not (docs / "provenance.json").exists()  # it made no study of its own there
