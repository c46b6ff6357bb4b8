"""The ledger's reading made robust: p-values and Holm against scipy/statsmodels, the claim rule, M1 under other
bounds and readings, rates chosen on two seeds, divergences, and ``--ledger-only`` recomputing every verdict from
the committed per-seed tables (checked here with scipy.stats.t.interval, independently of the code)."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from mao_lab.study import StudyDesign, claim_verdict, family_verdicts, holm, mean_interval, p_value, smoke_design
from mao_lab.study.__main__ import main
from mao_lab.study._analysis import (
    balance_summary,
    choose_learning_rates,
    claims_ledger,
    divergence_counts,
    finalist_rates,
    ledger_from_tables,
    m1_by_budget,
    m1_sensitivity,
    m1_sensitivity_verdicts,
    run_outcomes,
)
from mao_lab.study._ledger import (
    RECOMPUTE_TABLES,
    LedgerInputError,
    balance_by_budget,
    ledger_only,
    recompute_tables,
    write_ledger,
)


def load_test_module(name: str) -> ModuleType:
    """A sibling test module by its path (the suite runs with --import-mode=importlib: tests/ is not on sys.path)."""
    spec = importlib.util.spec_from_file_location(f"_loaded_{name}", Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_synthetic_tables = load_test_module("test_study_stats")._synthetic_tables

DOCS = Path(__file__).resolve().parents[1] / "docs" / "claims"
LEVEL = 0.95


# -- p-values and Holm ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 5, 9])
@pytest.mark.parametrize("threshold", [0.0, 0.4, -1.0])
def test_p_value_read_from_the_interval_is_scipys_one_sample_t_test(n: int, threshold: float) -> None:
    values = np.random.default_rng(n).normal(0.5, 1.0, size=n)
    expected = stats.ttest_1samp(values, threshold).pvalue
    interval = mean_interval(values)
    assert p_value(interval, threshold) == pytest.approx(expected, rel=1e-9)
    # below 5 % exactly when the 95 % interval excludes the threshold
    assert (p_value(interval, threshold) < 0.05) == interval.excludes(threshold)


@pytest.mark.parametrize("seed", range(6))
def test_holm_is_statsmodels_holm(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 0.2, size=int(rng.integers(1, 25)))
    p[: len(p) // 3] = p[0]  # ties
    expected = multipletests(p, alpha=0.05, method="holm")[1]
    np.testing.assert_allclose(holm(p), expected, rtol=1e-12)


def test_holm_counts_a_missing_p_value_as_one_and_refuses_nonsense() -> None:
    # by hand: sorted 0.01, 0.02, (1): 3 * 0.01, max(0.03, 2 * 0.02), max(0.04, 1)
    np.testing.assert_allclose(holm([0.02, math.nan, 0.01]), [0.04, 1.0, 0.03])
    with pytest.raises(ValueError, match=r"p-values must lie in \[0, 1\]"):
        holm([0.5, 1.5])


def _interval_with_p(p: float, sign: float = 1.0, n: int = 5) -> object:
    """A t-interval (n seeds) whose two-sided p-value against 0 is ``p``, its estimate of sign ``sign``."""
    from mao_lab.study import Interval

    t = stats.t.isf(p / 2, n - 1)
    half = stats.t.ppf(0.975, n - 1)  # se = 1
    return Interval(sign * t, sign * t - half, sign * t + half, n)


def test_one_part_against_the_claim_among_many_must_survive_holm() -> None:
    # 20 parts, one lies wholly on the wrong side with p = 0.01: per part "not supported", family-wise inconclusive
    parts = [_interval_with_p(0.01, +1.0)] + [_interval_with_p(0.5, -1.0)] * 19
    directions, thresholds = ["less"] * 20, [0.0] * 20
    family, adjusted = family_verdicts(parts, directions, thresholds)
    assert adjusted[0] == pytest.approx(min(1.0, 20 * 0.01))
    assert family[0] == "inconclusive"
    own = ["not supported"] + ["inconclusive"] * 19
    assert claim_verdict(own, family) == "inconclusive"
    # at p = 0.0001 it survives: 20 * 0.0001 < 0.05
    parts[0] = _interval_with_p(0.0001, +1.0)
    family, _ = family_verdicts(parts, directions, thresholds)
    assert family[0] == "not supported" and claim_verdict(own, family) == "not supported"


def test_claim_rule_truth_table() -> None:
    assert claim_verdict(["supported"] * 3, ["inconclusive"] * 3) == "supported"  # the intersection-union test
    assert claim_verdict(["supported", "inconclusive"], ["supported", "inconclusive"]) == "inconclusive"
    assert claim_verdict(["supported", "not supported"], ["supported", "not supported"]) == "not supported"
    with pytest.raises(ValueError, match="one family-wise verdict per part"):
        claim_verdict(["supported"], [])


# -- M1 under other bounds and readings ------------------------------------------------------------------------


def _balance_rows(design: StudyDesign, worst: dict[str, float]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Balance rows of every MAO and sum run (three layers, steps 0..100) and a choice at lr 1e-3."""
    rng = np.random.default_rng(0)
    rows, choice = [], []
    for config in design.configs():
        if config.variant not in worst:
            continue
        choice.append({"config": config.name, "lr": 1e-3, "criterion": 0.0, "seeds": 1, "chosen": True})
        for seed in design.seeds:
            for step in range(0, 101, 10):
                for layer in ("a", "b", "c"):
                    start_peak = 0.3 if step == 0 else 0.0  # a start-up peak that the late reading leaves out
                    value = worst[config.variant] * rng.uniform(0.2, 1.0) + start_peak
                    rows.append(
                        {
                            "config": config.name,
                            "lr": 1e-3,
                            "seed": seed,
                            "step": step,
                            "layer": layer,
                            "imbalance": value,
                            "largest_share": 1 / len(config.tasks) + value / 2,
                            "largest_task": "x",
                        }
                    )
    return pd.DataFrame(rows), pd.DataFrame(choice)


def test_balance_summary_reads_every_reading_as_written_by_hand() -> None:
    design = StudyDesign(**{**smoke_design().as_dict(), "seeds": (0, 1, 2, 3, 4)})
    balance, choice = _balance_rows(design, {"mao": 0.1, "sum": 0.6})
    summary = balance_summary(balance, choice, design).set_index(["config", "seed"])
    run = balance[(balance["config"] == "reg4.mao") & (balance["seed"] == 3)]
    values = sorted(run["imbalance"])
    rank = 0.95 * (len(values) - 1)  # linear interpolation between the order statistics around the 95 % rank
    p95 = values[int(rank)] + (rank - int(rank)) * (values[int(rank) + 1] - values[int(rank)])
    row = summary.loc[("reg4.mao", 3)]
    assert row["worst_imbalance"] == pytest.approx(max(values))
    assert row["p95_imbalance"] == pytest.approx(p95)
    assert row["late_imbalance"] == pytest.approx(run[run["step"] > 10]["imbalance"].max())
    assert row["share_excess"] == pytest.approx(run["largest_share"].max() - 1 / 4)


def test_m1_sensitivity_is_scipys_intervals_under_each_bound_and_the_ledger_reading_gives_the_ledgers_m1() -> None:
    design = StudyDesign(**{**smoke_design().as_dict(), "seeds": (0, 1, 2, 3, 4)})
    balance, choice = _balance_rows(design, {"mao": 0.12, "sum": 0.6})
    summary = balance_summary(balance, choice, design)
    table = m1_sensitivity(summary)
    assert list(pd.unique(table["reading"])) == ["worst_imbalance", "p95_imbalance", "late_imbalance", "share_excess"]
    first = table[(table["reading"] == "worst_imbalance") & (table["setting"] == "reg2")]
    assert first.iloc[0]["part"] == "MAO − sum < 0" and first["bound"].iloc[1:].tolist() == [0.05, 0.1, 0.2]
    mao = summary[summary["config"] == "reg2.mao"].set_index("seed")["worst_imbalance"]
    total = summary[summary["config"] == "reg2.sum"].set_index("seed")["worst_imbalance"]
    diff = (mao - total.loc[mao.index]).to_numpy()
    low, high = stats.t.interval(LEVEL, len(diff) - 1, loc=diff.mean(), scale=stats.sem(diff))
    assert (first.iloc[0]["low"], first.iloc[0]["high"]) == pytest.approx((low, high))
    low, high = stats.t.interval(LEVEL, len(mao) - 1, loc=mao.mean(), scale=stats.sem(mao))
    for row in first.iloc[1:].itertuples():
        expected = "supported" if high < row.bound else "not supported" if low > row.bound else "inconclusive"
        assert (row.low, row.high) == pytest.approx((low, high)) and row.verdict == expected
    # the ledger's own reading and bound give the ledger's M1 verdict
    verdicts = m1_sensitivity_verdicts(table).set_index(["reading", "bound"])["verdict"]
    empty_dm = pd.DataFrame(columns=["config", "seed", "delta_m"])
    empty_final = pd.DataFrame(columns=["config", "seed", "distance", "path_length", "seconds_per_epoch"])
    ledger = ledger_from_tables(empty_dm, summary, empty_final, design)
    m1 = ledger[(ledger["claim"] == "M1") & (ledger["part"] == "(claim)")]["verdict"].iloc[0]
    assert verdicts[("worst_imbalance", 0.1)] == m1
    # with a larger bound the planted worst imbalance (about 0.12 + the start-up peak) is under it; not under 0.05
    assert verdicts[("worst_imbalance", 0.05)] == "not supported"
    assert verdicts[("late_imbalance", 0.2)] == "supported"


# -- M1 on the regression at shorter budgets -----------------------------------------------------------------


def _val_row(config: str, lr: float, seed: int, step: int, task: str, value: float) -> dict:
    """One regression run's validation MSE of one task at one step, as a study's scores table holds it."""
    return {"config": config, "lr": lr, "seed": seed, "split": "val", "step": step, "task": task,
            "metric": "normalised_mse", "value": value, "higher_is_better": False}  # fmt: skip


def _budget_tables(design: StudyDesign) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Regression scores and balance where reg2.mao's best rate at step 50 (1e-2) is not its best at 100 (1e-3),
    every other configuration's is 1e-3 at both, and every run's imbalance grows with the step."""
    rng = np.random.default_rng(1)
    middle = {(3e-3, 50): 0.7, (3e-3, 100): 0.6}  # (lr, step) -> validation MSE; never the best rate
    criterion = {  # reg2.mao's early winner 1e-2 falls behind 1e-3 by step 100; elsewhere 1e-3 leads throughout
        "flip": {**middle, (1e-3, 50): 0.6, (1e-3, 100): 0.2, (1e-2, 50): 0.4, (1e-2, 100): 0.5},
        "keep": {**middle, (1e-3, 50): 0.3, (1e-3, 100): 0.2, (1e-2, 50): 0.8, (1e-2, 100): 0.9},
    }
    scores, balance = [], []
    for config in design.configs():
        if config.problem != "regression":
            continue
        kind = "flip" if config.name == "reg2.mao" else "keep"
        base = 0.02 if config.variant == "mao" else 0.3
        for lr in design.lrs:
            for seed in design.seeds:
                for step in (0, 50, 100):
                    value = 1.0 if step == 0 else criterion[kind][(lr, step)]
                    for task in config.tasks:
                        scores.append(_val_row(config.name, lr, seed, step, task, value))
                for step in range(0, 101, 10):
                    value = base + 0.001 * step + rng.uniform(0.0, 0.02)
                    balance.append(
                        {
                            "config": config.name,
                            "lr": lr,
                            "seed": seed,
                            "step": step,
                            "layer": "trunk",
                            "imbalance": value,
                            "largest_share": 1 / len(config.tasks) + value / 2,
                            "largest_task": "t",
                        }
                    )
    return pd.DataFrame(scores), pd.DataFrame(balance)


def test_m1_at_shorter_budgets_reads_each_runs_balance_up_to_the_budget_at_the_rate_chosen_there() -> None:
    design = StudyDesign(
        **{**smoke_design().as_dict(), "seeds": (0, 1, 2, 3, 4), "regression_steps": 100, "eval_every": 50}
    )
    scores, balance = _budget_tables(design)
    table = balance_by_budget(scores, balance, design, budgets=[50, 100])
    assert set(table["config"]) == {f"reg{t}.{v}" for t in (2, 4, 8) for v in ("mao", "sum")}
    same = table.set_index(["budget", "config"])["same_rate"].groupby(level=[0, 1]).first()
    assert not same[(50, "reg2.mao")] and same[(100, "reg2.mao")] and same[(50, "reg4.mao")]
    for budget, config, seed, lr in ((50, "reg4.mao", 3, 1e-3), (100, "reg8.sum", 0, 1e-3), (50, "reg2.mao", 1, 1e-2)):
        run = balance[(balance["config"] == config) & (balance["seed"] == seed) & (balance["lr"] == lr)]
        by_hand = max(v for s, v in zip(run["step"], run["imbalance"]) if s <= budget)
        row = table[(table["budget"] == budget) & (table["config"] == config) & (table["seed"] == seed)]
        assert row["worst_imbalance"].item() == pytest.approx(by_hand)

    m1 = m1_by_budget(table)
    part = m1.set_index(["budget", "setting", "part"])
    # reg2 at 50 steps: MAO's rate there is not the study's, so no interval is claimed for it
    assert part.loc[(50, "reg2", "MAO − sum < 0"), "verdict"] == "inconclusive"
    assert part.loc[(50, "reg2", "MAO − sum < 0"), "seeds"] == 0
    for budget, setting in ((50, "reg4"), (100, "reg2"), (100, "reg8")):
        rows = table[table["budget"] == budget]
        mao = rows[rows["config"] == f"{setting}.mao"].set_index("seed")["worst_imbalance"]
        total = rows[rows["config"] == f"{setting}.sum"].set_index("seed")["worst_imbalance"]
        diff = (mao - total.loc[mao.index]).to_numpy()
        low, high = stats.t.interval(LEVEL, len(diff) - 1, loc=diff.mean(), scale=stats.sem(diff))
        got = part.loc[(budget, setting, "MAO − sum < 0")]
        assert (got["low"], got["high"]) == pytest.approx((low, high))
        assert got["verdict"] == ("supported" if high < 0 else "not supported" if low > 0 else "inconclusive")
        low, high = stats.t.interval(LEVEL, len(mao) - 1, loc=mao.mean(), scale=stats.sem(mao))
        got = part.loc[(budget, setting, "MAO < 0.1")]
        assert (got["low"], got["high"]) == pytest.approx((low, high))
    claims = m1[m1["part"] == "(claim)"].set_index("budget")["verdict"]
    # planted: MAO's imbalance (0.02 + 0.001 step) stays under 0.1 up to step 50, not up to 100
    assert claims[50] == "inconclusive" and claims[100] == "not supported"
    with pytest.raises(ValueError, match="regression steps"):
        balance_by_budget(scores, balance, design, budgets=[150])


# -- rates chosen on two seeds, divergences --------------------------------------------------------------------


def _two_seed_scores(design: StudyDesign) -> pd.DataFrame:
    """Regression scores: seed 0 likes lr 1e-2 best, but seed 1 is bad there; 3e-3 is best on the mean."""
    criteria = {(1e-3, 0): 0.5, (1e-3, 1): 0.5, (3e-3, 0): 0.3, (3e-3, 1): 0.3, (1e-2, 0): 0.1, (1e-2, 1): 2.0}
    rows = []
    for config in design.configs():
        if config.problem != "regression":
            continue
        for (lr, seed), value in criteria.items():
            for step, scale in ((0, 1.0), (4, value)):
                for task in config.tasks:
                    rows.append(_val_row(config.name, lr, seed, step, task, scale))
    return pd.DataFrame(rows)


def test_rates_are_chosen_on_the_mean_over_the_tuning_seeds() -> None:
    design = smoke_design()
    assert design.tuning_seeds == (0, 1)
    scores = _two_seed_scores(design)
    first = choose_learning_rates(scores, design, seeds=(0,))
    assert set(first[first["chosen"]]["lr"]) == {1e-2}  # one seed would choose the rate seed 1 fails at
    assert finalist_rates(first, design)["reg2.sum"] == [1e-2, 3e-3]
    both = choose_learning_rates(scores, design)
    reg = both[both["config"] == "reg2.sum"].set_index("lr")
    assert reg.loc[1e-2, "criterion"] == pytest.approx((0.1 + 2.0) / 2) and reg.loc[3e-3, "chosen"]
    # a rate that one tuning seed did not run (or diverged at) is never chosen
    missing = scores[~((scores["lr"] == 3e-3) & (scores["seed"] == 1))]
    again = choose_learning_rates(missing, design)
    assert again[again["config"] == "reg2.sum"].set_index("lr").loc[3e-3, "seeds"] == 1
    assert set(again[again["chosen"]]["lr"]) == {1e-3}


def test_divergences_count_non_finite_losses_and_runs_worse_than_at_step_0() -> None:
    design = smoke_design()
    scores = _two_seed_scores(design)
    choice = choose_learning_rates(scores, design)
    runs = scores[["config", "lr", "seed"]].drop_duplicates().assign(status="ok")
    runs.loc[(runs["config"] == "reg4.mao") & (runs["lr"] == 1e-3) & (runs["seed"] == 0), "status"] = (
        "diverged: NaN loss"
    )
    outcomes = run_outcomes(scores, runs, choice, design)
    counts = divergence_counts(outcomes).set_index("config")
    # worse than at step 0: only (1e-2, seed 1), criterion 2.0 > 1.0, in every regression configuration
    assert counts.loc["reg2.sum"].to_dict() == {
        "runs": 6,
        "diverged": 1,
        "non_finite": 0,
        "worse": 1,
        "chosen_runs": 2,
        "chosen_diverged": 0,
    }
    assert counts.loc["reg4.mao", "non_finite"] == 1 and counts.loc["reg4.mao", "diverged"] == 2


def test_an_older_design_with_one_tuning_seed_still_loads() -> None:
    old = {k: v for k, v in smoke_design().as_dict().items() if k not in ("tuning_seeds", "finalists")} | {
        "tuning_seed": 0
    }
    design = StudyDesign.from_dict(old)
    assert design.tuning_seeds == (0,) and design.finalists is None and design.final_seeds == (1, 2)
    with pytest.raises(ValueError, match="tuning_seeds or the older tuning_seed"):
        StudyDesign.from_dict(old | {"tuning_seeds": [0]})
    with pytest.raises(ValueError, match="finalists must be None or an int in 1..3"):
        StudyDesign(finalists=4)


# -- the ledger folder: every interval recomputed from its per-seed tables ---------------------------------------


def _series(table: pd.DataFrame, config: str, value: str) -> pd.Series:
    rows = table[table["config"] == config]
    return pd.Series(rows[value].to_numpy(float), index=rows["seed"].to_numpy(int))


def _t(values: np.ndarray) -> tuple[float, float, float]:
    return float(values.mean()), *stats.t.interval(LEVEL, len(values) - 1, loc=values.mean(), scale=stats.sem(values))


def independent_intervals(folder: Path) -> dict[tuple[str, str], tuple[float, float, float]]:
    """Every part's interval of the ledger in ``folder``, from its per-seed tables with scipy alone."""
    dm, balance, final = (pd.read_csv(folder / f"{n}.csv") for n in ("delta_m", "balance_summary", "final_runs"))
    out: dict[tuple[str, str], tuple[float, float, float]] = {}

    def paired(table: pd.DataFrame, value: str, a: str, b: str) -> tuple[float, float, float]:
        left, right = _series(table, a, value), _series(table, b, value)
        seeds = sorted(set(left.index) & set(right.index))
        return _t((left.loc[seeds] - right.loc[seeds]).to_numpy())

    for setting in ("reg2", "reg4", "reg8", "mm4"):
        out[("M1", f"{setting}: MAO − sum, worst imbalance < 0")] = paired(
            balance, "worst_imbalance", f"{setting}.mao", f"{setting}.sum"
        )
        out[("M1", f"{setting}: MAO's worst imbalance < 0.1")] = _t(
            _series(balance, f"{setting}.mao", "worst_imbalance").to_numpy()
        )
    others = ["uw", "dwa", "gradnorm", "mgda", "pcgrad", "cagrad", "imtl_g", "mtadam"]
    for other in others:
        out[("M2", f"MAO − {other}")] = paired(dm, "delta_m", "mm4.mao", f"mm4.{other}")
    for method in ("ius", "io"):
        for other in ["sum", *others, "mao"]:
            out[("P1", f"{method} − {other}")] = paired(dm, "delta_m", f"mm4.{method}", f"mm4.{other}")
        gap = (
            (_series(dm, "mm_diff.sum", "delta_m") - _series(dm, f"mm_diff.{method}", "delta_m"))
            - (_series(dm, "mm_same.sum", "delta_m") - _series(dm, f"mm_same.{method}", "delta_m"))
        ).dropna()
        out[("P2", f"{method}: benefit over sum, different − same nature")] = _t(gap.to_numpy())
        for quantity in ("distance", "path_length"):
            out[("P3", f"{method} − sum, {quantity.replace('_', ' ')}")] = paired(
                final, quantity, f"mm4.{method}", "mm4.sum"
            )
    sizes = {"mm4.ius": 1, "mm4.grouping2": 2, "mm4.grouping3": 3, "mm4.sum": 4}
    slopes: dict[str, list[float]] = {"delta_m": [], "seconds_per_epoch": []}
    for seed in sorted(set(dm["seed"])):
        x = np.array(list(sizes.values()), float)
        for value, table in (("delta_m", dm), ("seconds_per_epoch", final)):
            y = np.array([_series(table, c, value).loc[seed] for c in sizes])
            slopes[value].append(float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()))
    out[("P4", "slope of Δm% against group size > 0")] = _t(np.array(slopes["delta_m"]))
    out[("P4", "slope of seconds per epoch against group size < 0")] = _t(np.array(slopes["seconds_per_epoch"]))
    return out


def check_every_interval(folder: Path) -> int:
    """Every part of ``folder``'s ledger.csv against :func:`independent_intervals`, and its verdict against its
    interval; returns the number of parts checked."""
    ledger = pd.read_csv(folder / "ledger.csv")
    parts = ledger[ledger["part"] != "(claim)"]
    expected = independent_intervals(folder)
    assert set(zip(parts["claim"], parts["part"])) == set(expected)
    for row in parts.itertuples():
        estimate, low, high = expected[(row.claim, row.part)]
        assert (row.estimate, row.low, row.high) == pytest.approx((estimate, low, high), rel=1e-5, abs=1e-9), row.part
        inside = low <= row.threshold <= high
        above = low > row.threshold
        assert row.verdict == (
            "inconclusive" if inside else "supported" if above == (row.direction == "greater") else "not supported"
        )
    return len(parts)


def check_m1_budgets(folder: Path) -> int:
    """Every interval of ``folder``'s m1_budgets.csv from its balance_budgets.csv with scipy alone (parts whose rate
    differs from the study's have none); returns the number of intervals checked."""
    table, m1 = pd.read_csv(folder / "balance_budgets.csv"), pd.read_csv(folder / "m1_budgets.csv")
    checked = 0
    for row in m1[m1["part"] != "(claim)"].itertuples():
        if not row.same_rate:
            assert row.seeds == 0 and row.verdict == "inconclusive"
            continue
        rows = table[table["budget"] == row.budget]
        mao = _series(rows, f"{row.setting}.mao", "worst_imbalance")
        if row.part == "MAO − sum < 0":
            total = _series(rows, f"{row.setting}.sum", "worst_imbalance")
            expected = _t((mao - total.loc[mao.index]).to_numpy())
        else:
            expected = _t(mao.to_numpy())
        assert (row.estimate, row.low, row.high) == pytest.approx(expected, rel=1e-5, abs=1e-9), row
        checked += 1
    return checked


@pytest.fixture(scope="module")
def ledger_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ledger folder with every per-seed table, from synthetic tables with planted effects (MAO better by 5 %)."""
    settings = {"seeds": (0, 1, 2, 3, 4), "lrs": (1e-4, 1e-3, 1e-2), "regression_steps": 10}  # the tables' last step
    design = StudyDesign(**{**smoke_design().as_dict(), **settings})
    scores, balance, runs = _synthetic_tables(design, "mao", +0.05)
    tables = recompute_tables(scores, balance, runs, design)
    ledger = claims_ledger(scores, balance, runs, design)
    folder = tmp_path_factory.mktemp("claims")
    write_ledger(
        folder,
        ledger,
        {"commit": "abc"},
        design,
        tables=tables,
        learning_rates=tables["learning_rates"],
        delta_m_intervals=pd.DataFrame(columns=["config", "setting", "variant", "estimate", "low", "high", "n"]),
    )
    return folder


def test_every_interval_of_a_ledger_folder_is_recomputed_from_its_tables_by_scipy(ledger_folder: Path) -> None:
    assert all((ledger_folder / f"{name}.csv").is_file() for name in RECOMPUTE_TABLES)
    assert check_every_interval(ledger_folder) == 8 + 8 + 20 + 2 + 4 + 2
    assert check_m1_budgets(ledger_folder) > 0


def test_the_committed_ledger_is_recomputable_or_says_what_needs_a_rerun() -> None:
    if (DOCS / "delta_m.csv").is_file():
        assert check_every_interval(DOCS) == 44
        assert check_m1_budgets(DOCS) > 0
        return
    # an older study: no per-seed tables; every verdict agrees with its own interval and the ledger says so
    parts = pd.read_csv(DOCS / "ledger.csv")
    parts = parts[parts["part"] != "(claim)"]
    for row in parts.itertuples():
        inside = row.low <= row.threshold <= row.high
        above = row.low > row.threshold
        assert row.verdict == (
            "inconclusive" if inside else "supported" if above == (row.direction == "greater") else "not supported"
        )
        assert row.low <= row.estimate <= row.high
    text = (DOCS / "ledger.md").read_text()
    assert "Sections that need a rerun of the study" in text and "family-wise" in text


def _copy(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to)
    return to


def test_ledger_only_recomputes_an_edited_ledger_and_reproduces_itself(ledger_folder: Path, tmp_path: Path) -> None:
    edited = _copy(ledger_folder, tmp_path / "edited")
    document = json.loads((edited / "ledger.json").read_text())
    part = next(r for r in document["ledger"] if r["part"] == "MAO − dwa")
    truth = dict(part)
    part.update({"estimate": 0.892, "low": 99.0, "high": 233.0, "verdict": "supported"})
    (edited / "ledger.json").write_text(json.dumps(document))
    out = tmp_path / "out"
    _, differences = ledger_only(edited, out)
    assert any("MAO − dwa" in d for d in differences)
    row = pd.read_csv(out / "ledger.csv").set_index("part").loc["MAO − dwa"]
    assert (row["estimate"], row["low"], row["high"]) == pytest.approx(
        (truth["estimate"], truth["low"], truth["high"]), rel=1e-5
    )
    assert row["verdict"] == truth["verdict"]
    assert check_every_interval(out) == 44
    again = tmp_path / "again"  # recomputing the recomputed folder gives it back byte for byte
    ledger_only(out, again)
    for name in (
        "ledger.csv",
        "ledger.md",
        "m1_sensitivity.csv",
        "divergences.csv",
        "m1_budgets.csv",
        *(f"{n}.csv" for n in RECOMPUTE_TABLES),
    ):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name


def test_ledger_only_refuses_tables_that_disagree_and_creates_nothing(ledger_folder: Path, tmp_path: Path) -> None:
    broken = _copy(ledger_folder, tmp_path / "broken")
    dm = pd.read_csv(broken / "delta_m.csv")
    dm.loc[0, "delta_m"] += 5.0
    dm.to_csv(broken / "delta_m.csv", index=False)
    before = {p.name: p.read_bytes() for p in broken.iterdir() if p.is_file()}
    with pytest.raises(LedgerInputError, match="delta_m.csv disagrees"):
        ledger_only(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert {p.name: p.read_bytes() for p in broken.iterdir() if p.is_file()} == before


def test_an_older_ledger_folder_is_verified_from_its_intervals_and_lists_what_needs_a_rerun(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    source = DOCS / "previous" if (DOCS / "previous" / "ledger.json").is_file() else DOCS
    shutil.copy(source / "ledger.json", old / "ledger.json")
    ledger_only(old, tmp_path / "out")
    text = (tmp_path / "out" / "ledger.md").read_text()
    assert "Sections that need a rerun of the study" in text and "m1_sensitivity.csv" in text
    # a part whose estimate lies outside its own interval is refused, naming it
    document = json.loads((old / "ledger.json").read_text())
    part = next(r for r in document["ledger"] if r["part"] != "(claim)")
    part.update({"estimate": 0.892, "low": 99.0, "high": 233.0})
    (old / "ledger.json").write_text(json.dumps(document))
    with pytest.raises(LedgerInputError, match="outside its interval"):
        ledger_only(old, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_ledger_only_on_a_missing_folder_says_so_in_one_line_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def exit_code(argv: list[str]) -> int | str | None:
        try:  # the command line's own check exits from the parser; the ledger's returns 2
            return main(argv)
        except SystemExit as stop:
            return stop.code

    out = tmp_path / "out"
    assert exit_code(["--ledger-only", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "no such folder" in error and "nowhere" in error
    assert not out.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert exit_code(["--ledger-only", str(empty), "--out", str(out)]) == 2
    assert "neither a finished study" in capsys.readouterr().err and not out.exists()
