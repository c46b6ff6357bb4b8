"""Memory: the state's size known before it is allocated, a clear error when it will not fit, and an
out-of-memory error while the state is allocated changes nothing.

The estimate (:func:`mao_lab.state_bytes`) is checked against the bytes the state really holds after
steps (the sum of ``nbytes`` of the tensors of ``state_dict()["optimizer"]``), with which tasks reach
which parameter written down by hand from the model.  Running out of memory is injected: the ``k``-th
allocation of a step raises ``torch.OutOfMemoryError``, for every ``k`` until the step allocates no more.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn

import mao_lab._memory
from mao_lab import MAO, state_bytes
from mao_lab.methods import Method, available, make

from _helpers import assert_same

pytestmark = pytest.mark.usefixtures("one_thread")


class TwoTasks(nn.Module):
    """A shared trunk and one head per task: the trunk is reached by both tasks, each head by its own."""

    def __init__(self, width: int = 4, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.trunk, self.head_a, self.head_b = nn.Linear(3, width), nn.Linear(width, 1), nn.Linear(width, 1)
        self.to(dtype)

    def losses(self, x: torch.Tensor, *, b_reaches_trunk: bool = True) -> list[torch.Tensor]:
        z = self.trunk(x.to(self.trunk.weight.dtype)).relu()
        z_b = z if b_reaches_trunk else z.detach()
        return [(self.head_a(z) - 1).pow(2).mean(), (self.head_b(z_b) + 1).abs().mean()]

    def reach(self) -> dict[torch.Tensor, tuple[int, ...]]:
        return {
            **{p: (0, 1) for p in self.trunk.parameters()},
            **{p: (0,) for p in self.head_a.parameters()},
            **{p: (1,) for p in self.head_b.parameters()},
        }


def batches(count: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(8, 3, generator=generator) for _ in range(count)]


def tensor_bytes(obj: object) -> int:
    """The bytes of every tensor in a (nested) state."""
    if isinstance(obj, torch.Tensor):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def trained(name: str, width: int = 4, dtype: torch.dtype = torch.float32) -> tuple[TwoTasks, Method]:
    torch.manual_seed(0)
    model = TwoTasks(width, dtype)
    method = make(name, model.parameters(), lr=1e-2)
    for x in batches(2):
        method.step(lambda x=x: model.losses(x))
    return model, method


# -- the estimate -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(available()))
def test_the_estimate_is_the_optimizer_state_a_step_allocates(name: str) -> None:
    torch.manual_seed(0)
    model = TwoTasks()
    method = make(name, model.parameters(), lr=1e-2)
    estimate = method.state_bytes(2, reach=model.reach())
    assert state_bytes(name, 2, params=TwoTasks().parameters(), reach=None, lr=1e-2) >= estimate
    for x in batches(2):
        method.step(lambda x=x: model.losses(x))
    assert estimate == tensor_bytes(method.state_dict()["optimizer"])
    assert method.state_bytes(reach=model.reach()) == estimate  # num_tasks: the method's, once it has stepped


@pytest.mark.parametrize("name", sorted(available()))
def test_what_the_estimate_leaves_out_does_not_grow_with_the_model(name: str) -> None:
    """The rest of the state (task weights, a generator) is the same for a model 16 times wider."""
    rests = []
    for width in (4, 64):
        _, method = trained(name, width)
        state = method.state_dict()
        rests.append(tensor_bytes(state) - tensor_bytes(state["optimizer"]))
    assert rests[0] == rests[1]


def test_maos_estimate_by_hand() -> None:
    """2 tasks x 2 moments for the trunk's 3*4 + 4 floats, 1 task x 2 moments for each head's 4 + 1, and a
    4-byte step counter per tensor; every parameter shared: the upper bound, 2 x 2 x all 26 floats."""
    model = TwoTasks()
    opt = MAO(model.parameters())
    assert state_bytes(opt, 2, reach=model.reach()) == 4 * (2 * 2 * 16 + 2 * (2 * 5)) + 4 * 6
    assert state_bytes(opt, 2) == 4 * (2 * 2 * 26) + 4 * 6
    opt.step(model.losses(batches(1)[0]))
    assert tensor_bytes(opt.state_dict()["state"]) == state_bytes(opt, 2, reach=model.reach())


def test_double_precision_moments_take_twice_the_bytes() -> None:
    model = TwoTasks(dtype=torch.float64)
    opt = MAO(model.parameters())
    opt.step(model.losses(batches(1)[0]))
    by_hand = 8 * (2 * 2 * 16 + 2 * (2 * 5)) + 4 * 6
    assert tensor_bytes(opt.state_dict()["state"]) == state_bytes(opt, 2, reach=model.reach()) == by_hand


def test_bad_arguments_are_named() -> None:
    model = TwoTasks()
    with pytest.raises(ValueError, match="needs num_tasks"):
        make("mao", model.parameters()).state_bytes()
    with pytest.raises(TypeError, match="needs the params"):
        state_bytes("mao", 2)
    with pytest.raises(ValueError, match="the tasks are 0 .. 1"):
        state_bytes(MAO(model.parameters()), 2, reach={model.trunk.weight: (0, 2)})
    with pytest.raises(TypeError, match="not Adam"):
        state_bytes(torch.optim.Adam(model.parameters()), 2)


# -- not enough memory: a clear error before allocating ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["optimizer", "mao", "mtadam"])
def test_a_state_that_will_not_fit_is_refused_before_anything_changes(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on a CUDA device with 100 bytes free (the check reads ``free_bytes``; the CPU has no such figure)."""
    model = TwoTasks()
    step: Callable[[], object]
    if kind == "optimizer":
        opt = MAO(model.parameters())
        step = lambda: opt.step(model.losses(batches(1)[0]))  # noqa: E731
    else:
        opt = make(kind, model.parameters())
        step = lambda: opt.step(lambda: model.losses(batches(1)[0]))  # noqa: E731
    before = copy.deepcopy((model.state_dict(), opt.state_dict()))
    monkeypatch.setattr(mao_lab._memory, "free_bytes", lambda device: 100)
    with pytest.raises(torch.OutOfMemoryError, match=r"state for 2 tasks needs .* which has 100 bytes free"):
        step()
    assert_same(before, (model.state_dict(), opt.state_dict()), ordered=True)
    monkeypatch.undo()
    step()
    assert tensor_bytes(opt.state_dict()) > 0


# -- running out of memory while the state is made ------------------------------------------------------------


class Allocations:
    """Counts the allocations a step makes (``torch.zeros``, ``torch.zeros_like``, ``Tensor.new_zeros``), and
    makes the ``fail_at``-th one raise ``torch.OutOfMemoryError``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_at: int | None = None) -> None:
        self.count, self.fail_at = 0, fail_at
        for owner, name in ((torch, "zeros"), (torch, "zeros_like"), (torch.Tensor, "new_zeros")):
            monkeypatch.setattr(owner, name, self._counted(getattr(owner, name)))

    def _counted(self, allocate: Callable) -> Callable:
        def counted(*args: object, **kwargs: object) -> torch.Tensor:
            self.count += 1
            if self.count == self.fail_at:
                raise torch.OutOfMemoryError("injected: out of memory")
            return allocate(*args, **kwargs)

        return counted


@contextlib.contextmanager
def patched() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield monkeypatch


def allocations_of(step: Callable[[], object]) -> int:
    with patched() as monkeypatch:
        counter = Allocations(monkeypatch)
        step()
    return counter.count


def check_every_allocation_failure(make_run: Callable[[], tuple[Callable[[], object], Callable[[], object]]]) -> int:
    """For each allocation ``k`` of the step: a fresh run (``prepare`` brings it to the step, ``step`` takes it)
    whose ``k``-th allocation fails must be as before, byte for byte, and then step exactly as a run that
    never failed.  Returns how many allocations were tried."""
    snapshot, step, *_ = make_run()
    reference = snapshot()
    step()
    stepped = snapshot()
    count = allocations_of(make_run()[1])
    assert count > 0
    for k in range(1, count + 1):
        snapshot, step = make_run()
        before = snapshot()
        with patched() as monkeypatch:
            Allocations(monkeypatch, fail_at=k)
            with pytest.raises(torch.OutOfMemoryError, match="injected"):
                step()
        assert_same(before, snapshot(), ordered=True)
        assert_same(before, reference, ordered=True)
        step()
        assert_same(stepped, snapshot(), ordered=True)
    return count


def mao_run(widening: bool) -> tuple[Callable[[], object], Callable[[], object]]:
    """MAO with two parameter groups (trunk; heads), brought to the step to test: the first step, or (with
    ``widening``) the step where task 1 reaches the trunk for the first time (its moments are made there)."""
    torch.manual_seed(0)
    model = TwoTasks()
    opt = MAO(
        [
            {"params": model.trunk.parameters()},
            {"params": [*model.head_a.parameters(), *model.head_b.parameters()], "lr": 1e-2},
        ]
    )
    xs = batches(2)
    if widening:
        opt.step(model.losses(xs[0], b_reaches_trunk=False))

    def snapshot() -> object:
        return copy.deepcopy((model.state_dict(), opt.state_dict()))

    return snapshot, lambda: opt.step(model.losses(xs[1]))


@pytest.mark.parametrize("widening", [False, True])
def test_mao_out_of_memory_while_making_its_state_changes_nothing(widening: bool) -> None:
    assert check_every_allocation_failure(lambda: mao_run(widening)) >= 4


def test_mao_loads_its_state_after_a_failed_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's failure: out of memory in group 1 at the first step; then steps and checkpoints work."""
    snapshot, step = mao_run(widening=False)
    count = allocations_of(mao_run(False)[1])
    with patched() as patch:
        Allocations(patch, fail_at=count)  # the last allocation: the second group's moments
        with pytest.raises(torch.OutOfMemoryError):
            step()
    step()
    step()
    model = TwoTasks()
    opt = MAO(
        [
            {"params": model.trunk.parameters()},
            {"params": [*model.head_a.parameters(), *model.head_b.parameters()], "lr": 1e-2},
        ]
    )
    _, saved = snapshot()  # type: ignore[misc]
    opt.load_state_dict(saved)
    assert_same(opt.state_dict(), saved, ordered=True)


@pytest.mark.parametrize("name", sorted(available()))
def test_a_methods_first_step_out_of_memory_changes_nothing(name: str) -> None:
    def run() -> tuple[Callable[[], object], Callable[[], object]]:
        torch.manual_seed(0)
        model = TwoTasks()
        method = make(name, model.parameters(), lr=1e-2)
        x = batches(1)[0]

        def snapshot() -> object:
            return copy.deepcopy((model.state_dict(), method.state_dict()))

        return snapshot, lambda: method.step(lambda: model.losses(x))

    check_every_allocation_failure(run)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_a_state_larger_than_free_memory_is_refused_before_allocating() -> None:
    """A parameter of an eighth of the free memory, two tasks: the gradients fit, the 4 moments do not."""
    from mao_lab import TaskGradients

    device = torch.device("cuda")
    free, _ = torch.cuda.mem_get_info(device)
    p = torch.zeros(free // 8 // 4, device=device, requires_grad=True)
    opt = MAO([p])
    grads = TaskGradients.from_per_task([[torch.ones_like(p)], [torch.ones_like(p)]], [p])
    allocated = torch.cuda.memory_allocated(device)
    with pytest.raises(torch.OutOfMemoryError, match="MAO's state for 2 tasks needs"):
        opt.step(task_grads=grads)
    assert torch.cuda.memory_allocated(device) <= allocated + 2 * p.nbytes  # the gradients' stack, no state
    assert not opt.state and bool((p == 0).all())
