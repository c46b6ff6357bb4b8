"""Small pieces every method family shares: hyperparameter checks, a private random stream, gradient checks.

Nothing here knows about a particular method.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from .._task_gradients import TaskInputError, compute_task_gradients

__all__ = [
    "check_adam_hyperparameters",
    "check_finite_gradients",
    "check_in_range",
    "check_int",
    "get_rng_states",
    "new_generator",
    "private_rng",
    "set_rng_states",
]


def check_in_range(name: str, value: float, low: float | None = None, high: float | None = None, *,
                   low_open: bool = False, high_open: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` lies in the given interval.

    >>> check_in_range("lr", 0.1, 0.0)
    >>> check_in_range("lr", -1.0, 0.0)
    Traceback (most recent call last):
    ...
    ValueError: hyperparameter 'lr' must be >= 0.0, got -1.0
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"hyperparameter {name!r} must be a number, got {value!r}") from None
    if math.isnan(number):
        raise ValueError(f"hyperparameter {name!r} must be a number, got nan")
    if low is not None and (number <= low if low_open else number < low):
        raise ValueError(f"hyperparameter {name!r} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (number >= high if high_open else number > high):
        raise ValueError(f"hyperparameter {name!r} must be {'<' if high_open else '<='} {high}, got {value}")


def check_adam_hyperparameters(lr: float, betas: Sequence[float], eps: float, weight_decay: float) -> None:
    """The checks ``torch.optim.Adam`` makes, with messages that name the hyperparameter."""
    check_in_range("lr", lr, 0.0)
    if len(betas) != 2:
        raise ValueError(f"hyperparameter 'betas' must be a pair (beta1, beta2), got {betas!r}")
    for b in betas:
        check_in_range("betas", b, 0.0, 1.0, high_open=True)
    check_in_range("eps", eps, 0.0)
    check_in_range("weight_decay", weight_decay, 0.0)


def check_int(name: str, value: object, low: int) -> int:
    """``value`` as an ``int`` >= ``low``, or a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"hyperparameter {name!r} must be an integer >= {low}, got {value!r}")
    return value


def new_generator(seed: int) -> torch.Generator:
    """A CPU generator of its own, so a method's randomness never touches (or depends on) the global RNG."""
    check_int("seed", seed, 0)
    return torch.Generator().manual_seed(seed)


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


def get_rng_states(device: torch.device) -> tuple[Tensor, Tensor | None]:
    """The global CPU RNG state, and ``device``'s when it is a CUDA device: what random draws there use."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def set_rng_states(states: tuple[Tensor, Tensor | None], device: torch.device) -> None:
    """Put back what :func:`get_rng_states` returned, to draw the same random numbers again."""
    torch.set_rng_state(states[0])
    if states[1] is not None:
        torch.cuda.set_rng_state(states[1], device)


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
            per_task = compute_task_gradients(dict(zip(names or [f"task{k}" for k in range(len(losses))], losses)),
                                              params, retain_graph=True)
        except RuntimeError:  # the graph is gone: fall through to the generic message
            per_task = None
        if per_task is not None:
            per_task.check_finite()
    raise TaskInputError("the combined gradient contains NaN or Inf (no single task's gradient does: overflow?)")
