"""Fault injection for runs: the recorder, the runner, the sweep, the data and the network (issue 10, classes 4-8).

Every case compares the files it must not touch byte for byte (a SHA-256 of every file of the folder)
before and after the fault.  Where the fault is a process dying, a real process is killed: a kernel
(``os.kill(os.getpid(), SIGKILL)`` from a tiny notebook, what the out-of-memory killer does), a Dask
worker, a runner or a training script.  A full disk is an ``OSError(ENOSPC)`` raised by the writer.
The tiny notebooks are written into ``tmp_path``: each case costs a kernel start, not a training run.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from functools import partial
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
from nbformat.v4 import new_code_cell, new_notebook
from torch import nn

from mao_lab.methods import make
from mao_lab.recorder import Recorder, _storage, load_run
from mao_lab.recorder._recorder import RecorderWriteWarning
from mao_lab.runner import main as runner_main
from mao_lab.runner import parse_value
from mao_lab.sweep import expand_grid, local_cluster, run_sweep

from _helpers import Net, write_notebook

pytestmark = pytest.mark.notebook
REPOSITORY = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


# -- helpers ----------------------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` by relative path (lock files excepted: they exist by design)."""
    if not folder.exists():
        return {}
    if folder.is_file():
        return {".": hashlib.sha256(folder.read_bytes()).hexdigest()}
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


TINY_BODY = """\
import json, os, pathlib, time
import pandas as pd
out = pathlib.Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
if faults and pathlib.Path(faults).exists():           # the test changes a point's fault between runs
    mode = json.loads(pathlib.Path(faults).read_text()).get(str(x), mode)
if log:
    with open(log, "a") as stream:
        stream.write(f"{x}\\n")
time.sleep(sleep)
while hold and not pathlib.Path(hold).exists():       # the test says when this run may finish
    time.sleep(0.05)
if mode == "die":
    os.kill(os.getpid(), 9)                             # what the out-of-memory killer does
if mode == "kill_worker":
    os.kill(os.getppid(), 9)                            # the process that runs the point
    os.kill(os.getpid(), 9)
if mode == "raise":
    raise ValueError(f"bad x = {x}")
pd.DataFrame({"x": [x, 2 * x]}).to_parquet(out / "table.parquet")
summary = {"x": x, "seed": seed}
if mode == "sockets":
    import psutil
    summary["listening"] = sorted(
        {c.laddr.ip for c in psutil.Process().net_connections("inet") if c.status == "LISTEN"}
    )
text = json.dumps(summary)
if mode == "truncated":
    text = text[:5]
if mode == "notobject":
    text = "[1, 2]"
if mode != "nosummary":
    (out / "summary.json").write_text(text)
"""


# A notebook with the lab's contract (``smoke``, ``output_dir``); ``mode`` picks its fault, and ``hold`` (a path) keeps
# it running until that file exists: a second runner then surely finds the first one at work.
TINY_PARAMETERS = "\n".join(
    [
        "smoke = False",
        "output_dir = 'out'",
        "x = 1.0",
        "mode = 'ok'",
        "seed = 0",
        "sleep = 0.0",
        "faults = ''",
        "log = ''",
        "hold = ''",
    ]
)
tiny_notebook = partial(write_notebook, parameters=TINY_PARAMETERS, body=TINY_BODY)


def run_cli(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPOSITORY)}
    return subprocess.run([PYTHON, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# -- class 4: the recorder never hides an applied step ------------------------------------------------


def tiny_net(tasks: int) -> Net:
    """The shared net on a trunk 3-4 with ReLU, one head per task, float32, seeding the global RNG."""
    return Net(tasks, dtype=torch.float32, widths=(3, 4), activation=nn.ReLU, seed_globally=True)


def train(method, net: Net, steps: int) -> None:  # noqa: ANN001
    """``steps`` steps towards the targets 0, 1, ... (head ``k`` predicts ``k``)."""
    x = torch.linspace(-1, 1, 24).reshape(8, 3)
    for _ in range(steps):
        method.step(lambda: [(prediction - k).pow(2).mean() for k, prediction in enumerate(net(x))])


def state_bytes(net: nn.Module) -> bytes:
    return b"".join(p.detach().numpy().tobytes() for p in net.parameters())


def old_run(folder: Path, tasks: int = 3) -> dict[str, str]:
    """A finished earlier run (3 tasks, params {'run': 'old'}) in ``folder``; returns its snapshot."""
    net = tiny_net(tasks)
    method = make("mao", net.parameters(), lr=1e-2)
    with Recorder(net, method, run_dir=folder, params={"run": "old"}):
        train(method, net, 3)
    return snapshot(folder)


@pytest.mark.parametrize(
    "make_bad, error",
    [
        (lambda tmp: tmp / "a-file", NotADirectoryError),
        (lambda tmp: tmp / "a-file" / "below", OSError),
        (lambda tmp: str(tmp / "nul\x00byte"), ValueError),
        (lambda tmp: 3, TypeError),
    ],
    ids=["run_dir-is-a-file", "run_dir-below-a-file", "run_dir-with-NUL", "run_dir-not-a-path"],
)
def test_an_unusable_run_dir_is_refused_when_the_recorder_is_made(tmp_path: Path, make_bad, error) -> None:  # noqa: ANN001
    (tmp_path / "a-file").write_bytes(b"precious")
    before = snapshot(tmp_path)
    net = tiny_net(2)
    method = make("mao", net.parameters(), lr=1e-2)
    with pytest.raises(error, match="run_dir"):
        Recorder(net, method, run_dir=make_bad(tmp_path), params={"a": 1})
    assert snapshot(tmp_path) == before
    assert not getattr(method, "_observers", {}), "a refused recorder must not stay attached"


def test_a_run_dir_that_cannot_be_written_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # what a read-only folder does (the tests may run as root)
    net = tiny_net(2)
    with pytest.raises(PermissionError, match="run_dir .* cannot be used as a writable folder"):
        Recorder(net, make("mao", net.parameters(), lr=1e-2), run_dir=tmp_path / "run")


@pytest.mark.parametrize(
    "code", [errno.ENOSPC, errno.EACCES, errno.EIO, errno.EROFS], ids=["ENOSPC", "EACCES", "EIO", "EROFS"]
)
def test_a_failed_write_during_a_step_never_fails_the_applied_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    run = tmp_path / "run"
    reference, recorded = tiny_net(2), tiny_net(2)
    ref_method = make("mao", reference.parameters(), lr=1e-2)
    Recorder(reference, ref_method)  # the same steps, recorded in memory: a recorder whose writes cannot fail
    method = make("mao", recorded.parameters(), lr=1e-2)
    recorder = Recorder(recorded, method, run_dir=run, params={"run": "new"}, flush_every=1)
    train(method, recorded, 1)
    train(ref_method, reference, 1)
    before = snapshot(run)

    def full(path: object, write: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(_storage, "write_atomically", full)
    with pytest.warns(RecorderWriteWarning, match="the training step itself was applied"):
        train(method, recorded, 2)  # two steps, each flush fails: neither raises
    train(ref_method, reference, 2)
    assert state_bytes(recorded) == state_bytes(reference), (
        "the steps were applied exactly as with a recorder that writes nothing"
    )
    assert method.steps_taken == 3 and len(recorder) == 3
    assert [e.errno for e in recorder.errors] == [code, code]
    assert snapshot(run) == before, "a failed write leaves the folder as it was"
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(method, recorded, 1)  # the disk is back: the next flush writes the pending steps too
    frame, params = load_run(run)
    assert sorted(frame["step"].unique()) == [0, 1, 2, 3] and params == {"run": "new"}
    pd.testing.assert_frame_equal(frame, recorder.to_frame())


def test_a_run_dir_removed_mid_run_is_written_again_whole(tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    net = tiny_net(2)
    method = make("mao", net.parameters(), lr=1e-2)
    recorder = Recorder(net, method, run_dir=run, params={"run": "new"}, flush_every=2)
    train(method, net, 4)
    shutil.rmtree(run)  # someone cleans the runs folder while training goes on
    with pytest.warns(RecorderWriteWarning, match="disappeared"):
        train(method, net, 2)
    frame, params = load_run(run)
    assert params == {"run": "new"} and sorted(frame["step"].unique()) == [0, 1, 2, 3, 4, 5]
    pd.testing.assert_frame_equal(frame, recorder.to_frame())


def test_save_on_a_full_disk_raises_and_leaves_the_folder_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    net = tiny_net(2)
    method = make("mao", net.parameters(), lr=1e-2)
    recorder = Recorder(net, method, run_dir=run, params={"run": "new"}, flush_every=2)
    train(method, net, 3)
    before = snapshot(run)
    monkeypatch.setattr(
        "mao_lab._files.os.fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
    )
    with pytest.raises(OSError, match="No space left"):
        recorder.save()  # called by the user, after training: an ordinary error
    monkeypatch.undo()
    assert snapshot(run) == before and not [p for p in run.iterdir() if p.name.startswith(".")]
    recorder.save()
    assert sorted(load_run(run)[0]["step"].unique()) == [0, 1, 2]


def test_overwrite_keeps_the_earlier_run_whole_until_the_first_write(tmp_path: Path) -> None:
    run = tmp_path / "run"
    before = old_run(run)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        Recorder(tiny_net(2), make("mao", tiny_net(2).parameters(), lr=1e-2), run_dir=run, params={"run": "new"})
    assert snapshot(run) == before
    net = tiny_net(2)
    method = make("mao", net.parameters(), lr=1e-2)
    recorder = Recorder(net, method, run_dir=run, params={"run": "new"}, flush_every=5, overwrite=True)
    train(method, net, 2)  # no flush yet: a crash now leaves the earlier run exactly as it was
    assert snapshot(run) == before
    train(method, net, 3)  # the first flush: the earlier run's files go, then the new params arrive
    frame, params = load_run(run)
    assert params == {"run": "new"} and set(frame["task"].dropna()) == {"task0", "task1"} and len(recorder.errors) == 0


class Crash(BaseException):
    """A simulated process death at one file-system operation (not an Exception: nothing may catch it)."""


@pytest.mark.parametrize("how", ["overwrite-with-flushes", "save-into-another-runs-folder"])
def test_a_crash_at_any_write_of_an_overwrite_never_pairs_new_params_with_old_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Crash before each file-system change of an overwriting run, in turn; check the folder after each."""
    import mao_lab._files as files

    template = tmp_path / "template"
    old_run(template)
    old_tasks = {"task0", "task1", "task2"}
    crash_points = 0
    for k in range(100):
        run = tmp_path / f"run{k}"
        subprocess.run(["cp", "-r", str(template), str(run)], check=True)
        calls = {"n": 0}
        real_replace, real_unlink = os.replace, Path.unlink

        def counted(real, calls=calls, crash_at=k + 1):  # noqa: ANN001, ANN202 - bound to this iteration's run
            def operation(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
                calls["n"] += 1
                if calls["n"] == crash_at:
                    raise Crash
                return real(*args, **kwargs)

            return operation

        monkeypatch.setattr(files.os, "replace", counted(real_replace))
        monkeypatch.setattr(Path, "unlink", counted(real_unlink))
        finished = False
        try:
            net = tiny_net(2)
            method = make("mao", net.parameters(), lr=1e-2)
            if how == "overwrite-with-flushes":
                recorder = Recorder(net, method, run_dir=run, params={"run": "new"}, flush_every=2, overwrite=True)
                train(method, net, 4)
                recorder.save()
            else:
                recorder = Recorder(net, method)
                train(method, net, 4)
                recorder.save(run, {"run": "new"})
            finished = True
        except Crash:
            crash_points += 1
        finally:
            monkeypatch.undo()
        params = json.loads((run / "params.json").read_text()) if (run / "params.json").exists() else None
        tables = _storage.full_tables(run) + _storage.part_paths(run)
        if tables:
            frame, _ = load_run(run)
            tasks = set(frame["task"].dropna())
            expected = {"run": "old"} if tasks == old_tasks else {"run": "new"}
            assert params == expected, f"crash at operation {k + 1}: params {params} beside metrics of tasks {tasks}"
        if finished:
            assert params == {"run": "new"} and set(load_run(run)[0]["step"].unique()) == {0, 1, 2, 3}
            break
    assert crash_points >= (5 if how == "overwrite-with-flushes" else 3), (
        "every file-system operation was a crash point"
    )


def test_a_training_process_killed_during_an_overwrite_leaves_a_consistent_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    old_run(run)
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys, torch
        from torch import nn
        sys.path.insert(0, {str(REPOSITORY)!r})
        from mao_lab.methods import make
        from mao_lab.recorder import Recorder
        torch.manual_seed(0)
        net = nn.ModuleDict({{"trunk": nn.Linear(3, 4), "a": nn.Linear(4, 1), "b": nn.Linear(4, 1)}})
        method = make("mao", net.parameters(), lr=1e-2)
        recorder = Recorder(net, method, run_dir={str(run)!r}, params={{"run": "new"}}, flush_every=1, overwrite=True)
        x = torch.randn(8, 3)
        step = 0
        while True:
            method.step(lambda: [net["a"](net["trunk"](x)).pow(2).mean(), net["b"](net["trunk"](x)).abs().mean()])
            step += 1
            if step == 3:
                print("flushing", flush=True)
    """)
    )
    process = subprocess.Popen(
        [PYTHON, str(script)], stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "flushing"
    time.sleep(0.3)  # somewhere in the middle of the flushes
    process.send_signal(signal.SIGKILL)
    process.wait()
    frame, params = load_run(run)
    assert params == {"run": "new"} and set(frame["task"].dropna()) == {"task0", "task1"} and frame["step"].min() == 0


# -- class 5: the runner ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1e-3", 1e-3),
        ("1E3", 1000.0),
        ("-2.5e-4", -2.5e-4),
        (".5", 0.5),
        ("3", 3),
        ("017", 17),
        ("0x1f", 31),
        ("true", True),
        ("no", "no"),
        ("on", "on"),
        ("1_000", "1_000"),
        ("12:30", "12:30"),
        ("null", None),
        ("[1, 1e2]", [1, 100.0]),
        ('"1e-3"', "1e-3"),
        ("inf", "inf"),
    ],
)
def test_values_parse_as_their_user_means_them(text: str, expected: object) -> None:
    value = parse_value(text)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["-p", "nope=1"], "has no parameter 'nope'"),
        (["-p", "x=[1,2"], "malformed value '[1,2'"),
        (["-p", "x={a: 1"], "malformed value"),
        (["-p", 'x="open'], "malformed value"),
        (["-p", "x=a: b: c"], "malformed value"),
        (["-p", "1x=3"], "expected NAME=VALUE"),
        (["-p", "=3"], "expected NAME=VALUE"),
        (["-p", "x"], "expected NAME=VALUE"),
        (["-p", "x=1", "-p", "x=2"], "given twice"),
        (["-p", "output_dir=/tmp/elsewhere"], "set by the runner"),
        (["-p", "smoke=true"], "set by the runner"),
        (["no_such_notebook"], "no notebook matches"),
    ],
    ids=[
        "unknown",
        "open-list",
        "open-map",
        "open-quote",
        "nested-colons",
        "digit-name",
        "no-name",
        "no-equals",
        "twice",
        "output_dir",
        "smoke",
        "unknown-notebook",
    ],
)
def test_bad_command_lines_get_one_line_and_exit_2_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    notebook = tiny_notebook(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        runner_main([str(notebook), *arguments, "--out", str(out)])
    error = capsys.readouterr().err
    last = error.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and last.startswith("python -m mao_lab.runner: error: ") and message in last
    assert "Traceback" not in error
    assert not out.exists()


@pytest.mark.parametrize("content", ['{"cells": [', "{}", ""], ids=["truncated-json", "no-cells", "empty-file"])
def test_a_damaged_notebook_file_is_one_line_of_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    path = tmp_path / "broken.ipynb"
    path.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        runner_main([str(path), "--out", str(tmp_path / "out")])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and "broken.ipynb is not a readable notebook" in last
    assert not (tmp_path / "out").exists()


def test_a_notebook_without_a_parameters_cell_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "plain.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell("print(1)")]), path)
    with pytest.raises(SystemExit):
        runner_main([str(path), "--out", str(tmp_path / "out")])
    assert "has no parameter 'smoke', 'output_dir'; its parameters: none" in capsys.readouterr().err


def test_a_number_reaches_the_notebook_as_a_number_and_provenance_is_recorded(tmp_path: Path) -> None:
    notebook = tiny_notebook(tmp_path)
    result = run_cli(
        "-m", "mao_lab.runner", str(notebook), "-p", "x=1e-3", "--out", str(tmp_path / "out"), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "out" / "tiny"
    assert json.loads((folder / "summary.json").read_text())["x"] == 0.001
    info = json.loads((folder / "provenance.json").read_text())
    assert info["parameters"] == {"smoke": False, "x": 0.001} and info["status"] == "ok"
    assert info["notebook_sha256"] == hashlib.sha256(notebook.read_bytes()).hexdigest()
    assert (info["commit"], info["uncommitted_changes"]) == (None, None) or len(info["commit"]) == 40
    assert info["threads"]["OMP_NUM_THREADS"] == "1" and info["wall_s"] > 0


def test_two_runs_into_the_same_out_never_lose_a_result_silently(tmp_path: Path) -> None:
    notebook = tiny_notebook(tmp_path)
    out, release = tmp_path / "out", tmp_path / "release"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPOSITORY)}
    command = [PYTHON, "-m", "mao_lab.runner", str(notebook), "--out", str(out)]
    first = subprocess.Popen(  # holds its run open until `release` exists: the second surely meets it at work
        [*command, "-p", "x=1.0", "-p", f"hold={release}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lock = out / ".tiny.lock"
        deadline = time.time() + 120
        while not (lock.exists() and lock.read_text()) and time.time() < deadline and first.poll() is None:
            time.sleep(0.2)
        second = run_cli("-m", "mao_lab.runner", str(notebook), "--out", str(out), "-p", "x=2.0", cwd=tmp_path)
    finally:
        release.touch()
        _, first_err = first.communicate(timeout=240)
    assert first.returncode == 0, first_err
    assert second.returncode == 1 and "is in use by another run (pid" in second.stderr
    assert json.loads((out / "tiny" / "summary.json").read_text())["x"] == 1.0  # the first run's result, whole


def test_a_runner_killed_mid_run_leaves_the_earlier_results_and_the_next_run_recovers(tmp_path: Path) -> None:
    notebook = tiny_notebook(tmp_path)
    out = tmp_path / "out"
    assert (
        run_cli("-m", "mao_lab.runner", str(notebook), "--out", str(out), "-p", "x=1.0", cwd=tmp_path).returncode == 0
    )
    before = snapshot(out / "tiny")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPOSITORY)}
    process = subprocess.Popen(
        [PYTHON, "-m", "mao_lab.runner", str(notebook), "--out", str(out), "-p", "x=2.0", "-p", "sleep=30"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while not list(out.glob(".tiny.partial-*")) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # the kernel is running the notebook
    os.killpg(process.pid, signal.SIGKILL)  # the runner and its kernel, as a machine losing power would
    process.wait()
    assert snapshot(out / "tiny") == before
    again = run_cli("-m", "mao_lab.runner", str(notebook), "--out", str(out), "-p", "x=3.0", cwd=tmp_path)
    assert again.returncode == 0 and json.loads((out / "tiny" / "summary.json").read_text())["x"] == 3.0
    assert not list(out.glob(".tiny.partial-*")), "the killed run's staging folder was cleaned up"


@pytest.mark.parametrize("mode, reason", [("die", "the kernel died"), ("raise", "ValueError: bad x")])
def test_a_failing_notebook_keeps_the_earlier_results_byte_for_byte(tmp_path: Path, mode: str, reason: str) -> None:
    notebook = tiny_notebook(tmp_path)
    out = tmp_path / "out"
    assert run_cli("-m", "mao_lab.runner", str(notebook), "--out", str(out), cwd=tmp_path).returncode == 0
    before = snapshot(out / "tiny")
    result = run_cli("-m", "mao_lab.runner", str(notebook), "--out", str(out), "-p", f"mode={mode}", cwd=tmp_path)
    after = snapshot(out / "tiny")
    assert result.returncode == 1 and reason in result.stderr
    assert {k: v for k, v in after.items() if k not in ("failure.json", "tiny.failed.ipynb")} == before
    assert reason in json.loads((out / "tiny" / "failure.json").read_text())["error"]


def test_out_that_is_a_file_is_a_clear_failure(tmp_path: Path) -> None:
    notebook = tiny_notebook(tmp_path)
    (tmp_path / "out").write_bytes(b"precious")
    result = run_cli("-m", "mao_lab.runner", str(notebook), "--out", str(tmp_path / "out"), cwd=tmp_path)
    lines = result.stderr.strip().splitlines()  # refused before any notebook starts: one line, exit 2
    assert result.returncode == 2 and len(lines) == 1 and lines[0].endswith("out is a file, not a folder")
    assert (tmp_path / "out").read_bytes() == b"precious"
    # a file in the way of one notebook's folder (not of --out itself) fails that notebook only, in one line
    (tmp_path / "out2").mkdir()
    (tmp_path / "out2" / "tiny").write_bytes(b"precious")
    result = run_cli("-m", "mao_lab.runner", str(notebook), "--out", str(tmp_path / "out2"), cwd=tmp_path)
    assert result.returncode == 1 and "FAILED  tiny.ipynb" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "out2" / "tiny").read_bytes() == b"precious"


# -- class 6: the sweep -------------------------------------------------------------------------------------


def faults_file(tmp_path: Path, faults: dict[str, str]) -> str:
    path = tmp_path / "faults.json"
    path.write_text(json.dumps(faults))
    return str(path)


def runs_of(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def test_dead_kernels_and_bad_summaries_fail_their_points_only_and_rerun_when_resumed(tmp_path: Path) -> None:
    notebook = tiny_notebook(tmp_path)
    out, log = tmp_path / "sweep", tmp_path / "log.txt"
    fixed = {
        "faults": faults_file(tmp_path, {"2.0": "die", "3.0": "nosummary", "4.0": "truncated", "5.0": "notobject"}),
        "log": str(log),
    }
    table = run_sweep(notebook, {"x": [1.0, 2.0, 3.0, 4.0, 5.0, 1.0]}, out, fixed=fixed, progress=False, html=False)
    assert list(table["status"]) == ["ok", "failed", "failed", "failed", "failed"]  # 1.0 listed twice is one point
    errors = dict(zip(table["x"], table["error"]))
    assert "the kernel died" in errors[2.0] and "wrote no summary.json" in errors[3.0]
    assert "not valid JSON (truncated?)" in errors[4.0] and "not a JSON object" in errors[5.0]
    assert sorted(runs_of(log)) == ["1.0", "2.0", "3.0", "4.0", "5.0"]
    ok_before = snapshot(out / "x=1.0")
    # Resumed with the faults still there: the failed points run again, stay failed, the finished one is untouched.
    again = run_sweep(notebook, {"x": [1.0, 2.0, 3.0, 4.0, 5.0]}, out, fixed=fixed, progress=False, html=False)
    assert list(again["status"]) == ["ok", "failed", "failed", "failed", "failed"]
    assert sorted(runs_of(log)) == sorted(["1.0", *["2.0", "3.0", "4.0", "5.0"] * 2])
    assert snapshot(out / "x=1.0") == ok_before
    # The faults gone, the next resume fixes them.
    Path(fixed["faults"]).write_text("{}")
    fixed_table = run_sweep(notebook, {"x": [1.0, 2.0, 3.0, 4.0, 5.0]}, out, fixed=fixed, progress=False, html=False)
    assert list(fixed_table["status"]) == ["ok"] * 5 and list(fixed_table["summary.x"]) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert not any((out / rid / "failure.json").exists() for rid in fixed_table["run_id"])


def test_a_damaged_result_on_the_clients_disk_fails_the_point_until_a_rerun_succeeds(tmp_path: Path) -> None:
    notebook = tiny_notebook(tmp_path)
    out = tmp_path / "sweep"
    fixed = {"faults": faults_file(tmp_path, {}), "log": str(tmp_path / "log.txt")}
    run_sweep(notebook, {"x": [1.0, 2.0]}, out, fixed=fixed, progress=False, html=False)
    summary = out / "x=2.0" / "summary.json"
    summary.write_bytes(summary.read_bytes()[:4])  # truncated after the fact (a full disk, a bad copy)
    (out / "x=1.0" / "provenance.json").unlink()
    Path(fixed["faults"]).write_text(json.dumps({"2.0": "raise"}))
    table = run_sweep(notebook, {"x": [1.0, 2.0]}, out, fixed=fixed, progress=False, html=False)
    assert list(table["status"]) == ["ok", "failed"] and "ValueError: bad x = 2.0" in table.loc[1, "error"]
    saved = pd.read_parquet(out / "sweep.parquet")
    assert list(saved["status"]) == ["ok", "failed"]
    Path(fixed["faults"]).write_text("{}")
    assert list(run_sweep(notebook, {"x": [1.0, 2.0]}, out, fixed=fixed, progress=False, html=False)["status"]) == [
        "ok",
        "ok",
    ]


def test_a_failure_stays_in_the_clients_folder_until_a_rerun_succeeds_when_workers_write_elsewhere(
    tmp_path: Path,
) -> None:
    notebook = tiny_notebook(tmp_path)
    out, workers = tmp_path / "client", tmp_path / "workers"
    fixed = {"faults": faults_file(tmp_path, {"2.0": "raise"})}
    table = run_sweep(notebook, {"x": [1.0, 2.0]}, out, fixed=fixed, outputs=workers, progress=False, html=False)
    assert list(table["status"]) == ["ok", "failed"] and (out / "x=2.0" / "failure.json").exists()
    assert list(pd.read_parquet(out / "sweep.parquet")["status"]) == ["ok", "failed"]
    Path(fixed["faults"]).write_text("{}")
    table = run_sweep(notebook, {"x": [1.0, 2.0]}, out, fixed=fixed, outputs=workers, progress=False, html=False)
    assert list(table["status"]) == ["ok", "ok"] and not (out / "x=2.0" / "failure.json").exists()
    assert json.loads((out / "x=2.0" / "summary.json").read_text())["x"] == 2.0


def test_a_smaller_grid_and_a_corrupt_table_drop_no_rows(tmp_path: Path) -> None:
    notebook = tiny_notebook(tmp_path)
    out = tmp_path / "sweep"
    fixed = {"faults": faults_file(tmp_path, {"3.0": "raise"})}
    full = run_sweep(notebook, {"x": [1.0, 2.0, 3.0]}, out, fixed=fixed, progress=False, html=False)
    (out / "sweep.parquet").write_bytes(b"PAR1 truncated")
    folders = snapshot(out / "x=1.0"), snapshot(out / "x=2.0")
    smaller = run_sweep(notebook, {"x": [1.0]}, out, fixed=fixed, progress=False, html=False)
    assert list(smaller["run_id"]) == ["x=1.0"]
    saved = pd.read_parquet(out / "sweep.parquet")
    pd.testing.assert_frame_equal(
        saved.sort_values("run_id", ignore_index=True), full.sort_values("run_id", ignore_index=True)
    )
    assert (snapshot(out / "x=1.0"), snapshot(out / "x=2.0")) == folders


@pytest.mark.parametrize(
    "grid, fixed, message",
    [
        ({"nope": [1]}, {}, "has no parameter 'nope'"),
        ({"x": [1.0]}, {"x": 2.0}, "both swept and fixed"),
        ({"output_dir": ["/tmp"]}, {}, "set by the sweep itself"),
        ({"x": [1.0]}, {"output_dir": "/tmp"}, "set by the sweep itself"),
        ({"mode": ["a/b", "a_b"]}, {}, "would share the folder"),
        ({"x": [{1, 2}]}, {}, "not JSON"),
        ({"x": []}, {}, "non-empty list"),
        ({"x": "1.0"}, {}, "non-empty list"),
        ({"x-y": [1]}, {}, "not a Python identifier"),
        ({"status": ["a"]}, {}, "would hide the sweep table's column"),
    ],
    ids=[
        "unknown-name",
        "swept-and-fixed",
        "reserved-in-grid",
        "reserved-fixed",
        "folder-collision",
        "not-json",
        "empty-values",
        "string-values",
        "bad-name",
        "status-column",
    ],
)
def test_bad_sweeps_are_refused_before_anything_runs(tmp_path: Path, grid: dict, fixed: dict, message: str) -> None:
    notebook = tiny_notebook(tmp_path)
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "keep.txt").write_text("earlier")
    before = snapshot(out)
    with pytest.raises(ValueError, match=message):
        run_sweep(notebook, grid, out, fixed=fixed, progress=False)
    assert snapshot(out) == before


def test_a_finished_point_of_other_fixed_parameters_is_not_taken_as_done(tmp_path: Path) -> None:
    notebook = tiny_notebook(tmp_path)
    out = tmp_path / "sweep"
    run_sweep(notebook, {"x": [1.0]}, out, fixed={"seed": 0}, progress=False, html=False)
    before = snapshot(out)
    with pytest.raises(ValueError, match=r"x=1\.0 holds a finished run with other parameters \(seed differ\)"):
        run_sweep(notebook, {"x": [1.0]}, out, fixed={"seed": 1}, progress=False, html=False)
    assert snapshot(out) == before


def sweep_script(folder: Path, notebook: Path, out: Path, log: Path, sleep: float) -> Path:
    """A script sweeping ``notebook`` over x = 1, 2, 3 into ``out`` (each point appends its x to ``log``, then
    sleeps ``sleep`` s) that prints the points' statuses: a sweep in a process of its own, to run twice or kill."""
    script = folder / "sweep.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPOSITORY)!r})
        from mao_lab.sweep import run_sweep
        table = run_sweep({str(notebook)!r}, {{"x": [1.0, 2.0, 3.0]}}, {str(out)!r},
                          fixed={{"log": {str(log)!r}, "sleep": {sleep!r}}}, progress=False, html=False)
        print(",".join(table["status"]))
    """)
    )
    return script


def test_two_sweeps_into_one_folder_at_once_lose_nothing_and_run_each_point_once(tmp_path: Path) -> None:
    notebook = tiny_notebook(tmp_path)
    out, log = tmp_path / "sweep", tmp_path / "log.txt"
    script = sweep_script(tmp_path, notebook, out, log, sleep=1.0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [
        subprocess.Popen([PYTHON, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    assert sorted(runs_of(log)) == ["1.0", "2.0", "3.0"], "each point ran once"
    saved = pd.read_parquet(out / "sweep.parquet")
    assert list(saved["status"]) == ["ok", "ok", "ok"] and list(saved["summary.x"]) == [1.0, 2.0, 3.0]
    # each sweep reports every point: done by itself, or by the other one ("busy" while the other was running it)
    for stdout, _ in outputs:
        assert set(stdout.strip().split(",")) <= {"ok", "busy"}


def test_a_run_folder_that_cannot_be_renamed_is_filled_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mao_lab._files as files

    folder, staged = tmp_path / "run", tmp_path / ".run.partial-x"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "old.txt").write_text("old")
    (folder / "keep.txt").write_text("old")
    (staged / "sub").mkdir(parents=True)
    (staged / "sub" / "new.txt").write_text("new")
    (staged / "keep.txt").write_text("new")
    real = os.replace

    def busy_for_the_folder(source: object, target: object) -> None:
        if Path(str(source)) == folder:
            raise OSError(errno.EBUSY, "Device or resource busy")  # a mount point
        real(source, target)

    monkeypatch.setattr(files.os, "replace", busy_for_the_folder)
    files.publish_folder(staged, folder)
    monkeypatch.undo()
    assert snapshot(folder) == snapshot_of({"sub/new.txt": "new", "keep.txt": "new"}) and not staged.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def snapshot_of(files: dict[str, str]) -> dict[str, str]:
    return {name: hashlib.sha256(text.encode()).hexdigest() for name, text in sorted(files.items())}


def test_a_worker_cannot_write_outside_the_points_folder(tmp_path: Path) -> None:
    from mao_lab.sweep import PointResult, _store

    for name in ("../evil.json", "/tmp/evil.json", "a/../../evil.json"):
        result = _store(
            tmp_path / "client" / "x=1", PointResult("x=1", {"x": 1}, "ok", files={name: b"{}"}), str(tmp_path)
        )
        assert result.status == "failed" and "outside the point's folder" in result.error
    assert snapshot(tmp_path) == {}


@pytest.mark.parametrize(
    "options, message",
    [
        ({"outputs": "nope://bucket/sweep"}, "fsspec knows no protocol 'nope'"),
        ({"max_file_bytes": -1}, "max_file_bytes must be a non-negative int"),
        ({"max_total_bytes": 1.5}, "max_total_bytes must be a non-negative int"),
        ({"cell_timeout": 0}, "cell_timeout must be a positive number"),
    ],
    ids=["unknown-url-protocol", "negative-size-limit", "float-size-limit", "zero-timeout"],
)
def test_bad_sweep_options_are_refused_before_anything_runs(tmp_path: Path, options: dict, message: str) -> None:
    notebook = tiny_notebook(tmp_path)
    with pytest.raises(ValueError, match=message):
        run_sweep(notebook, {"x": [1.0]}, tmp_path / "sweep", progress=False, **options)
    assert not (tmp_path / "sweep").exists()


def test_a_hanging_notebook_fails_its_point_at_the_cell_time_limit(tmp_path: Path) -> None:
    notebook = tiny_notebook(tmp_path)
    fixed = {"faults": faults_file(tmp_path, {"2.0": "ok"})}
    started = time.time()
    table = run_sweep(
        notebook,
        {"x": [1.0], "sleep": [0.0, 600.0]},
        tmp_path / "sweep",
        fixed=fixed,
        cell_timeout=5,
        progress=False,
        html=False,
    )
    assert list(table["status"]) == ["ok", "failed"] and "ran past the time limit" in table.loc[1, "error"]
    assert time.time() - started < 300


def test_a_full_disk_on_the_client_fails_that_point_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mao_lab.sweep as sweep

    notebook = tiny_notebook(tmp_path)
    out, workers = tmp_path / "client", tmp_path / "workers"
    real = sweep.write_atomically

    def full_for_x2(path: Path, write):  # noqa: ANN001, ANN202
        if "x=2.0" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, write)

    monkeypatch.setattr(sweep, "write_atomically", full_for_x2)
    table = run_sweep(notebook, {"x": [1.0, 2.0, 3.0]}, out, outputs=workers, progress=False, html=False)
    # the point's results came back but could not be stored: its row says so (the client's folder holds nothing of it)
    assert list(table["status"]) == ["ok", "failed", "ok"] and "could not be saved" in table.loc[1, "error"]
    assert snapshot(out / "x=2.0") == {}
    monkeypatch.undo()
    again = run_sweep(notebook, {"x": [1.0, 2.0, 3.0]}, out, outputs=workers, progress=False, html=False)
    assert list(again["status"]) == ["ok", "ok", "ok"]


def test_a_dead_kernel_and_a_killed_worker_on_dask_fail_their_points_only(tmp_path: Path) -> None:
    import dask
    import distributed  # noqa: F401 - loads its config defaults first: leaving config.set would otherwise drop them

    notebook = tiny_notebook(tmp_path)
    out = tmp_path / "sweep"
    fixed = {"faults": faults_file(tmp_path, {"2.0": "die", "3.0": "kill_worker"})}
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        local_cluster(2) as cluster,
        cluster.get_client() as client,
    ):
        table = run_sweep(
            notebook, {"x": [1.0, 2.0, 3.0, 4.0]}, out, fixed=fixed, client=client, progress=False, html=False
        )
    assert list(table["status"]) == ["ok", "failed", "failed", "ok"]
    assert "the kernel died" in table.loc[1, "error"]
    assert "worker running this point died" in table.loc[2, "error"] and (out / "x=3.0" / "failure.json").exists()
    Path(fixed["faults"]).write_text("{}")
    assert (
        list(run_sweep(notebook, {"x": [1.0, 2.0, 3.0, 4.0]}, out, fixed=fixed, progress=False, html=False)["status"])
        == ["ok"] * 4
    )


class _ReplyLost:
    """A Dask future whose point ran to the end on the worker, but whose reply never reached the client."""

    def __init__(self, result: object, lost: bool) -> None:
        self._result, self._lost = result, lost

    def result(self) -> object:
        if self._lost:
            raise RuntimeError("the worker holding this result died before the client fetched it")
        return self._result


class _ClientLosingReplies:
    """Runs each point at once, in this process, then loses the replies of the points in ``lost``."""

    def __init__(self, lost: set[float]) -> None:
        self.lost = lost

    def submit(self, function, *args, **kwargs) -> _ReplyLost:  # noqa: ANN001
        kwargs.pop("pure", None)
        result = function(*args, **kwargs)
        return _ReplyLost(result, args[2]["x"] in self.lost)


def test_a_finished_point_whose_reply_was_lost_stays_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Seen on CI: the worker that held x=1.0's result was killed by another point before the client fetched
    # it. The point's folder was complete, yet the sweep recorded a failure and wrote failure.json into it.
    import dask.distributed

    monkeypatch.setattr(dask.distributed, "as_completed", lambda futures: iter(list(futures)))
    notebook = tiny_notebook(tmp_path)
    out = tmp_path / "sweep"
    fixed = {"faults": faults_file(tmp_path, {"2.0": "raise"})}
    table = run_sweep(
        notebook,
        {"x": [1.0, 2.0]},
        out,
        fixed=fixed,
        client=_ClientLosingReplies({1.0, 2.0}),
        progress=False,
        html=False,
    )
    assert list(table["status"]) == ["ok", "failed"]
    assert not (out / "x=1.0" / "failure.json").exists() and (out / "x=1.0" / "summary.json").exists()
    assert "worker running this point died or was lost" in table.loc[1, "error"]  # nothing finished there: a failure
    finished = snapshot(out / "x=1.0")
    rerun = run_sweep(
        notebook, {"x": [1.0, 2.0]}, out, fixed=fixed, client=_ClientLosingReplies({1.0}), progress=False, html=False
    )
    assert list(rerun["status"]) == ["ok", "failed"] and snapshot(out / "x=1.0") == finished


def test_a_sweep_killed_mid_way_resumes_without_rerunning_finished_points(tmp_path: Path) -> None:
    notebook = tiny_notebook(tmp_path)
    out, log = tmp_path / "sweep", tmp_path / "log.txt"
    script = sweep_script(tmp_path, notebook, out, log, sleep=2.0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [PYTHON, str(script)], env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 180
    while len(runs_of(log)) < 2 and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the sweep, its kernel: all at once
    process.wait()
    finished = snapshot(out / "x=1.0")
    table = run_sweep(
        notebook, {"x": [1.0, 2.0, 3.0]}, out, fixed={"log": str(log), "sleep": 2.0}, progress=False, html=False
    )
    assert list(table["status"]) == ["ok", "ok", "ok"]
    assert runs_of(log).count("1.0") == 1 and snapshot(out / "x=1.0") == finished
    assert not list(out.glob(".*partial-*"))


# -- class 7: data integrity --------------------------------------------------------------------------------

SHIPPED = REPOSITORY / "data" / "multimnist.npz"


def _flip_byte(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


def _altered_labels(data: bytes) -> bytes:
    import io

    with np.load(io.BytesIO(data)) as stored:
        arrays = {k: stored[k] for k in stored.files}
    arrays["test_left_label"] = (arrays["test_left_label"] + 1) % 10
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "damage",
    [
        _flip_byte,
        lambda data: data[: len(data) // 3],
        lambda data: b"",
        lambda data: b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 3120244\n",
        _altered_labels,
        lambda data: data + b"\0",
    ],
    ids=["flipped-byte", "truncated", "empty", "lfs-pointer", "altered-labels", "one-byte-appended"],
)
@pytest.mark.parametrize("where", ["shipped-path", "own-path-with-sidecar"])
def test_a_corrupt_or_altered_data_file_names_itself_and_its_rebuild_command(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    damage,
    where: str,  # noqa: ANN001
) -> None:
    from mao_lab.problems import _multimnist

    file = tmp_path / "multimnist.npz"
    file.write_bytes(damage(SHIPPED.read_bytes()))
    if where == "shipped-path":
        monkeypatch.setattr(_multimnist, "DEFAULT_MULTIMNIST_PATH", file)
        path = None
    else:
        (tmp_path / "multimnist.npz.sha256").write_text(f"{_multimnist.MULTIMNIST_SHA256}  multimnist.npz\n")
        path = file
    before = snapshot(tmp_path)
    with pytest.raises(
        _multimnist.DataIntegrityError, match=r"multimnist\.npz does not match its recorded checksum"
    ) as error:
        _multimnist.load_multimnist(path, split="test", limit=2)
    assert str(file) in str(error.value) and "python data/build_multimnist.py" in str(error.value)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("content", [b"not a zip", b"", "missing-arrays"], ids=["garbage", "empty", "missing-arrays"])
def test_an_own_file_without_checksum_that_is_unreadable_gets_a_clear_error(tmp_path: Path, content: object) -> None:
    from mao_lab.problems import _multimnist

    file = tmp_path / "mine.npz"
    if content == "missing-arrays":
        np.savez(file, digits=np.zeros((1, 28, 28), np.uint8))
    else:
        file.write_bytes(content)  # type: ignore[arg-type]
    with pytest.raises(
        _multimnist.DataIntegrityError, match=r"mine\.npz is not a readable MultiMNIST file.*build_multimnist\.py"
    ):
        _multimnist.load_multimnist(file, split="test", limit=2)


def test_the_shipped_file_and_a_rebuilt_copy_with_its_sidecar_load(tmp_path: Path) -> None:
    from mao_lab.problems import _multimnist

    assert hashlib.sha256(SHIPPED.read_bytes()).hexdigest() == _multimnist.MULTIMNIST_SHA256
    assert (REPOSITORY / "data" / "multimnist.npz.sha256").read_text().split()[0] == _multimnist.MULTIMNIST_SHA256
    copy = tmp_path / "copy.npz"
    copy.write_bytes(SHIPPED.read_bytes())
    (tmp_path / "copy.npz.sha256").write_text(hashlib.sha256(copy.read_bytes()).hexdigest() + "  copy.npz\n")
    assert len(_multimnist.load_multimnist(copy, split="test", limit=3)) == 3


# -- class 8: nothing listens beyond the machine ---------------------------------------------------------


def _listening(pids: set[int]) -> set[tuple[str, int]]:
    import psutil

    found = set()
    for pid in pids:
        try:
            connections = psutil.Process(pid).net_connections("inet")
        except psutil.NoSuchProcess:
            continue
        found |= {(c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN}
    return found


@pytest.mark.parametrize("dashboard", [False, True], ids=["default", "with-dashboard"])
def test_a_local_cluster_listens_on_loopback_only(dashboard: bool) -> None:
    import urllib.error
    import urllib.request

    import psutil

    with local_cluster(2, dashboard=dashboard) as cluster:
        me = psutil.Process()
        sockets = _listening({me.pid, *(c.pid for c in me.children(recursive=True))})
        try:
            status = urllib.request.urlopen(
                f"http://127.0.0.1:{cluster.scheduler.http_server.port}/status", timeout=10
            ).status
        except urllib.error.HTTPError as error:
            status = error.code
    assert status == (200 if dashboard else 404), "the dashboard is served only when asked for"
    assert sockets, "the scheduler and workers listen somewhere"
    assert all(ip in ("127.0.0.1", "::1") for ip, _ in sockets), sockets
    assert any(port == 8787 for _, port in sockets) == dashboard


def test_kernels_listen_on_loopback_only(tmp_path: Path) -> None:
    notebook = tiny_notebook(tmp_path)
    table = run_sweep(notebook, {"mode": ["sockets"]}, tmp_path / "sweep", progress=False, html=False)
    listening = json.loads((tmp_path / "sweep" / "mode=sockets" / "summary.json").read_text())["listening"]
    assert table.loc[0, "status"] == "ok" and listening and set(listening) <= {"127.0.0.1", "::1"}


def test_a_plain_tcp_scheduler_on_another_machine_gets_a_warning(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import dask.distributed

    import mao_lab.sweep as sweep

    monkeypatch.setattr(dask.distributed, "Client", lambda *a, **k: ("client", a, k))
    with pytest.warns(UserWarning, match="plain TCP to another machine.*SSH tunnel"):
        sweep.connect("tcp://203.0.113.5:8786")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sweep.connect("tcp://127.0.0.1:8786")
        sweep.connect("tls://203.0.113.5:8786")
    with pytest.raises(SystemExit):
        sweep.main(["00_quickstart", "-g", "seed=0", "--workers", "2", "--scheduler", "tcp://127.0.0.1:8786"])
    assert "not both" in capsys.readouterr().err


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["-g", "x=1.0,,2.0"], "an empty value"),
        (["-g", "x="], "expected NAME=V1,V2"),
        (["-g", "x=[1,2"], "malformed value"),
        (["-g", "x=1", "-g", "x=2"], "given twice"),
        (["-g", "smoke=true,false"], "smoke is set by --smoke"),
        (["-g", "x=1", "--workers", "-1"], "--workers must be >= 0"),
    ],
    ids=["empty-item", "no-values", "malformed", "twice", "smoke-swept", "negative-workers"],
)
def test_bad_sweep_command_lines_get_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    from mao_lab.sweep import main as sweep_main

    notebook = tiny_notebook(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        sweep_main([str(notebook), *arguments, "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in error.strip().splitlines()[-1] and "Traceback" not in error
    assert not (tmp_path / "out").exists()


def test_grids_count_repeated_values_once() -> None:
    assert expand_grid({"x": [1.0, 1.0], "y": ["a", "a", "b"]}) == [{"x": 1.0, "y": "a"}, {"x": 1.0, "y": "b"}]
