"""MTAdam — Multi-Term Adam (Malkiel & Wolf, EMNLP 2021), written here (TorchJD has no MTAdam).

For every parameter tensor ("layer") ``p`` and every task ``k`` reaching it, with ``g_k = dL_k/dp``::

    n_k <- b3 n_k + (1 - b3) ||g_k||          (n_k starts at the first ||g_k||)
    ĝ_k  = g_k * n_a / n_k                    (a: the first task with n_a > 1e-10, the "first loss")
    m_k <- b1 m_k + (1 - b1) ĝ_k               v_k <- b2 v_k + (1 - b2) ĝ_k^2
    p   <- p - lr / (1 - b1^t) * sum_k m_k / (max_k sqrt(v_k / (1 - b2^t)) + eps)

So every task's gradient is rescaled, layer by layer, to the running gradient norm of the first task,
and one shared step divides by the element-wise maximum of the per-task Adam denominators.  With one
task it is exactly Adam.  Unlike the public code, the state lives in ``state_dict``, any device works,
a task that does not reach ``p`` at a step leaves ``n_k`` alone and feeds zeros to its moments, and
weight decay is decoupled (AdamW-style), once per step.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .._checkpoints import CheckpointError, check_optimizer_state, check_step, check_tensor
from .._memory import plan_task_state, step_counter_bytes, tasks_reaching
from .._observe import StepRecord
from .._task_gradients import TaskGradients, TaskUpdates
from .._validate import ADAM_HYPERPARAMETERS, Hyperparameter, number
from ._base import LossClosure, OptimizerMethod
from ._registry import register

__all__ = ["MTAdam", "MTAdamMethod"]

_TINY = 1e-10  # below this a running norm counts as zero, as in the public code
_BETA3 = Hyperparameter(0.9, number(0.0, 1.0, high_open=True), "decay of the running gradient norms")


class MTAdam(Optimizer):
    """The MTAdam update from per-task gradients (:class:`~mao_lab.TaskGradients`).

    >>> w = torch.tensor([1.0, -1.0], requires_grad=True)
    >>> opt = MTAdam([w], lr=0.1)
    >>> from mao_lab import compute_task_gradients
    >>> g = compute_task_gradients([w.pow(2).sum(), 100 * w.sum()], [w])
    >>> parts = opt.apply_task_gradients(g, keep_task_updates=True)
    >>> w.detach()  # task 1 is rescaled to task 0's gradient norm before its Adam moments
    tensor([ 0.8000, -1.0000])
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        beta3: float = 0.9,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        given = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        defaults = {k: ADAM_HYPERPARAMETERS[k].check(k, v) for k, v in given.items()}
        defaults["beta3"] = _BETA3.check("beta3", beta3)
        super().__init__(params, defaults)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "optimizer_class": "MTAdam"}

    def check_state_dict(self, state: object) -> None:
        """Raise :class:`~mao_lab.CheckpointError` unless ``state`` is an MTAdam state that fits the parameters."""
        if isinstance(state, Mapping) and state.get("optimizer_class", "MTAdam") != "MTAdam":
            raise CheckpointError(f"a {state['optimizer_class']} state cannot be loaded into MTAdam")

        def check_param(p: Tensor, saved: Mapping[str, Any], where: str) -> None:
            if set(saved) != {"step", "tasks", "norms", "seen", "exp_avg", "exp_avg_sq"}:
                raise CheckpointError(f"{where}: state entries {sorted(saved)} are not MTAdam's")
            tasks = saved["tasks"]
            if not isinstance(tasks, (tuple, list)) or not all(isinstance(k, int) and k >= 0 for k in tasks):
                raise CheckpointError(f"{where}: tasks must be task indices, got {tasks!r}")
            check_step(saved["step"], f"{where}: step")
            for key in ("norms", "seen"):
                check_tensor(saved[key], f"{where}: {key}", (len(tasks),))
            for key in ("exp_avg", "exp_avg_sq"):
                check_tensor(saved[key], f"{where}: {key}", (len(tasks), *p.shape))

        checks = {k: h.check for k, h in ADAM_HYPERPARAMETERS.items()} | {"beta3": _BETA3.check}
        check_optimizer_state(self, state, check_param, checks, "MTAdam")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.check_state_dict(state_dict)
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "optimizer_class"})

    @torch.no_grad()
    def apply_task_gradients(self, task_grads: TaskGradients, keep_task_updates: bool = False) -> TaskUpdates | None:
        """One MTAdam step; with ``keep_task_updates`` return each task's part ``lr/(1-b1^t) m_k / max denom``."""
        task_grads.check_against([p for group in self.param_groups for p in group["params"]])
        self._reserve_state(task_grads)
        where = task_grads.index()
        planned: list[tuple[Tensor, dict[str, Any], _Planned]] = []
        for group in self.param_groups:  # everything computed first, nothing changed: memory can run out here
            for p in group["params"]:
                i = where.get(id(p))
                if i is not None and task_grads.tasks[i]:
                    state = self.state[p]  # made by _reserve_state
                    planned.append((p, state, self._planned(p, state, group, task_grads.tasks[i], task_grads.grads[i])))
        for p, state, plan in planned:  # the commit: in place, nothing allocated
            plan.commit(p, state)
        if not keep_task_updates:
            return None
        return TaskUpdates(
            task_grads.task_names,
            tuple(p for p, _, _ in planned),
            tuple(state["tasks"] for _, state, _ in planned),
            tuple(plan.parts for _, _, plan in planned),
        )

    @staticmethod
    def _planned(
        p: Tensor, state: dict[str, Any], group: dict[str, Any], reaching: tuple[int, ...], grads: Tensor
    ) -> _Planned:
        """The step of ``p``, computed out of place (the state and ``p`` are left as they are)."""
        beta1, beta2 = group["betas"]
        rows = [state["tasks"].index(k) for k in reaching]
        t = float(state["step"] + 1)

        norms, seen = state["norms"].clone(), state["seen"].clone()
        current = torch.linalg.vector_norm(grads.reshape(len(reaching), -1), dim=1).to(norms)
        running = group["beta3"] * norms[rows] + (1 - group["beta3"]) * current
        norms[rows] = torch.where(seen[rows] > 0, running, current)
        seen[rows] = 1.0

        anchors = (norms > _TINY).nonzero()
        anchor = norms[int(anchors[0])] if len(anchors) else None
        scaled = torch.zeros((len(state["tasks"]), *p.shape), dtype=p.dtype, device=p.device)
        for row, g in zip(rows, grads):
            own = norms[row]
            scaled[row] = g * (anchor / own).to(g) if anchor is not None and own > _TINY else g

        exp_avg = state["exp_avg"].lerp(scaled, 1 - beta1)
        exp_avg_sq = state["exp_avg_sq"].mul(beta2).addcmul_(scaled, scaled, value=1 - beta2)
        denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**t) + group["eps"]).amax(dim=0)
        parts = exp_avg / denom * (group["lr"] / (1 - beta1**t))
        decay = 1 - group["lr"] * group["weight_decay"] if group["weight_decay"] != 0 else None
        return _Planned(norms, seen, exp_avg, exp_avg_sq, parts, parts.sum(0), decay)

    def state_bytes(self, num_tasks: int, *, reach: Mapping[Tensor, Collection[int]] | None = None) -> int:
        """The bytes of the state once every parameter has been stepped: per parameter, a step counter, and
        per task reaching it a running norm, a flag and two moments (see :func:`mao_lab.state_bytes`)."""
        tasks_of = tasks_reaching(num_tasks, reach)
        return sum(
            step_counter_bytes() + 2 * len(tasks_of(p)) * (p.numel() + 1) * p.element_size()
            for group in self.param_groups
            for p in group["params"]
            if tasks_of(p)
        )

    def _reserve_state(self, task_grads: TaskGradients) -> None:
        """Make the state of every parameter this step reaches (zeros for tasks new to it), checked to fit
        on CUDA, before committing any: running out of memory here changes nothing."""
        plans = plan_task_state(
            self.param_groups,
            self.state,
            task_grads,
            lambda p: 2 * (p.numel() + 1) * p.element_size(),  # two moments, a running norm and a flag
            f"MTAdam's state for {task_grads.num_tasks} tasks",
        )
        pending = []
        for p, old, tasks in plans:
            state: dict[str, Any] = {"step": torch.tensor(0.0) if old is None else old["step"], "tasks": tasks}
            for key, shape in (("norms", ()), ("seen", ()), ("exp_avg", p.shape), ("exp_avg_sq", p.shape)):
                # In the parameter's dtype, which load_state_dict casts state to: "seen" is a 0/1 flag.
                value = p.new_zeros((len(tasks), *shape))
                if old is not None:
                    value[[tasks.index(k) for k in old["tasks"]]] = old[key]
                state[key] = value
            pending.append((p, state))
        for p, state in pending:  # the commit: no allocation from here on
            self.state[p] = state


@dataclass(frozen=True)
class _Planned:
    """One parameter's MTAdam step, computed but not applied: the new state and the change of ``p``."""

    norms: Tensor
    seen: Tensor
    exp_avg: Tensor
    exp_avg_sq: Tensor
    parts: Tensor  # each task's part of the change
    change: Tensor  # their sum
    decay: float | None  # what decoupled weight decay multiplies p by

    def commit(self, p: Tensor, state: dict[str, Any]) -> None:
        state["step"] += 1
        state.update(norms=self.norms, seen=self.seen, exp_avg=self.exp_avg, exp_avg_sq=self.exp_avg_sq)
        if self.decay is not None:
            p.mul_(self.decay)
        p.sub_(self.change)


@register("mtadam", "MTAdam: per-task Adam moments of layer-rescaled gradients, max denominator (Malkiel & Wolf 2021)")
class MTAdamMethod(OptimizerMethod):
    """MTAdam behind the method interface; see :class:`MTAdam`."""

    hyperparameters = {"beta3": _BETA3}

    def __init__(self, params: Iterable[Tensor], **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        hp = self.hparams
        self.optimizer = MTAdam(self.params, hp["lr"], hp["betas"], hp["beta3"], hp["eps"], hp["weight_decay"])

    def _step(self, closure: LossClosure, record: bool) -> StepRecord:
        names, losses = self._losses(closure)
        with torch.enable_grad():  # averaged over replicas, loss-scaled, clipped (mao_lab._gradient_path)
            task_grads = self._path.joint(self._path.task_gradients(dict(zip(names, losses)), self.params))
        task_grads.check_finite()
        task_updates = self.optimizer.apply_task_gradients(task_grads, keep_task_updates=record)
        values = torch.stack([loss.detach().reshape(()) for loss in losses])
        return StepRecord(names, values, task_grads if record else None, task_updates)
