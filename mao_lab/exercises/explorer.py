"""Exercises for ``04_balance_explorer``: ``from mao_lab.exercises.explorer import q1, q2, q3``."""

from __future__ import annotations

from functools import partial

from ._core import Exercise
from ._judges import imbalance_by_hand, most_imbalanced

__all__ = ["q1", "q2", "q3"]

q1 = Exercise(
    "Compute by hand: a shared layer's update shares are 0.7, 0.2 and 0.1. What is its imbalance index? "
    "`q1.check(0.5)`",
    imbalance_by_hand,
    hint="H(s) = −Σ s_k log s_k; the index is 1 − H(s) / log n with n = 3.",
    solution="H = −(0.7 ln 0.7 + 0.2 ln 0.2 + 0.1 ln 0.1) ≈ 0.802 and ln 3 ≈ 1.099, so the index is "
    "1 − 0.802 / 1.099 ≈ 0.270.",
)

q2 = Exercise(
    'Predict: which run is the most imbalanced over its shared layers? `q2.check("sum", balance)`',
    partial(most_imbalanced, by="run"),
    hint="Which method lets the task with the largest gradient take the whole update?",
    solution="Read it from the `(all shared)` rows of `balance`: usually Adam on the sum, where the largest task "
    "owns every layer.",
)

q3 = Exercise(
    'Predict: in that run, which shared layer is the most imbalanced? `q3.check("trunk.0", balance, "sum")`',
    lambda answer, balance, run: most_imbalanced(answer, balance, by="layer", run=run),
    hint="Use the explorer: metric `imbalance`, then switch between the layers.",
    solution="Read it from `balance` (the rows of that run), or in the explorer: metric `imbalance`, one layer "
    "after the other. Then compare with MAO's run: is the same layer its most imbalanced one?",
)
