"""The layers hold: the core never reaches up into the lab's harness.

The core is what a training job needs: MAO and its functional form, the per-task gradients, the observer,
the methods, the problems and the recorder's measuring and storage.  The harness is what the lab builds on
top: the notebook runner, sweeps, the claims study, benchmarks, exercises, notebook helpers, the experiments'
prose, figures and widgets.  Dependencies point one way, core <- harness; these tests read every import
statement of the core (including imports inside functions) and import the core in a fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mao_lab"

CORE = ("mao_lab", "mao_lab.methods", "mao_lab.problems", "mao_lab.recorder")
"""The core packages: ``mao_lab`` means the package's own top-level modules (``_mao.py``, ...)."""

HARNESS = (
    "mao_lab.runner",
    "mao_lab.sweep",
    "mao_lab.study",
    "mao_lab.bench",
    "mao_lab.exercises",
    "mao_lab.notebook",
    "mao_lab.experiments",
    "mao_lab.handouts",
    "mao_lab.classroom",
)

DISPLAY_MODULES = ("mao_lab.recorder._explorer", "mao_lab.recorder._monitor", "mao_lab.recorder._figures")
"""The recorder's display layer: core packages may hold it, but the core's import must not load it."""

HEAVY = ("ipywidgets", "plotly", "papermill", "dask", "IPython", "nbformat")


def _core_files() -> list[tuple[str, Path]]:
    files = [("mao_lab", p) for p in PACKAGE.glob("*.py") if not _is_under(_module_name(p), HARNESS)]
    for package in ("methods", "problems", "recorder"):
        files += [(f"mao_lab.{package}", p) for p in (PACKAGE / package).rglob("*.py")]
    return sorted(files)


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, source: str | None = None) -> set[str]:
    """Absolute names of every module ``path`` imports (its text, or ``source``), at any depth of its code."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


def _is_under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


@pytest.mark.parametrize("package, path", _core_files(), ids=lambda v: getattr(v, "name", v))
def test_a_core_module_imports_nothing_of_the_harness(package: str, path: Path) -> None:
    upward = sorted(name for name in _imports(path) if _is_under(name, HARNESS))
    assert not upward, f"{path.relative_to(PACKAGE.parent)} (core) imports the harness: {upward}"


def test_the_import_checker_sees_relative_and_nested_imports() -> None:
    # The checker itself can fail: relative imports inside a function are found and resolved.
    source = "def f():\n    from ..study import _ledger\n    from .. import runner\n    import mao_lab.bench\n"
    found = _imports(PACKAGE / "methods" / "_anything.py", source)
    assert {"mao_lab.study", "mao_lab.runner", "mao_lab.bench"} <= found
    assert not {"mao_lab.study", "mao_lab.runner"} & _imports(PACKAGE / "methods" / "_anything.py", "from . import x\n")


def test_importing_the_core_loads_no_harness_and_no_display_packages() -> None:
    code = (
        "import sys\n"
        f"import {', '.join(CORE)}\n"
        f"bad = sorted(m for m in sys.modules if m.startswith({HARNESS + DISPLAY_MODULES!r}) "
        f"or m.split('.')[0] in {HEAVY!r})\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "[]", f"importing the core loaded {out.stdout.strip()}"


def test_the_display_names_still_import_from_the_recorder() -> None:
    from mao_lab import recorder

    for name in recorder.__all__:
        assert getattr(recorder, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        recorder.nothing_here  # noqa: B018
