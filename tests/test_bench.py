"""The benchmark commands run and report what they promise; no assertion here is about time."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RATIOS = ("mao_vs_torchjd", "mao_vs_limit", "update_vs_adam", "mao_features_vs_torchjd", "torchjd_vs_limit")
CANDIDATES = ("limit", "mao", "mao_features", "torchjd", "mao_update", "adam_update")


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:  # a hang guard, never a speed goal
    return subprocess.run(
        [sys.executable, "-m", "mao_lab.bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _one_json_line(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected exactly one JSON line on stdout, got {len(lines)}: {stdout[:500]!r}"
    return json.loads(lines[0])


def _positive_finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def step_quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    output = tmp_path_factory.mktemp("bench") / "step.json"
    # One thread: the command is what is tested, and one thread is not slowed down by a busy machine.
    done = _run("step", "--quick", "--threads", "1", "--no-progress", "--output", str(output))
    assert done.returncode == 0, done.stderr[-2000:]
    return _one_json_line(done.stdout), output


def test_step_quick_prints_one_json_line_with_the_ratios(step_quick: tuple[dict, Path]) -> None:
    result, _ = step_quick
    assert result["benchmark"] == "step"
    assert result["device"] == "cpu"
    assert result["threads"] == 1
    assert result["quick"] is True
    configs = {(c["model"], c["tasks"]) for c in result["configs"]}
    assert configs == {("multimnist_cnn", 2), ("multimnist_cnn", 4), ("mlp_1m", 8), ("mlp_1m", 16)}
    for config in result["configs"]:
        where = f"{config['model']} T={config['tasks']}"
        for key in RATIOS:
            assert _positive_finite(config[key]), f"{where}: {key} = {config.get(key)!r}"
        for name in CANDIDATES:
            assert _positive_finite(config["median_ms"][name]), f"{where}: median_ms[{name}]"
        assert "mao_vmap_vs_torchjd_vmap" not in config  # the vmap path is reported on CUDA only


def test_optimizer_state_is_exactly_two_moments_per_task_and_parameter(step_quick: tuple[dict, Path]) -> None:
    # A memory property, not a timing: 2*T moments per shared parameter, Adam's 2 per head parameter.
    result, _ = step_quick
    for config in result["configs"]:
        shared, specific = config["shared_params"], config["task_specific_params"]
        expected = (2 * config["tasks"] * shared + 2 * specific) * 4
        assert config["expected_state_bytes"] == expected
        assert config["optimizer_state_bytes"] == expected
        assert config["state_vs_expected"] == 1.0
    mlp = next(c for c in result["configs"] if c["model"] == "mlp_1m")
    assert 0.9e6 < mlp["shared_params"] < 1.1e6


def test_output_file_holds_the_same_json(step_quick: tuple[dict, Path]) -> None:
    result, output = step_quick
    assert json.loads(output.read_text()) == result


def test_recorder_quick() -> None:
    if importlib.util.find_spec("mao_lab.bench._recorder_bench") is None:
        pytest.skip("mao_lab/bench/_recorder_bench.py (the recorder benchmark) is not there yet")
    done = _run(
        "recorder", "--quick", timeout=900
    )  # a guard against a hang, not a speed goal: a busy 2-core machine took over 120 s
    assert done.returncode == 0, done.stderr[-2000:]
    result = _one_json_line(done.stdout)
    assert isinstance(result, dict) and result


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["step", "--device", "tpu"], "invalid choice"),
        (["step", "--threads", "0"], "positive integer"),
        (["step", "--bogus"], "unrecognized arguments"),
        (["recorder", "--device", "cpu"], "unrecognized arguments"),
        (["nothing"], "invalid choice"),
        ([], "required"),
    ],
)
def test_bad_arguments_are_argparse_errors(args: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    from mao_lab.bench.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert message in err
    assert out == ""


def test_cuda_without_cuda_is_a_clear_error(capsys: pytest.CaptureFixture) -> None:
    import torch

    from mao_lab.bench.__main__ import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit) as exit_info:
        main(["step", "--device", "cuda", "--quick"])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert "CUDA is not available" in err
    assert out == ""
