"""How much memory an optimizer's state will take, known before it is allocated; a clear error when it will not fit.

MAO keeps two moments per task for every parameter several tasks reach: its state is about ``2 T`` times
the shared parameters, against Adam's ``2``.  :func:`state_bytes` says how many bytes the state of MAO
or of any method will hold once every parameter has been stepped, from the parameters, their dtypes and
which tasks reach which parameter (by default every task reaches every parameter: an upper bound).
It counts what grows with the model, the moments and step counters (a method's ``state_dict()
["optimizer"]``); a weighting's or an aggregator's own state (task weights, a random generator) adds a
few kilobytes that depend on the number of tasks only.

>>> import torch
>>> from mao_lab import MAO, state_bytes
>>> trunk, head_a, head_b = torch.nn.Linear(100, 100), torch.nn.Linear(100, 1), torch.nn.Linear(100, 1)
>>> params = [*trunk.parameters(), *head_a.parameters(), *head_b.parameters()]
>>> reach = {**{p: (0, 1) for p in trunk.parameters()}, **{p: (0,) for p in head_a.parameters()},
...          **{p: (1,) for p in head_b.parameters()}}
>>> state_bytes(MAO(params), num_tasks=2, reach=reach)   # 2 tasks x 2 moments x 10100 floats, heads once
163240
>>> state_bytes("sum", 2, params=params, reach=reach)    # Adam: 2 moments per parameter
82440

On CUDA, :func:`check_fits` compares a number of bytes with what the device has free; MAO calls it
before allocating the state of a step, so that running out of memory is a clear error that changes
nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ._mao import MAO
    from ._task_gradients import TaskGradients
    from .methods import Method

__all__ = ["Reach", "check_fits", "free_bytes", "state_bytes", "tasks_reaching"]

Reach = Callable[[Tensor], tuple[int, ...]]
"""The (sorted) tasks whose loss reaches a parameter."""


def tasks_reaching(num_tasks: int, reach: Mapping[Tensor, Collection[int]] | None = None) -> Reach:
    """``reach`` as a function of the parameter; a parameter it does not list is reached by every task."""
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
        raise ValueError(f"num_tasks must be an integer >= 1, got {num_tasks!r}")
    every = tuple(range(num_tasks))
    given = {} if reach is None else {id(p): tuple(sorted(set(tasks))) for p, tasks in reach.items()}
    for tasks in given.values():
        if any(isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < num_tasks for k in tasks):
            raise ValueError(f"reach lists tasks {tasks}; the tasks are 0 .. {num_tasks - 1}")
    return lambda p: given.get(id(p), every)


def step_counter_bytes() -> int:
    """A step counter as torch.optim and MAO keep it: a 0-dim tensor of the default float dtype's precision
    (``float64`` when that is the default, else ``float32``)."""
    return 8 if torch.get_default_dtype() == torch.float64 else 4


def state_bytes(
    optimizer: MAO | Method | str,
    num_tasks: int,
    params: Iterable[Tensor] | None = None,
    *,
    reach: Mapping[Tensor, Collection[int]] | None = None,
    **hyperparameters: Any,
) -> int:
    """The bytes of the state ``optimizer`` holds once it has stepped every parameter, with ``num_tasks`` tasks.

    Args:
        optimizer: a :class:`~mao_lab.MAO`, a method, or a method's name (then made over ``params`` with
            ``hyperparameters``: nothing is allocated).
        num_tasks: the number of tasks.
        reach: for each parameter, the tasks whose loss reaches it (a parameter not listed: every task);
            without it, every task reaches every parameter (an upper bound for MAO and MTAdam).
    """
    from .methods import make

    if isinstance(optimizer, str):
        if params is None:
            raise TypeError(f"state_bytes({optimizer!r}, ...) needs the params the method would step")
        optimizer = make(optimizer, params, **hyperparameters)
    elif params is not None or hyperparameters:
        raise TypeError("params and hyperparameters are for a method given by name")
    estimate = getattr(optimizer, "state_bytes", None)
    if estimate is None:
        raise TypeError(f"state_bytes knows MAO and the methods of mao_lab.methods, not {type(optimizer).__name__}")
    return int(estimate(num_tasks, reach=reach))


def free_bytes(device: torch.device) -> int | None:
    """What ``device`` can still allocate: CUDA's free memory plus what the caching allocator holds unused;
    ``None`` where it is not known (the CPU)."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def check_fits(needed: int, device: torch.device, what: str) -> None:
    """Raise ``torch.OutOfMemoryError`` naming ``what`` if ``device`` has less than ``needed`` bytes free."""
    free = free_bytes(device)
    if free is not None and needed > free:
        raise torch.OutOfMemoryError(
            f"{what} needs {_size(needed)} more on {device}, which has {_size(free)} free; nothing was "
            "allocated or changed (fewer tasks, a smaller model, or mao_lab.state_bytes to plan)"
        )


def plan_task_state(
    param_groups: Iterable[Mapping[str, Any]],
    state: Mapping[Tensor, Any],
    task_grads: TaskGradients,
    bytes_per_task: Callable[[Tensor], int],
    what: str,
) -> list[tuple[Tensor, dict[str, Any] | None, tuple[int, ...]]]:
    """The parameters of ``param_groups`` whose per-task state this step of ``task_grads`` must (re)make: those
    stepped for the first time and those a task new to them reaches, each as ``(p, its state now or None, the
    sorted tasks of its new state)``.

    Before anything is allocated, :func:`check_fits` checks that ``bytes_per_task(p)`` per task of each fits on
    its device (``what`` names the state in the error), so that an optimizer can allocate the whole plan and
    then commit it: running out of memory leaves its state as it was.
    """
    where = task_grads.index()
    plans: list[tuple[Tensor, dict[str, Any] | None, tuple[int, ...]]] = []
    needed: dict[torch.device, int] = {}
    for group in param_groups:
        for p in group["params"]:
            i = where.get(id(p))
            if i is None or not task_grads.tasks[i]:
                continue
            old = state.get(p) or None
            tasks = tuple(sorted(set(task_grads.tasks[i]) | set(old["tasks"] if old else ())))
            if old is None or tasks != tuple(old["tasks"]):
                plans.append((p, old, tasks))
                needed[p.device] = needed.get(p.device, 0) + len(tasks) * bytes_per_task(p)
    for device, count in needed.items():
        check_fits(count, device, what)
    return plans


def _size(n: int) -> str:
    """``n`` bytes, readable.

    >>> _size(3 * 2**30), _size(1536)
    ('3.00 GiB', '1.50 KiB')
    """
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} bytes"
