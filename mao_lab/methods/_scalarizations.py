"""The loss weightings, each a TorchJD scalarizer behind :class:`ScalarizerMethod`.

=========  ===================================  =====================================================
name       TorchJD class                        weights ``w_k = dS/dL_k``
=========  ===================================  =====================================================
sum        ``torchjd.scalarization.Sum``        1
mean       ``torchjd.scalarization.Mean``       1/T
uw         ``torchjd.scalarization.UW``         ``exp(-s_k) / 2``, ``s`` learned with the model
dwa        ``torchjd.scalarization.DWA``        ``T softmax(r / temperature)``, ``r`` = loss ratios
rlw        ``torchjd.scalarization.Random``     ``softmax(n)``, ``n ~ N(0, I)`` drawn every step
famo       ``torchjd.scalarization.FAMO``       ``c z_k / (L_k - b_k + 1e-8)``, ``z`` learned from
                                                the change of the losses across each step
imtl_l     ``torchjd.scalarization.IMTLL``      ``exp(s_k)``, ``s`` learned with the model
=========  ===================================  =====================================================

>>> import torch
>>> from mao_lab.methods import make
>>> p = torch.ones(2, requires_grad=True)
>>> method = make("uw", [p], lr=0.1)
>>> losses = method.step(lambda: [p.pow(2).sum(), 3 * p.sum()])
>>> losses
tensor([2., 6.])
>>> method.scalarizer.log_var.detach()  # learned with the model, same optimizer kind and lr
tensor([0.1000, 0.1000])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torchjd import scalarization

from .._observe import StepRecord
from .._task_gradients import TaskGradients, TaskInputError, match_task_order
from .._validate import Hyperparameter, integer, non_negative_floats, number, optional
from ._base import LossClosure
from ._common import Seeded
from ._registry import register
from ._torchjd import (
    dwa_state,
    famo_dtype,
    famo_state,
    load_balancer,
    load_dwa_state,
    load_famo_state,
    require_private_state_support,
    save_balancer,
)
from ._weighted import ScalarizerMethod

__all__ = ["DWAMethod", "FAMOMethod", "IMTLLMethod", "MeanMethod", "RLWMethod", "SumMethod", "UWMethod"]


@register("sum", "Equal weights: Adam on the sum of the task losses", "torchjd")
class SumMethod(ScalarizerMethod):
    """The usual practice: one step of the base optimizer on ``sum_k L_k``."""

    torchjd_class = scalarization.Sum


@register("mean", "Equal weights: Adam on the mean of the task losses", "torchjd")
class MeanMethod(ScalarizerMethod):
    """One step of the base optimizer on ``(1/T) sum_k L_k``."""

    torchjd_class = scalarization.Mean


@register("uw", "Uncertainty weighting: learned log-variances (Kendall et al. 2018)", "torchjd")
class UWMethod(ScalarizerMethod):
    """``sum_k (exp(-s_k) L_k + s_k) / 2`` with the log-variances ``s`` (init 0) learned with the model.

    This is Kendall et al.'s regression form, ``L_k / (2 sigma_k^2) + log sigma_k``, used for every task;
    their classification form, ``L_k / sigma_k^2 + log sigma_k``, is not offered."""

    torchjd_class = scalarization.UW
    takes_num_tasks = True
    learned_attributes = ("log_var",)


@register("imtl_l", "IMTL-L: learned loss scales exp(s_k), regularised by -s_k (Liu et al. 2021)", "torchjd")
class IMTLLMethod(ScalarizerMethod):
    """``sum_k (exp(s_k) L_k - s_k)`` with the log-scales ``s`` (init 0) learned with the model."""

    torchjd_class = scalarization.IMTLL
    takes_num_tasks = True
    learned_attributes = ("log_scale",)


@register("rlw", "Random loss weighting: softmax of Gaussian weights drawn every step (Lin et al. 2022)", "torchjd")
class RLWMethod(Seeded, ScalarizerMethod):
    """Weights ``softmax(n)``, ``n ~ N(0, I)``, drawn anew at every step from the method's own generator."""

    torchjd_class = scalarization.Random


@register("dwa", "Dynamic weight average: weights from the losses' descent rates (Liu et al. 2019)", "torchjd")
class DWAMethod(ScalarizerMethod):
    """DWA: ``w = T softmax(r / temperature)``, ``r_k`` the ratio of task ``k``'s last two average losses.

    DWA averages the losses over an "epoch"; the method has no notion of epochs, so it counts steps:
    every ``steps_per_epoch`` steps it closes an epoch (``torchjd``'s ``DWA.step()``).  Set it to the
    number of batches per epoch for the paper's version; the default 1 compares consecutive batches.
    The weights are 1 until two epochs have been closed.
    """

    hyperparameters = {
        "temperature": Hyperparameter(2.0, number(0.0, low_open=True), "softmax temperature (the paper's 2)"),
        "steps_per_epoch": Hyperparameter(1, integer(1), "steps per DWA epoch (batches per epoch for the paper's)"),
    }
    _steps_in_epoch = 0

    def _make_scalarizer(self, num_tasks: int) -> scalarization.Scalarizer:
        require_private_state_support(self.name)
        self._steps_in_epoch = 0
        return scalarization.DWA(self.hparams["temperature"])

    def _weights(
        self, losses: Tensor, graph_losses: list[Tensor], names: tuple[str, ...], task_grads: TaskGradients | None
    ) -> Tensor:
        weights = super()._weights(losses, graph_losses, names, task_grads)
        self._steps_in_epoch += 1
        if self._steps_in_epoch == self.hparams["steps_per_epoch"]:
            assert isinstance(self.scalarizer, scalarization.DWA)
            self.scalarizer.step()
            self._steps_in_epoch = 0
        return weights

    def _method_state(self) -> dict[str, Any]:
        state = super()._method_state()  # DWA's entry replaces the scalarizer's
        return save_balancer(
            state,
            self.scalarizer,
            scalarization.DWA,
            lambda dwa: {**dwa_state(dwa), "steps_in_epoch": self._steps_in_epoch},
        )

    def _load_method_state(self, state: Mapping[str, Any]) -> None:
        super()._load_method_state(state)  # checks the whole state, then builds a fresh scalarizer
        load_balancer(state, self.scalarizer, scalarization.DWA, load_dwa_state)
        if "balancer" in state:
            self._steps_in_epoch = int(state["balancer"]["steps_in_epoch"])


@register("famo", "FAMO: task logits learned from the losses' change across each step (Liu et al. 2023)", "torchjd")
class FAMOMethod(ScalarizerMethod):
    """FAMO: the scalarization ``c sum_k z_k log(L_k - b_k + 1e-8)``, ``z = softmax(logits)``.

    After the model step, the closure is called once more (without a graph) on the same batch, and the
    logits take one Adam step (``weights_lr``, ``weights_decay``) towards the tasks whose loss fell
    least (TorchJD's ``FAMO.update``).  If that second forward pass fails, the whole step is undone.
    The losses must stay above ``min_losses`` (default 0).
    """

    hyperparameters = {
        "weights_lr": Hyperparameter(0.025, number(0.0), "learning rate of the Adam that learns the logits"),
        "weights_decay": Hyperparameter(1e-3, number(0.0), "weight decay of that Adam"),
        "min_losses": Hyperparameter(None, optional(non_negative_floats), "lower bound b_k of each loss (default 0)"),
    }
    moves_parameters_during_step = True  # the second forward pass comes after the model step

    def __init__(self, params: Any, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        bounds = self.hparams["min_losses"]
        if self.num_tasks is not None and bounds is not None and len(bounds) != self.num_tasks:
            raise ValueError(f"hyperparameter 'min_losses' has {len(bounds)} entries for {self.num_tasks} tasks")

    def _make_scalarizer(self, num_tasks: int) -> scalarization.Scalarizer:
        require_private_state_support(self.name)
        bounds = self.hparams["min_losses"]
        if bounds is not None and len(bounds) != num_tasks:
            raise TaskInputError(f"famo: 'min_losses' has {len(bounds)} entries but there are {num_tasks} tasks")
        hp = self.hparams
        return scalarization.FAMO(
            num_tasks,
            None if bounds is None else torch.tensor(bounds),
            lr=hp["weights_lr"],
            weight_decay=hp["weights_decay"],
        )

    def _step(self, closure: LossClosure, record: bool) -> StepRecord:
        step_record = super()._step(closure, record)
        after = self._values_without_graph(closure, step_record.task_names)
        assert isinstance(self.scalarizer, scalarization.FAMO)
        self.scalarizer.update(after.to(famo_dtype(self.scalarizer)))
        return step_record

    def _values_without_graph(self, closure: LossClosure, names: tuple[str, ...]) -> Tensor:
        with torch.no_grad():
            out = closure()
        values = list(out.values()) if isinstance(out, Mapping) else list(out)
        got = tuple(str(k) for k in out) if isinstance(out, Mapping) else names
        if len(values) != len(names):
            raise TaskInputError(f"famo: the closure returned {len(values)} tasks after the step, {len(names)} before")
        order = match_task_order(got, names, by_name=isinstance(out, Mapping))
        if order is not None:
            values = [values[i] for i in order]
        stacked = self._path.values(torch.stack([torch.as_tensor(v).detach().reshape(()) for v in values]))
        if not bool(torch.isfinite(stacked).all()):
            k = int((~torch.isfinite(stacked)).nonzero()[0])
            raise TaskInputError(f"task {names[k]!r} (index {k}): the loss after the step is {stacked[k].item()}")
        return stacked

    def _method_state(self) -> dict[str, Any]:
        state = super()._method_state()  # FAMO's entry replaces the scalarizer's
        return save_balancer(state, self.scalarizer, scalarization.FAMO, famo_state)

    def _load_method_state(self, state: Mapping[str, Any]) -> None:
        super()._load_method_state(state)  # checks the whole state, then builds a fresh scalarizer
        load_balancer(state, self.scalarizer, scalarization.FAMO, load_famo_state)
