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
* A part's **family-wise verdict** reads the same parts with Holm's step-down correction over the parts of
  its claim (:func:`holm`): the two-sided p-value of each part's t-test against its threshold
  (:func:`p_value`; below ``1 - level`` exactly when the interval excludes the threshold) is Holm-adjusted
  within the claim, and a part whose adjusted p-value is below ``1 - level`` is ``supported`` or ``not
  supported`` by the side its estimate lies on, else ``inconclusive`` (:func:`family_verdicts`).  The
  chance that *any* part of a claim is read on the wrong side of its threshold is then at most 5 %.
* A **claim** (:func:`claim_verdict`) is ``supported`` only if every part's own 95 % interval lies on the
  claimed side (an intersection-union test: requiring every part keeps the false-support rate at 5 % with no
  multiplicity correction); ``not supported`` if at least one part is ``not supported`` under the
  family-wise reading (one part against the claim among many needs the correction: with 20 parts at 95 %
  each, one or more would cross by chance far more often than 5 %); else ``inconclusive``.
  :func:`combine_verdicts` is the older rule, the conjunction of the per-part verdicts alone.
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
    "claim_verdict",
    "combine_verdicts",
    "family_verdicts",
    "holm",
    "mean_interval",
    "p_value",
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


def p_value(interval: Interval, threshold: float = 0.0) -> float:
    """The two-sided p-value of the t-test of "the mean equals ``threshold``", read from a t-interval.

    The interval holds the standard error: ``se = (high - low) / (2 t_{(1+level)/2, n-1})``, so the p-value
    needs no per-seed values (the committed ledger's intervals suffice).  It is below ``1 - level`` exactly
    when the interval excludes ``threshold``.  NaN without an interval (fewer than two seeds); with a zero
    spread, 0 if the mean differs from ``threshold`` and 1 if it equals it.

    >>> round(p_value(mean_interval([1.0, 2.0, 3.0, 4.0])), 4)  # scipy.stats.ttest_1samp([1, 2, 3, 4], 0): 0.0305
    0.0305
    >>> p_value(Interval(1.0, math.nan, math.nan, 1))
    nan
    """
    if interval.n < 2 or not all(math.isfinite(v) for v in (interval.estimate, interval.low, interval.high)):
        return math.nan
    critical = float(stats.t.ppf(0.5 + interval.level / 2, interval.n - 1))
    se = (interval.high - interval.low) / (2 * critical)
    distance = abs(interval.estimate - threshold)
    if se <= 0:
        return 0.0 if distance > 0 else 1.0
    return float(2 * stats.t.sf(distance / se, interval.n - 1))


def holm(p_values: Sequence[float] | Iterable[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (a missing p-value, NaN, counts in the family as 1).

    Sorted ascending, the ``i``-th smallest of ``m`` p-values is adjusted to
    ``max_{j <= i} min(1, (m - j + 1) p_(j))``; rejecting every adjusted p-value below ``alpha`` keeps the
    family-wise error rate at ``alpha`` whatever the dependence between the tests.

    >>> holm([0.01, 0.04, 0.03]).round(4).tolist()
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(list(p_values), dtype=float)
    if p.ndim != 1:
        raise ValueError(f"p_values must be a 1-d sequence, got shape {p.shape}")
    p = np.where(np.isnan(p), 1.0, p)
    if np.any((p < 0) | (p > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {p.tolist()}")
    m = len(p)
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(stepped)
    return adjusted


def family_verdicts(
    intervals: Sequence[Interval], directions: Sequence[Direction], thresholds: Sequence[float], level: float = 0.95
) -> tuple[list[Verdict], np.ndarray]:
    """The parts of one claim read family-wise: their Holm-adjusted p-values and the verdicts they give.

    A part is ``supported`` (``not supported``) if its Holm-adjusted p-value is below ``1 - level`` and its
    estimate lies on the claimed (the other) side of its threshold, else ``inconclusive``.

    >>> parts = [Interval(-2.0, -3.0, -1.0, 5), Interval(0.5, -1.0, 2.0, 5)]
    >>> verdicts, adjusted = family_verdicts(parts, ["less", "less"], [0.0, 0.0])
    >>> verdicts
    ['supported', 'inconclusive']
    """
    level = _check_level(level)
    if not len(intervals) == len(directions) == len(thresholds):
        raise ValueError(
            f"one direction and threshold per interval: {len(intervals)}, {len(directions)}, {len(thresholds)}"
        )
    bad = [d for d in directions if d not in DIRECTIONS]
    if bad:
        raise ValueError(f"directions must be among {DIRECTIONS}, got {bad}")
    adjusted = holm([p_value(i, t) for i, t in zip(intervals, thresholds)])
    verdicts: list[Verdict] = []
    for interval, direction, threshold, p in zip(intervals, directions, thresholds, adjusted):
        if not p < 1 - level or interval.estimate == threshold:
            verdicts.append("inconclusive")
            continue
        below = interval.estimate < threshold
        verdicts.append("supported" if below == (direction == "less") else "not supported")
    return verdicts, adjusted


def claim_verdict(
    parts: Sequence[Verdict] | Iterable[Verdict], family: Sequence[Verdict] | Iterable[Verdict]
) -> Verdict:
    """A claim's verdict from its parts' own verdicts and their family-wise verdicts (:func:`family_verdicts`).

    ``supported`` if every part is supported by its own interval (an intersection-union test needs no
    correction), ``not supported`` if some part is not supported family-wise, else ``inconclusive``.

    >>> claim_verdict(["supported", "not supported"], ["supported", "inconclusive"])  # the loss does not survive Holm
    'inconclusive'
    >>> claim_verdict(["supported", "not supported"], ["supported", "not supported"])
    'not supported'
    """
    parts, family = list(parts), list(family)
    if len(parts) != len(family):
        raise ValueError(f"one family-wise verdict per part: {len(parts)} parts, {len(family)} family-wise verdicts")
    combine_verdicts(parts)  # checks the names and that there is a part
    combine_verdicts(family)
    if all(p == "supported" for p in parts):
        return "supported"
    return "not supported" if "not supported" in family else "inconclusive"
