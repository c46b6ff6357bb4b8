"""Data parallelism: two gloo processes on CPU, each on its half of every batch, take the same steps,
bit for bit, and those are the steps one process takes on the whole batches, for every method."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mao_lab.methods import available

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "_distributed_worker.py"
_spec = importlib.util.spec_from_file_location("_distributed_worker", WORKER)
assert _spec is not None and _spec.loader is not None
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)

WHOLE = slice(None)


def _environment() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """What the two processes returned (all the methods run inside one pair of processes)."""
    tmp = tmp_path_factory.mktemp("ddp")
    init = tmp / "rendezvous"
    outs = [tmp / f"rank{r}.pt" for r in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(r), "2", str(init), str(outs[r])],
            env=_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    logs = []
    for proc in procs:
        try:
            logs.append(proc.communicate(timeout=900)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, log[-4000:]
    return [torch.load(out, weights_only=False) for out in outs]


def _assert_close(got: list[torch.Tensor], expected: list[torch.Tensor], what: str) -> None:
    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9, msg=lambda m, i=i: f"{what}, parameter {i}: {m}")


@pytest.mark.parametrize("name", sorted(available()))
def test_every_method_steps_the_replicas_alike_and_as_one_process_on_the_whole_batch(
    ranks: list[dict], name: str
) -> None:
    first, second = ranks[0][name], ranks[1][name]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True)), f"{name}: the replicas differ"
    start = [p.detach() for p in worker.Net().parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(first, start)), f"{name}: nothing moved"
    _assert_close(first, worker.train(name, WHOLE), f"{name} vs one process on the whole batch")


def test_the_optimizer_class_steps_as_one_process_on_the_whole_batch(ranks: list[dict]) -> None:
    assert all(torch.equal(a, b) for a, b in zip(ranks[0]["MAO"], ranks[1]["MAO"]))
    _assert_close(ranks[0]["MAO"], worker.train_mao(WHOLE), "MAO")


def test_the_features_path_steps_as_one_process_on_the_whole_batch(ranks: list[dict]) -> None:
    assert all(torch.equal(a, b) for a, b in zip(ranks[0]["MAO:features"], ranks[1]["MAO:features"]))
    _assert_close(ranks[0]["MAO:features"], worker.train_mao_features(WHOLE), "MAO with features")


def test_a_loss_scale_overflow_on_one_process_is_skipped_by_every_process(ranks: list[dict]) -> None:
    """The overflow check reads the averaged gradients: every replica skips together (none drifts)."""
    for rank in ranks:
        assert rank["overflow"] == {"skipped": 1, "unchanged": True, "scale": 2.0**99}


@pytest.mark.parametrize("name", ["mao", "pcgrad", "mtadam", "uw", "MAO"])
def test_a_model_wrapped_in_ddp_steps_as_one_process_on_the_whole_batch(ranks: list[dict], name: str) -> None:
    key = f"ddp:{name}"
    assert all(torch.equal(a, b) for a, b in zip(ranks[0][key], ranks[1][key]))
    reference = worker.train_mao(WHOLE) if name == "MAO" else worker.train(name, WHOLE)
    _assert_close(ranks[0][key], reference, key)


def test_stepping_inside_no_sync_is_refused(ranks: list[dict]) -> None:
    for rank in ranks:
        assert "no_sync" in rank["no_sync"] and "not supported" in rank["no_sync"]


def test_distributed_false_steps_each_process_on_its_own_half(ranks: list[dict]) -> None:
    halves = [worker.train("mao", slice(r * 8, (r + 1) * 8), distributed=False) for r in range(2)]
    for r in range(2):
        _assert_close(ranks[r]["off:mao"], halves[r], f"rank {r}, distributed=False")
    assert not all(torch.equal(a, b) for a, b in zip(ranks[0]["off:mao"], ranks[1]["off:mao"]))


def test_an_explicit_process_group_is_used(ranks: list[dict]) -> None:
    assert all(torch.equal(a, b) for a, b in zip(ranks[0]["group:pcgrad"], ranks[1]["group:pcgrad"]))
    _assert_close(ranks[0]["group:pcgrad"], worker.train("pcgrad", WHOLE), "pcgrad on an explicit group")


def test_parameters_sharded_across_processes_are_refused(ranks: list[dict]) -> None:
    for rank in ranks:
        for message in rank["sharded"]:
            assert "sharded across processes" in message and "DTensor" in message, message


def test_the_distributed_option_is_checked_and_never_pickled_with_a_group() -> None:
    import copy
    import pickle

    from mao_lab._distributed import DistributedSetting
    from mao_lab.methods import make

    p = torch.zeros(2, requires_grad=True)
    with pytest.raises(TypeError, match="distributed must be None"):
        make("mao", [p], distributed="yes")
    method = make("mao", [p], distributed=False)
    assert pickle.loads(pickle.dumps(method.distributed)).value is False
    assert copy.deepcopy(method.distributed) is method.distributed  # a group is shared, never copied
    setting = DistributedSetting(None)
    assert setting.resolve([p], "test") is None  # torch.distributed is not initialised here
    with pytest.raises(RuntimeError, match="not initialised"):
        DistributedSetting(True).resolve([p], "test")


def test_the_readme_shows_the_ddp_example_as_it_is() -> None:
    example = (ROOT / "docs" / "examples" / "ddp_train.py").read_text()
    assert f"```py\n{example}```" in (ROOT / "README.md").read_text()


def test_the_ddp_example_runs_under_torchrun() -> None:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        "--nproc_per_node=2",
        str(ROOT / "docs" / "examples" / "ddp_train.py"),
    ]
    done = subprocess.run(
        command, env=_environment(), capture_output=True, text=True, timeout=600, cwd=ROOT, check=False
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "2 processes, 25 steps: replicas identical" in done.stdout


def test_the_ddp_benchmark_quick_prints_its_json(tmp_path: Path) -> None:
    out = tmp_path / "ddp.json"
    done = subprocess.run(
        [sys.executable, "-m", "mao_lab.bench", "ddp", "--quick", "--output", str(out)],
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    import json

    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == json.loads(out.read_text())
    assert [(c["model"], c["tasks"]) for c in result["configs"]] == [("multimnist_cnn", 4), ("mlp_1m", 8)]
    for config in result["configs"]:
        assert set(config["ms"]) == {"ddp_adam", "mao", "pcgrad", "uw", "mao_single", "mao_allreduce"}
        # UW needs one weighted sum: one loss all-reduce and the gradient's bytes, as DDP + Adam.
        assert config["collectives_per_step"]["uw"] == 2
        losses_bytes = 8 * config["tasks"]  # the T loss values, reduced in float64
        assert config["bytes_per_step"]["uw"] == config["bytes_per_step"]["ddp_adam"] + losses_bytes
