"""MAO's update with the public fused Adam kernel against the private-kernel path it replaced, side by side.

Until commit d7dcf53 the CPU update called ``torch._fused_adam_``, a private torch kernel, for every parameter:
one call per task rank, a parameter with one row of moments updated in place, one with several rows through
a zeroed sum buffer added to it afterwards.  :func:`mao_lab.mao` now calls the same kernel only through the
public ``torch.optim.adam.adam(..., fused=True)``, and by default only where tasks meet (a parameter one
task reaches takes the foreach path, so that one task is ``torch.optim.Adam()`` bit for bit).  This script
times, interleaved in one process on the step benchmark's models and fixed per-task gradients:

- ``default``: ``mao(...)`` with neither flag (what ``MAO`` runs);
- ``fused``: ``mao(..., fused=True)``;
- ``private``: the old path, re-created here (the library never calls the private kernel);
- ``adam_foreach`` and ``adam_fused``: ``torch.optim.adam.adam`` on the summed gradients, once per step.

It prints one JSON line: per configuration the medians (ms) and the ratios ``default_vs_private``,
``fused_vs_private`` and, per task, ``default_vs_adam_foreach`` and ``fused_vs_adam_fused``; and
``fused_equals_private``, whether one step of ``fused`` and of ``private`` leave bit-identical parameters and
moments (the same kernel, the same sums).  The library's code is not changed by any of it.

    PYTHONPATH=$PWD python docs/benchmarks/update_vs_private_kernel.py \
        --json docs/benchmarks/update_vs_private_kernel.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.optim.adam import adam as torch_adam

from mao_lab import mao
from mao_lab._task_gradients import compute_task_gradients
from mao_lab.bench._step_bench import STEP_CONFIGS, _problem
from mao_lab.bench._timing import fix_threads, interleaved_timings

HYPER = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}
Lists = tuple[list[Tensor], list[tuple[Tensor, ...]], list[Tensor], list[Tensor], list[Tensor]]


def private_kernel_update(params, grads, exp_avgs, exp_avg_sqs, steps) -> None:  # noqa: ANN001 (the old signature)
    """The update of d7dcf53^ (``_fused_adam_passes`` with unit task weights, no decay)."""
    torch._foreach_add_(steps, 1.0)
    deltas = [p if len(rows) == 1 else torch.zeros_like(p) for p, rows in zip(params, grads)]
    for r in range(max(len(rows) for rows in grads)):
        ranked = [i for i, rows in enumerate(grads) if len(rows) > r]
        torch._fused_adam_(
            [deltas[i] for i in ranked], [grads[i][r] for i in ranked], [exp_avgs[i][r] for i in ranked],
            [exp_avg_sqs[i][r] for i in ranked], [], [steps[i] for i in ranked], lr=HYPER["lr"],
            beta1=HYPER["beta1"], beta2=HYPER["beta2"], weight_decay=0.0, eps=HYPER["eps"], amsgrad=False,
            maximize=False,
        )  # fmt: skip
    summed = [i for i, rows in enumerate(grads) if len(rows) > 1]
    if summed:
        torch._foreach_add_([params[i] for i in summed], [deltas[i] for i in summed])


def fresh_lists(params: Sequence[Tensor], rows: Sequence[tuple[Tensor, ...]]) -> Lists:
    """A copy of the parameters with zero moments (one row per task reaching each) and zero step counts."""
    copies = [p.detach().clone() for p in params]
    moments = [[torch.zeros(len(r), *p.shape, dtype=p.dtype) for p, r in zip(copies, rows)] for _ in range(2)]
    return copies, list(rows), moments[0], moments[1], [torch.tensor(0.0) for _ in copies]


def adam_call(fused: bool, params: Sequence[Tensor], rows: Sequence[tuple[Tensor, ...]]) -> Callable[[], None]:
    """One Adam update (functional, as ``torch.optim.Adam.step`` calls it) on the summed gradients."""
    copies = [p.detach().clone() for p in params]
    grads = [torch.stack(r).sum(0) for r in rows]
    m, v = [torch.zeros_like(p) for p in copies], [torch.zeros_like(p) for p in copies]
    steps = [torch.tensor(0.0) for _ in copies]
    flags = {"fused": True} if fused else {"foreach": True}
    return lambda: torch_adam(copies, grads, m, v, [], steps, amsgrad=False, maximize=False, **HYPER, **flags)


def update_candidates(params: Sequence[Tensor], rows: Sequence[tuple[Tensor, ...]]) -> dict[str, Callable[[], None]]:
    """The five timed updates, each on its own copy of the parameters and state."""
    default, fused, private = (fresh_lists(params, rows) for _ in range(3))
    return {
        "default": lambda: mao(*default, **HYPER),
        "fused": lambda: mao(*fused, fused=True, **HYPER),
        "private": lambda: private_kernel_update(*private),
        "adam_foreach": adam_call(False, params, rows),
        "adam_fused": adam_call(True, params, rows),
    }


def fused_equals_private(params: Sequence[Tensor], rows: Sequence[tuple[Tensor, ...]]) -> bool:
    """Do ``mao(fused=True)`` and the old path leave bit-identical parameters and moments after one step?"""
    fused, private = fresh_lists(params, rows), fresh_lists(params, rows)
    mao(*fused, fused=True, **HYPER)
    private_kernel_update(*private)
    return all(torch.equal(x, y) for i in (0, 2, 3) for x, y in zip(fused[i], private[i]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repetitions", type=int, default=30)
    parser.add_argument("--json", help="also write the JSON line to this file")
    args = parser.parse_args(argv)
    if not hasattr(torch, "_fused_adam_"):
        print(f"torch {torch.__version__} has no torch._fused_adam_: nothing to compare", file=sys.stderr)
        return 2
    fix_threads(args.threads)
    load_before = os.getloadavg()
    entries = []
    for config in STEP_CONFIGS:
        model, x, loss_fn = _problem(config, 0, torch.device("cpu"))
        params = list(model.parameters())
        task_grads = compute_task_gradients(loss_fn(model(x)), params)
        rows = [tuple(r.clone() for r in task_grads.rows(i)) for i in range(len(params))]
        candidates = update_candidates(params, rows)
        timings = interleaved_timings(candidates, repetitions=args.repetitions, warmup=3, min_sample_s=0.05)
        ms = {name: round(timings.median(name) * 1e3, 4) for name in candidates}
        tasks = config.tasks
        entries.append(
            {
                "model": config.model,
                "tasks": tasks,
                "median_ms": ms,
                "default_vs_private": round(ms["default"] / ms["private"], 3),
                "fused_vs_private": round(ms["fused"] / ms["private"], 3),
                "default_vs_adam_foreach": round(ms["default"] / (tasks * ms["adam_foreach"]), 3),
                "fused_vs_adam_fused": round(ms["fused"] / (tasks * ms["adam_fused"]), 3),
                "fused_equals_private": fused_equals_private(params, rows),
            }
        )
    result = {
        "benchmark": "update_vs_private_kernel",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "threads": args.threads,
        "torch": torch.__version__,
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "configs": entries,
    }
    line = json.dumps(result)
    print(line)
    if args.json:
        with open(args.json, "w") as out:
            out.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
