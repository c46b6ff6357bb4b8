"""05_claims from a fresh clone: the figures and the explorer drawn from the committed docs/claims tables."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from mao_lab.study import CLAIMS
from mao_lab.study.committed import (
    CLAIM_UNITS,
    SETTINGS,
    CommittedExplorer,
    balance_summary_figure,
    chosen_rate_figure,
    grouping_figure,
    load_committed,
    readable_claim_figure,
    settings_markdown,
    validation_levels_figure,
    verdict_label,
)

CLAIMS_DIR = Path(__file__).resolve().parents[1] / "docs" / "claims"


def rows(name: str) -> list[dict[str, str]]:
    with (CLAIMS_DIR / f"{name}.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def committed() -> dict:
    return load_committed(CLAIMS_DIR)


def test_the_committed_folder_holds_every_table_05_reads(committed: dict) -> None:
    for name in ("methods", "validation", "levelling", "budgets"):
        assert committed[name] is not None and len(committed[name]) == len(rows(name)), name
    assert set(committed["ledger"]["claim"]) == set(CLAIMS)


def test_a_folder_without_the_tables_gives_none_and_no_ledger_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "ledger.json").write_text((CLAIMS_DIR / "ledger.json").read_text())
    assert load_committed(tmp_path)["methods"] is None
    with pytest.raises(FileNotFoundError, match="no ledger at"):
        load_committed(tmp_path / "missing")


@pytest.mark.parametrize("claim", list(CLAIMS))
def test_each_claim_figure_names_its_unit_labels_its_thresholds_and_shapes_its_verdicts(
    committed: dict, claim: str
) -> None:
    figure = readable_claim_figure(committed["ledger"], claim)
    parts = [r for r in rows("ledger") if r["claim"] == claim and r["part"] != "(claim)"]
    assert figure.layout.xaxis.title.text == CLAIM_UNITS[claim]
    thresholds = {float(r["threshold"]) for r in parts}
    labels = [a for a in figure.layout.annotations if a.text.strip().startswith("dashed: threshold")]
    assert sorted(a.x for a in labels) == sorted(thresholds)
    symbols = {"✓ supported": "circle", "✗ not supported": "x", "? inconclusive": "diamond-open"}
    for trace in figure.data:
        assert trace.marker.symbol == symbols[trace.name]  # told apart without colour
    shown = sorted(len(trace.y) for trace in figure.data)
    counts = {}
    for r in parts:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    assert shown == sorted(counts.values())
    verdict = next(r["verdict"] for r in rows("ledger") if r["claim"] == claim and r["part"] == "(claim)")
    assert verdict_label(verdict) in figure.layout.title.text


def test_m1_per_setting_shows_mao_and_the_sum_as_the_ledger_implies(committed: dict) -> None:
    figure = balance_summary_figure(committed["ledger"])
    m1 = {r["part"]: float(r["estimate"]) for r in rows("ledger") if r["claim"] == "M1" and r["part"] != "(claim)"}
    mao, total = figure.data
    for setting, value in zip(mao.x, mao.y):
        assert value == pytest.approx(m1[f"{setting}: MAO's worst imbalance < 0.1"], rel=1e-5)  # the CSV: 6 digits
    for setting, value in zip(total.x, total.y):  # paired mean difference = difference of the means
        expected = m1[f"{setting}: MAO's worst imbalance < 0.1"] - m1[f"{setting}: MAO − sum, worst imbalance < 0"]
        assert value == pytest.approx(expected, rel=1e-4)


def test_p4_draws_delta_m_against_group_size_from_methods_csv(committed: dict) -> None:
    figure = grouping_figure(committed["methods"], committed["design"])
    by_variant = {r["variant"]: float(r["estimate"]) for r in rows("methods") if r["setting"] == "mm4"}
    expected = [by_variant["ius"], by_variant["grouping2"], by_variant["grouping3"], by_variant["sum"]]
    assert list(figure.data[0].x) == [1, 2, 3, 4]
    assert list(figure.data[0].y) == pytest.approx(expected)


def test_chosen_rates_and_validation_levels_come_from_the_tables(committed: dict) -> None:
    figure = chosen_rate_figure(committed["methods"], committed["design"])
    chosen = {r["config"]: float(r["chosen_lr"]) for r in rows("methods")}
    drawn = {x: y for trace in figure.data for x, y in zip(trace.x, trace.y)}
    assert drawn == pytest.approx(chosen)
    curve = validation_levels_figure(committed["validation"], ["mm4.mao"]).data[0]
    mine = sorted((int(r["step"]), float(r["criterion"])) for r in rows("validation") if r["config"] == "mm4.mao")
    assert list(curve.x) == [step for step, _ in mine] and list(curve.y) == pytest.approx([c for _, c in mine])


def test_the_committed_explorer_follows_its_controls(committed: dict) -> None:
    explorer = CommittedExplorer(committed)
    claim, curve, setting = (explorer.figures[k].to_json() for k in ("claim", "curve", "setting"))
    explorer.claim.value = "P3"
    assert explorer.figures["claim"].to_json() != claim and explorer.static_figure() is explorer.figures["claim"]
    explorer.config.value = "reg4.mao"
    assert explorer.figures["curve"].to_json() != curve
    assert [t.name for t in explorer.figures["curve"].data] == ["reg4.mao", "reg4.sum"]
    explorer.setting.value = "mm_diff"
    assert explorer.figures["setting"].to_json() != setting


def test_every_setting_of_the_ledger_is_defined() -> None:
    named = {r["part"].split(":", 1)[0] for r in rows("ledger") if r["claim"] == "M1" and ":" in r["part"]}
    named |= {r["setting"] for r in rows("methods")}
    assert named <= set(SETTINGS)
    assert all(f"`{name}`" in settings_markdown() for name in named)
