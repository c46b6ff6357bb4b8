"""Properties of the MAO optimizer, each checked against an independent computation."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import Tensor, nn

from mao_lab import MAO, TaskGradients, TaskInputError, compute_task_gradients

# -- a small multi-task network and a reference implementation written from the paper's rule ----------


class Net(nn.Module):
    """A shared trunk and one linear head per task."""

    def __init__(self, num_tasks: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(6, 1) for _ in range(num_tasks))
        self.to(dtype)

    def losses(self, x: Tensor, y: Tensor, scales: list[float] | None = None) -> list[Tensor]:
        z = self.trunk(x)
        scales = scales or [1.0] * len(self.heads)
        return [s * ((head(z).squeeze(-1) - y[:, k]) ** 2).mean() for k, (s, head) in enumerate(zip(scales, self.heads))]


def batch(num_tasks: int, step: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(16, 5, generator=g, dtype=dtype)
    y = torch.randn(16, num_tasks, generator=g, dtype=dtype) * torch.arange(1, num_tasks + 1, dtype=dtype)
    return x, y


def reference_mao_step(params, per_task_grads, state, lr, betas, eps, weight_decay=0.0, weights=None, mean=False):
    """MAO exactly as docs/references.md §1 writes it: a Python loop over parameters and tasks, zeros for
    tasks that do not reach a parameter, and a step counter per parameter, shared by its tasks, that
    advances only when some task reaches the parameter (as Adam's advances only when p.grad is set)."""
    b1, b2 = betas
    num_tasks = len(per_task_grads)
    with torch.no_grad():
        for i, p in enumerate(params):
            if all(per_task_grads[k][i] is None for k in range(num_tasks)):
                continue  # no task reached p: left alone, its step count included
            state[("t", i)] = t = state.get(("t", i), 0) + 1
            update = torch.zeros_like(p)
            for k in range(num_tasks):
                g = per_task_grads[k][i]
                g = torch.zeros_like(p) if g is None else g
                m, v = state.setdefault((i, k), (torch.zeros_like(p), torch.zeros_like(p)))
                m = b1 * m + (1 - b1) * g
                v = b2 * v + (1 - b2) * g * g
                state[(i, k)] = (m, v)
                u = (m / (1 - b1**t)) / (torch.sqrt(v / (1 - b2**t)) + eps)
                update += (1.0 if weights is None else weights[k]) * u
            if mean:
                update /= num_tasks
            p.mul_(1 - lr * weight_decay)
            p.sub_(lr * update)


def per_task_grads(losses: list[Tensor], params: list[Tensor]) -> list[list[Tensor | None]]:
    return [list(torch.autograd.grad(l, params, retain_graph=True, allow_unused=True)) for l in losses]


def run_mao(net: Net, steps: int, scales=None, order=None, **kwargs) -> list[Tensor]:
    opt = MAO(net.parameters(), **kwargs)
    num_tasks = len(net.heads)
    for s in range(steps):
        x, y = batch(num_tasks, s, next(net.parameters()).dtype)
        losses = net.losses(x, y, scales)
        opt.step([losses[k] for k in (order or range(num_tasks))])
    return [p.detach().clone() for p in net.parameters()]


# -- one task is Adam ----------------------------------------------------------------------------------


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_one_task_equals_adam_and_adamw(weight_decay: float) -> None:
    net_mao, net_adam = Net(1, dtype=torch.float32), Net(1, dtype=torch.float32)
    mao = MAO(net_mao.parameters(), lr=1e-2, weight_decay=weight_decay)
    adam_class = torch.optim.AdamW if weight_decay else torch.optim.Adam
    adam = adam_class(net_adam.parameters(), lr=1e-2, weight_decay=weight_decay, foreach=False)
    for s in range(100):
        x, y = batch(1, s, torch.float32)
        mao.step(net_mao.losses(x, y))
        adam.zero_grad()
        net_adam.losses(x, y)[0].backward()
        adam.step()
    for p, q in zip(net_mao.parameters(), net_adam.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    # and the trajectory actually moved (the test would pass trivially otherwise)
    assert not torch.allclose(next(net_mao.parameters()), next(Net(1, dtype=torch.float32).parameters()))


@pytest.mark.parametrize("num_tasks", [1, 2, 3, 5, 16])
@pytest.mark.parametrize(
    "options", [{}, {"weight_decay": 0.05}, {"reduction": "mean"}, {"weights": True}, {"skips": True}]
)
def test_matches_reference_rule_for_any_number_of_tasks(num_tasks: int, options: dict) -> None:
    weights = [0.5 + k for k in range(num_tasks)] if options.get("weights") else None
    kwargs = dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=options.get("weight_decay", 0.0))
    net, ref_net = Net(num_tasks), Net(num_tasks)
    opt = MAO(net.parameters(), reduction=options.get("reduction", "sum"), task_weights=weights, **kwargs)
    ref_state: dict = {}
    ref_params = list(ref_net.parameters())
    params = list(net.parameters())
    for s in range(20):
        x, y = batch(num_tasks, s)
        if options.get("skips") and s % 3 == 1:
            # The last task reaches nothing at this step, so its head is reached by no task: MAO leaves it
            # alone and its step count behind the other parameters' (which a global counter would miss).
            grads = per_task_grads(net.losses(x, y), params)
            grads[-1] = [None] * len(params)
            opt.step(task_grads=TaskGradients.from_per_task(grads, params))
        else:
            opt.step(net.losses(x, y))
        grads = per_task_grads(ref_net.losses(x, y), ref_params)
        if options.get("skips") and s % 3 == 1:
            grads[-1] = [None] * len(ref_params)
        reference_mao_step(ref_params, grads, ref_state, weights=weights, mean=options.get("reduction") == "mean", **kwargs)
    for p, q in zip(net.parameters(), ref_params):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fast_path", ["fused", "foreach"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("options", [{}, {"weight_decay": 0.05}, {"reduction": "mean"}, {"weights": True}])
def test_the_readable_rule_and_the_fast_paths_agree(
    options: dict, dtype: torch.dtype, fast_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The library keeps MAO's rule twice: a plain per-tensor loop (taken when per-task updates are kept,
    # as for a recorder) and the fast paths: fused Adam passes on the CPU, stacked foreach ops elsewhere
    # (CUDA), forced here on the CPU.  Both run on the same gradients, with a task that misses some steps
    # (zeros in its moments) and one that joins late (widened state).
    if fast_path == "foreach":
        import mao_lab._mao

        monkeypatch.setattr(mao_lab._mao, "_fusable", lambda slot, hyper: False)
    num_tasks = 3
    weights = [0.5, 2.0, 1.5] if options.get("weights") else None
    kwargs = dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=options.get("weight_decay", 0.0),
                  reduction=options.get("reduction", "sum"), task_weights=weights)
    plain_net, fast_net = Net(num_tasks, dtype=dtype), Net(num_tasks, dtype=dtype)
    plain, fast = MAO(plain_net.parameters(), **kwargs), MAO(fast_net.parameters(), **kwargs)
    for s in range(12):
        x, y = batch(num_tasks, s, dtype)
        for net, opt, keep in ((plain_net, plain, True), (fast_net, fast, False)):
            params = list(net.parameters())
            grads = per_task_grads(net.losses(x, y), params)
            if s % 3 == 1:
                grads[1] = [None] * len(params)  # task 1 reaches nothing at this step
            if s < 4:
                grads[2] = [None] * len(params)  # task 2 joins at step 4
            parts = opt._apply_task_gradients(TaskGradients.from_per_task(grads, params), keep_task_updates=keep)
            assert (parts is not None) == keep
    tolerance = dict(rtol=1e-12, atol=1e-14) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-7)
    for p, q in zip(plain_net.parameters(), fast_net.parameters()):
        torch.testing.assert_close(p, q, **tolerance)
    for p, q in zip(plain_net.parameters(), fast_net.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(plain.state[p][key], fast.state[q][key], **tolerance)
    assert not torch.equal(next(plain_net.parameters()), next(Net(num_tasks, dtype=dtype).parameters()))


# -- invariances -------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1e-3, 0.37, 1e3])
def test_rescaling_a_task_loss_leaves_mao_unchanged_but_not_adam(scale: float) -> None:
    def trajectory(scales, optimizer: str) -> Tensor:
        net = Net(3, seed=1)
        opt = MAO(net.parameters(), lr=1e-2, eps=1e-14) if optimizer == "mao" else torch.optim.Adam(net.parameters(), lr=1e-2, eps=1e-14)
        for s in range(30):
            x, y = batch(3, s)
            losses = net.losses(x, y, scales)
            if optimizer == "mao":
                opt.step(losses)
            else:
                opt.zero_grad()
                sum(losses).backward()
                opt.step()
        return torch.cat([p.detach().flatten() for p in net.parameters()])

    base_mao, scaled_mao = trajectory([1, 1, 1], "mao"), trajectory([1, scale, 1], "mao")
    torch.testing.assert_close(scaled_mao, base_mao, rtol=1e-4, atol=1e-8)
    base_adam, scaled_adam = trajectory([1, 1, 1], "adam"), trajectory([1, scale, 1], "adam")
    start = torch.cat([p.detach().flatten() for p in Net(3, seed=1).parameters()])
    # Adam on the summed loss moves visibly differently: by more than 1% of the distance travelled.
    assert (scaled_adam - base_adam).norm() > 0.01 * (base_adam - start).norm()


def test_permuting_tasks_leaves_the_trajectory_unchanged() -> None:
    base = run_mao(Net(4), 25, lr=1e-2)
    permuted = run_mao(Net(4), 25, lr=1e-2, order=[2, 0, 3, 1])
    for p, q in zip(base, permuted):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_a_head_reached_by_one_task_gets_exactly_adams_update() -> None:
    net = Net(3, dtype=torch.float32)
    head = net.heads[1]
    shadow = [p.detach().clone().requires_grad_(True) for p in head.parameters()]
    adam = torch.optim.Adam(shadow, lr=1e-2)
    opt = MAO(net.parameters(), lr=1e-2)
    for s in range(30):
        x, y = batch(3, s, torch.float32)
        losses = net.losses(x, y)
        head_grads = torch.autograd.grad(losses[1], list(head.parameters()), retain_graph=True)
        for q, g in zip(shadow, head_grads):
            q.grad = g.clone()
        adam.step()
        opt.step(losses)
        for p, q in zip(head.parameters(), shadow):
            assert torch.equal(p, q), "the head's MAO update differs from Adam's"
    # Memory: the head keeps Adam's state (one row), shared parameters one row per task.
    assert opt.state[head.weight]["exp_avg"].shape == (1, *head.weight.shape)
    assert opt.state[net.trunk[0].weight]["exp_avg"].shape == (3, *net.trunk[0].weight.shape)


# -- parameter groups, frozen parameters, schedulers ------------------------------------------------------


def test_groups_frozen_parameters_and_tasks_that_reach_no_parameter_of_a_group() -> None:
    net, ref_net = Net(3), Net(3)
    for n in (net, ref_net):
        n.trunk[0].bias.requires_grad_(False)  # frozen
    groups = [
        {"params": list(net.trunk.parameters()), "lr": 1e-2},
        {"params": list(net.heads[0].parameters()) + list(net.heads[1].parameters()), "lr": 3e-2},
        {"params": list(net.heads[2].parameters()), "lr": 1e-3},  # tasks 0 and 1 reach nothing here
    ]
    opt = MAO(groups)
    frozen_before = net.trunk[0].bias.detach().clone()
    ref_groups = [list(ref_net.trunk.parameters()), list(ref_net.heads[0].parameters()) + list(ref_net.heads[1].parameters()), list(ref_net.heads[2].parameters())]
    ref_states: list[dict] = [{}, {}, {}]
    for s in range(15):
        x, y = batch(3, s)
        opt.step(net.losses(x, y))
        ref_losses = ref_net.losses(x, y)
        for params, state, lr in zip(ref_groups, ref_states, [1e-2, 3e-2, 1e-3]):
            trainable = [p for p in params if p.requires_grad]
            reference_mao_step(trainable, per_task_grads(ref_losses, trainable), state, lr, (0.9, 0.999), 1e-8)
    assert torch.equal(net.trunk[0].bias, frozen_before)
    assert net.trunk[0].bias not in opt.state
    for p, q in zip(net.parameters(), ref_net.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_lr_scheduler_drives_the_learning_rate() -> None:
    net, ref_net = Net(2), Net(2)
    opt = MAO(net.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    ref_state: dict = {}
    ref_params = list(ref_net.parameters())
    for s in range(20):
        x, y = batch(2, s)
        opt.step(net.losses(x, y))
        reference_mao_step(ref_params, per_task_grads(ref_net.losses(x, y), ref_params), ref_state, 1e-2 * 0.5 ** (s // 5), (0.9, 0.999), 1e-8)
        scheduler.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5**4)
    for p, q in zip(net.parameters(), ref_params):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


# -- state_dict --------------------------------------------------------------------------------------------


def test_state_dict_resume_is_bit_for_bit() -> None:
    straight = run_mao(Net(3, dtype=torch.float32), 20, lr=1e-2, weight_decay=0.01)

    net = Net(3, dtype=torch.float32)
    opt = MAO(net.parameters(), lr=1e-2, weight_decay=0.01)
    for s in range(10):
        opt.step(net.losses(*batch(3, s, torch.float32)))
    buffer = io.BytesIO()
    torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)

    resumed_net = Net(3, seed=99, dtype=torch.float32)  # different initial values, overwritten by the load
    resumed_net.load_state_dict(saved["model"])
    resumed = MAO(resumed_net.parameters(), lr=1e-2, weight_decay=0.01)
    resumed.load_state_dict(saved["opt"])
    assert resumed.num_tasks == 3
    for s in range(10, 20):
        resumed.step(resumed_net.losses(*batch(3, s, torch.float32)))
    for p, q in zip(straight, resumed_net.parameters()):
        assert torch.equal(p, q)


# -- gradients from elsewhere ------------------------------------------------------------------------------


def test_precomputed_gradients_and_features_paths_give_the_same_step() -> None:
    nets = [Net(3) for _ in range(4)]
    opts = [MAO(n.parameters(), lr=1e-2) for n in nets]
    for s in range(5):
        x, y = batch(3, s)
        opts[0].step(nets[0].losses(x, y))
        # gradients computed outside the optimizer
        params = list(nets[1].parameters())
        opts[1].step(task_grads=TaskGradients.from_per_task(per_task_grads(nets[1].losses(x, y), params), params))
        # stopping at the shared features, looped and batched (vmap)
        for net, opt, batched in ((nets[2], opts[2], False), (nets[3], opts[3], True)):
            z = net.trunk(x)
            losses = [((h(z).squeeze(-1) - y[:, k]) ** 2).mean() for k, h in enumerate(net.heads)]
            opt.step(losses, features=z, batched=batched)
    for others in nets[1:]:
        for p, q in zip(nets[0].parameters(), others.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


class KeepEveryRecord:
    """An observer that keeps every step's record, as a recorder holding them in memory would."""

    def __init__(self) -> None:
        self.records: list = []

    def wants_record(self) -> bool:
        return True

    def __call__(self, record) -> None:
        self.records.append(record)


def test_kept_records_are_not_overwritten_by_later_steps() -> None:
    # MAO keeps the last step's gradient buffers to reuse their memory; a record someone keeps must not
    # be among the reused ones.  Compare each kept record, after all steps, with gradients computed
    # independently at that step's parameters.
    net, ref = Net(3), Net(3)
    opt = MAO(net.parameters(), lr=1e-2)
    ref_opt = MAO(ref.parameters(), lr=1e-2)
    observer = KeepEveryRecord()
    opt.add_observer(observer)
    expected = []
    for s in range(4):
        x, y = batch(3, s)
        params = list(ref.parameters())
        grads = per_task_grads(ref.losses(x, y), params)
        expected.append(grads)
        ref_opt.step(task_grads=TaskGradients.from_per_task(grads, params))
        opt.step(net.losses(x, y))
    assert len(observer.records) == 4
    for record, grads in zip(observer.records, expected):
        for k in range(3):
            for got, want in zip(record.task_grads.for_task(k), grads[k]):
                if want is None:
                    assert got is None
                else:
                    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_gradients_from_torchjd_mtl_backward() -> None:
    from torchjd.autojac import mtl_backward

    net, ref = Net(2), Net(2)
    opt, ref_opt = MAO(net.parameters(), lr=1e-2), MAO(ref.parameters(), lr=1e-2)
    for s in range(5):
        x, y = batch(2, s)
        z = net.trunk(x)
        losses = [((h(z).squeeze(-1) - y[:, k]) ** 2).mean() for k, h in enumerate(net.heads)]
        mtl_backward(losses, features=z)
        shared = list(net.trunk.parameters())
        jac = TaskGradients.from_jacobians(shared)
        heads = [list(h.parameters()) for h in net.heads]
        per_task = [[None] * len(shared) + [p.grad if k == j else None for j in range(2) for p in heads[j]] for k in range(2)]
        for k in range(2):
            for i in range(len(shared)):
                per_task[k][i] = jac.grads[i][k]
        opt.step(task_grads=TaskGradients.from_per_task(per_task, shared + [p for h in heads for p in h]))
        for p in net.parameters():
            p.grad = None
            if hasattr(p, "jac"):
                del p.jac
        ref_opt.step(ref.losses(x, y))
    for p, q in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-8, atol=1e-10)


def test_compute_task_gradients_matches_autograd() -> None:
    net = Net(3)
    x, y = batch(3, 0)
    params = list(net.parameters())
    tg = compute_task_gradients(net.losses(x, y), params)
    expected = per_task_grads(net.losses(x, y), params)
    for i, p in enumerate(params):
        reached = tuple(k for k in range(3) if expected[k][i] is not None)
        assert tg.tasks[i] == reached
        for row, k in enumerate(reached):
            torch.testing.assert_close(tg.grads[i][row], expected[k][i])


# -- bad input: a clear error, and nothing changed ------------------------------------------------------


def snapshot(net: nn.Module, opt: MAO) -> tuple[dict, dict]:
    return copy.deepcopy(net.state_dict()), copy.deepcopy(opt.state_dict())


def assert_unchanged(net: nn.Module, opt: MAO, before: tuple[dict, dict]) -> None:
    params, state = before
    for k, v in net.state_dict().items():
        assert torch.equal(v, params[k]), f"parameter {k} changed"
    now = opt.state_dict()
    assert now["param_groups"] == state["param_groups"]
    assert now["state"].keys() == state["state"].keys()
    for i, s in state["state"].items():
        for key, value in s.items():
            if isinstance(value, Tensor):
                assert torch.equal(now["state"][i][key], value), f"state {i}/{key} changed"
            else:
                assert now["state"][i][key] == value


def trained() -> tuple[Net, MAO]:
    net = Net(3)
    opt = MAO(net.parameters(), lr=1e-2)
    for s in range(3):
        opt.step(net.losses(*batch(3, s)))
    return net, opt


def bad_losses(net: Net, kind: str):
    losses = net.losses(*batch(3, 7))
    if kind == "empty":
        return []
    if kind == "non-scalar":
        return [losses[0], losses[1] * torch.ones(2, dtype=torch.float64), losses[2]]
    if kind == "no graph":
        return [losses[0], losses[1].detach(), losses[2]]
    if kind == "task count":
        return losses[:2]
    if kind == "nan loss":
        return [losses[0], losses[1], losses[2] * float("nan")]
    if kind == "inf loss":
        return [losses[0], losses[1] + float("inf"), losses[2]]
    if kind == "nan gradient":  # a finite loss whose gradient is NaN: d/dx sqrt(x) at x = 0, times 0
        p = next(net.trunk.parameters())
        return [losses[0], losses[1] + 0 * torch.sqrt(p.abs().sum() * 0), losses[2]]
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("empty", "no task losses"),
        ("non-scalar", "task 'task1' (index 1): the loss must be a scalar"),
        ("no graph", "task 'task1' (index 1): the loss has no autograd graph"),
        ("task count", "stepped with 3 tasks, now got 2"),
        ("nan loss", "task 'task2' (index 2): the loss is nan"),
        ("inf loss", "task 'task1' (index 1): the loss is inf"),
        ("nan gradient", "task 'task1' (index 1): the gradient of parameter 0"),
    ],
)
def test_bad_input_raises_a_named_error_and_changes_nothing(kind: str, message: str) -> None:
    net, opt = trained()
    before = snapshot(net, opt)
    with pytest.raises(TaskInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        opt.step(bad_losses(net, kind))
    assert_unchanged(net, opt, before)
    opt.step(net.losses(*batch(3, 8)))  # and it still works afterwards


def test_bad_precomputed_gradients_and_hyperparameters() -> None:
    net, opt = trained()
    before = snapshot(net, opt)
    params = list(net.parameters())
    grads = per_task_grads(net.losses(*batch(3, 9)), params)
    grads[0][2] = grads[0][2].clone()
    grads[0][2][0] = float("inf")
    with pytest.raises(TaskInputError, match="task 'task0' .*parameter 2"):
        opt.step(task_grads=TaskGradients.from_per_task(grads, params))
    assert_unchanged(net, opt, before)
    with pytest.raises(TypeError, match="exactly one"):
        opt.step()
    for kwargs, name in [({"lr": -1}, "'lr'"), ({"betas": (0.9, 1.0)}, "betas"), ({"reduction": "max"}, "reduction"), ({"task_weights": [1, math.nan]}, "task_weights")]:
        with pytest.raises(ValueError, match=name):
            MAO(net.parameters(), **kwargs)
    weighted = MAO(net.parameters(), task_weights=[1.0, 2.0])
    with pytest.raises(TaskInputError, match="task_weights has 2 entries but there are 3 tasks"):
        weighted.step(net.losses(*batch(3, 0)))
    assert not weighted.state


# -- on a CUDA device (skipped without one; CI has none) -----------------------------------------------
# On CUDA every parameter takes the foreach path with stacked per-task moments (on the CPU, parameters
# several tasks reach take fused per-task Adam passes), so it is checked against the same reference rule,
# computed on the CPU.

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("num_tasks", [1, 3, 8])
@pytest.mark.parametrize("options", [{}, {"weight_decay": 0.05}, {"reduction": "mean"}, {"weights": True}])
def test_cuda_matches_the_reference_rule(num_tasks: int, options: dict) -> None:
    weights = [0.5 + k for k in range(num_tasks)] if options.get("weights") else None
    kwargs = dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=options.get("weight_decay", 0.0))
    ref_net = Net(num_tasks)
    net = copy.deepcopy(ref_net).cuda()
    opt = MAO(net.parameters(), reduction=options.get("reduction", "sum"), task_weights=weights, **kwargs)
    ref_state: dict = {}
    ref_params = list(ref_net.parameters())
    for s in range(20):
        x, y = batch(num_tasks, s)
        opt.step(net.losses(x.cuda(), y.cuda()))
        grads = per_task_grads(ref_net.losses(x, y), ref_params)
        reference_mao_step(ref_params, grads, ref_state, weights=weights, mean=options.get("reduction") == "mean", **kwargs)
    for p, q in zip(net.parameters(), ref_params):
        torch.testing.assert_close(p.cpu(), q, rtol=1e-9, atol=1e-11)
    assert all(state["step"].device.type == "cpu" for state in opt.state.values())  # as Adam keeps it


@needs_cuda
def test_cuda_one_task_float32_equals_adam() -> None:
    net = Net(1, dtype=torch.float32).cuda()
    adam_net = copy.deepcopy(net)
    opt = MAO(net.parameters(), lr=1e-2)
    adam = torch.optim.Adam(adam_net.parameters(), lr=1e-2)
    for s in range(50):
        x, y = batch(1, s, torch.float32)
        opt.step(net.losses(x.cuda(), y.cuda()))
        adam.zero_grad()
        adam_net.losses(x.cuda(), y.cuda())[0].backward()
        adam.step()
    for p, q in zip(net.parameters(), adam_net.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)
