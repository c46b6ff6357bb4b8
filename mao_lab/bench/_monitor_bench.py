"""What the live balance monitor costs a training run, for ``python -m mao_lab.bench recorder``.

The recorder benchmark's model, method and batch train in blocks of steps, a block with a
:class:`~mao_lab.recorder.BalanceMonitor` attached (``every=10``, its default 5 % budget) and one
without, timed interleaved and compared by their medians.  A block is long enough to hold several
refreshes, so a block's time includes the monitor's whole cost (its refreshes and the method keeping
per-task updates on refreshed steps) spread over the steps as in a real run.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

from torch import Tensor, nn

from ..methods import Method
from ..recorder import BalanceMonitor
from ._timing import interleaved_timings

__all__ = ["monitor_cost"]

MONITOR_EVERY = 10


def monitor_cost(
    model: nn.Module, method: Method, losses: Callable[[], list[Tensor]], quick: bool = False
) -> dict[str, float | int]:
    """``monitor_overhead_ratio`` (block with the monitor / block without) and the monitor's own estimate.

    Returns ``monitor_overhead_ratio`` (ratio of the medians), ``monitor_overhead_ratio_paired`` (median
    of the per-repetition ratios), ``monitor_cost_fraction`` (the share of the time the monitor itself
    measured), ``monitor_interval`` (the refresh interval its throttle settled on), ``monitor_block_steps``.
    """
    block = MONITOR_EVERY if quick else 6 * MONITOR_EVERY  # quick: one refresh interval (CI's smoke run)
    monitor = BalanceMonitor(model, method, every=MONITOR_EVERY, label="bench")
    monitor.close()

    def run_block() -> None:
        for _ in range(block):
            method.step(losses)

    def block_on() -> None:
        monitor.attach()
        run_block()
        monitor.close()

    timings = interleaved_timings(
        {"off": run_block, "on": block_on}, repetitions=1 if quick else 10, warmup=1, min_sample_s=0.0
    )
    off, on = timings.median("off"), timings.median("on")
    paired = statistics.median(a / b for a, b in zip(timings.samples["on"], timings.samples["off"]))
    return {
        "monitor_overhead_ratio": round(on / off, 4),
        "monitor_overhead_ratio_paired": round(paired, 4),
        "monitor_cost_fraction": round(monitor.cost_fraction, 4),
        "monitor_interval": monitor.interval,
        "monitor_every": MONITOR_EVERY,
        "monitor_block_steps": block,
    }
