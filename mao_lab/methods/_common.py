"""Small pieces every method family shares: a private random stream, gradient checks.

Nothing here knows about a particular method.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .._checkpoints import check_tensor
from .._task_gradients import TaskInputError, compute_task_gradients
from .._validate import Hyperparameter, integer
from ._base import Method

__all__ = ["Seeded", "check_finite_gradients", "private_rng"]


class Seeded(Method):
    """Mixin for a method that draws random numbers: a ``seed`` hyperparameter and a generator of its own.

    The draws never touch (or depend on) the global RNG; the generator's state is saved with the method
    and put back when a step fails.
    """

    hyperparameters = {"seed": Hyperparameter(0, integer(0), "seeds the method's own random generator")}

    def __init__(self, params: Iterable[Tensor], **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._generator = torch.Generator().manual_seed(self.hparams["seed"])

    def _method_state(self) -> dict[str, Any]:
        return {**super()._method_state(), "generator": self._generator.get_state()}

    def _load_method_state(self, state: Mapping[str, Any]) -> None:
        if "generator" in state:
            check_tensor(
                state["generator"],
                f"method {self.name!r}: the generator state",
                tuple(self._generator.get_state().shape),
                floating=False,
            )
        super()._load_method_state(state)
        if "generator" in state:
            self._generator.set_state(state["generator"])


@contextlib.contextmanager
def private_rng(generator: torch.Generator, device: torch.device | None = None) -> Iterator[None]:
    """Run library code that draws from the *global* RNG (TorchJD's PCGrad, GradVac, GradDrop, Random)
    on ``generator`` instead, leaving the global RNG exactly as it was.

    The generator advances by what the code drew, so the method stays reproducible from its own seed
    and its state can be saved with the method.  On a CUDA ``device``, that device's generator is
    seeded from ``generator`` inside the block too.

    >>> g = torch.Generator().manual_seed(0)
    >>> before = torch.get_rng_state()
    >>> with private_rng(g):
    ...     a = torch.rand(2)
    >>> bool((torch.get_rng_state() == before).all())
    True
    >>> torch.equal(a, torch.rand(2, generator=torch.Generator().manual_seed(0)))
    True
    """
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(generator.get_state())
        if devices:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            torch.cuda.manual_seed(seed)
        yield
        generator.set_state(torch.get_rng_state())


def check_finite_gradients(
    grads: Sequence[Tensor | None],
    losses: Sequence[Tensor] | None = None,
    names: Sequence[str] | None = None,
    params: Sequence[Tensor] | None = None,
) -> None:
    """Raise :class:`TaskInputError` if a combined gradient holds NaN or Inf.

    One fused reduction on the happy path.  When ``losses`` (with their graphs still alive) and
    ``params`` are given, the culprit task is found by backpropagating each task on its own.
    """
    present = [g for g in grads if g is not None and g.numel()]
    if not present:
        return
    if bool(torch.stack([n.float() for n in torch._foreach_norm(present)]).isfinite().all()):
        return
    if losses is not None and params is not None:
        try:
            per_task = compute_task_gradients(
                dict(zip(names or [f"task{k}" for k in range(len(losses))], losses)), params, retain_graph=True
            )
        except RuntimeError:  # the graph is gone: fall through to the generic message
            per_task = None
        if per_task is not None:
            per_task.check_finite()
    raise TaskInputError("the combined gradient contains NaN or Inf (no single task's gradient does: overflow?)")
