"""MAO's update as a function over lists of tensors, written the way ``torch.optim.adam`` writes Adam.

:func:`mao` is to :class:`~mao_lab.MAO` what ``torch.optim.adam.adam`` is to ``torch.optim.Adam``: the
optimizer gathers, per parameter group, the parameters some task reached at this step with their state;
this module does the arithmetic, with one of three implementations of the same rule:

- :func:`_single_tensor_mao`: one parameter and one task at a time, the rule as :class:`~mao_lab.MAO`'s
  docstring writes it: the reference;
- :func:`_multi_tensor_mao`: the same operations on lists of tensors (``torch._foreach_*``, as
  ``torch.optim`` uses them), one call per operation and task rank;
- :func:`_fused_mao`: torch's fused Adam kernel through its public functional API
  (``torch.optim.adam.adam(..., fused=True)``), one pass per parameter and task.

Which one runs by default is :func:`_default_to_fused_or_foreach`'s choice, made by measurement.

Every path treats a parameter the same way: a parameter with one row of moments (one task reaches it)
takes exactly Adam's update (``addcdiv`` into the parameter, or the fused kernel's with ``fused=True``), so
that one task is Adam bit for bit; a parameter with several rows sums its rows' steps first (in single
precision at least) and changes the parameter once.  Asking for the per-task parts (``task_updates_out``)
computes them beside that arithmetic and never changes it: the parameters end bit-identical with and without.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from torch.optim.adam import adam as torch_adam

__all__ = ["mao"]


def mao(
    params: Sequence[Tensor],
    grads: Sequence[Sequence[Tensor]],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    state_steps: Sequence[Tensor],
    *,
    task_weights: Sequence[Sequence[float]] | None = None,
    foreach: bool | None = None,
    fused: bool | None = None,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    task_updates_out: list[Tensor] | None = None,
) -> None:
    r"""Functional API that performs one MAO step in place; see :class:`~mao_lab.MAO` for the rule.

    Args:
        params: the parameters to update.
        grads: for every parameter, this step's gradient of each task of its moments, in the order of
            their rows (a zero tensor for a task that has moments there but did not reach it now).
        exp_avgs: for every parameter, the first moments stacked, shape ``(rows, *p.shape)``.
        exp_avg_sqs: the second moments, same layout.
        state_steps: for every parameter, its step count (a scalar tensor), advanced here by one.
        task_weights: for every parameter, each row's factor: ``w_k``, or ``w_k / T`` for the mean over
            ``T`` tasks (default: all 1).
        foreach: use the ``torch._foreach_*`` implementation.
        fused: use torch's fused Adam kernel where it runs (CPU, single or double precision), foreach
            elsewhere.  With neither flag: see :func:`_default_to_fused_or_foreach`.
        lr, beta1, beta2, eps: as for Adam; ``eps`` is added per task.
        weight_decay: decoupled (AdamW) decay: ``p *= 1 - lr * weight_decay``, once per step.
        task_updates_out: a list to which, for every parameter in order, the tensor of shape
            ``(rows, *p.shape)`` of each row's part ``lr w_k u_k`` of the change is appended; the step
            moved ``p`` by minus their sum (up to rounding), plus the decay.

    Two tasks meet at ``w``; only the second reaches ``b``.  One step moves each parameter by ``-lr``
    per task whose gradient there is non-zero (bias-corrected Adam's first step is ``lr * sign(g)``,
    up to ``eps``):

    >>> w, b = torch.zeros(2), torch.zeros(1)
    >>> grads = [[torch.tensor([1.0, 0.0]), torch.tensor([3.0, -2.0])], [torch.tensor([5.0])]]
    >>> exp_avgs, exp_avg_sqs = [torch.zeros(2, 2), torch.zeros(1, 1)], [torch.zeros(2, 2), torch.zeros(1, 1)]
    >>> steps = [torch.tensor(0.0), torch.tensor(0.0)]
    >>> parts = []
    >>> mao([w, b], grads, exp_avgs, exp_avg_sqs, steps, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8,
    ...     weight_decay=0.0, task_updates_out=parts)
    >>> w, b
    (tensor([-0.2000,  0.1000]), tensor([-0.1000]))
    >>> parts[0]
    tensor([[ 0.1000,  0.0000],
            [ 0.1000, -0.1000]])
    """
    if fused and foreach:
        raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
    _check_lists(params, grads, exp_avgs, exp_avg_sqs, state_steps, task_weights)
    if not params:
        return
    weights = [(1.0,) * len(rows) for rows in grads] if task_weights is None else task_weights
    lists = _Lists(*(list(values) for values in (params, grads, exp_avgs, exp_avg_sqs, state_steps, weights)))
    if fused is None and foreach is None:
        implementation = _default_to_fused_or_foreach(lists.params)
    elif fused:
        implementation = _fused_mao
    elif foreach:
        implementation = _multi_tensor_mao
    else:
        implementation = _single_tensor_mao
    implementation(lists, _Hyper(lr, beta1, beta2, eps, weight_decay), task_updates_out)


class _Lists(NamedTuple):
    """:func:`mao`'s lists, one entry per parameter, as every implementation takes them."""

    params: list[Tensor]
    grads: list[Sequence[Tensor]]
    exp_avgs: list[Tensor]
    exp_avg_sqs: list[Tensor]
    state_steps: list[Tensor]
    task_weights: list[Sequence[float]]

    def select(self, indices: Sequence[int]) -> _Lists:
        """The entries of the parameters at ``indices``, in that order."""
        return _Lists(*([values[i] for i in indices] for values in self))

    def rows(self, i: int) -> int:
        return len(self.grads[i])


@dataclass(frozen=True)
class _Hyper:
    """The hyperparameters of one call (one parameter group)."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float

    def bias_corrections(self, step: Tensor) -> tuple[float, float]:
        """``1 - beta1^t`` and ``sqrt(1 - beta2^t)`` at the (already advanced) step count ``t``."""
        t = float(step)
        return 1 - self.beta1**t, (1 - self.beta2**t) ** 0.5


_Implementation = Callable[[_Lists, _Hyper, list[Tensor] | None], None]


def _check_lists(
    params: Sequence[Tensor],
    grads: Sequence[Sequence[Tensor]],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    state_steps: Sequence[Tensor],
    task_weights: Sequence[Sequence[float]] | None,
) -> None:
    """Refuse lists that do not line up, before anything is modified."""
    lists = {"grads": grads, "exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs, "state_steps": state_steps}
    if task_weights is not None:
        lists["task_weights"] = task_weights
    for name, values in lists.items():
        if len(values) != len(params):
            raise ValueError(f"mao: {len(params)} params but {len(values)} {name}")
    for i, (p, rows, m, v, step) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, state_steps)):
        expected = (len(rows), *p.shape)
        if not rows or tuple(m.shape) != expected or tuple(v.shape) != expected:
            raise ValueError(
                f"mao: parameter {i} (shape {tuple(p.shape)}) has {len(rows)} gradients and moments of shapes "
                f"{tuple(m.shape)} and {tuple(v.shape)}; expected one row per gradient, {expected}"
            )
        if not isinstance(step, Tensor) or step.numel() != 1:
            raise ValueError(f"mao: state_steps[{i}] must be a one-element tensor, got {step!r}")
        if task_weights is not None and len(task_weights[i]) != len(rows):
            raise ValueError(f"mao: parameter {i} has {len(rows)} gradients but {len(task_weights[i])} task weights")


def _default_to_fused_or_foreach(params: Sequence[Tensor]) -> _Implementation:
    """The implementation :func:`mao` runs when neither ``foreach`` nor ``fused`` is given, as
    ``torch.optim``'s ``_default_to_fused_or_foreach`` chooses Adam's: the faster, measured by
    ``python -m mao_lab.bench step`` (``update_*``) on its MLP and CNN.

    - On the CPU, a parameter where tasks meet (several rows of moments) takes the fused kernel
      (:func:`_fused_mao`): one pass over ``g``, ``m``, ``v`` per task where the per-tensor operations
      make seven, so the update is memory traffic bound and about twice as fast.  A parameter one task
      reaches takes foreach, whose arithmetic on the CPU is the single-tensor path's, that is Adam's (so
      one task is ``torch.optim.Adam`` bit for bit), with less Python per tensor.  A torch without the
      fused CPU kernel (before 2.4): foreach, silently.
    - Elsewhere (CUDA), foreach, as ``torch.optim.Adam``.

    The single-tensor path is the reference that the others are tested against; it is never faster.
    """
    if all(p.device.type != "cpu" for p in params):
        return _multi_tensor_mao
    return functools.partial(_fused_mao, several_rows_only=True)


def _accumulator_dtype(p: Tensor) -> torch.dtype:
    """Where the rows' steps are summed: half precision sums in single precision, so that the parameter
    is rounded once per step, not once per task."""
    return torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype


def _sum_buffers(lists: _Lists) -> list[Tensor]:
    """Where each parameter's rows' steps are summed: the parameter itself for one row (Adam's update),
    a zeroed buffer for several (added to the parameter once, after every row)."""
    return [
        p if len(rows) == 1 else torch.zeros_like(p, dtype=_accumulator_dtype(p))
        for p, rows in zip(lists.params, lists.grads)
    ]


def _add_sums(lists: _Lists, sums: list[Tensor]) -> None:
    """``p += sum`` for every parameter with several rows (one row was updated in place)."""
    summed = [i for i in range(len(lists.params)) if lists.rows(i) > 1]
    if summed:
        torch._foreach_add_([lists.params[i] for i in summed], [sums[i] for i in summed])


def _single_tensor_mao(lists: _Lists, hyper: _Hyper, task_updates_out: list[Tensor] | None) -> None:
    """The rule one parameter and one task at a time, in the operations of ``torch.optim``'s
    ``_single_tensor_adam`` (so a row is updated exactly as Adam updates a parameter)."""
    lr, beta1, beta2, eps = hyper.lr, hyper.beta1, hyper.beta2, hyper.eps
    # Every buffer first, then the arithmetic: running out of memory leaves parameters and moments untouched.
    deltas = _sum_buffers(lists)
    denoms = [torch.empty_like(v[0]) for v in lists.exp_avg_sqs]
    kept = _parts_buffers(lists) if task_updates_out is not None else None
    for i, param in enumerate(lists.params):
        step_t = lists.state_steps[i]
        step_t += 1
        if hyper.weight_decay != 0:
            param.mul_(1 - lr * hyper.weight_decay)  # theta <- theta (1 - lr lambda), once per step
        bias_correction1, bias_correction2_sqrt = hyper.bias_corrections(step_t)
        delta, denom = deltas[i], denoms[i]
        parts = kept[i] if kept is not None else None
        rows = zip(lists.grads[i], lists.exp_avgs[i], lists.exp_avg_sqs[i])
        for r, (grad, exp_avg, exp_avg_sq) in enumerate(rows):
            exp_avg.lerp_(grad, 1 - beta1)  # m_k <- b1 m_k + (1 - b1) g_k
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)  # v_k <- b2 v_k + (1 - b2) g_k^2
            torch.sqrt(exp_avg_sq, out=denom).div_(bias_correction2_sqrt).add_(eps)  # sqrt(v_hat_k) + eps
            step_size = lr * lists.task_weights[i][r] / bias_correction1  # lr w_k / (1 - b1^t): m_hat_k's factor
            delta.addcdiv_(exp_avg, denom, value=-step_size)  # - lr w_k u_k
            if parts is not None:
                torch.div(exp_avg, denom, out=parts[r]).mul_(step_size)
    _add_sums(lists, deltas)
    if task_updates_out is not None and kept is not None:
        task_updates_out.extend(kept)


def _parts_buffers(lists: _Lists) -> list[Tensor]:
    """One ``(rows, *p.shape)`` tensor per parameter for the parts ``lr w_k u_k`` (``task_updates_out``)."""
    return [p.new_empty((len(rows), *p.shape)) for p, rows in zip(lists.params, lists.grads)]


def _multi_tensor_mao(lists: _Lists, hyper: _Hyper, task_updates_out: list[Tensor] | None) -> None:
    """:func:`_single_tensor_mao`'s operations on lists: for each task rank ``r``, row ``r`` of every
    parameter that has one, so that no call lists a tensor twice (foreach kernels may update the
    tensors of one call in parallel).  Tensors are grouped by device and dtype, as ``torch.optim`` does."""
    lr, beta1, beta2, eps = hyper.lr, hyper.beta1, hyper.beta2, hyper.eps
    # The buffers of every group first, then the arithmetic (as in _single_tensor_mao).
    deltas = _sum_buffers(lists)
    parts = _parts_buffers(lists) if task_updates_out is not None else None
    for indices in _by_device_and_dtype(lists.params).values():
        steps = [lists.state_steps[i] for i in indices]
        torch._foreach_add_(steps, 1.0)
        if hyper.weight_decay != 0:
            torch._foreach_mul_([lists.params[i] for i in indices], 1 - lr * hyper.weight_decay)
        corrections = {i: hyper.bias_corrections(step) for i, step in zip(indices, steps)}
        for r in range(max(lists.rows(i) for i in indices)):
            ranked = [i for i in indices if lists.rows(i) > r]
            row_grads = [lists.grads[i][r] for i in ranked]
            row_exp_avgs = [lists.exp_avgs[i][r] for i in ranked]
            row_exp_avg_sqs = [lists.exp_avg_sqs[i][r] for i in ranked]
            torch._foreach_lerp_(row_exp_avgs, row_grads, 1 - beta1)
            torch._foreach_mul_(row_exp_avg_sqs, beta2)
            torch._foreach_addcmul_(row_exp_avg_sqs, row_grads, row_grads, 1 - beta2)
            denoms = torch._foreach_sqrt(row_exp_avg_sqs)
            torch._foreach_div_(denoms, [corrections[i][1] for i in ranked])
            torch._foreach_add_(denoms, eps)
            step_sizes = [lr * lists.task_weights[i][r] / corrections[i][0] for i in ranked]
            torch._foreach_addcdiv_([deltas[i] for i in ranked], row_exp_avgs, denoms, [-s for s in step_sizes])
            if parts is not None:
                row_parts = torch._foreach_div(row_exp_avgs, denoms)
                torch._foreach_mul_(row_parts, step_sizes)
                for i, part in zip(ranked, row_parts):
                    parts[i][r] = part
            del denoms
    _add_sums(lists, deltas)
    if task_updates_out is not None and parts is not None:
        task_updates_out.extend(parts)


def _by_device_and_dtype(params: Sequence[Tensor]) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    """The parameters' positions, grouped by device and dtype (foreach kernels take one of each)."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault((p.device, p.dtype), []).append(i)
    return groups


# -- the fused kernel --------------------------------------------------------------------------------------

_FUSED_CPU_SINCE = (2, 4)
"""The first torch (major, minor) whose ``torch.optim.Adam(fused=True)`` runs on the CPU."""

_fused_warned = False


def _fused_supported(warn: bool) -> bool:
    """Does this torch have the fused Adam kernel on the CPU?  If not, with ``warn``, say so (once)."""
    global _fused_warned
    version = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    if version >= _FUSED_CPU_SINCE:
        return True
    if warn and not _fused_warned:
        _fused_warned = True
        since = ".".join(map(str, _FUSED_CPU_SINCE))
        warnings.warn(
            f"MAO(fused=True): torch {torch.__version__} has no fused Adam kernel on the CPU (torch.optim.Adam("
            f"fused=True) runs there since torch {since}); using the foreach implementation instead",
            RuntimeWarning,
            stacklevel=5,
        )
    return False


def _fusable(lists: _Lists, i: int) -> bool:
    """Can the fused CPU kernel update parameter ``i``?  On the CPU, in single or double precision, in
    contiguous memory (the kernel reads flat arrays)."""
    p = lists.params[i]
    tensors = (p, lists.exp_avgs[i], lists.exp_avg_sqs[i], *lists.grads[i])
    return p.dtype in (torch.float32, torch.float64) and all(
        t.device.type == "cpu" and t.dtype == p.dtype and t.is_contiguous() for t in tensors
    )


def _fused_mao(
    lists: _Lists, hyper: _Hyper, task_updates_out: list[Tensor] | None, *, several_rows_only: bool = False
) -> None:
    """One pass of torch's fused Adam kernel per parameter and task (reading ``g``, ``m``, ``v`` and
    writing the step once, where the other paths make several passes), through ``torch.optim``'s public
    functional ``torch.optim.adam.adam(..., fused=True)``.

    As in the other paths, a parameter with one row is the kernel's own parameter (Adam's update) and
    one with several rows gets its rows' steps summed in a buffer that the kernel updates as if it were
    the parameter, one call per task rank and step size (so that no call lists a tensor twice).
    Tensors the kernel does not take (CUDA, half precision, strided), a torch without the kernel and,
    with ``several_rows_only`` (the CPU default), parameters with one row take :func:`_multi_tensor_mao`.
    The parts, when asked for, are computed from the updated moments.
    """
    fused = [i for i in range(len(lists.params)) if (lists.rows(i) > 1 or not several_rows_only) and _fusable(lists, i)]
    if fused and not _fused_supported(warn=not several_rows_only):
        fused = []
    unfused = sorted(set(range(len(lists.params))) - set(fused))
    fused_lists = lists.select(fused)
    sums = _sum_buffers(fused_lists)  # before any arithmetic (the foreach path's buffers come before its own)
    parts: list[Tensor] | None = [] if task_updates_out is not None else None
    if unfused:
        _multi_tensor_mao(lists.select(unfused), hyper, parts)
    if fused:
        _fused_adam_passes(fused_lists, sums, hyper)
        if parts is not None:
            parts += _parts_from_moments(fused_lists, hyper)
    if task_updates_out is not None and parts is not None:
        by_position = dict(zip(unfused + fused, parts))
        task_updates_out.extend(by_position[i] for i in range(len(lists.params)))


def _fused_adam_passes(lists: _Lists, sums: list[Tensor], hyper: _Hyper) -> None:
    """The kernel's calls for :func:`_fused_mao`: the decay, one call per task rank and step size, then
    the sums into the parameters.  ``torch.optim.adam.adam`` advances the step counts it is given before
    its kernel reads them; every row of a parameter is at the same step ``t``, so each call finds them at
    ``t - 1`` and they are set back after it (whole numbers: exact), then advanced once."""
    if hyper.weight_decay != 0:
        torch._foreach_mul_(lists.params, 1 - hyper.lr * hyper.weight_decay)
    for r in range(max(len(rows) for rows in lists.grads)):
        calls: dict[float, list[int]] = {}
        for i, rows in enumerate(lists.grads):
            if len(rows) > r:
                calls.setdefault(hyper.lr * lists.task_weights[i][r], []).append(i)
        for task_lr, ranked in calls.items():
            steps = [lists.state_steps[i] for i in ranked]
            torch_adam(
                [sums[i] for i in ranked], [lists.grads[i][r] for i in ranked], [lists.exp_avgs[i][r] for i in ranked],
                [lists.exp_avg_sqs[i][r] for i in ranked], [], steps, fused=True, amsgrad=False,
                beta1=hyper.beta1, beta2=hyper.beta2, lr=task_lr, weight_decay=0.0, eps=hyper.eps, maximize=False,
            )  # fmt: skip
            torch._foreach_sub_(steps, 1.0)
    torch._foreach_add_(lists.state_steps, 1.0)
    _add_sums(lists, sums)


def _parts_from_moments(lists: _Lists, hyper: _Hyper) -> list[Tensor]:
    """Each row's ``lr w_k u_k`` from moments already updated at step ``t``: what the fused kernel added."""
    parts = []
    for m, v, step, weights in zip(lists.exp_avgs, lists.exp_avg_sqs, lists.state_steps, lists.task_weights):
        bias_correction1, bias_correction2_sqrt = hyper.bias_corrections(step)
        step_sizes = torch.tensor([hyper.lr * w / bias_correction1 for w in weights], dtype=m.dtype)
        denom = (v.sqrt() / bias_correction2_sqrt).add_(hyper.eps)
        parts.append((m / denom).mul_(step_sizes.view(-1, *([1] * (m.dim() - 1)))))
    return parts
