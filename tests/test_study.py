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
from mao_lab.study import (
    CLAIMS,
    LEVELLING_STATUSES,
    VERDICTS,
    StudyDesign,
    StudyError,
    full_design,
    levelling_by_budget,
    run_config,
    run_study,
    smoke_design,
)
from mao_lab.study.__main__ import main
from mao_lab.study._design import problem_design, read_study_file
from mao_lab.study._runs import _PathMeter, problem_of
from mao_lab.study._study import POINT_NOTEBOOK, gpu_resources

from _helpers import SmokeStudy


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
    pd.testing.assert_frame_equal(
        mine.reset_index(drop=True), cut[cut["step"] <= 4].reset_index(drop=True), check_exact=True
    )
    balance = whole["balance"][whole["balance"]["step"] < 4].reset_index(drop=True)  # records are taken at steps 0..3
    assert len(balance) > 0
    pd.testing.assert_frame_equal(part["balance"].reset_index(drop=True), balance, check_exact=True)


def test_validation_images_are_carved_from_the_training_file_and_kept_apart() -> None:
    tasks = ("left", "sum")
    design = dataclasses.replace(smoke_design(), num_train=300, num_val=200, num_test=50)
    config = dataclasses.replace(design.config("mm_diff.sum"), tasks=tasks)
    problem, chosen = problem_of(config, design)
    assert chosen == tasks and problem.task_names == tasks
    train, val, test = (problem.split(name) for name in ("train", "validation", "test"))
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


# -- the smoke study end to end: run once for the tests below, resumed, its ledger recomputed, read by 05_claims ---


def _chosen(smoke: SmokeStudy) -> pd.DataFrame:
    """learning_rates.parquet: every rate tried per configuration, ``chosen`` marking the one the study kept."""
    return pd.read_parquet(smoke.folder / "learning_rates.parquet")


def _claims(smoke: SmokeStudy) -> pd.DataFrame:
    return smoke.ledger[smoke.ledger["part"] == "(claim)"]


@pytest.mark.notebook
def test_the_smoke_study_writes_its_tables_and_a_verdict_for_every_claim(smoke_study: SmokeStudy) -> None:
    assert smoke_study.exits[0] == 0
    tables = ("ledger.csv", "ledger.md", "ledger.json", "design.json", "provenance.json")
    tables += ("scores.parquet", "balance.parquet", "runs.parquet", "learning_rates.parquet", "delta_m.parquet")
    assert set(tables) <= smoke_study.files, set(tables) - smoke_study.files
    assert list(_claims(smoke_study)["claim"]) == list(CLAIMS)
    assert set(smoke_study.ledger["verdict"]) <= set(VERDICTS)
    assert "mean nothing" in smoke_study.ledger_md
    document = smoke_study.document
    assert document["smoke"] is True and document["provenance"]["threads_per_point"] == 1
    phases = document["provenance"]["phases"]
    assert set(phases) == {"tuning", "tuning-seeds", "final"}
    assert all(p["finished_before"] == 0 and p["points"] > 0 for p in phases.values())


@pytest.mark.notebook
def test_the_smoke_study_chooses_one_rate_per_configuration_on_the_tuning_seeds(smoke_study: SmokeStudy) -> None:
    design, choice = smoke_design(), _chosen(smoke_study)
    assert choice.groupby("config")["chosen"].sum().eq(1).all()  # one rate per configuration
    runs = pd.read_parquet(smoke_study.folder / "runs.parquet")
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


@pytest.mark.notebook
def test_the_smoke_study_run_again_resumes_running_nothing_and_writes_the_same_ledger(
    smoke_study: SmokeStudy,
) -> None:
    assert smoke_study.exits[1] == 0
    first, resumed = smoke_study.executed
    assert first and resumed == first
    pd.testing.assert_frame_equal(smoke_study.resumed_ledger, smoke_study.ledger)
    phases = smoke_study.resumed_phases
    assert all(p["finished_before"] == p["points"] for p in phases.values())  # this invocation ran none of them
    assert "which resumed points finished earlier" in smoke_study.resumed_ledger_md


@pytest.mark.notebook
def test_the_ledger_folder_holds_the_studys_ledger_and_its_tables(smoke_study: SmokeStudy) -> None:
    assert smoke_study.exits[2] == 0
    study, docs = smoke_study.folder, smoke_study.docs
    for name in (
        "ledger.csv",
        "ledger.md",
        "ledger.json",
        "methods.csv",
        "validation.csv",
        "levelling.csv",
        "budgets.csv",
    ):
        assert (docs / name).read_text() == (study / name).read_text(), name
    assert "levelled off" in (docs / "ledger.md").read_text()
    methods = pd.read_csv(docs / "methods.csv")
    assert set(methods["config"]) == {
        c.name for c in smoke_design().configs() if not c.single_task and c.problem == "multimnist"
    }


def _regression_validation(smoke: SmokeStudy) -> tuple[str, pd.DataFrame]:
    """The regression configuration the study kept, and its validation scores at its chosen rate."""
    choice, scores = _chosen(smoke), pd.read_parquet(smoke.folder / "scores.parquet")
    reg = next(c for c in choice[choice["chosen"]]["config"] if c.startswith("reg"))
    rate = float(choice[choice["chosen"] & (choice["config"] == reg)]["lr"].iloc[0])
    return reg, scores[(scores["config"] == reg) & (scores["split"] == "val") & (scores["lr"] == rate)]


@pytest.mark.notebook
def test_the_validation_criterion_is_the_mean_over_tasks_then_seeds(smoke_study: SmokeStudy) -> None:
    """validation.csv: the regression's criterion written out by hand."""
    reg, val = _regression_validation(smoke_study)
    validation = pd.read_csv(smoke_study.docs / "validation.csv")
    by_hand = val.groupby(["seed", "step"])["value"].mean().groupby("step").mean()
    mine = validation[validation["config"] == reg].set_index("step")["criterion"]
    np.testing.assert_allclose(mine.to_numpy(), by_hand.loc[mine.index].to_numpy(), rtol=1e-5)
    assert list(mine.index) == sorted(by_hand.index) and not validation["config"].str.contains("single").any()


@pytest.mark.notebook
def test_levelling_is_the_change_over_the_last_quarter_paired_by_seed(smoke_study: SmokeStudy) -> None:
    """levelling.csv: the regression's change, by hand."""
    reg, val = _regression_validation(smoke_study)
    per_seed = val.groupby(["seed", "step"])["value"].mean().unstack("step")
    levelling = pd.read_csv(smoke_study.docs / "levelling.csv").set_index("config").loc[reg]
    last, start = per_seed.columns.max(), max(s for s in per_seed.columns if s <= 0.75 * per_seed.columns.max())
    assert (levelling["from_step"], levelling["to_step"]) == (start, last)
    assert levelling["change"] == pytest.approx((per_seed[last] - per_seed[start]).mean(), rel=1e-5)


@pytest.mark.notebook
def test_at_the_studys_own_budget_the_budgets_table_reads_the_levelling_table(smoke_study: SmokeStudy) -> None:
    design, docs = smoke_design(), smoke_study.docs
    budgets = pd.read_csv(docs / "budgets.csv")
    assert set(budgets["budget"]) == {2, 4}  # the evaluation steps at 0.5, 0.75 and 1 of the 4 smoke steps
    own = budgets[budgets["budget"] == design.steps].set_index("config")
    read = pd.read_csv(docs / "levelling.csv").set_index("config").loc[own.index]
    assert own["same_rate"].all() and (own["status"] == read["status"]).all()
    np.testing.assert_allclose(own["change"].to_numpy(), read["change"].to_numpy(), rtol=1e-5, equal_nan=True)
    scores = pd.read_parquet(smoke_study.folder / "scores.parquet")
    with pytest.raises(ValueError, match=r"budgets must be step counts in 1\.\.4"):
        levelling_by_budget(scores, design, [5])


@pytest.mark.notebook
def test_every_interval_of_the_smoke_ledger_is_scipys(smoke_study: SmokeStudy) -> None:
    """Recomputed by scipy from the per-seed tables written beside the ledger."""
    spec = importlib.util.spec_from_file_location("_ledger_robust", Path(__file__).with_name("test_ledger_robust.py"))
    assert spec is not None and spec.loader is not None
    robust = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(robust)
    assert robust.check_every_interval(smoke_study.docs) == 44


@pytest.mark.notebook
def test_the_ledger_folder_recomputes_itself_byte_for_byte(smoke_study: SmokeStudy, tmp_path: Path) -> None:
    docs, again = smoke_study.docs, tmp_path / "docs-again"
    assert main(["--ledger-only", str(docs), "--out", str(again)]) == 0
    assert (again / "ledger.csv").read_bytes() == (docs / "ledger.csv").read_bytes()
    assert (again / "m1_sensitivity.csv").read_bytes() == (docs / "m1_sensitivity.csv").read_bytes()


@pytest.mark.notebook
def test_05_claims_reads_the_study_folder(smoke_study: SmokeStudy, tmp_path: Path) -> None:
    out, params = tmp_path / "claims", {"smoke": True, "study_dir": str(smoke_study.folder), "claim": "P4"}
    execute_notebook(NOTEBOOK_DIR / "05_claims.ipynb", out, params)
    summary = json.loads((out / "summary.json").read_text())
    claims = _claims(smoke_study)
    assert summary["smoke"] is True and summary["best_mm4_levelling"] in LEVELLING_STATUSES
    assert summary["verdicts"] == dict(zip(claims["claim"], claims["verdict"]))
    figures = ("claim_M1", "claim_P4", "balance_reg8", "learning_rate_mm4", "validation_curve", "compute", "spread")
    for figure in figures:
        assert (out / f"{figure}.html").is_file(), figure
    assert "mean nothing" in (out / "05_claims.html").read_text()


@pytest.mark.notebook
def test_05_claims_reads_a_ledger_folder_without_tables(smoke_study: SmokeStudy, tmp_path: Path) -> None:
    """A folder like the committed docs/claims: ledger.json, no tables."""
    docs, out = smoke_study.docs, tmp_path / "ledger-only"
    execute_notebook(NOTEBOOK_DIR / "05_claims.ipynb", out, {"smoke": True, "study_dir": str(docs)}, html=False)
    summary = json.loads((out / "summary.json").read_text())
    claims = _claims(smoke_study)
    assert summary["tables"] is False and summary["verdicts"] == dict(zip(claims["claim"], claims["verdict"]))
    assert (out / "claim_M2.html").is_file() and not (out / "compute.html").exists()
    assert not (docs / "provenance.json").exists()  # it made no study of its own there


# -- your problem: --problem and a study file ---------------------------------------------------------------

STUDY_FILE = """
problem = "mao_lab.problems:regression_problem"
methods = ["sum", "mao", "ius", "io", "grouping2"]
lrs = [0.001, 0.003, 0.01]
seeds = [0, 1]
steps = 4
batch_size = 16
eval_every = 2
record_every = 2

[options]
num_tasks = 3
num_samples = 300
num_val = 60
"""


def test_the_shipped_design_is_what_it_was() -> None:
    """The design's configurations written out from the module docstring's table, and its design.json keys."""
    design = full_design()
    mm4 = (
        "sum",
        "uw",
        "dwa",
        "gradnorm",
        "mgda",
        "pcgrad",
        "cagrad",
        "imtl_g",
        "mtadam",
        "mao",
        "ius",
        "io",
        "grouping2",
        "grouping3",
    )
    expected = [f"mm4.{v}" for v in mm4] + [f"mm4.single-{t}" for t in ("left", "right", "sum", "reconstruct")]
    expected += [f"{s}.{v}" for s in ("mm_same", "mm_diff") for v in ("sum", "ius", "io")]
    expected += [f"reg{t}.{v}" for t in (2, 4, 8) for v in ("sum", "mao")]
    assert [c.name for c in design.configs()] == expected
    assert {c.problem for c in design.configs()} == {"multimnist", "regression"}
    assert set(design.as_dict()) == {f.name for f in dataclasses.fields(design)} - {
        "problem",
        "problem_options",
        "tasks",
        "same_nature",
        "different_nature",
        "description",
    }
    assert StudyDesign.from_dict(design.as_dict()) == design


class _Sets:
    task_names = ("a", "b", "c", "d")
    description = "four toy tasks"

    def task_sets(self) -> dict[str, tuple[str, ...]]:
        return {"same_nature": ("a", "b"), "different_nature": ("a", "c", "d")}


def test_a_problem_design_has_its_settings_and_refuses_what_does_not_fit() -> None:
    design = problem_design(
        _Sets(), "pkg.mod:factory", settings={"methods": ["sum", "mao", "ius", "grouping3"]}, smoke=True
    )
    names = [c.name for c in design.configs()]
    assert names == (
        ["all.sum", "all.mao", "all.ius", "all.grouping3"]
        + [f"all.single-{t}" for t in "abcd"]
        + [f"{s}.{v}" for s in ("same", "diff") for v in ("sum", "ius", "io")]
    )
    assert design.config("diff.io").tasks == ("a", "c", "d") and design.main_setting == "all"
    assert StudyDesign.from_dict(json.loads(json.dumps(design.as_dict()))) == design  # design.json round trip
    with pytest.raises(ValueError, match="group size strictly between 1 and the 4 tasks"):
        problem_design(_Sets(), "pkg.mod:factory", settings={"methods": ["sum", "grouping4"]}, smoke=True)
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['maoo'\]"):
        problem_design(_Sets(), "pkg.mod:factory", settings={"methods": ["maoo"]}, smoke=True)
    default = problem_design(_Sets(), "pkg.mod:factory")  # the full design's methods that fit 4 tasks
    assert "all.grouping3" in [c.name for c in default.configs()] and len(default.seeds) == 5


class _TwoMetrics:
    task_names = ("a", "b")
    description = "task a has two metrics"

    def task_sets(self) -> dict[str, tuple[str, ...]]:
        return {}


def test_rates_are_chosen_on_the_tuning_seeds_against_a_reference_per_task_and_metric() -> None:
    """Your problem's task ``a`` has two metrics: the multi-task criterion at each tuning seed is Δm% against the
    baselines' mean over the tuning seeds at their chosen rate, per (task, metric), written out here by hand."""
    from mao_lab.study._analysis import choose_learning_rates, tuning_criteria

    design = problem_design(_TwoMetrics(), "pkg.mod:factory", settings={"methods": ["sum", "mao"]}, smoke=True)
    assert design.tuning_seeds == (0, 1)
    rng = np.random.default_rng(7)
    metrics = {"a": [("acc", True), ("err", False)], "b": [("mse", False)]}
    rows, values = [], {}
    for config in design.configs():
        for lr in design.lrs:
            for seed in design.tuning_seeds:
                accuracy = float(rng.uniform(0.5, 0.9))
                for task in config.tasks:
                    for metric, higher in metrics[task]:
                        # acc and err agree, so a baseline's rate is the same whichever metric ranks it
                        value = (
                            accuracy
                            if metric == "acc"
                            else 1 - accuracy
                            if metric == "err"
                            else float(rng.uniform(1, 3))
                        )
                        values[(config.name, lr, seed, task, metric)] = value
                        rows.append(
                            {
                                "config": config.name,
                                "lr": lr,
                                "seed": seed,
                                "task": task,
                                "metric": metric,
                                "value": value,
                                "higher_is_better": higher,
                                "split": "val",
                                "step": design.steps,
                            }
                        )
    scores = pd.DataFrame(rows)
    # the baselines by hand: the rate with the best mean over both tuning seeds, then each metric's mean there
    reference = {}
    for task in ("a", "b"):
        metric, higher = metrics[task][0]
        sign = -1 if higher else 1
        means = {
            lr: np.mean([sign * values[(f"all.single-{task}", lr, s, task, metric)] for s in (0, 1)])
            for lr in design.lrs
        }
        best = min(means, key=means.get)
        for metric, higher in metrics[task]:
            reference[(task, metric)] = (
                np.mean([values[(f"all.single-{task}", best, s, task, metric)] for s in (0, 1)]),
                higher,
            )
    criteria = tuning_criteria(scores, design).set_index(["config", "lr", "seed"])["criterion"]
    for config in ("all.sum", "all.mao"):
        for lr in design.lrs:
            for seed in (0, 1):
                changes = {}
                for (task, metric), (base, higher) in reference.items():
                    change = 100 * (values[(config, lr, seed, task, metric)] - base) / base
                    changes.setdefault(task, []).append(-change if higher else change)
                by_hand = np.mean([np.mean(c) for c in changes.values()])  # metrics within a task first, then tasks
                assert criteria.loc[(config, lr, seed)] == pytest.approx(by_hand, rel=1e-9)
    choice = choose_learning_rates(scores, design)
    picked = choice[choice["chosen"] & (choice["config"] == "all.sum")]
    mean = {lr: (criteria.loc[("all.sum", lr, 0)] + criteria.loc[("all.sum", lr, 1)]) / 2 for lr in design.lrs}
    assert float(picked["lr"].iloc[0]) == min(mean, key=mean.get) and int(picked["seeds"].iloc[0]) == 2


@pytest.mark.parametrize(
    "text, message",
    [
        ("steps = 4\nbogus = 1\n", r"unknown key\(s\) \['bogus'\]"),
        ("steps = 'many'\n", "steps must be training steps"),
        ("lrs = [0.1, 'x']\n", "lrs must be the learning-rate grid"),
        ("steps = \n", "is not valid TOML"),
    ],
)
def test_a_bad_study_file_is_named_and_nothing_is_written(
    tmp_path: Path, text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "study.toml"
    file.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_study_file(file)
    out = tmp_path / "out"
    assert (
        main(
            [
                "--smoke",
                "--problem",
                "mao_lab.problems:regression_problem",
                "--study-file",
                str(file),
                "--out",
                str(out),
            ]
        )
        == 2
    )
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(file) in error
    assert not out.exists()


def test_a_bad_problem_path_or_option_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--problem", "mao_lab.problems:nope"], ["--problem", "no_such_module:factory"]):
        assert main(["--smoke", *argv, "--out", str(tmp_path / "out")]) == 2
        assert "python -m mao_lab.study: error: problem" in capsys.readouterr().err
    file = tmp_path / "study.toml"
    file.write_text('problem = "mao_lab.problems:regression_problem"\n[options]\nnum_taks = 3\n')
    assert main(["--smoke", "--study-file", str(file), "--out", str(tmp_path / "out")]) == 2
    assert "num_taks" in capsys.readouterr().err and not (tmp_path / "out").exists()
    if not torch.cuda.is_available():  # points that would run here, on a device that is not here
        assert main(["--smoke", "--device", "cuda", "--out", str(tmp_path / "out")]) == 2
        assert "no CUDA device" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_points_hold_one_gpu_on_a_dask_cluster_only_where_workers_offer_one() -> None:
    class Client:
        def __init__(self, resources: dict[str, float]) -> None:
            self.resources = resources

        def scheduler_info(self) -> dict:
            return {"workers": {"tcp://w": {"resources": self.resources}}}

    assert gpu_resources("cuda", Client({"GPU": 1})) == {"GPU": 1}
    assert gpu_resources("cuda:1", Client({"GPU": 2})) == {"GPU": 1}
    assert gpu_resources("cpu", Client({})) is None and gpu_resources("cuda", None) is None
    with pytest.raises(StudyError, match="no Dask worker offers a GPU resource"):
        gpu_resources("cuda", Client({}))


@pytest.mark.notebook
def test_the_smoke_study_of_your_problem_runs_from_a_study_file(tmp_path: Path) -> None:
    file = tmp_path / "study.toml"
    file.write_text(STUDY_FILE)
    study = tmp_path / "study"
    assert main(["--smoke", "--study-file", str(file), "--out", str(study), "--device", "cpu"]) == 0
    design = StudyDesign.from_dict(json.loads((study / "design.json").read_text()))
    assert design.problem == "mao_lab.problems:regression_problem" and design.tasks == ("task0", "task1", "task2")
    assert design.steps == 4 and design.seeds == (0, 1) and dict(design.problem_options)["num_tasks"] == 3
    runs = pd.read_parquet(study / "runs.parquet")
    assert set(runs["config"]) == {c.name for c in design.configs()} and set(runs["setting"]) == {"all"}
    assert (runs["status"] == "ok").all() and runs["epochs"].eq(4 * 16 / 180).all()  # 180 = 300 * 0.8 - 60 samples
    ledger = (study / "ledger.md").read_text()
    assert "Problem: `mao_lab.problems:regression_problem` (GradNorm's imbalanced regression: 3 tasks" in ledger
    assert "all: MAO's worst imbalance" in ledger
    dm = pd.read_parquet(study / "delta_m.parquet")
    assert set(dm["config"]) == {"all.sum", "all.mao", "all.ius", "all.io", "all.grouping2"}
    provenance = json.loads((study / "provenance.json").read_text())
    assert provenance["device"] == "cpu"
    # the rates are chosen on both tuning seeds on your problem too: seed 1 ran the first seed's finalists only
    assert design.tuning_seeds == (0, 1) and set(provenance["phases"]) == {"tuning", "tuning-seeds", "final"}
    assert provenance["phases"]["tuning-seeds"]["points"] > 0
    second = runs[runs["seed"] == 1].groupby("config")["lr"].nunique()
    assert (second == design.finalists).all() and len(second) == len(design.configs())
    choice = pd.read_parquet(study / "learning_rates.parquet")
    assert (choice[choice["chosen"]]["seeds"] == 2).all()
    # the ledger recomputes itself from its per-seed tables, byte for byte, and still names the problem
    docs, again = tmp_path / "docs", tmp_path / "docs-again"
    assert main(["--ledger-only", str(study), "--out", str(docs)]) == 0
    assert main(["--ledger-only", str(docs), "--out", str(again)]) == 0
    for name in ("ledger.csv", "ledger.md", "m1_sensitivity.csv", "divergences.csv", "delta_m.csv", "test_metrics.csv"):
        assert (docs / name).read_bytes() == (study / name).read_bytes() == (again / name).read_bytes(), name
    assert "Problem: `mao_lab.problems:regression_problem`" in (again / "ledger.md").read_text()


def test_runs_and_the_study_write_one_provenance_and_older_records_still_read() -> None:
    import subprocess

    from mao_lab import runner, study
    from mao_lab.study import ledger_markdown, load_ledger

    assert study.provenance is runner.provenance
    record = runner.provenance(threads_per_point=1)
    root = Path(runner.__file__).resolve().parents[1]
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    status = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert record["commit"] == head.stdout.strip() and record["threads_per_point"] == 1
    assert record["uncommitted_changes"] is bool(status.stdout.strip())
    assert torch.__version__.startswith(record["versions"]["torch"])
    # The committed ledger comes from a clean commit (issue 21); older records (a run's git.dirty, a bare dirty,
    # uncommitted_changes) all still read.
    docs = Path(__file__).resolve().parents[1] / "docs" / "claims"
    committed = load_ledger(docs)
    assert committed["provenance"]["uncommitted_changes"] is False
    assert "uncommitted changes" not in (docs / "ledger.md").read_text()
    rest = {k: v for k, v in committed["provenance"].items() if k != "uncommitted_changes"}
    marked = "with uncommitted changes"
    for old, changed in [
        ({"uncommitted_changes": True}, True),
        ({"dirty": True}, True),
        ({"git": {"commit": "a" * 40, "dirty": True}}, True),
        ({"uncommitted_changes": False}, False),
        ({"git": None}, False),
    ]:
        assert runner.had_uncommitted_changes(old) is (changed if old != {"git": None} else None)
        text = ledger_markdown(committed["ledger"], {**rest, **old}, committed["design"])
        assert (marked in text) is changed, old
    assert "Commit ?" in ledger_markdown(committed["ledger"], {**rest, "commit": None}, committed["design"])
