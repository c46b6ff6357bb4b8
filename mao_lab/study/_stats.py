"""Confidence intervals over seeds, and the verdict rules of the claims ledger.

The rules are fixed here, in code, before any result exists; ``docs/references.md`` §6 ("Intervals and
verdicts") and the README's "Claims ledger" section state the same rules in words.

* An **effect** is a number per seed: a method's value, or the difference of two methods' values at the
  same seed (runs with one seed share the initial network and the batch order, so they are *paired*).
* Its **interval** is the two-sided 95 % Student-t interval of the mean over the seeds:
  ``mean ± t_{0.975, n-1} · sd / sqrt(n)`` (``sd`` with ``ddof = 1``).  For a paired difference that is the
  paired t-interval.  Fewer than two seeds give no interval (NaN bounds).
* A **part verdict** compares the interval with a threshold (0 for a difference) in the direction the
  claim predicts: ``supported`` if the whole interval lies on the claimed side, ``not supported`` if the
  whole interval lies on the other side, ``inconclusive`` otherwise (the threshold is inside the interval,
  or there is no interval).
* A **claim** with several parts is their conjunction: ``supported`` only if every part is supported,
  ``not supported`` if at least one part is not supported, else ``inconclusive``.  (Requiring every part's
  interval to exclude the threshold keeps the claim's false-support rate at 5 % without a multiplicity
  correction: an intersection-union test.)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

__all__ = [
    "DIRECTIONS",
    "VERDICTS",
    "Direction",
    "Interval",
    "Verdict",
    "combine_verdicts",
    "mean_interval",
    "paired_interval",
    "verdict",
]

Verdict = Literal["supported", "not supported", "inconclusive"]
VERDICTS: tuple[Verdict, ...] = ("supported", "not supported", "inconclusive")

Direction = Literal["less", "greater"]
DIRECTIONS: tuple[Direction, ...] = ("less", "greater")
"""``less``: the claim predicts an effect below the threshold; ``greater``: above it."""


@dataclass(frozen=True)
class Interval:
    """A mean over seeds with its two-sided confidence interval.

    Attributes:
        estimate: the mean over the seeds.
        low, high: the interval's bounds (NaN with fewer than two seeds).
        n: the number of seeds.
        level: the confidence level, e.g. 0.95.
    """

    estimate: float
    low: float
    high: float
    n: int
    level: float = 0.95

    def excludes(self, threshold: float) -> bool:
        """Whether the whole interval lies strictly on one side of ``threshold`` (False without an interval)."""
        return bool(self.low > threshold or self.high < threshold)

    def as_dict(self) -> dict[str, float | int]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "n": self.n, "level": self.level}


def _values(values: Iterable[float] | pd.Series, name: str) -> np.ndarray:
    array = np.asarray(list(values) if not isinstance(values, (np.ndarray, pd.Series)) else values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one number per seed (a 1-d sequence), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite numbers, got {array.tolist()}")
    return array


def _check_level(level: float) -> float:
    if not (isinstance(level, (int, float)) and 0 < level < 1):
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    return float(level)


def mean_interval(values: Iterable[float] | pd.Series, level: float = 0.95) -> Interval:
    """The Student-t interval of the mean of ``values`` (one per seed).

    >>> interval = mean_interval([1.0, 2.0, 3.0])
    >>> round(interval.estimate, 3), round(interval.low, 3), round(interval.high, 3), interval.n
    (2.0, -0.484, 4.484, 3)
    >>> mean_interval([5.0]).low
    nan
    """
    level = _check_level(level)
    array = _values(values, "values")
    n = len(array)
    if n == 0:
        raise ValueError("mean_interval needs at least one value")
    mean = float(array.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, level)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * float(array.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, level)


def paired_interval(
    a: Mapping[int, float] | pd.Series, b: Mapping[int, float] | pd.Series, level: float = 0.95
) -> Interval:
    """The paired t-interval of ``a - b`` over the seeds both have (``a`` and ``b`` map seed -> value).

    Raises:
        ValueError: if the two share no seed.

    >>> interval = paired_interval({0: 3.0, 1: 5.0, 2: 4.0}, {0: 1.0, 1: 2.0, 2: 2.0, 7: 9.0})
    >>> round(interval.estimate, 3), interval.n
    (2.333, 3)
    """
    left, right = pd.Series(a, dtype=float), pd.Series(b, dtype=float)
    seeds = sorted(set(left.index) & set(right.index))
    if not seeds:
        raise ValueError(f"no seed in common: {sorted(left.index)} and {sorted(right.index)}")
    return mean_interval((left.loc[seeds] - right.loc[seeds]).to_numpy(), level)


def verdict(interval: Interval, direction: Direction, threshold: float = 0.0) -> Verdict:
    """The part verdict: is the interval on the side of ``threshold`` that the claim predicts?

    >>> verdict(Interval(-2.0, -3.0, -1.0, 5), "less")
    'supported'
    >>> verdict(Interval(-2.0, -3.0, -1.0, 5), "greater")
    'not supported'
    >>> verdict(Interval(0.5, -1.0, 2.0, 5), "less")
    'inconclusive'
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if not interval.excludes(threshold):
        return "inconclusive"
    below = interval.high < threshold
    return "supported" if below == (direction == "less") else "not supported"


def combine_verdicts(parts: Sequence[Verdict] | Iterable[Verdict]) -> Verdict:
    """A claim's verdict from its parts' verdicts: a conjunction.

    >>> combine_verdicts(["supported", "supported"]), combine_verdicts(["supported", "inconclusive"])
    ('supported', 'inconclusive')
    >>> combine_verdicts(["inconclusive", "not supported", "supported"])
    'not supported'
    """
    parts = list(parts)
    if not parts:
        raise ValueError("a claim needs at least one part")
    unknown = [p for p in parts if p not in VERDICTS]
    if unknown:
        raise ValueError(f"unknown verdicts {unknown}; expected {VERDICTS}")
    if "not supported" in parts:
        return "not supported"
    if all(p == "supported" for p in parts):
        return "supported"
    return "inconclusive"
