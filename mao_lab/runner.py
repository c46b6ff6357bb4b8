"""Run the lab's notebooks headlessly with papermill, each into a run folder with an HTML copy.

This is the lab's main job (``make demo``)::

    python -m mao_lab.runner                      # every notebook, full settings, into runs/<time>/
    python -m mao_lab.runner --smoke 00_quickstart  # one notebook, smoke setting

Each notebook runs with its own folder as the working directory (as JupyterLab and papermill's
``--cwd`` do) and receives ``output_dir``: the folder where it writes its tables, JSON and figures.
A notebook that fails leaves ``<name>.failed.ipynb`` beside the earlier results, which stay intact.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .notebook import write_atomically

__all__ = ["NOTEBOOK_DIR", "NotebookRunError", "execute_notebook", "find_notebooks", "main"]

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"


class NotebookRunError(RuntimeError):
    """A notebook failed; the message carries the notebook's own error."""


def find_notebooks(names: Sequence[str] = (), notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """The notebooks to run: all ``NN_*.ipynb`` in order, or those whose name starts with one of ``names``."""
    every = sorted(p for p in notebook_dir.glob("[0-9][0-9]_*.ipynb"))
    if not names:
        return every
    chosen = []
    for name in names:
        matches = [p for p in every if p.stem == name or p.stem.startswith(name) or p.name == name]
        if not matches:
            raise ValueError(f"no notebook matches {name!r}; available: {', '.join(p.stem for p in every)}")
        chosen.extend(m for m in matches if m not in chosen)
    return chosen


def execute_notebook(
    notebook: str | Path,
    output_dir: str | Path,
    parameters: Mapping[str, Any] | None = None,
    *,
    html: bool = True,
    progress: bool = False,
    kernel_name: str = "python3",
) -> Path:
    """Execute ``notebook`` with papermill; results, executed copy and HTML go to ``output_dir``.

    Returns the executed notebook's path.  On failure raises :class:`NotebookRunError` with the
    notebook's own error message, keeps the executed copy as ``<name>.failed.ipynb``, and leaves
    any earlier ``<name>.ipynb``/``.html`` untouched.
    """
    import papermill as pm

    notebook = Path(notebook).resolve()
    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    executed = output_dir / f"{notebook.stem}.ipynb"
    failed = output_dir / f"{notebook.stem}.failed.ipynb"
    params = {**dict(parameters or {}), "output_dir": str(output_dir)}
    try:
        pm.execute_notebook(
            str(notebook),
            str(failed),
            parameters=params,
            cwd=str(notebook.parent),
            kernel_name=kernel_name,
            progress_bar=progress,
            log_output=False,
        )
    except pm.PapermillExecutionError as error:
        raise NotebookRunError(f"{notebook.name} failed: {error.ename}: {error.evalue}") from error
    failed.replace(executed)
    if html:
        export_html(executed)
    return executed


def export_html(executed: Path) -> Path:
    """Write ``<name>.html`` beside an executed notebook (what ``jupyter nbconvert --to html`` does)."""
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_filename(str(executed))
    return write_atomically(executed.with_suffix(".html"), lambda tmp: tmp.write_text(body, encoding="utf-8"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mao_lab.runner", description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", help="notebook names or prefixes (default: all)")
    parser.add_argument("--smoke", action="store_true", help="run each notebook in its smoke setting (seconds)")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<date-time>)")
    parser.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE",
                        help="extra notebook parameter (VALUE parsed as YAML/JSON, e.g. -p lr=0.01)")
    args = parser.parse_args(argv)
    try:
        notebooks = find_notebooks(args.notebooks)
        extra = dict(_parse_parameter(item) for item in args.parameter)
    except ValueError as error:
        parser.error(str(error))
    out = args.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    from tqdm.auto import tqdm

    failures = []
    for notebook in tqdm(notebooks, desc="notebooks", unit="nb", file=sys.stderr):
        target = out / notebook.stem
        try:
            execute_notebook(notebook, target, {"smoke": args.smoke, **extra}, progress=False)
            print(f"ok      {notebook.name} -> {target / (notebook.stem + '.html')}")
        except NotebookRunError as error:
            failures.append(notebook.name)
            print(f"FAILED  {error}", file=sys.stderr)
    print(f"{len(notebooks) - len(failures)} of {len(notebooks)} notebooks ran; results in {out}")
    return 1 if failures else 0


def _parse_parameter(item: str) -> tuple[str, Any]:
    import yaml

    name, sep, value = item.partition("=")
    if not sep or not name.isidentifier():
        raise ValueError(f"bad parameter {item!r}: expected NAME=VALUE")
    return name, yaml.safe_load(value)


if __name__ == "__main__":
    sys.exit(main())
