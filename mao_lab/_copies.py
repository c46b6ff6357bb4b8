"""What a copy of an optimizer or a method keeps: ``copy.deepcopy`` and ``pickle`` go through here.

``torch.optim.Optimizer`` pickles only ``defaults``, ``state`` and ``param_groups``: an attribute of
its own (MAO's ``check_finite``, all of a method's) would be lost, and the copy would fail at its
next step.  :func:`copyable_state` keeps the whole ``__dict__`` instead, less what must not travel:

- what refers to the original: the ``step`` that a learning-rate scheduler wraps (it would step the
  original, not the copy; the copy's scheduler wraps the copy's own), its ``_opt_called`` mark;
- what is attached, not owned: observers (a recorder) and ``torch.optim`` hooks, which a copy of
  ``torch.optim.Adam`` drops as well;
- caches rebuilt on demand (MAO's gradient reserve).

>>> import copy, torch
>>> from mao_lab import MAO
>>> w = torch.zeros(2, requires_grad=True)
>>> opt = MAO([w], check_finite=False)
>>> copy.deepcopy(opt).check_finite
False
"""

from __future__ import annotations

from typing import Any

__all__ = ["copyable_state"]

# The instance attributes a copy leaves out (see the module docstring).
_NOT_COPIED = frozenset(
    {
        "step",  # a scheduler's wrapper of the original's bound step
        "_opt_called",
        "_observers",
        "_task_gradient_reserve",
        "_optimizer_step_pre_hooks",
        "_optimizer_step_post_hooks",
        "_optimizer_state_dict_pre_hooks",
        "_optimizer_state_dict_post_hooks",
        "_optimizer_load_state_dict_pre_hooks",
        "_optimizer_load_state_dict_post_hooks",
    }
)


def copyable_state(obj: object) -> dict[str, Any]:
    """``obj.__dict__`` without what a copy must not carry (``torch.optim.Optimizer.__setstate__``
    recreates the empty hook dictionaries)."""
    return {key: value for key, value in vars(obj).items() if key not in _NOT_COPIED}
