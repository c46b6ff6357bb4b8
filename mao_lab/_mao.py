"""MAO — Multi-Adaptive Optimization (Hervella et al., Neural Networks 170, 2024).

Every task gets its own Adam moments for every parameter it reaches; the update is the sum (or mean)
of the tasks' Adam-normalised steps.  In optax terms: per-task ``scale_by_adam``, then sum.  So no task
dominates any parameter, whatever the scale of its loss.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torch.optim import Optimizer

from ._checkpoints import CheckpointError, check_optimizer_state, check_step, check_tensor
from ._clipping import check_max_norm, refuse_written_grads
from ._copies import copyable_state
from ._distributed import DistributedSetting
from ._gradient_path import GradientPath
from ._loss_scaling import LossScaleOverflow, check_eps_for_dtypes, loss_scale, report_found_inf
from ._mao_functional import mao
from ._memory import plan_task_state, step_counter_bytes, tasks_reaching
from ._observe import ObservableMixin, StepRecord
from ._task_gradients import (
    GradientReserve,
    TaskGradients,
    TaskInputError,
    TaskLosses,
    TaskUpdates,
    match_task_order,
    ordered_task_losses,
)
from ._validate import ADAM_HYPERPARAMETERS, Hyperparameter, checked, choice, non_negative_floats, optional

__all__ = ["MAO", "MAO_HYPERPARAMETERS"]

Reduction = Literal["sum", "mean"]

MAO_HYPERPARAMETERS: Mapping[str, Hyperparameter] = {
    "reduction": Hyperparameter("sum", choice("sum", "mean"), "add the tasks' normalised steps, or average them"),
    "task_weights": Hyperparameter(None, optional(non_negative_floats), "w_k per task (default all 1)"),
}
"""What MAO adds to Adam's hyperparameters (declared once: :class:`MAO` and ``make("mao")`` read it)."""

_GROUP_CHECKS = {name: h.check for name, h in {**ADAM_HYPERPARAMETERS, **MAO_HYPERPARAMETERS}.items()}


class MAO(ObservableMixin, Optimizer):
    r"""Multi-Adaptive Optimization: per-task Adam normalisation of every parameter, then a sum.

    .. math::
       \begin{aligned}
            &\rule{110mm}{0.4pt}                                                                  \\
            &\textbf{input}: \gamma \text{ (lr)}, \beta_1, \beta_2 \text{ (betas)}, \epsilon \text{ (eps)},
                \lambda \text{ (weight decay)}, \theta_0 \text{ (params)},
                f_1, \dots, f_T \text{ (task losses)}                                              \\
            &\hspace{13mm} w_1, \dots, w_T \text{ (task weights, default 1)}, \:
                s = 1 \text{ (reduction="sum") or } 1/T \text{ (reduction="mean")}               \\
            &\textbf{initialize}: \text{per parameter } \theta \text{ and task } k:
                m_{0,k} \leftarrow 0, \: v_{0,k} \leftarrow 0 \text{ (when } k \text{ first reaches } \theta)\\
            &\rule{110mm}{0.4pt}                                                                  \\
            &\textbf{for} \: t = 1 \: \textbf{to} \: \ldots \: \textbf{do}
                \text{ (per parameter: the steps at which some task reaches } \theta)              \\
            &\hspace{5mm}\theta_t \leftarrow \theta_{t-1} (1 - \gamma \lambda)                   \\
            &\hspace{5mm}\textbf{for} \: k \in K(\theta)
                \text{ (the tasks that have reached } \theta) \: \textbf{do}                      \\
            &\hspace{10mm}g_{t,k} \leftarrow \nabla_{\theta} f_k (\theta_{t-1})
                \text{ (0 if } k \text{ does not reach } \theta \text{ at this step)}            \\
            &\hspace{10mm}m_{t,k} \leftarrow \beta_1 m_{t-1,k} + (1 - \beta_1) g_{t,k}            \\
            &\hspace{10mm}v_{t,k} \leftarrow \beta_2 v_{t-1,k} + (1 - \beta_2) g^2_{t,k}          \\
            &\hspace{10mm}\widehat{m_{t,k}} \leftarrow m_{t,k} / \big(1 - \beta_1^t \big)        \\
            &\hspace{10mm}\widehat{v_{t,k}} \leftarrow v_{t,k} / \big(1 - \beta_2^t \big)        \\
            &\hspace{10mm}u_{t,k} \leftarrow \widehat{m_{t,k}} / \big(\sqrt{\widehat{v_{t,k}}} + \epsilon \big) \\
            &\hspace{5mm}\theta_t \leftarrow \theta_t - \gamma \, s \sum_{k \in K(\theta)} w_k u_{t,k} \\
            &\rule{110mm}{0.4pt}                                                                  \\[-1.ex]
            &\bf{return} \: \theta_t                                                             \\[-1.ex]
            &\rule{110mm}{0.4pt}                                                                  \\[-1.ex]
       \end{aligned}

    In optax terms: per-task ``scale_by_adam``, then a (weighted) sum.  The arithmetic is
    :func:`mao_lab.mao`'s, as ``torch.optim.Adam``'s is ``torch.optim.adam.adam``'s.

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
        distributed: data parallelism (see :class:`~mao_lab._distributed.DistributedSetting`): ``None``
            averages the loss values and every task's gradients over the default process group whenever
            ``torch.distributed`` runs more than one process (DDP-wrapped model or not), ``False`` never,
            or a ``ProcessGroup`` / the ``DistributedDataParallel`` module to average over its group.
        max_grad_norm: clip all the tasks' gradients together to this norm (``None``: no clipping).
        max_task_grad_norm: clip each task's gradient to this norm, before its moments see it.
        foreach: the ``torch._foreach_*`` implementation for every parameter (``False``: the single-tensor
            reference loop).
        fused: torch's fused Adam kernel (``torch.optim.adam.adam(..., fused=True)``), one pass per
            parameter and task, for every parameter it takes (CPU, single or double precision; foreach for
            the others).  ``foreach`` and ``fused`` cannot both be ``True``.  With neither: on the CPU the
            fused kernel where tasks meet and foreach (Adam's arithmetic) where one task reaches, foreach on
            CUDA; the faster, as measured by ``python -m mao_lab.bench step`` (see :func:`mao_lab.mao`).

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

    #: ``torch.amp.GradScaler.step(optimizer, losses)`` hands the scaler to :meth:`step` (see ``grad_scaler``).
    _step_supports_amp_scaling = True

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        reduction: Reduction = "sum",
        task_weights: Sequence[float] | None = None,
        *,
        check_finite: bool = True,
        distributed: Any = None,
        max_grad_norm: float | None = None,
        max_task_grad_norm: float | None = None,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        _check_implementation_flags(foreach, fused, "MAO")
        given = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, reduction=reduction, task_weights=task_weights
        )
        defaults = checked({**ADAM_HYPERPARAMETERS, **MAO_HYPERPARAMETERS}, given, "MAO")
        # Fixed by the first step; kept in param_groups so that state_dict carries them.
        defaults.update(num_tasks=None, task_names=None)
        defaults.update(foreach=foreach, fused=fused)  # as Adam keeps them: state_dict carries them
        super().__init__(params, defaults)
        self.check_finite = check_finite
        self._distributed = DistributedSetting(distributed)
        self.max_grad_norm = check_max_norm("max_grad_norm", max_grad_norm)
        self.max_task_grad_norm = check_max_norm("max_task_grad_norm", max_task_grad_norm)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        group = dict(param_group)
        for name, check in _GROUP_CHECKS.items():
            if name in group:
                group[name] = check(name, group[name])
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        if len({id(p) for p in params}) != len(params):
            raise ValueError("MAO: a parameter is listed twice in a parameter group; list every parameter once")
        group["params"] = params
        super().add_param_group(group)

    @property
    def num_tasks(self) -> int | None:
        """The number of tasks, fixed by the first step (``None`` before it)."""
        known = {g["num_tasks"] for g in self.param_groups if g.get("num_tasks") is not None}
        return known.pop() if known else None

    @property
    def task_names(self) -> tuple[str, ...] | None:
        """The tasks' names in the order of the per-task moments, fixed by the first step."""
        known = {tuple(g["task_names"]) for g in self.param_groups if g.get("task_names") is not None}
        return known.pop() if known else None

    def trainable_params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"] if p.requires_grad]

    # -- the step --------------------------------------------------------------------------------------

    @property
    def skipped_steps(self) -> int:
        """Steps skipped because a loss-scaled gradient overflowed (see ``grad_scaler`` in :meth:`step`)."""
        return self.__dict__.get("_skipped_steps", 0)

    @torch.no_grad()
    def step(  # type: ignore[override]
        self,
        losses: TaskLosses | Callable[[], TaskLosses] | None = None,
        *,
        task_grads: TaskGradients | None = None,
        features: Tensor | Sequence[Tensor] | None = None,
        batched: bool = False,
        grad_scaler: Any = None,
    ) -> Tensor:
        """Take one MAO step and return the per-task losses (detached, shape ``(T,)``).

        Args:
            losses: per-task scalar losses (or a closure returning them); MAO backpropagates each task.
                Given as a dict, tasks are matched to their moments by name (the order may change).
            task_grads: per-task gradients computed elsewhere, instead of ``losses``.
            features: the shared representation, to stop each head's backward there (see
                :func:`compute_task_gradients`); enables ``batched``.
            batched: backpropagate all tasks through the trunk in one vmapped call (GPU).
            grad_scaler: a ``torch.amp.GradScaler`` (passed by ``scaler.step(optimizer, losses)``): the
                losses are backpropagated times its scale; a step whose gradients overflow is skipped
                (nothing changes, :attr:`skipped_steps` counts it) and ``scaler.update()`` lowers the
                scale.  ``task_grads`` are then taken to be gradients of the scaled losses.

        Under ``torch.distributed`` (see ``distributed`` in the class docstring) the loss values and
        every task's gradients are averaged over the processes, so every process takes the same step.
        On bad input (NaN/Inf loss or gradient, wrong task count or names, gradients of another
        shape, dtype or device, a ``.grad`` written by ``loss.backward()``, ...) raises
        :class:`TaskInputError` (or ``RuntimeError``) naming the problem, and leaves the parameters and
        the optimizer state exactly as they were.
        """
        if (losses is None) == (task_grads is None):
            raise TypeError("MAO.step needs exactly one of `losses` or `task_grads`")
        path = self._gradient_path(grad_scaler)
        observers = self._observers_wanting_record()
        values: Tensor | None = None
        try:
            if losses is not None:
                refuse_written_grads(self.trainable_params(), "MAO.step")
                with torch.enable_grad():
                    given = losses() if callable(losses) else losses
                    names, loss_list = ordered_task_losses(given, self.task_names)
                    loss_list = path.losses(loss_list)
                values = torch.stack([loss.detach().reshape(()) for loss in loss_list])
                record = self._step_on_losses(
                    names, loss_list, features=features, batched=batched, keep=bool(observers), path=path
                )
            else:
                assert task_grads is not None
                values = torch.full((task_grads.num_tasks,), float("nan"))
                task_grads = path.joint(path.given_task_gradients(task_grads))
                task_updates = self._apply_task_gradients(task_grads, keep_task_updates=bool(observers))
                record = StepRecord(self.task_names or task_grads.task_names, values, task_grads, task_updates)
        except LossScaleOverflow:
            self._skipped_steps = self.skipped_steps + 1
            report_found_inf(grad_scaler, self, True)
            assert values is not None
            return values
        report_found_inf(grad_scaler, self, False)
        if observers:
            self._notify(observers, record)
        return record.losses

    def _gradient_path(self, grad_scaler: Any) -> GradientPath:
        """How this step's gradients are made: averaged over the replicas, loss-scaled, clipped."""
        options = self.__dict__  # read with defaults: Optimizer pickling keeps only state and groups
        setting = options.get("_distributed") or DistributedSetting()
        return GradientPath(
            replicas=setting.resolve(self.trainable_params(), "MAO"),
            scale=loss_scale(grad_scaler),
            max_task_grad_norm=options.get("max_task_grad_norm"),
            max_grad_norm=options.get("max_grad_norm"),
        )

    @torch.no_grad()
    def _step_on_losses(
        self,
        names: tuple[str, ...],
        losses: list[Tensor],
        *,
        features: Tensor | Sequence[Tensor] | None = None,
        batched: bool = False,
        keep: bool = False,
        path: GradientPath | None = None,
    ) -> StepRecord:
        """The step from validated losses, in task order: what :meth:`step` and ``make("mao")`` both run.

        The per-task gradients are computed with the gradient reserve (the last step's gradient
        memory, reused task by task) and checked for NaN/Inf as they come out; ``path`` averages them
        over the replicas, unscales and clips them.  With ``keep`` the record holds them and each
        task's part of the update.
        """
        path = path or GradientPath()
        self._check_num_tasks(len(names))
        with torch.enable_grad():
            task_grads = path.task_gradients(
                dict(zip(names, losses)),
                self.trainable_params(),
                features=features,
                batched=batched,
                reserve=None if batched else self._gradient_reserve(),
                check_finite=self.check_finite,
            )
        task_grads = path.joint(task_grads)
        task_updates = self._apply(task_grads, keep, trusted=True)
        loss_values = torch.stack([loss.detach().reshape(()) for loss in losses])
        return StepRecord(names, loss_values, task_grads if keep else None, task_updates)

    @torch.no_grad()
    def _apply_task_gradients(self, task_grads: TaskGradients, keep_task_updates: bool = False) -> TaskUpdates | None:
        """The update alone, from per-task gradients (what :meth:`step` does with ``task_grads``).

        With ``keep_task_updates`` it returns each task's part of the parameter change (``lr * w_k * u_k``,
        divided by ``T`` for ``reduction="mean"``), so that the step moved ``p`` by ``-sum_k`` of them
        (plus weight decay).  Checks everything before modifying anything.
        """
        return self._apply(task_grads, keep_task_updates, trusted=False)

    def _apply(self, task_grads: TaskGradients, keep: bool, trusted: bool) -> TaskUpdates | None:
        task_grads = self._in_state_order(task_grads)
        if not trusted:  # gradients from elsewhere: the kernels below would read any tensor given
            task_grads.check_against(self.trainable_params())
        self._check_groups(task_grads.num_tasks)
        if self.check_finite:
            task_grads.check_finite()
        reserved = self._reserve_state(task_grads)
        try:
            task_updates = self._update(task_grads, keep)
        except BaseException:
            # Out of memory before the arithmetic began (mao() allocates its buffers before it modifies
            # anything): the state goes back to what it was, so the step changed nothing.
            if not self.__dict__.pop("_arithmetic_began", False):
                for p, old in reserved:
                    if old is None:
                        del self.state[p]
                    else:
                        self.state[p] = old
            raise
        finally:
            self.__dict__.pop("_arithmetic_began", None)
        for group in self.param_groups:
            group["num_tasks"] = task_grads.num_tasks
            group["task_names"] = task_grads.task_names
        return task_updates

    def _gradient_reserve(self) -> GradientReserve:
        # Not in __init__: a cache, left out of copies (see __getstate__) and made again here.
        reserve = self.__dict__.get("_task_gradient_reserve")
        if reserve is None:
            reserve = self._task_gradient_reserve = GradientReserve()
        return reserve

    # -- copies (copy.deepcopy, pickle) --------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """Everything but observers, hooks, a scheduler's wrapper and caches (``torch.optim`` keeps only
        ``defaults``, ``state`` and ``param_groups``: ``check_finite`` would be lost)."""
        return copyable_state(self)

    # -- memory ----------------------------------------------------------------------------------------

    def state_bytes(self, num_tasks: int, *, reach: Mapping[Tensor, Collection[int]] | None = None) -> int:
        """The bytes of the state once every parameter has been stepped: per parameter, a step counter and
        two moments (in the parameter's dtype) per task that reaches it.  ``reach`` says which tasks reach
        each parameter (one not listed: every task; without it, every parameter: an upper bound).
        See :func:`mao_lab.state_bytes`."""
        tasks_of = tasks_reaching(num_tasks, reach)
        return sum(
            step_counter_bytes() + 2 * len(tasks_of(p)) * p.numel() * p.element_size()
            for p in self.trainable_params()
            if tasks_of(p)
        )

    def _reserve_state(self, task_grads: TaskGradients) -> list[tuple[Tensor, dict[str, Any] | None]]:
        """Allocate the state this step adds (parameters stepped for the first time, tasks new to a
        parameter) in every group before committing any of it, after checking on CUDA that it fits.

        So running out of memory here leaves every group as it was; the update then allocates no state.
        """
        plans = plan_task_state(
            self.param_groups,
            self.state,
            task_grads,
            lambda p: 2 * p.numel() * p.element_size(),  # two moments
            f"MAO's state for {task_grads.num_tasks} tasks",
        )
        pending: list[tuple[Tensor, dict[str, Any]]] = []
        for p, old, tasks in plans:
            moments = {}
            for key in ("exp_avg", "exp_avg_sq"):
                moment = torch.zeros((len(tasks), *p.shape), dtype=p.dtype, device=p.device)
                if old is not None:  # a task new to p joins with zero moments, the others keep theirs
                    moment[[tasks.index(k) for k in old["tasks"]]] = old[key]
                moments[key] = moment
            step = torch.tensor(0.0) if old is None else old["step"]
            pending.append((p, {"step": step, "tasks": tasks, **moments}))
        for p, state in pending:  # the commit: no allocation from here on
            self.state[p] = state
        return [(p, old) for p, old, _ in plans]  # what the commit replaced, to undo it

    # -- checks (before anything is modified) ------------------------------------------------------

    def _check_num_tasks(self, num_tasks: int) -> None:
        expected = self.num_tasks
        if expected is not None and num_tasks != expected:
            raise TaskInputError(
                f"this MAO optimizer was stepped with {expected} tasks, now got {num_tasks}: the task count "
                "cannot change between steps (each task owns moments in the optimizer state)"
            )

    def _in_state_order(self, task_grads: TaskGradients) -> TaskGradients:
        """Gradients with their tasks in the order of the moments: by name, or by position when they
        carry the default names (``task0``, ...) of gradients built without names."""
        self._check_num_tasks(task_grads.num_tasks)
        expected = self.task_names
        if expected is None or task_grads.task_names == expected:
            return task_grads
        positional = task_grads.task_names == tuple(f"task{k}" for k in range(task_grads.num_tasks))
        if positional:
            return type(task_grads)(expected, task_grads.params, task_grads.tasks, task_grads.grads)
        match_task_order(task_grads.task_names, expected, by_name=True)  # raises on new or missing names
        return task_grads.in_task_order(expected)

    def _check_groups(self, num_tasks: int) -> None:
        """The groups' hyperparameters (a scheduler or a user may have changed them since) and weights."""
        for g, group in enumerate(self.param_groups):
            for name, check in _GROUP_CHECKS.items():
                try:
                    check(name, group[name])
                except ValueError as error:
                    raise ValueError(f"MAO parameter group {g}: {error}") from None
            check_eps_for_dtypes(group["params"], group["eps"], f"MAO parameter group {g}")
            weights = group["task_weights"]
            if weights is not None and len(weights) != num_tasks:
                raise TaskInputError(f"task_weights has {len(weights)} entries but there are {num_tasks} tasks")

    # -- the update ----------------------------------------------------------------------------------

    def _update(self, task_grads: TaskGradients, keep: bool) -> TaskUpdates | None:
        """Gather each group's lists (as ``torch.optim.Adam`` does in ``_init_group``), then :func:`mao`."""
        for g, group in enumerate(self.param_groups):  # before anything is modified
            _check_implementation_flags(group.get("foreach"), group.get("fused"), f"MAO parameter group {g}")
        where = task_grads.index()
        kept: dict[int, Tensor] = {}
        # Every group's lists (and the zero rows they need) before any group's arithmetic.
        gathered = [(group, self._init_group(group, task_grads, where)) for group in self.param_groups]
        for group, lists in gathered:
            if not lists.params:
                continue
            beta1, beta2 = group["betas"]
            parts: list[Tensor] | None = [] if keep else None
            mao(
                lists.params, lists.grads, lists.exp_avgs, lists.exp_avg_sqs, lists.state_steps,
                task_weights=lists.task_weights, foreach=group.get("foreach"), fused=group.get("fused"),
                lr=float(group["lr"]), beta1=beta1, beta2=beta2, eps=group["eps"],
                weight_decay=group["weight_decay"], task_updates_out=parts,
            )  # fmt: skip
            # A later group running out of memory would leave this group stepped: no undo then.  (The first
            # call allocates its buffers before it modifies anything.)
            self.__dict__["_arithmetic_began"] = True
            if parts is not None:
                kept.update(zip(lists.indices, parts))
        if not keep:
            return None
        order = sorted(kept)
        return TaskUpdates(
            task_grads.task_names,
            tuple(task_grads.params[i] for i in order),
            tuple(self.state[task_grads.params[i]]["tasks"] for i in order),
            tuple(kept[i] for i in order),
        )

    def _init_group(self, group: Mapping[str, Any], task_grads: TaskGradients, where: Mapping[int, int]) -> _GroupLists:
        """The lists :func:`mao` takes for one group: the parameters some task reached at this step (like
        Adam with ``p.grad`` None, one no task reached is left alone), their state, created or widened,
        each row's gradient (zeros for a task of the state that did not reach ``p`` now) and factor."""
        num_tasks = task_grads.num_tasks
        scale = 1.0 / num_tasks if group["reduction"] == "mean" else 1.0
        weights = group["task_weights"]
        lists = _GroupLists([], [], [], [], [], [], [])
        for p in group["params"]:
            i = where.get(id(p))
            if i is None or not task_grads.tasks[i]:
                continue
            state = self._prepared_state(p, task_grads.tasks[i])
            lists.params.append(p)
            lists.grads.append(_aligned_rows(task_grads, i, state["tasks"]))
            lists.exp_avgs.append(state["exp_avg"])
            lists.exp_avg_sqs.append(state["exp_avg_sq"])
            lists.state_steps.append(state["step"])
            lists.task_weights.append(tuple((1.0 if weights is None else weights[k]) * scale for k in state["tasks"]))
            lists.indices.append(i)
        return lists

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

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("check_finite", True)  # a copy pickled before check_finite travelled
        for group in self.param_groups:  # groups saved before MAO had these flags
            group.setdefault("foreach", None)
            group.setdefault("fused", None)

    # -- checkpoints -----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "optimizer_class": "MAO"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`, after checking that it is MAO's and fits these parameters.

        Moments of another shape (a checkpoint of another model size), another group layout, another
        task count than the one this optimizer was stepped with, or an other optimizer's state raise
        :class:`~mao_lab.CheckpointError` and change nothing.  Floating-point moments of another dtype
        are cast to the parameter's, as ``torch.optim`` does.
        """
        self.check_state_dict(state_dict)
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "optimizer_class"})

    def check_state_dict(self, state: object) -> None:
        """Raise :class:`~mao_lab.CheckpointError` unless ``state`` can be loaded into this optimizer."""
        if isinstance(state, Mapping) and state.get("optimizer_class", "MAO") != "MAO":
            raise CheckpointError(f"a {state['optimizer_class']} state cannot be loaded into MAO")
        check_optimizer_state(self, state, _check_param_state, _GROUP_CHECKS, "MAO")
        assert isinstance(state, Mapping)
        counts = {g.get("num_tasks") for g in state["param_groups"]} - {None}
        names = {None if g.get("task_names") is None else tuple(g["task_names"]) for g in state["param_groups"]} - {
            None
        }
        if len(counts) > 1 or len(names) > 1:
            raise CheckpointError(f"MAO: the parameter groups disagree on the tasks: {sorted(counts)}, {sorted(names)}")
        saved = counts.pop() if counts else None
        if saved is not None and (isinstance(saved, bool) or not isinstance(saved, int) or saved < 1):
            raise CheckpointError(f"MAO: num_tasks must be an integer >= 1, got {saved!r}")
        if names and len(next(iter(names))) != saved:
            raise CheckpointError(f"MAO: {saved} tasks but task names {next(iter(names))}")
        if self.num_tasks is not None and saved is not None and saved != self.num_tasks:
            raise CheckpointError(
                f"MAO: this optimizer was stepped with {self.num_tasks} tasks; the state is for {saved}"
            )
        for key, param_state in state["state"].items():
            tasks = param_state["tasks"]
            if saved is None or tasks[-1] >= saved:
                raise CheckpointError(
                    f"MAO: parameter {key!r} has moments for tasks {tasks}, but the state has {saved} tasks"
                )


def _check_param_state(p: Tensor, saved: Mapping[str, Any], where: str) -> None:
    """One parameter's saved MAO state: a step count, the tasks, and one pair of moments per task."""
    if set(saved) != {"step", "tasks", "exp_avg", "exp_avg_sq"}:
        raise CheckpointError(
            f"{where}: state entries {sorted(saved)} are not MAO's (step, tasks, exp_avg, exp_avg_sq)"
        )
    tasks = saved["tasks"]
    if (
        not isinstance(tasks, (tuple, list))
        or not tasks
        or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in tasks)
        or any(a >= b for a, b in zip(tasks, tasks[1:]))
    ):
        raise CheckpointError(f"{where}: tasks must be increasing task indices, got {tasks!r}")
    check_step(saved["step"], f"{where}: step")
    for key in ("exp_avg", "exp_avg_sq"):
        check_tensor(saved[key], f"{where}: {key}", (len(tasks), *p.shape))


def _check_implementation_flags(foreach: object, fused: object, where: str) -> None:
    """``foreach`` and ``fused``: each ``None`` or a bool, and not both ``True`` (as for ``torch.optim.Adam``)."""
    for name, value in (("foreach", foreach), ("fused", fused)):
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"{where}: {name} must be None, True or False, got {value!r}")
    if foreach and fused:
        raise RuntimeError(f"{where}: `fused` and `foreach` cannot be `True` together.")


# -- gathering the lists --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _GroupLists:
    """What :func:`mao` takes for one parameter group, and where each parameter is in the gradients."""

    params: list[Tensor]
    grads: list[tuple[Tensor, ...]]
    exp_avgs: list[Tensor]
    exp_avg_sqs: list[Tensor]
    state_steps: list[Tensor]
    task_weights: list[tuple[float, ...]]
    indices: list[int]


def _aligned_rows(task_grads: TaskGradients, i: int, state_tasks: tuple[int, ...]) -> tuple[Tensor, ...]:
    """This step's gradient of parameter ``i`` for every task of its state, zeros for tasks that did not
    reach it (their moments decay as if their gradient had been tracked as zero)."""
    rows, grad_tasks = task_grads.rows(i), task_grads.tasks[i]
    if grad_tasks == state_tasks:
        return rows
    by_task = dict(zip(grad_tasks, rows))
    zeros = torch.zeros_like(task_grads.params[i], memory_format=torch.contiguous_format)
    return tuple(by_task.get(k, zeros) for k in state_tasks)
