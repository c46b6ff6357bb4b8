"""Run the lab's notebooks headlessly with papermill, each into a run folder with an HTML copy.

This is the lab's main job (``make demo``)::

    python -m mao_lab.runner                      # every notebook, full settings, into runs/<time>/
    python -m mao_lab.runner --smoke 00_quickstart  # one notebook, smoke setting
    python -m mao_lab.runner 00_quickstart -p lr=1e-3 -p sigmas=[1,100]

Each notebook runs with its own folder as the working directory (as JupyterLab and papermill's
``--cwd`` do) and receives ``output_dir``: the folder where it writes its tables, JSON and figures.

What a run folder guarantees:

- **All or nothing.** The notebook writes into a hidden staging folder beside the run folder, which
  replaces the run folder only once the notebook has finished (and its HTML and provenance are
  written).  A notebook that fails, a kernel that is killed, or a runner that is killed never leaves
  a mix of old and new files: the earlier results stay as they were, and a failure adds only
  ``<name>.failed.ipynb`` and ``failure.json`` (the error and the provenance of the failed attempt).
- **Provenance.** ``provenance.json`` records the parameters, the notebook's hash, the git commit and
  whether the tree had uncommitted changes, package versions, host, thread settings and wall time (see
  :func:`provenance`, the one record the claims study writes too).
- **One writer.** A run holds a lock on its folder; a second run into the same folder at the same
  time is refused (:class:`RunFolderBusyError`) rather than mixing its files with the first one's.
- **Known parameters only.** A parameter the notebook does not declare is refused before anything
  runs (:class:`UnknownParameterError`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, NoReturn

from ._files import FolderBusyError, FolderLock, publish_folder, recover_folder, staging_folder, write_atomically

__all__ = [
    "NOTEBOOK_DIR",
    "NotebookRunError",
    "RunFolderBusyError",
    "UnknownParameterError",
    "check_parameters",
    "execute_notebook",
    "find_notebooks",
    "had_uncommitted_changes",
    "main",
    "notebook_parameters",
    "parse_value",
    "provenance",
]

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
PROVENANCE_FILE = "provenance.json"
FAILURE_FILE = "failure.json"
# Parameters the runner sets itself: ``output_dir`` always, ``smoke`` from ``--smoke``.
RESERVED_PARAMETERS = ("output_dir",)
# Packages whose versions go into provenance.json.
_PACKAGES = (
    "mao_lab",
    "torch",
    "torchjd",
    "numpy",
    "pandas",
    "pyarrow",
    "scipy",
    "plotly",
    "papermill",
    "nbclient",
    "ipykernel",
    "dask",
    "distributed",
)


class NotebookRunError(RuntimeError):
    """A notebook failed; the message carries the notebook's own error."""


class RunFolderBusyError(NotebookRunError):
    """Another run is writing into the same run folder right now."""


class UnknownParameterError(ValueError):
    """A parameter was given that the notebook's ``parameters`` cell does not declare."""


def find_notebooks(names: Sequence[str] = (), notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """The notebooks to run: all ``NN_*.ipynb`` in order, or those whose name starts with one of ``names``.

    A name that is the path of an existing ``.ipynb`` file (e.g. ``notebooks/study/point.ipynb``) is taken as is.
    """
    every = sorted(p for p in notebook_dir.glob("[0-9][0-9]_*.ipynb"))
    if not names:
        return every
    chosen = []
    for name in names:
        if not name.strip():  # every name starts with "": it would run every notebook, which no one asked for
            raise ValueError(f"empty notebook name {name!r}; name a notebook (or give none to run them all)")
        if name.endswith(".ipynb") and Path(name).is_file():
            chosen.append(Path(name).resolve())
            continue
        matches = [p for p in every if p.stem == name or p.stem.startswith(name) or p.name == name]
        if not matches:
            raise ValueError(f"no notebook matches {name!r}; available: {', '.join(p.stem for p in every)}")
        chosen.extend(m for m in matches if m not in chosen)
    return chosen


def notebook_parameters(notebook: str | Path) -> dict[str, str]:
    """The parameters a notebook declares in its ``parameters`` cell: name -> default (as source text)."""
    import papermill as pm

    if not Path(notebook).is_file():
        raise FileNotFoundError(f"no notebook at {notebook}")
    try:
        declared = pm.inspect_notebook(str(notebook))
    except Exception as error:  # noqa: BLE001 - nbformat raises several kinds for a damaged file
        message = " ".join(str(error).split())[:300]
        raise ValueError(
            f"{Path(notebook).name} is not a readable notebook ({type(error).__name__}: {message})"
        ) from None
    return {name: info.get("default", "") for name, info in declared.items()}


def check_parameters(notebook: str | Path, names: Sequence[str]) -> None:
    """Refuse parameters the notebook does not declare (papermill itself only warns and runs on).

    Raises:
        UnknownParameterError: naming the unknown parameters and listing the notebook's own.
    """
    declared = notebook_parameters(notebook)
    unknown = [n for n in names if n not in declared]
    if unknown:
        listing = ", ".join(declared) if declared else "none (no cell tagged `parameters`)"
        raise UnknownParameterError(
            f"{Path(notebook).name} has no parameter {', '.join(map(repr, unknown))}; its parameters: {listing}"
        )


def execute_notebook(
    notebook: str | Path,
    output_dir: str | Path,
    parameters: Mapping[str, Any] | None = None,
    *,
    html: bool = True,
    progress: bool = False,
    kernel_name: str = "python3",
    required: Sequence[str] = (),
    record: Mapping[str, Any] | None = None,
    cwd: str | Path | None = None,
    cell_timeout: float | None = None,
) -> Path:
    """Execute ``notebook`` with papermill; results, executed copy, HTML and provenance go to ``output_dir``.

    Args:
        notebook: the ``.ipynb`` to run.
        output_dir: the run folder; it is replaced as a whole when the run succeeds.
        parameters: notebook parameters (``output_dir`` is set by the runner); unknown names are refused.
        html: also write ``<name>.html``.
        required: JSON files the notebook must leave (e.g. ``["summary.json"]``); a file missing, not
            valid JSON or not a JSON object makes the run fail with that reason.
        record: extra fields for ``provenance.json`` (a sweep records its point there).
        cwd: the kernel's working directory (default: the notebook's folder).
        cell_timeout: seconds one cell may run before the run fails (``None``: no limit), so that a
            hanging notebook cannot hold a sweep point forever.

    Returns the executed notebook's path.  On failure raises :class:`NotebookRunError` with the
    notebook's own error message (or the reason the kernel died), writes ``<name>.failed.ipynb``
    and ``failure.json`` into ``output_dir``, and leaves every earlier file there untouched.

    Raises:
        UnknownParameterError: a parameter the notebook does not declare (nothing is run or written).
        RunFolderBusyError: another run holds ``output_dir``.
        NotebookRunError: the notebook failed, its kernel died, or a required file is missing.
    """
    notebook = Path(notebook).resolve()
    dest = Path(output_dir).resolve()
    given = {k: v for k, v in dict(parameters or {}).items()}
    reserved = [name for name in RESERVED_PARAMETERS if name in given]
    if reserved:
        raise ValueError(f"{', '.join(reserved)} is set by the runner, not a parameter to pass")
    check_parameters(notebook, [*given, "output_dir"])
    if dest.exists() and not dest.is_dir():
        raise NotADirectoryError(f"cannot run into {dest}: it exists and is not a folder")
    if cell_timeout is not None and (
        isinstance(cell_timeout, bool) or not isinstance(cell_timeout, (int, float)) or not cell_timeout > 0
    ):
        raise ValueError(f"cell_timeout must be a positive number of seconds or None, got {cell_timeout!r}")
    try:
        lock = FolderLock(dest).__enter__()
    except FolderBusyError as error:
        raise RunFolderBusyError(str(error)) from None
    try:
        recover_folder(dest)
        staged = staging_folder(dest)
        try:
            return _run_staged(
                notebook, dest, staged, given, html, progress, kernel_name, required, record, cwd, cell_timeout
            )
        finally:
            shutil.rmtree(staged, ignore_errors=True)  # gone already when published
    finally:
        lock.__exit__(None, None, None)


def _run_staged(
    notebook: Path,
    dest: Path,
    staged: Path,
    given: dict[str, Any],
    html: bool,
    progress: bool,
    kernel_name: str,
    required: Sequence[str],
    record: Mapping[str, Any] | None,
    cwd: str | Path | None,
    cell_timeout: float | None = None,
) -> Path:
    import papermill as pm

    running = staged / f"{notebook.stem}.failed.ipynb"  # renamed once the run succeeds
    started = time.time()
    error: str | None = None
    try:
        pm.execute_notebook(
            str(notebook),
            str(running),
            parameters={**given, "output_dir": str(staged)},
            cwd=str(cwd or notebook.parent),
            kernel_name=kernel_name,
            progress_bar=progress,
            log_output=False,
            execution_timeout=cell_timeout,
        )
    except pm.PapermillExecutionError as failure:
        error = f"{notebook.name} failed: {failure.ename}: {failure.evalue}"
    except Exception as failure:  # noqa: BLE001 - a dead kernel, a broken notebook: the run failed, say why
        error = f"{notebook.name} failed: {_describe(failure)}"
    info = _run_provenance(notebook, given, started=started, wall_s=time.time() - started, extra=record)
    if error is None:
        error = _missing_required(staged, required, notebook.name)
    if error is not None:
        _record_failure(dest, running, notebook.stem, error, {**info, "status": "failed"})
        raise NotebookRunError(error)
    executed = running.replace(staged / f"{notebook.stem}.ipynb")
    if html:
        export_html(executed)
    _write_json(staged / PROVENANCE_FILE, {**info, "status": "ok"})
    publish_folder(staged, dest)
    return dest / executed.name


def _describe(failure: BaseException) -> str:
    name = type(failure).__name__
    if name == "DeadKernelError" or "kernel died" in str(failure).lower():
        return "the kernel died (killed by a signal, or out of memory) before the notebook finished"
    if name == "CellTimeoutError":
        return f"a cell ran past the time limit ({' '.join(str(failure).split())[:200]})"
    message = " ".join(str(failure).split())
    return f"{name}: {message[:500]}" if message else name


def _missing_required(folder: Path, required: Sequence[str], name: str) -> str | None:
    for file in required:
        path = folder / file
        if not path.is_file():
            return f"{name} finished but wrote no {file}"
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as error:
            return f"{name} wrote a {file} that is not valid JSON (truncated?): {error}"
        if not isinstance(value, dict):
            return f"{name} wrote a {file} that is not a JSON object (got {type(value).__name__})"
    return None


def _record_failure(dest: Path, running: Path, stem: str, error: str, info: dict[str, Any]) -> None:
    """Put the failed notebook and ``failure.json`` beside the earlier results, which stay as they were."""
    dest.mkdir(parents=True, exist_ok=True)
    if running.exists():
        os.replace(running, dest / f"{stem}.failed.ipynb")  # same file system: one atomic rename
    _write_json(dest / FAILURE_FILE, {"error": error, "provenance": info})


def _write_json(path: Path, data: Mapping[str, Any]) -> Path:
    text = json.dumps(data, indent=2, sort_keys=True, default=repr) + "\n"
    return write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def provenance(**fields: Any) -> dict[str, Any]:
    """Where and with what a result was made, then ``fields``: one record for a notebook run and for the study.

    Keys: ``commit`` (of the repository holding this package; ``None`` outside git) and ``uncommitted_changes``
    (whether tracked files differed from it; ``None`` when unknown), ``host``, ``platform``, ``processor``,
    ``cpu_count``, ``python`` and ``versions`` (of the lab's packages).  Read the changes flag of a record written
    by an older version with :func:`had_uncommitted_changes`.

    >>> info = provenance(threads_per_point=1)
    >>> sorted(info)[:4], info["threads_per_point"], "torch" in info["versions"]
    (['commit', 'cpu_count', 'host', 'platform'], 1, True)
    """
    commit, uncommitted = _git_state()
    return {
        "commit": commit,
        "uncommitted_changes": uncommitted,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "versions": _package_versions(),
        **fields,
    }


def had_uncommitted_changes(record: Mapping[str, Any]) -> bool | None:
    """Whether the tree that made ``record`` (a provenance) had uncommitted changes; ``None`` when unknown.

    Reads the key every record has now (``uncommitted_changes``) and those of older files: a run's
    ``git: {"dirty": ...}`` and a bare ``dirty``.

    >>> had_uncommitted_changes({"uncommitted_changes": True}), had_uncommitted_changes({"git": {"dirty": False}})
    (True, False)
    >>> had_uncommitted_changes({"dirty": True}), had_uncommitted_changes({"git": None})
    (True, None)
    """
    git = record.get("git")
    for source in (record, git if isinstance(git, Mapping) else {}):
        for key in ("uncommitted_changes", "dirty"):
            if source.get(key) is not None:
                return bool(source[key])
    return None


def _run_provenance(
    notebook: Path, parameters: Mapping[str, Any], *, started: float, wall_s: float, extra: Mapping[str, Any] | None
) -> dict[str, Any]:
    """A notebook run's :func:`provenance`: the notebook and its hash, its parameters, start, wall time, threads.

    Thread counts are those of the process that starts the kernel; the kernel inherits its environment
    (``OMP_NUM_THREADS`` and friends), and a notebook that fixes its own thread count should say so in its summary.

    >>> info = _run_provenance(NOTEBOOK_DIR / "00_quickstart.ipynb", {"lr": 0.01}, started=0.0, wall_s=1.5, extra={})
    >>> info["parameters"], info["wall_s"], sorted(info["threads"])[:2]
    ({'lr': 0.01}, 1.5, ['MKL_NUM_THREADS', 'OMP_NUM_THREADS'])
    """
    return provenance(
        notebook=notebook.name,
        notebook_sha256=hashlib.sha256(notebook.read_bytes()).hexdigest() if notebook.is_file() else None,
        parameters=dict(parameters),
        started_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        wall_s=round(float(wall_s), 3),
        threads=_threads(),
        **dict(extra or {}),
    )


def _threads() -> dict[str, Any]:
    threads: dict[str, Any] = {name: os.environ.get(name) for name in ("MKL_NUM_THREADS", "OMP_NUM_THREADS")}
    try:
        import torch

        threads["torch"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover - torch is a requirement
        threads["torch"] = None
    return threads


@lru_cache(maxsize=1)
def _package_versions() -> dict[str, str | None]:
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git_state() -> tuple[str | None, bool | None]:
    """The commit of the repository holding this package, and whether tracked files differ from it."""
    repository = Path(__file__).resolve().parents[1]
    if not (repository / ".git").exists() or shutil.which("git") is None:
        return None, None
    try:
        commit = subprocess.run(
            ["git", "-C", str(repository), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=20
        )
        status = subprocess.run(
            ["git", "-C", str(repository), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None, None
    if commit.returncode != 0:
        return None, None
    return commit.stdout.strip(), bool(status.stdout.strip()) if status.returncode == 0 else None


def export_html(executed: Path) -> Path:
    """Write ``<name>.html`` beside an executed notebook (what ``jupyter nbconvert --to html`` does)."""
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_filename(str(executed))
    return write_atomically(executed.with_suffix(".html"), lambda tmp: tmp.write_text(body, encoding="utf-8"))


# -- values on the command line --------------------------------------------------------------------

_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$")
_INT = re.compile(r"^[-+]?[0-9]+$|^0o[0-7]+$|^0x[0-9a-fA-F]+$")


def _yaml12_loader() -> type:
    """A safe YAML loader with the YAML 1.2 core schema's scalars.

    PyYAML implements YAML 1.1, where ``1e-3`` is a string (a float needs a dot), ``no`` is False,
    ``1_000`` is 1000 and ``12:30`` is 750.  The 1.2 core schema reads them as people mean them.
    """
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {}
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:bool", re.compile(r"^(true|True|TRUE|false|False|FALSE)$"), list("tTfF")
    )
    Loader.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^(~|null|Null|NULL|)$"), ["~", "n", "N", ""])
    Loader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+.0123456789"))

    def integer(loader: Any, node: Any) -> int:
        text = loader.construct_scalar(node)
        if len(text.lstrip("+-")) > MAX_NUMBER_DIGITS:
            raise _ValueRefused(f"an integer of {len(text)} digits (at most {MAX_NUMBER_DIGITS})")
        if text.startswith(("0o", "0x")):
            return int(text, 0)
        return int(text, 10)

    def real(loader: Any, node: Any) -> float:
        text = loader.construct_scalar(node)
        value = float(
            text.replace(".inf", "inf")
            .replace(".Inf", "inf")
            .replace(".INF", "inf")
            .replace(".nan", "nan")
            .replace(".NaN", "nan")
            .replace(".NAN", "nan")
        )
        if math.isinf(value) and "inf" not in text.lower():
            raise _ValueRefused(f"{text} is beyond the largest float (write .inf for infinity)")
        return value

    def mapping(loader: Any, node: Any) -> dict[Any, Any]:
        keys = [loader.construct_object(key, deep=True) for key, _ in node.value]
        seen: list[Any] = []
        for key in keys:
            if key in seen:
                raise _ValueRefused(f"the key {key!r} is given twice")
            seen.append(key)
        return loader.construct_mapping(node, deep=True)

    Loader.add_constructor("tag:yaml.org,2002:int", integer)
    Loader.add_constructor("tag:yaml.org,2002:float", real)
    Loader.add_constructor("tag:yaml.org,2002:map", mapping)
    return Loader


# What one command-line value may expand to: YAML anchors and aliases can make a few hundred characters
# stand for 10^8 elements (an "alias bomb"), which would hang the runner, papermill or a sweep's grid.
MAX_VALUE_ELEMENTS = 10_000
MAX_VALUE_DEPTH = 50
MAX_NUMBER_DIGITS = 400
# The tags of the YAML 1.2 core schema (what JSON can hold too); ``!!binary``, ``!!set``, ``!!timestamp``
# and the like would reach a notebook as a value it cannot be given as a parameter.
_CORE_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map"))


class _ValueRefused(Exception):
    """A well-formed YAML value that is no parameter: too large, too deep, recursive or of another type."""


def _check_value_graph(root: Any) -> None:
    """Refuse a composed YAML value that expands beyond the limits, refers to itself or has a non-core tag.

    The count is that of the value once every alias is expanded, computed without expanding it (each
    node's expanded size is remembered), so a bomb is refused in microseconds.
    """
    import yaml

    seen: dict[int, tuple[int, int]] = {}  # node -> (elements once expanded, levels below it)
    open_nodes: set[int] = set()

    def visit(node: Any, depth: int) -> tuple[int, int]:
        if node.tag not in _CORE_TAGS:
            raise _ValueRefused(f"the tag {node.tag!r} (only strings, numbers, booleans, null, lists and maps)")
        key = id(node)
        if key in open_nodes:
            raise _ValueRefused("it contains itself (a recursive alias)")
        size, height = seen.get(key) or (1, 0)
        if key not in seen and not isinstance(node, yaml.ScalarNode):
            open_nodes.add(key)
            children = [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else node.value
            for child in children:
                child_size, child_height = visit(child, depth + 1)
                size, height = size + child_size, max(height, child_height + 1)
                if size > MAX_VALUE_ELEMENTS:
                    raise _ValueRefused(f"it expands to more than {MAX_VALUE_ELEMENTS} elements")
            open_nodes.discard(key)
        seen[key] = (size, height)
        if depth + height > MAX_VALUE_DEPTH:
            raise _ValueRefused(f"it is nested more than {MAX_VALUE_DEPTH} levels deep")
        return size, height

    if root is not None:
        visit(root, 0)


def parse_value(text: str) -> Any:
    """A command-line value as its user means it: YAML 1.2 (so also JSON), one line of error if malformed.

    A value is refused when it expands to more than :data:`MAX_VALUE_ELEMENTS` elements (anchors and aliases
    included), nests deeper than :data:`MAX_VALUE_DEPTH`, refers to itself, repeats a key, or carries a tag
    outside the core schema (``!!binary``, ``!!set``, ``!!timestamp``, ...).

    >>> parse_value("1e-3"), parse_value("3"), parse_value("true"), parse_value("no"), parse_value("[1, 1e2]")
    (0.001, 3, True, 'no', [1, 100.0])
    >>> parse_value("[1, 2")
    Traceback (most recent call last):
    ...
    ValueError: malformed value '[1, 2': expected ',' or ']', but got '<stream end>' (line 1, column 6)
    >>> parse_value("[&a [1,2,3,4,5,6,7,8,9,10], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a],"
    ...             " &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]]")
    Traceback (most recent call last):
    ...
    ValueError: value '[&a [1,2,3,4,5,6,7,8,9,10], &b'... refused: it expands to more than 10000 elements
    """
    import yaml

    if _bracket_depth(text) > MAX_VALUE_DEPTH:  # before PyYAML's recursive parser spends seconds on it
        raise ValueError(f"value {_shown(text)} refused: it is nested more than {MAX_VALUE_DEPTH} levels deep")
    loader = _yaml12_loader()(text)
    try:
        node = loader.get_single_node()
        _check_value_graph(node)
        return loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ValueError(f"malformed value {_shown(text)}: {problem}{where}") from None
    except _ValueRefused as error:
        raise ValueError(f"value {_shown(text)} refused: {error}") from None
    except RecursionError:
        raise ValueError(f"value {_shown(text)} refused: it is nested too deeply") from None
    except ValueError as error:  # e.g. an integer beyond Python's conversion limit
        raise ValueError(f"malformed value {_shown(text)}: {error}") from None
    finally:
        loader.dispose()


def _bracket_depth(text: str) -> int:
    """The deepest nesting of ``[`` and ``{`` outside quotes (a flow-style value's depth, read in one pass)."""
    depth = deepest = 0
    quote = ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _shown(text: str, limit: int = 30) -> str:
    """``text`` quoted for an error message, cut to ``limit`` characters (a value can be long)."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def parse_assignment(item: str, what: str = "parameter") -> tuple[str, str]:
    """``NAME=VALUE`` split into a valid Python name and the raw value text."""
    name, sep, value = item.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise ValueError(f"bad {what} {item!r}: expected NAME=VALUE with NAME a Python identifier")
    return name, value


def parse_parameters(items: Sequence[str]) -> dict[str, Any]:
    """``-p NAME=VALUE`` options as a dict; a name given twice or reserved is an error."""
    parameters: dict[str, Any] = {}
    for item in items:
        name, value = parse_assignment(item)
        if name in parameters:
            raise ValueError(f"parameter {name!r} given twice (-p {item})")
        if name in (*RESERVED_PARAMETERS, "smoke"):
            raise ValueError(f"parameter {name!r} is set by the runner (use --out or --smoke)")
        parameters[name] = parse_value(value)
    return parameters


class OneLineArgumentParser(argparse.ArgumentParser):
    """An argument parser whose every error is one line on stderr and exit code 2 (no usage block above it).

    >>> OneLineArgumentParser(prog="demo").parse_args(["--nope"])
    Traceback (most recent call last):
    ...
    SystemExit: 2
    """

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def folder_argument(text: str) -> Path:
    """A folder given on the command line (argparse ``type=``): an empty one would silently mean ``.``."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty folder name: name a folder")
    return Path(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineArgumentParser(prog="python -m mao_lab.runner", description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", help="notebook names or prefixes (default: all)")
    parser.add_argument("--smoke", action="store_true", help="run each notebook in its smoke setting (seconds)")
    parser.add_argument("--out", type=folder_argument, default=None, help="run folder (default: runs/<date-time>)")
    parser.add_argument(
        "-p",
        "--parameter",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra notebook parameter (VALUE read as YAML 1.2 / JSON: -p lr=1e-3 -p sigmas=[1,100])",
    )
    args = parser.parse_args(argv)
    try:
        if args.out is not None and args.out.exists() and not args.out.is_dir():
            raise ValueError(f"--out {args.out} is a file, not a folder")
        notebooks = find_notebooks(args.notebooks)
        extra = parse_parameters(args.parameter)
        for notebook in notebooks:
            check_parameters(notebook, [*extra, "smoke", "output_dir"])
    except (ValueError, OSError) as error:
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
        except OSError as error:  # the run folder cannot be written (a file in the way, no permission, disk full)
            failures.append(notebook.name)
            print(f"FAILED  {notebook.name}: cannot write {target}: {error}", file=sys.stderr)
    print(f"{len(notebooks) - len(failures)} of {len(notebooks)} notebooks ran; results in {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
