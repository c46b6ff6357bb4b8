"""One place for argument checks: requirements that check a value, convert it and say what is allowed.

A *requirement* (:class:`Int`, :class:`Number`, :class:`Choice`, ...) says what is allowed
(:meth:`Requirement.describe`), whether a value is (:meth:`Requirement.allows`; :meth:`Requirement.refusal`
says which part of it a value fails) and the value to use once it is (:meth:`Requirement.convert`: an
``int``, a ``float``, a tuple of floats).  One vocabulary, three users, one message style
``<name> must be <requirement>, got <value>``:

- library functions check their arguments with :func:`require`, which raises ``ValueError``;
- methods declare their hyperparameters once, as :class:`Hyperparameter` (a default, a requirement and a line
  of help), merged along the class hierarchy by :func:`merged_spec` and checked by :func:`checked`;
- the notebooks declare a spec of requirements and check all their parameters with
  :func:`mao_lab.notebook.validate_parameters`, which raises the notebooks'
  :class:`~mao_lab.notebook.NotebookParameterError` with the requirement's description.

>>> require("steps", 10, Int(min=1))
10
>>> require("steps", 0, Int(min=1))
Traceback (most recent call last):
...
ValueError: steps must be a positive integer, got 0
>>> require("lr", True, Number(positive=True))
Traceback (most recent call last):
...
ValueError: lr must be a number, got True
>>> Hyperparameter(1e-3, Number(min=0), "learning rate").check("lr", float("inf"))
Traceback (most recent call last):
...
ValueError: hyperparameter 'lr' must be a finite number, got inf
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import torch

__all__ = [
    "ADAM_HYPERPARAMETERS",
    "Autocast",
    "Bool",
    "Check",
    "Choice",
    "Choices",
    "Device",
    "Dict",
    "Hyperparameter",
    "Int",
    "IntList",
    "Number",
    "NumberList",
    "Optional",
    "Refusal",
    "Requirement",
    "Text",
    "betas",
    "boolean",
    "checked",
    "choice",
    "integer",
    "merged_spec",
    "non_negative_floats",
    "number",
    "optional",
    "require",
]

T = TypeVar("T")

Check = Callable[[str, Any], Any]
"""``check(name, value)``: the value to use, or a ``ValueError`` that names the setting
(:meth:`Hyperparameter.check` is one)."""


class Refusal(NamedTuple):
    """Why a value is refused: what it ``must_be`` (words that follow "must be") and the value ``got``
    (the offending item of a list, or the value itself)."""

    must_be: str
    got: Any


class Requirement:
    """What a value must be.  Subclasses define :meth:`describe` and :meth:`refusal` (and :meth:`convert`)."""

    def describe(self) -> str:
        """The whole requirement in words, to follow "must be"."""
        raise NotImplementedError

    def refusal(self, value: Any) -> Refusal | None:
        """``None`` if ``value`` meets the requirement, else the part it fails (by default the whole of it)."""
        raise NotImplementedError

    def allows(self, value: Any) -> bool:
        """Whether ``value`` meets the requirement."""
        return self.refusal(value) is None

    def convert(self, value: Any) -> Any:
        """The value to use, for a value the requirement allows (the same value unless a subclass normalises it)."""
        return value

    def check(self, name: str, value: Any) -> Any:
        """``convert(value)`` if allowed, else ``ValueError("<name> must be <what>, got <value>")``."""
        found = self.refusal(value)
        if found is not None:
            raise ValueError(f"{name} must be {found.must_be}, got {found.got!r}")
        return self.convert(value)


def require(name: str, value: Any, requirement: Requirement) -> Any:
    """The value to use (``requirement.convert(value)``) if ``value`` meets ``requirement``; else raise
    ``ValueError`` naming ``name``, what is allowed and the value."""
    return requirement.check(name, value)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _as_real(value: Any) -> float | None:
    """A real number (an int or float, not a bool; a one-element real tensor) as a float; ``None`` otherwise."""
    if isinstance(value, torch.Tensor):
        real = value.numel() == 1 and not value.dtype.is_complex and value.dtype != torch.bool
        return float(value) if real else None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def _is_sequence(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _bounds(low: float | None, high: float | None, kind: str) -> str:
    if low is not None and high is not None:
        return f"{kind} from {low:g} to {high:g}"
    if low is not None:
        return f"{kind} >= {low:g}"
    if high is not None:
        return f"{kind} <= {high:g}"
    return kind


@dataclass(frozen=True)
class Bool(Requirement):
    """``True`` or ``False`` (not 0 or 1).

    >>> Bool().allows(True), Bool().allows(1)
    (True, False)
    """

    def describe(self) -> str:
        return "True or False"

    def refusal(self, value: Any) -> Refusal | None:
        return None if isinstance(value, bool) else Refusal(self.describe(), value)


@dataclass(frozen=True)
class Int(Requirement):
    """An integer (not a bool) in ``[min, max]``.

    >>> Int(min=1).describe(), Int(min=0).describe(), Int(min=2, max=10).describe(), Int().describe()
    ('a positive integer', 'a non-negative integer', 'an integer from 2 to 10', 'an integer')
    """

    min: int | None = None
    max: int | None = None

    def describe(self) -> str:
        if self.max is None and self.min == 1:
            return "a positive integer"
        if self.max is None and self.min == 0:
            return "a non-negative integer"
        return "an " + _bounds(self.min, self.max, "integer")

    def refusal(self, value: Any) -> Refusal | None:
        allowed = _is_int(value) and (self.min is None or value >= self.min) and (self.max is None or value <= self.max)
        return None if allowed else Refusal(self.describe(), value)

    def convert(self, value: Any) -> int:
        return int(value)


@dataclass(frozen=True)
class Number(Requirement):
    """A finite real number (an int or float, not a bool; a one-element real tensor), as a float.

    ``positive`` excludes 0 and below; ``min``/``max`` bound it (``min_open``/``max_open`` exclude the
    bound itself).  A refusal names the part the value fails: a number, a finite one, the bounds.

    >>> Number(positive=True).describe(), Number(min=0, max=1).describe()
    ('a positive, finite number', 'a number from 0 to 1')
    >>> Number(min=0, max=1, max_open=True).describe()
    'a number >= 0 and < 1'
    >>> Number(positive=True, max=1).allows(1), Number(positive=True, max=1).allows(0)
    (True, False)
    >>> Number(min=0).refusal(-1.0), Number(min=0).refusal(float("nan"))
    (Refusal(must_be='>= 0', got=-1.0), Refusal(must_be='a finite number', got=nan))
    """

    positive: bool = False
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False

    def _limits(self) -> list[str]:
        limits = ["positive"] if self.positive and (self.min is None or self.min <= 0) else []
        if self.min is not None and not limits:
            limits.append(f"{'>' if self.min_open else '>='} {self.min:g}")
        if self.max is not None:
            limits.append(f"{'<' if self.max_open else '<='} {self.max:g}")
        return limits

    def bounds(self) -> str:
        """The bounds alone, in words ("" when there are none): ``'>= 0'``, ``'from 0 to 1'``, ``'positive'``."""
        limits = self._limits()
        if len(limits) == 2 and not (self.positive or self.min_open or self.max_open):
            return f"from {self.min:g} to {self.max:g}"
        return " and ".join(limits)

    def describe(self) -> str:
        if self.positive:
            upper = self._limits()[1:]
            return "a positive, finite number" + (f" {upper[0]}" if upper else "")
        return f"a number {self.bounds()}" if self.bounds() else "a finite number"

    def refusal(self, value: Any) -> Refusal | None:
        x = _as_real(value)
        if x is None:
            return Refusal("a number", value)
        if not math.isfinite(x):
            return Refusal("a finite number", value)
        low = self.min if self.min is not None else (0.0 if self.positive else None)
        low_open = self.min_open or (self.positive and (self.min is None or self.min <= 0))
        if (low is not None and (x <= low if low_open else x < low)) or (
            self.max is not None and (x >= self.max if self.max_open else x > self.max)
        ):
            return Refusal(self.bounds(), value)
        return None

    def convert(self, value: Any) -> float:
        return float(value)


@dataclass(frozen=True)
class Text(Requirement):
    """A string, non-empty unless ``empty`` (a folder path, a name); ``what`` says what it is.

    >>> Text().allows(""), Text().allows("runs"), Text("a folder, or ''", empty=True).allows("")
    (False, True, True)
    """

    what: str = "a non-empty string"
    empty: bool = False

    def describe(self) -> str:
        return self.what

    def refusal(self, value: Any) -> Refusal | None:
        allowed = isinstance(value, str) and (self.empty or value != "")
        return None if allowed else Refusal(self.describe(), value)


@dataclass(frozen=True)
class Dict(Requirement):
    """A dict (of keyword arguments, of specs); ``what`` says what it holds.

    >>> Dict("a dict of the factory's keyword arguments").allows({}), Dict().allows([])
    (True, False)
    """

    what: str = "a dict"

    def describe(self) -> str:
        return self.what

    def refusal(self, value: Any) -> Refusal | None:
        return None if isinstance(value, dict) else Refusal(self.describe(), value)


def _among(value: Any, options: Sequence[Any]) -> bool:
    try:  # a bool is not the option 1, nor 1 the option True
        return any(value == o and isinstance(value, bool) == isinstance(o, bool) for o in options)
    except (TypeError, ValueError):  # a value that cannot be compared with the options (an array)
        return False


@dataclass(frozen=True)
class Choice(Requirement):
    """One of ``options``.

    >>> Choice(("module", "parameter")).describe()
    "one of 'module', 'parameter'"
    """

    options: Sequence[Any]

    def describe(self) -> str:
        return "one of " + ", ".join(map(repr, self.options))

    def refusal(self, value: Any) -> Refusal | None:
        return None if _among(value, list(self.options)) else Refusal(self.describe(), value)


@dataclass(frozen=True)
class Choices(Requirement):
    """A list (or tuple) of at least ``min_length`` items drawn from ``options``; ``unique`` forbids repeats.

    >>> Choices(("a", "b"), min_length=2, unique=True).describe()
    "a list of at least 2 different items drawn from 'a', 'b'"
    >>> Choices(("a", "b")).allows(["a", "c"]), Choices(("a", "b")).allows("a")
    (False, False)
    """

    options: Sequence[Any]
    min_length: int = 1
    unique: bool = False

    def describe(self) -> str:
        count = "a non-empty list" if self.min_length == 1 else f"a list of at least {self.min_length}"
        items = " different items" if self.unique else (" items" if self.min_length != 1 else "")
        return f"{count}{items} drawn from " + ", ".join(map(repr, self.options))

    def refusal(self, value: Any) -> Refusal | None:
        options = list(self.options)
        allowed = (
            isinstance(value, (list, tuple))
            and len(value) >= self.min_length
            and not (self.unique and len(set(map(repr, value))) != len(value))
            and all(_among(item, options) for item in value)
        )
        return None if allowed else Refusal(self.describe(), value)


@dataclass(frozen=True)
class NumberList(Requirement):
    """A list (or tuple) of finite numbers, as a tuple of floats: ``length`` of them exactly, or at least
    ``min_length``; each item meets :class:`Number` with ``positive``, ``min``, ``max``, ``max_open``;
    ``ascending`` asks each to be at least the one before.  A bad item is named by its own refusal.

    >>> NumberList(length=2, positive=True, ascending=True).describe()
    'a pair of positive numbers in ascending order'
    >>> NumberList(length=2, positive=True, ascending=True).allows([100.0, 1.0])
    False
    >>> NumberList(min=0).check("weights", [1, float("inf")])
    Traceback (most recent call last):
    ...
    ValueError: weights must be a finite number, got inf
    """

    length: int | None = None
    min_length: int = 1
    positive: bool = False
    ascending: bool = False
    min: float | None = None
    max: float | None = None
    max_open: bool = False

    def _item(self) -> Number:
        return Number(positive=self.positive, min=self.min, max=self.max, max_open=self.max_open)

    def describe(self) -> str:
        if self.length == 2:
            count = "a pair of"
        elif self.length is not None:
            count = f"a list of {self.length}"
        else:
            count = "a non-empty list of" if self.min_length <= 1 else f"a list of at least {self.min_length}"
        bounds = self._item().bounds()
        items = "positive numbers" if bounds == "positive" else f"numbers {bounds}" if bounds else "numbers"
        return f"{count} {items}" + (" in ascending order" if self.ascending else "")

    def refusal(self, value: Any) -> Refusal | None:
        if not _is_sequence(value):
            return Refusal(self.describe(), value)
        item = self._item()
        for v in value:
            found = item.refusal(v)
            if found is not None:
                return found
        if (self.length is not None and len(value) != self.length) or len(value) < self.min_length:
            return Refusal(self.describe(), value)
        if self.ascending and not all(float(a) <= float(b) for a, b in zip(value, value[1:])):
            return Refusal(self.describe(), value)
        return None

    def convert(self, value: Any) -> tuple[float, ...]:
        return tuple(float(v) for v in value)


@dataclass(frozen=True)
class IntList(Requirement):
    """A non-empty list of different integers ``>= min``.

    >>> IntList(min=0).allows([0, 1]), IntList(min=0).allows([1, 1]), IntList(min=0).allows([])
    (True, False, False)
    """

    min: int | None = None

    def describe(self) -> str:
        bound = "" if self.min is None else " non-negative" if self.min == 0 else f" (each >= {self.min})"
        return f"a non-empty list of different{bound} integers"

    def refusal(self, value: Any) -> Refusal | None:
        allowed = (
            isinstance(value, (list, tuple))
            and len(value) > 0
            and len(set(value)) == len(value)
            and all(Int(min=self.min).allows(v) for v in value)
        )
        return None if allowed else Refusal(self.describe(), value)


@dataclass(frozen=True)
class Optional(Requirement):
    """``None``, or what ``inner`` allows.

    >>> Optional(Int(min=0)).describe(), Optional(Int(min=0)).allows(None), Optional(Int(min=0)).convert(3)
    ('None or a non-negative integer', True, 3)
    """

    inner: Requirement

    def describe(self) -> str:
        return f"None or {self.inner.describe()}"

    def refusal(self, value: Any) -> Refusal | None:
        found = None if value is None else self.inner.refusal(value)
        if found is not None and found.got is value:  # the value itself, not one of its items: None is allowed too
            return Refusal(f"None or {found.must_be}", value)
        return found

    def convert(self, value: Any) -> Any:
        return None if value is None else self.inner.convert(value)


@dataclass(frozen=True)
class Device(Requirement):
    """A torch device name present here (``"cpu"``, ``"cuda"``, ``"cuda:1"``); ``""`` or ``None``: ``None`` (the
    GPU when one is present).

    >>> Device().convert(""), Device().convert("cpu"), Device().allows("tpu")
    (None, 'cpu', False)
    """

    def describe(self) -> str:
        return "a torch device such as 'cpu', 'cuda' or 'cuda:1' present here, or '' for the GPU when one is present"

    def refusal(self, value: Any) -> Refusal | None:
        if value in ("", None):
            return None
        try:
            device = torch.device(value) if isinstance(value, str) else None
        except (RuntimeError, TypeError):
            device = None
        if device is None or (device.type == "cuda" and not torch.cuda.is_available()):
            return Refusal(self.describe(), value)
        return None

    def convert(self, value: Any) -> str | None:
        return None if value in ("", None) else str(value)


@dataclass(frozen=True)
class Autocast(Requirement):
    """``"bf16"`` or ``"fp16"`` (forward passes under :func:`torch.autocast`); ``""`` or ``None``: ``None``.

    >>> Autocast().convert("bf16"), Autocast().convert(""), Autocast().allows("fp8")
    ('bf16', None, False)
    """

    def describe(self) -> str:
        return "one of 'bf16', 'fp16', or '' for full precision"

    def refusal(self, value: Any) -> Refusal | None:
        return None if value in ("", None, "bf16", "fp16") else Refusal(self.describe(), value)

    def convert(self, value: Any) -> str | None:
        return None if value in ("", None) else str(value)


# -- hyperparameters ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hyperparameter:
    """One hyperparameter of a method: its default, its requirement, and what it means (one line).

    >>> Hyperparameter((0.9, 0.999), betas).check("betas", [0.5, 0.9])
    (0.5, 0.9)
    """

    default: Any
    requirement: Requirement
    help: str = field(default="")

    def check(self, name: str, value: Any) -> Any:
        """The value to use, or a ``ValueError`` naming the hyperparameter (a :data:`Check`)."""
        return self.requirement.check(f"hyperparameter {name!r}", value)


# Shorthands for the methods' declarations: each is a requirement of the vocabulary above.


def number(
    low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False
) -> Number:
    """A finite real number in ``[low, high]`` (ends excluded with ``low_open`` / ``high_open``), as a float."""
    return Number(min=low, max=high, min_open=low_open, max_open=high_open)


def integer(low: int) -> Int:
    """An integer (not a bool) >= ``low``."""
    return Int(min=low)


def choice(*options: str) -> Choice:
    """One of the given strings."""
    return Choice(options)


def optional(inner: Requirement) -> Optional:
    """``None``, or what ``inner`` allows."""
    return Optional(inner)


boolean = Bool()
"""``True`` or ``False``, nothing that merely converts to one."""

betas = NumberList(length=2, min=0.0, max=1.0, max_open=True)
"""A pair ``(beta1, beta2)``, each in ``[0, 1)``, as a tuple of floats."""

non_negative_floats = NumberList(min=0.0)
"""A non-empty list of finite numbers >= 0, as a tuple of floats."""

ADAM_HYPERPARAMETERS: Mapping[str, Hyperparameter] = {
    "lr": Hyperparameter(1e-3, number(0.0), "learning rate"),
    "betas": Hyperparameter((0.9, 0.999), betas, "decay rates of the first and second moments"),
    "eps": Hyperparameter(1e-8, number(0.0), "added to the denominator"),
    "weight_decay": Hyperparameter(0.0, number(0.0), "decoupled (AdamW-style) weight decay, once per step"),
}
"""What every method takes: the hyperparameters of Adam (``betas``/``eps`` unused by plain SGD)."""


def merged_spec(cls: type) -> dict[str, Hyperparameter]:
    """The hyperparameters of ``cls``: its own ``hyperparameters`` over those of its bases (MRO order).

    Every method declares only the hyperparameters it adds (a class attribute ``hyperparameters``), so the
    options every method shares are written in one place and the registry reads the merged spec.

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
    """Every hyperparameter of ``spec``: ``given``'s value checked (and converted), or the default.

    Unknown names raise a ``ValueError`` that lists the valid ones.

    >>> checked(ADAM_HYPERPARAMETERS, {"lr": 1}, "MAO")["lr"]
    1.0
    """
    unknown = sorted(set(given) - set(spec))
    if unknown:
        raise ValueError(
            f"unknown hyperparameter(s) {', '.join(map(repr, unknown))} for method {owner!r}; "
            f"valid: {', '.join(spec) if spec else '(none)'}"
        )
    return {name: h.check(name, given[name]) if name in given else h.default for name, h in spec.items()}
