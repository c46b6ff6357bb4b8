"""One place for argument checks, and one message style: ``<name> must be <requirement>, got <value>``.

A *requirement* is a small object that says whether a value is allowed (:meth:`Requirement.allows`) and
what is allowed (:meth:`Requirement.describe`).  Library functions check their arguments with
:func:`require`, which raises ``ValueError``; the notebooks declare a spec of requirements once and check
all their parameters with :func:`mao_lab.notebook.validate_parameters`, which raises the notebooks'
:class:`~mao_lab.notebook.NotebookParameterError` with the same description.

>>> require("steps", 10, Int(min=1))
10
>>> require("steps", 0, Int(min=1))
Traceback (most recent call last):
...
ValueError: steps must be a positive integer, got 0
>>> require("lr", True, Number(positive=True))
Traceback (most recent call last):
...
ValueError: lr must be a positive, finite number, got True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

__all__ = [
    "Bool",
    "Choice",
    "Choices",
    "Int",
    "IntList",
    "Number",
    "NumberList",
    "Requirement",
    "Text",
    "require",
]

T = TypeVar("T")


class Requirement(Protocol):
    """What a parameter must be."""

    def allows(self, value: Any) -> bool:
        """Whether ``value`` meets the requirement."""

    def describe(self) -> str:
        """The requirement in words, to follow "must be"."""


def require(name: str, value: T, requirement: Requirement) -> T:
    """Return ``value`` if it meets ``requirement``; else raise ``ValueError`` naming ``name`` and what is allowed."""
    if not requirement.allows(value):
        raise ValueError(f"{name} must be {requirement.describe()}, got {value!r}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _bounds(low: float | None, high: float | None, kind: str) -> str:
    if low is not None and high is not None:
        return f"{kind} from {low:g} to {high:g}"
    if low is not None:
        return f"{kind} >= {low:g}"
    if high is not None:
        return f"{kind} <= {high:g}"
    return kind


@dataclass(frozen=True)
class Bool:
    """``True`` or ``False`` (not 0 or 1).

    >>> Bool().allows(True), Bool().allows(1)
    (True, False)
    """

    def allows(self, value: Any) -> bool:
        return isinstance(value, bool)

    def describe(self) -> str:
        return "True or False"


@dataclass(frozen=True)
class Int:
    """An integer (not a bool) in ``[min, max]``.

    >>> Int(min=1).describe(), Int(min=0).describe(), Int(min=2, max=10).describe()
    ('a positive integer', 'a non-negative integer', 'an integer from 2 to 10')
    """

    min: int | None = None
    max: int | None = None

    def allows(self, value: Any) -> bool:
        return _is_int(value) and (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def describe(self) -> str:
        if self.max is None and self.min == 1:
            return "a positive integer"
        if self.max is None and self.min == 0:
            return "a non-negative integer"
        return "an " + _bounds(self.min, self.max, "integer")


@dataclass(frozen=True)
class Number:
    """A finite number (int or float, not a bool); ``positive`` excludes 0, ``min``/``max`` bound it.

    >>> Number(positive=True).describe(), Number(min=0, max=1).describe()
    ('a positive, finite number', 'a number from 0 to 1')
    >>> Number(positive=True, max=1).allows(1), Number(positive=True, max=1).allows(0)
    (True, False)
    """

    positive: bool = False
    min: float | None = None
    max: float | None = None

    def allows(self, value: Any) -> bool:
        return (
            _is_number(value)
            and (not self.positive or value > 0)
            and (self.min is None or value >= self.min)
            and (self.max is None or value <= self.max)
        )

    def describe(self) -> str:
        if self.positive:
            return "a positive, finite number" + (f" <= {self.max:g}" if self.max is not None else "")
        return (
            "a " + _bounds(self.min, self.max, "number") if (self.min, self.max) != (None, None) else "a finite number"
        )


@dataclass(frozen=True)
class Text:
    """A non-empty string (a folder path, a name).

    >>> Text().allows(""), Text().allows("runs")
    (False, True)
    """

    what: str = "a non-empty string"

    def allows(self, value: Any) -> bool:
        return isinstance(value, str) and value != ""

    def describe(self) -> str:
        return self.what


@dataclass(frozen=True)
class Choice:
    """One of ``options``.

    >>> Choice(("module", "parameter")).describe()
    "one of 'module', 'parameter'"
    """

    options: Sequence[Any]

    def allows(self, value: Any) -> bool:
        try:
            return value in list(self.options)
        except TypeError:  # an unhashable value compared with strings
            return False

    def describe(self) -> str:
        return "one of " + ", ".join(map(repr, self.options))


@dataclass(frozen=True)
class Choices:
    """A list (or tuple) of at least ``min_length`` items drawn from ``options``; ``unique`` forbids repeats.

    >>> Choices(("a", "b"), min_length=2, unique=True).describe()
    "a list of at least 2 different items drawn from 'a', 'b'"
    >>> Choices(("a", "b")).allows(["a", "c"]), Choices(("a", "b")).allows("a")
    (False, False)
    """

    options: Sequence[Any]
    min_length: int = 1
    unique: bool = False

    def allows(self, value: Any) -> bool:
        if not isinstance(value, (list, tuple)) or len(value) < self.min_length:
            return False
        if self.unique and len(set(map(repr, value))) != len(value):
            return False
        return all(Choice(self.options).allows(item) for item in value)

    def describe(self) -> str:
        count = "a non-empty list" if self.min_length == 1 else f"a list of at least {self.min_length}"
        items = " different items" if self.unique else (" items" if self.min_length != 1 else "")
        return f"{count}{items} drawn from " + ", ".join(map(repr, self.options))


@dataclass(frozen=True)
class NumberList:
    """A list of finite numbers: ``length`` of them exactly, or at least ``min_length``; ``positive``
    excludes 0 and below; ``ascending`` asks each to be at least the one before.

    >>> NumberList(length=2, positive=True, ascending=True).describe()
    'a list of 2 positive numbers in ascending order'
    >>> NumberList(length=2, positive=True, ascending=True).allows([100.0, 1.0])
    False
    """

    length: int | None = None
    min_length: int = 1
    positive: bool = False
    ascending: bool = False

    def allows(self, value: Any) -> bool:
        if not isinstance(value, (list, tuple)) or not all(_is_number(v) for v in value):
            return False
        if (self.length is not None and len(value) != self.length) or len(value) < self.min_length:
            return False
        if self.positive and not all(v > 0 for v in value):
            return False
        return not self.ascending or all(a <= b for a, b in zip(value, value[1:]))

    def describe(self) -> str:
        count = f"{self.length}" if self.length is not None else f"at least {self.min_length}"
        order = " in ascending order" if self.ascending else ""
        return f"a list of {count} {'positive ' if self.positive else ''}numbers{order}"


@dataclass(frozen=True)
class IntList:
    """A non-empty list of different integers ``>= min``.

    >>> IntList(min=0).allows([0, 1]), IntList(min=0).allows([1, 1]), IntList(min=0).allows([])
    (True, False, False)
    """

    min: int | None = None

    def allows(self, value: Any) -> bool:
        return (
            isinstance(value, (list, tuple))
            and len(value) > 0
            and len(set(value)) == len(value)
            and all(Int(min=self.min).allows(v) for v in value)
        )

    def describe(self) -> str:
        bound = "" if self.min is None else " non-negative" if self.min == 0 else f" (each >= {self.min})"
        return f"a non-empty list of different{bound} integers"
