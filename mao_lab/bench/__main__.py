"""The command line of the benchmarks: ``python -m mao_lab.bench --help``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ..runner import OneLineArgumentParser


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quick", action="store_true", help="a run of seconds: few repetitions, rough ratios")
    common.add_argument("--seed", type=int, default=0, help="seed of the models and batches (default 0)")
    common.add_argument("--output", type=Path, default=None, metavar="FILE", help="also write the JSON to FILE")
    machine = argparse.ArgumentParser(add_help=False)  # the benchmarks that run on a chosen device
    machine.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default cpu)")
    machine.add_argument("--threads", type=_positive_int, default=2, help="torch.set_num_threads (default 2)")
    parser = OneLineArgumentParser(
        prog="python -m mao_lab.bench",
        description="Benchmarks of mao_lab. Each prints one JSON line on stdout; progress goes to stderr.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{step,recorder,mgda,problems,ddp}")
    step = sub.add_parser(
        "step",
        parents=[common, machine],
        help="MAO's training step vs TorchJD + Adam, vs the physical limit; update vs Adam; state memory",
    )
    step.add_argument(
        "--vmap", action="store_true", help="also time the vmapped trunk backward (always on with --device cuda)"
    )
    step.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    sub.add_parser("recorder", parents=[common], help="the cost of the gradient recorder")
    sub.add_parser("mgda", parents=[common], help="exact min-norm MGDA vs TorchJD's Frank-Wolfe: accuracy and cost")
    problems = sub.add_parser(
        "problems",
        parents=[common, machine],
        help="MAO vs Adam on the summed loss vs the physical limit on the CelebA (T=40) and NYUv2 (T=3) models",
    )
    problems.add_argument(
        "--batch",
        type=_positive_int,
        default=None,
        help="batch size of every model (default: CelebA 1 / NYUv2 1 on CPU, 256 / 8 on CUDA)",
    )
    problems.add_argument(
        "--repetitions",
        type=_positive_int,
        default=None,
        help="timed repetitions per candidate (default 3 on CPU, 20 on CUDA; 1 with --quick)",
    )
    problems.add_argument("--only", choices=("celeba", "nyuv2"), default=None, help="run one model only")
    sub.add_parser("ddp", parents=[common], help="a step under DDP (2 gloo processes): MAO, PCGrad, UW vs DDP + Adam")
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.output is not None and (args.output.is_dir() or not args.output.name):
        parser.error(f"--output {args.output} is a folder, not a file")  # checked now, not after the whole run
    if getattr(args, "device", None) == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: CUDA is not available on this machine (torch.cuda.is_available() is False)")
    if args.command == "step":
        from ._step_bench import run_step_benchmark

        result = run_step_benchmark(
            quick=args.quick,
            seed=args.seed,
            device=args.device,
            threads=args.threads,
            progress=not args.no_progress,
            vmap=True if args.vmap else None,
        )
    elif args.command == "problems":
        from ._problems_bench import PROBLEM_CONFIGS, run_problems_benchmark

        result = run_problems_benchmark(
            device=args.device,
            threads=args.threads,
            seed=args.seed,
            repetitions=1 if args.quick and args.repetitions is None else args.repetitions,
            batch=args.batch,
            configs=[c for c in PROBLEM_CONFIGS if args.only in (None, c.label)],
            progress=lambda line: print(line, file=sys.stderr, flush=True),
        )
    elif args.command == "ddp":
        from ._ddp_bench import run_ddp_benchmark

        result = run_ddp_benchmark(quick=args.quick, seed=args.seed)
    elif args.command == "mgda":
        from ._mgda_bench import run_mgda_benchmark

        result = run_mgda_benchmark(quick=args.quick, seed=args.seed)
    else:
        try:
            from ._recorder_bench import run_recorder_benchmark
        except ImportError as exc:
            print(
                f"python -m mao_lab.bench recorder: the recorder benchmark is not available ({exc}); "
                "it lives in mao_lab/bench/_recorder_bench.py as run_recorder_benchmark(quick, seed)",
                file=sys.stderr,
            )
            return 2
        result = run_recorder_benchmark(quick=args.quick, seed=args.seed)
    line = json.dumps(result, allow_nan=False)
    print(line, flush=True)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
