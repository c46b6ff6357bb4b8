"""Copies of MAO and of every method: ``copy.deepcopy`` and ``pickle``, as an EMA or teacher copy, a forked
experiment, multiprocessing or Ray make them.

A method is copied together with its model (``copy.deepcopy((model, method))``, ``pickle.dumps((model,
method))``), so that the copy's method steps the copy's parameters.  The property checked: from the copy,
the copy steps exactly as the original steps from the original (bit-identical parameters and optimizer
states after several steps), and stepping one never moves the other.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import StepLR

from mao_lab import MAO
from mao_lab.methods import available, make

from _helpers import assert_same

pytestmark = pytest.mark.usefixtures("one_thread")

Copier = Callable[[object], object]
COPIERS: dict[str, Copier] = {
    "deepcopy": copy.deepcopy,
    "pickle": lambda obj: pickle.loads(pickle.dumps(obj)),
}


class TwoTasks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk, self.head_a, self.head_b = nn.Linear(3, 4), nn.Linear(4, 1), nn.Linear(4, 1)

    def losses(self, x: torch.Tensor) -> list[torch.Tensor]:
        z = self.trunk(x).relu()
        return [(self.head_a(z) - 1).pow(2).mean(), 100 * (self.head_b(z) + 1).abs().mean()]


def batches(count: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(8, 3, generator=generator) for _ in range(count)]


@pytest.mark.parametrize("steps_before", [0, 2])
@pytest.mark.parametrize("copier", sorted(COPIERS))
@pytest.mark.parametrize("name", sorted(available()))
def test_a_copied_method_steps_its_copied_model_as_the_original(name: str, copier: str, steps_before: int) -> None:
    torch.manual_seed(0)
    model = TwoTasks()
    method = make(name, model.parameters(), lr=1e-2)
    xs = batches(steps_before + 3)
    for x in xs[:steps_before]:
        method.step(lambda x=x: model.losses(x))

    model_copy, method_copy = COPIERS[copier]((model, method))
    assert type(method_copy) is type(method)
    assert [id(p) for p in method_copy.params] == [id(p) for p in model_copy.parameters() if p.requires_grad]

    before = [p.detach().clone() for p in model.parameters()]
    for x in xs[steps_before:]:
        method_copy.step(lambda x=x: model_copy.losses(x))
    for p, b in zip(model.parameters(), before):  # stepping the copy moved nothing of the original
        assert torch.equal(p, b)
    for x in xs[steps_before:]:
        method.step(lambda x=x: model.losses(x))

    for p, q in zip(model.parameters(), model_copy.parameters()):
        assert torch.equal(p, q)
    assert_same(method.state_dict(), method_copy.state_dict())
    assert method_copy.steps_taken == method.steps_taken == steps_before + 3
    assert dict(method_copy.hparams) == dict(method.hparams)
    with pytest.raises(TypeError):
        method_copy.hparams["lr"] = 1.0  # type: ignore[index]


@pytest.mark.parametrize("copier", sorted(COPIERS))
def test_a_copied_mao_keeps_its_settings_and_steps_as_the_original(copier: str) -> None:
    torch.manual_seed(0)
    model = TwoTasks()
    opt = MAO(model.parameters(), lr=1e-2, reduction="mean", check_finite=False)
    xs = batches(5)
    for x in xs[:2]:
        opt.step(model.losses(x))
    model_copy, opt_copy = COPIERS[copier]((model, opt))
    assert opt_copy.check_finite is False
    for x in xs[2:]:
        opt.step(model.losses(x))
        opt_copy.step(model_copy.losses(x))
    for p, q in zip(model.parameters(), model_copy.parameters()):
        assert torch.equal(p, q)
    assert_same(opt.state_dict(), opt_copy.state_dict())


def test_a_copy_of_mao_made_with_check_finite_on_refuses_nan_as_the_original() -> None:
    model = TwoTasks()
    _, opt_copy = copy.deepcopy((model, MAO(model.parameters())))
    assert opt_copy.check_finite is True


@pytest.mark.parametrize("name", ["mao", "pcgrad", "io"])
def test_a_copy_made_under_a_scheduler_steps_the_copy_not_the_original(name: str) -> None:
    """A scheduler wraps the original's ``step``; the copy must not inherit that wrapper (it would step
    the original) nor the observers; the copy takes a scheduler of its own."""
    torch.manual_seed(0)
    model = TwoTasks()
    method = make(name, model.parameters(), lr=1e-2)
    StepLR(method, step_size=1, gamma=0.5)
    method.add_observer(_Watcher())
    x = batches(1)[0]
    method.step(lambda: model.losses(x))
    model_copy, method_copy = copy.deepcopy((model, method))
    assert method_copy._observers_wanting_record() == []
    before = [p.detach().clone() for p in model.parameters()]
    copy_before = [p.detach().clone() for p in model_copy.parameters()]
    scheduler = StepLR(method_copy, step_size=1, gamma=0.5)
    method_copy.step(lambda: model_copy.losses(x))
    scheduler.step()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert not all(torch.equal(p, b) for p, b in zip(model_copy.parameters(), copy_before))
    assert method_copy.hparams["lr"] == method.hparams["lr"] / 2


class _Watcher:
    def wants_record(self) -> bool:
        return True

    def __call__(self, record: object) -> None:
        pass
