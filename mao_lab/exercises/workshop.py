"""Exercises for ``06_workshop_mao_update``: ``from mao_lab.exercises.workshop import q1, q2, q3``."""

from __future__ import annotations

from ._core import Exercise
from ._judges import layer_owner, rescaling_changes
from ._mao_update import mao_update_exercise

__all__ = ["q1", "q2", "q3"]

q1 = mao_update_exercise()

q2 = Exercise(
    "Predict: multiply task 1's loss by 1000. Does MAO's trajectory change? Does Adam's on the sum? "
    "`q2.check((mao_changes, adam_changes))` — the checker trains both to find out.",
    rescaling_changes,
    hint="Look at your own mao_update: what happens to m̂_k / √v̂_k when task k's gradients are all multiplied by c?",
    solution="`(False, True)`: in m̂_k / (√v̂_k + ε) the factor c cancels (up to ε); Adam on the sum normalises "
    "g_0 + c·g_1 as a whole, so c decides which task dominates.",
)

q3 = Exercise(
    "Watch the live monitor while Adam on the sum trains: which task owns trunk.0? "
    '`q3.check("task2", monitor.ownership(), "sum")`',
    layer_owner,
    hint="The monitor's bars show each task's share of trunk.0's update; the largest σ is the last task's.",
    solution="The task with the largest σ (the last one): under the sum its gradient dominates every shared layer. "
    "Run the MAO cell and watch the same bars even out.",
)
