"""The study's intervals against scipy.stats, and its verdict rules on synthetic results with planted effects."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mao_lab.study import (
    LEVELLING_STATUSES,
    combine_verdicts,
    levelling_off,
    mean_interval,
    paired_interval,
    validation_levels,
    verdict,
)
from mao_lab.study._analysis import claims_ledger
from mao_lab.study._design import MM4_TASKS, StudyDesign, smoke_design


@pytest.mark.parametrize("n", [2, 3, 5, 12])
@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_mean_interval_is_scipys_t_interval(n: int, level: float) -> None:
    values = np.random.default_rng(n).normal(3.0, 2.0, size=n)
    low, high = stats.t.interval(level, n - 1, loc=values.mean(), scale=stats.sem(values))
    interval = mean_interval(values, level)
    assert interval.n == n
    assert interval.estimate == pytest.approx(values.mean())
    assert (interval.low, interval.high) == pytest.approx((low, high), rel=1e-10)


def test_paired_interval_is_scipys_related_samples_interval_on_the_common_seeds() -> None:
    rng = np.random.default_rng(0)
    a = {seed: float(v) for seed, v in enumerate(rng.normal(size=6))}
    b = {seed: float(v) for seed, v in enumerate(rng.normal(size=7)) if seed != 2}  # seed 2 only in a, 6 only in b
    seeds = [0, 1, 3, 4, 5]
    reference = stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).confidence_interval(0.95)
    interval = paired_interval(a, b)
    assert interval.n == 5
    assert (interval.low, interval.high) == pytest.approx((reference.low, reference.high), rel=1e-10)


def test_one_seed_gives_no_interval_and_no_verdict() -> None:
    interval = mean_interval([4.0])
    assert math.isnan(interval.low) and math.isnan(interval.high)
    assert verdict(interval, "greater") == "inconclusive"


def test_bad_input_is_refused_with_a_message() -> None:
    with pytest.raises(ValueError, match="finite"):
        mean_interval([1.0, float("nan")])
    with pytest.raises(ValueError, match="no seed in common"):
        paired_interval({0: 1.0}, {1: 2.0})
    with pytest.raises(ValueError, match="direction"):
        verdict(mean_interval([1.0, 2.0]), "lower")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="level"):
        mean_interval([1.0, 2.0], level=95)


def _planted(effect: float, seed: int = 0, n: int = 8) -> tuple[dict[int, float], dict[int, float]]:
    """Two methods over n seeds: a seed-level shared noise (large) and a method difference of ``effect``."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(0.0, 5.0, size=n)
    a = {s: float(shared[s] + effect + rng.normal(0.0, 0.3)) for s in range(n)}
    b = {s: float(shared[s] + rng.normal(0.0, 0.3)) for s in range(n)}
    return a, b


@pytest.mark.parametrize("seed", range(5))
def test_a_planted_effect_is_supported_its_opposite_not_and_no_effect_is_inconclusive(seed: int) -> None:
    better, base = _planted(-2.0, seed)  # lower is better: a beats b by 2 at every seed, under shared noise of sd 5
    assert verdict(paired_interval(better, base), "less") == "supported"
    worse, base = _planted(+2.0, seed)
    assert verdict(paired_interval(worse, base), "less") == "not supported"
    base = _planted(0.0, seed)[1]
    jitter = np.random.default_rng(seed).normal(0.0, 0.3, size=4)
    differences = np.concatenate([jitter, -jitter])  # no effect: the differences average exactly 0
    same = {s: base[s] + float(d) for s, d in zip(base, differences)}
    assert verdict(paired_interval(same, base), "less") == "inconclusive"
    assert verdict(paired_interval(same, base), "greater") == "inconclusive"


def test_pairing_is_what_finds_the_effect_under_seed_noise() -> None:
    better, base = _planted(-2.0, 0)
    unpaired = stats.ttest_ind(list(better.values()), list(base.values())).confidence_interval(0.95)
    assert unpaired.low < 0 < unpaired.high  # lost in the seed-to-seed spread without pairing
    assert paired_interval(better, base).high < 0


def test_no_effect_is_rarely_called_either_way() -> None:
    """Under no effect a 95 % interval excludes 0 about 5 % of the time (binomial bound, 400 trials)."""
    calls = [verdict(paired_interval(*_planted(0.0, seed)), "less") for seed in range(400)]
    wrong = sum(c != "inconclusive" for c in calls)
    assert wrong <= stats.binom.ppf(0.999, 400, 0.05)


def test_a_claim_is_the_conjunction_of_its_parts() -> None:
    assert combine_verdicts(["supported"] * 4) == "supported"
    assert combine_verdicts(["supported", "supported", "inconclusive"]) == "inconclusive"
    assert combine_verdicts(["supported", "not supported", "inconclusive"]) == "not supported"
    with pytest.raises(ValueError, match="unknown verdicts"):
        combine_verdicts(["yes"])  # type: ignore[list-item]


# -- the whole ledger on synthetic tables with planted effects -------------------------------------------


def _synthetic_tables(design: StudyDesign, good: str, effect: float) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Scores, balance and runs as the study would record them, with ``good`` better than every other method by
    ``effect`` relative error on every task (positive effect: better), plus seed-level noise shared by all methods."""
    rng = np.random.default_rng(1)
    scores, balance, runs = [], [], []
    higher = {"left": True, "right": True, "sum": False, "reconstruct": False}
    base = {"left": 0.9, "right": 0.9, "sum": 1.0, "reconstruct": 0.05}
    seed_noise = {s: rng.normal(0.0, 0.05) for s in design.seeds}
    for config in design.configs():
        for lr in design.lrs:
            for seed in design.seeds:
                lr_penalty = 0.0 if lr == design.lrs[1] else 0.1
                for split in ("val", "test"):
                    for task in config.tasks:
                        if config.problem == "regression":
                            value, up = 0.1 * (1 + lr_penalty), False
                        else:
                            quality = (
                                (0.0 if config.single_task else -0.1)
                                - lr_penalty
                                + seed_noise[seed]
                                + rng.normal(0, 0.002)
                            )
                            if config.variant == good:
                                quality += effect
                            value, up = base[task] * (1 + quality if higher[task] else 1 - quality), higher[task]
                        scores.append(
                            {
                                "config": config.name,
                                "lr": lr,
                                "seed": seed,
                                "split": split,
                                "step": 10,
                                "task": task,
                                "metric": "m",
                                "value": value,
                                "higher_is_better": up,
                            }
                        )
                if not config.single_task:
                    worst = 0.02 if config.variant == "mao" else 0.5
                    for step in (0, 5):
                        balance.append(
                            {
                                "config": config.name,
                                "lr": lr,
                                "seed": seed,
                                "step": step,
                                "layer": "trunk.0.weight",
                                "imbalance": worst + rng.normal(0, 0.001),
                                "largest_share": 0.5,
                                "largest_task": config.tasks[0],
                            }
                        )
                runs.append(
                    {
                        "config": config.name,
                        "setting": config.setting,
                        "variant": config.variant,
                        "lr": lr,
                        "seed": seed,
                        "steps": 10,
                        "epochs": 1.0,
                        "seconds": 1.0,
                        "status": "ok",
                        "seconds_per_epoch": {"ius": 4.0, "grouping2": 2.0, "grouping3": 2.0}.get(config.variant, 1.0)
                        + rng.normal(0, 0.01),
                        "distance": (2.0 if config.variant in ("ius", "io") else 1.0) + rng.normal(0, 0.01),
                        "path_length": (20.0 if config.variant in ("ius", "io") else 10.0) + rng.normal(0, 0.01),
                    }
                )
    return pd.DataFrame(scores), pd.DataFrame(balance), pd.DataFrame(runs)


def _verdicts(ledger: pd.DataFrame) -> dict[str, str]:
    claims = ledger[ledger["part"] == "(claim)"]
    return dict(zip(claims["claim"], claims["verdict"]))


def test_the_ledger_finds_a_planted_mao_advantage_and_a_planted_disadvantage() -> None:
    design = StudyDesign(**{**smoke_design().as_dict(), "seeds": (0, 1, 2, 3, 4), "lrs": (1e-4, 1e-3, 1e-2)})
    ledger = claims_ledger(*_synthetic_tables(design, "mao", +0.05), design)
    verdicts = _verdicts(ledger)
    assert verdicts["M2"] == "supported"
    assert verdicts["M1"] == "supported"  # MAO's planted imbalance 0.02 < 0.1 and below the sum's 0.5
    assert verdicts["P1"] == "not supported"  # IUS and IO lose to MAO
    assert verdicts["P3"] == "supported"  # planted: independent steps move further
    assert (ledger[ledger["claim"] != "M1"]["seeds"].dropna() == 5).all()
    ledger = claims_ledger(*_synthetic_tables(design, "mao", -0.05), design)
    assert _verdicts(ledger)["M2"] == "not supported"


def test_the_ledger_calls_no_effect_inconclusive_and_chooses_rates_on_validation() -> None:
    design = StudyDesign(**{**smoke_design().as_dict(), "seeds": (0, 1, 2, 3, 4), "lrs": (1e-4, 1e-3, 1e-2)})
    scores, balance, runs = _synthetic_tables(design, "nobody", 0.0)
    ledger = claims_ledger(scores, balance, runs, design)
    m2 = ledger[(ledger["claim"] == "M2") & (ledger["part"] != "(claim)")]
    assert set(m2["verdict"]) == {"inconclusive"}
    from mao_lab.study import choose_learning_rates

    choice = choose_learning_rates(scores, design)
    assert set(choice[choice["chosen"]]["lr"]) == {1e-3}  # the planted best rate of every configuration
    # A rate that is best on the test split only is never chosen: only the validation rows count.
    rigged = scores.copy()
    test_rows = (rigged["split"] == "test") & (rigged["lr"] == 1e-2)
    rigged.loc[test_rows, "value"] = np.where(rigged.loc[test_rows, "higher_is_better"], 1.0, 0.0)
    choice = choose_learning_rates(rigged, design)
    assert set(choice[choice["chosen"]]["lr"]) == {1e-3}
    assert set(MM4_TASKS) <= set(scores["task"])


def _curves(
    final_change: np.ndarray, *, steps: tuple[int, ...] = (0, 50, 100, 150, 200), config: str = "mm4.x"
) -> pd.DataFrame:
    """Per-seed validation curves whose value at the last step differs from the value at 150 by ``final_change``."""
    rows = []
    for seed, change in enumerate(final_change):
        for step in steps:
            value = 100.0 - 0.1 * step + seed  # seeds differ by an offset, which pairing removes
            if step == steps[-1]:
                value = (100.0 - 0.1 * 150 + seed) + change
            rows.append({"config": config, "seed": seed, "step": step, "criterion": value})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("shift, expected", [(-2.0, "still improving"), (0.0, "levelled off"), (2.0, "getting worse")])
def test_levelling_off_reads_a_planted_last_quarter(shift: float, expected: str) -> None:
    noise = np.random.default_rng(4).normal(0.0, 0.5, size=6)
    change = shift + noise - noise.mean()  # the planted mean change exactly; seed noise around it
    table = levelling_off(_curves(change))
    row = table.iloc[0]
    assert (row["from_step"], row["to_step"]) == (150, 200)  # the last evaluation at or before 0.75 * 200
    low, high = stats.t.interval(0.95, len(change) - 1, loc=change.mean(), scale=stats.sem(change))
    assert (row["change"], row["low"], row["high"]) == pytest.approx((change.mean(), low, high))
    assert row["status"] == expected and row["status"] in LEVELLING_STATUSES


def test_levelling_off_needs_two_seeds_and_two_evaluations() -> None:
    assert levelling_off(_curves(np.array([-5.0]))).iloc[0]["status"] == "unknown"
    single_step = _curves(np.array([-1.0, -2.0]), steps=(200,))
    assert levelling_off(single_step).empty  # nothing to compare
    with pytest.raises(ValueError, match="fraction must lie strictly between 0 and 1"):
        levelling_off(_curves(np.array([-1.0, -2.0])), fraction=1.0)


def test_validation_levels_is_the_mean_over_seeds() -> None:
    curves = _curves(np.array([-1.0, -3.0, 1.0]))
    levels = validation_levels(curves).set_index("step")
    by_hand = curves.pivot_table(index="step", columns="seed", values="criterion").mean(axis=1)
    np.testing.assert_allclose(levels["criterion"].to_numpy(), by_hand.loc[levels.index].to_numpy())
    assert (levels["seeds"] == 3).all()


def test_the_ledger_page_says_which_phases_a_resumed_study_did_earlier_and_how_to_regenerate_it() -> None:
    from mao_lab.study import ledger_markdown
    from mao_lab.study._analysis import LEDGER_COLUMNS

    empty = pd.DataFrame(columns=LEDGER_COLUMNS)
    phases = {
        "tuning": {"points": 30, "finished_before": 30, "wall_seconds": 6.0},
        "final": {"points": 30, "finished_before": 2, "wall_seconds": 594.0},
    }
    text = ledger_markdown(empty, {"wall_seconds": 600.0, "phases": phases}, smoke_design())
    assert (
        "wall time 10 min in the invocation that finished the study, which resumed points finished earlier "
        "(tuning 30 of 30 points, final 2 of 30 points); their time is not counted (tuning 0.1 min, final 9.9 min)"
        in text
    )
    fresh = {name: {**p, "finished_before": 0} for name, p in phases.items()}
    assert "resumed" not in ledger_markdown(empty, {"wall_seconds": 600.0, "phases": fresh}, smoke_design())
    assert 'Regenerate: `make study STUDY=runs/study-smoke STUDY_FLAGS="--smoke"`' in text
