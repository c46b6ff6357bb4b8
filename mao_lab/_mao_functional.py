"""MAO's update as a function over lists of tensors, written the way ``torch.optim.adam`` writes Adam.

:func:`mao` is to :class:`~mao_lab.MAO` what ``torch.optim.adam.adam`` is to ``torch.optim.Adam``: the
optimizer gathers, per parameter group, the parameters some task reached at this step with their state;
this module does the arithmetic, with one of three implementations of the same rule:

- :func:`_single_tensor_mao`: one parameter and one task at a time, the rule as :class:`~mao_lab.MAO`'s
  docstring writes it; the reference, and the default on the CPU;
- :func:`_multi_tensor_mao`: the same operations on lists of tensors (``torch._foreach_*``, as
  ``torch.optim`` uses them), one call per operation and task rank; the default on other devices;
- :func:`_fused_mao`: only with ``fused=True``, torch's private fused CPU Adam kernel, one pass per
  parameter and task; guarded by the torch version it was verified with.

Every path treats a parameter the same way: a parameter with one row of moments (one task reaches it)
takes exactly Adam's update (``addcdiv`` into the parameter), so that one task is Adam bit for bit; a
parameter with several rows sums its rows' steps first (in single precision at least) and changes the
parameter once.  Asking for the per-task parts (``task_updates_out``) computes them beside that
arithmetic and never changes it: the parameters end bit-identical with and without.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

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
        foreach: use the ``torch._foreach_*`` implementation (default: on any device but the CPU).
        fused: use torch's fused CPU Adam kernel (only when asked for; see :func:`_fused_mao`).
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
    if fused is None and foreach is None:
        foreach = _default_to_foreach(params)
    if fused:
        implementation = _fused_mao
    elif foreach:
        implementation = _multi_tensor_mao
    else:
        implementation = _single_tensor_mao
    implementation(
        list(params), list(grads), list(exp_avgs), list(exp_avg_sqs), list(state_steps), list(weights),
        lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, task_updates_out=task_updates_out,
    )  # fmt: skip


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


def _default_to_foreach(params: Sequence[Tensor]) -> bool:
    """Foreach where its kernels run (CUDA and the like).  On the CPU a ``_foreach`` op is a loop of the
    per-tensor ops that the single-tensor path calls, with less Python around them but a temporary per
    tensor of the list alive at once; ``python -m mao_lab.bench step`` (``update_foreach_vs_single``)
    measures the single-tensor path as the faster on its 1M-parameter MLP, where the update weighs most in
    the step, and foreach as the faster on its small CNN, where the update is a small part of the step."""
    return all(p.device.type != "cpu" for p in params)


def _accumulator_dtype(p: Tensor) -> torch.dtype:
    """Where the rows' steps are summed: half precision sums in single precision, so that the parameter
    is rounded once per step, not once per task."""
    return torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype


def _single_tensor_mao(
    params: list[Tensor],
    grads: list[Sequence[Tensor]],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    task_weights: list[Sequence[float]],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    task_updates_out: list[Tensor] | None,
) -> None:
    """The rule one parameter and one task at a time, in the operations of ``torch.optim``'s
    ``_single_tensor_adam`` (so a row is updated exactly as Adam updates a parameter)."""
    # Every buffer first, then the arithmetic: running out of memory leaves parameters and moments untouched.
    # One row: Adam's addcdiv into the parameter.  Several: their sum first, then the parameter once.
    deltas = [p if len(g) == 1 else torch.zeros_like(p, dtype=_accumulator_dtype(p)) for p, g in zip(params, grads)]
    denoms = [torch.empty_like(v[0]) for v in exp_avg_sqs]
    kept = [p.new_empty((len(g), *p.shape)) for p, g in zip(params, grads)] if task_updates_out is not None else None
    for i, param in enumerate(params):
        step_t = state_steps[i]
        step_t += 1
        if weight_decay != 0:
            param.mul_(1 - lr * weight_decay)  # theta <- theta (1 - lr lambda), once per step
        step = float(step_t)
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        rows = len(grads[i])
        delta, denom = deltas[i], denoms[i]
        parts = kept[i] if kept is not None else None
        for r, (grad, exp_avg, exp_avg_sq) in enumerate(zip(grads[i], exp_avgs[i], exp_avg_sqs[i])):
            exp_avg.lerp_(grad, 1 - beta1)  # m_k <- b1 m_k + (1 - b1) g_k
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)  # v_k <- b2 v_k + (1 - b2) g_k^2
            torch.sqrt(exp_avg_sq, out=denom).div_(bias_correction2_sqrt).add_(eps)  # sqrt(v_hat_k) + eps
            step_size = lr * task_weights[i][r] / bias_correction1  # lr w_k / (1 - b1^t): m_hat_k's factor
            delta.addcdiv_(exp_avg, denom, value=-step_size)  # - lr w_k u_k
            if parts is not None:
                torch.div(exp_avg, denom, out=parts[r]).mul_(step_size)
        if rows > 1:
            param.add_(delta)
        if task_updates_out is not None:
            assert parts is not None
            task_updates_out.append(parts)


def _multi_tensor_mao(
    params: list[Tensor],
    grads: list[Sequence[Tensor]],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    task_weights: list[Sequence[float]],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    task_updates_out: list[Tensor] | None,
) -> None:
    """:func:`_single_tensor_mao`'s operations on lists: for each task rank ``r``, row ``r`` of every
    parameter that has one, so that no call lists a tensor twice (foreach kernels may update the
    tensors of one call in parallel).  Tensors are grouped by device and dtype, as ``torch.optim`` does."""
    groups = list(_by_device_and_dtype(params).values())
    # The buffers of every group first, then the arithmetic (as in _single_tensor_mao).
    deltas = {
        i: params[i] if len(grads[i]) == 1 else torch.zeros_like(params[i], dtype=_accumulator_dtype(params[i]))
        for i in range(len(params))
    }
    parts: dict[int, Tensor] = {}
    if task_updates_out is not None:
        parts.update({i: params[i].new_empty((len(grads[i]), *params[i].shape)) for i in range(len(params))})
    for indices in groups:
        steps = [state_steps[i] for i in indices]
        torch._foreach_add_(steps, 1.0)
        if weight_decay != 0:
            torch._foreach_mul_([params[i] for i in indices], 1 - lr * weight_decay)
        counts = {i: float(step) for i, step in zip(indices, steps)}
        bias_correction1 = {i: 1 - beta1**t for i, t in counts.items()}
        bias_correction2_sqrt = {i: (1 - beta2**t) ** 0.5 for i, t in counts.items()}
        for r in range(max(len(grads[i]) for i in indices)):
            ranked = [i for i in indices if len(grads[i]) > r]
            row_grads = [grads[i][r] for i in ranked]
            row_exp_avgs = [exp_avgs[i][r] for i in ranked]
            row_exp_avg_sqs = [exp_avg_sqs[i][r] for i in ranked]
            torch._foreach_lerp_(row_exp_avgs, row_grads, 1 - beta1)
            torch._foreach_mul_(row_exp_avg_sqs, beta2)
            torch._foreach_addcmul_(row_exp_avg_sqs, row_grads, row_grads, 1 - beta2)
            denoms = torch._foreach_sqrt(row_exp_avg_sqs)
            torch._foreach_div_(denoms, [bias_correction2_sqrt[i] for i in ranked])
            torch._foreach_add_(denoms, eps)
            step_sizes = [lr * task_weights[i][r] / bias_correction1[i] for i in ranked]
            torch._foreach_addcdiv_([deltas[i] for i in ranked], row_exp_avgs, denoms, [-s for s in step_sizes])
            if task_updates_out is not None:
                row_parts = torch._foreach_div(row_exp_avgs, denoms)
                torch._foreach_mul_(row_parts, step_sizes)
                for i, part in zip(ranked, row_parts):
                    parts[i][r] = part
            del denoms
        summed = [i for i in indices if len(grads[i]) > 1]
        if summed:
            torch._foreach_add_([params[i] for i in summed], [deltas[i] for i in summed])
    if task_updates_out is not None:
        task_updates_out.extend(parts[i] for i in range(len(params)))


def _by_device_and_dtype(params: Sequence[Tensor]) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    """The parameters' positions, grouped by device and dtype (foreach kernels take one of each)."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault((p.device, p.dtype), []).append(i)
    return groups


# -- the fused CPU kernel (opt-in) ---------------------------------------------------------------------

_FUSED_VERIFIED = ((2, 13),)
"""The torch versions (major, minor) with which ``torch._fused_adam_`` was checked to do, per tensor of
its lists and in their order, Adam's step with the bias corrections of ``state_steps`` (which it reads
and does not advance): ``tests/test_mao.py`` checks it against the reference rule."""

_fused_warned = False


def _fused_verified() -> bool:
    """Is this torch one whose private fused Adam kernel was verified (see :data:`_FUSED_VERIFIED`)?"""
    version = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    return version in _FUSED_VERIFIED and hasattr(torch, "_fused_adam_")


def _fused_available() -> bool:
    """:func:`_fused_verified`, with a warning (once) when it is not."""
    global _fused_warned
    if _fused_verified():
        return True
    if not _fused_warned:
        _fused_warned = True
        verified = ", ".join(f"{major}.{minor}" for major, minor in _FUSED_VERIFIED)
        warnings.warn(
            f"MAO(fused=True): torch._fused_adam_ is a private kernel verified with torch {verified}, not with "
            f"torch {torch.__version__}; using the foreach implementation instead",
            RuntimeWarning,
            stacklevel=4,
        )
    return False


def _fusable(param: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, grads: Sequence[Tensor]) -> bool:
    """Can the fused CPU kernel update this parameter?  On the CPU, in single or double precision, in
    contiguous memory (the kernel reads flat arrays)."""
    tensors = (param, exp_avg, exp_avg_sq, *grads)
    return all(t.device.type == "cpu" and t.dtype == param.dtype and t.is_contiguous() for t in tensors) and (
        param.dtype in (torch.float32, torch.float64)
    )


def _fused_mao(
    params: list[Tensor],
    grads: list[Sequence[Tensor]],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    task_weights: list[Sequence[float]],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    task_updates_out: list[Tensor] | None,
) -> None:
    """One pass of ``torch._fused_adam_`` per parameter and task (reading ``g``, ``m``, ``v`` and writing
    the step once, where the other paths make several passes); only on a verified torch version.

    As in the other paths, a parameter with one row is the kernel's own parameter (Adam's update) and
    one with several rows gets its rows' steps summed in a buffer that the kernel updates as if it were
    the parameter, one call per task rank and step size (so that no call lists a tensor twice).
    Tensors the kernel does not take (CUDA, half precision, strided) and other torch versions take
    :func:`_multi_tensor_mao`.  The parts, when asked for, are computed from the updated moments.
    """
    hyper = {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps, "weight_decay": weight_decay}
    lists = (params, grads, exp_avgs, exp_avg_sqs, state_steps, task_weights)

    def select(indices: list[int]) -> tuple[list, ...]:
        return tuple([values[i] for i in indices] for values in lists)

    fused = [i for i in range(len(params)) if _fusable(params[i], exp_avgs[i], exp_avg_sqs[i], grads[i])]
    if fused and not _fused_available():
        fused = []
    unfused = sorted(set(range(len(params))) - set(fused))
    parts: list[Tensor] | None = [] if task_updates_out is not None else None
    if unfused:
        _multi_tensor_mao(*select(unfused), **hyper, task_updates_out=parts)
    if fused:
        _fused_adam_passes(*select(fused), **hyper)
        if parts is not None:
            parts += _parts_from_moments(*select(fused)[2:], lr=lr, beta1=beta1, beta2=beta2, eps=eps)
    if task_updates_out is not None and parts is not None:
        by_position = dict(zip(unfused + fused, parts))
        task_updates_out.extend(by_position[i] for i in range(len(params)))


def _fused_adam_passes(
    params: list[Tensor],
    grads: list[Sequence[Tensor]],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    task_weights: list[Sequence[float]],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
) -> None:
    """The calls of :func:`_fused_mao`; the kernel reads the step counts, so they are advanced first."""
    torch._foreach_add_(state_steps, 1.0)
    if weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    deltas = [p if len(rows) == 1 else torch.zeros_like(p) for p, rows in zip(params, grads)]
    for r in range(max(len(rows) for rows in grads)):
        calls: dict[float, list[int]] = {}
        for i, rows in enumerate(grads):
            if len(rows) > r:
                calls.setdefault(lr * task_weights[i][r], []).append(i)
        for task_lr, ranked in calls.items():
            torch._fused_adam_(
                [deltas[i] for i in ranked], [grads[i][r] for i in ranked], [exp_avgs[i][r] for i in ranked],
                [exp_avg_sqs[i][r] for i in ranked], [], [state_steps[i] for i in ranked],
                lr=task_lr, beta1=beta1, beta2=beta2, weight_decay=0.0, eps=eps, amsgrad=False, maximize=False,
            )  # fmt: skip
    summed = [i for i, rows in enumerate(grads) if len(rows) > 1]
    if summed:
        torch._foreach_add_([params[i] for i in summed], [deltas[i] for i in summed])


def _parts_from_moments(
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    task_weights: list[Sequence[float]],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
) -> list[Tensor]:
    """Each row's ``lr w_k u_k`` from moments already updated at step ``t``: what the fused kernel added."""
    parts = []
    for m, v, step, weights in zip(exp_avgs, exp_avg_sqs, state_steps, task_weights):
        t = float(step)
        step_sizes = torch.tensor([lr * w / (1 - beta1**t) for w in weights], dtype=m.dtype)
        denom = (v.sqrt() / (1 - beta2**t) ** 0.5).add_(eps)
        parts.append((m / denom).mul_(step_sizes.view(-1, *([1] * (m.dim() - 1)))))
    return parts
