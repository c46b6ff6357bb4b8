r"""What "task k's contribution to the update" means, for every method (``StepRecord.task_updates``).

For each parameter ``p`` and task ``k``, ``task_updates`` holds ``c_k(p)``, task ``k``'s part of the
step, with the sign convention of the record: the step moved ``p`` by ``-sum_k c_k(p)`` (decoupled
weight decay belongs to no task and is left out).  ``task_updates`` lists the same parameters, in the
same order, as ``task_grads``; for parameters where an aggregator mixes the tasks it lists every task.

**Methods that step a base optimizer on a combined direction** ``d = sum_k d_k`` (the weightings and
the gradient aggregators)::

    c_k = D ⊙ d_k

where ``D`` is the base optimizer's diagonal preconditioner, read from its state *after* the step:
``D = lr / (sqrt(v_t / (1 - b2^t)) + eps)`` for Adam (``v_t`` already holds this step's gradient; Adam's
step is ``D ⊙ m̂_t`` with ``m̂_t = m_t / (1 - b1^t)`` its bias-corrected first moment, equivalently
``lr / (1 - b1^t) / (sqrt(v̂_t) + eps)`` times the raw moment ``m_t``), ``D = lr`` for SGD; and
``d_k`` is task ``k``'s part of the direction:

- weightings (sum, mean, UW, DWA, RLW, FAMO, IMTL-L, GradNorm): ``d_k = w_k g_k`` with
  ``w_k = dS/dL_k``, the derivative of the scalarized loss with respect to task ``k``'s loss;
- aggregators built from a TorchJD ``Weighting`` (MGDA, CAGrad, IMTL-G, Nash-MTL, Aligned-MTL,
  UPGrad, PCGrad, GradVac): the weights ``alpha`` the weighting returned, ``d_k = alpha_k g_k``.  For
  PCGrad and GradVac ``alpha = 1^T C`` sums the coefficients of the corrected gradients ``C J``: task
  ``k``'s part is the direction's component along its own gradient, not its corrected gradient;
- a parameter that only one task reaches (a head): that task's gradient, ``d_k = g_k`` (times ``w_k``
  for weightings); aggregators only combine parameters that several tasks reach.

**Not split: GradDrop.**  Its aggregate is not ``alpha^T J`` for weights TorchJD returns: each
task's masked gradient depends on random sign masks drawn inside TorchJD, which returns only the sum.
Recovering the parts would mean replaying TorchJD's random draws against its private state, so the
lab does not: the record holds the task gradients, and ``task_updates`` is ``None`` ("split not
available") whenever a parameter is shared.

This split is **momentum-free**: ``sum_k c_k = D ⊙ d``, Adam's step with its bias-corrected first
moment ``m̂_t`` replaced by the current direction ``d``.  The step actually applied is ``D ⊙ m̂_t``;
the two agree on Adam's first step (``m̂_1 = d``), whenever ``b1 = 0``, and always for SGD.  It answers
"how strongly did each task push each parameter at this step, through the preconditioner everyone
shares?", without attributing the optimizer's memory of earlier steps to anyone.

**Per-task adaptive optimizers** split the step exactly, ``sum_k c_k`` = the applied step:
MAO: ``c_k = lr * w_k * u_k`` (``u_k`` task ``k``'s Adam-normalised step; see :class:`mao_lab.MAO`);
MTAdam: ``c_k = lr / (1 - b1^t) * m_k / max_j(denom_j)``, task ``k``'s rescaled first moment over the
shared element-wise maximum denominator.

**Independent steps** (SUS, IUS, IO, grouping): group ``j``'s sub-step changed ``p`` by ``Δ_j``
(measured, decay excluded) with preconditioner ``D_j``; task ``k`` of group ``j`` gets::

    c_k = D_j ⊙ g_k + (Δ_j - D_j ⊙ sum_{l in j} g_l) / n_j(p)

the same ``D ⊙ g_k`` rule plus an equal share of what the optimizer's history (momentum) added, over
the ``n_j(p)`` tasks of the group that reach ``p``.  So ``sum_{k in j} c_k = Δ_j`` exactly, a
single-task group's contribution is exactly the change its sub-step applied, and with SGD (or
``b1 = 0``) the second term vanishes.  ``task_grads`` holds each task's gradient at its own sub-step.
Each sub-step also applies its optimizer's decoupled weight decay; that decay, interleaved between
the sub-steps, is left out like all decay, so with ``weight_decay > 0`` the contributions add up to
the step's change less decay only to first order in ``lr * weight_decay``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._task_gradients import TaskGradients, TaskUpdates
from ._base_optimizer import BaseOptimizer

__all__ = ["preconditioned_parts", "weighted_parts"]


def weighted_parts(task_grads: TaskGradients, weights: Tensor) -> TaskGradients:
    """``d_k = w_k g_k`` for every parameter and task reaching it.

    >>> w = torch.ones(2, requires_grad=True)
    >>> from mao_lab import compute_task_gradients
    >>> g = compute_task_gradients([w.sum(), (3 * w).sum()], [w])
    >>> weighted_parts(g, torch.tensor([2.0, 0.5])).grads[0]
    tensor([[2.0000, 2.0000],
            [1.5000, 1.5000]])
    """
    grads = []
    for ks, g in zip(task_grads.tasks, task_grads.grads):
        w = weights[list(ks)].to(g).view(-1, *([1] * (g.dim() - 1)))
        grads.append(g * w)
    return TaskGradients(task_grads.task_names, task_grads.params, task_grads.tasks, tuple(grads))


@torch.no_grad()
def preconditioned_parts(
    parts: TaskGradients, base: BaseOptimizer, stepped: Sequence[bool] | None = None
) -> TaskUpdates:
    """``c_k = D ⊙ d_k``: each task's part of the direction through the base optimizer's preconditioner.

    Parameters the optimizer did not step (``stepped[i]`` false, or no task part) get no entries.
    """
    tasks, grads = [], []
    for i, (p, ks, d) in enumerate(zip(parts.params, parts.tasks, parts.grads)):
        if not ks or (stepped is not None and not stepped[i]):
            tasks.append(())
            grads.append(p.new_zeros((0, *p.shape)))
            continue
        tasks.append(ks)
        grads.append(d * base.preconditioner(p))
    return TaskUpdates(parts.task_names, parts.params, tuple(tasks), tuple(grads))
