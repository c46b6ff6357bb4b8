"""Gradient-norm clipping for steps whose gradients never reach ``.grad``.

``torch.nn.utils.clip_grad_norm_(model.parameters(), c)`` rescales ``p.grad``; MAO and the other
methods compute their gradients inside ``step`` and never write ``.grad``, so called before ``step`` it
has nothing to clip.  The methods take the clipping as options instead, applied where the gradients are:

- ``max_task_grad_norm``: every task's gradient (over all the parameters it reaches) is rescaled to at
  most this norm, before the method combines the tasks;
- ``max_grad_norm``: the gradient the method steps with is rescaled to at most this norm, as
  ``clip_grad_norm_`` does before ``Adam.step``; for the per-task optimizers (MAO, MTAdam), the norm of
  all the tasks' gradients together.

The factor is ``torch``'s: ``min(1, max_norm / (norm + 1e-6))``, the norm taken in float32 or wider.

>>> g = [torch.tensor([3.0, 0.0]), None, torch.tensor([4.0])]  # norm 5
>>> [None if t is None else [round(x, 4) for x in t.tolist()] for t in clipped(g, 1.0)]
[[0.6, 0.0], None, [0.8]]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["check_max_norm", "clip_factor", "clipped", "norm_of", "refuse_written_grads"]


def check_max_norm(name: str, value: float | None) -> float | None:
    """``None`` (no clipping) or a positive finite number; anything else raises ``ValueError``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be None or a positive finite number, got {value!r}")
    return float(value)


def norm_of(grads: Sequence[Tensor | None]) -> Tensor:
    """The L2 norm of all of ``grads`` together (float32 at least), as ``clip_grad_norm_`` computes it."""
    present = [g for g in grads if g is not None and g.numel()]
    if not present:
        return torch.zeros(())
    norms = [n.to(torch.promote_types(n.dtype, torch.float32)).cpu() for n in torch._foreach_norm(present)]
    return torch.linalg.vector_norm(torch.stack([n.to(norms[0].dtype) for n in norms]))


def clip_factor(norm: Tensor, max_norm: float) -> Tensor:
    """``min(1, max_norm / (norm + 1e-6))``: what the gradients are multiplied by."""
    return (max_norm / (norm + 1e-6)).clamp(max=1.0)


def clipped(grads: Sequence[Tensor | None], max_norm: float | None) -> list[Tensor | None]:
    """``grads`` rescaled together to a norm of at most ``max_norm`` (new tensors; ``None`` stays)."""
    out = list(grads)
    if max_norm is None:
        return out
    factor = clip_factor(norm_of(grads), max_norm)
    if float(factor) >= 1.0:
        return out
    for i, g in enumerate(grads):
        if g is not None:
            out[i] = g * factor.to(device=g.device, dtype=g.dtype)
    return out


def refuse_written_grads(params: Sequence[Tensor], owner: str) -> None:
    """Raise ``RuntimeError`` when a parameter has a ``.grad``: the step computes its own gradients, so
    what ``loss.backward()`` (then perhaps ``clip_grad_norm_``) wrote there would be silently ignored."""
    for i, p in enumerate(params):
        if p.grad is not None:
            raise RuntimeError(
                f"{owner}: parameter {i} (shape {tuple(p.shape)}) has a .grad, which this step would ignore: "
                "it computes every task's gradient itself from the losses.  Do not call loss.backward() "
                "before it (call zero_grad(set_to_none=True) if something else wrote .grad), and clip with "
                "its options max_grad_norm= / max_task_grad_norm= instead of clip_grad_norm_"
            )
