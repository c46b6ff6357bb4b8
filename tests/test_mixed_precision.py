"""Mixed precision: loss scaling with torch's own GradScaler for MAO and every method, autocast, and
low-precision parameters (never NaN silently)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import Tensor

from mao_lab import MAO
from mao_lab.methods import available, make

from _helpers import Net as SharedNet
from _helpers import assert_same

pytestmark = pytest.mark.usefixtures("one_thread")
NUM_TASKS = 3
SCALES = torch.tensor([1.0, 10.0, 0.1], dtype=torch.float64)


class Net(SharedNet):
    """The shared net on a trunk 5-8, three heads, in ``dtype``, seeding the global RNG (PCGrad draws from it)."""

    def __init__(self, dtype: torch.dtype = torch.float64) -> None:
        super().__init__(NUM_TASKS, dtype=dtype, widths=(5, 8), seed_globally=True)

    def losses(self, step: int) -> list[Tensor]:  # type: ignore[override]
        """The losses on batch ``step`` (drawn in float64, then cast to the net's dtype)."""
        dtype = next(self.parameters()).dtype
        g = torch.Generator().manual_seed(step)
        x = torch.randn(16, 5, generator=g, dtype=torch.float64).to(dtype)
        y = (torch.randn(16, NUM_TASKS, generator=g, dtype=torch.float64) * SCALES).to(dtype)
        return super().losses(x, y)


def _scaler(scale: float) -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cpu", init_scale=scale, growth_interval=2)


# -- loss scaling ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(available()))
def test_a_loss_scaled_step_is_the_unscaled_step_bit_for_bit(name: str) -> None:
    """A power-of-two scale multiplies every backward quantity exactly: unscaled, the gradients are the
    same bits, so the trajectories are too (while nothing overflows)."""
    plain, scaled = Net(), Net()
    plain_method = make(name, plain.parameters(), lr=1e-2)
    scaled_method = make(name, scaled.parameters(), lr=1e-2)
    scaler = _scaler(2.0**20)
    for step in range(4):
        plain_method.step(lambda step=step: plain.losses(step))
        scaled_method.step(lambda step=step: scaled.losses(step), grad_scaler=scaler)
        scaler.update()
    assert scaled_method.skipped_steps == 0
    assert scaler.get_scale() == 2.0**22  # grown twice (growth_interval=2): every step reported finite
    for p, q in zip(plain.parameters(), scaled.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", sorted(available()))
def test_an_overflowing_step_is_skipped_changes_nothing_and_lowers_the_scale(name: str) -> None:
    net = Net(torch.float32)
    method = make(name, net.parameters(), lr=1e-2)
    method.step(lambda: net.losses(0))
    params = [p.detach().clone() for p in net.parameters()]
    state = copy.deepcopy(method.state_dict())
    scaler = _scaler(2.0**127)  # float32 gradients above 2 times 2^127 overflow to Inf
    losses = method.step(lambda: net.losses(1), grad_scaler=scaler)
    scaler.update()
    assert method.skipped_steps == 1 and method.steps_taken == 1
    torch.testing.assert_close(losses, torch.stack([loss.detach() for loss in net.losses(1)]))
    for p, before in zip(net.parameters(), params):
        assert_same(p.detach(), before, "parameter")
    assert_same(method.state_dict(), state)
    assert scaler.get_scale() == 2.0**126  # backoff_factor 0.5, as after any skipped step
    method.step(lambda: net.losses(1), grad_scaler=_scaler(1.0))  # and the method still steps
    assert method.steps_taken == 2


def test_mao_with_torch_gradscaler_step_and_an_overflow() -> None:
    """``scaler.step(optimizer, losses)``: GradScaler hands itself to MAO.step (its documented contract for
    optimizers with ``_step_supports_amp_scaling``); an overflow is skipped and reported to update().
    GradScaler.step insists that its scale exists (made by ``scaler.scale`` or by a first
    ``step(losses, grad_scaler=scaler)``), so the first step passes the scaler itself."""
    plain, scaled = Net(torch.float32), Net(torch.float32)
    plain_opt, opt = MAO(plain.parameters(), lr=1e-2), MAO(scaled.parameters(), lr=1e-2)
    scaler = _scaler(2.0**10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch announces the contract will change
        for step in range(3):
            plain_opt.step(plain.losses(step))
            if step == 0:
                opt.step(scaled.losses(step), grad_scaler=scaler)
            else:
                scaler.step(opt, scaled.losses(step))
            scaler.update()
        for p, q in zip(plain.parameters(), scaled.parameters()):
            assert torch.equal(p, q)
        before = [p.detach().clone() for p in scaled.parameters()]
        state = copy.deepcopy(opt.state_dict())
        scaler.update(2.0**127)
        scaler.step(opt, scaled.losses(3))
        scaler.update()
    assert opt.skipped_steps == 1 and scaler.get_scale() == 2.0**126
    for p, q in zip(scaled.parameters(), before):
        assert_same(p.detach(), q)
    assert_same(opt.state_dict(), state)


def test_mao_is_invariant_to_a_loss_scale_up_to_eps() -> None:
    """Multiplying every loss by c multiplies each task's moments by c and c^2: u_k = m/(sqrt(v)+eps)
    changes only through eps."""
    a, b = Net(), Net()
    opt_a, opt_b = MAO(a.parameters(), lr=1e-2, eps=1e-12), MAO(b.parameters(), lr=1e-2, eps=1e-12)
    for step in range(5):
        opt_a.step(a.losses(step))
        opt_b.step([1000.0 * loss for loss in b.losses(step)])
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-11)


def test_mao_task_gradients_under_a_scaler_are_taken_as_scaled() -> None:
    from mao_lab import TaskGradients, compute_task_gradients

    plain, scaled = Net(), Net()
    plain_opt, opt = MAO(plain.parameters(), lr=1e-2), MAO(scaled.parameters(), lr=1e-2)
    scaler = _scaler(2.0**8)
    grads = compute_task_gradients(plain.losses(0), list(plain.parameters()))
    plain_opt.step(task_grads=grads)
    times = [[None if g is None else g * 2.0**8 for g in grads.for_task(k)] for k in range(NUM_TASKS)]
    opt.step(task_grads=TaskGradients.from_per_task(times, list(scaled.parameters())), grad_scaler=scaler)
    for p, q in zip(plain.parameters(), scaled.parameters()):
        assert torch.equal(p, q)


# -- autocast ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mao", "upgrad", "mgda", "uw"])
def test_under_autocast_only_the_forward_pass_is_autocast(name: str) -> None:
    """A step taken inside ``torch.autocast`` equals one whose closure alone is autocast: the method's
    own arithmetic (Gram matrices, aggregation, the update) stays in the parameters' float32."""
    inside, outside = Net(torch.float32), Net(torch.float32)
    inside_method = make(name, inside.parameters(), lr=1e-2)
    outside_method = make(name, outside.parameters(), lr=1e-2)

    def autocast_losses(net: Net, step: int) -> list[Tensor]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return net.losses(step)

    for step in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inside_method.step(lambda step=step: inside.losses(step))
        outside_method.step(lambda step=step: autocast_losses(outside, step))
    for p, q in zip(inside.parameters(), outside.parameters()):
        assert p.dtype == torch.float32 and torch.equal(p, q)


def test_mao_steps_on_bf16_autocast_losses() -> None:
    net = Net(torch.float32)
    opt = MAO(net.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in net.parameters()]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = net.losses(0)
        assert net.trunk(torch.ones(1, 5)).dtype == torch.bfloat16  # the layers ran in bfloat16
    opt.step(losses)
    assert all(p.dtype == torch.float32 and bool(p.isfinite().all()) for p in net.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(net.parameters(), before))


# -- low-precision parameters -----------------------------------------------------------------------------------


def test_float16_parameters_with_an_eps_that_rounds_to_zero_are_refused_by_mao() -> None:
    net = Net(torch.float16)
    opt = MAO(net.parameters(), lr=1e-2, eps=1e-8)
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(ValueError, match=r"eps=1e-08 rounds to 0 in torch.float16"):
        opt.step(net.losses(0))
    for p, q in zip(net.parameters(), before):
        assert torch.equal(p, q)
    assert not opt.state


@pytest.mark.parametrize("name", ["mao", "pcgrad", "sum", "mtadam"])
def test_float16_parameters_with_an_eps_that_rounds_to_zero_are_refused_by_methods(name: str) -> None:
    net = Net(torch.float16)
    method = make(name, net.parameters(), lr=1e-2)
    with pytest.raises(ValueError, match=r"rounds to 0 in torch.float16"):
        method.step(lambda: net.losses(0))
    assert method.steps_taken == 0


def test_float16_parameters_with_a_representable_eps_step_to_finite_values() -> None:
    """Where v underflows in float16 the denominator is eps, not 0: no NaN."""
    net = Net(torch.float16)
    opt = MAO(net.parameters(), lr=1e-3, eps=1e-4)
    for step in range(5):
        opt.step(net.losses(step))
    assert all(bool(p.isfinite().all()) for p in net.parameters())
