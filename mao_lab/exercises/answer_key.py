"""The instructor's answer key: every exercise's question, hint and solution, read from the checkers themselves.

``make answer-key`` (``python -m mao_lab.exercises.answer_key --out handouts/instructor``) generates two
files into that git-ignored folder, a Markdown page and an offline HTML page; they are never committed, so
a participant's clone does not hold the solutions (docs/workshop.md, step 5).  It is kept apart from the
participants' notebooks: in
a notebook ``qN.solution()`` answers only after the participant's own attempt has been checked, so that a
predict-and-check question is never spoiled.

>>> key = answer_key_markdown()
>>> key.startswith("# Answer key") and "## 06 · workshop" in key and "q2" in key
True
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from .._files import write_atomically
from ._core import Exercise

__all__ = ["NOTEBOOKS", "answer_key_markdown", "main", "questions"]

GENERATED_STEM = "answer-key"
"""The name (without suffix) of the two files :func:`main` generates into ``--out``; none is in the repository."""

NOTEBOOKS = {
    "quickstart": "00_quickstart",
    "landscape": "01_toy_landscape",
    "regression": "02_imbalanced_regression",
    "multimnist": "03_multimnist",
    "explorer": "04_balance_explorer",
    "workshop": "06_workshop_mao_update",
}
"""Each exercise module and the notebook that asks its questions."""


def questions(module: str) -> dict[str, Exercise]:
    """The questions of ``mao_lab.exercises.<module>``, by name (``q1``, ``q2``, ...), in order."""
    loaded = importlib.import_module(f"{__package__}.{module}")
    return {name: getattr(loaded, name) for name in loaded.__all__ if isinstance(getattr(loaded, name), Exercise)}


def answer_key_markdown() -> str:
    """The answer key as Markdown: per notebook, each question's prompt, hint and solution."""
    lines = [
        "# Answer key (instructor only)",
        "",
        "Generated from the checkers in `mao_lab/exercises` (`make answer-key`): what a participant's `qN.solution()`",
        "shows after their own attempt. Predict-and-check questions are judged against the participant's own run,",
        "so the numbers in their notebook decide; the solutions below say what the run shows in the full setting.",
        "",
    ]
    for module, notebook in NOTEBOOKS.items():
        number = notebook.split("_", 1)[0]
        lines += [f"## {number} · {module} — `{notebook}.ipynb`", ""]
        for label, question in questions(module).items():
            kind = "thought experiment" if type(question).__name__ == "ThoughtExperiment" else "checked"
            lines += [
                f"### {label} ({kind})",
                "",
                f"**Question.** {question.prompt}",
                "",
                f"**Hint.** {question.hint().body}",
                "",
                f"**Solution.** {question.answer}",
                "",
            ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mao_lab.exercises.answer_key", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="handouts/instructor", help="folder for the generated key (Markdown and HTML)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = answer_key_markdown()
    # generated here, into the git-ignored --out folder: never a file of the repository
    markdown = write_atomically(out / f"{GENERATED_STEM}.md", lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))
    print(markdown)
    try:
        page = _html(text, out)
    except (ModuleNotFoundError, FileNotFoundError) as error:  # MathJax's package missing: the Markdown is enough
        print(f"no HTML copy: {error}", file=sys.stderr)
    else:
        print(page)
    return 0


def _html(text: str, out: Path) -> Path:
    """The key as an offline page (the handouts' pipeline: local MathJax, nothing remote)."""
    from ..handouts import markdown_page

    return markdown_page(text, out, GENERATED_STEM)


if __name__ == "__main__":
    sys.exit(main())
