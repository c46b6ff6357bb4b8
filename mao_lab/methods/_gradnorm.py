"""GradNorm (Chen et al., ICML 2018): learn the loss weights so that the tasks' gradient norms at the
last shared layer follow their relative training rates.

At each step, with the weights ``w`` (init 1) and ``W`` the last shared layer's weight::

    G_k   = w_k ||dL_k/dW||                     r_k = (L_k / L_k(0)) / mean_j (L_j / L_j(0))
    L_grad = sum_k |G_k - mean_j(G_j) r_k^alpha|    (the target is held constant)

The model steps on ``sum_k w_k L_k`` (this step's weights); then ``w`` takes one Adam step
(``weights_lr``) on ``dL_grad/dw_k = sign(G_k - target_k) ||dL_k/dW||`` and is renormalised to sum to
``T``.  Written here (TorchJD has no GradNorm).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from .._task_gradients import TaskGradients, TaskInputError, _leaves_reachable_from
from .._validate import Hyperparameter, integer, number, optional
from ._registry import register
from ._weighted import WeightedLossMethod

__all__ = ["GradNormMethod", "last_shared_parameter"]


def last_shared_parameter(losses: list[Tensor], params: list[Tensor]) -> int:
    """Index in ``params`` of the last shared layer's weight: the last parameter every loss reaches,
    preferring matrices (a layer's weight) over vectors (its bias).

    >>> trunk, a, b = torch.nn.Linear(3, 4), torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)
    >>> params = [*trunk.parameters(), *a.parameters(), *b.parameters()]
    >>> z = trunk(torch.ones(2, 3))
    >>> last_shared_parameter([a(z).sum(), b(z).sum()], params)  # trunk.weight, not trunk.bias
    0
    """
    reached = [_leaves_reachable_from([loss]) for loss in losses]
    shared = [i for i, p in enumerate(params) if all(id(p) in r for r in reached)]
    if not shared:
        raise TaskInputError(
            "gradnorm: no parameter is reached by every task, so there is no last shared layer; "
            "pass shared_param=<index in params> to choose one"
        )
    matrices = [i for i in shared if params[i].dim() >= 2]
    return (matrices or shared)[-1]


@register("gradnorm", "GradNorm: weights balancing gradient norms at the last shared layer (Chen et al. 2018)")
class GradNormMethod(WeightedLossMethod):
    """GradNorm with asymmetry ``alpha`` on the last shared layer, found from the graph.

    Hyperparameters (besides the base optimizer's): ``alpha``, the asymmetry (the paper's default
    1.5; 0 equalises the gradient norms); ``weights_lr``, the learning rate of the Adam that learns
    the loss weights; ``shared_param``, the index in ``params`` of the layer to balance at, instead
    of the one found.
    """

    hyperparameters = {
        "alpha": Hyperparameter(1.5, number(0.0), "asymmetry: how strongly slow tasks are favoured"),
        "weights_lr": Hyperparameter(0.025, number(0.0), "learning rate of the Adam that learns the loss weights"),
        "shared_param": Hyperparameter(None, optional(integer(0)), "index in params of the layer to balance at"),
    }
    loss_weights: Tensor | None = None
    initial_losses: Tensor | None = None
    _weights_optimizer: torch.optim.Adam | None = None
    _found_shared: int | None = None

    def __init__(self, params: Iterable[Tensor], **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        shared = self.hparams["shared_param"]
        if shared is not None and shared >= len(self.params):
            raise ValueError(
                f"hyperparameter 'shared_param' must be < {len(self.params)} (the number of params), got {shared}"
            )

    def _build(self, num_tasks: int) -> None:
        self.loss_weights = torch.ones(num_tasks, requires_grad=True)
        self._weights_optimizer = torch.optim.Adam([self.loss_weights], lr=self.hparams["weights_lr"])
        self.initial_losses = None

    def _unbuild(self) -> None:
        self.loss_weights = None
        self._weights_optimizer = None
        self.initial_losses = None
        self._found_shared = None

    def _shared_index(self, graph_losses: list[Tensor]) -> int:
        if self.hparams["shared_param"] is not None:
            return self.hparams["shared_param"]
        if self._found_shared is None:
            self._found_shared = last_shared_parameter(graph_losses, self.params)
        return self._found_shared

    def _weights(
        self, losses: Tensor, graph_losses: list[Tensor], names: tuple[str, ...], task_grads: TaskGradients | None
    ) -> Tensor:
        assert self.loss_weights is not None and self._weights_optimizer is not None
        i = self._shared_index(graph_losses)
        layer = self.params[i]
        if task_grads is not None:
            grads = task_grads.dense(task_grads.index()[id(layer)])
        else:
            path = self._path  # each task's layer gradient averaged over replicas (one reduction), unscaled
            with torch.enable_grad():
                local = [
                    torch.autograd.grad(
                        loss, layer, grad_outputs=path.seed(loss), retain_graph=True, allow_unused=True
                    )[0]
                    for loss in graph_losses
                ]
            grads = torch.stack([g if g is not None else torch.zeros_like(layer) for g in path.finish(local)])
        norms = torch.linalg.vector_norm(grads.detach().reshape(len(graph_losses), -1), dim=1).float()
        if not bool(torch.isfinite(norms).all()):
            k = int((~torch.isfinite(norms)).nonzero()[0])
            raise TaskInputError(
                f"task {names[k]!r} (index {k}): the gradient of parameter {i} (the last shared layer) "
                "contains NaN or Inf"
            )
        weights = self.loss_weights.detach().clone()
        values = losses.detach().float()
        if self.initial_losses is None:
            self.initial_losses = values.clone()
        ratios = values / self.initial_losses
        rates = ratios / ratios.mean()
        norm_per_task = weights * norms
        target = norm_per_task.mean() * rates.pow(self.hparams["alpha"])
        grad = torch.sign(norm_per_task - target) * norms
        self._weights_optimizer.zero_grad(set_to_none=True)
        self.loss_weights.grad = grad
        self._weights_optimizer.step()
        self.loss_weights.grad = None
        with torch.no_grad():
            self.loss_weights.mul_(len(weights) / self.loss_weights.sum())
        return weights.to(losses.dtype)

    def _method_state(self) -> dict[str, Any]:
        state = super()._method_state()
        if self.loss_weights is not None and self._weights_optimizer is not None:  # built
            state["balancer"] = {
                "loss_weights": self.loss_weights.detach(),
                "initial_losses": self.initial_losses,
                "optimizer": self._weights_optimizer.state_dict(),
                "shared_param": self._found_shared,
            }
        return state

    def _load_method_state(self, state: Mapping[str, Any]) -> None:
        super()._load_method_state(state)  # checks the whole state, then builds fresh weights
        if "balancer" in state:
            balancer = state["balancer"]
            assert self.loss_weights is not None and self._weights_optimizer is not None
            with torch.no_grad():
                self.loss_weights.copy_(balancer["loss_weights"])
            self.initial_losses = None if balancer["initial_losses"] is None else balancer["initial_losses"].clone()
            self._weights_optimizer.load_state_dict(balancer["optimizer"])
            self._found_shared = balancer["shared_param"]
