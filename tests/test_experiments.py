"""The claims notebooks 01, 02 and 04 make, asserted on the library functions they call.

Sizes are small so that the file runs in well under a minute on two cores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mao_lab.experiments import (
    PAPERS_SETTING,
    HeatmapExplorer,
    LandscapePlayground,
    RegressionPlayground,
    arc_distance,
    balance_summary,
    compare_methods,
    conflict_band,
    distance_figure,
    final_losses,
    find_run_dirs,
    imbalance_by_layer_figure,
    imbalance_over_steps,
    imbalance_over_steps_figure,
    is_run_dir,
    landscape_gradients,
    landscape_trajectories,
    layer_ownership,
    load_balance_runs,
    loss_space_figure,
    magnitude_figure,
    ownership_figure,
    papers_comparison,
    parameter_space_figure,
    pareto_stationary_arc,
    pareto_table,
    reach_matrix,
    reached_counts,
    rescaling_figure,
    rescaling_gap,
    train_with_recorder,
)
from mao_lab.problems import LANDSCAPE_STARTS, PARETO_X2, ImbalancedRegression
from mao_lab.recorder import by_module

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: one torch thread for these tiny problems


# -- 01 · the landscape ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["mean", "mao", "io"])
def test_batched_starts_are_exactly_independent_runs(method: str) -> None:
    batched = landscape_trajectories([method], steps=12, lr=0.1, record_every=6, progress=False, eps=1e-16)
    alone = landscape_trajectories(
        [method], steps=12, lr=0.1, record_every=6, progress=False, eps=1e-16, batch_starts=False
    )
    assert len(batched) == len(alone) == 5 * 3
    np.testing.assert_allclose(batched[["x1", "x2", "L1", "L2"]], alone[["x1", "x2", "L1", "L2"]], rtol=0, atol=1e-12)


def test_coupled_methods_are_not_batched_and_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="batch_starts=True is exact only for"):
        landscape_trajectories(["mgda"], steps=1, batch_starts=True, progress=False)
    with pytest.raises(ValueError, match="unknown method"):
        landscape_trajectories(["adamm"], steps=1, progress=False)
    frame = landscape_trajectories(
        ["mgda", "mao"], starts=LANDSCAPE_STARTS[:2], steps=4, record_every=2, progress=False
    )
    assert frame["method"].drop_duplicates().tolist() == ["mgda", "mao"]
    assert frame.groupby("method", sort=False)["start"].unique().map(list).tolist() == [[0, 1], [0, 1]]


def test_the_exact_pareto_arc_has_anti_parallel_gradients_and_bows_below_the_segment() -> None:
    arc = pareto_stationary_arc(29)
    assert abs(arc.loc[arc["x1"].abs().idxmin(), "x2"] - PARETO_X2) < 2e-4
    assert arc["x2"].min() == pytest.approx(-8.4345, abs=1e-3)
    g1, g2 = landscape_gradients(arc[["x1", "x2"]].to_numpy()[1:-1])  # the ends: one gradient has no x1 part
    cosine = (g1 * g2).sum(-1) / np.linalg.norm(g1, axis=-1) / np.linalg.norm(g2, axis=-1)
    assert np.all(cosine < -0.99999)
    # Rescaling a loss does not move the Pareto-stationary set.
    h1, h2 = landscape_gradients(arc[["x1", "x2"]].to_numpy()[1:-1], l1_scale=0.1)
    np.testing.assert_allclose(h1, 0.1 * g1, rtol=1e-12, atol=1e-15)
    assert float(arc_distance([0.0, PARETO_X2])) < 2e-4


@pytest.fixture(scope="module")
def landscape_runs() -> pd.DataFrame:
    """Near the notebook's default budget (lr 0.1, 2000 steps), for the methods whose claims are tested."""
    return landscape_trajectories(["mean", "mao"], steps=1500, lr=0.1, eps=1e-16, record_every=100, progress=False)


def test_adam_on_the_mean_reaches_the_middle_of_the_pareto_set_from_every_start(landscape_runs: pd.DataFrame) -> None:
    table = pareto_table(landscape_runs[landscape_runs["method"] == "mean"])
    assert table["reached"].all()
    assert np.abs(table["x1"]).max() < 0.05  # the minimiser of the mean loss, whatever the start


def test_mao_spreads_along_the_pareto_set_and_stalls_in_the_conflict_band(landscape_runs: pd.DataFrame) -> None:
    table = pareto_table(landscape_runs[landscape_runs["method"] == "mao"])
    assert table["x1"].max() > 5 and table["x1"].min() < -5  # ends near both bowls, not all in the middle
    assert table.loc[table["start"] == 1, "reached"].item()  # from (0, 0) it lands on the set exactly
    unreached = table[~table["reached"]]
    assert len(unreached) >= 2
    assert unreached["conflict_band"].all()  # where per-task sign steps cancel
    assert (np.minimum(unreached["distance"], unreached["arc_distance"]) < 0.4).all()
    assert (unreached["cosine"] < -0.98).all()
    # The stall is real: over the last half of the run the distance no longer shrinks by much.
    late = landscape_runs[(landscape_runs["method"] == "mao") & (landscape_runs["step"] >= 750)]
    points = late[["x1", "x2"]].to_numpy(copy=True)
    distance = late.assign(d=arc_distance(points)).pivot(index="step", columns="start", values="d")
    assert (distance.iloc[0] - distance.iloc[-1])[unreached["start"]].max() < 0.1


def test_conflict_band_is_where_both_coordinates_disagree() -> None:
    assert conflict_band([[-6.6, -8.2]]).tolist() == [True]
    assert conflict_band([[0.0, -7.0], [-6.6, -7.5], [9.0, 9.0]]).tolist() == [False, False, False]


def test_mao_ignores_the_scale_of_l1_and_adam_on_the_mean_does_not() -> None:
    trajectories, gaps = rescaling_gap(["mao", "mean"], steps=250, lr=0.1, eps=1e-16, record_every=10, progress=False)
    gap = gaps.set_index("method")
    assert gap.loc["mao", "max_gap"] < 1e-5
    assert gap.loc["mean", "max_gap"] > 1.0
    # Adam on the mean lands towards task 2's bowl when L1 is shrunk; MAO lands where it did.
    assert gap.loc["mean", "final_x1_mean_scale_0.1"] < gap.loc["mean", "final_x1_mean_scale_1"] - 1.0
    assert sorted(trajectories["l1_scale"].unique()) == [0.1, 1.0]


def test_mao_scale_invariance_needs_an_eps_far_below_the_plateau_gradients() -> None:
    _, tiny = rescaling_gap(["mao"], steps=150, lr=0.1, eps=1e-16, record_every=150, progress=False)
    _, default = rescaling_gap(["mao"], steps=150, lr=0.1, eps=1e-8, record_every=150, progress=False)
    assert tiny["max_gap"].item() < 1e-9
    assert default["max_gap"].item() > 1e3 * tiny["max_gap"].item()


def test_pareto_tables_and_figures() -> None:
    frame = landscape_trajectories(["mean", "mao"], steps=20, record_every=10, progress=False)
    table = pareto_table(frame, tol=100.0)
    assert table["reached"].all() and len(table) == 10
    assert set(table.columns) >= {"x1_start", "x2_start", "distance", "arc_distance", "cosine", "conflict_band"}
    matrix = reach_matrix(table)
    assert matrix["method"].tolist() == ["mean", "mao"] and matrix["reached"].tolist() == ["5 of 5", "5 of 5"]
    assert list(matrix.columns[1:6]) == ["(-8.5, 7.5)", "(0, 0)", "(9, 9)", "(-7.5, -0.5)", "(9, -1)"]
    for figure in (parameter_space_figure(frame), loss_space_figure(frame), distance_figure(frame, 0.1)):
        assert figure.layout.title.text and len(figure.data) >= 10
    both = pd.concat([frame, frame.assign(l1_scale=0.1)])
    assert len(rescaling_figure(both).data) == 2 * (1 + 2 * 5)


def plain_landscape_losses(x: torch.Tensor, l1_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The landscape's two losses written out again from docs/references.md §4.1 (any dtype, batched)."""
    x1, x2, floor = x[..., 0], x[..., 1], 5e-6
    f1_steep = torch.log(torch.clamp(torch.abs(0.5 * (-x1 - 7) - torch.tanh(-x2)), min=floor)) + 6
    f2_steep = torch.log(torch.clamp(torch.abs(0.5 * (-x1 + 3) + torch.tanh(-x2) + 2), min=floor)) + 6
    f1_bowl = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    f2_bowl = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    upper, lower = torch.clamp(torch.tanh(x2 / 2), min=0), torch.clamp(torch.tanh(-x2 / 2), min=0)
    return l1_scale * (upper * f1_steep + lower * f1_bowl), upper * f2_steep + lower * f2_bowl


def adam_on_the_sum(dtype: torch.dtype, l1_scale: float, steps: int) -> np.ndarray:
    """The papers' LS baseline as their code runs it: torch.optim.Adam (lr 1e-3) on the five points."""
    x = torch.tensor(LANDSCAPE_STARTS, dtype=dtype, requires_grad=True)
    adam = torch.optim.Adam([x], lr=1e-3, eps=1e-8)
    for _ in range(steps):
        adam.zero_grad()
        loss1, loss2 = plain_landscape_losses(x, l1_scale)
        (loss1 + loss2).sum().backward()
        adam.step()
    return x.detach().double().numpy()


def test_the_papers_setting_runs_in_float32_on_l1_times_0_1() -> None:
    steps = 300
    papers = landscape_trajectories(["sum"], record_every=steps, progress=False, **{**PAPERS_SETTING, "steps": steps})
    lab = landscape_trajectories(
        ["sum"], record_every=steps, progress=False, lr=1e-3, eps=1e-8, l1_scale=0.1, steps=steps
    )
    final = papers[papers["step"] == steps][["x1", "x2"]].to_numpy()
    # Every recorded coordinate is a float32 number; the float64 run's are not.
    assert np.array_equal(final.astype(np.float32).astype(np.float64), final)
    lab_final = lab[lab["step"] == steps][["x1", "x2"]].to_numpy()
    assert not np.array_equal(lab_final.astype(np.float32).astype(np.float64), lab_final)
    # It is Adam on 0.1 L1 + L2 in float32, as a loop written here runs it, and not on L1 + L2.
    np.testing.assert_allclose(final, adam_on_the_sum(torch.float32, 0.1, steps), rtol=0, atol=1e-5)
    assert np.abs(final - adam_on_the_sum(torch.float32, 1.0, steps)).max() > 1e-2
    assert (papers["l1_scale"] == 0.1).all()
    with pytest.raises(ValueError, match="dtype"):
        landscape_trajectories(["sum"], steps=1, progress=False, dtype=torch.float16)


def brute_force_front(l1_scale: float) -> np.ndarray:
    """The Pareto front in loss space without the lab's arc: the non-dominated (l1_scale L1, L2) pairs of
    a 0.005-spaced grid around the Pareto set, in float64."""
    x1, x2 = np.meshgrid(np.arange(-7.5, 7.5, 0.005), np.arange(-8.7, -8.0, 0.005))
    loss1, loss2 = plain_landscape_losses(torch.from_numpy(np.stack([x1.ravel(), x2.ravel()], axis=-1)), l1_scale)
    order = np.argsort(loss1.numpy(), kind="stable")
    pairs = np.stack([loss1.numpy()[order], loss2.numpy()[order]], axis=1)
    keep = pairs[:, 1] < np.minimum.accumulate(np.r_[np.inf, pairs[:-1, 1]])  # below everything cheaper in L1
    return pairs[keep]


def test_reaching_in_loss_space_is_read_from_each_runs_last_point() -> None:
    """Both readings of "reached", checked on hand-made trajectories against computations written here: the
    distance to the papers' segment in parameter space, and a brute-force Pareto front in loss space."""
    finals = {
        (0.0, 0.0): (0.0, -8.3552),  # on the set
        (-8.5, 7.5): (-5.714, -5.451),  # 2.9 above the set, on the front in loss space
        (9.0, 9.0): (5.0, 3.98),  # up in a valley: far in both
        (-7.5, -0.5): (-8.0, -8.3552),  # beyond the set's end: near the front only with L1 x 0.1
        (9.0, -1.0): (3.0, -8.3),  # 0.06 above the segment
    }
    rows = []
    for start, (begin, end) in enumerate(finals.items()):
        rows += [
            {"method": "sum", "start": start, "step": 0, "x1": begin[0], "x2": begin[1]},
            {"method": "sum", "start": start, "step": 50, "x1": 0.0, "x2": -8.3552},  # passes the set
            {"method": "sum", "start": start, "step": 100, "x1": end[0], "x2": end[1]},
        ]
    ends = np.array(list(finals.values()))
    segment = np.hypot(ends[:, 0] - np.clip(ends[:, 0], -7, 7), ends[:, 1] + 8.3552)
    assert ((segment <= 0.1) | (segment > 0.2)).all()  # no end point where the arc could change the answer
    # The papers' reading: the run that ends 2.9 above the set is on the front in loss space at both scales;
    # the one beyond the set's end only with L1 x 0.1, which shrinks its excess of L1 tenfold.
    expected_in_loss_space = {0.1: [True, True, False, True, True], 1.0: [True, True, False, False, True]}
    for scale, expected in expected_in_loss_space.items():
        frame = pd.DataFrame(rows).assign(L1=0.0, L2=0.0, l1_scale=scale)
        table = pareto_table(frame, tol=0.1, loss_tol=0.5)
        front = brute_force_front(scale)
        loss1, loss2 = plain_landscape_losses(torch.from_numpy(ends), scale)
        in_loss_space = np.hypot(loss1.numpy()[:, None] - front[:, 0], loss2.numpy()[:, None] - front[:, 1]).min(1)
        np.testing.assert_allclose(table["loss_distance"], in_loss_space, atol=0.02)
        assert table["reached"].tolist() == (segment <= 0.1).tolist() == [True, False, False, False, True]
        assert table["reached_in_loss_space"].tolist() == (in_loss_space <= 0.5).tolist() == expected
        counts = reached_counts(table).iloc[0]
        assert (counts["reached"], counts["reached_in_loss_space"], counts["starts"]) == (2, sum(expected), 5)
        assert reach_matrix(table, space="loss")["reached"].tolist() == [f"{sum(expected)} of 5"]


def test_papers_comparison_runs_each_setting_and_reports_both_readings() -> None:
    trajectories, table = papers_comparison(["sum"], steps=20, record_every=10, progress=False)
    settings = list(pd.unique(table["setting"]))
    assert len(settings) == 3 and len(table) == 15
    assert table.groupby("setting", sort=False)["dtype"].first().tolist() == ["float32", "float64", "float64"]
    assert table.groupby("setting", sort=False)["l1_scale"].first().tolist() == [0.1, 0.1, 1.0]
    assert trajectories.groupby("setting", sort=False)["l1_scale"].first().tolist() == [0.1, 0.1, 1.0]
    assert {"reached", "reached_in_loss_space", "loss_distance"} <= set(table.columns)
    assert reached_counts(table)["setting"].tolist() == settings


def test_landscape_playground_runs_without_a_front_end() -> None:
    frame = landscape_trajectories(["mean"], steps=10, record_every=5, progress=False)
    playground = LandscapePlayground(["mean"], steps=50, trajectories=frame)
    assert playground.parameter_view.outputs and playground.table_view.outputs
    playground.methods.value = ("mao",)
    playground.scale.value = "free"
    playground.free_scale.value = 0.5
    playground.steps.value = 50
    result = playground.run()
    assert result["method"].unique().tolist() == ["mao"] and result["l1_scale"].unique().tolist() == [0.5]
    assert playground.status.value.startswith("done")
    assert "0.5" in playground.static_figure().layout.title.text


def test_typing_a_free_scale_uses_it_and_changed_settings_say_the_figures_are_old() -> None:
    # Found by the browser test: with the "0.1" preset chosen, a typed scale changed nothing on Run.
    frame = landscape_trajectories(["mean"], steps=10, record_every=5, progress=False)
    playground = LandscapePlayground(["mean"], steps=50, trajectories=frame)
    assert playground.status.value == ""
    playground.scale.value = "0.1"
    assert "press Run" in playground.status.value
    playground.free_scale.value = 2.0
    assert playground.scale.value == "free" and playground.l1_scale == 2.0
    playground.steps.value = 50
    assert playground.run()["l1_scale"].unique().tolist() == [2.0]
    assert playground.status.value.startswith("done")


# -- 02 · imbalanced regression ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_tasks() -> tuple[pd.DataFrame, pd.DataFrame]:
    return compare_methods(
        ["sum", "uw", "gradnorm", "io", "mao"],
        num_tasks=2,
        sigmas=[1.0, 100.0],
        num_samples=1500,
        steps=150,
        every=5,
        progress=False,
    )


def _share(ownership: pd.DataFrame, run: str, task: str) -> pd.Series:
    part = ownership[(ownership["run"] == run) & (ownership["task"] == task)]
    return part.set_index("layer")["share"]


def test_under_adam_on_the_sum_the_large_task_owns_every_shared_layer(two_tasks) -> None:
    ownership = layer_ownership(two_tasks[0])
    assert list(pd.unique(ownership["run"])) == ["sum", "uw", "gradnorm", "io", "mao"]  # the order asked for
    assert sorted(ownership["layer"].unique()) == ["trunk.0", "trunk.2", "trunk.4", "trunk.6"]
    assert (_share(ownership, "sum", "task1") >= 0.9).all()
    assert (_share(ownership, "uw", "task1") >= 0.9).all()  # UW learns its weights slowly: like the sum here


def test_mao_and_io_share_every_layer_out(two_tasks) -> None:
    ownership = layer_ownership(two_tasks[0])
    for run in ("mao", "io"):
        shares = _share(ownership, run, "task1")
        assert ((shares > 0.25) & (shares < 0.75)).all(), (run, shares)
        assert ownership[ownership["run"] == run]["imbalance"].max() < 0.15


def test_gradnorm_balances_the_last_shared_layer_only(two_tasks) -> None:
    ownership = layer_ownership(two_tasks[0])
    shares = _share(ownership, "gradnorm", "task1")
    assert abs(shares["trunk.6"] - 0.5) < 0.15
    assert shares["trunk.0"] > 0.6 and shares["trunk.0"] > shares["trunk.6"] + 0.1


def test_the_tasks_ask_unequally_under_every_method_but_mao_gives_equally(two_tasks) -> None:
    frame = by_module(two_tasks[0])
    late = frame[(frame["layer"] == "trunk.0") & (frame["step"] >= 75)]
    for run in ("sum", "mao"):
        part = late[late["run"] == run].groupby(["metric", "task"])["value"].mean()
        grad_ratio = part["grad_norm"]["task1"] / part["grad_norm"]["task0"]
        update_ratio = part["update_norm"]["task1"] / part["update_norm"]["task0"]
        assert grad_ratio > 10, (run, grad_ratio)
        if run == "mao":
            assert update_ratio < 3
        else:
            assert update_ratio > 30


def test_balance_helps_the_small_task(two_tasks) -> None:
    final = final_losses(two_tasks[1]).set_index("method")
    assert final.loc["mao", "worst"] < 0.8 * final.loc["sum", "worst"]
    assert final.loc["io", "worst"] < 0.8 * final.loc["sum", "worst"]


def test_shares_near_one_over_t_under_mao_with_many_tasks() -> None:
    metrics, _ = compare_methods(
        ["sum", "mao"], num_tasks=4, sigma_range=(1.0, 100.0), num_samples=1000, steps=100, every=5, progress=False
    )
    ownership = layer_ownership(metrics)
    mao = ownership[ownership["run"] == "mao"]["share"]
    assert mao.between(0.5 / 4, 2 / 4).all()
    assert (_share(ownership, "sum", "task3") > 0.6).all()


def test_train_with_recorder_saves_a_run_folder_and_figures_draw(tmp_path: Path, two_tasks) -> None:
    data = ImbalancedRegression(2, num_samples=300, in_dim=16, out_dim=8)
    metrics, losses = train_with_recorder(data, "mao", steps=6, every=2, batch_size=32, run_dir=tmp_path / "mao")
    assert is_run_dir(tmp_path / "mao") and (tmp_path / "mao" / "params.json").is_file()
    assert sorted(metrics["step"].unique()) == [0, 2, 4]
    assert set(losses.columns) == {"method", "step", "task", "sigma", "train_loss", "test_loss", "normalised_test_loss"}
    with pytest.raises(ValueError, match="unknown method"):
        train_with_recorder(data, "adamm", steps=1)
    ownership = layer_ownership(two_tasks[0])
    assert len(ownership_figure(ownership).data) == 5 * 2
    figure = magnitude_figure(two_tasks[0], "trunk.0", "grad_norm")
    assert len(figure.data) == 5 * 2 and figure.layout.annotations[0].text == "Adam on the sum"
    assert {axis.get("type") for name, axis in figure.layout.to_plotly_json().items() if name.startswith("yaxis")} == {
        "log"
    }
    assert len(magnitude_figure(two_tasks[0], "trunk.0.weight", "update_norm").data) == 5 * 2
    with pytest.raises(ValueError, match="no layer or module"):
        magnitude_figure(two_tasks[0], "trunk.9")


def test_regression_playground_uses_its_cache_and_trains_new_settings(two_tasks) -> None:
    metrics = two_tasks[0]
    runs = {(2, 100.0, m): part for m, part in metrics.groupby("run", sort=False)}
    playground = RegressionPlayground(
        num_tasks=2, sigma_max=100.0, method="sum", runs=runs, steps=6, every=2, num_samples=300
    )
    assert playground.share_view.outputs and playground.status.value == "cached run"
    assert list(playground.layer.options) == ["trunk.0", "trunk.2", "trunk.4", "trunk.6"]
    playground.layer.value = "trunk.6"
    assert "trunk.6" in playground.static_figure().layout.title.text
    playground.num_tasks.value = 3
    assert playground.status.value.startswith("not trained") and not playground.share_view.outputs
    frame = playground.run()
    assert sorted(frame["task"].dropna().unique()) == ["task0", "task1", "task2"]
    assert playground.share_view.outputs and len(playground.cache) == 6


# -- 04 · saved runs ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_runs(tmp_path_factory) -> Path:
    """A sweep-like tree: <root>/<point>/runs/<method>/ (as 02 under mao_lab.sweep writes it)."""
    root = tmp_path_factory.mktemp("sweep")
    for point in ("T=2", "T=3"):
        compare_methods(
            ["sum", "mao"],
            num_tasks=int(point[-1]),
            num_samples=600,
            steps=20,
            every=2,
            run_root=root / point / "runs",
            progress=False,
        )
    return root


def test_runs_are_found_anywhere_under_the_given_folders(saved_runs: Path) -> None:
    found = find_run_dirs([saved_runs])
    assert sorted(found) == ["T=2/mao", "T=2/sum", "T=3/mao", "T=3/sum"]
    assert list(find_run_dirs(saved_runs / "T=2" / "runs" / "mao")) == ["mao"]
    assert sorted(find_run_dirs(str(saved_runs / "*" / "runs" / "sum"))) == ["sum", "sum (2)"]
    # The same folder given twice is loaded once.
    assert len(find_run_dirs([saved_runs, saved_runs / "T=2"])) == 4
    empty = saved_runs / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no recorded run"):
        find_run_dirs([empty])
    with pytest.raises(FileNotFoundError, match="no recorded run"):
        find_run_dirs(str(saved_runs / "nothing-*"))


def test_loaded_runs_show_the_sum_imbalanced_and_mao_balanced(saved_runs: Path) -> None:
    metrics, runs = load_balance_runs([saved_runs])
    assert runs["run"].tolist() == ["T=2/mao", "T=2/sum", "T=3/mao", "T=3/sum"]
    assert runs.set_index("run").loc["T=3/mao", "tasks"] == 3 and runs["method"].tolist() == ["mao", "sum"] * 2
    view = by_module(metrics)
    summary = balance_summary(view).set_index(["run", "layer"])
    for point in ("T=2", "T=3"):
        assert summary.loc[(f"{point}/sum", "(all shared)"), "imbalance"] > 0.3
        assert summary.loc[(f"{point}/mao", "(all shared)"), "imbalance"] < 0.1
        assert summary.loc[(f"{point}/sum", "(all shared)"), "dominant_task"] == f"task{int(point[-1]) - 1}"
    over_steps = imbalance_over_steps(view)
    assert set(over_steps["run"]) == set(runs["run"]) and over_steps["imbalance"].between(0, 1).all()
    assert len(imbalance_over_steps_figure(view).data) == 4
    assert imbalance_by_layer_figure(view).data[0].z.shape == (4, 4)
    explorer = HeatmapExplorer(view, run="T=3/sum", task="task0")
    explorer.task.value = "task2"
    assert "task2" in explorer.static_figure().layout.title.text and explorer.view.outputs
    parameter_level = layer_ownership(metrics, level="parameter")
    assert "trunk.0.weight" in set(parameter_level["layer"])


def test_with_small_steps_adam_on_the_mean_creeps_down_the_steep_valleys() -> None:
    """The papers' miss (lr 1e-3, 35k+ steps), at lr 3e-3 to keep the test short."""
    plateau_starts = [LANDSCAPE_STARTS[0], LANDSCAPE_STARTS[2]]  # (-8.5, 7.5) and (9, 9)
    frame = landscape_trajectories(
        ["mean"], starts=plateau_starts, steps=2000, lr=3e-3, record_every=500, progress=False
    )
    late = frame[frame["step"] >= 1000]
    # From step 1000 on each run sits on the floor of one task's log-valley (x1 = -5 or +5), far above
    # the Pareto set, and creeps: over the last 500 steps x2 falls by less than 0.3, a fifth of what
    # 500 full Adam steps (of about lr each) would cover.
    np.testing.assert_allclose(late["x1"], np.where(late["start"] == 0, -5.0, 5.0), atol=0.15)
    assert (late["x2"] > 2.0).all()
    x2 = late[late["step"] >= 1500].pivot(index="step", columns="start", values="x2")
    assert ((x2.iloc[0] - x2.iloc[-1]) < 0.3).all()
