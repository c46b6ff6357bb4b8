"""The notebooks' logic: the parameter validator and the summaries in the library, the prose in each notebook.

Summaries are checked against the tables they come from, recomputed here with plain pandas; each notebook's
findings cell is run here on a summary written by hand.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch

from mao_lab._validate import (
    Autocast,
    Bool,
    Choice,
    Choices,
    Device,
    Dict,
    Hyperparameter,
    Int,
    IntList,
    Number,
    NumberList,
    Optional,
    Text,
    betas,
    checked,
    non_negative_floats,
    require,
)
from mao_lab.experiments import (
    explorer_summary,
    findings_paragraph,
    landscape_summary,
    multimnist_summary,
    regression_summary,
)
from mao_lab.notebook import SMOKE_NOTE, NotebookParameterError, validate_parameters
from mao_lab.runner import NOTEBOOK_DIR

# -- the validator ------------------------------------------------------------------------------------

CASES = [  # requirement, allowed values (and the value to use), refused values
    (Bool(), [(True, True), (False, False)], [1, 0, "yes", None]),
    (Int(min=1), [(1, 1), (10**9, 10**9), (np.int64(3), 3)], [0, -3, 1.0, True, "2"]),
    (Int(min=2, max=10), [(2, 2), (10, 10)], [1, 11, 5.5]),
    (Int(), [(-4, -4)], [None, 0.0]),
    (Number(positive=True), [(1e-9, 1e-9), (3, 3.0), (torch.tensor(2.5), 2.5)], [0, -1.0, float("nan"), True]),
    (Number(positive=True, max=1), [(1, 1.0), (0.5, 0.5)], [0, 1.01]),
    (Number(min=0), [(0, 0.0), (7.5, 7.5)], [-1e-12, float("inf"), "1", torch.ones(2)]),
    (Number(min=0, max=1, max_open=True), [(0, 0.0)], [1, -0.1]),
    (Text(), [("runs", "runs")], ["", None, 3]),
    (Text("a folder, or ''", empty=True), [("", "")], [None]),
    (Dict(), [({"a": 1}, {"a": 1})], [[], None]),
    (Choice(("module", "parameter")), [("module", "module")], ["modules", None, ["module"]]),
    (Choice(("adam", "sgd", 1)), [(1, 1)], [True, 1.5]),
    (Choices(("a", "b")), [(["a"], ["a"]), (("a", "b"), ("a", "b")), (["b", "b"], ["b", "b"])], [[], "a", ["a", "c"]]),
    (Choices(("a", "b", "c"), min_length=2, unique=True), [(["a", "c"], ["a", "c"])], [["a"], ["a", "a"]]),
    (
        NumberList(length=2, positive=True, ascending=True),
        [([1, 100], (1.0, 100.0)), ((2, 2), (2.0, 2.0))],
        [[100, 1], [1], [0, 1], [1, True], "12"],
    ),
    (NumberList(min_length=2, positive=True), [([1, 2, 3], (1.0, 2.0, 3.0))], [[1], [1, -2]]),
    (IntList(min=0), [([0, 1, 2], [0, 1, 2])], [[], [1, 1], [-1], [0.5], "0"]),
    (Optional(Int(min=0)), [(None, None), (2, 2)], [-1, 0.5]),
    (Device(), [("", None), (None, None), ("cpu", "cpu")], ["tpu", 3, "cpu:x"]),
    (Autocast(), [("", None), ("bf16", "bf16"), ("fp16", "fp16")], ["fp8", 16]),
]


@pytest.mark.parametrize("requirement, allowed, refused", CASES, ids=[type(c[0]).__name__ for c in CASES])
def test_each_requirement_allows_converts_and_refuses_what_it_says(requirement, allowed, refused) -> None:
    for value, to_use in allowed:
        assert requirement.allows(value), value
        used = require("x", value, requirement)
        assert used == to_use and type(used) is type(to_use), (value, used)
    for value in refused:
        assert not requirement.allows(value), value
        with pytest.raises(ValueError, match=r"^x must be .+, got ") as error:
            require("x", value, requirement)
        # The message is the refusal's: the whole requirement, or the part the value (or its bad item) fails.
        refusal = requirement.refusal(value)
        assert str(error.value) == f"x must be {refusal.must_be}, got {refusal.got!r}"
        assert refusal.got is value or any(refusal.got is item for item in value), refusal


def test_a_number_refusal_names_the_part_it_fails_and_a_list_names_its_bad_item() -> None:
    messages = {
        "lr": (Number(min=0), [("x", "a number, got 'x'"), (float("inf"), "a finite number, got inf"), (-1, ">= 0")]),
        "tail": (Number(positive=True, max=1), [(0, "positive and <= 1, got 0"), (True, "a number, got True")]),
        "w": (non_negative_floats, [([1, -2], ">= 0, got -2"), ("ab", "a non-empty list of numbers >= 0, got 'ab'")]),
        "betas": (betas, [((0.9, 1.0), ">= 0 and < 1, got 1.0"), (0.9, "a pair of numbers >= 0 and < 1, got 0.9")]),
        "k": (Optional(Int(min=0)), [(True, "None or a non-negative integer, got True")]),
    }
    for name, (requirement, cases) in messages.items():
        for value, expected in cases:
            with pytest.raises(ValueError) as error:
                require(name, value, requirement)
            assert str(error.value).startswith(f"{name} must be {expected}"), str(error.value)


def test_hyperparameters_are_checked_with_the_same_requirements() -> None:
    spec = {"lr": Hyperparameter(1e-3, Number(min=0)), "betas": Hyperparameter((0.9, 0.999), betas)}
    assert checked(spec, {"lr": 1, "betas": [0.5, 0.6]}, "M") == {"lr": 1.0, "betas": (0.5, 0.6)}
    assert checked(spec, {}, "M") == {"lr": 1e-3, "betas": (0.9, 0.999)}
    with pytest.raises(ValueError, match=r"^hyperparameter 'lr' must be >= 0, got -1$"):
        checked(spec, {"lr": -1}, "M")
    with pytest.raises(ValueError, match=r"unknown hyperparameter\(s\) 'lrr' for method 'M'; valid: lr, betas"):
        checked(spec, {"lrr": 1}, "M")


def test_validate_parameters_names_the_first_bad_parameter_and_what_is_allowed() -> None:
    spec = {"steps": Int(min=1), "lr": Number(positive=True), "methods": Choices(("sum", "mao")), "device": Device()}
    good = {"steps": 5, "lr": 1, "methods": ("sum",), "device": "", "unrelated": object()}
    assert validate_parameters(good, spec) == {"steps": 5, "lr": 1.0, "methods": ["sum"], "device": None}
    with pytest.raises(NotebookParameterError) as error:
        validate_parameters({**good, "lr": -1.0, "methods": ["nope"]}, spec)
    assert str(error.value) == "bad notebook parameter `lr` = -1.0: it must be a positive, finite number"
    with pytest.raises(NotebookParameterError, match="notebook parameter `methods` is missing"):
        validate_parameters({"steps": 5, "lr": 0.1}, spec)


# -- summaries -----------------------------------------------------------------------------------------


def test_regression_summary_against_the_ownership_table() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for run in ("sum", "mao"):
        for layer in ("trunk.0", "trunk.2", "trunk.4"):
            shares = rng.dirichlet(np.ones(3))
            for k, share in enumerate(shares):
                rows.append(
                    {
                        "run": run,
                        "layer": layer,
                        "task": f"task{k}",
                        "share": share,
                        "owner": f"task{int(shares.argmax())}",
                        "imbalance": float(rng.uniform()),
                    }
                )
    # imbalance is a property of the layer: the same on each of its task rows
    ownership = pd.DataFrame(rows)
    ownership["imbalance"] = ownership.groupby(["run", "layer"])["imbalance"].transform("first")
    final = pd.DataFrame({"method": ["sum", "mao"], "worst": [0.9, 0.3]})
    summary = regression_summary(ownership, final, "task2", steps=7)
    for run in ("sum", "mao"):
        part = ownership[ownership["run"] == run]
        largest = part[part["task"] == "task2"]["share"]
        assert summary["largest_sigma_task_min_share"][run] == pytest.approx(largest.min())
        assert summary["largest_sigma_task_max_share"][run] == pytest.approx(largest.max())
        assert summary["mean_imbalance"][run] == pytest.approx(part.drop_duplicates("layer")["imbalance"].mean())
    assert summary["worst_normalised_test_mse"] == {"sum": 0.9, "mao": 0.3} and summary["steps"] == 7


def test_landscape_summary_counts_reached_starts_and_misses_in_the_band() -> None:
    pareto = pd.DataFrame(
        {
            "method": ["mean"] * 3 + ["mao"] * 3,
            "x1_start": [0.0, 9.0, -8.5] * 2,
            "x2_start": [0.0, 9.0, 7.5] * 2,
            "reached": [True, True, True, True, False, False],
            "distance": [0.0, 0.01, 0.02, 0.0, 0.5, 0.9],
            "arc_distance": [0.0, 0.02, 0.01, 0.0, 0.2, 1.1],
            "conflict_band": [False, False, False, True, True, False],
        }
    )
    gaps = pd.DataFrame({"method": ["mao", "mean"], "max_gap": [1e-13, 2.5]})
    summary = landscape_summary(pareto, gaps, gaps.assign(max_gap=[1e-3, 2.4]))
    assert summary["reached_count"] == {"mean": 3, "mao": 1}
    assert summary["reached_from"]["mao"] == ["(0, 0)"]
    assert summary["unreached_in_conflict_band"] == {"mean": 0, "mao": 1}
    assert summary["final_distance"]["mao"] == {
        "(0, 0)": 0.0,
        "(9, 9)": 0.2,
        "(-8.5, 7.5)": 0.9,
    }  # the nearer of the two


def test_multimnist_and_explorer_summaries_pick_the_extremes() -> None:
    results = pd.DataFrame(
        {
            "method": ["sum", "mao", "io"],
            "task": "(all)",
            "metric": "delta_m",
            "mean": [4.0, -2.0, 1.0],
            "std": [1.0, 0.5, np.nan],
            "seeds": [3, 3, 1],
            "higher_is_better": False,
        }
    )
    by_method = pd.DataFrame(
        {
            "run": ["sum", "sum"],
            "layer": ["a", "b"],
            "task": "left",
            "share": [0.7, 0.6],
            "owner": "left",
            "owner_share": [0.7, 0.6],
            "imbalance": [0.2, 0.4],
        }
    )
    summary = multimnist_summary(results, by_method, {"sum": 2.0})
    assert summary["best_delta_m_method"] == "mao" and summary["delta_m_percent"]["sum"]["seeds"] == 3
    assert summary["mean_imbalance"] == {"sum": pytest.approx(0.3)}
    balance = pd.DataFrame(
        {
            "run": ["x", "x", "y", "y"],
            "layer": ["l", "(all shared)"] * 2,
            "imbalance": [0.1, 0.1, 0.8, 0.8],
            "dominant_task": ["t0", "t0", "t1", "t1"],
        }
    )
    explorer = explorer_summary(["x", "y"], balance)
    assert (explorer["most_imbalanced_run"], explorer["least_imbalanced_run"]) == ("y", "x")
    assert explorer["dominant_task"] == {"x": "t0", "y": "t1"}


# -- prose written from the run --------------------------------------------------------------------------


# A summary of each notebook's shape, its numbers distinct, so that a number in the text can be traced to one.
MULTIMNIST_SUMMARY = {
    "delta_m_percent": {"sum": {"mean": 3.14, "std": 1.0, "seeds": 2}, "mao": {"mean": -1.27, "std": 0.5, "seeds": 2}},
    "best_delta_m_method": "mao",
    "mean_imbalance": {"sum": 0.417, "mao": 0.0213},
}
SUMMARIES: dict[str, dict[str, Any]] = {
    "00_quickstart": {
        "worst_normalised_test_mse": {"sum": 0.593, "mao": 0.148},
        "worst_task_ratio_adam_over_mao": 4.01,
    },
    "01_toy_landscape": {
        "reached_count": {"mean": 1, "mao": 3},
        "final_distance": {"mean": {"(0, 0)": 0.0, "(9, 9)": 0.5, "(1, 5)": 0.2}, "mao": {"(0, 0)": 0.0}},
        "unreached_in_conflict_band": {"mean": 2, "mao": 0},
        "rescaling_max_gap": {"mean": 0.0072, "mao": 0.00012},
        "rescaling_max_gap_eps_1e-8": {"mean": 0.0081, "mao": 6.5e-13},
    },
    "02_imbalanced_regression": {
        "mean_imbalance": {"sum": 0.417, "mao": 0.0213},
        "largest_sigma_task_min_share": {"sum": 0.871, "mao": 0.262},
        "worst_normalised_test_mse": {"sum": 0.593, "mao": 0.148},
    },
    "03_multimnist": MULTIMNIST_SUMMARY,
    "04_balance_explorer": {
        "mean_imbalance": {"run-a": 0.61, "run-b": 0.032},
        "most_imbalanced_run": "run-a",
        "least_imbalanced_run": "run-b",
    },
    "07_your_problem": MULTIMNIST_SUMMARY,
}


DEFINITIONS = ("(0 balanced, 1 one task owns them)", "below 0 beats", "L1 × 1", "eps = 1e-8")


def _numbers(value: Any) -> Iterator[float]:
    """Every number in a summary, and the size of every mapping in it (a text may count the entries)."""
    if isinstance(value, Mapping):
        yield float(len(value))
        for item in value.values():
            yield from _numbers(item)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield float(value)


def _findings(notebook: str, summary: Mapping[str, Any], smoke: bool = False) -> str:
    """The Markdown that ``notebook``'s findings cell writes from ``summary`` (its other lines not run)."""
    cells = [c.source for c in nbformat.read(NOTEBOOK_DIR / f"{notebook}.ipynb", as_version=4).cells]
    (source,) = [c for c in cells if "findings = findings_paragraph(" in c]
    start = source.index("findings = findings_paragraph(")
    imports = "\n".join(line for line in source.splitlines() if line.startswith(("from ", "import ")))
    namespace: dict[str, Any] = {"summary": summary, "smoke": smoke}
    exec(imports + "\n" + source[start : source.index("\nMarkdown(findings)", start)], namespace)  # noqa: S102
    return namespace["findings"]


@pytest.mark.parametrize("notebook", sorted(SUMMARIES))
def test_each_notebooks_findings_state_its_summarys_numbers_and_no_others(notebook: str) -> None:
    summary = SUMMARIES[notebook]
    text = _findings(notebook, summary)
    assert text.startswith("**This run:** ") and SMOKE_NOTE not in text
    for definition in DEFINITIONS:  # the prose's fixed numbers: scales and settings, not results
        text = text.replace(definition, "")
    stated = {float(n) for n in re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e-?\d+)?", text)}
    assert stated and stated <= set(_numbers(summary)), stated - set(_numbers(summary))
    assert _findings(notebook, summary, smoke=True) == f"**{SMOKE_NOTE}**\n\n{_findings(notebook, summary)}"


def test_the_regression_findings_rank_the_methods_and_follow_the_summary() -> None:
    summary = SUMMARIES["02_imbalanced_regression"]
    text = _findings("02_imbalanced_regression", summary)
    numbers = {float(n) for n in re.findall(r"(?<![\w.])\d+\.\d+", text)}
    assert numbers == {v for values in summary.values() for v in values.values()}
    assert text.index("MAO 0.0213") < text.index("Adam on the sum 0.417")  # ranked, lowest first
    changed = _findings("02_imbalanced_regression", {**summary, "mean_imbalance": {"sum": 0.5, "mao": 0.0213}})
    assert "0.417" not in changed and "0.5" in changed


def test_findings_paragraph_sets_out_the_sentences() -> None:
    assert findings_paragraph(["a: 1", "b"]) == "**This run:** A: 1. B."
    assert findings_paragraph(["a"], smoke=True) == f"**{SMOKE_NOTE}**\n\n**This run:** A."
