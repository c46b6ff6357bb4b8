"""Exercises for ``01_toy_landscape``: ``from mao_lab.exercises.landscape import q1, q2``."""

from __future__ import annotations

from ._core import Exercise, ThoughtExperiment
from ._judges import steadiest_method

__all__ = ["q1", "q2"]

q1 = Exercise(
    "Predict: when L1 is multiplied by 0.1, whose trajectories stay where they were? "
    '`q1.check("mao" or "mean", gaps)` with the notebook\'s rescaling table `gaps`.',
    steadiest_method,
    hint="Which method divides each task's gradient by that task's own running size?",
    solution="`mao`: each task is normalised by its own moments, so a constant factor on L1 cancels (with "
    "eps = 1e-16 far below the gradients). Adam on the mean normalises L1 + L2 together, and the factor moves "
    "where it goes.",
)

q2 = ThoughtExperiment(
    "Change: in the playground, switch `eps` to Adam's default 1e-8 and press Run with L1 scale 0.1. Explain why "
    "MAO's trajectories now move a little with the scale.",
    hint="Compare eps with √v̂ of the rescaled task near the end of training, where the gradients are small.",
    solution="MAO's step is m̂/(√v̂ + ε). The cancellation is exact only while ε ≪ √v̂. Near a stationary point the "
    "gradients, and √v̂ with them, become small; a rescaled-down task reaches ε's size first, so its steps shrink "
    "and the trajectory differs.",
)
