"""All-or-nothing steps for methods that move the parameters more than once per batch.

IUS, IO, grouping and FAMO change the parameters (and optimizer state) before they know whether a
later forward pass will fail.  :func:`all_or_nothing` snapshots both first and puts them back if the
block raises, so a failed step leaves the method exactly as it was.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch

from ._base import Method

__all__ = ["all_or_nothing"]


@contextlib.contextmanager
def all_or_nothing(method: Method) -> Iterator[None]:
    """Restore ``method``'s parameters and state (its ``state_dict``) if the block raises, then re-raise.

    >>> from mao_lab.methods import make
    >>> p = torch.zeros(2, requires_grad=True)
    >>> sus = make("sus", [p], lr=0.1)
    >>> try:
    ...     with all_or_nothing(sus):
    ...         _ = sus.step(lambda: [(p - 1).pow(2).sum()])
    ...         raise RuntimeError("a later sub-step failed")
    ... except RuntimeError:
    ...     pass
    >>> p.detach(), sus.steps_taken
    (tensor([0., 0.]), 0)
    """
    params = [p.detach().clone() for p in method.params]
    state = copy.deepcopy(method.state_dict())
    try:
        yield
    except BaseException:
        with torch.no_grad():
            for p, saved in zip(method.params, params):
                p.copy_(saved)
        method.load_state_dict(state)
        raise
