"""Checks that a saved optimizer state fits the optimizer it is loaded into, before anything is loaded.

``torch.optim.Optimizer.load_state_dict`` checks the number of groups and of parameters per group,
nothing more: moments of another size load silently and fail (or, in a fused kernel, crash the
interpreter) at the next step.  :func:`check_optimizer_state` checks every per-parameter state
against its parameter with a check the optimizer supplies, and the groups' hyperparameters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from ._validate import Check

__all__ = ["CheckpointError", "check_optimizer_state", "check_tensor"]


class CheckpointError(ValueError):
    """A saved state that does not fit what it is loaded into; nothing was changed."""


def check_tensor(value: object, where: str, shape: tuple[int, ...], *, floating: bool = True) -> None:
    """``value`` must be a tensor of ``shape`` (a floating-point one unless ``floating`` is false)."""
    if not isinstance(value, Tensor):
        raise CheckpointError(f"{where} must be a tensor, got {type(value).__name__}")
    if tuple(value.shape) != tuple(shape):
        raise CheckpointError(
            f"{where} has shape {tuple(value.shape)}, expected {tuple(shape)}: saved from another model?"
        )
    if floating and not value.is_floating_point():
        raise CheckpointError(f"{where} has dtype {value.dtype}, expected a floating-point dtype")


def check_step(value: object, where: str) -> None:
    """A step counter: a finite scalar >= 0 (a number or a one-element tensor)."""
    if isinstance(value, Tensor):
        ok = value.numel() == 1 and bool(torch.isfinite(value.detach().double()).all()) and float(value) >= 0
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
    if not ok:
        raise CheckpointError(f"{where} must be a step count >= 0, got {value!r}")


def check_optimizer_state(
    optimizer: torch.optim.Optimizer,
    state: object,
    check_param_state: Callable[[Tensor, Mapping[str, Any], str], None],
    group_checks: Mapping[str, Check],
    what: str,
) -> None:
    """Raise :class:`CheckpointError` unless ``state`` (a ``state_dict``) fits ``optimizer``.

    Checks the layout (groups, parameters per group), each group's hyperparameters named in
    ``group_checks`` (all of them must be there: a group saved by another kind of optimizer lacks
    some), and, with ``check_param_state(p, saved, where)``, the saved state of each
    parameter against the parameter it will belong to.
    """
    if (
        not isinstance(state, Mapping)
        or not isinstance(state.get("state"), Mapping)
        or not isinstance(state.get("param_groups"), list)
    ):
        raise CheckpointError(f"{what}: not an optimizer state_dict (needs 'state' and 'param_groups')")
    params_by_id = _check_groups(state["param_groups"], optimizer.param_groups, group_checks, what)
    for key, saved in state["state"].items():
        if key not in params_by_id:
            raise CheckpointError(f"{what}: state saved for parameter id {key!r}, which no parameter group lists")
        if not isinstance(saved, Mapping):
            raise CheckpointError(f"{what}: the state of parameter {key!r} is not a dict")
        p = params_by_id[key]
        check_param_state(p, saved, f"{what}: parameter {key!r} (shape {tuple(p.shape)})")


def _check_groups(
    saved_groups: list, groups: list[dict[str, Any]], group_checks: Mapping[str, Check], what: str
) -> dict[object, Tensor]:
    """The saved groups' layout and hyperparameters; returns saved parameter id -> parameter."""
    if len(saved_groups) != len(groups):
        raise CheckpointError(f"{what}: {len(saved_groups)} parameter groups saved, the optimizer has {len(groups)}")
    params_by_id: dict[object, Tensor] = {}
    for g, (saved, group) in enumerate(zip(saved_groups, groups)):
        if not isinstance(saved, Mapping) or not isinstance(saved.get("params"), list):
            raise CheckpointError(f"{what}: parameter group {g} is malformed")
        if len(saved["params"]) != len(group["params"]):
            raise CheckpointError(
                f"{what}: parameter group {g} has {len(saved['params'])} parameters saved, "
                f"{len(group['params'])} in the optimizer"
            )
        missing = sorted(set(group_checks) - set(saved))
        if missing:
            raise CheckpointError(
                f"{what}: parameter group {g} has no {', '.join(missing)}: saved by another optimizer?"
            )
        for name, check in group_checks.items():
            try:
                check(name, saved[name])
            except ValueError as error:
                raise CheckpointError(f"{what}: parameter group {g}: {error}") from None
        params_by_id.update(zip(saved["params"], group["params"]))
    return params_by_id
