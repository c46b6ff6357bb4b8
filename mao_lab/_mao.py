"""MAO — Multi-Adaptive Optimization (Hervella et al., Neural Networks 170, 2024).

Every task gets its own Adam moments for every parameter it reaches; the update is the sum (or mean)
of the tasks' Adam-normalised steps.  In optax terms: per-task ``scale_by_adam``, then sum.  So no task
dominates any parameter, whatever the scale of its loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor
from torch.optim import Optimizer

from ._observe import ObservableMixin, StepRecord
from ._task_gradients import (
    GradientReserve,
    TaskGradients,
    TaskInputError,
    TaskLosses,
    _compute_task_gradients,
    as_task_losses,
)

__all__ = ["MAO"]

Reduction = Literal["sum", "mean"]


class MAO(ObservableMixin, Optimizer):
    r"""Multi-Adaptive Optimization: per-task Adam normalisation of every parameter, then a sum.

    For every parameter ``p`` and every task ``k`` that reaches it, with ``g_k = dL_k/dp``::

        m_k <- b1 m_k + (1 - b1) g_k          v_k <- b2 v_k + (1 - b2) g_k^2
        u_k  = (m_k / (1 - b1^t)) / (sqrt(v_k / (1 - b2^t)) + eps)
        p   <- p - lr * sum_k w_k u_k          (``reduction="mean"`` divides by T)

    With one task this is exactly Adam (AdamW with ``weight_decay``); multiplying a task's loss by a
    positive constant does not change the trajectory (up to ``eps``).  A parameter that only one task
    reaches (a task head) keeps Adam's state and gets Adam's update; per-task moments are kept only
    where several tasks meet.

    Args:
        params: parameters or parameter groups, as for :class:`torch.optim.Adam`.
        lr: learning rate.
        betas: decay rates of the first and second moments.
        eps: added to the denominator, per task.
        weight_decay: decoupled (AdamW-style) decay, applied once per step, not once per task.
        reduction: ``"sum"`` adds the tasks' normalised steps, ``"mean"`` averages them.
        task_weights: optional ``w_k`` per task (default all 1).
        check_finite: refuse NaN/Inf gradients before touching anything (one fused reduction).

    Use it by handing the per-task losses to :meth:`step`; it computes the per-task gradients itself:

    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> trunk, head_a, head_b = torch.nn.Linear(3, 4), torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)
    >>> params = [*trunk.parameters(), *head_a.parameters(), *head_b.parameters()]
    >>> opt = MAO(params, lr=1e-2)
    >>> x = torch.randn(8, 3)
    >>> for _ in range(3):
    ...     z = trunk(x).relu()
    ...     losses = opt.step([head_a(z).pow(2).mean(), 1000 * head_b(z).abs().mean()])
    >>> losses.shape
    torch.Size([2])

    Gradients computed elsewhere (TorchJD's ``mtl_backward``, a recorder) go in as ``task_grads``:
    ``opt.step(task_grads=TaskGradients.from_jacobians(params))``.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        reduction: Reduction = "sum",
        task_weights: Sequence[float] | None = None,
        *,
        check_finite: bool = True,
    ) -> None:
        _check_hyperparameters(lr, betas, eps, weight_decay, reduction, task_weights)
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            reduction=reduction,
            task_weights=None if task_weights is None else tuple(float(w) for w in task_weights),
            num_tasks=None,  # fixed by the first step; kept in param_groups so state_dict carries it
        )
        super().__init__(params, defaults)
        self.check_finite = check_finite

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        group = dict(param_group)
        _check_hyperparameters(
            group.get("lr", self.defaults["lr"]),
            group.get("betas", self.defaults["betas"]),
            group.get("eps", self.defaults["eps"]),
            group.get("weight_decay", self.defaults["weight_decay"]),
            group.get("reduction", self.defaults["reduction"]),
            group.get("task_weights", self.defaults["task_weights"]),
        )
        super().add_param_group(param_group)

    @property
    def num_tasks(self) -> int | None:
        """The number of tasks, fixed by the first step (``None`` before it)."""
        known = {g["num_tasks"] for g in self.param_groups if g.get("num_tasks") is not None}
        return known.pop() if known else None

    def trainable_params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"] if p.requires_grad]

    @torch.no_grad()
    def step(  # type: ignore[override]
        self,
        losses: TaskLosses | Callable[[], TaskLosses] | None = None,
        *,
        task_grads: TaskGradients | None = None,
        features: Tensor | Sequence[Tensor] | None = None,
        batched: bool = False,
    ) -> Tensor:
        """Take one MAO step and return the per-task losses (detached, shape ``(T,)``).

        Args:
            losses: per-task scalar losses (or a closure returning them); MAO backpropagates each task.
            task_grads: per-task gradients computed elsewhere, instead of ``losses``.
            features: the shared representation, to stop each head's backward there (see
                :func:`compute_task_gradients`); enables ``batched``.
            batched: backpropagate all tasks through the trunk in one vmapped call (GPU).

        On bad input (NaN/Inf loss or gradient, wrong task count, ...) raises :class:`TaskInputError`
        naming the task, and leaves the parameters and the optimizer state exactly as they were.
        """
        if (losses is None) == (task_grads is None):
            raise TypeError("MAO.step needs exactly one of `losses` or `task_grads`")
        observers = self._observers_wanting_record()
        loss_values: Tensor | None = None
        if losses is not None:
            with torch.enable_grad():
                if callable(losses):
                    losses = losses()
                names, loss_list = as_task_losses(losses)
                self._check_num_tasks(len(names))
                task_grads = _compute_task_gradients(
                    dict(zip(names, loss_list)),
                    self.trainable_params(),
                    features=features,
                    batched=batched,
                    reserve=None if batched else self._gradient_reserve(),
                    check_finite=self.check_finite,
                )
            loss_values = torch.stack([loss.detach().reshape(()) for loss in loss_list])
        assert task_grads is not None
        task_updates = self.apply_task_gradients(task_grads, keep_task_updates=bool(observers))
        if loss_values is None:
            loss_values = torch.full((task_grads.num_tasks,), float("nan"))
        if observers:
            self._notify(observers, StepRecord(task_grads.task_names, loss_values, task_grads, task_updates))
        return loss_values

    @torch.no_grad()
    def apply_task_gradients(self, task_grads: TaskGradients, keep_task_updates: bool = False) -> TaskGradients | None:
        """The update alone, from per-task gradients; the building block of :meth:`step`.

        With ``keep_task_updates`` it returns each task's part of the parameter change (``lr * w_k * u_k``,
        divided by ``T`` for ``reduction="mean"``), so that the step moved ``p`` by ``-sum_k`` of them
        (plus weight decay).  Checks everything before modifying anything.
        """
        self._check_num_tasks(task_grads.num_tasks)
        if self.check_finite:
            task_grads.check_finite()
        self._check_task_weights(task_grads.num_tasks)
        task_updates = self._update(task_grads, keep_task_updates)
        for group in self.param_groups:
            group["num_tasks"] = task_grads.num_tasks
        return task_updates

    def _gradient_reserve(self) -> GradientReserve:
        # Not in __init__: Optimizer pickling and deepcopy keep only defaults, state and param_groups.
        reserve = self.__dict__.get("_task_gradient_reserve")
        if reserve is None:
            reserve = self._task_gradient_reserve = GradientReserve()
        return reserve

    # -- checks (before anything is modified) ------------------------------------------------------

    def _check_num_tasks(self, num_tasks: int) -> None:
        expected = self.num_tasks
        if expected is not None and num_tasks != expected:
            raise TaskInputError(
                f"this MAO optimizer was stepped with {expected} tasks, now got {num_tasks}: the task count "
                "cannot change between steps (each task owns moments in the optimizer state)"
            )

    def _check_task_weights(self, num_tasks: int) -> None:
        for group in self.param_groups:
            weights = group["task_weights"]
            if weights is not None and len(weights) != num_tasks:
                raise TaskInputError(f"task_weights has {len(weights)} entries but there are {num_tasks} tasks")

    # -- the update ----------------------------------------------------------------------------------

    def _update(self, task_grads: TaskGradients, keep_task_updates: bool) -> TaskGradients | None:
        where = task_grads.index()
        kept: dict[int, Tensor] = {}
        for group in self.param_groups:
            # Like Adam with p.grad None, a parameter no task reached at this step is left alone.
            members = [(p, where[id(p)]) for p in group["params"] if id(p) in where and task_grads.tasks[where[id(p)]]]
            if members:
                kept.update(self._update_group(group, members, task_grads, keep_task_updates))
        if not keep_task_updates:
            return None
        order = [i for i in range(len(task_grads.params)) if i in kept]
        return TaskGradients(
            task_grads.task_names,
            tuple(task_grads.params[i] for i in order),
            tuple(self.state[task_grads.params[i]]["tasks"] for i in order),
            tuple(kept[i] for i in order),
        )

    def _update_group(
        self,
        group: dict[str, Any],
        members: list[tuple[Tensor, int]],
        task_grads: TaskGradients,
        keep_task_updates: bool,
    ) -> dict[int, Tensor]:
        lr = float(group["lr"])
        weights = group["task_weights"]
        params, states = [], []
        for p, i in members:
            params.append(p)
            states.append(self._prepared_state(p, task_grads.tasks[i]))
        torch._foreach_add_([state["step"] for state in states], 1.0)
        if group["weight_decay"] != 0:
            torch._foreach_mul_(params, 1 - lr * group["weight_decay"])

        # Where several tasks meet (or tasks are weighted), each task's Adam step is one pass of the
        # fused CPU Adam kernel that subtracts it from p directly: no stacked copy of the gradients, no
        # per-task temporaries.  Parameters one task reaches keep Adam's own foreach arithmetic (their
        # update is bit-for-bit Adam's), and so does everything when per-task updates must be returned.
        fused: list[int] = []
        rest: list[int] = []
        for j, (p, state) in enumerate(zip(params, states)):
            several = len(state["tasks"]) > 1 or weights is not None
            (fused if several and not keep_task_updates and _fusable(p, state) else rest).append(j)
        if fused:
            self._fused_update(group, [members[j] for j in fused], [states[j] for j in fused], task_grads)
        if not rest:
            return {}
        return self._foreach_update(group, [members[j] for j in rest], [states[j] for j in rest], task_grads, keep_task_updates)

    def _fused_update(
        self,
        group: dict[str, Any],
        members: list[tuple[Tensor, int]],
        states: list[dict[str, Any]],
        task_grads: TaskGradients,
    ) -> None:
        """``p -= lr_k * u_k`` for every task ``k`` in turn, one fused-Adam pass per (parameter, task).

        The CPU kernel handles the tensors of its lists one after the other, so listing ``p`` once per
        task accumulates the tasks' steps into ``p`` in place; the step counter is shared by the tasks.
        """
        beta1, beta2 = group["betas"]
        scale = 1.0 / task_grads.num_tasks if group["reduction"] == "mean" else 1.0
        weights = group["task_weights"]
        lr = float(group["lr"]) * scale
        calls: dict[float, tuple[list[Tensor], ...]] = {}
        for (p, i), state in zip(members, states):
            state_tasks = state["tasks"]
            rows = _aligned_rows(task_grads.rows(i), task_grads.tasks[i], state_tasks, p)
            for k, g, m, v in zip(state_tasks, rows, state["exp_avg"].unbind(0), state["exp_avg_sq"].unbind(0)):
                task_lr = lr if weights is None else lr * weights[k]
                lists = calls.get(task_lr)
                if lists is None:
                    lists = calls[task_lr] = ([], [], [], [], [])
                lists[0].append(p)
                lists[1].append(g if g.is_contiguous() else g.contiguous())
                lists[2].append(m)
                lists[3].append(v)
                lists[4].append(state["step"])
        for task_lr, (ps, gs, ms, vs, steps) in calls.items():
            torch._fused_adam_(
                ps, gs, ms, vs, [], steps,
                lr=task_lr, beta1=beta1, beta2=beta2, weight_decay=0.0, eps=group["eps"], amsgrad=False, maximize=False,
            )  # fmt: skip

    def _foreach_update(
        self,
        group: dict[str, Any],
        members: list[tuple[Tensor, int]],
        states: list[dict[str, Any]],
        task_grads: TaskGradients,
        keep_task_updates: bool,
    ) -> dict[int, Tensor]:
        """The update with stacked per-task moments and foreach ops (step counts already advanced)."""
        beta1, beta2 = group["betas"]
        lr = float(group["lr"])
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for (p, i), state in zip(members, states):
            params.append(p)
            grads.append(_aligned(task_grads.grads[i], task_grads.tasks[i], state["tasks"]))
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])

        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)

        counts = [float(s) for s in steps]
        scale = 1.0 / task_grads.num_tasks if group["reduction"] == "mean" else 1.0
        step_sizes = [lr * scale / (1 - beta1**t) for t in counts]
        denoms = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denoms, [math.sqrt(1 - beta2**t) for t in counts])
        torch._foreach_add_(denoms, group["eps"])

        weights = group["task_weights"]
        single = [j for j, state in enumerate(states) if len(state["tasks"]) == 1 and weights is None]
        if single and not keep_task_updates:
            # One task reaches these parameters: exactly Adam's fused update, no per-task buffer.
            torch._foreach_addcdiv_(
                [params[j] for j in single],
                [exp_avgs[j][0] for j in single],
                [denoms[j][0] for j in single],
                [-step_sizes[j] for j in single],
            )
            in_single = set(single)
            rest = [j for j in range(len(params)) if j not in in_single]
        else:
            rest = list(range(len(params)))
        if not rest:
            return {}

        # Each task's normalised step u_k = m_k / denom_k, scaled by its step size (and weight).
        task_steps = torch._foreach_div([exp_avgs[j] for j in rest], [denoms[j] for j in rest])
        torch._foreach_mul_(task_steps, [step_sizes[j] for j in rest])
        if weights is not None:
            w = torch.tensor(weights)
            for j, u in zip(rest, task_steps):
                tasks = list(states[j]["tasks"])
                u.mul_(w[tasks].to(u).view(-1, *([1] * (u.dim() - 1))))
        torch._foreach_sub_([params[j] for j in rest], [u.sum(0) for u in task_steps])
        if not keep_task_updates:
            return {}
        return {members[j][1]: u for j, u in zip(rest, task_steps)}

    def _prepared_state(self, p: Tensor, reaching: tuple[int, ...]) -> dict[str, Any]:
        """The state of ``p``, created or widened so that it holds moments for every task reaching ``p``.

        A task that reaches ``p`` for the first time joins with zero moments: exactly the moments it
        would have had if its (zero) gradients had been tracked from the start.
        """
        state = self.state[p]
        if not state:
            shape = (len(reaching), *p.shape)
            state["step"] = torch.tensor(0.0)
            state["tasks"] = tuple(reaching)
            state["exp_avg"] = torch.zeros(shape, dtype=p.dtype, device=p.device)
            state["exp_avg_sq"] = torch.zeros(shape, dtype=p.dtype, device=p.device)
            return state
        new = sorted(set(reaching) - set(state["tasks"]))
        if new:
            tasks = tuple(sorted(set(state["tasks"]) | set(new)))
            for key in ("exp_avg", "exp_avg_sq"):
                widened = p.new_zeros((len(tasks), *p.shape))
                widened[[tasks.index(k) for k in state["tasks"]]] = state[key]
                state[key] = widened
            state["tasks"] = tasks
        return state


_FUSED_DTYPES = (torch.float32, torch.float64)


def _fusable(p: Tensor, state: dict[str, Any]) -> bool:
    """Can the fused CPU Adam kernel update ``p`` in place?  It reads every tensor as one flat array.

    Half precision is left to the foreach path: accumulating ``T`` steps into ``p`` one by one would
    round ``T`` times at ``p``'s precision.
    """
    return (
        p.device.type == "cpu"
        and p.dtype in _FUSED_DTYPES
        and p.is_contiguous()
        and state["exp_avg"].is_contiguous()
        and state["exp_avg_sq"].is_contiguous()
        and state["exp_avg"].dtype == p.dtype
        and state["exp_avg_sq"].dtype == p.dtype
    )


def _aligned_rows(
    rows: tuple[Tensor, ...], grad_tasks: tuple[int, ...], state_tasks: tuple[int, ...], like: Tensor
) -> tuple[Tensor, ...]:
    """Per-task gradients in the order of the state's tasks, zero for tasks that did not reach this step."""
    if grad_tasks == state_tasks:
        return rows
    by_task = dict(zip(grad_tasks, rows))
    return tuple(by_task[k] if k in by_task else torch.zeros_like(like, memory_format=torch.contiguous_format) for k in state_tasks)


def _aligned(grads: Tensor, grad_tasks: tuple[int, ...], state_tasks: tuple[int, ...]) -> Tensor:
    """Stacked gradients in the order of the state's tasks, zero for tasks that did not reach this step."""
    if grad_tasks == state_tasks:
        return grads
    out = grads.new_zeros((len(state_tasks), *grads.shape[1:]))
    out[[state_tasks.index(k) for k in grad_tasks]] = grads
    return out


def _check_hyperparameters(
    lr: float | Tensor,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    reduction: str,
    task_weights: Sequence[float] | None,
) -> None:
    if not 0.0 <= float(lr):
        raise ValueError(f"Invalid learning rate: {lr}")
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"Invalid betas: {betas} (each must be in [0, 1))")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"Invalid reduction: {reduction!r} (valid: 'sum', 'mean')")
    if task_weights is not None:
        weights = list(task_weights)
        if not weights or not all(math.isfinite(w) and w >= 0 for w in weights):
            raise ValueError(f"Invalid task_weights: {task_weights} (non-empty, finite and >= 0)")
