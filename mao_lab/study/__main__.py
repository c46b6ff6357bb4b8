"""``python -m mao_lab.study``: run (or resume) the claims study and write its ledger.

    python -m mao_lab.study --workers 2 --out runs/study          # the full study (make study)
    python -m mao_lab.study --smoke --out runs/study-smoke         # the tiny CI study: its numbers mean nothing
    python -m mao_lab.study --scheduler tcp://host:8786 --out ...  # on an existing Dask cluster
    python -m mao_lab.study --ledger-only runs/study --out docs/claims   # rewrite the ledger files from a study
    python -m mao_lab.study --estimate --workers 2                  # time every configuration, predict the wall time
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from ._design import StudyDesign, full_design, smoke_design


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mao_lab.study", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="the study folder (default runs/study, or runs/study-smoke)")
    parser.add_argument("--smoke", action="store_true", help="the tiny study (seconds; its numbers mean nothing)")
    parser.add_argument("--workers", type=int, default=0, help="start a local Dask cluster with this many workers (one thread each)")
    parser.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler")
    parser.add_argument("--outputs", default=None, help="where workers write the points' full folders (a folder or an fsspec URL; "
                        "default: inside --out); small tables always come back through the Dask futures")
    parser.add_argument("--steps", type=int, default=None,
                        help="MultiMNIST training steps of every run (default: the design's; fewer if the machine is busy)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per point (fixed and recorded)")
    parser.add_argument("--estimate", action="store_true",
                        help="time a few steps of every configuration here and predict the study's wall time; run nothing else")
    parser.add_argument("--ledger-only", type=Path, default=None, metavar="STUDY_DIR",
                        help="write the ledger files of a finished study into --out, and nothing else")
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
    return args


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
        print(f"--ledger-only: the stored ledger differs from the recomputed one in {len(differences)} row(s), e.g. "
              f"{differences[0]}; the recomputed ledger was written", file=sys.stderr)
    return 0


def _run(design: StudyDesign, args: argparse.Namespace) -> int:
    from ._study import StudyError, run_study

    out = args.out or Path("runs/study-smoke" if args.smoke else "runs/study")
    client = None
    if args.scheduler or args.workers:
        from dask.distributed import Client

        from ..sweep import local_cluster

        client = Client(args.scheduler) if args.scheduler else Client(local_cluster(args.workers))
    try:
        ledger = run_study(out, design, client=client, threads=args.threads, outputs=args.outputs)
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
    args = _parse(argv)
    if args.ledger_only is not None:
        return _ledger_only(args.ledger_only, args.out)
    design = smoke_design() if args.smoke else full_design()
    if args.steps is not None:
        design = dataclasses.replace(design, steps=args.steps)
    return _estimate(design, args) if args.estimate else _run(design, args)


if __name__ == "__main__":
    sys.exit(main())
