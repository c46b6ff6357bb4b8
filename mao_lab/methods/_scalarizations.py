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

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchjd import scalarization

from .._observe import StepRecord
from .._task_gradients import TaskGradients, TaskInputError
from ._base import LossClosure
from ._base_optimizer import OptimizerName
from ._common import check_in_range, check_int, new_generator
from ._registry import register
from ._transaction import all_or_nothing
from ._weighted import ScalarizerMethod

__all__ = ["DWAMethod", "FAMOMethod", "IMTLLMethod", "MeanMethod", "RLWMethod", "SumMethod", "UWMethod"]


@register("sum", "Equal weights: Adam on the sum of the task losses", "torchjd")
class SumMethod(ScalarizerMethod):
    """The usual practice: one step of the base optimizer on ``sum_k L_k``."""

    name = "sum"

    def _make_scalarizer(self, num_tasks: int) -> scalarization.Scalarizer:
        return scalarization.Sum()


@register("mean", "Equal weights: Adam on the mean of the task losses", "torchjd")
class MeanMethod(ScalarizerMethod):
    """One step of the base optimizer on ``(1/T) sum_k L_k``."""

    name = "mean"

    def _make_scalarizer(self, num_tasks: int) -> scalarization.Scalarizer:
        return scalarization.Mean()


@register("uw", "Uncertainty weighting: learned log-variances (Kendall et al. 2018)", "torchjd")
class UWMethod(ScalarizerMethod):
    """``sum_k (exp(-s_k) L_k + s_k) / 2`` with the log-variances ``s`` (init 0) learned with the model."""

    name = "uw"

    def _make_scalarizer(self, num_tasks: int) -> scalarization.Scalarizer:
        return scalarization.UW(num_tasks)

    def _learned(self) -> list[Tensor]:
        return [self.scalarizer.log_var] if self.scalarizer is not None else []


@register("imtl_l", "IMTL-L: learned loss scales exp(s_k), regularised by -s_k (Liu et al. 2021)", "torchjd")
class IMTLLMethod(ScalarizerMethod):
    """``sum_k (exp(s_k) L_k - s_k)`` with the log-scales ``s`` (init 0) learned with the model."""

    name = "imtl_l"

    def _make_scalarizer(self, num_tasks: int) -> scalarization.Scalarizer:
        return scalarization.IMTLL(num_tasks)

    def _learned(self) -> list[Tensor]:
        return [self.scalarizer.log_scale] if self.scalarizer is not None else []


@register("rlw", "Random loss weighting: softmax of Gaussian weights drawn every step (Lin et al. 2022)", "torchjd")
class RLWMethod(ScalarizerMethod):
    """Weights ``softmax(n)``, ``n ~ N(0, I)``, drawn anew at every step from the method's own generator."""

    name = "rlw"

    def __init__(
        self,
        params: Iterable[Tensor],
        *,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        optimizer: OptimizerName = "adam",
        seed: int = 0,
        num_tasks: int | None = None,
    ) -> None:
        self._generator = new_generator(seed)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, optimizer=optimizer,
                         num_tasks=num_tasks)

    def _make_scalarizer(self, num_tasks: int) -> scalarization.Scalarizer:
        return scalarization.Random()


@register("dwa", "Dynamic weight average: weights from the losses' descent rates (Liu et al. 2019)", "torchjd")
class DWAMethod(ScalarizerMethod):
    """DWA: ``w = T softmax(r / temperature)``, ``r_k`` the ratio of task ``k``'s last two average losses.

    DWA averages the losses over an "epoch"; the method has no notion of epochs, so it counts steps:
    every ``steps_per_epoch`` steps it closes an epoch (``torchjd``'s ``DWA.step()``).  Set it to the
    number of batches per epoch for the paper's version; the default 1 compares consecutive batches.
    The weights are 1 until two epochs have been closed.
    """

    name = "dwa"

    def __init__(
        self,
        params: Iterable[Tensor],
        *,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        optimizer: OptimizerName = "adam",
        temperature: float = 2.0,
        steps_per_epoch: int = 1,
        num_tasks: int | None = None,
    ) -> None:
        check_in_range("temperature", temperature, 0.0, low_open=True)
        self.temperature = float(temperature)
        self.steps_per_epoch = check_int("steps_per_epoch", steps_per_epoch, 1)
        self._steps_in_epoch = 0
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, optimizer=optimizer,
                         num_tasks=num_tasks)

    def _make_scalarizer(self, num_tasks: int) -> scalarization.Scalarizer:
        self._steps_in_epoch = 0
        return scalarization.DWA(self.temperature)

    def _weights(
        self, losses: Tensor, graph_losses: list[Tensor], names: tuple[str, ...], task_grads: TaskGradients | None
    ) -> Tensor:
        weights = super()._weights(losses, graph_losses, names, task_grads)
        self._steps_in_epoch += 1
        if self._steps_in_epoch == self.steps_per_epoch:
            assert isinstance(self.scalarizer, scalarization.DWA)
            self.scalarizer.step()
            self._steps_in_epoch = 0
        return weights

    def _weighting_state(self) -> dict[str, Any]:
        dwa = self.scalarizer
        assert isinstance(dwa, scalarization.DWA)
        return {
            "loss_sum": dwa._loss_sum,
            "n_batches": dwa._n_batches,
            "previous_averages": list(dwa._previous_averages),
            "steps_in_epoch": self._steps_in_epoch,
        }

    def _load_weighting_state(self, state: dict[str, Any]) -> None:
        dwa = self.scalarizer
        assert isinstance(dwa, scalarization.DWA)
        dwa._loss_sum = None if state["loss_sum"] is None else state["loss_sum"].clone()
        dwa._n_batches = int(state["n_batches"])
        dwa._previous_averages = [a.clone() for a in state["previous_averages"]]
        self._steps_in_epoch = int(state["steps_in_epoch"])


@register("famo", "FAMO: task logits learned from the losses' change across each step (Liu et al. 2023)", "torchjd")
class FAMOMethod(ScalarizerMethod):
    """FAMO: the scalarization ``c sum_k z_k log(L_k - b_k + 1e-8)``, ``z = softmax(logits)``.

    After the model step, the closure is called once more (without a graph) on the same batch, and the
    logits take one Adam step (``weights_lr``, ``weights_decay``) towards the tasks whose loss fell
    least (TorchJD's ``FAMO.update``).  If that second forward pass fails, the whole step is undone.
    The losses must stay above ``min_losses`` (default 0).
    """

    name = "famo"

    def __init__(
        self,
        params: Iterable[Tensor],
        *,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        optimizer: OptimizerName = "adam",
        weights_lr: float = 0.025,
        weights_decay: float = 1e-3,
        min_losses: Sequence[float] | None = None,
        num_tasks: int | None = None,
    ) -> None:
        check_in_range("weights_lr", weights_lr, 0.0)
        check_in_range("weights_decay", weights_decay, 0.0)
        self.weights_lr = float(weights_lr)
        self.weights_decay = float(weights_decay)
        self.min_losses = None if min_losses is None else tuple(float(b) for b in min_losses)
        if num_tasks is not None and self.min_losses is not None and len(self.min_losses) != num_tasks:
            raise ValueError(f"hyperparameter 'min_losses' has {len(self.min_losses)} entries for {num_tasks} tasks")
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, optimizer=optimizer,
                         num_tasks=num_tasks)

    def _make_scalarizer(self, num_tasks: int) -> scalarization.Scalarizer:
        if self.min_losses is not None and len(self.min_losses) != num_tasks:
            raise TaskInputError(f"famo: 'min_losses' has {len(self.min_losses)} entries but there are {num_tasks} tasks")
        bounds = None if self.min_losses is None else torch.tensor(self.min_losses)
        return scalarization.FAMO(num_tasks, bounds, lr=self.weights_lr, weight_decay=self.weights_decay)

    def _step(self, closure: LossClosure, record: bool) -> StepRecord:
        with all_or_nothing(self):
            record_ = super()._step(closure, record)
            after = self._values_without_graph(closure, record_.task_names)
            famo = self.scalarizer
            assert isinstance(famo, scalarization.FAMO)
            famo.update(after.to(famo._w.dtype))
        return record_

    def _values_without_graph(self, closure: LossClosure, names: tuple[str, ...]) -> Tensor:
        with torch.no_grad():
            out = closure()
        values = list(out.values()) if isinstance(out, Mapping) else list(out)
        got = tuple(str(k) for k in out) if isinstance(out, Mapping) else tuple(f"task{k}" for k in range(len(values)))
        if got != names:
            raise TaskInputError(f"famo: the closure returned tasks {got} after the step, {names} before")
        stacked = torch.stack([torch.as_tensor(v).detach().reshape(()) for v in values])
        if not bool(torch.isfinite(stacked).all()):
            k = int((~torch.isfinite(stacked)).nonzero()[0])
            raise TaskInputError(f"task {names[k]!r} (index {k}): the loss after the step is {stacked[k].item()}")
        return stacked

    def _weighting_state(self) -> dict[str, Any]:
        famo = self.scalarizer
        assert isinstance(famo, scalarization.FAMO)
        return {
            "scalarizer": famo.state_dict(),
            "optimizer": None if famo._optimizer is None else famo._optimizer.state_dict(),
            "prev_losses": famo._prev_losses,
        }

    def _load_weighting_state(self, state: dict[str, Any]) -> None:
        famo = self.scalarizer
        assert isinstance(famo, scalarization.FAMO)
        famo.load_state_dict(state["scalarizer"])
        if state["optimizer"] is None:
            famo._optimizer = None
        else:
            famo._optimizer = torch.optim.Adam([famo._w], lr=famo.lr, weight_decay=famo.weight_decay)
            famo._optimizer.load_state_dict(state["optimizer"])
        famo._prev_losses = None if state["prev_losses"] is None else state["prev_losses"].clone()
