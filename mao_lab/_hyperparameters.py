"""Hyperparameters declared once: a default, a check and a line of help per name.

Every method declares only the hyperparameters it adds (a class attribute ``hyperparameters``);
:func:`merged_spec` merges them along the class hierarchy, so the options every method shares
(``lr``, ``betas``, ``eps``, ``weight_decay``) are written in one place and the registry reads the
merged spec instead of retyped signatures.  The checks are the ones :class:`mao_lab.MAO` runs too.

A check takes the setting's name and value and returns the value to use (normalised: a float, a
tuple) or raises ``ValueError`` naming the setting:

>>> number(low=0.0)("lr", 1e-3)
0.001
>>> number(low=0.0)("lr", float("inf"))
Traceback (most recent call last):
...
ValueError: hyperparameter 'lr' must be a finite number, got inf
>>> number(low=0.0)("lr", True)
Traceback (most recent call last):
...
ValueError: hyperparameter 'lr' must be a number, got True (bool)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "ADAM_HYPERPARAMETERS",
    "Check",
    "Hyperparameter",
    "betas",
    "boolean",
    "checked",
    "choice",
    "integer",
    "merged_spec",
    "non_negative_floats",
    "number",
    "optional",
]

Check = Callable[[str, Any], Any]
"""``check(name, value)``: the value to use, or a ``ValueError`` that names the setting."""


@dataclass(frozen=True)
class Hyperparameter:
    """One hyperparameter: its default, its check, and what it means (one line)."""

    default: Any
    check: Check
    help: str = ""


def _describe(value: object) -> str:
    return f"{value!r} ({type(value).__name__})"


def _as_float(name: str, value: object) -> float:
    """A real number as a float: not a bool, not a string, not a tensor of more than one element."""
    if (
        isinstance(value, torch.Tensor)
        and value.numel() == 1
        and not value.dtype.is_complex
        and value.dtype != torch.bool
    ):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"hyperparameter {name!r} must be a number, got {_describe(value)}")
    return float(value)


def number(
    low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False
) -> Check:
    """A finite real number in ``[low, high]`` (ends excluded with ``low_open`` / ``high_open``)."""

    def check(name: str, value: object) -> float:
        x = _as_float(name, value)
        if not math.isfinite(x):
            raise ValueError(f"hyperparameter {name!r} must be a finite number, got {x}")
        if low is not None and (x <= low if low_open else x < low):
            raise ValueError(f"hyperparameter {name!r} must be {'>' if low_open else '>='} {low}, got {value}")
        if high is not None and (x >= high if high_open else x > high):
            raise ValueError(f"hyperparameter {name!r} must be {'<' if high_open else '<='} {high}, got {value}")
        return x

    return check


def integer(low: int) -> Check:
    """An ``int`` (not a bool) >= ``low``."""

    def check(name: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ValueError(f"hyperparameter {name!r} must be an integer >= {low}, got {value!r}")
        return int(value)

    return check


def boolean(name: str, value: object) -> bool:
    """``True`` or ``False``, nothing that merely converts to one."""
    if not isinstance(value, bool):
        raise ValueError(f"hyperparameter {name!r} must be True or False, got {value!r}")
    return value


def choice(*options: str) -> Check:
    """One of the given strings."""

    def check(name: str, value: object) -> str:
        if not isinstance(value, str) or value not in options:
            raise ValueError(f"hyperparameter {name!r} must be one of {', '.join(map(repr, options))}, got {value!r}")
        return value

    return check


def optional(inner: Check) -> Check:
    """``None``, or what ``inner`` accepts."""

    def check(name: str, value: object) -> Any:
        return None if value is None else inner(name, value)

    return check


def betas(name: str, value: object) -> tuple[float, float]:
    """A pair ``(beta1, beta2)``, each in ``[0, 1)``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"hyperparameter {name!r} must be a pair (beta1, beta2), got {value!r}")
    decay = number(0.0, 1.0, high_open=True)
    return decay(name, value[0]), decay(name, value[1])


def non_negative_floats(name: str, value: object) -> tuple[float, ...]:
    """A non-empty sequence of finite numbers >= 0."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        raise ValueError(f"hyperparameter {name!r} must be a non-empty sequence of numbers >= 0, got {value!r}")
    return tuple(number(0.0)(name, v) for v in value)


ADAM_HYPERPARAMETERS: Mapping[str, Hyperparameter] = {
    "lr": Hyperparameter(1e-3, number(0.0), "learning rate"),
    "betas": Hyperparameter((0.9, 0.999), betas, "decay rates of the first and second moments"),
    "eps": Hyperparameter(1e-8, number(0.0), "added to the denominator"),
    "weight_decay": Hyperparameter(0.0, number(0.0), "decoupled (AdamW-style) weight decay, once per step"),
}
"""What every method takes: the hyperparameters of Adam (``betas``/``eps`` unused by plain SGD)."""


def merged_spec(cls: type) -> dict[str, Hyperparameter]:
    """The hyperparameters of ``cls``: its own ``hyperparameters`` over those of its bases (MRO order).

    >>> class A:
    ...     hyperparameters = {"lr": Hyperparameter(1.0, number(0.0))}
    >>> class B(A):
    ...     hyperparameters = {"c": Hyperparameter(0.4, number(0.0))}
    >>> list(merged_spec(B))
    ['lr', 'c']
    """
    spec: dict[str, Hyperparameter] = {}
    for klass in reversed(cls.__mro__):
        spec.update(vars(klass).get("hyperparameters", {}))
    return spec


def checked(spec: Mapping[str, Hyperparameter], given: Mapping[str, object], owner: str) -> dict[str, Any]:
    """Every hyperparameter of ``spec``: ``given``'s value checked, or the default.

    Unknown names raise a ``ValueError`` that lists the valid ones.
    """
    unknown = sorted(set(given) - set(spec))
    if unknown:
        raise ValueError(
            f"unknown hyperparameter(s) {', '.join(map(repr, unknown))} for method {owner!r}; "
            f"valid: {', '.join(spec) if spec else '(none)'}"
        )
    return {name: h.check(name, given[name]) if name in given else h.default for name, h in spec.items()}
