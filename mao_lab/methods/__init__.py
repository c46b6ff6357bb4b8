"""Every task-balancing method behind one interface: ``make(name, params, **hyperparameters)``.

See :class:`Method` for the training-step contract and :func:`available` for the list.
"""

from ._base import LossClosure, Method
from ._registry import available, hyperparameter_names, make, register, sources

# Importing the implementations registers them.
from . import _mao_method  # noqa: E402,F401  (registers "mao")

__all__ = ["LossClosure", "Method", "available", "hyperparameter_names", "make", "register", "sources"]
