"""The one roll-back mechanism of every method: a step (or a load) that raises changes nothing.

Before a step, :func:`all_or_nothing` saves what the step may change before it is sure to succeed,
and puts it back if the block raises:

- every method: its small state, i.e. its ``state_dict`` without the ``"optimizer"`` entry (task
  names, counters, a weighting's or aggregator's state, random generators).  Methods update their
  optimizer last, once every check has passed, so its (large) state needs no copy: the snapshot has
  no ``"optimizer"`` entry, and ``Method._load_method_state`` keeps the optimizer as it is;
- methods that move the parameters more than once in a step (``Method.moves_parameters_during_step``:
  IUS, IO, grouping, FAMO): the parameters and the whole state, optimizer included;
- every method: which parameters its optimizer holds state for.  An optimizer that runs out of memory
  while it creates the state of a parameter (``torch.optim.Adam`` at its first step) leaves that state
  half made; it is dropped, so the next step makes it again.

Restoring goes through the method's own ``_load_method_state``, the same code that loads a checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ._base import Method

__all__ = ["all_or_nothing"]


@contextlib.contextmanager
def all_or_nothing(method: Method, *, everything: bool | None = None) -> Iterator[None]:
    """Restore ``method``'s state (and parameters, if it moves them mid-step) if the block raises.

    Args:
        everything: save the parameters and the whole state, optimizer included (default: what
            ``method.moves_parameters_during_step`` says).

    >>> from mao_lab.methods import make
    >>> p = torch.zeros(2, requires_grad=True)
    >>> sus = make("sus", [p], lr=0.1)
    >>> try:
    ...     with all_or_nothing(sus, everything=True):
    ...         _ = sus.step(lambda: [(p - 1).pow(2).sum()])
    ...         raise RuntimeError("a later sub-step failed")
    ... except RuntimeError:
    ...     pass
    >>> p.detach(), sus.steps_taken
    (tensor([0., 0.]), 0)
    """
    if everything is None:
        everything = method.moves_parameters_during_step
    params = [p.detach().clone() for p in method.params] if everything else None
    state = method.state_dict()
    saved: dict[str, Any] = copy.deepcopy(state if everything else {k: v for k, v in state.items() if k != "optimizer"})
    optimizer = method._lead_optimizer()
    had_state = set() if optimizer is None else {id(p) for p, s in optimizer.state.items() if s}
    try:
        yield
    except BaseException:
        if params is not None:
            with torch.no_grad():
                for p, before in zip(method.params, params):
                    p.copy_(before)
        optimizer = method._lead_optimizer()
        if not everything and optimizer is not None:
            for p in [p for p in optimizer.state if id(p) not in had_state]:
                del optimizer.state[p]
        method._restore(saved)
        raise
