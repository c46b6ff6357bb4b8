"""The live balance monitor: its shares against the step records, its throttle against a fake clock."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from mao_lab import MAO
from mao_lab.methods import make
from mao_lab.recorder import BalanceMonitor


class Capture:
    """Keeps every step record (an observer that asks for all of them)."""

    def __init__(self) -> None:
        self.records = []

    def wants_record(self) -> bool:
        return True

    def __call__(self, record) -> None:
        self.records.append(record)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def two_task_model() -> nn.ModuleDict:
    torch.manual_seed(0)
    return nn.ModuleDict({"trunk": nn.Linear(3, 5), "a": nn.Linear(5, 1), "b": nn.Linear(5, 1)})


def losses(model: nn.ModuleDict, x: torch.Tensor) -> dict[str, torch.Tensor]:
    z = model["trunk"](x).tanh()
    return {"a": model["a"](z).pow(2).mean(), "b": 100 * (model["b"](z) - 1).pow(2).mean()}


def test_shares_are_the_tasks_update_norms_of_each_shared_module_normalised() -> None:
    model = two_task_model()
    method = make("sum", model.parameters(), lr=1e-2)
    capture = Capture()
    method.add_observer(capture)
    monitor = BalanceMonitor(model, method, every=3, label="sum", clock=FakeClock())  # time stands still: no throttling
    x = torch.randn(32, 3)
    for _ in range(7):
        method.step(lambda: losses(model, x))
    history = monitor.history()
    assert sorted(history["step"].unique()) == [0, 3, 6]
    assert set(history["layer"]) == {"trunk"}  # the heads are reached by one task each: not shared
    for step in (0, 3, 6):
        record = capture.records[step]
        trunk = [
            i
            for i, p in enumerate(record.task_updates.params)
            if p is model["trunk"].weight or p is model["trunk"].bias
        ]
        norms = {}
        for k, name in enumerate(record.task_names):
            parts = []
            for i in trunk:
                tasks = record.task_updates.tasks[i]
                parts.append(record.task_updates.updates[i][tasks.index(k)].flatten())
            norms[name] = torch.cat(parts).norm().item()
        total = sum(norms.values())
        rows = history[history["step"] == step].set_index("task")
        for name, value in norms.items():
            assert rows.loc[name, "share"] == pytest.approx(value / total, rel=1e-6)
        s = np.array([norms["a"], norms["b"]]) / total
        assert rows["imbalance"].iloc[0] == pytest.approx(
            1 + (s * np.log(s)).sum() / math.log(2), abs=1e-6
        )  # float32 norms


def test_under_the_sum_the_large_task_owns_the_trunk_and_mao_shares_it() -> None:
    x = torch.randn(64, 3)
    owners = {}
    for name in ("sum", "mao"):
        model = two_task_model()
        method = make(name, model.parameters(), lr=1e-2)
        with BalanceMonitor(model, method, every=5, label=name, clock=FakeClock()) as monitor:
            for _ in range(40):
                method.step(lambda model=model: losses(model, x))
        owners[name] = monitor.ownership().set_index("task")["share"]
    assert owners["sum"]["b"] > 0.8  # the loss multiplied by 100
    assert abs(owners["mao"]["b"] - 0.5) < 0.25


def test_the_throttle_keeps_the_monitor_within_its_budget() -> None:
    model = two_task_model()
    optimizer = MAO(model.parameters(), lr=1e-2)
    clock = FakeClock()
    monitor = BalanceMonitor(model, optimizer, every=1, budget=0.05, clock=clock)
    draw = monitor._draw
    spent = {"monitor": 0.0}

    def slow_draw(*args):  # a refresh that takes 5 ms of the fake clock
        draw(*args)
        clock.now += 0.005
        spent["monitor"] += 0.005

    monitor._draw = slow_draw
    x = torch.randn(8, 3)
    for _ in range(400):
        optimizer.step(losses(model, x))
        clock.now += 0.010  # every step takes 10 ms
    total = clock.now
    assert monitor.refreshes < 400 / 5  # throttled: far fewer refreshes than steps
    assert spent["monitor"] / total <= 0.05 + 1e-9
    assert spent["monitor"] / total > 0.03  # and not throttled more than needed
    assert monitor.cost_fraction == pytest.approx(spent["monitor"] / total, rel=0.1)


def test_bad_arguments_name_the_problem() -> None:
    model = two_task_model()
    optimizer = MAO(model.parameters())
    with pytest.raises(ValueError, match="every"):
        BalanceMonitor(model, optimizer, every=0)
    with pytest.raises(ValueError, match="budget"):
        BalanceMonitor(model, optimizer, budget=0)
    with pytest.raises(TypeError, match="add_observer"):
        BalanceMonitor(model, torch.optim.Adam(model.parameters()))


def test_once_closed_the_figure_and_its_line_say_which_step_they_show_out_of_how_many() -> None:
    model = two_task_model()
    method = make("sum", model.parameters(), lr=1e-2)
    monitor = BalanceMonitor(model, method, every=3, label="sum", clock=FakeClock())
    x = torch.randn(32, 3)
    for _ in range(8):  # refreshes at steps 1, 4 and 7 (counted from 1); the training runs 8 steps
        method.step(lambda: losses(model, x))
    assert monitor.figure().layout.title.text.endswith("step 7")
    monitor.close()
    assert monitor.figure().layout.title.text.endswith("step 7 of 8 (the last refresh)")
    assert "finished: 8 steps; the bars show step 7" in monitor.status.value


def _loop_shares(norms: list[float]) -> list[float]:
    total = sum(norms)
    return [v / total if total > 0 else math.nan for v in norms]  # a NaN norm makes the total NaN: every share NaN


def _loop_imbalance(shares: list[float]) -> float:
    if len(shares) < 2 or any(math.isnan(s) for s in shares):
        return math.nan
    return 1 + sum(s * math.log(s) for s in shares if s > 0) / math.log(len(shares))


def test_task_shares_and_the_imbalance_index_against_a_loop() -> None:
    from mao_lab.recorder._frame import imbalance_index, task_shares

    rng = np.random.default_rng(0)
    norms = rng.exponential(size=(40, 4))
    norms[3] = 0.0  # nothing moved the layer
    norms[5, 2] = math.nan  # a broken norm
    norms[7, :3] = 0.0  # one task owns the layer
    reaches = rng.random((40, 4)) < 0.7
    reaches[3:8] = True
    reaches[9] = [True, False, False, False]  # one task: no imbalance
    shares, imbalance = task_shares(norms, reaches), imbalance_index(task_shares(norms, reaches), reaches=reaches)
    for row in range(len(norms)):
        tasks = [k for k in range(4) if reaches[row, k]]
        expected = _loop_shares([norms[row, k] for k in tasks])
        np.testing.assert_allclose(shares[row, tasks], expected, rtol=1e-12, equal_nan=True)
        assert np.isnan(shares[row, [k for k in range(4) if k not in tasks]]).all()
        np.testing.assert_allclose(imbalance[row], _loop_imbalance(expected), rtol=1e-12, atol=1e-15, equal_nan=True)
    assert imbalance[7] == 1.0 and np.isnan(imbalance[3]) and np.isnan(imbalance[5]) and np.isnan(imbalance[9])


def test_the_tables_module_shares_against_a_loop() -> None:
    import pandas as pd

    from mao_lab.recorder import by_module

    rng = np.random.default_rng(1)
    reach = {"trunk.weight": "abc", "trunk.bias": "abc", "pair.weight": "ab", "head.weight": "a"}
    rows = [
        (step, layer, "shared" if len(tasks) > 1 else "task", task, None, "update_norm", rng.exponential())
        for step in range(3)
        for layer, tasks in reach.items()
        for task in tasks
    ]
    frame = pd.DataFrame(rows, columns=["step", "layer", "kind", "task", "other_task", "metric", "value"])
    frame.loc[(frame["step"] == 1) & (frame["layer"] == "pair.weight"), "value"] = 0.0  # nothing moved it
    frame["module"] = frame["layer"].str.rpartition(".")[0]
    modules = by_module(frame)
    for step in range(3):
        for module in ("trunk", "pair", "head"):
            tasks = reach[f"{module}.weight"]
            layers = [layer for layer in reach if layer.startswith(module + ".")]
            norms = []
            for task in tasks:
                picked = frame[(frame["step"] == step) & frame["layer"].isin(layers) & (frame["task"] == task)]
                norms.append(math.sqrt(sum(v * v for v in picked["value"])))
            got = modules[(modules["step"] == step) & (modules["layer"] == module)]
            shares = got[got["metric"] == "update_share"].set_index("task")["value"]
            np.testing.assert_allclose(shares[list(tasks)], _loop_shares(norms), rtol=1e-12, equal_nan=True)
            imbalance = got[got["metric"] == "imbalance"]["value"].to_numpy()
            if len(tasks) > 1:
                expected = _loop_imbalance(_loop_shares(norms))
                np.testing.assert_allclose(imbalance, [expected], rtol=1e-12, atol=1e-15, equal_nan=True)
            else:
                assert len(imbalance) == 0


def test_a_method_without_a_per_task_split_trains_on_and_the_monitor_says_why_it_shows_nothing() -> None:
    # GradDrop's random sign masks stay inside TorchJD: its record carries no per-task split of the update.
    x = torch.randn(64, 3)
    model, reference = two_task_model(), two_task_model()
    method = make("graddrop", model.parameters(), lr=1e-2)
    alone = make("graddrop", reference.parameters(), lr=1e-2)
    with BalanceMonitor(model, method, every=1, label="graddrop", clock=FakeClock()) as monitor:
        for _ in range(3):
            method.step(lambda: losses(model, x))
            alone.step(lambda: losses(reference, x))
    assert "graddrop gives no per-task split" in monitor.unavailable
    assert "no per-task split" in monitor.status.value
    assert monitor.ownership().empty
    for p, q in zip(model.parameters(), reference.parameters()):  # the monitor changed nothing of the training
        assert torch.equal(p, q)
