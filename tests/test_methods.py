"""Every task-balancing method behind one interface: shared properties, and equivalences each checked
against an independent computation (stock ``torch.optim.Adam``, hand-written loops, TorchJD itself)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from mao_lab import StepRecord, TaskInputError
from mao_lab.methods import Method, available, hyperparameter_names, make, sources

from _helpers import Net, assert_same, saved, unchanged

ALL = sorted(available())
SINGLE_FORWARD = [m for m in ALL if m not in ("sus", "ius", "io", "grouping")]
NO_SPLIT = ("graddrop",)  # its record says the per-task split is not available
EXPECTED = {
    "sum", "mean", "uw", "dwa", "rlw", "famo", "imtl_l", "gradnorm",
    "mgda", "pcgrad", "cagrad", "imtl_g", "nash_mtl", "aligned_mtl", "upgrad", "graddrop", "gradvac",
    "mao", "mtadam", "sus", "ius", "io", "grouping",
}  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: one torch thread for these tiny problems


# -- a small three-task problem: a shared trunk, one head per task, targets from teacher functions -------


def data(num_tasks: int = 3, seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 5, generator=g, dtype=torch.float64)
    directions = torch.randn(5, num_tasks, generator=g, dtype=torch.float64)
    scales = torch.tensor([1.0, 3.0, 0.3, 2.0, 0.5, 1.5][:num_tasks], dtype=torch.float64)
    return x, torch.sin(x @ directions) * scales


class Keep:
    """An observer that keeps every record."""

    def __init__(self) -> None:
        self.records: list[StepRecord] = []

    def wants_record(self) -> bool:
        return True

    def __call__(self, record: StepRecord) -> None:
        self.records.append(record)


def setup(
    name: str, num_tasks: int = 3, lr: float = 1e-2, **hyper: Any
) -> tuple[Net, Method, Callable[[], list[Tensor]]]:
    net = Net(num_tasks)
    x, y = data(num_tasks)
    method = make(name, net.parameters(), lr=lr, **hyper)
    return net, method, lambda: net.losses(x, y)


def params_of(net: nn.Module) -> list[Tensor]:
    return [p.detach().clone() for p in net.parameters()]


# -- the registry ------------------------------------------------------------------------------------


def test_every_method_of_the_issue_is_registered_with_a_one_line_description() -> None:
    assert set(available()) >= EXPECTED
    for name, description in available().items():
        assert description and "\n" not in description, name
        assert sources()[name] in ("torchjd", "mao_lab")
        assert "lr" in hyperparameter_names(name)


def test_unknown_name_and_hyperparameter_list_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="available: .*pcgrad"):
        make("pcgard", [torch.zeros(1, requires_grad=True)])
    with pytest.raises(ValueError, match="unknown hyperparameter.*'groupsize'") as error:
        make("grouping", [torch.zeros(1, requires_grad=True)], groupsize=2)
    for name in ("lr", "betas", "eps", "weight_decay", "optimizer", "group_size", "redraw", "seed"):
        assert f" {name}" in str(error.value).split("valid:")[1], name


def test_every_declared_default_passes_its_own_check_and_the_base_options_are_declared_once() -> None:
    from mao_lab._validate import ADAM_HYPERPARAMETERS
    from mao_lab.methods import method_class

    for name in available():
        spec = method_class(name).hyperparameter_spec()
        for setting, hyper in spec.items():
            if hyper.default is not None:
                assert hyper.check(setting, hyper.default) == hyper.default, (name, setting)
        # lr, betas, eps, weight_decay come from the one declaration, never from a copy in the method
        for setting in ADAM_HYPERPARAMETERS:
            assert spec[setting] is ADAM_HYPERPARAMETERS[setting], (name, setting)
        assert make(name, Net().parameters()).hparams == {k: h.default for k, h in spec.items()}


def test_a_class_registered_anywhere_is_made_by_name_and_its_name_is_written_once() -> None:
    from torchjd import scalarization

    from mao_lab.methods import register
    from mao_lab.methods._registry import _REGISTRY
    from mao_lab.methods._weighted import ScalarizerMethod

    try:

        @register("probe_sum", "a test's own copy of sum", "torchjd")
        class ProbeSum(ScalarizerMethod):
            torchjd_class = scalarization.Sum

        assert ProbeSum.name == "probe_sum" and "probe_sum" in available()
        net, method = Net(), None
        method = make("probe_sum", net.parameters(), lr=1e-2)
        assert isinstance(method, ProbeSum) and hyperparameter_names("probe_sum") == hyperparameter_names("sum")
        with pytest.raises(ValueError, match="already registered"):
            register("probe_sum", "again")(type("Other", (ScalarizerMethod,), {}))
        with pytest.raises(TypeError, match="subclass of mao_lab.methods.Method"):
            register("probe_function", "not a class")(lambda params: None)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="identifier"):
            register("probe sum", "a space in the name")
    finally:
        _REGISTRY.pop("probe_sum", None)
    assert "probe_sum" not in available()


def test_another_torchjd_version_is_refused_with_the_pinned_one_named() -> None:
    from mao_lab.methods._torchjd import check_torchjd_version

    check_torchjd_version("0.18.0", "dwa")
    check_torchjd_version("0.18.3+local", "dwa")
    for other in ("0.17.1", "0.19.0", "1.18.0"):
        with pytest.raises(ImportError, match=f"method 'dwa'.*found torchjd {other}.*torchjd==0.18.0"):
            check_torchjd_version(other, "dwa")


@pytest.mark.parametrize("name", ["dwa", "famo", "gradvac", "nash_mtl", "pcgrad", "graddrop", "upgrad"])
def test_only_the_methods_keeping_torchjd_state_depend_on_its_version(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mao_lab.methods import _torchjd

    monkeypatch.setattr(_torchjd, "installed_version", lambda package: "0.19.0")
    net, method, closure = setup(name)
    before = params_of(net)
    if name in ("dwa", "famo", "gradvac", "nash_mtl"):  # their state between steps is TorchJD's private state
        with pytest.raises(ImportError, match=f"method {name!r}.*found torchjd 0.19.0"):
            method.step(closure)
        assert method.steps_taken == 0 and all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    else:
        method.step(closure)
        assert method.steps_taken == 1


OUT_OF_RANGE = [
    ("sum", {"lr": -1.0}, "lr"),
    ("pcgrad", {"betas": (0.9, 1.0)}, "betas"),
    ("uw", {"eps": -1e-8}, "eps"),
    ("mgda", {"weight_decay": -0.1}, "weight_decay"),
    ("cagrad", {"c": -0.5}, "'c'"),
    ("dwa", {"temperature": 0.0}, "temperature"),
    ("dwa", {"steps_per_epoch": 0}, "steps_per_epoch"),
    ("famo", {"weights_lr": -1.0}, "weights_lr"),
    ("gradnorm", {"alpha": -1.0}, "alpha"),
    ("gradnorm", {"shared_param": 99}, "shared_param"),
    ("gradvac", {"beta": 1.5}, "beta"),
    ("nash_mtl", {"optim_niter": 0}, "optim_niter"),
    ("aligned_mtl", {"scale_mode": "max"}, "scale_mode"),
    ("mtadam", {"beta3": 1.0}, "beta3"),
    ("grouping", {"group_size": 0}, "group_size"),
    ("grouping", {"redraw": "yes"}, "redraw"),
    ("grouping", {"seed": -1}, "seed"),
    ("ius", {"group_size": 1.5}, "group_size"),
    ("rlw", {"optimizer": "rmsprop"}, "optimizer"),
]


@pytest.mark.parametrize("name, hyper, named", OUT_OF_RANGE, ids=[f"{n}-{h}" for n, _, h in OUT_OF_RANGE])
def test_out_of_range_hyperparameter_is_refused_at_construction(name: str, hyper: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        make(name, Net().parameters(), **hyper)


# -- properties shared by every method ----------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_reduces_every_task_loss_over_50_steps_without_touching_the_global_rng(name: str) -> None:
    net, method, closure = setup(name)
    rng = torch.get_rng_state()
    first = method.step(closure)
    for _ in range(49):
        method.step(closure)
    with torch.no_grad():
        last = torch.stack(closure())
    assert bool((last < first).all()), f"{name}: {first.tolist()} -> {last.tolist()}"
    assert torch.equal(torch.get_rng_state(), rng), f"{name} drew from the global RNG"


@pytest.mark.parametrize("name", ALL)
def test_deterministic_given_the_seed(name: str) -> None:
    runs = []
    for _ in range(2):
        net, method, closure = setup(name)
        for _ in range(4):
            method.step(closure)
        runs.append(params_of(net))
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@pytest.mark.parametrize("name", ALL)
def test_state_dict_round_trip_resumes_bit_for_bit(name: str) -> None:
    net, method, closure = setup(name)
    for _ in range(3):
        method.step(closure)
    state, weights = saved(method.state_dict()), params_of(net)
    for _ in range(3):
        method.step(closure)

    resumed_net, resumed, resumed_closure = setup(name)
    with torch.no_grad():
        for p, w in zip(resumed_net.parameters(), weights):
            p.copy_(w)
    resumed.load_state_dict(state)
    assert resumed.num_tasks == 3 and resumed.steps_taken == 3
    for _ in range(3):
        resumed.step(resumed_closure)
    for a, b in zip(net.parameters(), resumed_net.parameters()):
        assert torch.equal(a, b), name
    assert_same(saved(method.state_dict()), saved(resumed.state_dict()))


@pytest.mark.parametrize("name", ALL)
def test_nan_loss_is_refused_naming_the_task_and_leaves_everything_untouched(name: str) -> None:
    net, method, closure = setup(name)
    for _ in range(2):
        method.step(closure)
    guard = unchanged(net, method)

    def poisoned() -> list[Tensor]:
        losses = closure()
        return [losses[0], losses[1] * float("nan"), losses[2]]

    with pytest.raises(TaskInputError, match="task1"):
        method.step(poisoned)
    guard.check()


@pytest.mark.parametrize("name", ALL)
def test_nan_gradient_behind_a_finite_loss_is_refused_naming_the_task(name: str) -> None:
    net, method, closure = setup(name)
    method.step(closure)
    guard = unchanged(net, method)
    weight = net.trunk[2].weight

    def poisoned() -> list[Tensor]:  # sqrt'(0) * abs'(0) = inf * 0: the loss is finite, its gradient NaN
        losses = closure()
        return [losses[0], losses[1], losses[2] + (weight - weight.detach()).abs().sqrt().sum()]

    with pytest.raises(TaskInputError, match="task2"):
        method.step(poisoned)
    guard.check()


@pytest.mark.parametrize("name", ALL)
def test_task_count_mismatch_is_refused_and_leaves_everything_untouched(name: str) -> None:
    net, method, closure = setup(name)
    method.step(closure)
    guard = unchanged(net, method)
    with pytest.raises(TaskInputError, match="3 tasks"):
        method.step(lambda: closure()[:2])
    guard.check()

    declared = make(name, Net().parameters(), num_tasks=2)
    with pytest.raises(TaskInputError, match="2 tasks"):
        declared.step(closure)
    assert declared.steps_taken == 0


@pytest.mark.parametrize("num_tasks", [1, 5])
@pytest.mark.parametrize("name", ALL)
def test_any_number_of_tasks(name: str, num_tasks: int) -> None:
    net, method, closure = setup(name, num_tasks)
    before = params_of(net)
    for _ in range(2):
        losses = method.step(closure)
    assert losses.shape == (num_tasks,)
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))


@pytest.mark.parametrize("name", ALL)
def test_record_gives_true_task_gradients_and_contributions_that_add_up_to_the_step(name: str) -> None:
    net, method, closure = setup(name)
    keep = Keep()
    method.add_observer(keep)
    params = list(net.parameters())
    expected = [torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True) for loss in closure()]
    before = params_of(net)
    method.step(closure)
    (record,) = keep.records
    assert record.task_names == ("task0", "task1", "task2")

    grads = record.task_grads
    assert grads is not None and list(grads.params) == params
    # Methods with one forward pass see every task at the same point; the independent steps see the
    # first group's tasks there (the others at the parameters their turn came to).
    first_group = {"sus": (0, 1, 2), "ius": (0,), "io": (0,)}.get(name)
    if name == "grouping":
        first_group = tuple(method.partition[0])
    for k in first_group or range(3):
        for i, g in enumerate(grads.for_task(k)):
            assert (g is None) == (expected[k][i] is None)
            if g is not None:
                torch.testing.assert_close(g, expected[k][i], rtol=1e-12, atol=1e-14)

    updates = record.task_updates
    if name in NO_SPLIT:  # the rule gives no split: the record says so instead of making one up
        assert updates is None
        return
    assert updates is not None and updates.task_names == record.task_names
    position = {id(p): i for i, p in enumerate(params)}
    assert [position[id(p)] for p in updates.params] == sorted(position[id(p)] for p in updates.params)
    # At Adam's first step the momentum-free split is exact: the contributions add up to the change.
    for p, ks, c in zip(updates.params, updates.tasks, updates.updates):
        i = position[id(p)]
        assert set(grads.tasks[i]) <= set(ks)
        change = before[i] - p.detach()
        torch.testing.assert_close(c.sum(0) if ks else torch.zeros_like(p), change, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("name", ["sum", "gradnorm", "cagrad", "upgrad", "mao", "mtadam", "ius", "io"])
def test_contributions_leave_out_the_decoupled_weight_decay(name: str) -> None:
    net, method, closure = setup(name, weight_decay=0.1)
    keep = Keep()
    method.add_observer(keep)
    before = params_of(net)
    for _ in range(3 if name in ("mao", "mtadam", "ius", "io") else 1):  # the exact splits, at any step
        before = params_of(net)
        method.step(closure)
    updates = keep.records[-1].task_updates
    position = {id(p): i for i, p in enumerate(net.parameters())}
    # Every sub-step of IUS and IO decays the trunk, between the tasks' changes: the record leaves all
    # decay out, so there the split adds up to the change only to first order in lr * weight_decay.
    substeps = 3 if name in ("ius", "io") else 1
    for p, c in zip(updates.params, updates.updates):
        i = position[id(p)]
        times = substeps if i < 4 else 1
        expected = before[i] * (1 - 1e-2 * 0.1) ** times - p.detach()
        atol = 1e-12 if substeps == 1 else 3e-3 * float(expected.abs().max())
        torch.testing.assert_close(c.sum(0), expected, rtol=1e-6, atol=atol)


@pytest.mark.parametrize("name", ALL)
def test_recording_does_not_change_training(name: str) -> None:
    runs = []
    for observe in (False, True):
        net, method, closure = setup(name)
        if observe:
            method.add_observer(Keep())
        for _ in range(4):
            method.step(closure)
        runs.append(params_of(net))
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


# -- equivalences, each against an independent computation --------------------------------------------


def adam_reference(
    losses_of: Callable[[Net], Tensor], steps: int, num_tasks: int = 3, lr: float = 1e-2
) -> list[Tensor]:
    net = Net(num_tasks)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        losses_of(net).backward()
        opt.step()
    return params_of(net)


@pytest.mark.parametrize("observe", [False, True])
@pytest.mark.parametrize("name, reduce", [("sum", sum), ("mean", lambda ls: sum(ls) / len(ls)), ("sus", sum)])
def test_equal_weights_with_adam_is_torch_adam_on_the_summed_loss(name: str, reduce: Callable, observe: bool) -> None:
    x, y = data()
    reference = adam_reference(lambda net: reduce(net.losses(x, y)), 50)
    net, method, closure = setup(name)
    if observe:
        method.add_observer(Keep())
    for _ in range(50):
        method.step(closure)
    exact = 0.0 if not observe else 1e-9  # recorded: sum_k w_k g_k instead of one backward, rounding differs
    for a, b in zip(net.parameters(), reference):
        torch.testing.assert_close(a.detach(), b, rtol=exact, atol=exact)


def test_io_with_one_task_is_adam() -> None:
    x, y = data(1)
    reference = adam_reference(lambda net: net.losses(x, y)[0], 50, num_tasks=1)
    net = Net(1)
    method = make("io", net.parameters(), lr=1e-2)
    for _ in range(50):
        method.step(lambda: [net.losses(x, y)[0]])
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), reference))


def test_io_and_ius_are_the_hand_written_loops() -> None:
    x, y = data()
    ref_ius, ref_io = Net(), Net()
    shared = torch.optim.Adam(ref_ius.parameters(), lr=1e-2)
    own = [torch.optim.Adam(ref_io.parameters(), lr=1e-2) for _ in range(3)]
    for _ in range(10):
        for k in range(3):
            for net, opt in ((ref_ius, shared), (ref_io, own[k])):
                opt.zero_grad()
                net.losses(x, y)[k].backward()  # a fresh forward pass for every task
                opt.step()
    for name, reference in (("ius", ref_ius), ("io", ref_io)):
        net, method, closure = setup(name)
        for _ in range(10):
            method.step(closure)
        for a, b in zip(net.parameters(), reference.parameters()):
            torch.testing.assert_close(a, b, rtol=0.0, atol=0.0)


@pytest.mark.parametrize("redraw", [False, True])
def test_grouping_with_group_size_t_is_sus(redraw: bool) -> None:
    runs = []
    for name, hyper in (("sus", {}), ("grouping", {"group_size": 3, "redraw": redraw, "seed": 7})):
        net, method, closure = setup(name, **hyper)
        for _ in range(20):
            method.step(closure)
        runs.append(params_of(net))
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_grouping_draws_the_partition_once_or_anew() -> None:
    net, once, closure = setup("grouping", num_tasks=5, group_size=2, seed=3)
    partitions = set()
    for _ in range(6):
        once.step(closure)
        partitions.add(tuple(once.partition))
    assert len(partitions) == 1 and sorted(sum(next(iter(partitions)), ())) == [0, 1, 2, 3, 4]
    assert sorted(len(g) for g in next(iter(partitions))) == [1, 2, 2]
    net, anew, closure = setup("grouping", num_tasks=5, group_size=2, seed=3, redraw=True)
    for _ in range(6):
        anew.step(closure)
        partitions.add(tuple(anew.partition))
    assert len(partitions) > 2


def test_mgda_on_two_orthogonal_gradients_of_equal_norm_gives_their_mean() -> None:
    p = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    g1, g2 = torch.tensor([3.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 3.0], dtype=torch.float64)
    method = make("mgda", [p], lr=0.1, optimizer="sgd")
    keep = Keep()
    method.add_observer(keep)
    method.step(lambda: [p @ g1, p @ g2])
    torch.testing.assert_close(p.detach(), -0.1 * (g1 + g2) / 2)
    torch.testing.assert_close(keep.records[0].task_updates.updates[0], 0.1 * torch.stack([g1, g2]) / 2)


def test_pcgrad_removes_the_conflicting_component() -> None:
    p = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    g1, g2 = torch.tensor([2.0, 1.0], dtype=torch.float64), torch.tensor([-3.0, 1.0], dtype=torch.float64)
    assert g1 @ g2 < 0
    projected1 = g1 - (g1 @ g2) / (g2 @ g2) * g2  # written from the paper, not from TorchJD
    projected2 = g2 - (g2 @ g1) / (g1 @ g1) * g1
    method = make("pcgrad", [p], lr=1.0, optimizer="sgd")
    keep = Keep()
    method.add_observer(keep)
    method.step(lambda: [p @ g1, p @ g2])
    torch.testing.assert_close(p.detach(), -(projected1 + projected2))
    # The record splits the step along each task's own gradient: projected1 + projected2 =
    # (1 - c/|g1|^2) g1 + (1 - c/|g2|^2) g2 with c = g1.g2 (PCGrad's summed weights, TorchJD's alpha).
    (record,) = keep.records
    torch.testing.assert_close(record.task_grads.grads[0], torch.stack([g1, g2]))
    c = g1 @ g2
    alpha = torch.stack([1 - c / (g1 @ g1), 1 - c / (g2 @ g2)])
    torch.testing.assert_close(record.task_updates.updates[0], alpha.unsqueeze(1) * torch.stack([g1, g2]))


def test_pcgrad_leaves_agreeing_gradients_alone() -> None:
    p = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    g1, g2 = torch.tensor([2.0, 1.0], dtype=torch.float64), torch.tensor([1.0, 3.0], dtype=torch.float64)
    method = make("pcgrad", [p], lr=1.0, optimizer="sgd")
    method.step(lambda: [p @ g1, p @ g2])
    torch.testing.assert_close(p.detach(), -(g1 + g2))


def test_mtadam_with_one_task_is_adam() -> None:
    x, y = data(1)
    reference = adam_reference(lambda net: net.losses(x, y)[0], 30, num_tasks=1)
    net = Net(1)
    method = make("mtadam", net.parameters(), lr=1e-2)
    for _ in range(30):
        method.step(lambda: [net.losses(x, y)[0]])
    for a, b in zip(net.parameters(), reference):
        torch.testing.assert_close(a.detach(), b, rtol=1e-10, atol=1e-12)


def test_mtadam_ignores_the_scale_of_every_loss_but_the_first() -> None:
    runs = []
    for scale in (1.0, 1000.0):
        net, method, closure = setup("mtadam", eps=1e-14)  # eps breaks scale invariance (as in Adam)
        for _ in range(20):
            method.step(
                lambda closure=closure, scale=scale: [loss * s for loss, s in zip(closure(), (1.0, scale, 1.0 / scale))]
            )
        runs.append(params_of(net))
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_gradnorm_balances_at_the_last_shared_layer_and_keeps_weights_summing_to_t() -> None:
    net, method, closure = setup("gradnorm")
    for _ in range(10):
        method.step(closure)
    assert method.params[method._shared_index([])] is net.trunk[2].weight
    torch.testing.assert_close(method.loss_weights.detach().sum(), torch.tensor(3.0))
    assert not torch.allclose(method.loss_weights.detach(), torch.ones(3))


def test_uw_learns_the_log_variances_with_the_model() -> None:
    net, method, closure = setup("uw")
    for _ in range(20):
        method.step(closure)
    log_var = method.scalarizer.log_var.detach()
    assert log_var.shape == (3,) and not torch.equal(log_var, torch.zeros(3))


def test_dwa_weights_follow_the_loss_ratios() -> None:
    p = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    method = make("dwa", [p], lr=1.0, optimizer="sgd")
    keep = Keep()
    method.add_observer(keep)
    scripted = iter([(4.0, 4.0), (2.0, 4.0), (1.0, 1.0)])

    def closure() -> list[Tensor]:  # loss values exactly a_k, gradients a_k per coordinate
        a = next(scripted)
        return [a_k * (1 + (p - p.detach()).sum()) for a_k in a]

    for _ in range(3):
        method.step(closure)
    weights = [
        record.task_updates.updates[0][:, 0] / torch.tensor(a, dtype=torch.float64)
        for record, a in zip(keep.records, [(4.0, 4.0), (2.0, 4.0), (1.0, 1.0)])
    ]
    torch.testing.assert_close(weights[0], torch.ones(2, dtype=torch.float64))  # not two epochs yet
    torch.testing.assert_close(weights[1], torch.ones(2, dtype=torch.float64))
    rates = torch.tensor([2.0 / 4.0, 4.0 / 4.0], dtype=torch.float64)
    torch.testing.assert_close(weights[2], 2 * torch.softmax(rates / 2.0, dim=0))


@pytest.mark.parametrize("name", ["ius", "io", "grouping"])
def test_failure_at_a_later_sub_step_restores_parameters_and_optimizers(name: str) -> None:
    net, method, closure = setup(name, group_size=1)
    method.step(closure)
    guard = unchanged(net, method)
    calls = []

    def fails_on_third_forward() -> list[Tensor]:
        calls.append(1)
        losses = closure()
        return [losses[0] * (float("nan") if len(calls) == 3 else 1.0), losses[1], losses[2]]

    with pytest.raises(TaskInputError, match="task0"):
        method.step(fails_on_third_forward)
    assert len(calls) == 3  # two sub-steps had moved the parameters before the failure
    guard.check()


def test_famo_failure_after_the_step_restores_everything() -> None:
    net, method, closure = setup("famo")
    method.step(closure)
    guard = unchanged(net, method)
    calls = []

    def fails_after_the_step() -> list[Tensor]:
        calls.append(1)
        losses = closure()
        return losses if len(calls) == 1 else [losses[0], losses[1] * float("inf"), losses[2]]

    with pytest.raises(TaskInputError, match="task1"):
        method.step(fails_after_the_step)
    guard.check()


def test_closure_returning_a_dict_names_the_tasks() -> None:
    net, method, closure = setup("pcgrad")
    keep = Keep()
    method.add_observer(keep)
    method.step(lambda: dict(zip(("depth", "seg", "normal"), closure())))
    assert keep.records[0].task_names == ("depth", "seg", "normal")
