"""``python -m mao_lab.bench problems``: MAO's step on the papers' model sizes, against Adam and the limit.

Two configurations, on synthetic data of the real shapes (the cost of a step does not depend on the
pixels): the CelebA model (ResNet-18-style trunk at 64x64, T = 40 attribute heads) and the NYUv2 model
(SegNet-style encoder-decoder at 288x384, T = 3 dense heads).  Candidates, timed interleaved on their
own copy of the same model and the same batch (see :mod:`._timing`):

- ``limit``: the physical limit of any method that needs every task's gradient of the shared
  parameters: one forward pass, then one backward pass per task through its head and the trunk
  (bare ``torch.autograd.grad``), as :mod:`._step_bench` defines it;
- ``mao``: forward, then ``MAO.step(losses)``;
- ``adam_sum``: forward, ``sum(losses).backward()``, ``Adam(foreach=True).step()``: the single-backward
  baseline a user would run without task balancing (MAO costs about T backward passes to its one).

Memory: MAO's optimizer state (two moments per task of every shared parameter, two of every head
parameter) against ``2 T shared + 2 task-specific`` values and against Adam's state.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import MAO
from ..problems import MultiTaskNet, Problem, load_problem
from ._step_bench import (
    _checked_device,
    _device_name,
    _load_average,
    _rounded,
    _state_bytes,
    _warn_if_busy,
)
from ._timing import fix_threads, interleaved_timings, synchronizer

__all__ = ["PROBLEM_CONFIGS", "ProblemBenchConfig", "run_problems_benchmark"]

LR = 1e-3


@dataclass(frozen=True)
class ProblemBenchConfig:
    """A problem to benchmark: its factory (``"package.module:factory"``), options, and batch sizes."""

    label: str
    factory: str
    options: dict[str, Any] = field(default_factory=dict)
    cpu_batch: int = 1
    cuda_batch: int = 8


PROBLEM_CONFIGS: tuple[ProblemBenchConfig, ...] = (
    ProblemBenchConfig("celeba", "mao_lab.problems:celeba", {"synthetic": True, "size": 64}, 1, 256),
    ProblemBenchConfig("nyuv2", "mao_lab.problems:nyuv2", {"synthetic": True}, 1, 8),
)


def _candidates(problem: Problem, batch: Any) -> tuple[dict[str, Callable[[], object]], dict[str, Any]]:
    model = problem.build_model()
    device = batch[0].device
    model.to(device)
    limit_model, mao_model, adam_model = (copy.deepcopy(model) for _ in range(3))
    mao = MAO(mao_model.parameters(), lr=LR)
    adam = torch.optim.Adam(adam_model.parameters(), lr=LR, foreach=True)
    shared = list(limit_model.shared_parameters())
    heads = [list(limit_model.task_parameters(k)) for k in range(limit_model.num_tasks)]

    def limit() -> None:
        losses = list(problem.task_losses(limit_model, batch).values())
        for k, loss in enumerate(losses):
            torch.autograd.grad(loss, shared + heads[k], retain_graph=k < len(losses) - 1)

    def adam_sum() -> None:
        sum(problem.task_losses(adam_model, batch).values()).backward()
        adam.step()
        adam.zero_grad(set_to_none=True)

    candidates = {
        "limit": limit,
        "mao": lambda: mao.step(problem.task_losses(mao_model, batch)),
        "adam_sum": adam_sum,
    }
    return candidates, {"model": model, "mao": mao, "adam": adam}


def _memory(model: MultiTaskNet, mao: MAO, adam: torch.optim.Optimizer) -> dict[str, float]:
    n_shared = sum(p.numel() for p in model.shared_parameters())
    n_task = sum(p.numel() for k in range(model.num_tasks) for p in model.task_parameters(k))
    element = next(model.parameters()).element_size()
    expected = (2 * model.num_tasks * n_shared + 2 * n_task) * element
    measured = _state_bytes(mao, ("exp_avg", "exp_avg_sq"))
    adam_bytes = _state_bytes(adam, ("exp_avg", "exp_avg_sq"))
    return {
        "shared_params": n_shared,
        "task_specific_params": n_task,
        "mao_state_bytes": measured,
        "expected_state_bytes": expected,
        "state_vs_expected": measured / expected,
        "adam_state_bytes": adam_bytes,
        "mao_state_vs_adam": measured / adam_bytes,
    }


def run_problems_benchmark(
    device: str | torch.device = "cpu",
    threads: int = 2,
    seed: int = 0,
    repetitions: int | None = None,
    batch: int | None = None,
    configs: Sequence[ProblemBenchConfig] = PROBLEM_CONFIGS,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Time ``limit``, ``mao`` and ``adam_sum`` on each configuration; return the JSON-ready result.

    Args:
        device: ``"cpu"`` or ``"cuda"``.
        threads: ``torch.set_num_threads`` (CPU).
        seed: seeds the models.
        repetitions: timed repetitions per candidate (default: 3 on CPU, 20 on CUDA), after an untimed
            first call (two on CUDA).
        batch: the batch size of every configuration (default: each one's ``cpu_batch`` or ``cuda_batch``).
        configs: what to run (default: CelebA at T = 40 and NYUv2 at T = 3).
        progress: told a line of progress now and then (e.g. ``print`` to stderr).
    """
    dev = _checked_device(device)
    threads = fix_threads(threads)
    cuda = dev.type == "cuda"
    reps = repetitions if repetitions is not None else (20 if cuda else 3)
    if reps < 1:
        raise ValueError(f"repetitions must be >= 1, got {reps}")
    started, load_before = time.perf_counter(), _load_average()
    _warn_if_busy(dev, threads, load_before)
    entries = []
    for config in configs:
        size = batch if batch is not None else (config.cuda_batch if cuda else config.cpu_batch)
        if progress is not None:
            progress(f"bench problems: {config.label}, batch {size}, {reps} repetitions")
        entries.append(_run_config(config, size, reps, seed, dev))
    return {
        "benchmark": "problems",
        "device": str(dev),
        "device_name": _device_name(dev),
        "threads": threads,
        "seed": seed,
        "torch": torch.__version__,
        "load_average": [load_before, _load_average()],
        "seconds": round(time.perf_counter() - started, 1),
        "configs": entries,
    }


def _run_config(config: ProblemBenchConfig, batch_size: int, repetitions: int, seed: int, dev: torch.device) -> dict:
    options = {**config.options, "batch_size": batch_size}
    problem = load_problem(config.factory, **options)
    batch = problem.to_device(next(iter(problem.batches("train", seed=seed, batch_size=batch_size))), dev)
    torch.manual_seed(seed)
    candidates, inspect = _candidates(problem, batch)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    # The untimed calibration call of each candidate warms it up; a GPU gets one more warm-up call.
    timings = interleaved_timings(
        candidates, repetitions=repetitions, warmup=int(dev.type == "cuda"), min_sample_s=0.0, sync=synchronizer(dev)
    )
    median = {name: timings.median(name) for name in candidates}

    def paired(top: str, bottom: str) -> float:
        return statistics.median(a / b for a, b in zip(timings.samples[top], timings.samples[bottom]))

    entry: dict[str, Any] = {
        "problem": config.label,
        "description": problem.description,
        "tasks": len(problem.task_names),
        "batch": batch_size,
        "input_shape": list(batch[0].shape[1:]),
        "repetitions": repetitions,
        "median_ms": {name: round(seconds * 1e3, 3) for name, seconds in median.items()},
        "mao_vs_limit": median["mao"] / median["limit"],
        "mao_vs_adam_sum": median["mao"] / median["adam_sum"],
        "limit_vs_adam_sum": median["limit"] / median["adam_sum"],
        "paired": {
            "mao_vs_limit": round(paired("mao", "limit"), 4),
            "mao_vs_adam_sum": round(paired("mao", "adam_sum"), 4),
        },
        "spread": {name: round(timings.spread(name), 4) for name in candidates},
        **_memory(inspect["model"], inspect["mao"], inspect["adam"]),
    }
    if dev.type == "cuda":
        entry["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(dev)
    return _rounded(entry)
