"""Per-task gradients: the currency shared by MAO, the other methods and the recorder.

Every task-balancing method that looks at more than the summed loss needs, for each parameter, the
gradient of every task's loss.  :class:`TaskGradients` holds them once, so that an optimizer, a
gradient aggregator and the recorder can all use the same tensors without a second backward pass.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self, overload

import torch
from torch import Tensor
from torch.autograd.graph import Node

from ._clipping import clipped
from ._loss_scaling import LossScaleOverflow, found_non_finite, unscaled

if TYPE_CHECKING:
    from ._distributed import PendingAverage, Replicas

__all__ = [
    "TaskGradients",
    "TaskUpdates",
    "TaskInputError",
    "TaskLosses",
    "as_task_losses",
    "check_task_reach",
    "compute_task_gradients",
    "match_task_order",
    "ordered_task_losses",
]

TaskLosses = Sequence[Tensor] | Mapping[str, Tensor]
"""Per-task scalar losses: a sequence (tasks named ``task0``, ``task1``, ...) or a name → loss mapping."""


class TaskInputError(ValueError):
    """Bad per-task input (losses or gradients); the message names the task and the problem."""


def as_task_losses(losses: TaskLosses) -> tuple[tuple[str, ...], list[Tensor]]:
    """Validate per-task losses and return ``(task_names, losses)``.

    Every loss must be a finite scalar tensor attached to an autograd graph, and the graphs must tell
    which parameters each task reaches: a model compiled whole by ``torch.compile`` is refused with a
    clear error (see :func:`check_task_reach`).

    >>> w = torch.ones(2, requires_grad=True)
    >>> as_task_losses({"a": w.sum(), "b": (2 * w).sum()})[0]
    ('a', 'b')
    >>> as_task_losses([w.sum(), w])
    Traceback (most recent call last):
    ...
    mao_lab._task_gradients.TaskInputError: task 'task1' (index 1): the loss must be a scalar, got shape (2,)
    """
    if isinstance(losses, Tensor):
        raise TaskInputError(
            "expected one scalar loss per task (a sequence or a dict of tensors), got a single tensor; "
            "unpack it, e.g. list(losses)"
        )
    if isinstance(losses, Mapping):
        names = tuple(str(k) for k in losses)
        values = list(losses.values())
        if len(set(names)) != len(names):
            raise TaskInputError(f"task names must be distinct as strings, got {tuple(losses)}")
    else:
        values = list(losses)
        names = tuple(f"task{k}" for k in range(len(values)))
    if not values:
        raise TaskInputError("no task losses were given: expected at least one scalar loss")
    for k, (name, loss) in enumerate(zip(names, values)):
        where = f"task {name!r} (index {k})"
        if not isinstance(loss, Tensor):
            raise TaskInputError(f"{where}: the loss must be a torch.Tensor, got {type(loss).__name__}")
        if loss.numel() != 1:
            raise TaskInputError(f"{where}: the loss must be a scalar, got shape {tuple(loss.shape)}")
        if not loss.requires_grad:
            raise TaskInputError(
                f"{where}: the loss has no autograd graph (was it computed under torch.no_grad() or detached?)"
            )
    finite = torch.isfinite(torch.stack([loss.detach().reshape(()) for loss in values]))
    if not bool(finite.all()):
        k = int((~finite).nonzero()[0])
        raise TaskInputError(f"task {names[k]!r} (index {k}): the loss is {values[k].item()}")
    check_task_reach(values, names)
    return names, values


# AOTAutograd (under every ``torch.compile`` backend but "eager") turns a compiled graph into one
# autograd node of this class, made by this module: until the module is imported no such node exists.
_COMPILED_NODE = "CompiledFunctionBackward"
_COMPILED_NODE_MODULE = "torch._functorch._aot_autograd.runtime_wrappers"


def check_task_reach(losses: Sequence[Tensor], task_names: Sequence[str] | None = None) -> None:
    """Refuse losses whose graphs hide which parameters each task reaches: a model compiled whole.

    Every per-task method learns which parameters a task reaches from autograd: a parameter the task's
    loss does not reach gets the gradient ``None`` (MAO keeps no moments for that task there, IUS does
    not step it, an aggregator does not count the task there).  ``torch.compile`` (any backend but
    ``"eager"``) makes a compiled graph one autograd node, whose backward gives every input a gradient
    (zeros where ``None`` was meant) whichever of its outputs a loss uses.  Compiled whole, a multi-task
    model therefore makes every task seem to reach every head: MAO would keep moments it does not need,
    and IUS, IO and the aggregators would silently train otherwise.

    So this raises :class:`TaskInputError` when the losses of two tasks enter one compiled node through
    different sets of its outputs (each task using its own prediction, say) and more than one of the
    node's inputs takes a gradient.  Other compiled nodes keep eager mode's reach and pass: tasks that
    enter a node through the same outputs reach the same parameters below it in eager mode too, and a
    node with one input taking a gradient passes it to every task that enters it.  A compiled shared
    trunk is entered by every task through its one output, the features: compile the trunk only,
    ``model.trunk = torch.compile(model.trunk)``.  The check is conservative: a compiled module with
    several outputs that the tasks use differently is refused even if each output reads every input.

    :func:`as_task_losses` calls it, so every method's ``step``, :meth:`MAO.step <mao_lab.MAO.step>` and
    :func:`compute_task_gradients` refuse such losses before they change anything.  Cost: nothing until
    a graph has been compiled in the process (AOTAutograd's module is not imported before); then one
    walk of the losses' graphs, and one per task only where tasks enter a compiled node through several
    outputs.

    >>> w = torch.ones(2, requires_grad=True)
    >>> check_task_reach([w.sum(), (2 * w).sum()])  # no compiled graph: nothing to refuse
    """
    if _COMPILED_NODE_MODULE not in sys.modules:
        return
    entries = _compiled_node_entries(losses)  # a compiled node -> the outputs the losses enter it by
    suspects = [node for node, outputs in entries.items() if len(outputs) > 1 and _differentiable_inputs(node) > 1]
    if not suspects:
        return
    names = tuple(task_names) if task_names is not None else _default_names(len(losses))
    per_task = [_compiled_node_entries([loss]) for loss in losses]
    for node in suspects:
        used = [(k, frozenset(found[node])) for k, found in enumerate(per_task) if found.get(node)]
        for k, outputs in used[1:]:
            j, first = used[0]
            if outputs != first:
                raise TaskInputError(
                    f"tasks {names[j]!r} (index {j}) and {names[k]!r} (index {k}) use different outputs "
                    f"({sorted(first)} and {sorted(outputs)}) of one torch.compile graph: a compiled graph is "
                    "a single autograd node, so every task would get zero gradients (not None) for the "
                    "parameters only the other tasks reach, and per-task moments, independent steps and "
                    "gradient aggregators would silently treat them as shared. Compile the shared trunk "
                    "only, e.g. model.trunk = torch.compile(model.trunk), not the whole model; nothing "
                    "was changed"
                )


def _compiled_node_entries(losses: Sequence[Tensor]) -> dict[Node, set[int]]:
    """Every compiled node in the graphs of ``losses``, with the indices of its outputs the graphs enter
    it by (an edge of autograd's graph names the output of the node it leads to)."""
    entries: dict[Node, set[int]] = {}
    edges: list[tuple[Node | None, int]] = [(loss.grad_fn, loss.output_nr) for loss in losses]
    seen: set[Node] = set()
    while edges:
        node, output = edges.pop()
        if node is None:
            continue
        if type(node).__name__ == _COMPILED_NODE:
            entries.setdefault(node, set()).add(output)
        if node not in seen:
            seen.add(node)
            edges.extend(node.next_functions)
    return entries


def _differentiable_inputs(node: Node) -> int:
    """How many of a node's inputs take a gradient (with one, every task reaches the same thing)."""
    return sum(child is not None for child, _ in node.next_functions)


def match_task_order(names: tuple[str, ...], expected: tuple[str, ...] | None, by_name: bool) -> list[int] | None:
    """How to put tasks named ``names`` in the order ``expected`` (the order the per-task state has).

    Tasks given by name (a dict of losses, gradients with their names) are matched by name: the
    same names in another order are the same tasks, and the returned positions put them back in
    ``expected``'s order; a new or missing name is a :class:`TaskInputError`.  Tasks given by
    position (a list) are taken in order.  ``None`` means no reordering is needed.  The number of
    tasks is the caller's to check first.

    >>> match_task_order(("b", "a"), ("a", "b"), by_name=True)
    [1, 0]
    >>> match_task_order(("a", "c"), ("a", "b"), by_name=True)
    Traceback (most recent call last):
    ...
    mao_lab._task_gradients.TaskInputError: the tasks are named ('a', 'c'), but the state was built for ('a', 'b'): new 'c', missing 'b' (a renamed task would silently take another task's state)
    """  # noqa: E501 - a doctest's expected exception message is one line
    if expected is None or names == expected or not by_name:
        return None
    if len(set(names)) != len(names):
        raise TaskInputError(f"task names must be distinct, got {names}")
    if set(names) != set(expected):
        new = [n for n in names if n not in expected]
        missing = [n for n in expected if n not in names]
        raise TaskInputError(
            f"the tasks are named {names}, but the state was built for {expected}: "
            f"new {', '.join(map(repr, new))}, missing {', '.join(map(repr, missing))} "
            "(a renamed task would silently take another task's state)"
        )
    return [names.index(n) for n in expected]


def ordered_task_losses(losses: TaskLosses, expected: tuple[str, ...] | None) -> tuple[tuple[str, ...], list[Tensor]]:
    """:func:`as_task_losses`, with the tasks put in the order ``expected`` (see :func:`match_task_order`).

    Losses given as a dict are matched by name; a list by position.  With another number of tasks
    than ``expected`` they are returned as given: the caller says what the count must be.

    >>> w = torch.ones(1, requires_grad=True)
    >>> names, losses = ordered_task_losses({"b": 2 * w.sum(), "a": w.sum()}, ("a", "b"))
    >>> names, [float(loss.detach()) for loss in losses]
    (('a', 'b'), [1.0, 2.0])
    """
    names, values = as_task_losses(losses)
    if expected is None or len(names) != len(expected):
        return names, values
    order = match_task_order(names, expected, by_name=isinstance(losses, Mapping))
    if order is not None:
        values = [values[i] for i in order]
    return expected, values


def _default_names(count: int) -> tuple[str, ...]:
    return tuple(f"task{k}" for k in range(count))


@dataclass(frozen=True)
class _PerTaskStacks:
    """What :class:`TaskGradients` and :class:`TaskUpdates` share: per parameter, one stacked tensor of
    the tasks that reach it (``tasks[i]``, increasing), shape ``(len(tasks[i]), *params[i].shape)``."""

    task_names: tuple[str, ...]
    params: tuple[Tensor, ...]
    tasks: tuple[tuple[int, ...], ...]

    @property
    def _stacks(self) -> Sequence[Tensor]:
        raise NotImplementedError

    def __post_init__(self) -> None:
        stacks = self._stacks
        if not (len(self.params) == len(self.tasks) == len(stacks)):
            raise ValueError("params, tasks and the stacked tensors must have one entry per parameter")
        lazy = isinstance(stacks, _LazyStacks)
        num_tasks = self.num_tasks
        for i, (p, ks) in enumerate(zip(self.params, self.tasks)):
            shape = stacks.shape(i) if lazy else tuple(stacks[i].shape)
            if shape != (len(ks), *p.shape):
                raise ValueError(
                    f"parameter {i}: the stacked tensors have shape {shape}, expected "
                    f"{(len(ks), *p.shape)} (tasks {ks}, parameter shape {tuple(p.shape)})"
                )
            if ks and (ks[0] < 0 or ks[-1] >= num_tasks or any(a >= b for a, b in zip(ks, ks[1:]))):
                raise ValueError(f"parameter {i}: task indices {ks} must increase within [0, {self.num_tasks})")

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    def index(self) -> dict[int, int]:
        """Map ``id(param)`` to its position in :attr:`params`."""
        return {id(p): i for i, p in enumerate(self.params)}

    def rows(self, i: int) -> tuple[Tensor, ...]:
        """The tensors of parameter ``i``, one per task in ``tasks[i]``, without stacking them."""
        stacks = self._stacks
        if isinstance(stacks, _LazyStacks):
            return stacks.rows(i)
        return tuple(stacks[i].unbind(0))

    def dense(self, i: int) -> Tensor:
        """The tensors of parameter ``i`` for all ``T`` tasks, zeros where a task does not reach it."""
        stacked = self._stacks[i]
        if len(self.tasks[i]) == self.num_tasks:
            return stacked
        out = stacked.new_zeros((self.num_tasks, *self.params[i].shape))
        out[list(self.tasks[i])] = stacked
        return out

    def for_task(self, k: int) -> list[Tensor | None]:
        """Task ``k``'s tensor for every parameter (``None`` where it does not reach it)."""
        return [self.rows(i)[ks.index(k)] if k in ks else None for i, ks in enumerate(self.tasks)]

    def norms(self) -> Tensor:
        """L2 norms, shape ``(T, number of parameters)``; zero where a task does not reach a parameter."""
        out = torch.zeros(self.num_tasks, len(self.params))
        for i, (ks, g) in enumerate(zip(self.tasks, self._stacks)):
            if ks:
                out[list(ks), i] = torch.linalg.vector_norm(g.detach().reshape(len(ks), -1), dim=1).float().cpu()
        return out

    def _per_task(self) -> list[list[Tensor | None]]:
        return [self.for_task(k) for k in range(self.num_tasks)]

    def in_task_order(self, names: Sequence[str]) -> Self:
        """The same tensors with the tasks in the order of ``names`` (the same names, permuted).

        >>> w = torch.ones(2, requires_grad=True)
        >>> g = compute_task_gradients({"a": w.sum(), "b": (3 * w).sum()}, [w])
        >>> g.in_task_order(("b", "a")).dense(0)
        tensor([[3., 3.],
                [1., 1.]])
        """
        order = match_task_order(self.task_names, tuple(names), by_name=True)
        if order is None:
            return self
        per_task = self._per_task()
        return type(self).from_per_task([per_task[k] for k in order], self.params, tuple(names))

    @classmethod
    def from_per_task(
        cls,
        per_task: Sequence[Sequence[Tensor | None]],
        params: Sequence[Tensor],
        task_names: Sequence[str] | None = None,
    ) -> Self:
        """Build from ``per_task[k][i]``: task ``k``'s tensor for parameter ``i`` (or ``None``).

        Use it to feed gradients computed elsewhere (e.g. by ``torch.autograd.grad``) to MAO.  The
        tensors are kept as they are: the stack of parameter ``i`` is built when it is first read.
        """
        names = tuple(task_names) if task_names is not None else _default_names(len(per_task))
        if len(names) != len(per_task):
            raise TaskInputError(f"{len(per_task)} tasks of tensors but {len(names)} task names")
        params = tuple(params)
        columns: Iterable[Sequence[Tensor | None]]
        if not per_task:
            columns = [()] * len(params)
        elif all(len(tensors) == len(params) for tensors in per_task):
            columns = zip(*per_task)  # column i: every task's tensor of parameter i
        else:
            raise TaskInputError(
                f"every task needs one entry (a tensor or None) per parameter ({len(params)}), "
                f"got {[len(tensors) for tensors in per_task]}"
            )
        tasks, rows = [], []
        for i, (p, column) in enumerate(zip(params, columns)):
            reached = tuple(k for k, g in enumerate(column) if g is not None)
            for k in reached:
                _check_like(column[k], p, f"task {names[k]!r} (index {k}): the tensor of parameter {i}")
            tasks.append(reached)
            rows.append(tuple(column[k] for k in reached))
        return cls(names, params, tuple(tasks), _LazyStacks(rows, params))


def _check_like(t: object, p: Tensor, what: str) -> None:
    """``t`` must be a tensor of ``p``'s shape, dtype and device (what an in-place update of ``p`` reads)."""
    if not isinstance(t, Tensor):
        raise TaskInputError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if t.shape != p.shape:
        raise TaskInputError(f"{what} has shape {tuple(t.shape)}, expected {tuple(p.shape)}")
    if t.dtype != p.dtype:
        raise TaskInputError(f"{what} has dtype {t.dtype}, expected the parameter's {p.dtype}")
    if t.device != p.device:
        raise TaskInputError(f"{what} is on {t.device}, expected the parameter's device {p.device}")


@dataclass(frozen=True)
class TaskGradients(_PerTaskStacks):
    """The gradients of every task's loss with respect to a list of parameters.

    Tasks that do not reach a parameter (a head of another task, say) have no gradient there, and no
    memory is spent on them: for parameter ``i`` only the tasks listed in ``tasks[i]`` are stacked.

    Attributes:
        task_names: one name per task; ``len(task_names)`` is the number of tasks ``T``.
        params: the parameters, in a fixed order.
        tasks: for each parameter, the indices (increasing) of the tasks whose gradient is stacked.
        grads: for each parameter, a tensor of shape ``(len(tasks[i]), *params[i].shape)``.  Built by
            :meth:`from_per_task` (so by :func:`compute_task_gradients`), it is a sequence that stacks
            a parameter's rows only when that entry is first read: the optimizers read the rows
            (:meth:`rows`) and never pay for the copy.

    >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> head = torch.tensor(3.0, requires_grad=True)
    >>> g = compute_task_gradients([(w ** 2).sum(), head * w.sum()], [w, head])
    >>> g.tasks
    ((0, 1), (1,))
    >>> g.dense(0)
    tensor([[2., 4.],
            [3., 3.]])
    >>> g.norms()
    tensor([[4.4721, 0.0000],
            [4.2426, 3.0000]])
    """

    grads: Sequence[Tensor]

    @property
    def _stacks(self) -> Sequence[Tensor]:
        return self.grads

    def check_finite(self) -> None:
        """Raise :class:`TaskInputError` naming the task and parameter if any gradient is NaN or Inf.

        One fused reduction on the happy path; the culprit is searched for only when there is one.
        """
        # Reductions that are NaN or Inf if a gradient is: taken while the gradients were computed
        # (when an optimizer computed them), or the norms of the stacked gradients.
        probes = self.grads.finite_probes if isinstance(self.grads, _LazyStacks) else None
        if probes is None:
            tensors = [r for i in range(len(self.params)) for r in self.rows(i) if r.numel()]
            probes = torch._foreach_norm(tensors) if tensors else []
        if not probes:
            return
        if len({(t.dtype, t.device) for t in probes}) > 1:
            finite = all(bool(t.isfinite().all()) for t in probes)
        else:
            finite = bool(torch.stack(list(probes)).isfinite().all())
        if finite:
            return
        for i, ks in enumerate(self.tasks):
            for row, k in enumerate(ks):
                if not bool(torch.isfinite(self.rows(i)[row]).all()):
                    raise TaskInputError(
                        f"task {self.task_names[k]!r} (index {k}): the gradient of parameter {i} "
                        f"(shape {tuple(self.params[i].shape)}) contains NaN or Inf"
                    )

    def check_against(self, params: Sequence[Tensor]) -> None:
        """Refuse gradients an in-place update of ``params`` could not use: a parameter listed twice, one
        that is not in ``params``, or a gradient of another shape, dtype or device than its parameter."""
        known = {id(p) for p in params}
        seen: set[int] = set()
        for i, p in enumerate(self.params):
            if id(p) in seen:
                raise TaskInputError(f"parameter {i} (shape {tuple(p.shape)}) is listed twice in the gradients")
            seen.add(id(p))
            if id(p) not in known:
                raise TaskInputError(
                    f"parameter {i} of the gradients (shape {tuple(p.shape)}) is not one this optimizer updates"
                )
            for row, k in enumerate(self.tasks[i]):
                _check_like(
                    self.rows(i)[row], p, f"task {self.task_names[k]!r} (index {k}): the gradient of parameter {i}"
                )

    @classmethod
    def from_jacobians(cls, params: Sequence[Tensor], task_names: Sequence[str] | None = None) -> TaskGradients:
        """Build from the ``.jac`` fields (shape ``(T, *p.shape)``) that TorchJD's ``mtl_backward`` fills.

        Parameters without a ``.jac`` field are left out.
        """
        with_jac = [p for p in params if getattr(p, "jac", None) is not None]
        if not with_jac:
            raise TaskInputError("none of the parameters has a .jac field (run torchjd's mtl_backward first)")
        num_tasks = with_jac[0].jac.shape[0]
        names = tuple(task_names) if task_names is not None else _default_names(num_tasks)
        for p in with_jac:
            if p.jac.shape != (num_tasks, *p.shape):
                raise TaskInputError(f"a .jac field has shape {tuple(p.jac.shape)}, expected {(num_tasks, *p.shape)}")
        all_tasks = tuple(range(num_tasks))
        return cls(names, tuple(with_jac), tuple(all_tasks for _ in with_jac), tuple(p.jac for p in with_jac))


@dataclass(frozen=True)
class TaskUpdates(_PerTaskStacks):
    """Every task's contribution to the parameter change of a step (``StepRecord.task_updates``).

    The step moved each listed parameter ``p`` by ``-sum_k updates[i][k]`` (plus decoupled weight
    decay, which belongs to no task); what ``task k's contribution`` means for each method is defined
    once, in :mod:`mao_lab.methods._contributions`.  Same layout as :class:`TaskGradients`.

    Attributes:
        task_names, params, tasks: as for :class:`TaskGradients`.
        updates: for each parameter, a tensor of shape ``(len(tasks[i]), *params[i].shape)``.
    """

    updates: Sequence[Tensor]

    @property
    def _stacks(self) -> Sequence[Tensor]:
        return self.updates


class _LazyStacks(Sequence[Tensor]):
    """Per-parameter stacked gradients that are stacked only when read.

    ``rows[i]`` holds parameter ``i``'s gradients, one tensor per task; ``self[i]`` is their stack
    (shape ``(len(rows[i]), *like[i].shape)``), built on first access and kept.  Stacking ``T`` copies of
    every shared parameter costs a fresh buffer and a full copy, which the MAO update does not need.
    """

    __slots__ = ("_rows", "_like", "_stacked", "finite_probes")

    def __init__(self, rows: Sequence[tuple[Tensor, ...]], like: Sequence[Tensor]) -> None:
        self._rows = tuple(rows)
        self._like = tuple(like)
        self._stacked: list[Tensor | None] = [None] * len(self._rows)
        # Reductions of every non-empty row (in any order) that are finite if the row is, when they
        # were taken as the rows were made: check_finite reads them instead of the rows.
        self.finite_probes: list[Tensor] | None = None

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, i: int) -> Tensor: ...
    @overload
    def __getitem__(self, i: slice) -> tuple[Tensor, ...]: ...
    def __getitem__(self, i: int | slice) -> Tensor | tuple[Tensor, ...]:
        if isinstance(i, slice):
            return tuple(self[j] for j in range(len(self))[i])
        i = range(len(self))[i]  # negative indices, IndexError
        stacked = self._stacked[i]
        if stacked is None:
            stacked = self._stacked[i] = _stack(list(self._rows[i]), self._like[i])
        return stacked

    def __iter__(self) -> Iterator[Tensor]:
        return (self[i] for i in range(len(self)))

    def rows(self, i: int) -> tuple[Tensor, ...]:
        return self._rows[i]

    def shape(self, i: int) -> tuple[int, ...]:
        return (len(self._rows[i]), *self._like[i].shape)

    def __repr__(self) -> str:
        return repr(tuple(self))


def _stack(grads: list[Tensor], like: Tensor) -> Tensor:
    if len(grads) == 1:
        return grads[0].unsqueeze(0)  # a view: a parameter reached by one task costs no copy
    if not grads:
        return like.new_zeros((0, *like.shape))
    return torch.stack(grads)


def _leaves_reachable_from(roots: Sequence[Tensor]) -> set[int]:
    """Ids of the leaf tensors that gradients flowing from ``roots`` would reach."""
    seen: set[object] = set()
    leaves: set[int] = set()
    stack = [r.grad_fn for r in roots if r.grad_fn is not None]
    leaves.update(id(r) for r in roots if r.grad_fn is None and r.requires_grad)
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        variable = getattr(fn, "variable", None)  # AccumulateGrad nodes hold their leaf
        if variable is not None:
            leaves.add(id(variable))
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return leaves


class GradientReserve:
    """The last step's per-task gradients, held by an optimizer and let go one task at a time.

    Holding every task's gradient at once takes ``T`` times the shared parameters in fresh memory at
    every step.  Freed all together at the end of a step, that memory goes back to the system (the C
    allocator trims it), and the next step pays page faults on all of it again.  Kept until the next
    step, and released task by task right before that task's backward pass allocates the same shapes,
    it is reused instead: no copy, no fault.  Nothing is overwritten: a record an observer keeps stays
    intact (its tensors are then simply not reused).  Between steps it holds what a step holds anyway,
    as ``.grad`` does for other optimizers.
    """

    def __init__(self) -> None:
        self._held: list[list[Tensor | None] | None] = []

    def release(self, task: int) -> None:
        """Let go of task ``task``'s gradients from the last step."""
        if task < len(self._held):
            self._held[task] = None

    def hold(self, per_task: list[list[Tensor | None]]) -> None:
        """Keep this step's CPU gradients (references only) until the next step releases them.

        CUDA's caching allocator reuses freed memory by itself: nothing is held there.
        """
        self._held = [[g if g is not None and g.is_cpu else None for g in grads] for grads in per_task]

    def nbytes(self) -> int:
        """Bytes of the gradients held."""
        return sum(g.numel() * g.element_size() for grads in self._held if grads for g in grads if g is not None)


class _TaskHooks:
    """What the per-task loops do around each task's backward pass."""

    __slots__ = ("reserve", "probes", "replicas", "pending")

    def __init__(self, reserve: GradientReserve | None, check_finite: bool, replicas: Replicas | None = None) -> None:
        self.reserve = reserve
        self.probes: list[Tensor] | None = [] if check_finite else None
        self.replicas = replicas
        # One reduction per task, started as soon as the task's gradients are complete.
        self.pending: list[PendingAverage] | None = [] if replicas is not None else None

    def done(self, grads: Sequence[Tensor | None]) -> None:
        """Task ``len(pending)``'s gradients are complete: start averaging them over the replicas."""
        if self.replicas is not None and self.pending is not None:
            self.pending.append(self.replicas.launch(grads))

    def before(self, task: int) -> None:
        if self.reserve is not None:
            self.reserve.release(task)  # the same shapes are about to be allocated: reuse that memory

    def after(self, grads: Sequence[Tensor | None]) -> None:
        # For check_finite, read while the fresh gradients are still in cache: a sum is NaN or Inf
        # whenever an entry is (and, extremely rarely, when finite entries overflow: then
        # check_finite looks at the entries and finds nothing to raise about).
        if self.probes is not None:
            small = []
            for g in grads:
                if g is not None and g.numel():
                    if g.numel() >= 1 << 15:
                        self.probes.append(g.sum())  # a plain sum streams faster than a norm
                    else:
                        small.append(g)
            if small:  # one call for the small ones
                self.probes.extend(torch._foreach_norm(small))


def compute_task_gradients(
    losses: TaskLosses,
    params: Iterable[Tensor],
    *,
    features: Tensor | Sequence[Tensor] | None = None,
    batched: bool = False,
    retain_graph: bool = False,
    reserve: GradientReserve | None = None,
    check_finite: bool = False,
    replicas: Replicas | None = None,
    loss_scale: float | None = None,
    max_task_grad_norm: float | None = None,
) -> TaskGradients:
    """Compute every task's gradient with respect to ``params``, at the cost of ``T`` backward passes.

    Args:
        losses: one scalar loss per task (see :func:`as_task_losses`).
        params: the parameters to differentiate; those with ``requires_grad=False`` are skipped.
        features: optionally, the shared representation (the trunk's output) that every head reads.
            It enables the ``batched`` form and makes each head backward run exactly once per task.
        batched: with ``features``, backpropagate all tasks through the trunk in one vmapped call
            (``is_grads_batched``); faster on a GPU, usually slower on a few CPU cores.
        retain_graph: keep the graph after the last backward pass.
        reserve: for an optimizer: reuse the memory of the last step's gradients (looped forms).
        check_finite: for an optimizer: read what :meth:`TaskGradients.check_finite` needs as each
            task's gradients come out of its backward pass, while they are still in cache.
        replicas: average every task's gradients over these processes (:mod:`mao_lab._distributed`);
            a task's bucketed reduction runs while the next task is backpropagated.
        loss_scale: backpropagate the losses times this scale; if a gradient (after averaging) is Inf
            or NaN, raise :class:`~mao_lab._loss_scaling.LossScaleOverflow`, else divide them by it.
        max_task_grad_norm: rescale each task's gradient to at most this norm (:mod:`mao_lab._clipping`).

    Without ``features`` each task is backpropagated on its own through its head and the trunk:
    autograd only visits the nodes a task reaches, so this is the physical limit of one trunk backward
    and one head backward per task, the same work as TorchJD's ``mtl_backward(parallel_chunk_size=1)``.
    """
    names, loss_list = as_task_losses(losses)
    params = [p for p in params if p.requires_grad]
    # The probes are read from local gradients: with replicas only the averaged ones count (below).
    probe = check_finite and replicas is None and loss_scale is None and max_task_grad_norm is None
    hooks = _TaskHooks(reserve, probe, replicas) if reserve is not None or probe or replicas is not None else None
    if features is None:
        per_task = _looped_gradients(loss_list, params, retain_graph, hooks, loss_scale)
    else:
        feats = [features] if isinstance(features, Tensor) else list(features)
        per_task = _gradients_through_features(loss_list, params, feats, batched, retain_graph, hooks, loss_scale)
    held = per_task
    if hooks is not None and hooks.pending is not None:
        per_task = [pending.wait() for pending in hooks.pending]
        # The reserve keeps the local gradients and the reduced buckets alike: both are reallocated
        # with the same sizes at the next step (the backward pass, then the bucket's concatenation).
        held = [local + averaged for local, averaged in zip(held, per_task)]
        if check_finite and loss_scale is None and max_task_grad_norm is None:
            hooks.probes = [probe for pending in hooks.pending for probe in pending.probes]
    if loss_scale is not None:
        if found_non_finite([g for grads in per_task for g in grads]):
            raise LossScaleOverflow
        per_task = [unscaled(grads, loss_scale) for grads in per_task]
    if max_task_grad_norm is not None:
        per_task = [clipped(grads, max_task_grad_norm) for grads in per_task]
    if reserve is not None:
        reserve.hold(held)
    task_grads = TaskGradients.from_per_task(per_task, params, names)
    if hooks is not None and hooks.probes is not None:
        assert isinstance(task_grads.grads, _LazyStacks)
        task_grads.grads.finite_probes = hooks.probes
    return task_grads


def _seed(loss: Tensor, loss_scale: float | None) -> Tensor | None:
    """The gradient that starts a loss's backward pass: ``None`` (one), or the loss scale."""
    return None if loss_scale is None else torch.full_like(loss, loss_scale)


def _looped_gradients(
    losses: list[Tensor],
    params: list[Tensor],
    retain_graph: bool,
    hooks: _TaskHooks | None = None,
    loss_scale: float | None = None,
) -> list[list[Tensor | None]]:
    last = len(losses) - 1
    per_task: list[list[Tensor | None]] = []
    for k, loss in enumerate(losses):
        if hooks is not None:
            hooks.before(k)
        grads = list(
            torch.autograd.grad(
                loss,
                params,
                grad_outputs=_seed(loss, loss_scale),
                retain_graph=retain_graph or k < last,
                allow_unused=True,
            )
        )
        if hooks is not None:
            hooks.after(grads)
            hooks.done(grads)
        per_task.append(grads)
    return per_task


def _gradients_through_features(
    losses: list[Tensor],
    params: list[Tensor],
    feats: list[Tensor],
    batched: bool,
    retain_graph: bool,
    hooks: _TaskHooks | None = None,
    loss_scale: float | None = None,
) -> list[list[Tensor | None]]:
    below = _leaves_reachable_from(feats)
    shared = [p for p in params if id(p) in below]
    heads = [p for p in params if id(p) not in below]
    num_feats = len(feats)
    per_task_heads, per_task_feat_grads = [], []
    for loss in losses:  # one backward per head, stopping at the features
        out = torch.autograd.grad(
            loss, feats + heads, grad_outputs=_seed(loss, loss_scale), retain_graph=True, allow_unused=True
        )
        per_task_feat_grads.append(list(out[:num_feats]))
        per_task_heads.append(out[num_feats:])
        if hooks is not None:
            hooks.after(out[num_feats:])
    per_task_shared = _trunk_gradients(feats, shared, per_task_feat_grads, batched, retain_graph, hooks)
    position = {id(p): i for i, p in enumerate(shared)}
    head_position = {id(p): i for i, p in enumerate(heads)}
    per_task: list[list[Tensor | None]] = [
        [
            per_task_shared[k][position[id(p)]] if id(p) in position else per_task_heads[k][head_position[id(p)]]
            for p in params
        ]
        for k in range(len(losses))
    ]
    if hooks is not None:
        for grads in per_task:
            hooks.done(grads)
    return per_task


def _trunk_gradients(
    feats: list[Tensor],
    shared: list[Tensor],
    feat_grads: list[list[Tensor | None]],
    batched: bool,
    retain_graph: bool,
    hooks: _TaskHooks | None = None,
) -> list[list[Tensor | None]]:
    num_tasks = len(feat_grads)
    reaching = [k for k in range(num_tasks) if any(g is not None for g in feat_grads[k])]
    result: list[list[Tensor | None]] = [[None] * len(shared) for _ in range(num_tasks)]
    if not shared or not reaching:
        return result
    if batched:
        outputs = [
            torch.stack([feat_grads[k][j] if feat_grads[k][j] is not None else torch.zeros_like(f) for k in reaching])
            for j, f in enumerate(feats)
        ]
        grads = torch.autograd.grad(
            feats, shared, grad_outputs=outputs, retain_graph=retain_graph, allow_unused=True, is_grads_batched=True
        )
        if hooks is not None:
            hooks.after(grads)
        for row, k in enumerate(reaching):
            result[k] = [g[row] if g is not None else None for g in grads]
        return result
    last = reaching[-1]
    for k in reaching:
        if hooks is not None:
            hooks.before(k)
        used = [(f, g) for f, g in zip(feats, feat_grads[k]) if g is not None]
        result[k] = list(
            torch.autograd.grad(
                [f for f, _ in used],
                shared,
                grad_outputs=[g for _, g in used],
                retain_graph=retain_graph or k != last,
                allow_unused=True,
            )
        )
        if hooks is not None:
            hooks.after(result[k])
    return result
