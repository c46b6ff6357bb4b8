"""Helpers every lab notebook uses: parameter checks, a results folder, figures that survive export.

A notebook's second cell validates the papermill parameters with :func:`check` so that a bad value
stops the run with a message naming the parameter; results go to a :class:`ResultsFolder`, written
atomically so that an interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from ._files import write_atomically

__all__ = [
    "NotebookParameterError",
    "ResultsFolder",
    "check",
    "check_choice",
    "check_choices",
    "check_positive",
    "check_positive_int",
    "setup_plotly",
    "write_atomically",
]


class NotebookParameterError(ValueError):
    """A notebook parameter has a bad value; the message names it."""


def check(condition: bool, name: str, value: object, requirement: str) -> None:
    """Raise :class:`NotebookParameterError` unless ``condition``.

    >>> check(3 > 0, "steps", 3, "a positive integer")
    >>> check(-1 > 0, "lr", -1, "a positive number")
    Traceback (most recent call last):
    ...
    mao_lab.notebook.NotebookParameterError: bad notebook parameter `lr` = -1: it must be a positive number
    """
    if not condition:
        raise NotebookParameterError(f"bad notebook parameter `{name}` = {value!r}: it must be {requirement}")


def check_positive(name: str, value: object) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    check(ok, name, value, "a positive, finite number")
    return float(value)  # type: ignore[arg-type]


def check_positive_int(name: str, value: object) -> int:
    check(isinstance(value, int) and not isinstance(value, bool) and value > 0, name, value, "a positive integer")
    return int(value)  # type: ignore[arg-type]


def check_choice(name: str, value: object, valid: Iterable[str]) -> str:
    valid = list(valid)
    check(value in valid, name, value, f"one of {', '.join(map(repr, valid))}")
    return str(value)


def check_choices(name: str, values: object, valid: Iterable[str]) -> list[str]:
    """A non-empty list whose items are all in ``valid``."""
    valid = list(valid)
    items = [values] if isinstance(values, str) else values
    check(isinstance(items, (list, tuple)) and len(items) > 0, name, values, "a non-empty list")
    unknown = [v for v in items if v not in valid]  # type: ignore[union-attr]
    check(not unknown, name, values, f"a list drawn from {', '.join(map(repr, valid))} (unknown: {unknown})")
    return list(items)  # type: ignore[arg-type]


class ResultsFolder:
    """A folder of a run's results: tidy tables, JSON summaries and figures.

    >>> import tempfile, pandas as pd
    >>> folder = ResultsFolder(tempfile.mkdtemp())
    >>> _ = folder.save_table(pd.DataFrame({"step": [0, 1], "loss": [1.0, 0.5]}), "losses")
    >>> folder.load_table("losses")["loss"].tolist()
    [1.0, 0.5]
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def save_table(self, frame: pd.DataFrame, name: str) -> Path:
        """Save as Parquet (CSV when pyarrow is missing); returns the file written."""
        if _has_pyarrow():
            return write_atomically(self.path / f"{name}.parquet", lambda tmp: frame.to_parquet(tmp, index=False))
        return write_atomically(self.path / f"{name}.csv", lambda tmp: frame.to_csv(tmp, index=False))

    def load_table(self, name: str) -> pd.DataFrame:
        parquet, csv = self.path / f"{name}.parquet", self.path / f"{name}.csv"
        if parquet.exists():
            return pd.read_parquet(parquet)
        if csv.exists():
            return pd.read_csv(csv)
        raise FileNotFoundError(f"no table {name!r} in {self.path} (looked for {parquet.name} and {csv.name})")

    def save_json(self, data: dict[str, Any], name: str) -> Path:
        text = json.dumps(data, indent=2, sort_keys=True, default=_json_default)
        return write_atomically(self.path / f"{name}.json", lambda tmp: tmp.write_text(text + "\n"))

    def load_json(self, name: str) -> dict[str, Any]:
        return json.loads((self.path / f"{name}.json").read_text())

    def save_figure(self, figure: Any, name: str) -> Path:
        """Save a plotly figure as a standalone HTML page that works offline.

        plotly.js is written once per folder (``plotly.min.js``) and shared by every page.
        """
        return write_atomically(
            self.path / f"{name}.html",
            lambda tmp: figure.write_html(tmp, include_plotlyjs="directory", full_html=True),
        )


def setup_plotly() -> None:
    """Make figures show in JupyterLab *and* in an offline HTML export of the executed notebook.

    The ``plotly_mimetype`` part renders in JupyterLab; the ``notebook`` part embeds plotly.js in the
    notebook itself (no CDN), so ``jupyter nbconvert --to html`` shows the figures without a network.
    """
    import plotly.io as pio

    pio.renderers.default = "plotly_mimetype+notebook"


def _has_pyarrow() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
