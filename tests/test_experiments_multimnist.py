"""What notebook 03 computes on MultiMNIST: Delta_m, repeatable training that learns, readable run folders.

Delta_m is checked against computations written here from the formula (``docs/references.md`` §6), not
against its own output.  Sizes are small so that the file runs in well under a minute on two cores.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from mao_lab.experiments import (
    SINGLE_TASK,
    MultiMNISTExplorer,
    compare_on_problem,
    delta_m,
    delta_m_figure,
    delta_m_table,
    find_run_dirs,
    imbalance_by_method,
    imbalance_by_method_figure,
    largest_shares,
    layer_ownership,
    load_balance_runs,
    method_ownership,
    module_level,
    multimnist_results,
    parse_run_name,
    results_wide,
    run_name,
    task_metric_figure,
    train_on_problem,
)
from mao_lab.problems import MultiMNISTProblem, MultiTaskNet, load_multimnist, multimnist_model, multimnist_problem

TASKS = ("left", "right", "sum", "reconstruct")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: one torch thread for these tiny problems


# -- Delta_m -------------------------------------------------------------------------------------------


def _reference_delta_m(results: dict[str, dict[str, tuple[float, float, bool]]]) -> float:
    """The formula of docs/references.md §6 written out: 100/T sum_t 1/M_t sum_m (-1)^s (M - B) / B, s = 1 if
    higher is better."""
    per_task = []
    for metrics in results.values():
        terms = [(-1) ** int(higher) * (m - b) / b for m, b, higher in metrics.values()]
        per_task.append(sum(terms) / len(terms))
    return 100 * sum(per_task) / len(per_task)


def _libmtl_improvement(results: dict[str, dict[str, tuple[float, float, bool]]]) -> float:
    """LibMTL's count_improvement (weight 1 = higher is better) in percent: the same mean, opposite sign."""
    total = 0.0
    for metrics in results.values():
        weight = np.array([int(h) for _, _, h in metrics.values()])
        base = np.array([b for _, b, _ in metrics.values()])
        new = np.array([m for m, _, _ in metrics.values()])
        total += ((-1.0) ** weight * (base - new) / base).mean()
    return 100 * total / len(results)


def _flatten(results: dict[str, dict[str, tuple[float, float, bool]]]) -> tuple[dict, dict, dict]:
    values = {(t, m): v[0] for t, ms in results.items() for m, v in ms.items()}
    baseline = {(t, m): v[1] for t, ms in results.items() for m, v in ms.items()}
    higher = {(t, m): v[2] for t, ms in results.items() for m, v in ms.items()}
    return values, baseline, higher


def test_delta_m_matches_the_formula_with_several_metrics_per_task() -> None:
    rng = np.random.default_rng(0)
    for _trial in range(20):
        results = {
            f"task{t}": {
                f"m{m}": (float(rng.uniform(0.1, 5)), float(rng.uniform(0.1, 5)), bool(rng.integers(2)))
                for m in range(int(rng.integers(1, 4)))
            }
            for t in range(int(rng.integers(1, 5)))
        }
        values, baseline, higher = _flatten(results)
        assert delta_m(values, baseline, higher) == pytest.approx(_reference_delta_m(results), rel=1e-12, abs=1e-12)
        assert delta_m(values, baseline, higher) == pytest.approx(-_libmtl_improvement(results), rel=1e-12, abs=1e-12)


def test_delta_m_sign_convention_lower_is_better() -> None:
    # Accuracy up from 0.80 to 0.90 (higher is better): 12.5% better, so Delta_m = -12.5.
    assert delta_m({"left": 0.9}, {"left": 0.8}, {"left": True}) == pytest.approx(-12.5)
    # An error doubled (lower is better): 100% worse.
    assert delta_m({"sum": 2.0}, {"sum": 1.0}, {"sum": False}) == pytest.approx(100.0)
    # The mean over tasks: (-12.5 + 100) / 2.
    both = delta_m({"left": 0.9, "sum": 2.0}, {"left": 0.8, "sum": 1.0}, {"left": True, "sum": False})
    assert both == pytest.approx(43.75)
    # Equal to the baseline: 0; task names and (task, "") pairs are the same keys.
    assert delta_m({"a": 3.0, "b": 0.5}, {"a": 3.0, "b": 0.5}, {"a": True, "b": False}) == 0.0
    pairs = delta_m(
        {("a", ""): 0.9, ("b", ""): 2.0}, {("a", ""): 0.8, ("b", ""): 1.0}, {("a", ""): True, ("b", ""): False}
    )
    assert pairs == delta_m({"a": 0.9, "b": 2.0}, {"a": 0.8, "b": 1.0}, {"a": True, "b": False}) == pytest.approx(43.75)


def test_delta_m_averages_within_a_task_first_and_ignores_units() -> None:
    # Task a has two metrics, b one: per-task mean (a: (+100 + 0)/2 = 50, b: 0) -> 25, not the flat mean 33.3.
    values = {("a", "x"): 2.0, ("a", "y"): 1.0, ("b", "z"): 1.0}
    baseline = {("a", "x"): 1.0, ("a", "y"): 1.0, ("b", "z"): 1.0}
    higher = dict.fromkeys(values, False)
    assert delta_m(values, baseline, higher) == pytest.approx(25.0)
    # Relative changes: a metric's unit (scaling value and baseline together) does not matter.
    scaled = {k: 1000 * v for k, v in values.items()}
    assert delta_m(scaled, {k: 1000 * v for k, v in baseline.items()}, higher) == pytest.approx(25.0)


def test_delta_m_rejects_a_zero_baseline_and_mismatched_keys() -> None:
    with pytest.raises(ValueError, match="non-zero"):
        delta_m({"a": 1.0}, {"a": 0.0}, {"a": True})
    with pytest.raises(ValueError, match="same keys"):
        delta_m({"a": 1.0}, {"b": 1.0}, {"a": True, "b": True})
    with pytest.raises(ValueError, match="same keys"):
        delta_m({"a": 1.0}, {"a": 1.0}, {})
    with pytest.raises(ValueError, match="at least one"):
        delta_m({}, {}, {})


def test_run_names_round_trip() -> None:
    for method, seed in itertools.product(["sum", "single-task", "io"], [0, 7, 12]):
        assert parse_run_name(run_name(method, seed)) == (method, seed)
    with pytest.raises(ValueError, match="not a run name"):
        parse_run_name("mao")


# -- training ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def problem() -> MultiMNISTProblem:
    return multimnist_problem(TASKS, num_train=2000, num_val=0, num_test=500, batch_size=32)


class _WatchedProblem(MultiMNISTProblem):
    """A MultiMNIST problem that keeps, for every network it builds, its tasks, its trunk as built and the training
    images of every batch the run then draws."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.runs: list[dict[str, Any]] = []

    def build_model(self, tasks: Sequence[str] | None = None) -> MultiTaskNet:
        model = super().build_model(tasks)
        trunk = {name: value.clone() for name, value in model.trunk.state_dict().items()}
        self.runs.append({"tasks": self.tasks_or_all(tasks), "trunk": trunk, "images": []})
        return model

    def batches(self, split: str, *, seed: int = 0, batch_size: int | None = None) -> Iterator[Any]:
        for images, targets in super().batches(split, seed=seed, batch_size=batch_size):
            if split == "train":
                self.runs[-1]["images"].append(images.clone())
            yield images, targets


def _improved(scores: pd.DataFrame) -> dict[str, bool]:
    first, last = scores[scores["step"] == 0].set_index("task"), scores[scores["step"] > 0].set_index("task")
    return {
        task: bool(last.loc[task, "value"] > first.loc[task, "value"]) == bool(first.loc[task, "higher_is_better"])
        for task in first.index
    }


def test_a_short_mao_run_is_repeatable_and_improves_every_task(problem) -> None:
    metrics, scores = train_on_problem(problem, "mao", steps=60, batch_size=32, seed=3, every=10)
    again, scores_again = train_on_problem(problem, "mao", steps=60, batch_size=32, seed=3, every=10)
    pd.testing.assert_frame_equal(scores.drop(columns="seconds"), scores_again.drop(columns="seconds"))
    pd.testing.assert_frame_equal(metrics, again)
    assert _improved(scores) == dict.fromkeys(TASKS, True), scores
    assert sorted(metrics["step"].unique()) == [0, 10, 20, 30, 40, 50]
    columns = ["method", "seed", "step", "task", "metric", "value", "higher_is_better", "seconds"]  # as documented
    assert list(scores.columns) == columns and scores["step"].unique().tolist() == [0, 60]
    # Another seed is another run.
    _, other = train_on_problem(problem, "mao", steps=5, batch_size=32, seed=4, every=10)
    assert not np.allclose(other[other["step"] == 0]["value"], scores[scores["step"] == 0]["value"])


def test_every_method_and_every_baseline_start_from_one_trunk_and_see_the_same_batches(problem) -> None:
    """A comparison's runs with one seed: the same trunk as built, the same training images step by step (the
    baselines too), and the multi-task methods the same whole network (the same scores at step 0)."""
    watched = _WatchedProblem(problem.split("train"), problem.split("test"), batch_size=32)
    _, scores = compare_on_problem(watched, ["sum", "mao"], seeds=(3,), steps=3, batch_size=32, progress=False)
    assert [run["tasks"] for run in watched.runs] == [TASKS, TASKS] + [(task,) for task in TASKS]
    first = watched.runs[0]
    alone = multimnist_model(("sum",), seed=3)  # built on its own, not through the problem
    for run in watched.runs:
        assert len(run["images"]) == 3
        for a, b in zip(run["images"], first["images"], strict=True):
            assert torch.equal(a, b)
        for name, value in alone.trunk.state_dict().items():
            assert torch.equal(run["trunk"][name], value), name
    start = scores[scores["step"] == 0]
    summed, mao = (start[start["method"] == m]["value"].to_numpy() for m in ("sum", "mao"))
    np.testing.assert_array_equal(summed, mao)
    # Another seed, another trunk.
    other = multimnist_model(("sum",), seed=4).trunk.state_dict()
    assert not all(torch.equal(first["trunk"][name], value) for name, value in other.items())


def test_single_task_baselines_are_repeatable_and_learn(problem) -> None:
    for task in ("left", "sum"):
        metrics, scores = train_on_problem(problem, "sum", tasks=(task,), steps=40, batch_size=32, seed=1, every=None)
        _, again = train_on_problem(problem, "sum", tasks=(task,), steps=40, batch_size=32, seed=1, every=None)
        pd.testing.assert_frame_equal(scores.drop(columns="seconds"), again.drop(columns="seconds"))
        assert metrics is None and scores["task"].unique().tolist() == [task]
        assert _improved(scores) == {task: True}


def test_bad_input_is_named(problem) -> None:
    with pytest.raises(ValueError, match="unknown method"):
        train_on_problem(problem, "adamm", steps=1)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        train_on_problem(problem, "sum", steps=0)
    # Training and test splits with different tasks: refused when the problem is made.
    train, other_test = load_multimnist(tasks=TASKS, limit=8), load_multimnist(split="test", tasks=("left",), limit=8)
    with pytest.raises(ValueError, match="test split's tasks"):
        MultiMNISTProblem(train, other_test)
    # A task the problem does not have, for one method or for the comparison and its baselines.
    two = MultiMNISTProblem(load_multimnist(tasks=("left", "right"), limit=8), batch_size=4)
    with pytest.raises(ValueError, match="unknown task 'sum'"):
        train_on_problem(two, "sum", tasks=("sum",), steps=1)
    with pytest.raises(ValueError, match="unknown task 'sum'"):
        compare_on_problem(two, ["sum"], tasks=("left", "sum"), steps=1, progress=False)
    with pytest.raises(ValueError, match="unknown"):
        compare_on_problem(problem, ["sum", "nope"], steps=1, progress=False)


# -- the comparison, its tables, figures, widget and run folders ---------------------------------------


@pytest.fixture(scope="module")
def comparison(tmp_path_factory) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    root = tmp_path_factory.mktemp("nb03") / "runs"
    metrics, scores = compare_on_problem(
        multimnist_problem(TASKS, num_train=256, num_val=0, num_test=128, batch_size=32),
        ["sum", "mao"],
        seeds=(0, 1),
        steps=8,
        batch_size=32,
        every=2,
        run_root=root,
        progress=False,
    )
    return root, metrics, scores


def test_the_run_folders_open_in_the_balance_explorer(comparison) -> None:
    root, metrics, _ = comparison
    names = ["mao-seed0", "mao-seed1", "sum-seed0", "sum-seed1"]
    assert sorted(find_run_dirs([root])) == names
    loaded, runs = load_balance_runs([root.parent])
    assert runs["run"].tolist() == names
    assert runs["method"].tolist() == ["mao", "mao", "sum", "sum"] and runs["seed"].tolist() == [0, 1, 0, 1]
    assert (runs["tasks"] == 4).all() and (runs["steps"] == 4).all()
    assert set(loaded["run"]) == set(metrics["run"]) and len(loaded) == len(metrics)


def test_the_comparison_scores_every_run_and_every_baseline(comparison) -> None:
    _, _, scores = comparison
    runs = {(m, seed): sorted(rows["task"].unique()) for (m, seed), rows in scores.groupby(["method", "seed"])}
    assert runs == {(m, seed): sorted(TASKS) for m in ("sum", "mao", SINGLE_TASK) for seed in (0, 1)}
    steps = scores.groupby(["method", "seed", "task"])["step"].apply(list)
    assert (steps.map(lambda s: s == [0, 8])).all()


def test_delta_m_table_agrees_with_the_scores(comparison) -> None:
    _, _, scores = comparison
    table = delta_m_table(scores)
    assert table[["method", "seed"]].values.tolist() == [["sum", 0], ["mao", 0], ["sum", 1], ["mao", 1]]
    final = scores[scores["step"] == 8]
    base = final[final["method"] == SINGLE_TASK].groupby("task")["value"].mean()
    higher = final.groupby("task")["higher_is_better"].first()
    for row in table.itertuples():
        run = final[(final["method"] == row.method) & (final["seed"] == row.seed)].set_index("task")["value"]
        signed = [(-1 if higher[t] else 1) * (run[t] - base[t]) / base[t] for t in TASKS]
        assert row.delta_m == pytest.approx(100 * np.mean(signed), rel=1e-12)
        assert row.change_sum == pytest.approx(100 * (run["sum"] - base["sum"]) / base["sum"], rel=1e-12)


def test_results_table_is_tidy(comparison) -> None:
    _, _, scores = comparison
    results = multimnist_results(scores)
    assert list(results.columns) == ["method", "task", "metric", "higher_is_better", "mean", "std", "seeds"]
    assert list(pd.unique(results["method"])) == ["sum", "mao", SINGLE_TASK]
    assert (results["seeds"] == 2).all()
    dm = results[results["metric"] == "delta_m"].set_index("method")
    table = delta_m_table(scores).groupby("method")["delta_m"]
    assert dm.loc["mao", "mean"] == pytest.approx(table.mean()["mao"]) and dm.loc["mao", "std"] == pytest.approx(
        table.std()["mao"]
    )
    left = results[(results["method"] == "sum") & (results["task"] == "left")].iloc[0]
    values = scores[(scores["method"] == "sum") & (scores["task"] == "left") & (scores["step"] == 8)]["value"]
    assert left["mean"] == pytest.approx(values.mean()) and left["std"] == pytest.approx(values.std(ddof=1))
    assert left["metric"] == "accuracy" and left["higher_is_better"]
    wide = results_wide(results)
    assert list(wide.index) == ["Adam on the sum", "MAO", "single task (Adam)"]
    assert list(wide.columns) == ["left accuracy", "right accuracy", "sum mae", "reconstruct mse", "Δm%"]
    assert wide.loc["Adam on the sum", "left accuracy"] == f"{values.mean():.4f} ± {values.std(ddof=1):.4f}"
    assert wide.loc["single task (Adam)", "Δm%"] == ""


def test_ownership_by_method_and_its_summaries(comparison) -> None:
    _, metrics, scores = comparison
    ownership = layer_ownership(metrics)
    by_method = method_ownership(ownership)
    assert list(pd.unique(by_method["run"])) == ["sum", "mao"]
    assert list(pd.unique(by_method["layer"])) == ["trunk.0", "trunk.3", "trunk.7"]
    sums = by_method.groupby(["run", "layer"])["share"].sum()
    np.testing.assert_allclose(sums, 1.0, atol=1e-6)
    per_seed = ownership[ownership["run"].isin(["mao-seed0", "mao-seed1"]) & (ownership["layer"] == "trunk.0")]
    expected = per_seed.groupby("task")["share"].mean()
    got = by_method[(by_method["run"] == "mao") & (by_method["layer"] == "trunk.0")].set_index("task")["share"]
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index(), check_names=False)
    largest = largest_shares(by_method)
    assert largest["mao"]["trunk.0"] == {"task": str(got.idxmax()), "share": pytest.approx(float(got.max()))}
    steps = imbalance_by_method(module_level(metrics))
    assert list(pd.unique(steps["method"])) == ["sum", "mao"] and (steps["seeds"] == 2).all()
    assert steps["mean"].between(0, 1).all()
    assert len(imbalance_by_method_figure(steps).data) == 4
    assert len(task_metric_figure(scores).data) == 4 * 2 * 2  # tasks x methods x (bar + seed dots)
    assert len(delta_m_figure(delta_m_table(scores)).data) == 2 * 2


def test_the_explorer_follows_its_controls(comparison) -> None:
    _, metrics, _ = comparison
    explorer = MultiMNISTExplorer(metrics, method="sum", seed=1, layer="trunk.3")
    assert explorer.run == "sum-seed1" and explorer.share_view.outputs and explorer.grad_view.outputs
    explorer.method.value, explorer.seed.value, explorer.layer.value = "mao", 0, "trunk.7"
    title = explorer.static_figure().layout.title.text
    assert explorer.run == "mao-seed0" and "trunk.7" in title and "MAO" in title and "seed 0" in title
    assert [trace.name for trace in explorer.static_figure().data] == list(TASKS)
    assert not math.isnan(explorer.static_figure().data[0].y[0])
