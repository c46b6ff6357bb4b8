"""Exercises for ``00_quickstart``: ``from mao_lab.exercises.quickstart import q1, q2, q3``."""

from __future__ import annotations

from ._core import Exercise, ThoughtExperiment
from ._judges import rescaling_changes, worst_final_task

__all__ = ["q1", "q2", "q3"]

q1 = Exercise(
    "Predict: which task does Adam on the summed loss leave behind (the larger normalised test error at the "
    'end)? `q1.check("task0" or "task1", curves)`',
    worst_final_task,
    hint="The summed gradient is dominated by the task with the larger σ; Adam normalises that sum as a whole.",
    solution="`task0`, the task with σ = 1 when `sigmas = [1, 100]`: its gradient is about 100 times smaller, so "
    "after Adam divides the summed gradient by its size, task0's part of the step is tiny. "
    "The checker reads the answer from `curves`, so it holds for the setting you ran.",
)

q2 = Exercise(
    "Predict: multiply task 1's loss by 1000. Does MAO's trajectory change? Does Adam's on the sum? "
    "`q2.check((mao_changes, adam_changes))` — the checker trains both to find out.",
    rescaling_changes,
    hint="In MAO each task's step is m̂_k / √v̂_k. What happens to that ratio when g_k is multiplied by c > 0?",
    solution="`(False, True)`. MAO's step for task k is m̂_k / (√v̂_k + ε): a factor c scales m̂_k by c and √v̂_k "
    "by c, so it cancels (up to ε). Adam on the sum normalises g_0 + c·g_1 as a whole: the factor decides which "
    "task dominates the direction.",
)

q3 = ThoughtExperiment(
    "Change: set `sigmas = [1.0, 1.0]` in the parameters cell and run the notebook again. Explain why MAO's "
    "advantage over Adam on the sum (`worst_task_ratio_adam_over_mao`) shrinks.",
    hint="With equal scales, does one task's gradient still dominate the sum?",
    solution="With equal scales neither task dominates the summed gradient, so Adam on the sum already gives both "
    "tasks steps of one size; MAO's per-task normalisation has no imbalance left to correct. MAO is a balancing "
    "rule, not a faster optimizer.",
)
