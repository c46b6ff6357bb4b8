"""Run names that say where each run came from, for the explorers of runs opened from several places.

:func:`~mao_lab.experiments.find_run_dirs` names a run by its path below the folder it was found in, so the
runs of ``02_imbalanced_regression`` are ``sum``, ``uw``, ... whichever notebook, sweep or demo made them.
:func:`origin_names` names them by their path below the folder they all have in common, so that a name
starts with where the run came from (``02_imbalanced_regression/sum``, ``03_multimnist/mao-seed0``,
``demo_runs/mao``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["origin_names"]


def origin_names(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """A name per run folder: its path below the runs' closest common folder not called ``runs``, ``runs``
    folders left out; when that leaves a run's name alone, the common folder's name comes first.

    >>> origin_names(["out/02_imbalanced_regression/runs/sum", "out/02_imbalanced_regression/runs/mao"])
    ['02_imbalanced_regression/sum', '02_imbalanced_regression/mao']
    >>> origin_names(["out/02_regression/runs/mao", "out/03_multimnist/runs/mao-seed0", "out/sweep/lr=0.1/runs/mao"])
    ['02_regression/mao', '03_multimnist/mao-seed0', 'sweep/lr=0.1/mao']
    >>> origin_names(["out/sweep/lr=0.1/runs/mao", "out/sweep/lr=1/runs/mao"])
    ['lr=0.1/mao', 'lr=1/mao']
    >>> origin_names(["out/04_balance_explorer/demo_runs/sum"])
    ['demo_runs/sum']
    """
    folders = [Path(os.path.abspath(p)) for p in paths]
    if not folders:
        return []
    common = Path(os.path.commonpath(folders))
    if common in folders:  # one run, or runs inside a run: the common folder is a run itself
        common = common.parent
    while common.name == "runs" and common != common.parent:
        common = common.parent
    below = [[part for part in folder.relative_to(common).parts if part != "runs"] for folder in folders]
    if any(len(parts) < 2 for parts in below):  # a bare run name: say which folder it is from
        below = [[common.name, *parts] for parts in below]
    names: list[str] = []
    for parts in below:
        name, n = "/".join(parts), 2
        while name in names:
            name, n = f"{'/'.join(parts)} ({n})", n + 1
        names.append(name)
    return names
