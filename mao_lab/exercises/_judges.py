"""Judges of the predict / change / explain exercises: the truth is read from the participant's own run.

Each judge takes the answer and the table the notebook computed, finds the right answer in that table,
and returns :class:`~mao_lab.exercises.Feedback`.  So an exercise stays right whatever the setting
(smoke or full, any seed): the checker reads the run the participant is looking at.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .._mao import MAO
from ._core import Feedback, choice_feedback, require_columns

__all__ = [
    "imbalance_by_hand",
    "least_served_task",
    "layer_owner",
    "most_balanced_layer",
    "most_imbalanced",
    "owner_share_direction",
    "rescaling_changes",
    "steadiest_method",
    "worst_final_task",
]


class _Unjudgeable(Exception):
    """The participant's table holds nothing to judge against (every value NaN: the run diverged)."""


def _never_raises_on_data(judge: Callable[..., Feedback]) -> Callable[..., Feedback]:
    """A judge whose run's table is all NaN says so as feedback instead of raising."""

    @functools.wraps(judge)
    def checked(*args: Any, **kwargs: Any) -> Feedback:
        try:
            return judge(*args, **kwargs)
        except _Unjudgeable as error:
            return Feedback(
                "incomplete",
                str(error),
                "no_finite_values",
                "A diverged run (a learning rate too large?) leaves NaN; run the cells above again.",
            )

    return checked


def _finite(values: pd.Series, what: str) -> pd.Series:
    """``values`` without NaN; none left means the run has nothing to judge against."""
    finite = values[np.isfinite(pd.to_numeric(values, errors="coerce").astype(float))]
    if finite.empty:
        raise _Unjudgeable(
            f"every {what} in your run's table is NaN or infinite, so there is nothing to compare your answer with."
        )
    return finite


def _judge_extreme(
    answer: Any, values: pd.Series, what: str, *, largest: bool, reason: Callable[[str], str], hint: str
) -> Feedback:
    """Judge ``answer`` against the label of the smallest (or, ``largest``, the largest) finite value of ``values``
    (``what`` they are, for the error), its labels the choices; ``reason(label)`` says why that label is right."""
    finite = _finite(values, what)
    truth = str(finite.idxmax() if largest else finite.idxmin())
    return choice_feedback(answer, truth, list(values.index), reason(truth), hint)


def _task_prefix(label: object) -> str:
    """``"task1 (sigma=100)"`` -> ``"task1"``: the notebooks label tasks with their scale."""
    return str(label).split(" ")[0]


@_never_raises_on_data
def worst_final_task(answer: Any, curves: pd.DataFrame, method: str = "Adam on the sum") -> Feedback:
    """Which task has the largest normalised test error at the last step under ``method`` (notebook 00)."""
    value = next(
        (c for c in ("normalised_test_loss", "normalised_test_mse") if c in curves.columns), "normalised_test_loss"
    )
    require_columns(curves, ["method", "step", "task", value], "curves")
    rows = curves[curves["method"] == method]
    if rows.empty:
        raise ValueError(f"curves has no rows for method {method!r}; it has {sorted(curves['method'].unique())}")
    last = rows[rows["step"] == rows["step"].max()]
    worst = last.loc[_finite(last[value], value).idxmax()]
    tasks = sorted({_task_prefix(t) for t in rows["task"]})
    return choice_feedback(
        answer,
        _task_prefix(worst["task"]),
        tasks,
        f"Its normalised test error at the last step is {worst[value]:.3g}, the largest under {method}.",
        "Adam normalises the summed gradient, which the task with the largest σ dominates. Which task does that leave?",
    )


def _owner_table(ownership: pd.DataFrame, run: str) -> pd.DataFrame:
    """Mean share per (layer, task) over the runs named ``run`` or ``run-…`` (seeds of one method)."""
    require_columns(ownership, ["run", "layer", "task", "share"], "ownership")
    names = ownership["run"].astype(str)
    rows = ownership[(names == run) | names.str.startswith(f"{run}-")]
    if rows.empty:
        raise ValueError(f"ownership has no run {run!r}; it has {sorted(set(names))}")
    table = rows.assign(layer=rows["layer"].astype(str), task=rows["task"].astype(str))
    return table.groupby(["layer", "task"], sort=False)["share"].mean().reset_index()


@_never_raises_on_data
def layer_owner(answer: Any, ownership: pd.DataFrame, run: str = "sum", layer: str = "trunk.0") -> Feedback:
    """The task with the largest share of ``layer``'s update in ``run`` (notebooks 02 and 03)."""
    table = _owner_table(ownership, run)
    rows = table[table["layer"] == layer]
    if rows.empty:
        raise ValueError(f"run {run!r} has no shared layer {layer!r}; it has {sorted(table['layer'].unique())}")
    top = rows.loc[_finite(rows["share"], "share").idxmax()]
    return choice_feedback(
        answer,
        top["task"],
        list(rows["task"]),
        f"It has {top['share']:.0%} of {layer}'s update in run {run!r}.",
        "Look at the tasks' scales σ: whose gradient is largest when the losses are simply added?",
    )


@_never_raises_on_data
def least_served_task(answer: Any, ownership: pd.DataFrame, run: str = "sum") -> Feedback:
    """The task with the smallest mean share over all shared layers of ``run`` (notebook 03)."""
    table = _owner_table(ownership, run)
    mean = table.groupby("task", sort=False)["share"].mean()
    return _judge_extreme(
        answer,
        mean,
        "share",
        largest=False,
        reason=lambda task: f"Its mean share of the shared layers in run {run!r} is {mean[task]:.1%}.",
        hint="Compare the size of each task's loss gradient: a classification loss, a regression and a pixel-wise "
        "reconstruction averaged over 784 pixels.",
    )


@_never_raises_on_data
def most_balanced_layer(answer: Any, ownership: pd.DataFrame, run: str = "gradnorm") -> Feedback:
    """The shared layer with the lowest imbalance index in ``run`` (notebook 02: GradNorm's own layer)."""
    require_columns(ownership, ["run", "layer", "imbalance"], "ownership")
    rows = ownership[ownership["run"].astype(str) == run]
    if rows.empty:
        raise ValueError(f"ownership has no run {run!r}; add it to `methods` and run again")
    imbalance = rows.assign(layer=rows["layer"].astype(str)).groupby("layer", sort=False)["imbalance"].mean()
    return _judge_extreme(
        answer,
        imbalance,
        "imbalance index",
        largest=False,
        reason=lambda layer: f"Its mean imbalance index is {imbalance[layer]:.2f} (0 = balanced).",
        hint="GradNorm measures the gradient norms at one layer only. Which one?",
    )


@_never_raises_on_data
def owner_share_direction(
    answer: Any, before: pd.DataFrame, after: pd.DataFrame, run: str = "sum", layer: str = "trunk.0"
) -> Feedback:
    """After a change (e.g. σ max from 100 to 1): did the owner's share of ``layer`` grow or shrink?"""
    shares = [owned.loc[owned["layer"] == layer, "share"] for owned in (_owner_table(t, run) for t in (before, after))]
    if any(s.empty for s in shares):
        raise ValueError(f"both tables need run {run!r} and layer {layer!r}")
    share_before, share_after = (float(_finite(s, f"share of {layer}").max()) for s in shares)
    truth = "smaller" if share_after < share_before else "larger"
    return choice_feedback(
        answer,
        truth,
        ["smaller", "larger"],
        f"The largest share of {layer} went from {share_before:.0%} to {share_after:.0%}.",
        "With every σ equal, is any task's gradient larger than the others'?",
    )


@_never_raises_on_data
def steadiest_method(answer: Any, gaps: pd.DataFrame) -> Feedback:
    """The method whose trajectories move least when a loss is rescaled (notebook 01's ``gaps``)."""
    require_columns(gaps, ["method", "max_gap"], "gaps")
    best = gaps.loc[_finite(gaps["max_gap"], "max_gap").idxmin()]
    return choice_feedback(
        answer,
        str(best["method"]),
        [str(m) for m in gaps["method"]],
        f"Its trajectories move by at most {best['max_gap']:.2g} when L1 is rescaled.",
        "Which method divides each task's gradient by that task's own running size?",
    )


@_never_raises_on_data
def most_imbalanced(answer: Any, balance: pd.DataFrame, *, by: str = "run", run: str | None = None) -> Feedback:
    """The most imbalanced run (``by="run"``) or shared layer of ``run`` (``by="layer"``) in notebook 04's summary."""
    require_columns(balance, ["run", "layer", "imbalance"], "balance")
    table = balance.assign(run=balance["run"].astype(str), layer=balance["layer"].astype(str))
    runs = list(pd.unique(table["run"]))
    if by == "run":
        rows = table[table["layer"] == "(all shared)"].set_index("run")["imbalance"]
        answer = _full_run_name(answer, runs)
    elif by == "layer":
        if run is None:
            raise ValueError("by='layer' needs the run whose layers to compare")
        run = _full_run_name(run, runs)
        rows = table[(table["run"] == run) & (table["layer"] != "(all shared)")].set_index("layer")["imbalance"]
    else:
        raise ValueError(f"by must be 'run' or 'layer', got {by!r}")
    if rows.empty:
        raise ValueError(f"balance has no rows for by={by!r}, run={run!r}")
    return _judge_extreme(
        answer,
        rows,
        "imbalance index",
        largest=True,
        reason=lambda top: f"Its imbalance index is {rows[top]:.2f} (1 = one task owns it).",
        hint="The index is 0 when every task has an equal share and 1 when one task has all of it.",
    )


def _full_run_name(name: Any, runs: Sequence[str]) -> Any:
    """``name``, or the one run whose name ends with ``/name`` (04 names runs by where they came from,
    ``demo_runs/sum``; a participant may just say ``sum``).

    >>> _full_run_name("sum", ["demo_runs/sum", "demo_runs/mao"]), _full_run_name("sum", ["a/sum", "b/sum"])
    ('demo_runs/sum', 'sum')
    """
    if not isinstance(name, str) or name in runs:
        return name
    matches = [run for run in runs if run.endswith("/" + name.strip())]
    return matches[0] if len(matches) == 1 else name


def imbalance_by_hand(answer: Any, shares: Sequence[float] = (0.7, 0.2, 0.1)) -> Feedback:
    """The imbalance index ``1 - H(s) / log n`` of ``shares``, computed by the participant (notebook 04).

    Recognises the usual slips: the entropy alone, the normalised entropy without the ``1 -``.
    """
    s = np.asarray(shares, dtype=float)
    entropy = float(-(s[s > 0] * np.log(s[s > 0])).sum())
    truth = 1 - entropy / math.log(len(s))
    value = _real_number(answer)
    if value is None:
        return Feedback("incorrect", f"{_shown(answer)} is not a number.", "not_a_number", "Answer with a float.")
    if math.isclose(value, truth, abs_tol=5e-3):
        return Feedback("correct", f"1 − H(s)/log {len(s)} = {truth:.3f}.")
    slips = {
        "entropy_only": (
            entropy,
            "that is the entropy H(s) itself: divide by log n to bring it to 0..1, then take 1 minus it.",
        ),
        "entropy_base2": (
            entropy / math.log(2),
            "that is the entropy in bits: divide by log₂ n, then take 1 minus it.",
        ),
        "missing_one_minus": (
            entropy / math.log(len(s)),
            "that is the normalised entropy (1 = balanced): the index is 1 minus it.",
        ),
    }
    for key, (slip, hint) in slips.items():
        if math.isclose(value, slip, abs_tol=5e-3):
            return Feedback("incorrect", f"{value:g} is not the index.", key, hint)
    return Feedback(
        "incorrect",
        f"{value:g} is not the index.",
        "wrong_number",
        "H(s) = −Σ s_k log s_k; the index is 1 − H(s) / log n, with n the number of tasks.",
    )


def _real_number(answer: Any) -> float | None:
    """``answer`` as a finite-or-infinite real float, or ``None`` (complex, too large, a tensor that has no value)."""
    if isinstance(answer, (complex, np.complexfloating)) or (isinstance(answer, torch.Tensor) and answer.is_complex()):
        return None
    try:
        if isinstance(answer, torch.Tensor) and (answer.numel() != 1 or answer.device.type == "meta"):
            return None
        return float(answer)
    except OverflowError:  # an int beyond the floats, e.g. 10**400: as far from any index as infinity
        return (math.inf if answer > 0 else -math.inf) if isinstance(answer, int) else None
    except (TypeError, ValueError, RuntimeError):
        return None


def _boolean(answer: Any) -> bool | None:
    """``True``/``False`` from a Python, numpy or one-element torch boolean; ``None`` for anything else."""
    if isinstance(answer, (bool, np.bool_)):
        return bool(answer)
    if isinstance(answer, torch.Tensor) and answer.dtype == torch.bool and answer.numel() == 1:
        return bool(answer.item()) if answer.device.type != "meta" else None
    return None


def _shown(answer: Any, limit: int = 80) -> str:
    """``repr(answer)`` cut to ``limit`` characters (10**400 has 401 digits)."""
    try:
        text = repr(answer)
    except Exception:  # noqa: BLE001 - a participant's object whose repr raises
        text = f"<{type(answer).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _two_task_trajectory(optimizer_name: str, scale: float, steps: int = 15, seed: int = 0) -> torch.Tensor:
    """The trunk's weights after ``steps`` steps on two regression tasks, task 1's loss times ``scale``."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 4, generator=generator, dtype=torch.float64)  # float64: rounding stays far below 1e-9
    targets = [x.sum(1, keepdim=True).tanh(), 50 * (x[:, :2].sum(1, keepdim=True)).sin()]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        trunk = nn.Linear(4, 8).double()
        heads = nn.ModuleList([nn.Linear(8, 1), nn.Linear(8, 1)]).double()
    params = [*trunk.parameters(), *heads.parameters()]

    def losses() -> list[torch.Tensor]:
        z = trunk(x).tanh()
        raw = [(head(z) - y).pow(2).mean() for head, y in zip(heads, targets)]
        return [raw[0], scale * raw[1]]

    if optimizer_name == "mao":
        optimizer: torch.optim.Optimizer = MAO(params, lr=1e-2, eps=1e-16)
        for _ in range(steps):
            optimizer.step(losses)
    else:
        optimizer = torch.optim.Adam(params, lr=1e-2, eps=1e-16)
        for _ in range(steps):
            optimizer.zero_grad()
            sum(losses()).backward()
            optimizer.step()
    return trunk.weight.detach().clone()


def rescaling_changes(answer: Any) -> Feedback:
    """``answer = (mao_changes, adam_changes)``: does multiplying task 1's loss by 1000 change the trunk's trajectory?

    The judge trains both optimizers twice (scale 1 and 1000) on a small two-task problem and compares.
    """
    pair = tuple(_boolean(a) for a in answer) if isinstance(answer, (tuple, list)) and len(answer) == 2 else None
    if pair is None or None in pair:
        return Feedback(
            "incorrect",
            f"{_shown(answer)} is not a pair of booleans.",
            "bad_format",
            "Answer `(mao_changes, adam_changes)`, e.g. `(True, False)`.",
        )
    answer = pair
    moved = {}
    for name in ("mao", "adam"):
        a, b = _two_task_trajectory(name, 1.0), _two_task_trajectory(name, 1000.0)
        moved[name] = float((a - b).abs().max() / a.abs().max())
    truth = (moved["mao"] > 1e-9, moved["adam"] > 1e-9)
    measured = (
        f"The checker trained both: the trunk moved by {moved['mao']:.1e} (MAO) and {moved['adam']:.1e}"
        " (Adam on the sum), relative."
    )
    if tuple(answer) == truth:
        return Feedback(
            "correct", f"{measured} MAO normalises each task by its own moments, so a constant factor cancels."
        )
    wrong = "MAO" if answer[0] != truth[0] else "Adam on the sum"
    return Feedback(
        "incorrect",
        f"not for {wrong}.",
        "wrong_prediction",
        "In m̂_k / √v̂_k a constant factor c on task k's loss appears as c / |c|. Under Adam on the sum, "
        "the factor changes which task dominates the summed gradient.",
    )
