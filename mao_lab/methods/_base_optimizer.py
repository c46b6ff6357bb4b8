"""The optimizer that turns a method's combined gradient into a parameter step: Adam (default) or SGD.

Weightings, aggregators and the independent-steps family all end the same way: write a gradient into
``p.grad`` and step a stock PyTorch optimizer.  :class:`BaseOptimizer` is that last stage, plus the one
thing PyTorch does not expose: the diagonal preconditioner ``D`` of the step just taken, which splits
the step by task (see :mod:`mao_lab.methods._contributions`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from .._checkpoints import CheckpointError, check_optimizer_state, check_step, check_tensor
from .._memory import step_counter_bytes, tasks_reaching
from .._validate import ADAM_HYPERPARAMETERS, Hyperparameter, choice
from ._base import Method

__all__ = ["BaseOptimizer", "OptimizerName", "SteppedMethod", "follow"]

OptimizerName = Literal["adam", "sgd"]


class BaseOptimizer:
    """``torch.optim.Adam`` (``foreach``, decoupled weight decay: AdamW) or plain ``torch.optim.SGD``.

    Args:
        params: the parameters it steps.
        kind: ``"adam"`` or ``"sgd"`` (no momentum: its step is exactly ``lr`` times the gradient).
        lr, betas, eps, weight_decay: as for ``torch.optim.AdamW`` (``betas``/``eps`` unused by SGD).

    >>> p = torch.zeros(2, requires_grad=True)
    >>> opt = BaseOptimizer([p], "sgd", lr=0.5)
    >>> opt.step([p], [torch.tensor([1.0, -2.0])])
    >>> p.detach(), opt.preconditioner(p)
    (tensor([-0.5000,  1.0000]), tensor([0.5000, 0.5000]))
    """

    def __init__(
        self,
        params: Sequence[Tensor],
        kind: OptimizerName = "adam",
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        given = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        lr, betas, eps, weight_decay = (ADAM_HYPERPARAMETERS[k].check(k, v) for k, v in given.items())
        self.kind = kind
        if kind == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(
                list(params),
                lr=lr,
                betas=tuple(betas),
                eps=eps,
                weight_decay=weight_decay,
                foreach=True,
                decoupled_weight_decay=True,
            )
        elif kind == "sgd":
            self.optimizer = torch.optim.SGD(list(params), lr=lr, weight_decay=weight_decay, foreach=True)
        else:
            raise ValueError(f"hyperparameter 'optimizer' must be 'adam' or 'sgd', got {kind!r}")

    def _group(self, p: Tensor) -> dict[str, Any]:
        for group in self.optimizer.param_groups:  # one group: the first test settles it
            if len(self.optimizer.param_groups) == 1 or any(q is p for q in group["params"]):
                return group
        raise KeyError("this parameter is not stepped by this optimizer")

    @torch.no_grad()
    def step(self, params: Sequence[Tensor], grads: Sequence[Tensor | None]) -> None:
        """Write ``grads`` into ``p.grad`` (``None`` leaves ``p`` alone, as Adam does), step, clear them."""
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        try:
            self.optimizer.step()
        finally:
            for p in params:
                p.grad = None

    def has_state(self, p: Tensor) -> bool:
        """Whether the optimizer keeps state for ``p``: Adam once it has stepped ``p``; SGD never."""
        return bool(self.optimizer.state.get(p))

    def decay_factor(self, p: Tensor) -> float:
        """What the decoupled weight decay multiplied ``p`` by in a step: ``1 - lr * weight_decay``."""
        group = self._group(p)
        return 1.0 - float(group["lr"]) * float(group["weight_decay"])

    @torch.no_grad()
    def preconditioner(self, p: Tensor) -> Tensor:
        """The diagonal ``D`` of the last step on ``p``: the step was ``D ⊙ m̂`` (Adam) or ``D ⊙ g`` (SGD).

        Adam: ``D = lr / (sqrt(v_t / (1 - b2^t)) + eps)``, from the state *after* the step, computed as
        ``torch.optim.Adam`` does; the step was ``D ⊙ m̂_t`` with ``m̂_t = m_t / (1 - b1^t)`` the
        bias-corrected first moment (an estimate of the gradient).  SGD: ``D = lr`` everywhere.
        """
        group = self._group(p)
        lr = float(group["lr"])
        if self.kind == "sgd":
            return torch.full_like(p, lr)
        state = self.optimizer.state[p]
        t = float(state["step"])
        _, beta2 = group["betas"]
        denom = state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2**t) + group["eps"]
        return lr / denom

    def state_bytes(self, params: Iterable[Tensor]) -> int:
        """The bytes of the state once ``params`` (those that get gradients) have been stepped: Adam keeps a
        step counter and two moments per parameter, SGD a momentum buffer only with momentum."""
        group = self.optimizer.param_groups[0]
        if self.kind == "adam":
            return sum(step_counter_bytes() + 2 * p.numel() * p.element_size() for p in params)
        return sum(p.numel() * p.element_size() for p in params) if group.get("momentum", 0) != 0 else 0

    @classmethod
    def from_hparams(cls, params: Sequence[Tensor], hparams: Mapping[str, Any], **overrides: Any) -> BaseOptimizer:
        """The optimizer a method's hyperparameters describe (``optimizer``, ``lr``, ``betas``, ...)."""
        given = {k: hparams[k] for k in ("lr", "betas", "eps", "weight_decay")}
        given.update(overrides)
        return cls(params, hparams["optimizer"], **given)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def check_state_dict(self, state: object, what: str) -> None:
        """Raise :class:`~mao_lab.CheckpointError` unless ``state`` is a state of this optimizer's kind
        whose moments fit its parameters."""
        expected = {"adam": {"step", "exp_avg", "exp_avg_sq"}, "sgd": {"momentum_buffer"}}[self.kind]

        def check_param(p: Tensor, saved: Mapping[str, Any], where: str) -> None:
            unknown = set(saved) - expected
            if unknown:
                raise CheckpointError(f"{where}: state entries {sorted(unknown)} are not {self.kind}'s")
            for key in expected & set(saved) - {"step"}:
                if saved[key] is not None:
                    check_tensor(saved[key], f"{where}: {key}", tuple(p.shape))
            if "step" in saved:
                check_step(saved["step"], f"{where}: step")

        names = ("lr", "betas", "eps", "weight_decay") if self.kind == "adam" else ("lr", "weight_decay")
        checks = {k: ADAM_HYPERPARAMETERS[k].check for k in names}
        check_optimizer_state(self.optimizer, state, check_param, checks, what)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)


def follow(lead: Mapping[str, Any], group: dict[str, Any], names: frozenset[str] | None = None) -> None:
    """Give ``group`` the hyperparameters of ``lead``: all but ``params``, or those of ``names`` it has.

    >>> group = {"params": [], "lr": 0.1, "weight_decay": 0.0}
    >>> follow({"params": [], "lr": 0.01, "weight_decay": 0.5, "initial_lr": 0.1}, group, frozenset({"lr"}))
    >>> group
    {'params': [], 'lr': 0.01, 'weight_decay': 0.0}
    """
    for key, value in lead.items():
        if key != "params" and (names is None or (key in names and key in group)):
            group[key] = value


class SteppedMethod(Method):
    """A method whose step ends with one step of a :class:`BaseOptimizer` (``self.base``) on a direction
    it computed: the weightings, the aggregators and the independent steps.

    What balances the tasks (a TorchJD scalarizer or aggregator, GradNorm's weights) usually depends
    on the number of tasks: it is made by :meth:`_build` at the first step (or when a state is
    loaded).  A subclass whose balancer keeps state between steps saves it, once built, as the
    ``"balancer"`` entry of :meth:`_method_state`, and loads it in :meth:`_load_method_state` after
    ``super()``'s, which has checked the base optimizer's state and (re)built the balancer for the
    state's tasks.  A balancer state that does not fit is refused before anything changes: it is
    first loaded into a scratch copy's own fresh balancer (:meth:`_check_balancer`).
    """

    hyperparameters = {
        "optimizer": Hyperparameter("adam", choice("adam", "sgd"), "the base optimizer: Adam (AdamW decay) or SGD")
    }
    #: The TorchJD class a method wraps, when it needs no argument (read by the families' default builders).
    torchjd_class: ClassVar[Callable[[], Any] | None] = None
    _built_for: int | None = None

    def __init__(self, params: Iterable[Tensor], **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.base = BaseOptimizer.from_hparams(self.params, self.hparams)

    def _state_bytes(self, num_tasks: int, reach: Mapping[Tensor, Collection[int]] | None) -> int:
        tasks_of = tasks_reaching(num_tasks, reach)
        return self.base.state_bytes(p for p in self.params if tasks_of(p))

    # -- the leading optimizer and its followers ----------------------------------------------------------

    def _lead_optimizer(self) -> torch.optim.Optimizer | None:
        base = self.__dict__.get("base")
        return None if base is None else base.optimizer

    def _followers(self) -> list[tuple[BaseOptimizer, frozenset[str] | None]]:
        """The optimizers that take the leading one's hyperparameters before every step, each with the
        names it takes (``None``: all); the default has none."""
        return []

    def _follow_lead(self) -> None:
        lead = self.param_groups[0]
        for follower, names in self._followers():
            for group in follower.optimizer.param_groups:
                follow(lead, group, names)

    # -- the balancer, built for a number of tasks ------------------------------------------------------

    def _build(self, num_tasks: int) -> None:
        """Create what depends on the number of tasks."""

    def _unbuild(self) -> None:
        """Forget what :meth:`_build` created."""

    def _ensure_built(self, num_tasks: int) -> None:
        if self._built_for is None:
            self._build(num_tasks)
            self._built_for = num_tasks

    # -- state: the base optimizer, and the balancer built for a number of tasks ------------------------------

    def _method_state(self) -> dict[str, Any]:
        return {**super()._method_state(), "optimizer": self.base.state_dict()}

    def _load_method_state(self, state: Mapping[str, Any]) -> None:
        if "optimizer" in state:
            self.base.check_state_dict(state["optimizer"], f"method {self.name!r}: the optimizer state")
        self._check_balancer(state)
        super()._load_method_state(state)
        if "optimizer" in state:
            self.base.load_state_dict(state["optimizer"])
        if self._built_for is not None:
            self._unbuild()
            self._built_for = None
        if "balancer" in state:  # the subclass loads its entry into this fresh balancer after this returns
            self._ensure_built(state["num_tasks"])

    def _check_balancer(self, state: Mapping[str, Any]) -> None:
        """Refuse a ``"balancer"`` entry that the subclass's load does not take, before anything changes."""
        if "balancer" not in state or self.__dict__.get("_checking_balancer"):
            return
        if state["num_tasks"] is None:
            raise CheckpointError(f"method {self.name!r}: a balancer state without a task count")
        # Loaded first into a scratch copy's own fresh balancer: what does not fit raises here, not in us.
        scratch = copy.copy(self)
        scratch._built_for = None
        scratch._checking_balancer = True  # the scratch's load runs the subclass's part only on its balancer
        try:
            scratch._load_method_state({"num_tasks": state["num_tasks"], "balancer": copy.deepcopy(state["balancer"])})
        except Exception as error:  # any failure of the trial load: the state does not fit
            raise CheckpointError(f"method {self.name!r}: the balancer state does not fit: {error}") from None
