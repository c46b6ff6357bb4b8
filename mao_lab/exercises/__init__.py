"""Exercises with instant feedback, in the style of Kaggle Learn's ``learntools``.

Each notebook imports its questions and the participant calls ``q1.check(answer, ...)``, ``q1.hint()``
and ``q1.solution()``::

    from mao_lab.exercises.workshop import q1   # notebook 06: write MAO's update
    q1.check(mao_update)

A check never raises on a wrong answer: it returns a :class:`Feedback` (a coloured box in JupyterLab)
naming the typical mistake it recognised and its hint.  Predict-and-check questions read the truth
from the participant's own run (the table passed in), so they hold in any setting.

=================== ===============================================================================
module              questions
=================== ===============================================================================
``quickstart``      00: who Adam leaves behind; does a loss factor change MAO / Adam; equal scales
``landscape``       01: whose trajectories survive rescaling; eps = 1e-8
``regression``      02: who owns trunk.0; σ max = 1 changes the owner's share; GradNorm's layer
``multimnist``      03: the least served task under the sum; why smoke numbers mean nothing
``explorer``        04: the imbalance index by hand; the most imbalanced run and layer
``workshop``        06: MAO's update in torch (:func:`check_mao_update`); rescaling; the live monitor
=================== ===============================================================================
"""

from ._core import Exercise, Feedback, ThoughtExperiment
from ._mao_update import MISTAKES, check_mao_update, reference_mao_update

__all__ = ["MISTAKES", "Exercise", "Feedback", "ThoughtExperiment", "check_mao_update", "reference_mao_update"]
