"""The exercise protocol, in the style of Kaggle Learn's ``learntools``: ``q.check(...)``, ``q.hint()``,
``q.solution()``.

A checker never raises on a wrong or unfinished answer: it returns a :class:`Feedback` that a notebook
shows as a coloured box (and that a test can read: ``feedback.correct``, ``feedback.mistake``).  Only a
misuse of the checker itself (an input table without the columns it needs) raises, with a message
naming what is missing.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

__all__ = ["Exercise", "Feedback", "ThoughtExperiment", "normalise_label", "require_columns"]

Status = Literal["correct", "incorrect", "incomplete"]

_COLOURS = {"correct": "#1b7f3b", "incorrect": "#b3261e", "incomplete": "#8a6d00"}
_TITLES = {"correct": "Correct", "incorrect": "Not yet", "incomplete": "Incomplete"}


@dataclass(frozen=True)
class Feedback:
    """What a checker says about an answer.

    Attributes:
        status: ``"correct"``, ``"incorrect"`` or ``"incomplete"`` (nothing answered yet).
        message: the explanation, in Markdown.
        mistake: for a recognised typical mistake, its key (e.g. ``"no_bias_correction"``); else ``None``.
        hint: the hint that goes with that mistake (empty when there is none).

    >>> Feedback("correct", "Well done.").correct
    True
    >>> print(Feedback("incorrect", "Off by one.", "off_by_one", "Steps count from 1.").text())
    Not yet: Off by one. Hint: Steps count from 1.
    """

    status: Status
    message: str
    mistake: str | None = None
    hint: str = ""

    @property
    def correct(self) -> bool:
        return self.status == "correct"

    def text(self) -> str:
        """One line of plain text (what a terminal or a log shows)."""
        hint = f" Hint: {self.hint}" if self.hint else ""
        return f"{_TITLES[self.status]}: {self.message}{hint}"

    def __str__(self) -> str:
        return self.text()

    def _repr_markdown_(self) -> str:
        hint = f"\n\n*Hint:* {self.hint}" if self.hint else ""
        return f"**{_TITLES[self.status]}** — {self.message}{hint}"

    def _repr_html_(self) -> str:
        colour = _COLOURS[self.status]
        hint = f"<br><i>Hint:</i> {html.escape(self.hint)}" if self.hint else ""
        return (
            f'<div class="mao-feedback mao-feedback-{self.status}" style="border-left: 4px solid {colour}; '
            f'padding: 4px 10px; margin: 4px 0"><b style="color: {colour}">{_TITLES[self.status]}</b> — '
            f"{html.escape(self.message)}{hint}</div>"
        )


@dataclass(frozen=True)
class _Text:
    """A hint or a solution: Markdown for the notebook, plain text for ``print``."""

    title: str
    body: str

    def __str__(self) -> str:
        return f"{self.title}: {self.body}"

    def _repr_markdown_(self) -> str:
        return f"**{self.title}:** {self.body}"


class Exercise:
    """One question: ``check(answer, ...)``, ``hint()`` and ``solution()``.

    Args:
        prompt: the question, as the notebook states it.
        judge: ``judge(answer, *data) -> Feedback``; the data are what the notebook computed (a table, a
            summary), so that the truth is read from the run the participant sees.
        hint: a nudge that does not give the answer away.
        solution: the answer and why, in Markdown.

    ``solution()`` answers only once an answer has been checked (right or wrong): many questions ask for a
    prediction before the run, and a solution read first would spoil it.  The instructor's answer key
    (``make answer-key``, :mod:`mao_lab.exercises.answer_key`) holds every solution; :attr:`answer` is it.

    >>> q = Exercise("2 + 2?", lambda a: Feedback("correct" if a == 4 else "incorrect", f"you said {a}"),
    ...              hint="Count on your fingers.", solution="`4`")
    >>> q.solution().body.startswith("check your own answer first")
    True
    >>> q.check(4).correct, q.check(5).status, q.check(None).status
    (True, 'incorrect', 'incomplete')
    >>> str(q.hint()), str(q.solution())
    ('Hint: Count on your fingers.', 'Solution: `4`')
    """

    def __init__(self, prompt: str, judge: Callable[..., Feedback], *, hint: str, solution: str) -> None:
        self.prompt = prompt
        self._judge = judge
        self._hint = hint
        self._solution = solution
        self._attempted = False  # has an answer been checked? (then the solution may show)

    def check(self, answer: Any = None, *data: Any) -> Feedback:
        """Judge ``answer`` (``None``, ``...`` or ``"?"`` mean not answered yet)."""
        if answer is None or answer is Ellipsis or (isinstance(answer, str) and answer.strip() in ("", "?")):
            return Feedback("incomplete", "set your answer first (it is still empty), then run this cell again.")
        self._attempted = True
        return self._judge(answer, *data)

    def hint(self) -> _Text:
        return _Text("Hint", self._hint)

    def solution(self) -> _Text:
        """The answer and why — once an answer of your own has been checked (it would spoil a prediction)."""
        if not self._attempted:
            return _Text(
                "Solution",
                "check your own answer first (put it in this question's `.check(...)` and run "
                "it): the solution shows after your attempt, right or wrong, so that it cannot "
                "spoil a prediction. Stuck? `.hint()` nudges without giving it away.",
            )
        return _Text("Solution", self._solution)

    @property
    def answer(self) -> str:
        """The solution, for the instructor's answer key (participants' notebooks never print it)."""
        return self._solution

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.prompt!r})"


class ThoughtExperiment(Exercise):
    """A question to think and talk about: no single right wording, so ``check`` reveals the reasoning.

    >>> q = ThoughtExperiment("Why?", hint="Think.", solution="Because.")
    >>> q.check("my answer").status
    'correct'
    """

    def __init__(self, prompt: str, *, hint: str, solution: str) -> None:
        def judge(answer: Any, *data: Any) -> Feedback:
            return Feedback("correct", f"noted. Compare your reasoning with this one: {solution}")

        super().__init__(prompt, judge, hint=hint, solution=solution)


def normalise_label(answer: Any) -> str:
    """An answer as a comparable label: ``2`` and ``"task2"`` name the same task; case and spaces ignored.

    >>> normalise_label(2), normalise_label(" Task2 "), normalise_label("trunk.0")
    ('task2', 'task2', 'trunk.0')
    """
    import numbers

    if isinstance(answer, (bool, np.bool_)):
        return str(bool(answer)).lower()
    if isinstance(answer, numbers.Integral):  # 2, np.int64(2): the same task
        return f"task{int(answer)}"
    return str(answer).strip().lower().replace(" ", "")


def require_columns(table: Any, columns: Iterable[str], what: str) -> pd.DataFrame:
    """``table`` as a DataFrame holding ``columns``; a clear ``ValueError`` naming the missing ones."""
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{what} lacks the column(s) {missing}; it has {list(table.columns)}")
    return table


def choice_feedback(answer: Any, truth: str, choices: Sequence[str], explanation: str, hint: str) -> Feedback:
    """Judge a pick among ``choices`` against ``truth`` (labels compared with :func:`normalise_label`)."""
    label = normalise_label(answer)
    valid = {normalise_label(c): c for c in choices}
    if label not in valid:
        shown = repr(answer) if len(repr(answer)) <= 80 else repr(answer)[:77] + "..."
        listed = ", ".join(map(str, choices))
        return Feedback("incorrect", f"{shown} is not one of the choices: {listed}.", "not_a_choice")
    if label == normalise_label(truth):
        return Feedback("correct", f"{valid[label]}. {explanation}")
    return Feedback("incorrect", f"not {valid[label]}.", "wrong_choice", hint)
