"""Helpers every lab notebook uses: parameter checks, a results folder, figures that survive export.

A notebook declares its parameters once, as a spec of requirements (:mod:`mao_lab._validate`: ``Int``,
``Number``, ``Choices``, ``Device``, ...; re-exported here), and its second cell checks them all with
:func:`validate_parameters`, so that a bad value stops the run with one short message naming the parameter
and what is allowed.  :func:`check` states a condition across parameters in the same words, and
:func:`check_problem` loads the problem a parameter names.  Results go to a :class:`ResultsFolder`, written
atomically so that an interrupted run never leaves a half-written file; :func:`smoke_note` says plainly when
a run's numbers mean nothing.

>>> spec = {"steps": Int(min=1), "lr": Number(positive=True), "level": Choice(("module", "parameter"))}
>>> validate_parameters({"steps": 10, "lr": 1e-3, "level": "module", "other": 1}, spec)
{'steps': 10, 'lr': 0.001, 'level': 'module'}
>>> validate_parameters({"steps": 0, "lr": 1e-3, "level": "module"}, spec)
Traceback (most recent call last):
...
mao_lab.notebook.NotebookParameterError: bad notebook parameter `steps` = 0: it must be a positive integer
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from ._files import write_atomically
from ._validate import (  # the requirements a spec is made of, re-exported for the notebooks
    Autocast,
    Bool,
    Choice,
    Choices,
    Device,
    Dict,
    Int,
    IntList,
    Number,
    NumberList,
    Optional,
    Requirement,
    Text,
)

__all__ = [
    "Autocast",
    "Bool",
    "Choice",
    "Choices",
    "Device",
    "Dict",
    "Int",
    "IntList",
    "NotebookParameterError",
    "Number",
    "NumberList",
    "Optional",
    "Requirement",
    "ResultsFolder",
    "SMOKE_NOTE",
    "Text",
    "check",
    "check_autocast",
    "check_choice",
    "check_device",
    "check_problem",
    "display_live",
    "setup_plotly",
    "smoke_note",
    "validate_parameters",
    "write_atomically",
]

SMOKE_NOTE = "smoke setting: these numbers mean nothing (a few steps on a little data, to check that the notebook runs)"
"""What a notebook prints, and writes above its results, when it ran in its smoke setting."""


class NotebookParameterError(ValueError):
    """A notebook parameter has a bad value; the message names it.

    In a notebook it shows as that one line: a traceback would show only the checks' own code, and its
    examples of other parameters would send a reader after a parameter that is fine.  (IPython calls an
    exception's ``_render_traceback_`` for the lines it shows; papermill still fails the run with the message.)

    >>> NotebookParameterError(
    ...     "bad notebook parameter `steps` = -5: it must be a positive integer"
    ... )._render_traceback_()
    ['\\x1b[0;31mNotebookParameterError\\x1b[0m: bad notebook parameter `steps` = -5: it must be a positive integer']
    """

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[0;31m{type(self).__name__}\x1b[0m: {self}"]


def check(condition: bool, name: str, value: object, requirement: str) -> None:
    """Raise :class:`NotebookParameterError` unless ``condition``: a condition across parameters (a spec's
    requirement checks one parameter alone).

    >>> check(3 > 0, "steps", 3, "a positive integer")
    >>> check(-1 > 0, "lr", -1, "a positive number")
    Traceback (most recent call last):
    ...
    mao_lab.notebook.NotebookParameterError: bad notebook parameter `lr` = -1: it must be a positive number
    """
    __tracebackhide__ = True  # IPython shows the notebook's cell and the message, not this helper's frame
    if not condition:
        raise NotebookParameterError(f"bad notebook parameter `{name}` = {value!r}: it must be {requirement}")


def validate_parameters(namespace: Mapping[str, Any], spec: Mapping[str, Requirement]) -> dict[str, Any]:
    """Check every parameter of ``spec`` in ``namespace`` (a notebook's ``globals()``), in the spec's order.

    Returns the values to use (each requirement's conversion: ``Number`` a float, ``Device("")`` ``None``;
    lists and tuples as lists), for ``globals().update(...)``.

    Raises:
        NotebookParameterError: at the first bad or missing parameter, naming it and what is allowed.
    """
    __tracebackhide__ = True
    checked = {}
    for name, requirement in spec.items():
        if name not in namespace:
            raise NotebookParameterError(f"notebook parameter `{name}` is missing: it must be {requirement.describe()}")
        value = namespace[name]
        check(requirement.allows(value), name, value, requirement.describe())
        value = requirement.convert(value)
        checked[name] = list(value) if isinstance(value, tuple) else value
    return checked


def _one(name: str, value: object, requirement: Requirement) -> Any:
    __tracebackhide__ = True
    return validate_parameters({name: value}, {name: requirement})[name]


def smoke_note(smoke: bool) -> str:
    """:data:`SMOKE_NOTE` in a smoke run, else an empty string.

    >>> smoke_note(True).startswith("smoke setting: these numbers mean nothing"), smoke_note(False)
    (True, '')
    """
    return SMOKE_NOTE if smoke else ""


def check_problem(name: str, value: object, **options: Any) -> Any:
    """The :class:`~mao_lab.problems.Problem` an import path ``"package.module:factory"`` names
    (``factory(**options)``): loaded, not only checked, so it is no requirement of a spec.

    >>> check_problem("problem", "mao_lab.problems:nope")
    Traceback (most recent call last):
    ...
    mao_lab.notebook.NotebookParameterError: bad notebook parameter `problem` = 'mao_lab.problems:nope': it must be \
an import path 'package.module:factory' of a Problem (module 'mao_lab.problems' has no attribute 'nope')
    """
    __tracebackhide__ = True
    from .problems import load_problem

    check(isinstance(value, str), name, value, "an import path 'package.module:factory' of a Problem")
    try:
        return load_problem(str(value), **options)
    except (ValueError, TypeError) as error:
        reason = str(error).split(": ", 1)[-1]
        raise NotebookParameterError(
            f"bad notebook parameter `{name}` = {value!r}: it must be an import path "
            f"'package.module:factory' of a Problem ({reason})"
        ) from None


# One parameter checked outside a spec, as notebooks 03, 04 and 07 still do: each is the spec entry
# ``{name: Choice(valid)}``, ``{name: Device()}`` or ``{name: Autocast()}`` of validate_parameters.


def check_choice(name: str, value: object, valid: Iterable[str]) -> str:
    """``value`` if it is one of ``valid`` (the spec entry ``Choice(valid)``)."""
    return str(_one(name, value, Choice(tuple(valid))))


def check_device(name: str, value: object) -> str | None:
    """A torch device name present here; ``""`` or ``None``: ``None`` (the spec entry ``Device()``).

    >>> check_device("device", ""), check_device("device", "cpu")
    (None, 'cpu')
    """
    return _one(name, value, Device())


def check_autocast(name: str, value: object) -> str | None:
    """``"bf16"`` or ``"fp16"``; ``""`` or ``None``: ``None`` (the spec entry ``Autocast()``).

    >>> check_autocast("autocast", "bf16"), check_autocast("autocast", "")
    ('bf16', None)
    """
    return _one(name, value, Autocast())


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


class LiveView(Protocol):
    """A live widget with a static copy of its current view: the lab's playgrounds and explorers."""

    widget: Any

    def static_figure(self) -> Any: ...


def display_live(live: LiveView) -> None:
    """Display ``live.widget`` and, under it, a static copy of its first view for the notebook's HTML export.

    Widgets are inert in an HTML export, so the copy is what a reader of the export sees.  In a browser
    with a live kernel the copy would stay on screen beside the live figure and disagree with it after
    the first change; so the widget carries a tiny signal that a browser sets when it draws the widget,
    and the copy is then removed.  A headless run (papermill) draws nothing: the copy stays for the export.
    (Save the view with ``results.save_figure(live.static_figure(), name)``.)
    """
    import ipywidgets as widgets
    import plotly.io as pio
    from IPython.display import display

    figure = live.static_figure()
    signal = _render_signal_class()()
    display(widgets.VBox([live.widget, signal]))
    # The figure's bundle rather than the figure, which displays itself and would drop the display id; built by
    # the default renderers as figure.show() builds it (the figure's own _repr_mimebundle_ would send plotly.js
    # again, 5 MB into the notebook each time).
    bundle = pio.renderers._build_mime_bundle(figure.to_dict())
    copy = display(bundle, raw=True, display_id=True)
    signal.observe(
        lambda change: copy.update({"text/plain": ""}, raw=True) if change["new"] else None, names="rendered"
    )


_RENDER_SIGNAL_JS = """
export default {
  render({ model }) {
    // Drawn in a browser: the kernel removes the static copy that was displayed for the HTML export.
    model.set("rendered", true);
    model.save_changes();
  }
};
"""


@functools.cache
def _render_signal_class() -> type:
    """A widget that draws nothing and whose ``rendered`` becomes true when a browser draws it."""
    import anywidget
    import traitlets

    class RenderSignal(anywidget.AnyWidget):
        _esm = _RENDER_SIGNAL_JS
        rendered = traitlets.Bool(False).tag(sync=True)

    return RenderSignal


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
