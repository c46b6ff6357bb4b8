"""Hostile inputs to the optimizer and every method: each is refused with a clear error, and the
parameters and the optimizer state are compared byte for byte before and after (nothing changed).

Three classes of fault (issue 10): checkpoints that do not fit, tasks whose identity changes, and
inputs that must be refused before a step changes anything.  Parametrized over every registered
method where the fault applies, so a new method is attacked too.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from mao_lab import MAO, CheckpointError, TaskGradients, TaskInputError
from mao_lab.methods import Method, available, hyperparameter_names, make
from mao_lab.methods._mtadam import MTAdam

from _helpers import Net as SharedNet
from _helpers import Unchanged, assert_same, saved, unchanged

ALL = sorted(available())


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: one torch thread for these tiny problems


# -- a three-task problem whose trunk width can change (a checkpoint of "another model size") ----------


class Net(SharedNet):
    """The shared net on a trunk 4-``hidden``-5, in float64."""

    def __init__(self, hidden: int = 8, num_tasks: int = 3, seed: int = 0) -> None:
        super().__init__(num_tasks, seed, widths=(4, hidden, 5))


def data(num_tasks: int = 3, step: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(16, 4, generator=g, dtype=torch.float64)
    return x, torch.sin(x @ torch.randn(4, num_tasks, generator=g, dtype=torch.float64)) * torch.arange(
        1, num_tasks + 1
    )


NAMES = ("left", "right", "sum")


def named(
    net: Net, step: int = 0, order: tuple[str, ...] = NAMES, rename: dict[str, str] | None = None
) -> Callable[[], dict]:
    """A closure returning the losses as a dict, keys in ``order`` (optionally renamed)."""

    def closure() -> dict[str, Tensor]:
        losses = dict(zip(NAMES, net.losses(*data(len(net.heads), step))))
        return {(rename or {}).get(k, k): losses[k] for k in order}

    return closure


def trained(name: str, hidden: int = 8, steps: int = 2, num_tasks: int = 3, **hyper: Any) -> tuple[Net, Method]:
    net = Net(hidden, num_tasks)
    method = make(name, net.parameters(), lr=1e-2, **hyper)
    for s in range(steps):
        method.step(named(net, s, NAMES[:num_tasks]) if num_tasks == 3 else lambda s=s: net.losses(*data(num_tasks, s)))
    return net, method


# -- byte-for-byte comparison ------------------------------------------------------------------------------


def still_steps(net: Net, method: Method, step: int = 5) -> None:
    before = [p.detach().clone() for p in net.parameters()]
    method.step(named(net, step))
    assert any(not torch.equal(p, q) for p, q in zip(net.parameters(), before))


# == 1. checkpoints =======================================================================================


@pytest.mark.parametrize("name", ALL)
def test_checkpoint_of_another_model_size_is_refused(name: str) -> None:
    _, small = trained(name, hidden=4)
    net, method = trained(name, hidden=8)
    guard = unchanged(net, method)
    with pytest.raises(CheckpointError, match="shape"):
        method.load_state_dict(saved(small.state_dict()))
    guard.check()
    still_steps(net, method)


@pytest.mark.parametrize("name", ALL)
def test_checkpoint_of_another_method_is_refused(name: str) -> None:
    other = "mao" if name != "mao" else "mtadam"
    _, donor = trained(other)
    net, method = trained(name)
    guard = unchanged(net, method)
    with pytest.raises(CheckpointError, match=f"method '{other}' cannot be loaded into method '{name}'"):
        method.load_state_dict(saved(donor.state_dict()))
    guard.check()
    still_steps(net, method)


@pytest.mark.parametrize("name", ALL)
def test_checkpoint_with_another_task_count_is_refused(name: str) -> None:
    _, two = trained(name, num_tasks=2)
    net, method = trained(name)
    guard = unchanged(net, method)
    with pytest.raises(CheckpointError, match="3 tasks; the state is for 2"):
        method.load_state_dict(saved(two.state_dict()))
    guard.check()


@pytest.mark.parametrize("name", ALL)
def test_checkpoint_of_renamed_tasks_is_refused(name: str) -> None:
    net, method = trained(name)
    state = saved(method.state_dict())
    state["task_names"] = ["left", "right", "product"]
    guard = unchanged(net, method)
    with pytest.raises(CheckpointError, match="product"):
        method.load_state_dict(state)
    guard.check()


def _last_moment(state: Any, path: tuple = ()) -> tuple | None:
    """Where the last tensor of more than one element sits in a nested state (the last group's moments)."""
    found = None
    if isinstance(state, dict):
        items = list(state.items())
    elif isinstance(state, (list, tuple)):
        items = list(enumerate(state))
    else:
        return None
    for k, v in items:
        if isinstance(v, Tensor) and v.numel() > 1 and v.is_floating_point():
            found = (*path, k)
        else:
            found = _last_moment(v, (*path, k)) or found
    return found


@pytest.mark.parametrize("corruption", ["shape", "dtype"])
@pytest.mark.parametrize("name", ALL)
def test_checkpoint_with_one_bad_moment_late_in_the_state_changes_nothing(name: str, corruption: str) -> None:
    # The bad tensor is the last moment of the optimizer state: everything before it would load fine.
    net, method = trained(name)
    state = saved(method.state_dict())
    path = _last_moment(state["optimizer"])
    assert path is not None
    holder = state["optimizer"]
    for key in path[:-1]:
        holder = holder[key]
    good = holder[path[-1]]
    holder[path[-1]] = (
        torch.zeros(good.shape[0] + 1, *good.shape[1:], dtype=good.dtype)
        if corruption == "shape"
        else good.to(torch.int64)
    )
    method.step(named(net, 3))  # the live state moves on: a load that half-happened would show
    guard = unchanged(net, method)
    with pytest.raises(CheckpointError, match=corruption):
        method.load_state_dict(state)
    guard.check()


STEPPED = [name for name in ALL if "optimizer" in hyperparameter_names(name)]


@pytest.mark.parametrize("donor_kind", ["sgd", "adam"])
@pytest.mark.parametrize("name", STEPPED)
def test_checkpoint_of_another_base_optimizer_is_refused(name: str, donor_kind: str) -> None:
    _, donor = trained(name, optimizer=donor_kind)
    net, method = trained(name, optimizer="adam" if donor_kind == "sgd" else "sgd")
    guard = unchanged(net, method)
    with pytest.raises(CheckpointError, match="saved by another optimizer|not sgd's"):
        method.load_state_dict(saved(donor.state_dict()))
    guard.check()
    still_steps(net, method)


@pytest.mark.parametrize(
    "name, path",
    [
        ("uw", ("scalarizer", "log_var")),
        ("imtl_l", ("scalarizer", "log_scale")),
        ("gradnorm", ("loss_weights",)),
        ("famo", ("scalarizer", "_w")),
    ],
)
def test_checkpoint_with_a_balancer_state_that_does_not_fit_is_refused(name: str, path: tuple[str, ...]) -> None:
    net, method = trained(name)
    state = saved(method.state_dict())
    holder = state["balancer"]
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = torch.zeros(7)
    guard = unchanged(net, method)
    with pytest.raises(CheckpointError, match="balancer state does not fit"):
        method.load_state_dict(state)
    guard.check()
    still_steps(net, method)


MALFORMED: list[tuple[str, Callable[[dict], Any]]] = [
    ("not a dict", lambda s: [s]),
    ("empty dict", lambda s: {}),
    ("no optimizer", lambda s: {k: v for k, v in s.items() if k != "optimizer"}),
    ("negative steps", lambda s: {**s, "steps_taken": -1}),
    ("steps as text", lambda s: {**s, "steps_taken": "2"}),
    ("task count 0", lambda s: {**s, "num_tasks": 0, "task_names": []}),
    ("duplicate task names", lambda s: {**s, "task_names": ["left", "left", "sum"]}),
    ("optimizer state not a state", lambda s: {**s, "optimizer": "adam"}),
]


@pytest.mark.parametrize("kind, corrupt", MALFORMED, ids=[k for k, _ in MALFORMED])
@pytest.mark.parametrize("name", ALL)
def test_malformed_checkpoint_is_refused(name: str, kind: str, corrupt: Callable[[dict], Any]) -> None:
    net, method = trained(name)
    state = corrupt(saved(method.state_dict()))
    guard = unchanged(net, method)
    with pytest.raises(CheckpointError):
        method.load_state_dict(state)
    guard.check()


def test_mao_checkpoint_of_a_smaller_model_no_longer_crashes_the_next_step() -> None:
    # Was: loaded silently, then the fused CPU kernel read past the moments (segmentation fault).
    small, big = Net(hidden=10), Net(hidden=400)
    small_opt, big_opt = MAO(small.parameters(), lr=1e-2), MAO(big.parameters(), lr=1e-2)
    for s in range(2):
        small_opt.step(small.losses(*data(3, s)))
        big_opt.step(big.losses(*data(3, s)))
    guard = unchanged(big, big_opt)
    with pytest.raises(CheckpointError, match=r"exp_avg has shape \(3, 10, 4\), expected \(3, 400, 4\)"):
        big_opt.load_state_dict(saved(small_opt.state_dict()))
    guard.check()
    big_opt.step(big.losses(*data(3, 9)))  # and it steps on


def mao_trained(groups: bool = False, **kwargs: Any) -> tuple[Net, MAO]:
    net = Net()
    params: Any = net.parameters()
    if groups:
        params = [{"params": list(net.trunk.parameters())}, {"params": list(net.heads.parameters()), "lr": 3e-3}]
    opt = MAO(params, lr=1e-2, **kwargs)
    for s in range(2):
        opt.step(named(net, s)())
    return net, opt


def _two_groups(net: Net) -> list[dict]:
    return [{"params": list(net.trunk.parameters())}, {"params": list(net.heads.parameters())}]


def _adam_state(net: Net) -> dict:
    adam = torch.optim.Adam(_two_groups(net))
    sum(net.losses(*data())).backward()
    adam.step()
    return adam.state_dict()


def _mtadam_state(net: Net) -> dict:
    from mao_lab import compute_task_gradients

    mtadam = MTAdam(_two_groups(net))
    mtadam.apply_task_gradients(compute_task_gradients(net.losses(*data()), list(net.parameters())))
    return mtadam.state_dict()


def _with_group(state: dict, **changes: Any) -> dict:
    state = copy.deepcopy(state)
    state["param_groups"][-1].update(changes)
    return state


MAO_CHECKPOINTS: list[tuple[str, Callable[[Net, MAO], Any], str]] = [
    ("torch Adam's state", lambda net, opt: _adam_state(Net()), "saved by another optimizer"),
    ("MTAdam's state", lambda net, opt: _mtadam_state(Net()), "MTAdam state cannot be loaded into MAO"),
    (
        "one group for two",
        lambda net, opt: mao_trained()[1].state_dict(),
        "1 parameter groups saved, the optimizer has 2",
    ),
    ("2 tasks for 3", lambda net, opt: _two_task_mao_state(), "stepped with 3 tasks; the state is for 2"),
    ("lr nan in group 2", lambda net, opt: _with_group(opt.state_dict(), lr=float("nan")), "group 1.*'lr'"),
    ("weight_decay inf", lambda net, opt: _with_group(opt.state_dict(), weight_decay=float("inf")), "weight_decay"),
    ("betas out of range", lambda net, opt: _with_group(opt.state_dict(), betas=(0.9, 1.5)), "betas"),
    ("task indices past T", lambda net, opt: _bump_tasks(opt.state_dict()), "tasks"),
    ("not a state_dict", lambda net, opt: {"weights": 1}, "not an optimizer state_dict"),
]


def _two_task_mao_state() -> dict:
    net = Net(num_tasks=2)
    groups = [
        {"params": list(net.trunk.parameters())},
        {"params": list(net.heads.parameters()) + _padding(), "lr": 3e-3},
    ]
    opt = MAO(groups, lr=1e-2)
    opt.step(net.losses(*data(2)))
    return opt.state_dict()


def _padding() -> list[Tensor]:
    # Two more head parameters, so that the 2-task layout has as many parameters per group as the 3-task one.
    return [
        torch.zeros(1, 5, dtype=torch.float64, requires_grad=True),
        torch.zeros(1, dtype=torch.float64, requires_grad=True),
    ]


def _bump_tasks(state: dict) -> dict:
    state = copy.deepcopy(state)
    entry = state["state"][0]
    entry["tasks"] = tuple(k + 5 for k in entry["tasks"])
    return state


@pytest.mark.parametrize("kind, make_state, message", MAO_CHECKPOINTS, ids=[k for k, _, _ in MAO_CHECKPOINTS])
def test_mao_refuses_checkpoints_that_do_not_fit(kind: str, make_state: Callable, message: str) -> None:
    net, opt = mao_trained(groups=True)
    state = make_state(net, opt)
    guard = unchanged(net, opt)
    with pytest.raises(CheckpointError, match=message):
        opt.load_state_dict(state)
    guard.check()
    opt.step(named(net, 7)())


def test_method_checkpoint_round_trip_records_the_method_and_tasks() -> None:
    net, method = trained("pcgrad")
    state = saved(method.state_dict())
    assert state["method"] == "pcgrad" and state["task_names"] == list(NAMES)
    fresh = make("pcgrad", Net().parameters(), lr=1e-2)
    fresh.load_state_dict(state)
    assert fresh.task_names == NAMES and fresh.num_tasks == 3


# == 2. task identity =====================================================================================


@pytest.mark.parametrize("name", ALL)
def test_the_same_tasks_in_another_order_are_the_same_tasks(name: str) -> None:
    # State follows the name: a run whose dict comes in a new order at every step trains exactly as one
    # whose dict keeps the order.  Before, per-task state silently swapped tasks.
    orders = [NAMES, ("sum", "left", "right"), ("right", "sum", "left")]
    runs = []
    for shuffle in (False, True):
        net = Net()
        method = make(name, net.parameters(), lr=1e-2)
        for s in range(5):
            losses = method.step(named(net, s, orders[s % 3] if shuffle else NAMES))
        runs.append((net, method, losses))
    (net_a, method_a, losses_a), (net_b, method_b, losses_b) = runs
    for p, q in zip(net_a.parameters(), net_b.parameters()):
        assert_same(p.detach(), q.detach())
    assert_same(method_a.state_dict(), method_b.state_dict())
    assert_same(losses_a, losses_b)  # returned in the order of method.task_names
    assert method_b.task_names == NAMES


@pytest.mark.parametrize("change", ["renamed", "new", "missing"])
@pytest.mark.parametrize("name", ALL)
def test_renamed_new_or_missing_task_is_refused(name: str, change: str) -> None:
    net, method = trained(name)
    closure = {
        "renamed": named(net, 3, rename={"sum": "product"}),
        "new": lambda: {**named(net, 3)(), "extra": net.losses(*data(3, 3))[0] * 2},
        "missing": named(net, 3, ("left", "right")),
    }[change]
    guard = unchanged(net, method)
    with pytest.raises(TaskInputError, match="product" if change == "renamed" else "3 tasks"):
        method.step(closure)
    guard.check()


@pytest.mark.parametrize("name", ALL)
def test_task_names_that_collide_as_strings_are_refused(name: str) -> None:
    net = Net()
    method = make(name, net.parameters(), lr=1e-2)
    guard = unchanged(net, method)
    losses = net.losses(*data())
    with pytest.raises(TaskInputError, match="distinct"):
        method.step(lambda: {1: losses[0], "1": losses[1], "sum": losses[2]})
    guard.check()
    assert method.task_names is None


def test_mao_refuses_task_names_that_collide_and_a_closure_that_raises_changes_nothing() -> None:
    net, opt = mao_trained()
    guard = unchanged(net, opt)
    losses = net.losses(*data())
    with pytest.raises(TaskInputError, match="distinct"):
        opt.step({1: losses[0], "1": losses[1], "sum": losses[2]})

    def failing() -> dict:
        raise RuntimeError("the data loader broke")

    with pytest.raises(RuntimeError, match="data loader"):
        opt.step(failing)
    guard.check()


@pytest.mark.parametrize("name", ALL)
def test_a_resumed_method_matches_tasks_by_name(name: str) -> None:
    net, method = trained(name)
    state, weights = saved(method.state_dict()), [p.detach().clone() for p in net.parameters()]
    method.step(named(net, 4))
    resumed_net = Net()
    with torch.no_grad():
        for p, w in zip(resumed_net.parameters(), weights):
            p.copy_(w)
    resumed = make(name, resumed_net.parameters(), lr=1e-2)
    resumed.load_state_dict(state)
    resumed.step(named(resumed_net, 4, ("right", "sum", "left")))
    for p, q in zip(net.parameters(), resumed_net.parameters()):
        assert_same(p.detach(), q.detach())


def test_mao_matches_losses_and_gradients_by_name() -> None:
    net_a, opt_a = mao_trained()
    net_b, opt_b = mao_trained()
    opt_a.step(named(net_a, 5)())
    opt_b.step(named(net_b, 5, ("sum", "right", "left"))())
    assert_same(opt_a.state_dict(), opt_b.state_dict())
    # Gradients computed elsewhere, with their names, in another order: the same step.
    params_a, params_b = list(net_a.parameters()), list(net_b.parameters())
    grads_a = [
        torch.autograd.grad(loss, params_a, retain_graph=True, allow_unused=True) for loss in net_a.losses(*data(3, 6))
    ]
    grads_b = [
        torch.autograd.grad(loss, params_b, retain_graph=True, allow_unused=True) for loss in net_b.losses(*data(3, 6))
    ]
    opt_a.step(task_grads=TaskGradients.from_per_task(grads_a, params_a, NAMES))
    order = [2, 0, 1]
    opt_b.step(task_grads=TaskGradients.from_per_task([grads_b[k] for k in order], params_b, [NAMES[k] for k in order]))
    assert_same(opt_a.state_dict(), opt_b.state_dict())
    for p, q in zip(params_a, params_b):
        assert_same(p.detach(), q.detach())
    guard = unchanged(net_b, opt_b)
    with pytest.raises(TaskInputError, match="new 'product'"):
        opt_b.step(task_grads=TaskGradients.from_per_task(grads_b, params_b, ("left", "right", "product")))
    with pytest.raises(TaskInputError, match="new 'product'"):
        opt_b.step(named(net_b, 7, rename={"sum": "product"})())
    guard.check()


# == 3. one atomic step, whatever the input ===============================================================


def _gradients(net: Net, step: int = 6) -> tuple[list[Tensor], list[list[Tensor | None]]]:
    params = list(net.parameters())
    return params, [
        list(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))
        for loss in net.losses(*data(3, step))
    ]


def _bad_task_grads(kind: str, net: Net) -> TaskGradients:
    params, grads = _gradients(net)
    last = len(params) - 1  # the last parameter: everything before it would update fine
    if kind in ("dtype", "device"):
        change = (lambda g: g.float()) if kind == "dtype" else (lambda g: torch.zeros_like(g, device="meta"))
        # Stacked by hand, past from_per_task's checks, as code building TaskGradients itself would.
        tasks = [tuple(k for k in range(3) if grads[k][i] is not None) for i in range(len(params))]
        stacks = [torch.stack([grads[k][i] for k in ks]) for i, ks in enumerate(tasks)]
        stacks[last] = change(stacks[last])
        return TaskGradients(NAMES, tuple(params), tuple(tasks), tuple(stacks))
    if kind == "foreign parameter":
        stranger = torch.zeros_like(params[last], requires_grad=True)
        return TaskGradients.from_per_task(grads, params[:-1] + [stranger], NAMES)
    if kind == "parameter twice":
        return TaskGradients.from_per_task([g + [g[0]] for g in grads], params + [params[0]], NAMES)
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("dtype", "dtype torch.float32, expected the parameter's torch.float64"),
        ("device", "is on meta"),
        ("foreign parameter", "not one this optimizer updates"),
        ("parameter twice", "listed twice"),
    ],
)
def test_mao_refuses_task_grads_that_do_not_fit_before_changing_anything(kind: str, message: str) -> None:
    net, opt = mao_trained()
    guard = unchanged(net, opt)
    with pytest.raises(TaskInputError, match=message):
        opt.step(task_grads=_bad_task_grads(kind, net))
    guard.check()
    opt.step(named(net, 8)())


@pytest.mark.parametrize("kind", ["dtype", "shape"])
def test_from_per_task_refuses_gradients_of_another_shape_or_dtype(kind: str) -> None:
    net = Net()
    params, grads = _gradients(net)
    grads[1][0] = grads[1][0].float() if kind == "dtype" else grads[1][0][:, :2]
    with pytest.raises(TaskInputError, match=f"task 'task1' \\(index 1\\): the tensor of parameter 0 has {kind}"):
        TaskGradients.from_per_task(grads, params)


def test_mtadam_refuses_task_grads_of_another_dtype() -> None:
    net = Net()
    opt = MTAdam(list(net.parameters()), lr=1e-2)
    guard = Unchanged(list(net.parameters()), opt.state_dict)
    with pytest.raises(TaskInputError, match="dtype"):
        opt.apply_task_gradients(_bad_task_grads("dtype", net))
    guard.check()


BAD_VALUES = [
    ("lr", float("inf"), "'lr' must be a finite number"),
    ("lr", float("nan"), "'lr' must be a finite number"),
    ("lr", True, "'lr' must be a number, got True"),
    ("lr", "1e-3", "'lr' must be a number, got '1e-3'"),
    ("lr", None, "'lr' must be a number, got None"),
    ("lr", -1e-3, "'lr' must be >= 0"),
    ("weight_decay", float("inf"), "'weight_decay' must be a finite number"),
    ("weight_decay", float("nan"), "'weight_decay' must be a finite number"),
    ("eps", float("inf"), "'eps' must be a finite number"),
    ("betas", (0.9, float("nan")), "'betas' must be a finite number"),
    ("betas", 0.9, "'betas' must be a pair"),
]


@pytest.mark.parametrize("setting, value, message", BAD_VALUES, ids=[f"{s}={v!r}" for s, v, _ in BAD_VALUES])
@pytest.mark.parametrize("name", ALL)
def test_bad_base_hyperparameter_is_refused_naming_the_setting(
    name: str, setting: str, value: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        make(name, Net().parameters(), **{setting: value})


@pytest.mark.parametrize(
    "setting, value, message",
    BAD_VALUES
    + [
        ("task_weights", [1.0, float("inf"), 1.0], "'task_weights' must be a finite number"),
        ("task_weights", "abc", "'task_weights' must be None or a non-empty list"),
        ("reduction", "max", "'reduction' must be one of 'sum', 'mean'"),
    ],
    ids=lambda v: repr(v)[:20],
)
def test_mao_refuses_bad_hyperparameters_naming_the_setting(setting: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        MAO(Net().parameters(), **{setting: value})
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        MAO([{"params": list(Net().parameters()), setting: value}])


METHOD_SPECIFIC = [
    ("cagrad", "c", "0.4", "'c' must be a number"),
    ("cagrad", "c", float("inf"), "'c' must be a finite number"),
    ("dwa", "temperature", None, "'temperature' must be a number"),
    ("dwa", "steps_per_epoch", 2.0, "'steps_per_epoch' must be a positive integer"),
    ("dwa", "steps_per_epoch", True, "'steps_per_epoch' must be a positive integer"),
    ("famo", "min_losses", "ab", "'min_losses' must be None or a non-empty list"),
    ("famo", "weights_lr", float("nan"), "'weights_lr' must be a finite number"),
    ("gradnorm", "alpha", float("nan"), "'alpha' must be a finite number"),
    ("gradnorm", "shared_param", True, "'shared_param' must be None or a non-negative integer"),
    ("gradvac", "beta", "half", "'beta' must be a number"),
    ("nash_mtl", "optim_niter", 2.0, "'optim_niter' must be a positive integer"),
    ("aligned_mtl", "scale_mode", 1, "'scale_mode' must be one of"),
    ("mtadam", "beta3", float("nan"), "'beta3' must be a finite number"),
    ("grouping", "redraw", 1, "'redraw' must be True or False"),
    ("grouping", "seed", 1.5, "'seed' must be a non-negative integer"),
    ("ius", "group_size", True, "'group_size' must be a positive integer"),
    ("sum", "optimizer", "adamw", "'optimizer' must be one of 'adam', 'sgd'"),
    ("mao", "task_weights", [1.0, -1.0, 1.0], "'task_weights' must be >= 0"),
]


@pytest.mark.parametrize(
    "name, setting, value, message", METHOD_SPECIFIC, ids=[f"{n}-{s}={v!r}" for n, s, v, _ in METHOD_SPECIFIC]
)
def test_bad_method_hyperparameter_is_refused_naming_the_setting(
    name: str, setting: str, value: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make(name, Net().parameters(), **{setting: value})


@pytest.mark.parametrize("value", [0, True, 2.5, "3"])
@pytest.mark.parametrize("name", ALL)
def test_bad_num_tasks_is_refused(name: str, value: Any) -> None:
    with pytest.raises(ValueError, match="num_tasks"):
        make(name, Net().parameters(), num_tasks=value)


@pytest.mark.parametrize("name", ALL)
def test_a_parameter_listed_twice_is_refused(name: str) -> None:
    net = Net()
    params = list(net.parameters())
    with pytest.raises(ValueError, match="parameter 10 .* is listed twice \\(it is parameter 0\\)"):
        make(name, params + [params[0]])


@pytest.mark.parametrize("layout", ["one group", "two groups"])
def test_mao_refuses_a_parameter_listed_twice(layout: str) -> None:
    params = list(Net().parameters())
    groups: Any = params + [params[0]] if layout == "one group" else [{"params": params}, {"params": [params[0]]}]
    with pytest.raises(ValueError, match="listed twice|more than one parameter group"):
        MAO(groups)


@pytest.mark.parametrize(
    "setting, value",
    [("lr", float("nan")), ("lr", True), ("weight_decay", float("inf")), ("eps", -1.0), ("task_weights", (1.0, 2.0))],
)
def test_mao_refuses_a_group_setting_changed_to_a_bad_value_before_stepping(setting: str, value: Any) -> None:
    # A scheduler or a user may write into param_groups between steps: the step checks before moving.
    net, opt = mao_trained(groups=True)
    opt.param_groups[1][setting] = value
    guard = Unchanged(list(net.parameters()), lambda: {"state": opt.state_dict()["state"]})
    with pytest.raises(ValueError, match=setting if setting != "task_weights" else "task_weights has 2 entries"):
        opt.step(named(net, 5)())
    guard.check()


@pytest.mark.parametrize("name", ALL)
def test_not_a_closure_or_a_single_tensor_of_losses_is_refused(name: str) -> None:
    net, method = trained(name)
    guard = unchanged(net, method)
    with pytest.raises(TypeError, match="closure"):
        method.step(named(net)())  # the dict itself, not a closure
    with pytest.raises(TaskInputError, match="single tensor"):
        method.step(lambda: torch.stack(net.losses(*data())))
    guard.check()


# -- validate before mutate: the roll-back copies only what a step may change before its last check ----------


@pytest.mark.parametrize("name, hyper", [("ius", {"group_size": 3}), ("grouping", {"group_size": 5}), ("sus", {})])
def test_one_group_steps_once_and_a_failed_step_still_changes_nothing(name: str, hyper: dict) -> None:
    """With one group the only optimizer step comes after every check: no whole-state copy, same guarantee."""
    net, method = trained(name, **hyper)
    assert not method.moves_parameters_during_step
    guard = unchanged(net, method)

    def poisoned() -> dict[str, Tensor]:  # finite losses, a NaN gradient: found only after the backward pass
        losses = named(net, 3)()
        weight = next(net.parameters())
        nan_slope = 0.0 * (weight - weight.detach()).abs().sqrt().sum()  # value 0, gradient 0 * inf
        return {**losses, "sum": losses["sum"] + nan_slope}

    with pytest.raises(TaskInputError):
        method.step(poisoned)
    guard.check()
    still_steps(net, method)


def test_several_groups_still_copy_the_whole_state_and_a_late_failure_changes_nothing() -> None:
    net, method = trained("ius")  # group_size 1: three sub-steps, the third forward pass fails
    assert method.moves_parameters_during_step
    guard = unchanged(net, method)
    calls = []

    def fails_at_the_third_pass() -> dict[str, Tensor]:
        calls.append(None)
        if len(calls) == 3:
            raise RuntimeError("the third forward pass failed")
        return named(net, 3)()

    with pytest.raises(RuntimeError, match="third forward pass"):
        method.step(fails_at_the_third_pass)
    guard.check()
    still_steps(net, method)


@pytest.mark.parametrize("name, entry", [("grouping", "generator"), ("ius", "partition"), ("pcgrad", "generator")])
def test_checkpoint_missing_an_entry_of_the_method_is_refused(name: str, entry: str) -> None:
    net, method = trained(name)
    state = saved(method.state_dict())
    del state[entry]
    guard = unchanged(net, method)
    with pytest.raises(CheckpointError, match=f"lacks the entries {entry}"):
        method.load_state_dict(state)
    guard.check()
