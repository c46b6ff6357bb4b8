"""The notebooks as a workshop participant meets them: a bad parameter's short error, and the exercise cells.

The exercise cells are read from the committed notebooks: every name they use is defined by an earlier cell
(or imported by the cell itself), and each ``qN`` a cell checks exists in the checker module it imports.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import re
import warnings
from pathlib import Path

import nbformat
import pytest

from mao_lab.runner import NOTEBOOK_DIR, NotebookRunError, execute_notebook

EXERCISE_NOTEBOOKS = {  # notebook -> the checker module its exercises import
    "00_quickstart": "mao_lab.exercises.quickstart",
    "01_toy_landscape": "mao_lab.exercises.landscape",
    "02_imbalanced_regression": "mao_lab.exercises.regression",
    "03_multimnist": "mao_lab.exercises.multimnist",
    "04_balance_explorer": "mao_lab.exercises.explorer",
}
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.mark.notebook
def test_a_bad_parameter_shows_one_line_naming_it_and_papermill_still_fails(tmp_path: Path) -> None:
    with pytest.raises(NotebookRunError, match=r"bad notebook parameter .steps. = -5"):
        execute_notebook(NOTEBOOK_DIR / "00_quickstart.ipynb", tmp_path, {"smoke": True, "steps": -5}, html=False)
    failed = nbformat.read(tmp_path / "00_quickstart.failed.ipynb", as_version=4)
    errors = [out for cell in failed.cells for out in cell.get("outputs", []) if out["output_type"] == "error"]
    assert len(errors) == 1
    shown = ANSI.sub("", "\n".join(errors[0]["traceback"])).splitlines()
    # What JupyterLab shows is the traceback's lines: the message alone, naming only the bad parameter.
    assert shown == ["NotebookParameterError: bad notebook parameter `steps` = -5: it must be a positive integer"], (
        shown
    )


def _cells(name: str) -> list[str]:
    return [
        "".join(c.source)
        for c in nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4).cells
        if c.cell_type == "code"
    ]


def _exercise_start(cells: list[str], module: str) -> int:
    starts = [i for i, source in enumerate(cells) if f"from {module} import" in source]
    assert len(starts) == 1, f"one cell imports {module}"
    return starts[0]


def _defined(sources: list[str]) -> set[str]:
    """Names that cells bind: assignments, imports, defs, loop targets, and
    ``globals().update(validate_parameters(...))``."""
    names: set[str] = set()
    for source in sources:
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
    return names


@pytest.mark.parametrize("name", sorted(EXERCISE_NOTEBOOKS))
def test_exercise_cells_use_only_names_the_notebook_defines(name: str) -> None:
    cells = _cells(name)
    start = _exercise_start(cells, EXERCISE_NOTEBOOKS[name])
    assert start >= len(cells) - 5, "the exercises end the notebook"
    known = _defined(cells) | set(dir(builtins)) | {"display"}
    for source in cells[start:]:
        used = {
            node.id
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)
        }
        # `before` is bound by the exercise itself on its first run (guarded by a globals() test).
        assert used <= known | {"before"}, f"{name}: {sorted(used - known)} not defined by any cell"
    # The notebook binds, before its exercises, every table the exercises pass to a checker.
    earlier = _defined(cells[:start])
    for source in cells[start:]:
        for call in (n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call)):
            for arg in call.args:
                if isinstance(arg, ast.Name) and arg.id not in {"None", "before"}:
                    assert arg.id in earlier, f"{name}: {arg.id} is passed to a checker before any cell defines it"


@pytest.mark.parametrize("name", sorted(EXERCISE_NOTEBOOKS))
def test_every_question_an_exercise_cell_checks_exists_in_its_module(name: str) -> None:
    cells = _cells(name)
    start = _exercise_start(cells, EXERCISE_NOTEBOOKS[name])
    module = importlib.import_module(EXERCISE_NOTEBOOKS[name])
    asked = sorted({m for source in cells[start:] for m in re.findall(r"\b(q\d)\.check\(", source)})
    assert 2 <= len(asked) <= 4, asked
    for question in asked:
        assert callable(getattr(module, question).check), question
        # Unanswered (None) is what the committed notebook passes: the cell must not fail a smoke run.
        assert re.search(rf"\b{question}\.check\(None\b", "\n".join(cells[start:])), f"{question} is committed answered"


def test_the_static_copy_of_a_live_widget_stays_headless_and_goes_once_a_browser_draws_the_widget() -> None:
    import ipywidgets as widgets
    import plotly.graph_objects as go
    import plotly.io as pio
    from IPython.core.displaypub import CapturingDisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell

    from mao_lab.notebook import display_live, setup_plotly

    class Live:
        widget = widgets.IntSlider()

        def static_figure(self) -> go.Figure:
            return go.Figure(go.Scatter(x=[0, 1], y=[2, 3]), layout={"title": {"text": "first view"}})

    shell = InteractiveShell.instance()
    shell.display_pub, publisher = CapturingDisplayPublisher(), shell.display_pub
    # The renderers every notebook sets before it displays a live view.  Not left to plotly's default: that is
    # chosen once, when plotly first renders, from whether an IPython shell existed then (another test decides).
    renderers = pio.renderers.default
    setup_plotly()
    try:
        display_live(Live())
        # (plotly's notebook renderer may first display its script once: not counted.)
        shown = [out for out in shell.display_pub.outputs if set(out["data"]) != {"text/html"}]
        assert len(shown) == 2
        live, copy = shown
        view = live["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
        with warnings.catch_warnings():  # the registry of live widgets, deprecated but the only way from a model id
            warnings.simplefilter("ignore", DeprecationWarning)
            box = widgets.Widget.widgets[view]
        signal = next(child for child in box.children if child is not Live.widget)
        assert Live.widget in box.children
        assert copy["data"]["application/vnd.plotly.v1+json"]["layout"]["title"]["text"] == "first view"
        display_id = copy["transient"]["display_id"]
        # Headless (papermill): nothing draws the widget, the copy stays for the HTML export.
        assert shell.display_pub.outputs[-1] is copy
        signal.rendered = True  # what the browser does when it draws the widget
        update = shell.display_pub.outputs[-1]
        assert update["update"] and update["transient"]["display_id"] == display_id
        assert update["data"] == {"text/plain": ""}
        # A second live widget adds itself and its copy, not plotly.js again (5 MB in the notebook each time).
        before = len(shell.display_pub.outputs)
        display_live(Live())
        assert len(shell.display_pub.outputs) == before + 2
    finally:
        shell.display_pub = publisher
        pio.renderers.default = renderers
