"""Per-task gradients: the currency shared by MAO, the other methods and the recorder.

Every task-balancing method that looks at more than the summed loss needs, for each parameter, the
gradient of every task's loss.  :class:`TaskGradients` holds them once, so that an optimizer, a
gradient aggregator and the recorder can all use the same tensors without a second backward pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Union

import torch
from torch import Tensor

__all__ = [
    "TaskGradients",
    "TaskInputError",
    "TaskLosses",
    "as_task_losses",
    "compute_task_gradients",
]

TaskLosses = Union[Sequence[Tensor], Mapping[str, Tensor]]
"""Per-task scalar losses: a sequence (tasks named ``task0``, ``task1``, ...) or a name → loss mapping."""


class TaskInputError(ValueError):
    """Bad per-task input (losses or gradients); the message names the task and the problem."""


def as_task_losses(losses: TaskLosses) -> tuple[tuple[str, ...], list[Tensor]]:
    """Validate per-task losses and return ``(task_names, losses)``.

    Every loss must be a finite scalar tensor attached to an autograd graph.

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
                f"{where}: the loss has no autograd graph (was it computed under torch.no_grad() "
                "or detached?)"
            )
    finite = torch.isfinite(torch.stack([loss.detach().reshape(()) for loss in values]))
    if not bool(finite.all()):
        k = int((~finite).nonzero()[0])
        raise TaskInputError(f"task {names[k]!r} (index {k}): the loss is {values[k].item()}")
    return names, values


@dataclass(frozen=True)
class TaskGradients:
    """The gradients of every task's loss with respect to a list of parameters.

    Tasks that do not reach a parameter (a head of another task, say) have no gradient there, and no
    memory is spent on them: for parameter ``i`` only the tasks listed in ``tasks[i]`` are stacked.

    Attributes:
        task_names: one name per task; ``len(task_names)`` is the number of tasks ``T``.
        params: the parameters, in a fixed order.
        tasks: for each parameter, the indices (increasing) of the tasks whose gradient is stacked.
        grads: for each parameter, a tensor of shape ``(len(tasks[i]), *params[i].shape)``.

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

    task_names: tuple[str, ...]
    params: tuple[Tensor, ...]
    tasks: tuple[tuple[int, ...], ...]
    grads: tuple[Tensor, ...]

    def __post_init__(self) -> None:
        if not (len(self.params) == len(self.tasks) == len(self.grads)):
            raise ValueError("params, tasks and grads must have one entry per parameter")
        for i, (p, ks, g) in enumerate(zip(self.params, self.tasks, self.grads)):
            if tuple(g.shape) != (len(ks), *p.shape):
                raise ValueError(
                    f"parameter {i}: stacked gradients have shape {tuple(g.shape)}, expected "
                    f"{(len(ks), *p.shape)} (tasks {ks}, parameter shape {tuple(p.shape)})"
                )
            if any(not 0 <= k < self.num_tasks for k in ks) or list(ks) != sorted(set(ks)):
                raise ValueError(f"parameter {i}: task indices {ks} must increase within [0, {self.num_tasks})")

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    def index(self) -> dict[int, int]:
        """Map ``id(param)`` to its position in :attr:`params`."""
        return {id(p): i for i, p in enumerate(self.params)}

    def dense(self, i: int) -> Tensor:
        """Gradients of parameter ``i`` for all ``T`` tasks, zeros where a task does not reach it."""
        if len(self.tasks[i]) == self.num_tasks:
            return self.grads[i]
        out = self.grads[i].new_zeros((self.num_tasks, *self.params[i].shape))
        out[list(self.tasks[i])] = self.grads[i]
        return out

    def for_task(self, k: int) -> list[Tensor | None]:
        """Task ``k``'s gradient for every parameter (``None`` where it does not reach it)."""
        return [g[ks.index(k)] if k in ks else None for ks, g in zip(self.tasks, self.grads)]

    def norms(self) -> Tensor:
        """L2 norms, shape ``(T, number of parameters)``; zero where a task does not reach a parameter."""
        out = torch.zeros(self.num_tasks, len(self.params))
        for i, (ks, g) in enumerate(zip(self.tasks, self.grads)):
            if ks:
                out[list(ks), i] = torch.linalg.vector_norm(g.detach().reshape(len(ks), -1), dim=1).float().cpu()
        return out

    def check_finite(self) -> None:
        """Raise :class:`TaskInputError` naming the task and parameter if any gradient is NaN or Inf.

        One fused reduction on the happy path; the culprit is searched for only when there is one.
        """
        stacked = [g for g in self.grads if g.numel()]
        if not stacked:
            return
        if bool(torch.stack([s.float() for s in torch._foreach_norm(stacked)]).isfinite().all()):
            return
        for i, (ks, g) in enumerate(zip(self.tasks, self.grads)):
            for row, k in enumerate(ks):
                if not bool(torch.isfinite(g[row]).all()):
                    raise TaskInputError(
                        f"task {self.task_names[k]!r} (index {k}): the gradient of parameter {i} "
                        f"(shape {tuple(self.params[i].shape)}) contains NaN or Inf"
                    )

    @classmethod
    def from_per_task(
        cls,
        per_task: Sequence[Sequence[Tensor | None]],
        params: Sequence[Tensor],
        task_names: Sequence[str] | None = None,
    ) -> TaskGradients:
        """Build from ``per_task[k][i]``: task ``k``'s gradient of parameter ``i`` (or ``None``).

        Use it to feed gradients computed elsewhere (e.g. by ``torch.autograd.grad``) to MAO.
        """
        names = tuple(task_names) if task_names is not None else tuple(f"task{k}" for k in range(len(per_task)))
        if len(names) != len(per_task):
            raise TaskInputError(f"{len(per_task)} tasks of gradients but {len(names)} task names")
        tasks, grads = [], []
        for i, p in enumerate(params):
            reached = [k for k in range(len(per_task)) if per_task[k][i] is not None]
            for k in reached:
                if per_task[k][i].shape != p.shape:
                    raise TaskInputError(
                        f"task {names[k]!r} (index {k}): gradient of parameter {i} has shape "
                        f"{tuple(per_task[k][i].shape)}, expected {tuple(p.shape)}"
                    )
            tasks.append(tuple(reached))
            grads.append(_stack([per_task[k][i] for k in reached], p))
        return cls(names, tuple(params), tuple(tasks), tuple(grads))

    @classmethod
    def from_jacobians(cls, params: Sequence[Tensor], task_names: Sequence[str] | None = None) -> TaskGradients:
        """Build from the ``.jac`` fields (shape ``(T, *p.shape)``) that TorchJD's ``mtl_backward`` fills.

        Parameters without a ``.jac`` field are left out.
        """
        with_jac = [p for p in params if getattr(p, "jac", None) is not None]
        if not with_jac:
            raise TaskInputError("none of the parameters has a .jac field (run torchjd's mtl_backward first)")
        num_tasks = with_jac[0].jac.shape[0]
        names = tuple(task_names) if task_names is not None else tuple(f"task{k}" for k in range(num_tasks))
        for p in with_jac:
            if p.jac.shape != (num_tasks, *p.shape):
                raise TaskInputError(f"a .jac field has shape {tuple(p.jac.shape)}, expected {(num_tasks, *p.shape)}")
        all_tasks = tuple(range(num_tasks))
        return cls(names, tuple(with_jac), tuple(all_tasks for _ in with_jac), tuple(p.jac for p in with_jac))


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


def compute_task_gradients(
    losses: TaskLosses,
    params: Iterable[Tensor],
    *,
    features: Tensor | Sequence[Tensor] | None = None,
    batched: bool = False,
    retain_graph: bool = False,
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

    Without ``features`` each task is backpropagated on its own through its head and the trunk:
    autograd only visits the nodes a task reaches, so this is the physical limit of one trunk backward
    and one head backward per task, the same work as TorchJD's ``mtl_backward(parallel_chunk_size=1)``.
    """
    names, loss_list = as_task_losses(losses)
    params = [p for p in params if p.requires_grad]
    if features is None:
        per_task = _looped_gradients(loss_list, params, retain_graph)
    else:
        feats = [features] if isinstance(features, Tensor) else list(features)
        per_task = _gradients_through_features(loss_list, params, feats, batched, retain_graph)
    return TaskGradients.from_per_task(per_task, params, names)


def _looped_gradients(losses: list[Tensor], params: list[Tensor], retain_graph: bool) -> list[list[Tensor | None]]:
    last = len(losses) - 1
    return [
        list(torch.autograd.grad(loss, params, retain_graph=retain_graph or k < last, allow_unused=True))
        for k, loss in enumerate(losses)
    ]


def _gradients_through_features(
    losses: list[Tensor], params: list[Tensor], feats: list[Tensor], batched: bool, retain_graph: bool
) -> list[list[Tensor | None]]:
    below = _leaves_reachable_from(feats)
    shared = [p for p in params if id(p) in below]
    heads = [p for p in params if id(p) not in below]
    num_feats = len(feats)
    per_task_heads, per_task_feat_grads = [], []
    for loss in losses:  # one backward per head, stopping at the features
        out = torch.autograd.grad(loss, feats + heads, retain_graph=True, allow_unused=True)
        per_task_feat_grads.append(list(out[:num_feats]))
        per_task_heads.append(out[num_feats:])
    per_task_shared = _trunk_gradients(feats, shared, per_task_feat_grads, batched, retain_graph)
    position = {id(p): i for i, p in enumerate(shared)}
    head_position = {id(p): i for i, p in enumerate(heads)}
    return [
        [
            per_task_shared[k][position[id(p)]] if id(p) in position else per_task_heads[k][head_position[id(p)]]
            for p in params
        ]
        for k in range(len(losses))
    ]


def _trunk_gradients(
    feats: list[Tensor],
    shared: list[Tensor],
    feat_grads: list[list[Tensor | None]],
    batched: bool,
    retain_graph: bool,
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
        for row, k in enumerate(reaching):
            result[k] = [g[row] if g is not None else None for g in grads]
        return result
    last = reaching[-1]
    for k in reaching:
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
    return result
