"""PyTorch's learning-rate schedulers drive every method, as they drive ``torch.optim.Adam``.

For every method of the registry: the rate applied at each step is the schedule's, computed by the same
scheduler on a stock ``torch.optim.SGD`` (an independent run of torch's own code); no "scheduler before
optimizer" warning; ``hparams`` shows the scheduled rate; and a run resumed from ``state_dict`` (model,
method, scheduler) continues the schedule and the trajectory bit for bit.

The rate applied is observed outside the method: for methods that step stock ``torch.optim`` optimizers,
by a global step pre-hook that reads the rate of every optimizer stepping a model parameter at that
moment; for MAO and MTAdam, whose update is ``lr`` times a direction that does not depend on ``lr``, by
the ratio of a step to the same step of a copy whose rate is set to 1.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler, OneCycleLR, StepLR
from torch.optim.optimizer import register_optimizer_step_pre_hook

from mao_lab import MAO
from mao_lab.methods import Method, available, make
from mao_lab.methods._base import OptimizerMethod

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 6
LR = 0.05
SCHEDULES: dict[str, Callable[[torch.optim.Optimizer], LRScheduler]] = {
    "step": lambda opt: StepLR(opt, step_size=2, gamma=0.5),
    "one_cycle": lambda opt: OneCycleLR(opt, max_lr=LR, total_steps=STEPS),
}


class TwoTasks(nn.Module):
    """A shared trunk and one head per task, in double precision (differences of parameters are exact enough)."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk, self.head_a, self.head_b = nn.Linear(3, 4), nn.Linear(4, 1), nn.Linear(4, 1)
        self.double()

    def losses(self, x: torch.Tensor) -> list[torch.Tensor]:
        z = self.trunk(x).tanh()
        return [(self.head_a(z) - 1).pow(2).mean(), 10 * (self.head_b(z) + 1).abs().mean()]


def batches() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(8, 3, generator=generator, dtype=torch.float64) for _ in range(STEPS)]


def setup(name: str) -> tuple[TwoTasks, Method]:
    torch.manual_seed(0)
    model = TwoTasks()
    return model, make(name, model.parameters(), lr=LR)


def reference_rates(schedule: str) -> list[float]:
    """The schedule as torch runs it on a stock SGD: the rate of each of the STEPS steps."""
    sgd = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    scheduler = SCHEDULES[schedule](sgd)
    rates = []
    for _ in range(STEPS):
        rates.append(sgd.param_groups[0]["lr"])
        sgd.step()
        scheduler.step()
    return rates


@pytest.fixture
def applied_rates() -> Iterator[list[tuple[frozenset[int], float]]]:
    """(ids of the parameters, rate) at every step of a stock torch optimizer (not the method itself)."""
    seen: list[tuple[frozenset[int], float]] = []

    def hook(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        if not isinstance(optimizer, Method):
            ids = frozenset(id(p) for group in optimizer.param_groups for p in group["params"])
            seen.append((ids, float(optimizer.param_groups[0]["lr"])))

    handle = register_optimizer_step_pre_hook(hook)
    yield seen
    handle.remove()


def rate_of_step(model: TwoTasks, method: Method, x: torch.Tensor) -> float:
    """The rate MAO/MTAdam applied at this step: its step over the same step of a copy at rate 1."""
    twin_model, twin = copy.deepcopy((model, method))
    twin.param_groups[0]["lr"] = 1.0
    before = [p.detach().clone() for p in model.parameters()]
    method.step(lambda: model.losses(x))
    twin.step(lambda: twin_model.losses(x))
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    unit = torch.cat([(p.detach() - b).flatten() for p, b in zip(twin_model.parameters(), before)])
    keep = unit.abs() > 1e-12
    ratios = moved[keep] / unit[keep]
    assert torch.allclose(ratios, ratios.median().expand_as(ratios), rtol=1e-6), "the step is not lr times a direction"
    return float(ratios.median())


def run(
    model: TwoTasks,
    method: Method,
    scheduler: LRScheduler,
    xs: list[torch.Tensor],
    applied: list[tuple[frozenset[int], float]],
) -> list[float]:
    """Step through ``xs`` with the scheduler; return the rate each step applied (observed, see the module)."""
    rates = []
    for x in xs:
        if isinstance(method, OptimizerMethod):
            rates.append(rate_of_step(model, method, x))
        else:
            applied.clear()
            method.step(lambda x=x: model.losses(x))
            model_ids = {id(p) for p in model.parameters()}
            stepping_model = [r for ids, r in applied if ids & model_ids]
            assert stepping_model and len(set(stepping_model)) == 1, applied
            rates.append(stepping_model[0])
        assert method.hparams["lr"] == method.param_groups[0]["lr"]
        scheduler.step()
        assert method.hparams["lr"] == scheduler.get_last_lr()[0]
    return rates


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("name", sorted(available()))
def test_every_method_steps_at_the_scheduled_rate(name: str, schedule: str, applied_rates: list) -> None:
    model, method = setup(name)
    model_parameters = {id(p) for p in model.parameters()}
    assert isinstance(method, torch.optim.Optimizer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scheduler = SCHEDULES[schedule](method)
        rates = run(model, method, scheduler, batches(), applied_rates)
    torch_warnings = [
        str(w.message) for w in caught if "lr_scheduler" in str(w.message) or "optimizer.step" in str(w.message)
    ]
    assert torch_warnings == []
    assert rates == pytest.approx(reference_rates(schedule), rel=1e-6)
    assert model_parameters == {id(p) for group in method.param_groups for p in group["params"]}


@pytest.mark.parametrize("name", sorted(available()))
def test_a_resumed_run_continues_the_schedule_and_the_trajectory(name: str, applied_rates: list) -> None:
    xs = batches()
    model, method = setup(name)
    scheduler = OneCycleLR(method, max_lr=LR, total_steps=STEPS)
    run(model, method, scheduler, xs[:3], applied_rates)
    saved = copy.deepcopy(
        {"model": model.state_dict(), "method": method.state_dict(), "scheduler": scheduler.state_dict()}
    )
    rates = run(model, method, scheduler, xs[3:], applied_rates)

    resumed_model, resumed = setup(name)
    resumed_scheduler = OneCycleLR(resumed, max_lr=LR, total_steps=STEPS)
    resumed_model.load_state_dict(saved["model"])
    resumed.load_state_dict(saved["method"])
    resumed_scheduler.load_state_dict(saved["scheduler"])
    assert resumed.hparams["lr"] == pytest.approx(reference_rates("one_cycle")[3], rel=1e-12)
    resumed_rates = run(resumed_model, resumed, resumed_scheduler, xs[3:], applied_rates)
    assert resumed_rates == rates
    for p, q in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)


def test_one_cycle_cycles_the_first_beta_and_hparams_shows_it() -> None:
    model, method = setup("pcgrad")
    scheduler = OneCycleLR(method, max_lr=LR, total_steps=STEPS, base_momentum=0.8, max_momentum=0.9)
    assert method.hparams["betas"][0] == pytest.approx(0.9)
    assert method.base.optimizer.param_groups[0]["betas"][0] == pytest.approx(0.9)
    method.step(lambda: model.losses(batches()[0]))
    scheduler.step()
    assert method.hparams["betas"][0] < 0.9
    assert method.base.optimizer.param_groups[0]["betas"] == method.hparams["betas"]


def test_a_scheduler_of_maos_own_optimizer_counts_the_methods_steps() -> None:
    """``StepLR(make("mao").optimizer)`` (the optimizer a method steps): no warning, the rate applies."""
    model, method = setup("mao")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scheduler = StepLR(method.optimizer, step_size=1, gamma=0.5)
        method.step(lambda: model.losses(batches()[0]))
        scheduler.step()
    assert method.hparams["lr"] == LR / 2
    assert rate_of_step(model, method, batches()[1]) == pytest.approx(LR / 2, rel=1e-6)


def test_learned_weights_follow_the_scheduled_rate(applied_rates: list) -> None:
    """UW's log-variances are trained by an optimizer of their own: it takes the model's scheduled rate."""
    model, method = setup("uw")
    scheduler = StepLR(method, step_size=1, gamma=0.1)
    for x in batches()[:2]:
        applied_rates.clear()
        method.step(lambda x=x: model.losses(x))
        scheduler.step()
    assert len(applied_rates) == 2  # the model's optimizer and the weights' one
    assert [r for _, r in applied_rates] == pytest.approx([LR / 10, LR / 10])


def test_io_can_be_scheduled_before_its_first_step(applied_rates: list) -> None:
    """IO makes its per-task optimizers at the first step; a scheduler made before then still drives them."""
    model, method = setup("io")
    scheduler = StepLR(method, step_size=1, gamma=0.5)
    with pytest.warns(UserWarning, match="before `optimizer.step"):  # torch's warning for this order, as for Adam
        scheduler.step()  # so the first step's rate is LR / 2
    method.step(lambda: model.losses(batches()[0]))
    assert len(applied_rates) == 2 and all(r == LR / 2 for _, r in applied_rates)


def test_a_method_takes_no_second_parameter_group() -> None:
    _, method = setup("sum")
    with pytest.raises(ValueError, match="one flat list of parameters"):
        method.add_param_group({"params": [torch.zeros(1, requires_grad=True)]})


def test_mao_is_scheduled_as_adam_is() -> None:
    """The optimizer class itself: its rate after StepLR is the schedule's, without warnings."""
    model = TwoTasks()
    opt = MAO(model.parameters(), lr=LR)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scheduler = StepLR(opt, step_size=1, gamma=0.5)
        for x in batches()[:2]:
            opt.step(model.losses(x))
            scheduler.step()
    assert opt.param_groups[0]["lr"] == LR / 4
