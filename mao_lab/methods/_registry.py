"""Make any method by name: ``make("pcgrad", params, lr=1e-3)``; list them with ``available()``."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import Tensor

from ._base import Method

__all__ = ["available", "make", "register"]


@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., Method]
    description: str
    source: str  # where the algorithm's implementation comes from: "mao_lab" or "torchjd"


_REGISTRY: dict[str, _Entry] = {}


def register(name: str, description: str, source: str = "mao_lab") -> Callable[[Callable[..., Method]], Callable[..., Method]]:
    """Class or factory decorator adding a method to the registry under ``name``."""

    def decorator(factory: Callable[..., Method]) -> Callable[..., Method]:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is already registered")
        _REGISTRY[name] = _Entry(factory, description, source)
        return factory

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


def make(name: str, params: Iterable[Tensor], **hyperparameters: object) -> Method:
    """Build the method ``name`` over ``params`` with the given hyperparameters.

    Unknown names and unknown hyperparameters raise a ``ValueError`` that lists the valid ones.

    >>> import torch
    >>> method = make("mao", [torch.zeros(3, requires_grad=True)], lr=1e-2)
    >>> method.name
    'mao'
    >>> make("adamm", [])
    Traceback (most recent call last):
    ...
    ValueError: unknown method 'adamm'; available: ...
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    factory = _REGISTRY[name].factory
    valid = hyperparameter_names(name)
    unknown = sorted(set(hyperparameters) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown hyperparameter(s) {', '.join(map(repr, unknown))} for method {name!r}; "
            f"valid: {', '.join(valid) if valid else '(none)'}"
        )
    return factory(params, **hyperparameters)


def hyperparameter_names(name: str) -> list[str]:
    """The keyword arguments that method ``name`` accepts (its hyperparameters)."""
    signature = inspect.signature(_REGISTRY[name].factory)
    return [
        p.name
        for p in list(signature.parameters.values())[1:]
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
