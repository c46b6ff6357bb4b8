"""Make any method by name: ``make("pcgrad", params, lr=1e-3)``; list them with ``available()``.

A method is registered once, by decorating its class with :func:`register`; the name is written
there only (the decorator sets the class's ``name``).  The hyperparameters are read from the class's
merged spec (:meth:`Method.hyperparameter_spec`), never from a retyped signature.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import Tensor

from ._base import Method

__all__ = ["available", "hyperparameter_names", "make", "method_class", "register", "sources"]

M = TypeVar("M", bound=type[Method])


@dataclass(frozen=True)
class _Entry:
    cls: type[Method]
    description: str
    source: str  # where the algorithm's implementation comes from: "mao_lab" or "torchjd"


_REGISTRY: dict[str, _Entry] = {}
_SOURCES = ("mao_lab", "torchjd")


def register(name: str, description: str, source: str = "mao_lab", *, replace: bool = False) -> Callable[[M], M]:
    """Class decorator: add a :class:`Method` subclass to the registry under ``name`` (and set its ``name``).

    Args:
        name: the registry name (a Python identifier, lower case by convention).
        description: one line: what the method does, and the paper (see ``docs/references.md`` §3).
        source: ``"torchjd"`` when the algorithm is TorchJD's own class, else ``"mao_lab"``.
        replace: let this class take over a name already registered (the earlier class stays
            importable); without it a second registration of a name is an error.
    """
    if not name.isidentifier():
        raise ValueError(f"method name {name!r} must be a Python identifier (e.g. 'my_method')")
    if not description or "\n" in description:
        raise ValueError(f"method {name!r}: the description must be one non-empty line")
    if source not in _SOURCES:
        raise ValueError(f"method {name!r}: source must be one of {_SOURCES}, got {source!r}")

    def decorator(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"register({name!r}) decorates a subclass of mao_lab.methods.Method, got {cls!r}")
        earlier = _REGISTRY.get(name)
        reloaded = earlier is not None and (earlier.cls.__module__, earlier.cls.__qualname__) == (
            cls.__module__,
            cls.__qualname__,
        )  # the same module executed again (importlib.reload, doctests)
        if earlier is not None and not (replace or reloaded):
            raise ValueError(f"method {name!r} is already registered (by {earlier.cls.__qualname__})")
        if "name" in vars(cls) and vars(cls)["name"] != name:
            raise ValueError(f"{cls.__qualname__} is already registered as {vars(cls)['name']!r}")
        cls.name = name
        _REGISTRY[name] = _Entry(cls, description, source)
        return cls

    return decorator


def available() -> dict[str, str]:
    """Registered method names, each with a one-line description.

    >>> "mao" in available()
    True
    """
    return {name: entry.description for name, entry in sorted(_REGISTRY.items())}


def sources() -> dict[str, str]:
    """For each method, where its algorithm comes from (``"torchjd"`` or ``"mao_lab"``)."""
    return {name: entry.source for name, entry in sorted(_REGISTRY.items())}


def method_class(name: str) -> type[Method]:
    """The class registered under ``name``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name].cls


def make(name: str, params: Iterable[Tensor], **hyperparameters: Any) -> Method:
    """Build the method ``name`` over ``params`` with the given hyperparameters (and ``num_tasks``).

    Unknown names and unknown hyperparameters raise a ``ValueError`` that lists the valid ones.

    >>> import torch
    >>> method = make("mao", [torch.zeros(3, requires_grad=True)], lr=1e-2)
    >>> method.name, method.hparams["lr"]
    ('mao', 0.01)
    >>> make("adamm", [])
    Traceback (most recent call last):
    ...
    ValueError: unknown method 'adamm'; available: ...
    """
    return method_class(name)(params, **hyperparameters)


def hyperparameter_names(name: str) -> list[str]:
    """The hyperparameters that method ``name`` accepts, in declaration order (``num_tasks`` aside)."""
    return list(method_class(name).hyperparameter_spec())
