"""Exercises for ``03_multimnist``: ``from mao_lab.exercises.multimnist import q1, q2``."""

from __future__ import annotations

from ._core import Exercise, ThoughtExperiment
from ._judges import least_served_task

__all__ = ["q1", "q2"]

q1 = Exercise(
    "Predict: under Adam on the sum, which task gets the smallest share of the shared layers? "
    '`q1.check("reconstruct", ownership)` (the per-seed runs sum-seed0, sum-seed1, ... are averaged).',
    least_served_task,
    hint="Compare the sizes of the losses: two cross-entropies, a regression of the digits' sum, and a pixel "
    "reconstruction averaged over 784 pixels.",
    solution="Read it from `ownership`: the task with the smallest gradient, usually the pixel reconstruction, whose "
    "mean squared error over 784 pixels is small.",
)

q2 = ThoughtExperiment(
    "Explain: in the smoke setting the Δm% table can show every method beating the single-task baselines. "
    "Why should you not believe those numbers?",
    hint="How many steps and how many test images does the smoke setting use?",
    solution="The smoke setting trains for a few steps on a few images, to check that the notebook runs; every "
    "model, the baselines included, is barely trained, so the differences are noise. Only the full setting (and "
    "several seeds) supports a comparison.",
)
