"""Gradient-norm clipping: the options against hand computations, and clip_grad_norm_ before a step
raising instead of silently doing nothing."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from mao_lab import MAO, TaskGradients
from mao_lab.methods import available, make

from _helpers import Net as SharedNet

pytestmark = pytest.mark.usefixtures("one_thread")
NUM_TASKS = 3


class Net(SharedNet):
    """The shared net on a trunk 5-8, three heads, float64, seeding the global RNG (PCGrad draws from it)."""

    def __init__(self) -> None:
        super().__init__(NUM_TASKS, widths=(5, 8), seed_globally=True)

    def losses(self, step: int) -> list[Tensor]:  # type: ignore[override]
        """The losses on batch ``step``, the tasks' targets on scales 1, 30 and 0.1."""
        g = torch.Generator().manual_seed(step)
        x = torch.randn(16, 5, generator=g, dtype=torch.float64)
        y = torch.randn(16, NUM_TASKS, generator=g, dtype=torch.float64) * torch.tensor([1.0, 30.0, 0.1]).double()
        return super().losses(x, y)


def hand_clipped(grads: list[Tensor | None], max_norm: float) -> list[Tensor | None]:
    """clip_grad_norm_'s rule written out: times min(1, max_norm / (norm + 1e-6)), the norm over all."""
    norm = math.sqrt(sum(float((g * g).sum()) for g in grads if g is not None))
    factor = min(1.0, max_norm / (norm + 1e-6))
    return [None if g is None else g * factor for g in grads]


class _Keep:
    """An observer that asks for records (so the method takes its per-task path)."""

    def wants_record(self) -> bool:
        return True

    def __call__(self, record: object) -> None:
        self.last = record


def per_task(net: Net, step: int) -> list[list[Tensor | None]]:
    params = list(net.parameters())
    return [list(torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)) for loss in net.losses(step)]


def test_mao_max_task_grad_norm_clips_each_task_before_its_moments() -> None:
    net, ref = Net(), Net()
    opt = MAO(net.parameters(), lr=1e-2, max_task_grad_norm=0.5)
    ref_opt = MAO(ref.parameters(), lr=1e-2)
    for step in range(4):
        opt.step(net.losses(step))
        grads = [hand_clipped(g, 0.5) for g in per_task(ref, step)]
        ref_opt.step(task_grads=TaskGradients.from_per_task(grads, list(ref.parameters())))
    for p, q in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_mao_max_grad_norm_clips_all_the_tasks_together() -> None:
    net, ref = Net(), Net()
    opt = MAO(net.parameters(), lr=1e-2, max_grad_norm=0.5)
    ref_opt = MAO(ref.parameters(), lr=1e-2)
    n = len(list(ref.parameters()))
    for step in range(4):
        opt.step(net.losses(step))
        flat = hand_clipped([g for grads in per_task(ref, step) for g in grads], 0.5)
        grads = [flat[k * n : (k + 1) * n] for k in range(NUM_TASKS)]
        ref_opt.step(task_grads=TaskGradients.from_per_task(grads, list(ref.parameters())))
    for p, q in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("record", [False, True])
def test_max_grad_norm_is_clip_grad_norm_before_adam(record: bool) -> None:
    """make("sum", max_grad_norm=c) against torch itself: backward, clip_grad_norm_, Adam.step."""
    net, ref = Net(), Net()
    method = make("sum", net.parameters(), lr=1e-2, max_grad_norm=0.5)
    if record:  # the recorded path: per-task gradients, combined, then clipped
        method.add_observer(_Keep())
    adam = torch.optim.Adam(ref.parameters(), lr=1e-2)
    for step in range(4):
        method.step(lambda step=step: net.losses(step))
        adam.zero_grad(set_to_none=True)
        sum(ref.losses(step)).backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
        adam.step()
    for p, q in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_max_task_grad_norm_clips_each_task_before_the_weighting() -> None:
    """make("sum", max_task_grad_norm=c): Adam on the sum of the hand-clipped task gradients."""
    net, ref = Net(), Net()
    method = make("sum", net.parameters(), lr=1e-2, max_task_grad_norm=0.5)
    adam = torch.optim.Adam(ref.parameters(), lr=1e-2)
    for step in range(4):
        method.step(lambda step=step: net.losses(step))
        grads = [hand_clipped(g, 0.5) for g in per_task(ref, step)]
        for i, p in enumerate(ref.parameters()):
            present = [g[i] for g in grads if g[i] is not None]
            p.grad = sum(present[1:], present[0]) if present else None
        adam.step()
        adam.zero_grad(set_to_none=True)
    for p, q in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_pcgrad_direction_is_clipped_by_max_grad_norm() -> None:
    """An aggregator: the aggregated gradient is clipped (with SGD the step is lr times it)."""
    net, ref = Net(), Net()
    clipped = make("pcgrad", net.parameters(), lr=0.1, optimizer="sgd", max_grad_norm=0.05)
    plain = make("pcgrad", ref.parameters(), lr=0.1, optimizer="sgd")
    before = [p.detach().clone() for p in net.parameters()]
    clipped.step(lambda: net.losses(0))
    plain.step(lambda: ref.losses(0))
    moves = [before_p - p.detach() for before_p, p in zip(before, net.parameters())]
    plain_moves = [before_p - p.detach() for before_p, p in zip(before, ref.parameters())]
    expected = hand_clipped(plain_moves, 0.1 * 0.05)  # lr * (direction clipped to 0.05)
    norm = math.sqrt(sum(float((m * m).sum()) for m in plain_moves)) / 0.1
    assert norm > 0.05  # the clipping is active
    for m, e in zip(moves, expected):
        torch.testing.assert_close(m, e, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("name", sorted(available()))
def test_every_method_takes_the_clipping_options(name: str) -> None:
    net = Net()
    method = make(name, net.parameters(), lr=1e-2, max_grad_norm=1.0, max_task_grad_norm=1.0)
    for step in range(2):
        method.step(lambda step=step: net.losses(step))
    assert method.steps_taken == 2 and all(bool(p.isfinite().all()) for p in net.parameters())


def test_clip_grad_norm_before_a_step_raises_naming_the_options_and_changes_nothing() -> None:
    net = Net()
    opt = MAO(net.parameters(), lr=1e-2)
    losses = net.losses(0)
    sum(losses).backward(retain_graph=True)
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(RuntimeError, match="max_grad_norm= / max_task_grad_norm="):
        opt.step(losses)
    assert not opt.state and all(torch.equal(p, q) for p, q in zip(net.parameters(), before))
    method = make("pcgrad", net.parameters(), lr=1e-2)
    with pytest.raises(RuntimeError, match="has a .grad"):
        method.step(lambda: net.losses(0))
    assert method.steps_taken == 0


@pytest.mark.parametrize("value", [0.0, -1.0, float("inf"), float("nan"), True, "1"])
def test_bad_max_norms_are_refused(value: object) -> None:
    p = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="max_grad_norm must be None or a positive finite number"):
        MAO([p], max_grad_norm=value)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_task_grad_norm must be None or a positive finite number"):
        make("sum", [p], max_task_grad_norm=value)
