"""Hostile inputs (issue 21): each one is refused with one clear line, or handled, and touches nothing it must not.

Every case that could touch files compares them byte for byte (a SHA-256 of every file) before and after.
docs/hostile-inputs.md lists every input tried, its class, what it did before the fix and what it does now,
and the test below that checks it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from mao_lab import MAO
from mao_lab import _files as files
from mao_lab.methods import make
from mao_lab.recorder import BalanceMonitor, Recorder, load_run
from mao_lab.recorder._frame import empty_frame
from mao_lab.recorder._storage import RunFileError, save_run
from mao_lab.runner import MAX_VALUE_DEPTH, MAX_VALUE_ELEMENTS, parse_value
from mao_lab.runner import main as runner_main

from _helpers import Net as SharedNet
from _helpers import write_notebook

REPOSITORY = Path(__file__).resolve().parents[1]
SHIPPED = REPOSITORY / "data" / "multimnist.npz"


def snapshot(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` by relative path (lock files excepted: they exist by design)."""
    if not folder.exists():
        return {}
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def tree(folder: Path) -> list[str]:
    """Every path under ``folder`` (folders too), relative: what a refused command must not have created."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


TINY_PARAMETERS = "smoke = False\noutput_dir = 'out'\nx = 1.0\nmode = 'ok'"
TINY_BODY = (
    "import json, pathlib\nout = pathlib.Path(output_dir)\nout.mkdir(parents=True, exist_ok=True)\n"
    "(out / 'summary.json').write_text(json.dumps({'x': x}))\n(out / 'new.txt').write_text('new')"
)
# A notebook with the lab's contract (``smoke``, ``output_dir``) that writes ``summary.json``.
tiny_notebook = partial(write_notebook, parameters=TINY_PARAMETERS, body=TINY_BODY)


def one_line_exit_2(
    capsys: pytest.CaptureFixture[str],
    call: Callable[[], object],
    prog: str,
    *,
    prefixed: bool = True,
) -> str:
    """Run a CLI ``main``: it must exit 2 with exactly one line on stderr (naming its program unless not
    ``prefixed``: ``--ledger-only`` words its own errors); returns the line."""
    try:
        code = call()
    except SystemExit as exit_info:
        code = exit_info.code
    error = capsys.readouterr().err
    lines = error.strip().splitlines()
    assert code == 2, error
    assert len(lines) == 1, error
    assert not prefixed or (lines[0].startswith(f"python -m {prog}") and ": error: " in lines[0]), error
    return lines[0]


# -- loss: a run folder that is a mount point --------------------------------------------------------------


def _old_run(folder: Path) -> None:
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "old.txt").write_text("old")
    (folder / "keep.txt").write_text("old")
    (folder / "failure.json").write_text('{"error": "an earlier failed run"}')


def _new_run(staged: Path) -> dict[str, str]:
    (staged / "sub").mkdir()
    (staged / "sub" / "new.txt").write_text("new")
    (staged / "keep.txt").write_text("new")
    return {"sub/new.txt": "new", "keep.txt": "new"}


def hashes(contents: dict[str, str]) -> dict[str, str]:
    return {name: hashlib.sha256(text.encode()).hexdigest() for name, text in sorted(contents.items())}


@pytest.fixture
def mount_point(tmp_path: Path) -> Iterator[Path]:
    """A real mount point (a bind mount of a folder onto itself): renames across it fail with EXDEV."""
    folder = tmp_path / "run"
    folder.mkdir()
    done = subprocess.run(
        ["mount", "--bind", str(folder), str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"no permission to bind-mount here ({done.stderr.strip() or done.returncode})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True, check=False)


def test_publishing_into_a_real_mount_point_keeps_the_finished_run(
    mount_point: Path,
) -> None:
    assert files._is_mount_point(mount_point)  # os.path.ismount misses a bind mount of the same file system
    _old_run(mount_point)
    staged = files.staging_folder(mount_point)
    expected = _new_run(staged)
    files.publish_folder(staged, mount_point)
    assert snapshot(mount_point) == hashes(expected)  # the old failure.json went with the rest of the old run
    assert tree(mount_point.parent) == [
        "run",
        "run/keep.txt",
        "run/sub",
        "run/sub/new.txt",
    ]


@pytest.mark.notebook
def test_a_notebook_run_into_a_real_mount_point_keeps_its_outputs(mount_point: Path, tmp_path: Path) -> None:
    from mao_lab.runner import execute_notebook

    _old_run(mount_point)
    notebook = tiny_notebook(tmp_path)
    execute_notebook(notebook, mount_point, {"x": 2.0}, html=False)
    assert json.loads((mount_point / "summary.json").read_text()) == {"x": 2.0}
    assert (mount_point / "new.txt").read_text() == "new" and not (mount_point / "failure.json").exists()
    assert not (mount_point / "keep.txt").exists()  # the run folder is replaced as a whole
    assert [p.name for p in mount_point.iterdir() if p.name.startswith(".")] == []


def test_a_folder_that_cannot_be_renamed_and_a_staging_folder_on_another_device_keep_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the audit saw: the folder's rename fails (EBUSY), then every move into it fails with EXDEV."""
    folder, staged = tmp_path / "run", tmp_path / ".run.partial-x"
    _old_run(folder)
    staged.mkdir()
    expected = _new_run(staged)
    real = os.replace

    def like_a_mount_point(source: object, target: object) -> None:
        source, target = Path(str(source)), Path(str(target))
        if source == folder:
            raise OSError(errno.EBUSY, "Device or resource busy")
        if staged in source.parents and folder in target.parents:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real(source, target)

    monkeypatch.setattr(files.os, "replace", like_a_mount_point)
    files.publish_folder(staged, folder)
    monkeypatch.undo()
    assert snapshot(folder) == hashes(expected)
    assert tree(tmp_path) == ["run", "run/keep.txt", "run/sub", "run/sub/new.txt"]


def test_a_failure_while_filling_a_mount_point_puts_the_old_run_back_byte_for_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "run"
    _old_run(folder)
    before = snapshot(folder)
    monkeypatch.setattr(files, "_is_mount_point", lambda path: Path(path) == folder)
    staged = files.staging_folder(folder)
    assert staged.parent == folder  # staged on the mount point's own file system
    _new_run(staged)
    real, moved = files._move_across, []

    def disk_full_at_the_second(source: Path, target: Path) -> None:
        if moved:
            raise OSError(errno.ENOSPC, "No space left on device")
        moved.append(source.name)
        real(source, target)

    monkeypatch.setattr(files, "_move_across", disk_full_at_the_second)
    with pytest.raises(OSError, match="No space left"):
        files.publish_folder(staged, folder)
    assert snapshot(folder / staged.name) == hashes({"sub/new.txt": "new", "keep.txt": "new"})  # the new run, whole
    assert {k: v for k, v in snapshot(folder).items() if not k.startswith(".")} == before


_KILLER = """
import os, sys
from pathlib import Path
from mao_lab import _files
folder, kill_at = Path(sys.argv[1]), int(sys.argv[2])
_files._is_mount_point = lambda path: Path(path) == folder
real, calls = os.replace, [0]
def replace(source, target):
    calls[0] += 1
    if calls[0] == kill_at:
        os._exit(9)                                     # killed: no handler, no finally runs
    real(source, target)
_files.os.replace = replace
staged = Path(sys.argv[3])
_files.publish_folder(staged, folder)
print("finished", calls[0])
"""


def test_a_process_killed_at_any_rename_of_an_in_place_publication_recovers_to_one_whole_run(
    tmp_path: Path,
) -> None:
    """Kill the publisher at its 1st, 2nd, ... rename; recover_folder then shows the old run or the new one, whole."""
    old_expected = {
        "sub/old.txt": "old",
        "keep.txt": "old",
        "failure.json": '{"error": "an earlier failed run"}',
    }
    new_expected = {"sub/new.txt": "new", "keep.txt": "new"}
    kill_at, outcomes = 1, []
    while True:
        folder = tmp_path / f"case{kill_at}" / "run"
        _old_run(folder)
        staged = Path(files.tempfile.mkdtemp(prefix=".run.partial-", dir=folder))
        _new_run(staged)
        env = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
        done = subprocess.run(
            [sys.executable, "-c", _KILLER, str(folder), str(kill_at), str(staged)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        files.recover_folder(folder)
        seen = snapshot(folder)
        assert seen in (hashes(old_expected), hashes(new_expected)), (kill_at, seen)
        assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == [], kill_at
        outcomes.append("new" if seen == hashes(new_expected) else "old")
        if done.returncode == 0:
            break
        assert done.returncode == 9, done.stderr
        kill_at += 1
    assert outcomes[0] == "old" and outcomes[-1] == "new" and kill_at >= 5  # every rename was a kill point


# -- crash: values that expand without bound -----------------------------------------------------------------


def alias_bomb(levels: int, width: int = 10, scalar: str = "1.5") -> str:
    """``levels`` anchored lists, each ``width`` aliases of the one before: ``width ** levels`` scalars."""
    items = [f"&l0 [{', '.join([scalar] * width)}]"]
    items += [f"&l{k} [{', '.join([f'*l{k - 1}'] * width)}]" for k in range(1, levels)]
    return "[" + ", ".join(items) + "]"


def expanded_size(levels: int, width: int = 10) -> int:
    """Elements of :func:`alias_bomb` once expanded, counted by hand: each level is a list node plus its items."""
    size, total = 1 + width, 0  # level 0: the list and its scalars
    for _ in range(levels):
        total += size
        size = 1 + width * size
    return total + 1  # the outer list


def test_the_audits_alias_bombs_are_refused_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mao_lab.sweep import main as sweep_main

    bomb = alias_bomb(8)  # 10^8 floats once expanded: what papermill was still writing after 60 s
    assert expanded_size(8) > 10**8
    notebook = tiny_notebook(tmp_path)
    out = tmp_path / "out"
    line = one_line_exit_2(
        capsys,
        lambda: runner_main([str(notebook), "-p", f"x={bomb}", "--out", str(out)]),
        "mao_lab.runner",
    )
    assert f"expands to more than {MAX_VALUE_ELEMENTS} elements" in line
    line = one_line_exit_2(
        capsys,
        lambda: sweep_main([str(notebook), "-g", f"x=1,{bomb}", "--out", str(out)]),
        "mao_lab.sweep",
    )
    assert "expands to more than" in line
    assert tree(tmp_path) == ["tiny.ipynb"]


def test_the_bound_counts_elements_as_expanded() -> None:
    """A value just under the bound parses (the same as without aliases); one element more is refused."""
    levels = max(k for k in range(1, 8) if expanded_size(k) <= MAX_VALUE_ELEMENTS)
    value = parse_value(alias_bomb(levels))
    count = [0]

    def walk(item: object) -> None:
        count[0] += 1
        if isinstance(item, list):
            for child in item:
                walk(child)

    walk(value)
    assert count[0] == expanded_size(levels)
    flat = "[" + ", ".join(["1"] * (MAX_VALUE_ELEMENTS - 1)) + "]"  # the list and its items: exactly the bound
    assert len(parse_value(flat)) == MAX_VALUE_ELEMENTS - 1
    with pytest.raises(ValueError, match="expands to more than"):
        parse_value("[" + ", ".join(["1"] * MAX_VALUE_ELEMENTS) + "]")


@pytest.mark.parametrize(
    "text, message",
    [
        ("&a [*a]", "contains itself"),
        ("&a {x: *a}", "contains itself"),
        ("[" * 3000 + "]" * 3000, f"nested more than {MAX_VALUE_DEPTH} levels"),
        ("[" * (MAX_VALUE_DEPTH + 1) + "]" * (MAX_VALUE_DEPTH + 1), "nested more than"),
        ("{a: 1, a: 2}", "the key 'a' is given twice"),
        ("!!binary aGVsbG8=", "tag:yaml.org,2002:binary"),
        ("!!set {a, b}", "tag:yaml.org,2002:set"),
        ("!!timestamp 2001-12-14", "tag:yaml.org,2002:timestamp"),
        ("!!python/name:os.system", "python/name:os.system"),
        ("1e400", "beyond the largest float"),
        ("-1e400", "beyond the largest float"),
        ("9" * 5000, "an integer of 5000 digits"),
    ],
    ids=[
        "recursive-list",
        "recursive-map",
        "deep-3000",
        "deep-51",
        "duplicate-key",
        "binary",
        "set",
        "timestamp",
        "python-tag",
        "overflow",
        "negative-overflow",
        "5000-digits",
    ],
)
def test_values_that_are_no_parameter_are_refused_with_one_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="refused") as error:
        parse_value(text)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_values_at_the_edges_still_parse() -> None:
    deepest = "[" * MAX_VALUE_DEPTH + "1" + "]" * MAX_VALUE_DEPTH
    value: object = parse_value(deepest)
    for _ in range(MAX_VALUE_DEPTH):
        assert isinstance(value, list) and len(value) == 1
        value = value[0]
    assert value == 1
    assert parse_value("[&a 1, *a]") == [1, 1] and parse_value("'[[['") == "[[["
    assert math.isinf(parse_value(".inf")) and parse_value("1e308") == 1e308


def test_a_grid_of_too_many_points_is_refused_before_it_is_expanded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mao_lab.sweep import MAX_GRID_POINTS, expand_grid
    from mao_lab.sweep import main as sweep_main

    with pytest.raises(ValueError, match=f"the grid has {10**20} points .* more than {MAX_GRID_POINTS}"):
        expand_grid({f"p{k}": list(range(10)) for k in range(20)})  # 10^20 points: itertools would never finish
    assert len(expand_grid({"p0": list(range(10)), "p1": list(range(10))})) == 100
    notebook = tiny_notebook(tmp_path)
    options = [item for k in range(6) for item in ("-g", f"p{k}=0,1,2,3,4,5,6,7,8,9")]
    line = one_line_exit_2(
        capsys,
        lambda: sweep_main([str(notebook), *options, "--out", str(tmp_path / "out")]),
        "mao_lab.sweep",
    )
    assert f"the grid has {10**6} points" in line
    assert tree(tmp_path) == ["tiny.ipynb"]


# -- wrong: command lines -----------------------------------------------------------------------------------


def test_an_empty_notebook_name_runs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mao_lab.sweep import main as sweep_main

    out = tmp_path / "out"
    line = one_line_exit_2(capsys, lambda: runner_main(["", "--out", str(out)]), "mao_lab.runner")
    assert "empty notebook name" in line
    for name in ("", " "):
        line = one_line_exit_2(
            capsys,
            lambda name=name: sweep_main([name, "-g", "x=1", "--out", str(out)]),
            "mao_lab.sweep",
        )
        assert "empty notebook name" in line
    line = one_line_exit_2(capsys, lambda: runner_main(["00_quickstart", "--out", ""]), "mao_lab.runner")
    assert "empty folder name" in line
    assert tree(tmp_path) == []


def test_a_sweep_of_a_prefix_shared_by_several_notebooks_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from mao_lab.runner import find_notebooks
    from mao_lab.sweep import main as sweep_main

    shared = [p.stem for p in find_notebooks(["0"])]
    assert len(shared) >= 2
    line = one_line_exit_2(
        capsys,
        lambda: sweep_main(["0", "-g", "seed=0", "--out", str(tmp_path / "out")]),
        "mao_lab.sweep",
    )
    assert f"names {len(shared)} notebooks" in line and shared[0] in line
    assert tree(tmp_path) == []


def fake_point(folder: Path, notebook: str, point: dict, status: str = "ok") -> None:
    """A finished sweep point as the runner leaves it (provenance, summary), without running a kernel."""
    folder.mkdir(parents=True)
    provenance = {
        "notebook": notebook,
        "parameters": {**point, "smoke": False},
        "status": status,
        "sweep": {"run_id": folder.name, "point": point, "outputs": str(folder)},
        "wall_s": 1.0,
    }
    (folder / "provenance.json").write_text(json.dumps(provenance))
    (folder / "summary.json").write_text(json.dumps({"score": 1.0}))


def test_a_sweep_into_a_folder_of_another_notebooks_points_is_refused(
    tmp_path: Path,
) -> None:
    from mao_lab.sweep import run_sweep

    study = tmp_path / "study" / "tuning"
    fake_point(study / "point=a", "point.ipynb", {"point": "a"})
    before = snapshot(tmp_path / "study")
    notebook = tiny_notebook(tmp_path)
    with pytest.raises(
        ValueError,
        match=r"holds points of another notebook .*ran point\.ipynb, this sweep runs tiny\.ipynb",
    ):
        run_sweep(notebook, {"x": [1.0]}, study, progress=False, html=False)
    assert snapshot(tmp_path / "study") == before and tree(study) == [
        "point=a",
        "point=a/provenance.json",
        "point=a/summary.json",
    ]


def test_a_refused_sweep_rerun_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mao_lab.sweep import main as sweep_main

    notebook = tiny_notebook(tmp_path)
    out = tmp_path / "out"
    fake_point(out / "x=1.0", "tiny.ipynb", {"x": 1.0})
    (out / "x=1.0" / "provenance.json").write_text(
        json.dumps(
            {
                "notebook": "tiny.ipynb",
                "parameters": {"x": 1.0, "mode": "other", "smoke": False},
                "status": "ok",
                "sweep": {
                    "run_id": "x=1.0",
                    "point": {"x": 1.0},
                    "outputs": str(out / "x=1.0"),
                },
                "wall_s": 1.0,
            }
        )
    )
    before = snapshot(out)
    line = one_line_exit_2(
        capsys,
        lambda: sweep_main([str(notebook), "-g", "x=1.0", "-p", "mode=ok", "--out", str(out)]),
        "mao_lab.sweep",
    )
    assert "holds a finished run with other parameters (mode differ)" in line
    assert {k: v for k, v in snapshot(out).items() if not k.startswith("sweep.")} == before


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--scheduler", "nonsense"], "is not a Dask scheduler address"),
        (["--scheduler", "foo://host:1"], "unknown scheme 'foo'"),
        (["--scheduler", ""], "--scheduler is empty"),
        (
            ["--scheduler", "tls://127.0.0.1:1", "--tls", "ca", "cert", "key"],
            "--tls: no file ca, cert, key",
        ),
        (["--out", "FILE"], "is a file, not a folder"),
    ],
    ids=["no-port", "unknown-scheme", "empty", "missing-tls-files", "out-is-a-file"],
)
def test_bad_sweep_options_are_one_line_before_anything_starts(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    message: str,
) -> None:
    from mao_lab.sweep import main as sweep_main

    notebook = tiny_notebook(tmp_path)
    (tmp_path / "FILE").write_text("mine")
    arguments = [str(tmp_path / "FILE") if a == "FILE" else a for a in arguments]
    if "--out" not in arguments:
        arguments += ["--out", str(tmp_path / "out")]
    line = one_line_exit_2(
        capsys,
        lambda: sweep_main([str(notebook), "-g", "x=1", *arguments]),
        "mao_lab.sweep",
    )
    assert message in line
    assert tree(tmp_path) == ["FILE", "tiny.ipynb"] and (tmp_path / "FILE").read_text() == "mine"


# -- the study's command line ---------------------------------------------------------------------------------


def _damage(study: Path, how: str) -> list[str]:
    study.mkdir()
    if how == "truncated-design":
        (study / "design.json").write_text('{"smoke": tr')
        return ["--smoke", "--out", str(study)]
    if how == "design-is-a-list":
        (study / "design.json").write_text("[1, 2]")
        return ["--smoke", "--out", str(study)]
    if how == "binary-design":
        (study / "design.json").write_bytes(b"\xff\xfe\x00garbage")
        return ["--smoke", "--out", str(study)]
    if how == "ledger-only-garbage-provenance":
        (study / "provenance.json").write_text("garbage")
        return ["--ledger-only", str(study), "--out", str(study.parent / "docs")]
    if how == "ledger-only-no-provenance":
        (study / "scores.parquet").write_bytes(b"PAR1")
        return ["--ledger-only", str(study), "--out", str(study.parent / "docs")]
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how, message",
    [
        ("truncated-design", "design.json is damaged (JSONDecodeError"),
        ("design-is-a-list", "design.json is damaged (a JSON list, not an object)"),
        ("binary-design", "design.json is damaged (UnicodeDecodeError"),
        (
            "ledger-only-garbage-provenance",
            "",
        ),  # what --ledger-only says is its own (mao_lab.study._ledger)
        ("ledger-only-no-provenance", ""),
    ],
)
def test_the_study_on_a_damaged_folder_is_one_line_and_touches_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str, message: str
) -> None:
    from mao_lab.study.__main__ import main as study_main

    arguments = _damage(tmp_path / "study", how)
    before, paths = snapshot(tmp_path), tree(tmp_path)
    line = one_line_exit_2(
        capsys,
        lambda: study_main(arguments),
        "mao_lab.study",
        prefixed=not how.startswith("ledger"),
    )
    assert message in line
    assert snapshot(tmp_path) == before and tree(tmp_path) == paths


@pytest.mark.parametrize(
    "arguments, message",
    [
        (
            ["--ledger-only", "MISSING", "--out", "DOCS"],
            "--ledger-only MISSING: no such folder",
        ),
        (
            ["--smoke", "--scheduler", "nonsense", "--out", "OUT"],
            "'nonsense' is not a Dask scheduler address",
        ),
        (
            [
                "--smoke",
                "--scheduler",
                "tcp://127.0.0.1:8786",
                "--workers",
                "2",
                "--out",
                "OUT",
            ],
            "not both",
        ),
        (["--smoke", "--out", "FILE"], "is a file, not a folder"),
        (["--smoke", "--out", ""], "empty folder name"),
        (["--ledger-only", "FILE", "--out", "DOCS"], "is a file, not a folder"),
    ],
    ids=[
        "ledger-only-missing",
        "bad-scheduler",
        "workers-and-scheduler",
        "out-is-a-file",
        "out-empty",
        "ledger-only-file",
    ],
)
def test_bad_study_command_lines_are_one_line_and_create_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    message: str,
) -> None:
    from mao_lab.study.__main__ import main as study_main

    (tmp_path / "FILE").write_text("mine")
    names = {
        "MISSING": tmp_path / "missing",
        "DOCS": tmp_path / "docs",
        "OUT": tmp_path / "out",
        "FILE": tmp_path / "FILE",
    }
    arguments = [str(names.get(a, a)) if a in names else a for a in arguments]
    line = one_line_exit_2(capsys, lambda: study_main(arguments), "mao_lab.study")
    assert message.replace("MISSING", str(names["MISSING"])) in line
    assert tree(tmp_path) == ["FILE"] and (tmp_path / "FILE").read_text() == "mine"


def test_bench_output_that_is_a_folder_is_refused_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mao_lab.bench.__main__ import main as bench_main

    line = one_line_exit_2(
        capsys,
        lambda: bench_main(["mgda", "--quick", "--output", str(tmp_path)]),
        "mao_lab.bench",
    )
    assert "is a folder, not a file" in line
    line = one_line_exit_2(capsys, lambda: bench_main(["step", "--threads", "0"]), "mao_lab.bench")
    assert "must be a positive integer" in line
    assert tree(tmp_path) == []


# -- wrong: load_run, the recorder and the monitor -----------------------------------------------------------


@pytest.mark.parametrize(
    "file, content, message",
    [
        (
            "params.json",
            b"[1, 2]",
            "params.json holds a JSON array, not an object of parameters",
        ),
        ("params.json", b"null", "params.json holds a JSON null"),
        ("params.json", b'"lr"', "params.json holds a JSON string"),
        ("params.json", b"{", "params.json cannot be read as JSON (JSONDecodeError"),
        (
            "params.json",
            b"\xff\xfe{}",
            "params.json cannot be read as JSON (UnicodeDecodeError",
        ),
        (
            "metrics.parquet",
            b"PAR1 truncated",
            "metrics.parquet is not a readable metrics table",
        ),
        ("metrics.parquet", b"", "metrics.parquet is not a readable metrics table"),
        (
            "metrics.parquet",
            "other-columns",
            "metrics.parquet is not a recorder's metrics table: it lacks the column(s)",
        ),
        (
            "metrics.parquet",
            "text-values",
            "metrics.parquet holds a step or value that is not a number",
        ),
    ],
    ids=[
        "params-list",
        "params-null",
        "params-string",
        "params-truncated",
        "params-binary",
        "metrics-truncated",
        "metrics-empty",
        "metrics-other-table",
        "metrics-text-values",
    ],
)
def test_load_run_names_the_damaged_file_and_changes_nothing(
    tmp_path: Path, file: str, content: object, message: str
) -> None:
    run = tmp_path / "run"
    save_run(run, empty_frame(), {"lr": 0.1})
    if content == "other-columns":
        pd.DataFrame({"x": [1.0]}).to_parquet(run / file)
    elif content == "text-values":
        frame = pd.DataFrame({c: ["a"] for c in empty_frame().columns})
        frame.to_parquet(run / file)
    else:
        (run / file).write_bytes(content)  # type: ignore[arg-type]
    before = snapshot(run)
    with pytest.raises(RunFileError) as error:
        load_run(run)
    assert message in str(error.value) and str(run / file) in str(error.value)
    assert snapshot(run) == before


class Net(SharedNet):
    """The shared net on a trunk 3-4 with ReLU and two heads, float32, seeding the global RNG."""

    def __init__(self) -> None:
        super().__init__(2, dtype=torch.float32, widths=(3, 4), activation=nn.ReLU, seed_globally=True)

    def losses(self, x: torch.Tensor, bad: bool = False) -> dict[str, torch.Tensor]:  # type: ignore[override]
        z = self.trunk(x)
        losses = {f"t{k}": (head(z) - k).pow(2).mean() for k, head in enumerate(self.heads)}
        if bad:
            losses["t0"] = losses["t0"] * float("nan")
        return losses


@pytest.mark.parametrize("every", [1, 2, 3])
@pytest.mark.parametrize("kind", ["MAO-optimizer", "mao-method"])
def test_a_refused_step_takes_no_step_index(every: int, kind: str) -> None:
    net = Net()
    method = MAO(net.parameters(), lr=1e-2) if kind == "MAO-optimizer" else make("mao", net.parameters(), lr=1e-2)
    recorder = Recorder(net, method, every=every)
    x = torch.linspace(-1, 1, 24).reshape(8, 3)
    refused = {2, 5}
    done = 0
    for attempt in range(9):
        bad = attempt in refused
        step = method.step if kind == "MAO-optimizer" else (lambda losses: method.step(lambda: losses))
        if bad:
            with pytest.raises(ValueError, match="the loss is nan"):
                step(net.losses(x, bad=True))
        else:
            step(net.losses(x))
            done += 1
    assert recorder.steps == [k for k in range(done) if k % every == 0]  # successful steps, numbered from 0


def test_a_monitor_given_another_model_is_refused() -> None:
    net, other = Net(), Net()
    for method in (
        MAO(net.parameters(), lr=1e-2),
        make("mao", net.parameters(), lr=1e-2),
    ):
        with pytest.raises(ValueError, match="names none of the 6 parameters"):
            BalanceMonitor(other, method)


def test_a_monitor_keeps_parameters_the_model_does_not_name_apart() -> None:
    """A partial name mapping: the unnamed shared parameters are their own layers, never "(model)"."""
    net = Net()
    optimizer = MAO(net.parameters(), lr=1e-2)
    monitor = BalanceMonitor({"trunk.weight": net.trunk[0].weight}, optimizer, every=1, budget=1.0)
    x = torch.linspace(-1, 1, 24).reshape(8, 3)
    for _ in range(2):
        optimizer.step(net.losses(x))
    layers = set(monitor.ownership()["layer"])
    monitor.close()
    assert "trunk" in layers and "(model)" not in layers and any(layer.startswith("(unnamed ") for layer in layers)


# -- wrong: data a user brings --------------------------------------------------------------------------------


def _arrays() -> dict[str, np.ndarray]:
    with np.load(SHIPPED) as stored:
        return {k: stored[k] for k in stored.files}


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda a: a.update(test_left_label=a["test_left_label"] + 10),
            "a digit label lies outside 0..9",
        ),
        (
            lambda a: a.update(test_right_label=a["test_right_label"] - 10),
            "a digit label lies outside 0..9",
        ),
        (
            lambda a: a.update(test_images=np.where(np.arange(28) == 3, np.nan, a["test_images"].astype(np.float32))),
            "NaN, infinite or outside 0..255",
        ),
        (
            lambda a: a.update(test_images=a["test_images"].astype(np.float32) * 300),
            "NaN, infinite or outside 0..255",
        ),
        (lambda a: a.update(test_images=a["test_images"][:, :20]), "not (N, 28, 28)"),
        (
            lambda a: a.update(test_left_label=a["test_left_label"][:-1]),
            "label or index array of shape",
        ),
        (
            lambda a: a.update(test_left_label=a["test_left_label"].astype(np.float64) + 0.5),
            "not integers",
        ),
        (
            lambda a: a.update(test_left_index=a["test_left_index"] + 10**6),
            "a source-digit index lies outside",
        ),
    ],
    ids=[
        "label-10-plus",
        "negative-label",
        "nan-pixel",
        "pixel-above-255",
        "wrong-shape",
        "short-labels",
        "fractional-labels",
        "index-out-of-range",
    ],
)
def test_a_users_multimnist_file_with_impossible_contents_is_refused(
    tmp_path: Path, damage: Callable[[dict[str, np.ndarray]], None], message: str
) -> None:
    from mao_lab.problems import _multimnist

    arrays = _arrays()
    damage(arrays)
    file = tmp_path / "mine.npz"
    np.savez(file, **arrays)
    before = snapshot(tmp_path)
    with pytest.raises(_multimnist.DataIntegrityError, match="mine.npz is not a valid MultiMNIST file") as error:
        _multimnist.load_multimnist(file, split="test", tasks=("left", "right", "reconstruct"))
    assert message in str(error.value) and "build_multimnist.py" in str(error.value)
    assert snapshot(tmp_path) == before


def test_the_integrity_message_shows_the_checksum_that_differs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file at the shipped path with a sidecar that matches it, but not the shipped checksum."""
    from mao_lab.problems import _multimnist

    file = tmp_path / "multimnist.npz"
    arrays = _arrays()
    np.savez(file, **arrays)
    actual = hashlib.sha256(file.read_bytes()).hexdigest()
    (tmp_path / "multimnist.npz.sha256").write_text(f"{actual}  multimnist.npz\n")
    monkeypatch.setattr(_multimnist, "DEFAULT_MULTIMNIST_PATH", file)
    with pytest.raises(_multimnist.DataIntegrityError) as error:
        _multimnist.load_multimnist(None, split="test", limit=2)
    text = str(error.value)
    assert f"sha256 {actual}" in text and f"expected {_multimnist.MULTIMNIST_SHA256}" in text
    assert actual != _multimnist.MULTIMNIST_SHA256 and "MULTIMNIST_SHA256" in text


# -- checkers never raise ---------------------------------------------------------------------------------


def _answer_update(
    transform: Callable[[torch.Tensor], torch.Tensor],
) -> Callable[..., tuple[torch.Tensor, ...]]:
    from mao_lab.exercises._mao_update import reference_mao_update

    def mao_update(
        grads: torch.Tensor,
        exp_avg: torch.Tensor,
        exp_avg_sq: torch.Tensor,
        step: int,
        **options: object,
    ) -> tuple[torch.Tensor, ...]:
        update, m, v = reference_mao_update(grads, exp_avg, exp_avg_sq, step, **options)
        return transform(update), m, v

    return mao_update


@pytest.mark.parametrize(
    "transform, message",
    [
        (lambda u: u.to(torch.complex128) + 1e-3j, "complex"),
        (lambda u: u.to(torch.complex128), "complex"),
        (lambda u: u.to("meta"), "on the meta device"),
        (lambda u: u.to_sparse(), "sparse_coo tensor"),
    ],
    ids=["imaginary-part", "complex-dtype-zero-imaginary", "meta", "sparse"],
)
def test_the_workshop_checker_refuses_updates_that_are_not_real_dense_cpu_tensors(
    transform: Callable[[torch.Tensor], torch.Tensor], message: str
) -> None:
    from mao_lab.exercises._mao_update import check_mao_update

    feedback = check_mao_update(_answer_update(transform))
    assert feedback.status == "incorrect" and message in feedback.message


def test_the_workshop_checker_survives_exit_and_nested_tensors() -> None:
    from mao_lab.exercises._mao_update import check_mao_update

    def calls_exit(*args: object, **kwargs: object) -> None:
        sys.exit(3)

    feedback = check_mao_update(calls_exit)
    assert feedback.status == "incorrect" and "SystemExit" in feedback.message
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that nested tensors are a prototype
        feedback = check_mao_update(_answer_update(lambda u: torch.nested.nested_tensor([u])))
    assert feedback.status == "incorrect" and "a nested tensor" in feedback.message


def test_checkers_never_raise_on_hostile_answers() -> None:
    from mao_lab.exercises import _judges as judges

    assert judges.imbalance_by_hand(10**400).status == "incorrect"
    assert judges.imbalance_by_hand(-(10**400)).status == "incorrect"
    assert judges.imbalance_by_hand(torch.tensor(0.5, device="meta")).mistake == "not_a_number"
    assert judges.imbalance_by_hand(0.2 + 1j).mistake == "not_a_number"
    assert judges.imbalance_by_hand(np.float64(0.2)).status == "incorrect"
    gaps = pd.DataFrame({"method": ["mao", "adam"], "max_gap": [1.0, 2.0]})
    long = judges.steadiest_method(10**400, gaps)
    assert long.mistake == "not_a_choice" and len(long.message) < 200
    ownership = pd.DataFrame(
        {
            "run": ["sum"] * 2,
            "layer": ["trunk.0"] * 2,
            "task": ["task0", "task1"],
            "share": [0.7, 0.3],
        }
    )
    assert judges.layer_owner(np.int64(0), ownership).correct  # numpy's int names task0 like 0 does
    assert not judges.layer_owner(np.int64(1), ownership).correct


@pytest.mark.parametrize(
    "pair",
    [(np.True_, np.False_), (torch.tensor(True), torch.tensor(False))],
    ids=["numpy", "torch"],
)
def test_the_rescaling_checker_takes_numpy_and_torch_booleans(pair: tuple) -> None:  # type: ignore[type-arg]
    from mao_lab.exercises import _judges as judges

    assert judges.rescaling_changes(pair).text() == judges.rescaling_changes((True, False)).text()


def test_checkers_on_all_nan_tables_say_so_instead_of_raising() -> None:
    from mao_lab.exercises import _judges as judges

    nan = float("nan")
    curves = pd.DataFrame(
        {
            "method": ["Adam on the sum"] * 2,
            "step": [1, 1],
            "task": ["task0", "task1"],
            "normalised_test_loss": [nan, nan],
        }
    )
    ownership = pd.DataFrame(
        {
            "run": ["sum"] * 2,
            "layer": ["trunk.0"] * 2,
            "task": ["task0", "task1"],
            "share": [nan, nan],
            "imbalance": [nan, nan],
        }
    )
    balance = pd.DataFrame({"run": ["a", "b"], "layer": ["(all shared)"] * 2, "imbalance": [nan, math.inf]})
    gaps = pd.DataFrame({"method": ["mao", "adam"], "max_gap": [nan, nan]})
    verdicts = [
        judges.worst_final_task("task0", curves),
        judges.layer_owner("task0", ownership),
        judges.least_served_task("task0", ownership),
        judges.most_balanced_layer("trunk.0", ownership.assign(run="gradnorm")),
        judges.owner_share_direction("smaller", ownership, ownership),
        judges.steadiest_method("mao", gaps),
        judges.most_imbalanced("a", balance),
    ]
    assert all(v.status == "incomplete" and v.mistake == "no_finite_values" for v in verdicts), verdicts


def test_the_shared_helpers_of_the_suite_can_fail() -> None:
    """``tree`` and ``snapshot`` see a change (else every comparison above would pass vacuously)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder)
        (path / "a").write_text("1")
        before, paths = snapshot(path), tree(path)
        (path / "a").write_text("2")
        (path / "b").mkdir()
        assert snapshot(path) != before and tree(path) != paths


# -- new hostile inputs of the same classes ------------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--outputs", ""], "outputs is empty"),
        (
            ["--outputs", "nosuchproto://bucket/x"],
            "fsspec knows no protocol 'nosuchproto'",
        ),
        (
            ["--workers", "100000"],
            "--workers 100000 is more than 4 worker processes per CPU core",
        ),
    ],
    ids=["empty-outputs", "unknown-outputs-protocol", "huge-workers"],
)
def test_more_bad_sweep_options_are_one_line_and_create_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    message: str,
) -> None:
    from mao_lab.sweep import main as sweep_main

    notebook = tiny_notebook(tmp_path)
    line = one_line_exit_2(
        capsys,
        lambda: sweep_main([str(notebook), "-g", "x=1", *arguments, "--out", str(tmp_path / "out")]),
        "mao_lab.sweep",
    )
    assert message in line
    assert tree(tmp_path) == ["tiny.ipynb"]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--outputs", " "], "--outputs is empty"),
        (["--workers", "100000"], "more than 4 worker processes per CPU core"),
    ],
    ids=["empty-outputs", "huge-workers"],
)
def test_more_bad_study_options_are_one_line_and_create_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    message: str,
) -> None:
    from mao_lab.study.__main__ import main as study_main

    line = one_line_exit_2(
        capsys,
        lambda: study_main(["--smoke", *arguments, "--out", str(tmp_path / "out")]),
        "mao_lab.study",
    )
    assert message in line
    assert tree(tmp_path) == []
