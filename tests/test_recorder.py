"""The recorder: every recorded number checked against an independent computation, storage, figures, widgets."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch
from torch import Tensor

from mao_lab import MAO, StepRecord, TaskGradients, compute_task_gradients
from mao_lab.methods import LossClosure, Method, available, make
from mao_lab.recorder import (
    COLUMNS,
    METRICS,
    BalanceExplorer,
    Recorder,
    RecorderError,
    _storage,
    by_module,
    grad_norm_ratios,
    layer_bars,
    load_run,
    load_runs,
    share_areas,
    share_heatmap,
)

from _helpers import Net as SharedNet

# -- a small multi-task problem ----------------------------------------------------------------------


class Net(SharedNet):
    """The shared net on a trunk 5-16-8, in float32 unless told; its losses are named ``t0``, ``t1``, ..."""

    def __init__(self, num_tasks: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(num_tasks, seed, dtype, widths=(5, 16, 8))

    def losses(self, x: Tensor, y: Tensor, scales: Iterable[float]) -> dict[str, Tensor]:  # type: ignore[override]
        return {f"t{k}": s * (out - y[k]).pow(2).mean() for k, (out, s) in enumerate(zip(self(x), scales))}


def batch(num_tasks: int, seed: int = 1, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 5, generator=g, dtype=dtype)
    y = torch.randn(num_tasks, 64, generator=g, dtype=dtype)
    return x, y


def train(method: Method, net: Net, steps: int, scales: Iterable[float] | None = None) -> None:
    x, y = batch(len(net.heads), dtype=next(net.parameters()).dtype)
    scales = list(scales) if scales is not None else [1.0] * len(net.heads)
    for _ in range(steps):
        method.step(lambda: net.losses(x, y, scales))


def recorded(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    rows = frame[frame["metric"] == metric]
    return rows.astype({c: object for c in ("layer", "module", "kind", "task", "other_task")})


SHARED = ["trunk.0.weight", "trunk.0.bias", "trunk.2.weight", "trunk.2.bias"]


# -- Adam on the summed loss, split by task as the methods document it -----------------------------------


class LocalAdamOnSum(Method):
    """Adam on ``sum_k L_k``, recording ``c_k = D ⊙ g_k`` (mao_lab.methods._contributions' definition).

    TODO: drop once ``make("sum", ...)`` is registered; the test below already prefers it.
    """

    name = "adam_on_sum_local"

    def __init__(self, params: Iterable[Tensor], lr: float) -> None:
        super().__init__(params)
        self.adam = torch.optim.Adam(self.params, lr=lr)

    def _step(self, closure: LossClosure, record: bool) -> StepRecord:
        names, losses = self._losses(closure)
        with torch.enable_grad():
            grads = compute_task_gradients(dict(zip(names, losses)), self.params)
        for p, g in zip(grads.params, grads.grads):
            p.grad = g.sum(0)
        self.adam.step()
        beta1, beta2 = self.adam.defaults["betas"]
        updates = []
        for p, g in zip(grads.params, grads.grads):
            state = self.adam.state[p]
            t = float(state["step"])
            denom = (state["exp_avg_sq"] / (1 - beta2**t)).sqrt() + self.adam.defaults["eps"]
            updates.append(g * (self.adam.defaults["lr"] / (1 - beta1**t) / denom))
        task_updates = TaskGradients(names, grads.params, grads.tasks, tuple(updates))
        values = torch.stack([loss.detach() for loss in losses])
        return StepRecord(names, values, grads if record else None, task_updates if record else None)


def adam_on_sum(params: Iterable[Tensor], lr: float) -> Method:
    if "sum" in available():
        return make("sum", params, lr=lr)
    return LocalAdamOnSum(params, lr)


class NoTaskGradients(Method):
    """Plain Adam on the summed loss, one backward pass: it never forms per-task gradients."""

    name = "blind_sum"

    def __init__(self, params: Iterable[Tensor]) -> None:
        super().__init__(params)
        self.adam = torch.optim.Adam(self.params)

    def _step(self, closure: LossClosure, record: bool) -> StepRecord:
        names, losses = self._losses(closure)
        self.adam.zero_grad()
        torch.stack(losses).sum().backward()
        self.adam.step()
        self.adam.zero_grad(set_to_none=True)  # a method leaves no .grad behind (the next step refuses one)
        return StepRecord(names, torch.stack([loss.detach() for loss in losses]), None, None)


# -- what is recorded ---------------------------------------------------------------------------------------


def test_shares_sum_to_one_per_layer_and_step() -> None:
    net = Net(3)
    method = make("mao", net.parameters(), lr=1e-2)
    recorder = Recorder(net, method)
    train(method, net, 6, scales=[1.0, 10.0, 0.1])
    shares = recorded(recorder.to_frame(), "update_share")
    sums = shares.groupby(["step", "layer"])["value"].sum()
    assert len(sums) == 6 * len(list(net.parameters()))
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-9)
    modules = recorded(recorder.to_frame("module"), "update_share").groupby(["step", "layer"])["value"].sum()
    np.testing.assert_allclose(modules.to_numpy(), 1.0, atol=1e-9)


def test_mao_balances_shared_layers_while_adam_on_the_sum_follows_the_large_task() -> None:
    scales = [1.0, 1000.0]
    mao_net, sum_net, unscaled_net = Net(2), Net(2), Net(2)
    mao = make("mao", mao_net.parameters(), lr=1e-3)
    summed = adam_on_sum(sum_net.parameters(), lr=1e-3)
    unscaled = make("mao", unscaled_net.parameters(), lr=1e-3)
    recorders = {m: Recorder(net, m) for net, m in ((mao_net, mao), (sum_net, summed), (unscaled_net, unscaled))}
    train(mao, mao_net, 20, scales)
    train(summed, sum_net, 20, scales)
    train(unscaled, unscaled_net, 20, [1.0, 1.0])

    def large_task_shares(method: Method) -> pd.Series:
        shares = recorded(recorders[method].to_frame(), "update_share")
        shared = shares[(shares["kind"] == "shared") & (shares["task"] == "t1")]
        assert sorted(shared["layer"].unique()) == sorted(SHARED)
        assert len(shared) == 20 * len(SHARED)
        return shared.set_index(["step", "layer"])["value"]

    # MAO: each task gets about half of every shared layer's update, at every step.  (They drift a
    # little from 0.5 as the tasks' gradients change at different rates, but not with the loss scale.)
    mao_shares = large_task_shares(mao)
    assert mao_shares.min() > 0.3 and mao_shares.max() < 0.7, mao_shares.describe()
    np.testing.assert_allclose(mao_shares, large_task_shares(unscaled), atol=1e-4)
    # Adam on the summed loss: the task with the 1000 times larger loss owns most of the update.
    # Not all of it: Adam normalises element by element, so wherever the large task's gradient entry
    # is near zero the small task's entry is scaled up.  The first steps are left out: there Adam's
    # denominator is still mostly the step's own |g_1 + g_2|, and the few entries where the tasks
    # cancel blow both contributions up alike (shares near 0.5 in some layers at the first step).
    summed_shares = large_task_shares(summed)[lambda s: s.index.get_level_values("step") >= 4]
    assert summed_shares.min() > 0.85 and summed_shares.median() > 0.9, summed_shares.describe()

    mao_imbalance = recorded(recorders[mao].to_frame(), "imbalance")["value"]
    sum_imbalance = recorded(recorders[summed].to_frame(), "imbalance")
    sum_imbalance = sum_imbalance[sum_imbalance["step"] >= 4]["value"]
    assert mao_imbalance.max() < 0.1 < 0.3 < sum_imbalance.median()


def test_gradient_norms_and_cosines_equal_an_independent_autograd_computation() -> None:
    net = Net(3, dtype=torch.float64)
    method = make("mao", net.parameters(), lr=1e-2)
    x, y = batch(3, dtype=torch.float64)
    scales = [1.0, 5.0, 0.5]
    recorder = Recorder(net, method, every=2)
    expected: dict[int, dict[str, list[Tensor | None]]] = {}
    named = list(net.named_parameters())
    for step in range(4):
        if step % 2 == 0:
            losses = net.losses(x, y, scales)
            expected[step] = {
                task: list(torch.autograd.grad(loss, [p for _, p in named], allow_unused=True, retain_graph=True))
                for task, loss in losses.items()
            }
        method.step(lambda: net.losses(x, y, scales))
    frame = recorder.to_frame()
    assert recorder.steps == [0, 2]

    norms = recorded(frame, "grad_norm").set_index(["step", "layer", "task"])["value"].sort_index()
    cosines = recorded(frame, "cosine").set_index(["step", "layer", "task", "other_task"])["value"]
    checked = 0
    for step, per_task in expected.items():
        for i, (layer, _) in enumerate(named):
            reaching = [t for t, grads in per_task.items() if grads[i] is not None]
            for task in reaching:
                assert norms[(step, layer, task)] == pytest.approx(per_task[task][i].norm().item(), rel=1e-10)
                checked += 1
            for a, b in ((a, b) for j, a in enumerate(reaching) for b in reaching[j + 1 :]):
                want = torch.nn.functional.cosine_similarity(per_task[a][i].flatten(), per_task[b][i].flatten(), dim=0)
                assert cosines[(step, layer, a, b)] == pytest.approx(want.item(), rel=1e-9, abs=1e-12)
            assert len(norms.loc[(step, layer)]) == len(reaching)
    assert checked == 2 * (4 * 3 + 3 * 2)

    # Module level: the norms and cosines of each module's parameters concatenated.
    modules = by_module(frame)
    module_norms = recorded(modules, "grad_norm").set_index(["step", "layer", "task"])["value"]
    module_cosines = recorded(modules, "cosine").set_index(["step", "layer", "task", "other_task"])["value"]
    trunk0 = [i for i, (name, _) in enumerate(named) if name.startswith("trunk.0.")]
    flat = {t: torch.cat([expected[2][t][i].flatten() for i in trunk0]) for t in ("t0", "t1")}
    assert module_norms[(2, "trunk.0", "t1")] == pytest.approx(flat["t1"].norm().item(), rel=1e-10)
    want = torch.nn.functional.cosine_similarity(flat["t0"], flat["t1"], dim=0).item()
    assert module_cosines[(2, "trunk.0", "t0", "t1")] == pytest.approx(want, rel=1e-9)


def test_update_norms_are_the_norms_of_each_tasks_part_of_maos_step() -> None:
    net = Net(2, dtype=torch.float64)
    lr, eps = 1e-2, 1e-8
    optimizer = MAO(net.parameters(), lr=lr, eps=eps)
    x, y = batch(2, dtype=torch.float64)
    scales = [1.0, 100.0]
    recorder = Recorder(net, optimizer)
    named = list(net.named_parameters())
    before = [p.detach().clone() for _, p in named]
    losses = net.losses(x, y, scales)
    grads = {
        t: torch.autograd.grad(loss, [p for _, p in named], allow_unused=True, retain_graph=True)
        for t, loss in losses.items()
    }
    optimizer.step(net.losses(x, y, scales))
    frame = recorder.to_frame()

    # On MAO's first step m_hat = g and v_hat = g^2, so task k moves p by lr * g_k / (|g_k| + eps).
    updates = recorded(frame, "update_norm").set_index(["layer", "task"])["value"]
    for i, (layer, _) in enumerate(named):
        for task, per_param in grads.items():
            g = per_param[i]
            if g is None:
                assert (layer, task) not in updates.index
                continue
            assert updates[(layer, task)] == pytest.approx((lr * g / (g.abs() + eps)).norm().item(), rel=1e-9)
    # A head is moved by its one task alone: its update norm is how far it moved.
    for i, (layer, p) in enumerate(named):
        if layer.startswith("heads.1."):
            assert updates[(layer, "t1")] == pytest.approx((before[i] - p.detach()).norm().item(), rel=1e-9)
    recorded_losses = recorded(frame, "loss").set_index("task")["value"]
    for task, loss in losses.items():
        assert recorded_losses[task] == pytest.approx(loss.item(), rel=1e-12)


def test_the_table_is_tidy_and_tells_shared_from_task_specific_layers() -> None:
    net = Net(2)
    method = make("mao", net.parameters(), lr=1e-2)
    recorder = Recorder(net, method, every=3)
    train(method, net, 7)
    frame = recorder.to_frame()
    assert list(frame.columns) == list(COLUMNS)
    assert set(frame["metric"].astype(str)) == set(METRICS)
    assert sorted(frame["step"].unique()) == [0, 3, 6] == recorder.steps
    kinds = recorded(frame, "grad_norm").groupby("layer")["kind"].first()
    assert {layer for layer, kind in kinds.items() if kind == "shared"} == set(SHARED)
    layers = recorder.layers()
    assert layers.loc["heads.1.weight", "owner"] == "t1" and layers.loc["heads.1.weight", "kind"] == "task"
    assert layers.loc["trunk.2.weight", "kind"] == "shared"
    # One row per step x layer x task x metric: no duplicates.
    keys = ["step", "layer", "task", "other_task", "metric"]
    assert not recorded(frame, "grad_norm")[keys].duplicated().any()
    # Every shared layer has one imbalance value and one cosine per step; task layers have neither.
    assert set(recorded(frame, "imbalance")["layer"]) == set(SHARED)
    assert set(recorded(frame, "cosine")["layer"]) == set(SHARED)


def test_a_method_without_per_task_gradients_raises_a_clear_error() -> None:
    net = Net(2)
    method = NoTaskGradients(net.parameters())
    recorder = Recorder(net, method)
    x, y = batch(2)
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(
        RecorderError, match=r"'blind_sum' \(NoTaskGradients\).*task_grads.*This step itself was applied"
    ):
        method.step(lambda: net.losses(x, y, [1.0, 1.0]))
    # The error says what happened: the step moved the parameters, and the recorder let go of the method.
    assert method.steps_taken == 1 and any(not torch.equal(b, p) for b, p in zip(before, net.parameters()))
    assert not recorder.attached
    method.step(lambda: net.losses(x, y, [1.0, 1.0]))  # training goes on
    assert method.steps_taken == 2
    with pytest.raises(TypeError, match="add_observer"):
        Recorder(net, torch.optim.Adam(net.parameters()))  # type: ignore[arg-type]


def test_a_method_without_a_per_task_split_is_recorded_without_update_rows() -> None:
    """GradDrop hands over its task gradients but no split of its update (``task_updates=None``): the
    recorder keeps its gradient norms, cosines and losses and has no update rows, and the figures and
    the explorer show what there is instead of failing."""
    net = Net(2)
    method = make("graddrop", net.parameters(), lr=1e-3)
    recorder = Recorder(net, method)
    x, y = batch(2)
    expected = [compute_task_gradients(net.losses(x, y, [1.0, 10.0]), list(net.parameters()))]
    train(method, net, 3, [1.0, 10.0])
    frame = recorder.to_frame()
    assert recorder.steps == [0, 1, 2]
    assert set(frame["metric"]) == {"grad_norm", "cosine", "loss"}
    first = recorded(frame, "grad_norm").query("step == 0 and layer == 'trunk.0.weight'").set_index("task")["value"]
    for k, task in enumerate(("t0", "t1")):  # the gradient at step 0, by autograd on the untouched model
        assert math.isclose(first[task], float(expected[0].grads[0][k].norm()), rel_tol=1e-5)
    assert len(grad_norm_ratios(frame).data) == len(SHARED)
    assert layer_bars(frame, 1, "cosine").data
    with pytest.raises(ValueError, match="no update shares"):
        share_areas(frame, "trunk.0.weight")
    explorer = BalanceExplorer({"graddrop": frame})
    assert explorer.metric.value in ("grad_norm", "cosine", "loss") and explorer.figure.data
    mao_net = Net(2)
    mao = make("mao", mao_net.parameters(), lr=1e-3)
    mao_recorder = Recorder(mao_net, mao)
    train(mao, mao_net, 3, [1.0, 10.0])
    both = BalanceExplorer({"mao": mao_recorder.to_frame(), "graddrop": frame})
    assert both.metric.value == "update_share"
    both.run.value = "graddrop"  # a run without update rows: the explorer falls back to a metric it has
    assert "update_share" not in both.metric.options and both.figure.data


def test_detaching_stops_recording_and_steps_keep_the_methods_numbering() -> None:
    net = Net(2)
    method = make("mao", net.parameters(), lr=1e-2)
    with Recorder(net, method) as recorder:
        train(method, net, 2)
    train(method, net, 2)
    assert recorder.steps == [0, 1] and not recorder.attached
    recorder.attach()
    train(method, net, 1)
    assert recorder.steps == [0, 1, 4]  # the method's own step count

    optimizer = MAO(net.parameters(), lr=1e-2)  # keeps no step count: the recorder counts its steps
    x, y = batch(2)
    recorder = Recorder(net, optimizer, every=2)
    for _ in range(5):
        optimizer.step(net.losses(x, y, [1.0, 1.0]))
    assert recorder.steps == [0, 2, 4]


# -- storage ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("parquet", [True, False], ids=["parquet", "csv"])
def test_save_and_load_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parquet: bool) -> None:
    if not parquet:
        monkeypatch.setattr(_storage, "parquet_available", lambda: False)
    net = Net(3)
    method = make("mao", net.parameters(), lr=1e-2)
    recorder = Recorder(net, method)
    train(method, net, 3)
    params = {"method": "mao", "lr": 0.01, "tasks": ["t0", "t1", "t2"]}
    path = recorder.save(tmp_path / "run", params)
    assert path.name == ("metrics.parquet" if parquet else "metrics.csv")
    frame, loaded_params = load_run(tmp_path / "run")
    pd.testing.assert_frame_equal(frame, recorder.to_frame())
    assert loaded_params == params
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted([path.name, "params.json"])


def test_an_interrupted_run_leaves_a_readable_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    net = Net(2)
    method = make("mao", net.parameters(), lr=1e-2)
    run = tmp_path / "run"
    recorder = Recorder(net, method, run_dir=run, params={"method": "mao"}, flush_every=2)
    train(method, net, 5)  # flushes after steps 1 and 3; step 4 is only in memory

    # The process dies while writing the next flush: the table being written is never seen.
    def crash(self: pd.DataFrame, path: object, **kwargs: object) -> None:
        Path(str(path)).write_bytes(b"PAR1 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_parquet", crash)
    monkeypatch.setattr(pd.DataFrame, "to_csv", crash)
    with pytest.raises(KeyboardInterrupt):
        recorder.flush()
    monkeypatch.undo()

    frame, params = load_run(run)
    assert params == {"method": "mao"}
    assert sorted(frame["step"].unique()) == [0, 1, 2, 3]
    pd.testing.assert_frame_equal(frame, recorder.to_frame(stop=4))
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]

    # Finishing the run gathers everything into one table and removes the parts.
    recorder.close()
    frame, _ = load_run(run)
    assert sorted(frame["step"].unique()) == [0, 1, 2, 3, 4]
    assert sorted(p.name for p in run.iterdir()) == sorted(["params.json", _storage_name()])
    with pytest.raises(FileExistsError, match="overwrite"):
        Recorder(net, method, run_dir=run)


def _storage_name() -> str:
    return "metrics.parquet" if _storage.parquet_available() else "metrics.csv"


def test_load_runs_combines_runs_with_a_run_column(tmp_path: Path) -> None:
    for scale in (1.0, 1000.0):
        net = Net(2)
        method = make("mao", net.parameters(), lr=1e-2)
        with Recorder(net, method, run_dir=tmp_path / f"scale{scale:g}", params={"scale": scale}):
            train(method, net, 2, [1.0, scale])
    frame, params = load_runs(sorted(tmp_path.iterdir()))
    assert list(frame.columns) == ["run", *COLUMNS]
    assert set(frame["run"]) == {"scale1", "scale1000"}
    assert params == {"scale1": {"scale": 1.0}, "scale1000": {"scale": 1000.0}}
    modules = by_module(frame)
    assert set(modules["run"]) == {"scale1", "scale1000"}
    np.testing.assert_allclose(recorded(modules, "update_share").groupby(["run", "step", "layer"])["value"].sum(), 1.0)


# -- figures and the explorer ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_runs() -> dict[str, pd.DataFrame]:
    frames = {}
    for name, factory in (("mao", lambda p: make("mao", p, lr=1e-3)), ("adam_on_sum", lambda p: adam_on_sum(p, 1e-3))):
        net = Net(2)
        method = factory(net.parameters())
        recorder = Recorder(net, method)
        train(method, net, 6, [1.0, 1000.0])
        frames[name] = recorder.to_frame()
    return frames


def test_figures_build_with_traces_and_titled_axes(two_runs: dict[str, pd.DataFrame]) -> None:
    frame = two_runs["mao"]
    figures: dict[str, Callable[[], go.Figure]] = {
        "heatmap": lambda: share_heatmap(frame, "t1"),
        "areas": lambda: share_areas(frame, "trunk.0.weight"),
        "bars": lambda: layer_bars(frame, 3),
        "cosine bars": lambda: layer_bars(frame, 3, "cosine"),
        "ratios": lambda: grad_norm_ratios(frame),
    }
    for name, build in figures.items():
        figure = build()
        assert isinstance(figure, go.Figure) and figure.data, name
        assert figure.layout.xaxis.title.text and figure.layout.yaxis.title.text, name
    heatmap = share_heatmap(frame, "t1")
    assert list(heatmap.data[0].x) == list(range(6))
    assert list(heatmap.data[0].y)[:4] == SHARED  # the task's head is there too, the other head is not
    assert "heads.0.weight" not in heatmap.data[0].y
    areas = share_areas(frame, "trunk.0.weight")
    assert [trace.name for trace in areas.data] == ["t0", "t1"]
    np.testing.assert_allclose(areas.data[0].y + areas.data[1].y, 1.0)
    assert len(grad_norm_ratios(frame).data) == len(SHARED)  # one line per shared layer
    combined = pd.concat([f.assign(run=n) for n, f in two_runs.items()])
    with pytest.raises(ValueError, match="several runs"):
        share_heatmap(combined, "t0")
    small_task = share_heatmap(combined, "t0", run="adam_on_sum").data[0]
    assert list(small_task.y) == [*SHARED, "heads.0.weight", "heads.0.bias"]
    assert small_task.z[:4, 4:].max() < 0.15 and small_task.z[4:].min() == 1.0  # its own head is all its own


def test_explorer_follows_its_widgets(two_runs: dict[str, pd.DataFrame]) -> None:
    explorer = BalanceExplorer(two_runs)
    assert explorer.run.options == ("mao", "adam_on_sum")
    assert explorer.metric.value == "update_share"

    def ys() -> list[list[float]]:
        return [list(np.round(trace.y, 12)) for trace in explorer.figure.data]

    mao_shares = ys()
    explorer.run.value = "adam_on_sum"
    assert ys() != mao_shares
    assert min(explorer.figure.data[1].y) > 0.9  # t1, the large task, owns most of the layer
    explorer.layer.value = "trunk.2.bias"
    assert explorer.figure.layout.title.text.startswith("share of the update of trunk.2.bias")
    explorer.metric.value = "cosine"
    assert [trace.name for trace in explorer.figure.data] == ["t0 · t1"]
    explorer.steps.value = (2, 4)
    assert list(explorer.figure.data[0].x) == [2, 3, 4]
    explorer.metric.value = "loss"
    assert explorer.layer.disabled and len(explorer.figure.data) == 2
    static = explorer.static_figure()
    assert isinstance(static, go.Figure) and not isinstance(static, go.FigureWidget)
    assert "<div" in static.to_html(full_html=False, include_plotlyjs=False)
    assert BalanceExplorer(two_runs, level="module").layer.options[0] == "trunk.0"


# -- every method of the registry ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(available()))
def test_every_registered_method_can_be_recorded(name: str) -> None:
    net = Net(3)
    method = make(name, net.parameters())
    recorder = Recorder(net, method)
    train(method, net, 2, [1.0, 10.0, 100.0])
    frame = recorder.to_frame()
    assert recorder.steps == [0, 1]
    shares = recorded(frame, "update_share").groupby(["step", "layer"])["value"].sum()
    shares = shares[shares.notna()]
    np.testing.assert_allclose(shares.to_numpy(), 1.0, atol=1e-9)
    assert math.isfinite(recorded(frame, "grad_norm")["value"].sum())
