"""What the experiments call things: the methods' readable names and the names of runs, in one place."""

from __future__ import annotations

__all__ = ["METHOD_LABELS", "SINGLE_TASK", "method_label", "parse_run_name", "run_name"]

SINGLE_TASK = "single-task"
"""The ``method`` of the single-task baselines' rows: the same network with one head and one task's loss."""

METHOD_LABELS: dict[str, str] = {
    "sum": "Adam on the sum",
    "mean": "Adam on the mean",
    "uw": "uncertainty weighting",
    "gradnorm": "GradNorm",
    "io": "IO (one Adam per task)",
    "ius": "IUS",
    "mao": "MAO",
    "mgda": "MGDA",
    "mgda_fw": "MGDA (Frank-Wolfe)",
    "pcgrad": "PCGrad",
    "upgrad": "UPGrad",
    "cagrad": "CAGrad",
    "nash_mtl": "Nash-MTL",
    "famo": "FAMO",
    "mtadam": "MTAdam",
    SINGLE_TASK: "single task (Adam)",
}
"""Readable names of the methods in tables, figures and widgets (others show their registry name)."""


def method_label(method: str) -> str:
    """The readable name of a method (:data:`METHOD_LABELS`), or its registry name.

    >>> method_label("mgda"), method_label("mgda_fw"), method_label("single-task"), method_label("rlw")
    ('MGDA', 'MGDA (Frank-Wolfe)', 'single task (Adam)', 'rlw')
    """
    return METHOD_LABELS.get(method, method)


def run_name(method: str, seed: int) -> str:
    """The name (and folder) of a run.

    >>> run_name("mao", 2)
    'mao-seed2'
    """
    return f"{method}-seed{seed}"


def parse_run_name(name: str) -> tuple[str, int]:
    """The inverse of :func:`run_name`.

    >>> parse_run_name("single-task-seed10")
    ('single-task', 10)
    """
    method, separator, seed = str(name).rpartition("-seed")
    if not separator or not method or not seed.isdigit():
        raise ValueError(f"{name!r} is not a run name of the form '<method>-seed<k>'")
    return method, int(seed)
