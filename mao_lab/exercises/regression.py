"""Exercises for ``02_imbalanced_regression``: ``from mao_lab.exercises.regression import q1, q2, q3``."""

from __future__ import annotations

from ._core import Exercise
from ._judges import layer_owner, most_balanced_layer, owner_share_direction

__all__ = ["q1", "q2", "q3"]

q1 = Exercise(
    'Predict: which task owns trunk.0 under Adam on the sum (σ max = 100)? `q1.check("task3", ownership)`',
    layer_owner,
    hint="Task k's target is σ_k·tanh(...): whose loss, and so whose gradient, is largest?",
    solution="The task with the largest σ (the last one, `task{T-1}`): its gradient dominates the sum at every "
    "layer, so it has most of each shared layer's update. The checker reads the owner from `ownership`.",
)

q2 = Exercise(
    "Change and check: keep `before = ownership.copy()`, set `sigma_range = [1.0, 1.0]`, run the notebook again, then "
    'predict whether the owner\'s share of trunk.0 under the sum got "smaller" or "larger": '
    '`q2.check("smaller", before, ownership)`',
    owner_share_direction,
    hint="With every σ equal, is any task's gradient larger than the others'?",
    solution="`smaller`: with equal scales no task dominates the summed gradient, so the shares of trunk.0 move "
    "towards 1/T.",
)

q3 = Exercise(
    'Predict: GradNorm balances one shared layer better than the others. Which? `q3.check("trunk.6", ownership)`',
    most_balanced_layer,
    hint="GradNorm measures the task gradients' norms at one layer only.",
    solution="The last shared layer, `trunk.6`: GradNorm chooses its loss weights so that the gradient norms there "
    "match; the layers below it keep the large task's imbalance.",
)
