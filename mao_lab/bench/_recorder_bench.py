"""``python -m mao_lab.bench recorder``: what recording every step costs a training step.

One process, one model, one method (MAO behind :func:`mao_lab.methods.make`), one fixed batch of
MultiMNIST-sized input with four tasks (``left``, ``right``, ``sum``, ``reconstruct``).  Two candidates
take the same full training step — forward, per-task gradients, update — one with a
:class:`~mao_lab.recorder.Recorder` attached and recording every step, one without; they are timed
interleaved (see :func:`~mao_lab.bench._timing.interleaved_timings`) and compared by their medians.

``overhead_ratio = step_ms_on / step_ms_off``; the goal is at most 1.05.  The recording cost has two
parts, reported separately: the recorder's own work on a step record (``recorder_call_ms``), and the
method keeping each task's part of the update for the record (the rest of the difference).

The live :class:`~mao_lab.recorder.BalanceMonitor`'s cost is measured too (``monitor_*``, see
:mod:`mao_lab.bench._monitor_bench`); its goal is the same, ``monitor_overhead_ratio`` at most 1.05.

Run it as ``python -m mao_lab.bench recorder [--quick]`` or ``python -m mao_lab.bench._recorder_bench``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._observe import StepRecord
from ..methods import Method, make
from ..recorder import Recorder
from ._monitor_bench import monitor_cost
from ._timing import fix_threads, interleaved_timings

__all__ = ["run_recorder_benchmark"]

TASKS = ("left", "right", "sum", "reconstruct")
BATCH = 256
THREADS = 2
LR = 1e-3


def _problem(seed: int) -> tuple[nn.Module, Callable[[], list[Tensor]], str]:
    """The model and a closure giving the four task losses on one fixed random batch."""
    g = torch.Generator().manual_seed(seed)
    targets = [
        torch.randint(0, 10, (BATCH,), generator=g),
        torch.randint(0, 10, (BATCH,), generator=g),
        torch.rand(BATCH, generator=g),
        torch.rand(BATCH, 1, 28, 28, generator=g),
    ]
    try:
        from ..problems import multimnist_model, task_losses
    except ImportError:  # the problems package is optional here: fall back to the same network, built here
        model, x = _lenet(seed), torch.rand(BATCH, 1, 28, 28, generator=g)

        def fallback_losses() -> list[Tensor]:
            left, right, total, image = model(x)
            return [
                F.cross_entropy(left, targets[0]),
                F.cross_entropy(right, targets[1]),
                F.mse_loss(total.squeeze(1), targets[2]),
                F.mse_loss(image.view(-1, 1, 28, 28), targets[3]),
            ]

        return model, fallback_losses, "lenet_fallback"

    model = multimnist_model(TASKS, seed=seed)
    x = torch.rand(BATCH, 1, 28, 28, generator=g)

    def losses() -> list[Tensor]:
        return task_losses(model(x), targets, TASKS)

    return model, losses, "multimnist_model"


class _LeNet(nn.Module):
    """Sener & Koltun's MultiMNIST LeNet trunk with four heads (used when mao_lab.problems is absent)."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(1, 10, 5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(10, 20, 5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Flatten(), nn.Linear(320, 50), nn.ReLU(),
        )  # fmt: skip
        self.heads = nn.ModuleList([nn.Linear(50, 10), nn.Linear(50, 10), nn.Linear(50, 1), nn.Linear(50, 784)])

    def forward(self, x: Tensor) -> list[Tensor]:
        z = self.trunk(x)
        return [head(z) for head in self.heads]


def _lenet(seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _LeNet()


class _Capture:
    """An observer keeping the last step record (to time the recorder's own work on a real record)."""

    def __init__(self) -> None:
        self.record: StepRecord | None = None

    def wants_record(self) -> bool:
        return True

    def __call__(self, record: StepRecord) -> None:
        self.record = record


def run_recorder_benchmark(quick: bool = False, seed: int = 0, threads: int = THREADS) -> dict[str, object]:
    """Time a training step with the recorder on (every step) and off; return the JSON-ready result.

    Args:
        quick: a run of seconds (fewer repetitions: the same measurement, rougher).
        seed: seed of the model and the batch.
        threads: ``torch.set_num_threads`` for the run (restored afterwards).

    Returns:
        ``{"benchmark": "recorder", "overhead_ratio": on / off (ratio of the medians), ...}`` with
        ``overhead_ratio_paired`` (median of the per-repetition ratios), ``overhead_ratio_parts``
        (``1 + (recorder_call_ms + task_updates_ms) / step_ms_off``, from the two costs timed
        alone: robust on a busy machine), the medians ``step_ms_off``/``step_ms_on``, their
        ``spread_*`` (relative interquartile ranges) and the setup.
    """
    previous_threads = torch.get_num_threads()
    fix_threads(threads)
    try:
        model, losses, model_name = _problem(seed)
        method = make("mao", model.parameters(), lr=LR)
        recorder = Recorder(model, method, every=1)

        def step_on() -> None:
            recorder.attach()
            method.step(losses)

        def step_off() -> None:
            recorder.detach()
            method.step(losses)

        repetitions = 6 if quick else 40
        timings = interleaved_timings(
            {"off": step_off, "on": step_on},
            repetitions=repetitions,
            warmup=1 if quick else 5,
            min_sample_s=0.0 if quick else 0.2,
        )
        recorder.detach()
        off, on = timings.median("off"), timings.median("on")
        # The two samples of a repetition ran back to back: their ratio cancels slow drifts of the
        # machine (other processes, clock changes) that the ratio of the medians still sees.
        paired = statistics.median(a / b for a, b in zip(timings.samples["on"], timings.samples["off"]))
        call_ms, record = _recorder_call_ms(model, method, losses, 30 if quick else 200)
        keep_ms = _task_updates_ms(method, record, 15 if quick else 60)
        monitor = monitor_cost(model, method, losses, quick)  # the live BalanceMonitor, every=10, 5 % budget
        return {
            "benchmark": "recorder",
            "overhead_ratio": round(on / off, 4),
            "overhead_ratio_paired": round(paired, 4),
            "overhead_ratio_parts": round(1 + (call_ms + keep_ms) / (off * 1e3), 4),
            "step_ms_off": round(off * 1e3, 3),
            "step_ms_on": round(on * 1e3, 3),
            "recorder_call_ms": round(call_ms, 4),
            "task_updates_ms": round(keep_ms, 4),
            "spread_off": round(timings.spread("off"), 4),
            "spread_on": round(timings.spread("on"), 4),
            "tasks": len(TASKS),
            "method": "mao",
            "model": model_name,
            "batch": BATCH,
            "threads": torch.get_num_threads(),
            "recorded_steps": len(recorder),
            "repetitions": repetitions,
            "quick": quick,
            "seed": seed,
            **monitor,
        }
    finally:
        torch.set_num_threads(previous_threads)


def _recorder_call_ms(
    model: nn.Module, method: Method, losses: Callable[[], list[Tensor]], calls: int
) -> tuple[float, StepRecord]:
    """Median milliseconds of the recorder's own work on one real step record (and that record)."""
    capture = _Capture()
    handle = method.add_observer(capture)
    method.step(losses)
    handle.remove()
    assert capture.record is not None
    probe = Recorder(model, method, every=1)
    probe.detach()
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter()
        probe(capture.record)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e3, capture.record


def _task_updates_ms(method: Method, record: StepRecord, calls: int) -> float:
    """Median extra milliseconds MAO's update spends keeping each task's part of it for a record."""
    optimizer = getattr(method, "optimizer", None)
    # MAO's update alone is private (its one public step is ``step``); MTAdam's is public.
    apply = getattr(optimizer, "_apply_task_gradients", None) or getattr(optimizer, "apply_task_gradients", None)
    if record.task_grads is None or apply is None:
        return 0.0
    samples = {True: [], False: []}
    for _ in range(calls):
        for keep in (False, True):
            t0 = time.perf_counter()
            apply(record.task_grads, keep_task_updates=keep)
            samples[keep].append(time.perf_counter() - t0)
    return max(0.0, statistics.median(samples[True]) - statistics.median(samples[False])) * 1e3


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mao_lab.bench._recorder_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a run of seconds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(json.dumps(run_recorder_benchmark(quick=args.quick, seed=args.seed), allow_nan=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
