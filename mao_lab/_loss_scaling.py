"""Loss scaling (mixed precision) for steps that compute their own gradients.

``torch.amp.GradScaler`` unscales ``p.grad`` and looks for Inf/NaN there; MAO and the other methods
never write ``.grad``, so its ``unscale_`` did nothing and its ``step`` raised "No inf checks were
recorded".  They declare ``_step_supports_amp_scaling`` instead: ``scaler.step(optimizer, losses)``
(or ``method.step(closure, grad_scaler=scaler)``) hands them the scaler, and the step

1. backpropagates the losses times the scale ``S`` (the gradients are then averaged over replicas),
2. if any gradient is Inf or NaN, changes nothing (parameters and state byte for byte), counts the
   skip (``skipped_steps``) and tells the scaler, whose ``update()`` then lowers the scale;
3. otherwise multiplies the gradients by ``1/S`` and takes the step as without scaling.

Telling the scaler writes into its per-optimizer record (``_per_optimizer_states``), the one thing
``GradScaler`` offers no public way to do: :func:`report_found_inf` checks the layout first and names
the problem if another torch version changed it.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor

__all__ = [
    "LossScaleOverflow",
    "check_eps_for_dtypes",
    "found_non_finite",
    "in_callers_autocast",
    "loss_scale",
    "outside_autocast",
    "report_found_inf",
]

T = TypeVar("T")
_AUTOCAST_DEVICES = ("cpu", "cuda")


class LossScaleOverflow(Exception):
    """Raised inside a step when a scaled gradient is Inf/NaN: the step is skipped (never escapes ``step``)."""


def loss_scale(grad_scaler: Any) -> float | None:
    """The scale to multiply the losses by, or ``None`` when ``grad_scaler`` is ``None`` or disabled."""
    if grad_scaler is None:
        return None
    if not hasattr(grad_scaler, "get_scale") or not hasattr(grad_scaler, "is_enabled"):
        raise TypeError(f"grad_scaler must be a torch.amp.GradScaler, got {type(grad_scaler).__name__}")
    if not grad_scaler.is_enabled():
        return None
    if getattr(grad_scaler, "_scale", None) is None:  # not yet used: scaler.scale(...) was never called
        init = getattr(grad_scaler, "_lazy_init_scale_growth_tracker", None)
        if init is None:
            raise RuntimeError(
                f"this torch {torch.__version__} GradScaler cannot be set up by mao_lab: call "
                "scaler.scale(torch.zeros(())) once before the first step"
            )
        init(torch.device(grad_scaler._device))
    return float(grad_scaler.get_scale())


def report_found_inf(grad_scaler: Any, optimizer: object, found_inf: bool) -> None:
    """Record for ``grad_scaler.update()`` whether this step's scaled gradients overflowed."""
    if grad_scaler is None or not grad_scaler.is_enabled():
        return
    states = getattr(grad_scaler, "_per_optimizer_states", None)
    scale = getattr(grad_scaler, "_scale", None)
    layout_known = isinstance(states, dict) and "found_inf_per_device" in states[id(optimizer)]
    if not layout_known or not isinstance(scale, Tensor):
        raise RuntimeError(
            f"this torch {torch.__version__} GradScaler keeps its per-optimizer record in another form than "
            "torch 2.x did: mao_lab cannot tell it about skipped steps.  Pass grad_scaler=None and scale by hand"
        )
    states[id(optimizer)]["found_inf_per_device"] = {
        scale.device: torch.full((), float(found_inf), dtype=torch.float32, device=scale.device)
    }


def found_non_finite(grads: Sequence[Tensor | None]) -> bool:
    """Whether any of ``grads`` holds Inf or NaN (one fused reduction)."""
    present = [g for g in grads if g is not None and g.numel()]
    if not present:
        return False
    norms = torch._foreach_norm(present)
    return not all(
        bool(torch.stack([n for n in norms if n.device == d]).isfinite().all()) for d in {n.device for n in norms}
    )


def unscaled(grads: Sequence[Tensor | None], scale: float) -> list[Tensor | None]:
    """``grads`` times ``1/scale`` (new tensors: autograd may hand out expanded ones)."""
    inverse = 1.0 / scale
    return [None if g is None else g * inverse for g in grads]


@functools.lru_cache(maxsize=64)
def _rounds_to_zero(eps: float, dtype: torch.dtype) -> bool:
    return eps > 0 and float(torch.tensor(eps, dtype=dtype)) == 0.0


def check_eps_for_dtypes(params: Sequence[Tensor], eps: float, owner: str) -> None:
    """Refuse low-precision parameters in which ``eps`` rounds to zero: Adam's denominator
    ``sqrt(v) + eps`` is then 0 wherever ``v`` underflows, and ``0/0`` writes NaN into the parameter."""
    for dtype in {p.dtype for p in params if p.is_floating_point()}:
        if _rounds_to_zero(float(eps), dtype):
            smallest = float(torch.finfo(dtype).smallest_normal)
            raise ValueError(
                f"{owner}: eps={eps!r} rounds to 0 in {dtype}, the parameters' dtype, so a step would write "
                f"NaN where a second moment underflows; use eps >= {smallest:.3g} or keep float32 parameters "
                "(master weights) and run the forward pass under torch.autocast"
            )


def _enabled_autocasts() -> list[tuple[str, torch.dtype]]:
    return [(d, torch.get_autocast_dtype(d)) for d in _AUTOCAST_DEVICES if torch.is_autocast_enabled(d)]


@contextlib.contextmanager
def outside_autocast() -> Iterator[None]:
    """Turn ``torch.autocast`` off for a method's own arithmetic (a Gram matrix, an aggregation, the
    update): under the caller's autocast those would silently run in bfloat16 or float16."""
    with contextlib.ExitStack() as stack:
        for device, _ in _enabled_autocasts():
            stack.enter_context(torch.autocast(device, enabled=False))
        yield


def in_callers_autocast(closure: Callable[[], T]) -> Callable[[], T]:
    """``closure`` run under the autocast the caller has now (the forward pass belongs to the caller),
    even where the step turned it off (:func:`outside_autocast`)."""
    states = _enabled_autocasts()
    if not states:
        return closure

    def forward() -> T:
        with contextlib.ExitStack() as stack:
            for device, dtype in states:
                stack.enter_context(torch.autocast(device, dtype=dtype))
            return closure()

    return forward
