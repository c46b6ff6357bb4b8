"""The workshop's main exercise: write MAO's update in a few lines of torch; the checker runs it beside ``mao_lab.MAO``.

The participant writes ``mao_update(grads, exp_avg, exp_avg_sq, step, *, lr, betas, eps)``:

* ``grads``: ``(T, *shape)``, every task's gradient of one parameter at this step;
* ``exp_avg``, ``exp_avg_sq``: ``(T, *shape)``, the tasks' moments after the previous step (zeros at first);
* ``step``: ``t``, 1 at the first step;
* returns ``(update, exp_avg, exp_avg_sq)``: ``update`` has the parameter's shape and the step is
  ``p <- p - update``; the moments are handed back at the next step.

:func:`check_mao_update` feeds the same per-task gradients (three tasks whose scales differ by 10^7)
to that function and to :class:`mao_lab.MAO` for a few steps and compares the updates.  When they
differ it runs its own version of each typical mistake on the same inputs; the one that reproduces the
participant's updates names the mistake and gives its hint.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._mao import MAO
from .._task_gradients import TaskGradients
from ._core import Exercise, Feedback

__all__ = ["MISTAKES", "UpdateFunction", "check_mao_update", "mao_update_exercise", "reference_mao_update"]

UpdateFunction = Callable[..., tuple[Tensor, Tensor, Tensor]]

LR, BETAS, EPS = 1e-3, (0.9, 0.999), 1e-8
TASK_SCALES = (1e-4, 1.0, 1e3)  # the smallest makes sqrt(v) comparable to sqrt(eps); the spread tells the moments apart
SHAPE = (4, 3)
STEPS = 6
RTOL, ATOL = 1e-5, 1e-12  # float32 arithmetic in an answer is still accepted


@dataclass(frozen=True)
class Mistake:
    """A typical mistake: what the participant did, and the hint that helps."""

    name: str
    diagnosis: str
    hint: str


MISTAKES: dict[str, Mistake] = {
    m.name: m
    for m in (
        Mistake(
            "no_bias_correction",
            "your updates match MAO without bias correction: the first steps are about three times too large.",
            "Both moments start at zero, so early on they are too small: divide m by (1 - β₁ᵗ) and v by (1 - β₂ᵗ) "
            "before forming the step.",
        ),
        Mistake(
            "half_bias_correction",
            "your updates match MAO with only one of the two moments bias-corrected.",
            "Correct both: m̂ = m / (1 - β₁ᵗ) and v̂ = v / (1 - β₂ᵗ).",
        ),
        Mistake(
            "shared_second_moment",
            "your updates match one second moment shared by the tasks (built from all the tasks' squared gradients).",
            "Each task keeps its own v_k, of shape (T, ...), updated from g_k² alone. A shared v lets the "
            "largest task set every task's denominator, and the small tasks' steps shrink to nothing.",
        ),
        Mistake(
            "summed_gradient",
            "your updates are Adam's on the summed gradient: the tasks are added before they are normalised.",
            "MAO normalises first and sums afterwards: each task's g_k gets its own m_k and v_k, and the update is "
            "the sum over k of m̂_k / (√v̂_k + ε).",
        ),
        Mistake(
            "eps_inside_sqrt",
            "your updates match eps added inside the square root, √(v̂ + ε).",
            "As in Adam, ε is added to the root, outside it: √v̂_k + ε. Inside, it damps a task whose gradients are "
            "near √ε ≈ 1e-4 (the smallest task here).",
        ),
        Mistake(
            "eps_before_bias_correction",
            "your updates match eps added before v was bias-corrected.",
            "Correct v first, then add ε: √(v_k / (1 - β₂ᵗ)) + ε.",
        ),
        Mistake(
            "swapped_betas",
            "your updates match the betas the wrong way round.",
            "β₁ (0.9, short memory) goes with the first moment m; β₂ (0.999, long memory) with the second moment v.",
        ),
        Mistake(
            "missing_sum",
            "your update has one row per task: the tasks' steps were never added up.",
            "Sum the per-task steps over the task axis (`.sum(0)`), so the update has the parameter's shape.",
        ),
        Mistake(
            "mean_over_tasks",
            "your updates are the tasks' steps averaged, not summed.",
            'MAO\'s default (`reduction="sum"`) adds the tasks\' steps; averaging is `reduction="mean"`.',
        ),
        Mistake(
            "wrong_sign",
            "your updates have the right size but the wrong sign.",
            "Return the step that is subtracted (p ← p − update): lr · Σ_k m̂_k / (√v̂_k + ε), which points along "
            "the gradients.",
        ),
        Mistake(
            "missing_lr",
            "your updates match MAO's without the learning rate.",
            "Multiply the summed step by `lr`.",
        ),
    )
}


def reference_mao_update(
    grads: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: int,
    *,
    lr: float = LR,
    betas: tuple[float, float] = BETAS,
    eps: float = EPS,
) -> tuple[Tensor, Tensor, Tensor]:
    """MAO's update of one parameter, written out (the exercise's solution).

    >>> grads = torch.tensor([[1e-3], [1e3]])                # two tasks, one coordinate, scales 1e6 apart
    >>> update, m, v = reference_mao_update(grads, torch.zeros(2, 1), torch.zeros(2, 1), 1)
    >>> update                                             # each task moves it by lr at the first step
    tensor([0.0020])
    """
    beta1, beta2 = betas
    exp_avg = beta1 * exp_avg + (1 - beta1) * grads
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grads**2
    m_hat = exp_avg / (1 - beta1**step)
    v_hat = exp_avg_sq / (1 - beta2**step)
    update = lr * (m_hat / (v_hat.sqrt() + eps)).sum(0)
    return update, exp_avg, exp_avg_sq


SOLUTION = """```python
def mao_update(grads, exp_avg, exp_avg_sq, step, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
    beta1, beta2 = betas
    exp_avg = beta1 * exp_avg + (1 - beta1) * grads             # m_k, one per task
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grads**2    # v_k, one per task
    m_hat = exp_avg / (1 - beta1**step)                          # bias corrections
    v_hat = exp_avg_sq / (1 - beta2**step)
    update = lr * (m_hat / (v_hat.sqrt() + eps)).sum(0)          # normalise each task, then sum
    return update, exp_avg, exp_avg_sq
```
Every task is normalised by its own moments before the tasks are added, so a task with a huge loss moves
each parameter by about `lr`, like every other task."""


# -- the checker's own versions of the mistakes (same inputs and outputs as the participant's function) --


def _moments(grads: Tensor, m: Tensor, v: Tensor, b1: float, b2: float) -> tuple[Tensor, Tensor]:
    return b1 * m + (1 - b1) * grads, b2 * v + (1 - b2) * grads * grads


def _variant(name: str) -> UpdateFunction:
    def update(grads: Tensor, m: Tensor, v: Tensor, t: int, *, lr: float, betas: tuple[float, float], eps: float):
        b1, b2 = betas
        c1, c2 = 1 - b1**t, 1 - b2**t
        if name == "summed_gradient":
            total = grads.sum(0)
            m, v = _moments(total, m[0], v[0], b1, b2)
            return lr * (m / c1) / ((v / c2).sqrt() + eps), m.expand_as(grads), v.expand_as(grads)
        if name == "shared_second_moment":
            m, _ = _moments(grads, m, v, b1, b2)
            v = (b2 * v[0] + (1 - b2) * (grads * grads).sum(0)).expand_as(grads)
            return lr * ((m / c1) / ((v / c2).sqrt() + eps)).sum(0), m, v
        if name == "swapped_betas":
            m, v = _moments(grads, m, v, b2, b1)
            c1, c2 = 1 - b2**t, 1 - b1**t
        else:
            m, v = _moments(grads, m, v, b1, b2)
        m_hat, v_hat = m / c1, v / c2
        if name == "no_bias_correction":
            steps = m / (v.sqrt() + eps)
        elif name == "half_bias_correction_m":
            steps = m_hat / (v.sqrt() + eps)
        elif name == "half_bias_correction_v":
            steps = m / (v_hat.sqrt() + eps)
        elif name == "eps_inside_sqrt":
            steps = m_hat / (v_hat + eps).sqrt()
        elif name == "eps_before_bias_correction":
            steps = m_hat / ((v.sqrt() + eps) / math.sqrt(c2))
        else:
            steps = m_hat / (v_hat.sqrt() + eps)
        if name == "missing_sum":
            return lr * steps, m, v
        total = steps.mean(0) if name == "mean_over_tasks" else steps.sum(0)
        scale = {"wrong_sign": -lr, "missing_lr": 1.0}.get(name, lr)
        return scale * total, m, v

    return update


# Variant name -> the mistake it shows (two variants show "half_bias_correction").
_VARIANTS = {
    "no_bias_correction": "no_bias_correction",
    "half_bias_correction_m": "half_bias_correction",
    "half_bias_correction_v": "half_bias_correction",
    "shared_second_moment": "shared_second_moment",
    "summed_gradient": "summed_gradient",
    "eps_inside_sqrt": "eps_inside_sqrt",
    "eps_before_bias_correction": "eps_before_bias_correction",
    "swapped_betas": "swapped_betas",
    "missing_sum": "missing_sum",
    "mean_over_tasks": "mean_over_tasks",
    "wrong_sign": "wrong_sign",
    "missing_lr": "missing_lr",
}


# -- the scenario and the reference run -------------------------------------------------------------------


def _scenario_grads(seed: int = 0) -> list[Tensor]:
    """``STEPS`` stacks ``(T, *SHAPE)`` of per-task gradients: noisy, drifting, of scales 1e-4, 1 and 1e3."""
    generator = torch.Generator().manual_seed(seed)
    scales = torch.tensor(TASK_SCALES, dtype=torch.float64).view(-1, 1, 1)
    drift = torch.randn(len(TASK_SCALES), *SHAPE, generator=generator, dtype=torch.float64)
    return [
        scales * (drift + 0.8 * torch.randn(len(TASK_SCALES), *SHAPE, generator=generator, dtype=torch.float64))
        for _ in range(STEPS)
    ]


def _mao_updates(grads: list[Tensor]) -> list[Tensor]:
    """The updates ``mao_lab.MAO`` applies to a parameter that every task reaches (``p_before - p_after``)."""
    p = torch.zeros(SHAPE, dtype=torch.float64, requires_grad=True)  # MAO updates trainable parameters only
    optimizer = MAO([p], lr=LR, betas=BETAS, eps=EPS)
    updates = []
    for g in grads:
        before = p.detach().clone()
        optimizer.step(task_grads=TaskGradients.from_per_task([[row] for row in g], [p]))
        updates.append(before - p.detach())
    return updates


def _run(function: UpdateFunction, grads: list[Tensor]) -> list[Tensor]:
    m = torch.zeros_like(grads[0])
    v = torch.zeros_like(grads[0])
    updates = []
    for t, g in enumerate(grads, start=1):
        result = function(g.clone(), m.clone(), v.clone(), t, lr=LR, betas=BETAS, eps=EPS)
        if not isinstance(result, tuple) or len(result) != 3:
            raise _BadReturn(result)
        update, m, v = result
        if not all(isinstance(x, Tensor) for x in result):
            raise _BadReturn(result)
        for name, x in (("update", update), ("exp_avg", m), ("exp_avg_sq", v)):
            problem = _not_a_plain_real_tensor(x)
            if problem:
                raise _BadReturn(result, f"its {name} is {problem}")
        updates.append(update.detach().to(torch.float64))
    return updates


def _not_a_plain_real_tensor(x: Tensor) -> str:
    """Why ``x`` cannot be compared with MAO's real CPU updates (empty when it can)."""
    if x.is_complex():
        return f"complex ({x.dtype}): MAO's update is real, and an imaginary part would be dropped silently"
    if x.is_nested or x.layout != torch.strided:
        return f"a {'nested' if x.is_nested else str(x.layout).replace('torch.', '')} tensor, not a plain dense one"
    if x.device.type != "cpu":
        return f"on the {x.device.type} device, not on the CPU where the gradients were given"
    return ""


class _BadReturn(Exception):
    def __init__(self, value: object, problem: str = "") -> None:
        self.value = value
        self.problem = problem


def _close(a: list[Tensor], b: list[Tensor]) -> bool:
    return all(x.shape == y.shape and torch.allclose(x, y, rtol=RTOL, atol=ATOL) for x, y in zip(a, b))


def _largest_error(answer: list[Tensor], expected: list[Tensor]) -> tuple[int, float]:
    """The first step (1-based) where the answer differs, and its largest relative error there."""
    for t, (x, y) in enumerate(zip(answer, expected), start=1):
        if x.shape != y.shape or not torch.allclose(x, y, rtol=RTOL, atol=ATOL):
            if x.shape != y.shape:
                return t, math.inf
            return t, float(((x - y).abs() / y.abs().clamp_min(ATOL)).max())
    return 0, 0.0


def check_mao_update(function: object) -> Feedback:
    """Run ``function`` and ``mao_lab.MAO`` on the same per-task gradients; say what differs.

    >>> check_mao_update(reference_mao_update).correct
    True
    >>> def forgot_bias_correction(grads, m, v, step, *, lr, betas, eps):
    ...     m = betas[0] * m + (1 - betas[0]) * grads
    ...     v = betas[1] * v + (1 - betas[1]) * grads**2
    ...     return lr * (m / (v.sqrt() + eps)).sum(0), m, v
    >>> check_mao_update(forgot_bias_correction).mistake
    'no_bias_correction'
    """
    if function is None or function is Ellipsis:
        return Feedback("incomplete", "define `mao_update` first, then run this cell again.")
    if not callable(function):
        return Feedback(
            "incorrect",
            f"expected a function, got {type(function).__name__}.",
            "not_a_function",
            "Pass the function itself: `q1.check(mao_update)`, without calling it.",
        )
    grads = _scenario_grads()
    try:
        answer = _run(function, grads)
    except NotImplementedError:
        return Feedback("incomplete", "`mao_update` still raises NotImplementedError: fill in its body.")
    except _BadReturn as bad:
        if bad.problem:
            return Feedback(
                "incorrect",
                f"`mao_update` returned three tensors, but {bad.problem}.",
                "bad_return",
                "Keep every operation on the real CPU tensors you were given; return plain tensors.",
            )
        if bad.value is None:
            return Feedback(
                "incomplete", "`mao_update` returns nothing yet: it must return (update, exp_avg, exp_avg_sq)."
            )
        return Feedback(
            "incorrect",
            f"`mao_update` returned {type(bad.value).__name__}, not three tensors.",
            "bad_return",
            "Return a tuple of three tensors: `return update, exp_avg, exp_avg_sq`.",
        )
    except (Exception, SystemExit) as error:  # noqa: BLE001 - the participant's code failed (or called exit()): show it
        message = " ".join(str(error).split())[:300]
        return Feedback(
            "incorrect",
            f"`mao_update` raised {type(error).__name__}: {message}",
            "raised",
            "Read the error; all the arguments are tensors of shape (T, ...) except step (an int).",
        )
    expected = _mao_updates(grads)
    if _close(answer, expected):
        return Feedback(
            "correct",
            f"your update equals mao_lab.MAO's at all {STEPS} steps, for three tasks whose "
            "gradient scales differ by 10⁷.",
        )
    for variant, mistake in _VARIANTS.items():
        if _close(answer, _run(_variant(variant), grads)):  # the checker's own code: it does not raise
            found = MISTAKES[mistake]
            return Feedback("incorrect", found.diagnosis, mistake, found.hint)
    step, error = _largest_error(answer, expected)
    where = "a different shape" if math.isinf(error) else f"a relative error of {error:.2g}"
    return Feedback(
        "incorrect",
        f"your update first differs from MAO's at step {step} ({where}), and matches none "
        "of the typical mistakes the checker knows.",
        "unrecognised",
        "Write the four lines one by one: the two moments per task, their bias corrections, each task's "
        "normalised step, then the sum over tasks times lr.",
    )


def mao_update_exercise() -> Exercise:
    """The exercise object the workshop notebook uses as ``q1``."""
    return Exercise(
        "Write MAO's update of one parameter: mao_update(grads, exp_avg, exp_avg_sq, step, *, lr, betas, eps).",
        lambda function: check_mao_update(function),
        hint="Work along the task axis (dimension 0): every line of Adam applies to each task's row at once; only "
        "at the end sum over dimension 0.",
        solution=SOLUTION,
    )
