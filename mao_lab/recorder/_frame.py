"""The tidy table of balance metrics: its columns, how raw step measurements become rows, and modules.

One row per step x layer x task (or task pair) x metric.  The raw measurements a step leaves behind
are small (a Gram matrix of the task gradients and the norms of the task updates per parameter, and the
losses); every metric is derived from them here, lazily, when a table is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

__all__ = ["COLUMNS", "METRICS", "Level", "by_module", "imbalance_index", "module_of", "task_shares"]

Level = Literal["parameter", "module"]

METRICS: dict[str, str] = {
    "grad_norm": "L2 norm of the task's gradient of the layer",
    "update_norm": "L2 norm of the task's contribution to the update applied to the layer",
    "update_share": "the task's update_norm divided by the sum over the tasks reaching the layer (sums to 1)",
    "imbalance": "1 - normalised entropy of the layer's update shares (0 balanced, 1 one task owns it)",
    "cosine": "cosine between the gradients of task and other_task on the layer",
    "loss": "the task's loss at the step (no layer)",
}
"""Every metric of the tidy table, with its meaning."""

COLUMNS: tuple[str, ...] = ("step", "layer", "module", "kind", "task", "other_task", "metric", "value")
"""The columns of the tidy table (``run`` is put first when several runs are combined)."""

_CATEGORICAL = ("layer", "module", "kind", "task", "other_task", "metric")


def module_of(layer: str) -> str:
    """The module that owns a parameter, from its dotted name; ``"(model)"`` for a top-level parameter.

    >>> module_of("trunk.0.weight"), module_of("scale")
    ('trunk.0', '(model)')
    """
    head, dot, _ = layer.rpartition(".")
    return head if dot else "(model)"


def task_shares(norms: np.ndarray, reaches: np.ndarray | None = None) -> np.ndarray:
    """Each task's share of a layer's update: the norm of its part over the sum of the parts' norms.

    ``norms[..., k]`` is the norm of task ``k``'s part of a layer's update (the last axis runs over the tasks);
    ``reaches`` (the same shape; default: every task) marks the tasks that reach the layer, and the others get
    no share (NaN).  The shares of the tasks reaching a layer sum to 1; they are NaN where their norms sum to
    zero or one of them is NaN.  The recorder's table (:func:`decode`, :func:`by_module`) and the live monitor
    all take their shares from here.

    >>> task_shares(np.array([[1.0, 3.0], [0.0, 0.0]]))
    array([[0.25, 0.75],
           [ nan,  nan]])
    >>> task_shares(np.array([2.0, 5.0, 6.0]), reaches=np.array([True, False, True]))
    array([0.25,  nan, 0.75])
    """
    norms = np.asarray(norms, dtype=np.float64)
    reaches = np.ones(norms.shape, dtype=bool) if reaches is None else np.asarray(reaches, dtype=bool)
    total = np.where(reaches, norms, 0.0).sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(reaches & (total > 0), norms / np.where(total > 0, total, 1.0), np.nan)


def imbalance_index(shares: np.ndarray, axis: int = -1, reaches: np.ndarray | None = None) -> np.ndarray:
    """One minus the normalised Shannon entropy of shares: 0 when equal, 1 when one task has everything.

    ``1 - H(s) / log(n)`` with ``H(s) = -sum_k s_k log s_k`` over the ``n`` entries along ``axis`` that
    ``reaches`` marks (default: all; ``0 log 0 = 0``).  Unlike a max/min ratio it stays finite when a task
    contributes nothing, and it compares layers reached by different numbers of tasks on one 0..1 scale.
    NaN where ``n < 2`` or a share it counts is NaN.

    >>> imbalance_index(np.array([[0.5, 0.5], [1.0, 0.0], [0.9, 0.1]])).round(3)
    array([0.   , 1.   , 0.531])
    >>> float(imbalance_index(np.array([0.5, np.nan, 0.5]), reaches=np.array([True, False, True])))
    0.0
    """
    shares = np.asarray(shares, dtype=np.float64)
    reaches = np.ones(shares.shape, dtype=bool) if reaches is None else np.asarray(reaches, dtype=bool)
    n = reaches.sum(axis=axis)
    counted = reaches & (shares > 0)
    terms = np.where(counted, shares * np.log(np.where(counted, shares, 1.0)), 0.0)
    index = 1.0 + terms.sum(axis=axis) / np.log(np.maximum(n, 2))
    index = np.where((reaches & np.isnan(shares)).any(axis=axis) | (n < 2), np.nan, index)
    return np.clip(index, 0.0, 1.0)


@dataclass(frozen=True)
class Layout:
    """Where each measurement sits in the flat vector a recorded step leaves behind.

    Layers are the parameters, in the model's order.  For each, the vector holds the Gram matrix of the
    stacked task gradients (``len(grad_tasks[i])`` squared entries), then for each layer the norms of
    the task updates, then the ``T`` losses.
    """

    task_names: tuple[str, ...]
    layers: tuple[str, ...]
    grad_tasks: tuple[tuple[int, ...], ...]
    update_tasks: tuple[tuple[int, ...], ...]

    @property
    def size(self) -> int:
        return (
            sum(len(ks) ** 2 for ks in self.grad_tasks)
            + sum(len(ks) for ks in self.update_tasks)
            + len(self.task_names)
        )

    def tasks_of(self, i: int) -> tuple[int, ...]:
        """Every task that reaches layer ``i`` or contributes to its update."""
        return tuple(sorted(set(self.grad_tasks[i]) | set(self.update_tasks[i])))


class _Rows:
    """Columns collected piece by piece, concatenated once (building a DataFrame per row is slow)."""

    def __init__(self) -> None:
        self.columns: dict[str, list[np.ndarray]] = {name: [] for name in COLUMNS}

    def add(
        self,
        steps: np.ndarray,
        values: np.ndarray,
        metric: str,
        layer: str | None = None,
        kind: str | None = None,
        task: str | None = None,
        other_task: str | None = None,
    ) -> None:
        n = len(steps)
        self.columns["step"].append(steps)
        self.columns["value"].append(np.asarray(values, dtype=np.float64))
        for name, label in (
            ("layer", layer),
            ("module", None if layer is None else module_of(layer)),
            ("kind", kind),
            ("task", task),
            ("other_task", other_task),
            ("metric", metric),
        ):
            self.columns[name].append(np.full(n, label, dtype=object))

    def frame(self) -> pd.DataFrame:
        if not self.columns["step"]:
            return empty_frame()
        data = {name: np.concatenate(parts) for name, parts in self.columns.items()}
        frame = pd.DataFrame(data)
        frame["step"] = frame["step"].astype(np.int64)
        return normalise_dtypes(frame.sort_values("step", kind="stable", ignore_index=True))


def empty_frame() -> pd.DataFrame:
    """A table with the right columns and no rows."""
    frame = pd.DataFrame({name: [] for name in COLUMNS})
    frame["step"] = frame["step"].astype(np.int64)
    return normalise_dtypes(frame)


def normalise_dtypes(frame: pd.DataFrame) -> pd.DataFrame:
    """Categorical labels, int64 steps, float64 values: the same dtypes whatever the table came from."""
    frame = frame.copy()
    for name in (*_CATEGORICAL, "run"):
        if name in frame.columns:
            labels = frame[name].astype(object).where(frame[name].notna(), None)
            frame[name] = pd.Categorical(labels, categories=pd.unique(labels.dropna()))
    frame["step"] = frame["step"].astype(np.int64)
    frame["value"] = frame["value"].astype(np.float64)
    return frame


def decode(layout: Layout, steps: np.ndarray, values: np.ndarray) -> _Rows:
    """Rows for steps sharing one layout; ``values`` is ``(len(steps), layout.size)``."""
    if values.shape[1] != layout.size:
        raise ValueError(f"raw step vectors of length {values.shape[1]} do not match their layout ({layout.size})")
    rows = _Rows()
    names = layout.task_names
    offset = 0
    grams: list[np.ndarray] = []
    for ks in layout.grad_tasks:
        n = len(ks)
        grams.append(values[:, offset : offset + n * n].reshape(-1, n, n))
        offset += n * n
    update_norms: list[np.ndarray] = []
    for ks in layout.update_tasks:
        update_norms.append(values[:, offset : offset + len(ks)])
        offset += len(ks)
    losses = values[:, offset : offset + len(names)]

    for i, layer in enumerate(layout.layers):
        kind = "shared" if len(layout.tasks_of(i)) > 1 else "task"
        _layer_rows(
            rows, steps, layer, kind, names, layout.grad_tasks[i], grams[i], layout.update_tasks[i], update_norms[i]
        )
    for k, name in enumerate(names):
        rows.add(steps, losses[:, k], "loss", task=name)
    return rows


def _layer_rows(
    rows: _Rows,
    steps: np.ndarray,
    layer: str,
    kind: str,
    names: Sequence[str],
    grad_tasks: tuple[int, ...],
    gram: np.ndarray,
    update_tasks: tuple[int, ...],
    update_norms: np.ndarray,
) -> None:
    # The Gram matrix's diagonal holds the squared norms; rounding can leave a tiny negative there.
    grad_norms = np.sqrt(np.clip(np.diagonal(gram, axis1=1, axis2=2), 0.0, None))
    for row, k in enumerate(grad_tasks):
        rows.add(steps, grad_norms[:, row], "grad_norm", layer, kind, names[k])
    shares = task_shares(update_norms)
    for row, k in enumerate(update_tasks):
        rows.add(steps, update_norms[:, row], "update_norm", layer, kind, names[k])
        rows.add(steps, shares[:, row], "update_share", layer, kind, names[k])
    if len(update_tasks) > 1:
        rows.add(steps, imbalance_index(shares), "imbalance", layer, kind)
    with np.errstate(divide="ignore", invalid="ignore"):
        for a in range(len(grad_tasks)):
            for b in range(a + 1, len(grad_tasks)):
                cosine = gram[:, a, b] / (grad_norms[:, a] * grad_norms[:, b])
                rows.add(steps, cosine, "cosine", layer, kind, names[grad_tasks[a]], names[grad_tasks[b]])


def by_module(frame: pd.DataFrame) -> pd.DataFrame:
    """Aggregate a parameter-level table to modules (a layer's weight and bias become one layer).

    The norms of a module are those of its parameters concatenated: ``sqrt(sum of squares)``; its
    cosines come from the summed inner products ``cos * |g_a| * |g_b|``; shares and the imbalance
    index are recomputed from the module's update norms.  Losses pass through.  Works on a table
    loaded from disk (no raw data needed), with or without a ``run`` column.

    >>> rows = [
    ...     (0, "trunk.weight", "shared", "a", None, "grad_norm", 3.0),
    ...     (0, "trunk.bias", "shared", "a", None, "grad_norm", 4.0),
    ... ]
    >>> frame = pd.DataFrame(rows, columns=["step", "layer", "kind", "task", "other_task", "metric", "value"])
    >>> frame["module"] = frame["layer"].map(module_of)
    >>> by_module(frame)[["layer", "task", "metric", "value"]].to_dict("records")
    [{'layer': 'trunk', 'task': 'a', 'metric': 'grad_norm', 'value': 5.0}]
    """
    frame = pd.DataFrame(frame).copy()
    for name in ("layer", "module", "kind", "task", "other_task", "metric", "run"):
        if name in frame.columns:
            frame[name] = frame[name].astype(object).where(frame[name].notna(), None)
    keys = (["run"] if "run" in frame.columns else []) + ["step", "module"]
    parts: list[pd.DataFrame] = []

    def squared_sum(metric: str) -> pd.DataFrame:
        rows = frame[frame["metric"] == metric]
        summed = rows.assign(value=rows["value"] ** 2).groupby([*keys, "task"], sort=False)["value"].sum()
        return np.sqrt(summed).reset_index()

    grad_norms = squared_sum("grad_norm")
    update_norms = squared_sum("update_norm")
    parts += [grad_norms.assign(metric="grad_norm"), update_norms.assign(metric="update_norm")]

    if len(update_norms):
        # The tasks as columns (one row per step and module), so that shares and imbalance come from the same
        # functions as the parameter-level table's; a task that does not reach a module takes no share.
        by_task = update_norms.set_index([*keys, "task"])
        norms = by_task["value"].unstack("task")
        reaches = by_task.assign(reaches=True)["reaches"].unstack("task", fill_value=False).to_numpy(dtype=bool)
        shares = task_shares(norms.to_numpy(), reaches)
        rows = norms.index.get_indexer(pd.MultiIndex.from_frame(update_norms[keys]))
        columns = norms.columns.get_indexer(update_norms["task"])
        parts.append(update_norms.assign(value=shares[rows, columns], metric="update_share"))
        shared = reaches.sum(axis=1) > 1
        imbalance = imbalance_index(shares, reaches=reaches)[shared]
        parts.append(norms.index.to_frame(index=False)[shared].assign(value=imbalance, metric="imbalance"))

    cosines = frame[frame["metric"] == "cosine"]
    if len(cosines):
        norms = frame[frame["metric"] == "grad_norm"].set_index([*keys[:-1], "layer", "task"])["value"]
        where = [*keys[:-1], "layer"]
        norm_a = norms.reindex(pd.MultiIndex.from_frame(cosines[[*where, "task"]])).to_numpy()
        norm_b = norms.reindex(
            pd.MultiIndex.from_frame(cosines[[*where, "other_task"]].set_axis([*where, "task"], axis=1))
        ).to_numpy()
        inner = np.nan_to_num(cosines["value"].to_numpy() * norm_a * norm_b)
        summed = (
            cosines.assign(value=inner).groupby([*keys, "task", "other_task"], sort=False)["value"].sum().reset_index()
        )
        module_norms = grad_norms.set_index([*keys, "task"])["value"]
        a = module_norms.reindex(pd.MultiIndex.from_frame(summed[[*keys, "task"]])).to_numpy()
        b = module_norms.reindex(
            pd.MultiIndex.from_frame(summed[[*keys, "other_task"]].set_axis([*keys, "task"], axis=1))
        ).to_numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            parts.append(summed.assign(value=summed["value"].to_numpy() / (a * b), metric="cosine"))

    losses = frame[frame["metric"] == "loss"]
    out = pd.concat([p for p in parts if len(p)] + [losses.drop(columns=["layer"])], ignore_index=True)
    out["layer"] = out["module"]
    # A module is shared when more than one task reaches (or updates) any of its parameters.
    reached = pd.concat([grad_norms, update_norms]).groupby(keys, sort=False)["task"].nunique()
    kinds = reached.map(lambda n: "shared" if n > 1 else "task").rename("kind")
    out = out.drop(columns=["kind"], errors="ignore").join(kinds, on=keys)
    out.loc[out["metric"] == "loss", "kind"] = None
    out.loc[out["metric"] == "loss", ["layer", "module"]] = None
    if "other_task" not in out.columns:
        out["other_task"] = None
    columns = (["run"] if "run" in out.columns else []) + list(COLUMNS)
    # The parameter-level order: by step, then module (the model's order), then metric; losses last.
    metric_order = {m: j for j, m in enumerate(METRICS)}
    module_order = {m: j for j, m in enumerate(pd.unique(frame["module"].dropna()))}
    out = out.assign(
        _module=out["module"].map(module_order).fillna(len(module_order)),
        _metric=out["metric"].map(metric_order),
    ).sort_values([*keys[:-1], "_module", "_metric"], kind="stable")
    return normalise_dtypes(out[columns].reset_index(drop=True))
