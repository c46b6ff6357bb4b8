"""Interleaved timing: every candidate is timed once per repetition, in rotating order.

Machine noise (another process waking up, frequency changes, the allocator settling) then hits every
candidate alike, and the medians over repetitions compare like with like.
"""

from __future__ import annotations

import contextlib
import gc
import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

__all__ = ["Timings", "fix_threads", "interleaved_timings", "synchronizer", "thread_clock"]


def fix_threads(threads: int) -> int:
    """Pin torch's intra-op (and, where still possible, inter-op) thread counts; return the intra-op count."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    # RuntimeError: already fixed once parallel work has started, harmless for these benchmarks.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(threads)
    return torch.get_num_threads()


def thread_clock(threads: int, device: torch.device) -> Callable[[], float]:
    """``time.thread_time``, for timings that a loaded machine barely disturbs: the CPU time of this
    thread, which is all of the work only with one torch thread on the CPU (refused otherwise)."""
    if threads != 1 or device.type != "cpu":
        raise ValueError(f"CPU-time timing needs the CPU and threads=1 (got {device.type}, threads={threads})")
    return time.thread_time


def synchronizer(device: torch.device) -> Callable[[], None]:
    """What to call before reading the clock so that queued device work is counted."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


@dataclass(frozen=True)
class Timings:
    """Per-call seconds of each candidate, one sample per repetition."""

    samples: dict[str, list[float]]
    inner: dict[str, int]

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def spread(self, name: str) -> float:
        """Relative interquartile range of the samples (0.05 = the middle half lies within 5%)."""
        xs = sorted(self.samples[name])
        if len(xs) < 4:
            return (xs[-1] - xs[0]) / statistics.median(xs)
        q1, _, q3 = statistics.quantiles(xs, n=4)
        return (q3 - q1) / statistics.median(xs)


def interleaved_timings(
    candidates: Mapping[str, Callable[[], object]],
    *,
    repetitions: int,
    warmup: int,
    min_sample_s: float,
    budget_s: float | None = None,
    min_repetitions: int = 5,
    sync: Callable[[], None] = lambda: None,
    on_plan: Callable[[int], None] | None = None,
    progress: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Timings:
    """Time every candidate ``repetitions`` times, round-robin, and return per-call seconds.

    Each candidate first runs ``warmup`` times (allocator, caches, lazy init).  A sample repeats a
    candidate ``inner`` times, ``inner`` chosen so that one sample lasts at least ``min_sample_s``, and
    is divided by ``inner``.  The order rotates each repetition so no candidate always runs first.
    The garbage collector is paused during samples and run between repetitions.

    With ``budget_s``, the number of repetitions is what fits in that many seconds (estimated from
    one timed call of each candidate), at least ``min_repetitions`` and at most ``repetitions``;
    ``on_plan`` is told the number chosen.

    ``clock`` reads the time: wall-clock seconds by default; ``time.thread_time`` counts only the CPU
    time of the calling thread, which a loaded machine barely disturbs (with one torch thread, all of
    the work; see :func:`thread_clock`).
    """
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            candidates[name]()
    sync()
    inner = {}
    per_repetition = 0.0
    for name in names:
        t0 = clock()
        candidates[name]()
        sync()
        once = max(clock() - t0, 1e-7)
        inner[name] = max(1, math.ceil(min_sample_s / once))
        per_repetition += once * inner[name]
    if budget_s is not None:
        repetitions = max(min(min_repetitions, repetitions), min(repetitions, int(budget_s / per_repetition)))
    if on_plan is not None:
        on_plan(repetitions)
    samples: dict[str, list[float]] = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()
    try:
        for rep in range(repetitions):
            gc.collect()
            gc.disable()
            shift = rep % len(names)
            for name in names[shift:] + names[:shift]:
                fn, n = candidates[name], inner[name]
                sync()
                t0 = clock()
                for _ in range(n):
                    fn()
                sync()
                samples[name].append((clock() - t0) / n)
            if gc_was_enabled:
                gc.enable()
            if progress is not None:
                progress()
    finally:
        if gc_was_enabled:
            gc.enable()
    return Timings(samples, inner)
