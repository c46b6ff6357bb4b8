"""``python -m mao_lab.study``: run (or resume) the claims study and write its ledger.

python -m mao_lab.study --workers 2 --out runs/study          # the full study (make study)
python -m mao_lab.study --smoke --out runs/study-smoke         # the tiny CI study: its numbers mean nothing
python -m mao_lab.study --scheduler tcp://host:8786 --out ...  # on an existing Dask cluster
python -m mao_lab.study --ledger-only runs/study --out docs/claims   # rewrite the ledger files from a study
python -m mao_lab.study --estimate --workers 2                  # time every configuration, predict the wall time
python -m mao_lab.study --problem package.module:factory --study-file study.toml --out runs/mine   # your problem
python -m mao_lab.study --scheduler tcp://127.0.0.1:8786 --device cuda --out ...   # one GPU per point (README)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from ..runner import OneLineArgumentParser, folder_argument
from ._design import (
    StudyDesign,
    full_design,
    problem_design,
    read_study_file,
    smoke_design,
)


def _parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="python -m mao_lab.study", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", type=folder_argument, default=None, help="the study folder (default runs/study, or runs/study-smoke)"
    )
    parser.add_argument("--smoke", action="store_true", help="the tiny study (seconds; its numbers mean nothing)")
    parser.add_argument(
        "--workers", type=int, default=0, help="start a local Dask cluster with this many workers (one thread each)"
    )
    parser.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler")
    parser.add_argument(
        "--outputs",
        default=None,
        help="where workers write the points' full folders (a folder or an fsspec URL; "
        "default: inside --out); small tables always come back through the Dask futures",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="MultiMNIST training steps of every run (default: the design's; fewer if the machine is busy)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per point (fixed and recorded)")
    parser.add_argument(
        "--estimate",
        action="store_true",
        help="time a few steps of every configuration here and predict the study's wall time; run nothing else",
    )
    parser.add_argument(
        "--ledger-only",
        type=folder_argument,
        default=None,
        metavar="STUDY_DIR",
        help="write the ledger files of a finished study into --out, and nothing else",
    )
    parser.add_argument(
        "--problem",
        default=None,
        metavar="MODULE:FACTORY",
        help="your problem's import path (docs/your-problem.md); default: the shipped MultiMNIST and regression",
    )
    parser.add_argument(
        "--study-file",
        type=Path,
        default=None,
        metavar="TOML",
        help="a study file: problem, options, methods, p2_methods, lrs, seeds, tuning_seeds, finalists, steps, "
        "batch_size, eval_every, record_every",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="where every point trains: cpu, cuda, cuda:1 (default: the GPU when the point's machine has one); "
        "with a Dask client and cuda, each point holds one GPU resource",
    )
    parser.add_argument(
        "--autocast",
        default=None,
        choices=("bf16", "fp16"),
        help="run the forward passes under torch.autocast in this precision",
    )
    return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line, with every number checked (``SystemExit`` and a message naming the option otherwise)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.ledger_only is not None and args.out is None:
        parser.error("--ledger-only needs --out (where the ledger files go)")
    if args.device is not None:
        import torch

        try:
            torch.device(args.device)
        except (RuntimeError, TypeError):
            parser.error(f"--device must be a torch device such as cpu, cuda or cuda:1, got {args.device!r}")
    try:
        _check_folders(args)
    except ValueError as error:
        parser.error(str(error))
    return args


def _design(args: argparse.Namespace) -> StudyDesign:
    """The shipped study's design, or your problem's (``--problem`` and ``--study-file``); ``ValueError`` naming
    what is wrong."""
    settings = read_study_file(args.study_file) if args.study_file is not None else {}
    spec = args.problem or settings.get("problem")
    if spec is None:
        if settings:
            raise ValueError(
                f'study file {args.study_file}: it needs a problem (problem = "package.module:factory" or --problem)'
            )
        design = smoke_design() if args.smoke else full_design()
    else:
        from ..problems import load_problem

        options = dict(settings.get("options", {}))
        problem = load_problem(spec, **options)
        design = problem_design(problem, spec, options=options, settings=settings, smoke=args.smoke)
    if args.steps is not None:
        design = dataclasses.replace(design, steps=args.steps)
    if args.device is not None and args.scheduler is None:  # the points run here: the device must be here
        from ..experiments import resolve_device

        resolve_device(args.device)
    return design


def _check_folders(args: argparse.Namespace) -> None:
    """Refuse, before anything is created, folders that cannot be what the options say they are."""
    from ..sweep import check_local_workers, check_scheduler_address

    check_local_workers(args.workers)
    if args.scheduler is not None:
        check_scheduler_address(args.scheduler, "--scheduler")
    if args.outputs is not None and not args.outputs.strip():
        raise ValueError("--outputs is empty: give a folder or an fsspec URL, or leave it out")
    if args.workers and args.scheduler:
        raise ValueError("give --workers (a local cluster) or --scheduler (an existing one), not both")
    for option, folder in (("--out", args.out), ("--ledger-only", args.ledger_only)):
        if folder is not None and folder.exists() and not folder.is_dir():
            raise ValueError(f"{option} {folder} is a file, not a folder")
    if args.ledger_only is not None:
        # What the folder must hold is --ledger-only's own check (mao_lab.study._ledger); here only that it exists,
        # so that nothing is created for a mistyped name.
        if not args.ledger_only.is_dir():
            raise ValueError(f"--ledger-only {args.ledger_only}: no such folder (give the folder of a finished study)")
        return
    for name in ("design.json", "provenance.json"):  # a study to run or resume: its records must be readable
        path = args.out / name if args.out is not None else None
        if path is not None and path.exists():
            _readable_json_object(path)


def _readable_json_object(path: Path) -> None:
    import json

    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ValueError(
            f"{path} is damaged ({type(error).__name__}: {' '.join(str(error).split())[:200]}); "
            "restore it, or choose another folder"
        ) from None
    if not isinstance(value, dict):
        kind = type(value).__name__
        message = f"{path} is damaged (a JSON {kind}, not an object); restore it, or choose another folder"
        raise ValueError(message)  # noqa: TRY004 - bad data in a file, not a bad argument type


def _estimate(design: StudyDesign, args: argparse.Namespace) -> int:
    from ._estimate import estimate_study

    table, totals = estimate_study(design, max(args.workers, 1), threads=args.threads)
    print(table.round(2).to_string(index=False))
    print({k: round(v, 1) for k, v in totals.items()})
    print(f"predicted wall time with {max(args.workers, 1)} worker(s): {totals['total_s'] / 60:.1f} min")
    return 0


def _ledger_only(study_dir: Path, out: Path) -> int:
    from ._ledger import LedgerInputError, ledger_only

    try:
        written, differences = ledger_only(study_dir, out)
    except LedgerInputError as error:
        print(f"--ledger-only: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    if differences:
        print(
            f"--ledger-only: the stored ledger differs from the recomputed one in {len(differences)} row(s), e.g. "
            f"{differences[0]}; the recomputed ledger was written",
            file=sys.stderr,
        )
    return 0


def _run(design: StudyDesign, args: argparse.Namespace) -> int:
    from ._study import StudyError, run_study

    out = args.out or Path("runs/study-smoke" if args.smoke else "runs/study")
    client = None
    if args.scheduler or args.workers:
        from dask.distributed import Client

        from ..sweep import local_cluster

        gpus = {"GPU": 1} if str(args.device or "").startswith("cuda") else None  # one point per local worker's GPU
        client = (
            Client(args.scheduler, timeout=30)
            if args.scheduler
            else Client(local_cluster(args.workers, resources=gpus))
        )
    try:
        ledger = run_study(
            out,
            design,
            client=client,
            threads=args.threads,
            outputs=args.outputs,
            device=args.device,
            autocast=args.autocast,
        )
    except StudyError as error:
        print(f"study stopped: {error}", file=sys.stderr)
        return 1
    finally:
        if client is not None:
            client.close()
    claims = ledger[ledger["part"] == "(claim)"][["claim", "verdict", "seeds"]]
    print(claims.to_string(index=False))
    print(f"ledger in {out}/ledger.md" + ("  (smoke study: its numbers mean nothing)" if design.smoke else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; every error is one line on stderr and exit code 2 (a failed study point: exit 1)."""
    args = _parse(argv)
    try:
        if args.ledger_only is not None:
            return _ledger_only(args.ledger_only, args.out)
        design = _design(args)
        return _estimate(design, args) if args.estimate else _run(design, args)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        # A bad study file, problem or design, a damaged study folder, an unreachable scheduler, a full disk:
        # one line naming it, not a traceback, and nothing written.
        message = " ".join(str(error).split())[:500] or "no details"
        kind = "" if type(error) is ValueError else f"{type(error).__name__}: "  # our own checks name the problem
        print(f"{_parser().prog}: error: {kind}{message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
