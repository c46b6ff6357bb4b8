"""``python -m mao_lab.bench ddp``: a training step under DistributedDataParallel, 2 gloo processes on CPU.

The step benchmark's models (:mod:`._step_bench`): the MultiMNIST CNN with ``T = 4`` and the 1M-parameter
MLP with ``T = 8``, wrapped in ``DistributedDataParallel``; each process steps on its own half of the
batch.  Candidates, timed interleaved in both processes (a barrier before each; the slower process's
time counts):

- ``ddp_adam``: ``sum(losses).backward()`` (DDP's bucketed all-reduce, overlapped with the backward
  pass) and ``Adam.step()``: the usual data-parallel step, one reduction of every gradient;
- ``mao``, ``pcgrad``, ``uw``: ``MAO.step(losses)``, ``make("pcgrad"|"uw").step(closure)`` on the wrapped
  model: the loss values and the per-task gradients averaged over the processes (see
  :mod:`mao_lab._distributed`); UW needs only the gradient of one weighted sum: one reduction;
- ``mao_single``: MAO's step with ``distributed=False`` (each process alone, no communication);
- ``mao_allreduce``: MAO's collectives alone (the sizes one of its steps sent, recorded by wrapping
  ``torch.distributed.all_reduce``), issued as the step issues them on tensors of the same sizes.

``bytes_per_step`` is the all-reduce payload per process and step: traced for the methods; for
``ddp_adam`` it is every trainable parameter's gradient (what DDP reduces).  The goal is
``mao <= 1.10 * (mao_single + mao_allreduce)``: the averaging costs no more than its communication.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .. import MAO
from ..methods import make
from ._step_bench import BenchConfig, _problem

__all__ = ["DDP_CONFIGS", "run_ddp_benchmark"]

DDP_CONFIGS = (BenchConfig("multimnist_cnn", 4), BenchConfig("mlp_1m", 8))
WORLD = 2
BATCH = 128  # the whole batch: 64 per process
QUICK_BATCH = 16
REPETITIONS = 15
QUICK_REPETITIONS = 2
GOAL = 1.10
LR = 1e-3


def run_ddp_benchmark(quick: bool = False, seed: int = 0, timeout_s: float = 1800.0) -> dict[str, Any]:
    """Run the two processes (file:// rendezvous, loopback) and return rank 0's results."""
    with tempfile.TemporaryDirectory() as tmp:
        init, out = Path(tmp) / "rendezvous", Path(tmp) / "result.json"
        env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME=os.environ.get("GLOO_SOCKET_IFNAME", "lo"))
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        command = [
            sys.executable,
            "-m",
            "mao_lab.bench._ddp_bench",
            "--init",
            str(init),
            "--out",
            str(out),
            "--seed",
            str(seed),
        ] + (["--quick"] if quick else [])
        procs = [subprocess.Popen([*command, "--rank", str(r)], env=env) for r in range(WORLD)]
        try:
            codes = [p.wait(timeout=timeout_s) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        if any(codes):
            raise RuntimeError(f"the benchmark processes exited with {codes}")
        return json.loads(out.read_text())


# -- inside one process -------------------------------------------------------------------------------------


def _slowest(seconds: list[float]) -> list[float]:
    """Per repetition, the slower of the processes' times (a step is done when every process is)."""
    t = torch.tensor(seconds, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def _traced_collectives(step: Callable[[], object]) -> list[tuple[int, torch.dtype, bool]]:
    """The all-reduces one call of ``step`` issues: (elements, dtype, asynchronous) each."""
    trace: list[tuple[int, torch.dtype, bool]] = []
    original = dist.all_reduce

    def recording(tensor: Tensor, *args: Any, **kwargs: Any) -> Any:
        trace.append((tensor.numel(), tensor.dtype, bool(kwargs.get("async_op", False))))
        return original(tensor, *args, **kwargs)

    dist.all_reduce = recording  # type: ignore[assignment]
    try:
        step()
    finally:
        dist.all_reduce = original  # type: ignore[assignment]
    return trace


def _replay(trace: list[tuple[int, torch.dtype, bool]]) -> Callable[[], None]:
    """The collectives of ``trace`` alone, on tensors of the same sizes, asynchronous ones awaited at the end."""
    buffers = [torch.zeros(n, dtype=dtype) for n, dtype, _ in trace]

    def collectives() -> None:
        pending = []
        for buffer, (_, _, async_op) in zip(buffers, trace):
            work = dist.all_reduce(buffer, async_op=async_op)
            if async_op:
                pending.append(work)
        for work in pending:
            work.wait()

    return collectives


def _candidates(
    config: BenchConfig, seed: int, rank: int, half: int
) -> tuple[dict[str, Callable[[], object]], dict[str, int], dict[str, int]]:
    from torch.nn.parallel import DistributedDataParallel

    def model_copy() -> Any:
        return _problem(config, seed, torch.device("cpu"), half)[0]  # the same weights in every process

    _, x, loss_fn = _problem(config, seed + 1 + rank, torch.device("cpu"), half)  # this process's half
    ddp_adam_model = DistributedDataParallel(model_copy())
    adam = torch.optim.Adam(ddp_adam_model.parameters(), lr=LR, foreach=True)

    def ddp_adam() -> None:
        sum(loss_fn(ddp_adam_model(x))).backward()
        adam.step()
        adam.zero_grad(set_to_none=True)

    mao_model = DistributedDataParallel(model_copy())
    mao = MAO(mao_model.parameters(), lr=LR)
    single_model = model_copy()
    single = MAO(single_model.parameters(), lr=LR, distributed=False)
    pcgrad_model = DistributedDataParallel(model_copy())
    pcgrad = make("pcgrad", pcgrad_model.parameters(), lr=LR)
    uw_model = DistributedDataParallel(model_copy())
    uw = make("uw", uw_model.parameters(), lr=LR)
    candidates: dict[str, Callable[[], object]] = {
        "ddp_adam": ddp_adam,
        "mao": lambda: mao.step(loss_fn(mao_model(x))),
        "pcgrad": lambda: pcgrad.step(lambda: loss_fn(pcgrad_model(x))),
        "uw": lambda: uw.step(lambda: loss_fn(uw_model(x))),
        "mao_single": lambda: single.step(loss_fn(single_model(x))),
    }
    traces = {name: _traced_collectives(candidates[name]) for name in ("mao", "pcgrad", "uw")}
    candidates["mao_allreduce"] = _replay(traces["mao"])
    grad_bytes = sum(p.numel() * p.element_size() for p in ddp_adam_model.parameters() if p.requires_grad)
    nbytes = {"ddp_adam": grad_bytes}
    count = {"ddp_adam": -1}  # DDP's own buckets, not traced
    for name, trace in traces.items():
        nbytes[name] = sum(n * torch.empty((), dtype=d).element_size() for n, d, _ in trace)
        count[name] = len(trace)
    return candidates, nbytes, count


def _run_config(config: BenchConfig, seed: int, rank: int, quick: bool) -> dict[str, Any]:
    half = (QUICK_BATCH if quick else BATCH) // WORLD
    candidates, nbytes, count = _candidates(config, seed, rank, half)
    repetitions = QUICK_REPETITIONS if quick else REPETITIONS
    for step in candidates.values():  # warm-up
        step()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for r in range(repetitions):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order
            dist.barrier()
            t0 = time.perf_counter()
            candidates[name]()
            times[name].append(time.perf_counter() - t0)
    ms = {name: statistics.median(_slowest(t)) * 1e3 for name, t in times.items()}
    bound = ms["mao_single"] + ms["mao_allreduce"]
    return {
        "model": config.model,
        "tasks": config.tasks,
        "batch_per_process": half,
        "repetitions": repetitions,
        "ms": {k: round(v, 3) for k, v in ms.items()},
        "ms_vs_ddp_adam": {k: round(ms[k] / ms["ddp_adam"], 3) for k in ("mao", "pcgrad", "uw")},
        "bytes_per_step": nbytes,
        "bytes_vs_ddp_adam": {k: round(nbytes[k] / nbytes["ddp_adam"], 3) for k in ("mao", "pcgrad", "uw")},
        "collectives_per_step": {k: v for k, v in count.items() if v >= 0},
        "mao_goal": {
            "mao_ms": round(ms["mao"], 3),
            "single_plus_allreduce_ms": round(bound, 3),
            "ratio": round(ms["mao"] / bound, 3),
            "goal": GOAL,
            "met": ms["mao"] <= GOAL * bound,
        },
    }


def _worker(rank: int, init: str, out: str, seed: int, quick: bool) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=WORLD)
    try:
        results = [_run_config(config, seed, rank, quick) for config in DDP_CONFIGS]
        if rank == 0:
            payload = {
                "benchmark": "ddp",
                "world_size": WORLD,
                "backend": "gloo",
                "device": "cpu",
                "threads_per_process": 1,
                "quick": quick,
                "torch": torch.__version__,
                "configs": results,
            }
            Path(out).write_text(json.dumps(payload, allow_nan=False))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mao_lab.bench._ddp_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--init", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    _worker(args.rank, args.init, args.out, args.seed, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
