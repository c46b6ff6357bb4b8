"""Properties of the MAO optimizer, each checked against an independent computation."""

from __future__ import annotations

import copy
import io
import math
import warnings

import pytest
import torch
from torch import Tensor, nn

from mao_lab import MAO, TaskGradients, TaskInputError, compute_task_gradients, mao
from mao_lab._mao_functional import _fused_supported

from _helpers import Net, unchanged  # Net: a trunk 5-8-6 and one head per task, float64 unless told

# -- a small multi-task network and a reference implementation written from the paper's rule ----------


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
    return [list(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)) for loss in losses]


def run_mao(net: Net, steps: int, scales=None, order=None, **kwargs) -> list[Tensor]:
    opt = MAO(net.parameters(), **kwargs)
    num_tasks = len(net.heads)
    for s in range(steps):
        x, y = batch(num_tasks, s, next(net.parameters()).dtype)
        losses = net.losses(x, y, scales)
        opt.step([losses[k] for k in (order or range(num_tasks))])
    return [p.detach().clone() for p in net.parameters()]


# -- one task is Adam ----------------------------------------------------------------------------------


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_one_task_is_adam_and_adamw_bit_for_bit(weight_decay: float, foreach: bool) -> None:
    net_mao, net_adam = Net(1, dtype=torch.float32), Net(1, dtype=torch.float32)
    mao = MAO(net_mao.parameters(), lr=1e-2, weight_decay=weight_decay, foreach=foreach)
    adam_class = torch.optim.AdamW if weight_decay else torch.optim.Adam
    adam = adam_class(net_adam.parameters(), lr=1e-2, weight_decay=weight_decay, foreach=foreach)
    for s in range(100):
        x, y = batch(1, s, torch.float32)
        mao.step(net_mao.losses(x, y))
        adam.zero_grad()
        net_adam.losses(x, y)[0].backward()
        adam.step()
    for p, q in zip(net_mao.parameters(), net_adam.parameters()):
        assert torch.equal(p, q)
    # and the trajectory actually moved (the test would pass trivially otherwise)
    assert not torch.allclose(next(net_mao.parameters()), next(Net(1, dtype=torch.float32).parameters()))


@pytest.mark.skipif(not _fused_supported(warn=False), reason="this torch has no fused Adam kernel on the CPU")
def test_one_task_fused_is_fused_adam_bit_for_bit() -> None:
    net_mao, net_adam = Net(1, dtype=torch.float32), Net(1, dtype=torch.float32)
    mao = MAO(net_mao.parameters(), lr=1e-2, fused=True)
    adam = torch.optim.Adam(net_adam.parameters(), lr=1e-2, fused=True)
    for s in range(50):
        x, y = batch(1, s, torch.float32)
        mao.step(net_mao.losses(x, y))
        adam.zero_grad()
        net_adam.losses(x, y)[0].backward()
        adam.step()
    for p, q in zip(net_mao.parameters(), net_adam.parameters()):
        assert torch.equal(p, q)


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
        reference_mao_step(
            ref_params, grads, ref_state, weights=weights, mean=options.get("reduction") == "mean", **kwargs
        )
    for p, q in zip(net.parameters(), ref_params):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


IMPLEMENTATIONS = {"single": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}, "default": {}}


def steps_with_gaps(net: Net, opt: MAO, steps: int, dtype: torch.dtype, keep: bool = False) -> list:
    """``steps`` steps on fixed batches, with a task that misses some steps (zeros in its moments) and one
    that joins late (widened state); returns what _apply_task_gradients returned at each step."""
    returned = []
    for s in range(steps):
        params = list(net.parameters())
        grads = per_task_grads(net.losses(*batch(len(net.heads), s, dtype)), params)
        if s % 3 == 1:
            grads[1] = [None] * len(params)  # task 1 reaches nothing at this step
        if s < 4:
            grads[2] = [None] * len(params)  # task 2 joins at step 4
        returned.append(opt._apply_task_gradients(TaskGradients.from_per_task(grads, params), keep_task_updates=keep))
    return returned


@pytest.mark.parametrize("implementation", sorted(IMPLEMENTATIONS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("options", [{}, {"weight_decay": 0.05}, {"reduction": "mean"}, {"weights": True}])
def test_every_implementation_matches_the_reference_rule(
    options: dict, dtype: torch.dtype, implementation: str
) -> None:
    # The single-tensor loop, the foreach lists and the fused kernel (mao_lab.mao's three paths), each
    # against the loop written above, with a task that misses steps and one that joins late.
    num_tasks = 3
    weights = [0.5, 2.0, 1.5] if options.get("weights") else None
    kwargs = dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=options.get("weight_decay", 0.0))
    net, ref_net = Net(num_tasks, dtype=dtype), Net(num_tasks, dtype=dtype)
    opt = MAO(
        net.parameters(),
        reduction=options.get("reduction", "sum"),
        task_weights=weights,
        **kwargs,
        **IMPLEMENTATIONS[implementation],
    )
    steps_with_gaps(net, opt, 12, dtype)
    ref_params, ref_state = list(ref_net.parameters()), {}
    for s in range(12):
        grads = per_task_grads(ref_net.losses(*batch(num_tasks, s, dtype)), ref_params)
        if s % 3 == 1:
            grads[1] = [None] * len(ref_params)
        if s < 4:
            grads[2] = [None] * len(ref_params)
        reference_mao_step(
            ref_params, grads, ref_state, weights=weights, mean=options.get("reduction") == "mean", **kwargs
        )
    tolerance = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    for i, (p, q) in enumerate(zip(net.parameters(), ref_params)):
        torch.testing.assert_close(p, q, **tolerance)
        state = opt.state[p]
        for row, k in enumerate(state["tasks"]):
            m, v = ref_state[(i, k)]
            torch.testing.assert_close(state["exp_avg"][row], m, **tolerance)
            torch.testing.assert_close(state["exp_avg_sq"][row], v, **tolerance)
    assert not torch.equal(next(net.parameters()), next(Net(num_tasks, dtype=dtype).parameters()))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_single_tensor_and_foreach_are_the_same_arithmetic_on_the_cpu(dtype: torch.dtype) -> None:
    # On the CPU a foreach op runs the per-tensor kernel on each tensor of its list, and _multi_tensor_mao
    # calls, list by list, the ops _single_tensor_mao calls tensor by tensor: the results are the same bits.
    nets = {}
    for foreach in (False, True):
        nets[foreach] = Net(3, dtype=dtype)
        opt = MAO(nets[foreach].parameters(), lr=1e-2, weight_decay=0.01, task_weights=[0.5, 2.0, 1.0], foreach=foreach)
        steps_with_gaps(nets[foreach], opt, 8, dtype)
    for p, q in zip(nets[False].parameters(), nets[True].parameters()):
        assert torch.equal(p, q)


# bfloat16 only: float16 moments of this problem's small gradients (v ~ 1e-7) are subnormal, a few bits
# wide, so no double-precision reference is near them (the same holds for Adam in float16).
@pytest.mark.parametrize(("dtype", "eps"), [(torch.bfloat16, 1e-8)])
@pytest.mark.parametrize("implementation", ["single", "foreach"])
def test_half_precision_follows_the_reference_rule(dtype: torch.dtype, eps: float, implementation: str) -> None:
    # Moments in half precision, as Adam keeps them; the tasks' steps are summed in single precision and
    # the parameter is rounded once per step.  Checked against the reference in double precision,
    # fed the same (half-precision) gradients, within what half-precision moments allow.
    net = Net(3, dtype=dtype)
    ref_params = [p.detach().double() for p in Net(3, dtype=dtype).parameters()]
    opt = MAO(net.parameters(), lr=1e-2, eps=eps, **IMPLEMENTATIONS[implementation])
    ref_state: dict = {}
    for s in range(10):
        params = list(net.parameters())
        grads = per_task_grads(net.losses(*batch(3, s, dtype)), params)
        opt._apply_task_gradients(TaskGradients.from_per_task(grads, params))
        doubled = [[None if g is None else g.double() for g in task] for task in grads]
        reference_mao_step(ref_params, doubled, ref_state, 1e-2, (0.9, 0.999), eps)
    start = [p.detach().double() for p in Net(3, dtype=dtype).parameters()]
    for p, q, p0 in zip(net.parameters(), ref_params, start):
        # Within 5% of the distance travelled, plus a few units in the last place of the parameter.
        tolerance = 0.05 * (q - p0).abs().max() + 4 * torch.finfo(dtype).eps * q.abs().max()
        assert (p.double() - q).abs().max() <= tolerance


# -- recording never changes the arithmetic ------------------------------------------------------------


@pytest.mark.parametrize("implementation", sorted(IMPLEMENTATIONS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("options", [{}, {"weight_decay": 0.05}, {"reduction": "mean"}, {"weights": True}])
def test_keeping_the_parts_leaves_parameters_and_state_bit_identical(
    options: dict, dtype: torch.dtype, implementation: str
) -> None:
    weights = [0.5, 2.0, 1.5] if options.get("weights") else None
    kwargs = dict(
        lr=3e-3,
        betas=(0.8, 0.99),
        eps=1e-6,
        weight_decay=options.get("weight_decay", 0.0),
        reduction=options.get("reduction", "sum"),
        task_weights=weights,
        **IMPLEMENTATIONS[implementation],
    )
    plain_net, kept_net = Net(3, dtype=dtype), Net(3, dtype=dtype)
    plain, kept = MAO(plain_net.parameters(), **kwargs), MAO(kept_net.parameters(), **kwargs)
    assert all(parts is None for parts in steps_with_gaps(plain_net, plain, 12, dtype, keep=False))
    assert all(parts is not None for parts in steps_with_gaps(kept_net, kept, 12, dtype, keep=True))
    assert_same_bits(plain_net, plain, kept_net, kept)


@pytest.mark.parametrize("foreach", [False, True, None])
def test_a_recorder_on_the_step_leaves_the_trajectory_bit_identical(foreach: bool | None) -> None:
    # The recorder's path: step(losses) with an observer that wants the record (gradients and parts kept).
    plain_net, recorded_net = Net(3), Net(3)
    kwargs = dict(lr=1e-2, task_weights=[1.0, 3.0, 0.5], reduction="mean", weight_decay=0.01, foreach=foreach)
    plain, recorded = MAO(plain_net.parameters(), **kwargs), MAO(recorded_net.parameters(), **kwargs)
    observer = KeepEveryRecord()
    recorded.add_observer(observer)
    for s in range(10):
        plain.step(plain_net.losses(*batch(3, s)))
        recorded.step(recorded_net.losses(*batch(3, s)))
    assert len(observer.records) == 10 and all(r.task_updates is not None for r in observer.records)
    assert_same_bits(plain_net, plain, recorded_net, recorded)


def assert_same_bits(net: nn.Module, opt: MAO, other_net: nn.Module, other: MAO) -> None:
    for p, q in zip(net.parameters(), other_net.parameters()):
        assert torch.equal(p, q), "the parameters differ"
        assert opt.state[p].keys() == other.state[q].keys()
        for key, value in opt.state[p].items():
            theirs = other.state[q][key]
            assert torch.equal(value, theirs) if isinstance(value, Tensor) else value == theirs, f"state {key} differs"


@pytest.mark.parametrize("implementation", sorted(IMPLEMENTATIONS))
@pytest.mark.parametrize("options", [{}, {"weight_decay": 0.05}, {"reduction": "mean"}, {"weights": True}])
def test_the_parts_are_each_tasks_step_and_sum_to_the_parameter_change(options: dict, implementation: str) -> None:
    # Each part against lr * w_k * u_k (/ T for the mean) from the reference loop's moments, and their sum
    # against the change of the parameter, less the decay.
    num_tasks, lr, betas, eps, decay = 3, 3e-3, (0.8, 0.99), 1e-6, options.get("weight_decay", 0.0)
    weights = [0.5, 2.0, 1.5] if options.get("weights") else [1.0] * num_tasks
    scale = 1 / num_tasks if options.get("reduction") == "mean" else 1.0
    net = Net(num_tasks)
    opt = MAO(
        net.parameters(),
        lr=lr,
        betas=betas,
        eps=eps,
        weight_decay=decay,
        reduction=options.get("reduction", "sum"),
        task_weights=weights,
        **IMPLEMENTATIONS[implementation],
    )
    params, ref_state = list(net.parameters()), {}
    for s in range(6):
        grads = per_task_grads(net.losses(*batch(num_tasks, s)), params)
        before = [p.detach().clone() for p in params]
        updates = opt._apply_task_gradients(TaskGradients.from_per_task(grads, params), keep_task_updates=True)
        assert updates is not None
        for i, p in enumerate(params):
            reached = [k for k in range(num_tasks) if grads[k][i] is not None]
            assert updates.tasks[i] == tuple(reached)
            parts = updates.updates[i]
            for row, k in enumerate(reached):
                m, v = ref_state.get((i, k), (torch.zeros_like(p), torch.zeros_like(p)))
                m = betas[0] * m + (1 - betas[0]) * grads[k][i]
                v = betas[1] * v + (1 - betas[1]) * grads[k][i] ** 2
                ref_state[(i, k)] = (m, v)
                t = s + 1
                u = (m / (1 - betas[0] ** t)) / (torch.sqrt(v / (1 - betas[1] ** t)) + eps)
                torch.testing.assert_close(parts[row], lr * weights[k] * scale * u, rtol=1e-10, atol=1e-14)
            change = p.detach() - before[i] * (1 - lr * decay)
            torch.testing.assert_close(-parts.sum(0), change, rtol=1e-9, atol=1e-14)


# -- foreach and fused, as torch.optim.Adam takes them ------------------------------------------------------


def test_foreach_and_fused_are_checked_and_travel_in_the_state_dict() -> None:
    net = Net(2)
    with pytest.raises(RuntimeError, match="`fused` and `foreach` cannot be `True` together"):
        MAO(net.parameters(), foreach=True, fused=True)
    with pytest.raises(ValueError, match="foreach must be None, True or False, got 'yes'"):
        MAO(net.parameters(), foreach="yes")  # type: ignore[arg-type]
    opt = MAO(net.parameters(), lr=1e-2, fused=True)
    opt.step(net.losses(*batch(2, 0)))
    saved = opt.state_dict()
    assert [(g["foreach"], g["fused"]) for g in saved["param_groups"]] == [(None, True)]
    resumed = MAO(Net(2).parameters(), lr=1e-2)
    resumed.load_state_dict(saved)
    assert (resumed.param_groups[0]["foreach"], resumed.param_groups[0]["fused"]) == (None, True)
    # A state saved before the flags existed loads with the defaults.
    old = copy.deepcopy(saved)
    for group in old["param_groups"]:
        del group["foreach"], group["fused"]
    resumed = MAO(Net(2).parameters(), lr=1e-2)
    resumed.load_state_dict(old)
    assert (resumed.param_groups[0]["foreach"], resumed.param_groups[0]["fused"]) == (None, None)


def test_both_flags_set_on_a_group_later_raise_and_change_nothing() -> None:
    net, opt = trained()
    guard = unchanged(net, opt)
    opt.param_groups[0].update(foreach=True, fused=True)
    with pytest.raises(RuntimeError, match="parameter group 0: `fused` and `foreach` cannot be `True` together"):
        opt.step(net.losses(*batch(3, 5)))
    opt.param_groups[0].update(foreach=None, fused=None)
    guard.check()


def test_the_functional_mao_refuses_lists_that_do_not_line_up() -> None:
    p = torch.zeros(3)
    m, v, step = torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor(0.0)
    hyper = dict(lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)
    with pytest.raises(RuntimeError, match="cannot be `True` together"):
        mao([p], [[torch.ones(3)] * 2], [m], [v], [step], foreach=True, fused=True, **hyper)
    with pytest.raises(ValueError, match="1 params but 0 state_steps"):
        mao([p], [[torch.ones(3)] * 2], [m], [v], [], **hyper)
    with pytest.raises(ValueError, match="parameter 0 .* has 1 gradients and moments of shapes"):
        mao([p], [[torch.ones(3)]], [m], [v], [step], **hyper)
    with pytest.raises(ValueError, match="parameter 0 has 2 gradients but 1 task weights"):
        mao([p], [[torch.ones(3)] * 2], [m], [v], [step], task_weights=[[1.0]], **hyper)
    assert torch.equal(p, torch.zeros(3)) and not m.any() and float(step) == 0.0


def test_fused_on_a_torch_without_the_cpu_kernel_warns_once_and_takes_the_foreach_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import mao_lab._mao_functional as functional

    monkeypatch.setattr(functional, "_FUSED_CPU_SINCE", (999, 0))
    monkeypatch.setattr(functional, "_fused_warned", False)
    nets = {name: Net(3) for name in ("fused", "foreach", "default")}
    opts = {name: MAO(net.parameters(), lr=1e-2, **IMPLEMENTATIONS[name]) for name, net in nets.items()}
    with pytest.warns(RuntimeWarning, match="has no fused Adam kernel on the CPU .* using the foreach implementation"):
        opts["fused"].step(nets["fused"].losses(*batch(3, 0)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once is enough; the default falls back without a word
        opts["foreach"].step(nets["foreach"].losses(*batch(3, 0)))
        opts["default"].step(nets["default"].losses(*batch(3, 0)))
        for s in range(1, 4):
            for name, net in nets.items():
                opts[name].step(net.losses(*batch(3, s)))
    for name in ("fused", "default"):
        for p, q in zip(nets[name].parameters(), nets["foreach"].parameters()):
            assert torch.equal(p, q)


@pytest.mark.skipif(not _fused_supported(warn=False), reason="this torch has no fused Adam kernel on the CPU")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_the_cpu_default_fuses_where_tasks_meet_and_is_adam_where_one_task_reaches(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    # mao() with neither flag, on fixed gradients: a parameter with several rows gets the fused kernel's
    # bits, one with a single row foreach's (= the single-tensor path's = Adam's on the CPU); half
    # precision, which the kernel does not take, foreach's.  A spy on the kernel's entry point says which
    # moments it was handed (its arithmetic may or may not differ from foreach's in the last bit).
    import mao_lab._mao_functional as functional

    handed: dict[str, set[int]] = {}
    current = ["default"]
    kernel = functional.torch_adam

    def spy(*args: object, **kwargs: object) -> None:
        handed.setdefault(current[0], set()).update(t.data_ptr() for t in args[2])  # type: ignore[attr-defined]
        return kernel(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(functional, "torch_adam", spy)
    g = torch.Generator().manual_seed(0)
    shapes_rows = [((4, 3), 3), ((5,), 2), ((3, 2), 1), ((2,), 1)]
    grads = [[torch.randn(shape, generator=g).to(dtype) for _ in range(rows)] for shape, rows in shapes_rows]
    start = [torch.randn(shape, generator=g).to(dtype) for shape, _ in shapes_rows]
    results = {}
    moments = {}
    for name, flags in (("default", {}), ("fused", {"fused": True}), ("foreach", {"foreach": True})):
        current[0] = name
        params = [p.clone() for p in start]
        m = [torch.zeros(rows, *shape, dtype=dtype) for shape, rows in shapes_rows]
        v = [torch.zeros(rows, *shape, dtype=dtype) for shape, rows in shapes_rows]
        steps = [torch.tensor(0.0) for _ in shapes_rows]
        weights = [[0.5 * (r + 1) for r in range(rows)] for _, rows in shapes_rows]
        for s in range(3):
            step_grads = [[row * (s + 1) for row in rows] for rows in grads]
            mao(params, step_grads, m, v, steps, task_weights=weights, lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-6,
                weight_decay=0.01, **flags)  # fmt: skip
        assert [float(t) for t in steps] == [3.0] * len(shapes_rows)
        results[name] = (params, m, v)
        moments[name] = [{row.data_ptr() for row in rows_of_m} for rows_of_m in m]
    kernel_takes = dtype != torch.bfloat16
    for i, (_, rows) in enumerate(shapes_rows):
        expected = "fused" if rows > 1 and kernel_takes else "foreach"
        for got, want in zip(results["default"], results[expected]):
            assert torch.equal(got[i], want[i]), (i, expected)
        assert (moments["default"][i] <= handed.get("default", set())) == (expected == "fused"), i
        assert (moments["fused"][i] <= handed.get("fused", set())) == kernel_takes, i
    assert "foreach" not in handed


# -- invariances -------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1e-3, 0.37, 1e3])
def test_rescaling_a_task_loss_leaves_mao_unchanged_but_not_adam(scale: float) -> None:
    def trajectory(scales, optimizer: str) -> Tensor:
        net = Net(3, seed=1)
        opt = (
            MAO(net.parameters(), lr=1e-2, eps=1e-14)
            if optimizer == "mao"
            else torch.optim.Adam(net.parameters(), lr=1e-2, eps=1e-14)
        )
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
    ref_groups = [
        list(ref_net.trunk.parameters()),
        list(ref_net.heads[0].parameters()) + list(ref_net.heads[1].parameters()),
        list(ref_net.heads[2].parameters()),
    ]
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
        reference_mao_step(
            ref_params,
            per_task_grads(ref_net.losses(x, y), ref_params),
            ref_state,
            1e-2 * 0.5 ** (s // 5),
            (0.9, 0.999),
            1e-8,
        )
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
        per_task = [
            [None] * len(shared) + [p.grad if k == j else None for j in range(2) for p in heads[j]] for k in range(2)
        ]
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
    for i in range(len(params)):
        reached = tuple(k for k in range(3) if expected[k][i] is not None)
        assert tg.tasks[i] == reached
        for row, k in enumerate(reached):
            torch.testing.assert_close(tg.grads[i][row], expected[k][i])


# -- bad input: a clear error, and nothing changed ------------------------------------------------------


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
    guard = unchanged(net, opt)
    with pytest.raises(TaskInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        opt.step(bad_losses(net, kind))
    guard.check()
    opt.step(net.losses(*batch(3, 8)))  # and it still works afterwards


def test_bad_precomputed_gradients_and_hyperparameters() -> None:
    net, opt = trained()
    guard = unchanged(net, opt)
    params = list(net.parameters())
    grads = per_task_grads(net.losses(*batch(3, 9)), params)
    grads[0][2] = grads[0][2].clone()
    grads[0][2][0] = float("inf")
    with pytest.raises(TaskInputError, match="task 'task0' .*parameter 2"):
        opt.step(task_grads=TaskGradients.from_per_task(grads, params))
    guard.check()
    with pytest.raises(TypeError, match="exactly one"):
        opt.step()
    for kwargs, name in [
        ({"lr": -1}, "'lr'"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"reduction": "max"}, "reduction"),
        ({"task_weights": [1, math.nan]}, "task_weights"),
    ]:
        with pytest.raises(ValueError, match=name):
            MAO(net.parameters(), **kwargs)
    weighted = MAO(net.parameters(), task_weights=[1.0, 2.0])
    with pytest.raises(TaskInputError, match="task_weights has 2 entries but there are 3 tasks"):
        weighted.step(net.losses(*batch(3, 0)))
    assert not weighted.state


# -- on a CUDA device (skipped without one; CI has none) -----------------------------------------------
# On CUDA MAO takes the foreach path by default (on the CPU the single-tensor one), so it is checked against
# the same reference rule, computed on the CPU.

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
        reference_mao_step(
            ref_params, grads, ref_state, weights=weights, mean=options.get("reduction") == "mean", **kwargs
        )
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
