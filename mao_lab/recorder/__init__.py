"""Instruments: who trains what — per-task, per-layer gradient and update magnitudes.

Attach a :class:`Recorder` to a model and a method (any :class:`mao_lab.methods.Method`, or the
:class:`mao_lab.MAO` optimizer) with one line; it records every ``every``-th step from the per-task
gradients and updates the method computed anyway — it never runs a backward pass of its own::

    recorder = Recorder(model, method, every=1, run_dir="runs/mao", params={"method": "mao"}, flush_every=100)
    ...                                   # the unchanged training loop
    recorder.close()                      # detach and save runs/mao/metrics.parquet + params.json
    frame, params = load_run("runs/mao")

**Layers.** A layer is a named parameter tensor (``model.named_parameters()``); ``level="module"`` (or
:func:`by_module`) merges a module's parameters.  A layer reached by more than one task's loss is
``shared``; one reached by a single task is ``task``-specific and owned by that task
(:meth:`Recorder.layers`).

**A task's contribution to the update.**  A method's step record holds ``task_updates``
(:class:`mao_lab.TaskUpdates`): per task and parameter, the task's part ``c_k`` of the step, with
``p <- p - sum_k c_k`` (plus weight decay, which belongs to no task).  What ``c_k`` is for each method
is defined once, in :mod:`mao_lab.methods._contributions`.  Where a method's rule gives no split
(GradDrop) ``task_updates`` is ``None``: **the split is not available**, and the
tables have no ``update_norm``, ``update_share`` or ``imbalance`` rows for that run (absent, never
zero); its ``grad_norm``, ``cosine`` and ``loss`` rows are recorded as for any method.

**Metrics** (the ``metric`` column):

================ ============================================================================
``grad_norm``    L2 norm of task ``k``'s gradient of the layer, ``|g_k|``
``update_norm``  L2 norm of task ``k``'s contribution to the update, ``|c_k|`` (see above)
``update_share`` ``|c_k| / sum_j |c_j|`` over the tasks that contribute to the layer; sums to 1
                 per layer and step (NaN if no task moved the layer)
``imbalance``    one per layer reached by >= 2 tasks: ``1 - H(s) / log(n)``, ``H`` the Shannon
                 entropy of the ``n`` shares ``s``; 0 = perfectly balanced, 1 = one task owns it
                 (:func:`imbalance_index`)
``cosine``       cosine between the gradients of ``task`` and ``other_task`` on the layer
``loss``         task ``k``'s loss at the step (no layer)
================ ============================================================================

**Columns** of the tidy table (one row per step x layer x task or task pair x metric):

============== ===================================================================================
``run``        only in combined tables (:func:`load_runs`): the run (method) the row belongs to
``step``       the step's index (int): the method's own count (``Method.steps_taken``, from 0), or
               for the ``MAO`` optimizer, which keeps none, counted from when the recorder attached
``layer``      parameter name (``trunk.0.weight``), or module name at module level; empty for loss
``module``     the module owning the parameter (``trunk.0``)
``kind``       ``shared`` or ``task``
``task``       the task (the first of the pair for ``cosine``; empty for ``imbalance``)
``other_task`` the second task of a ``cosine`` pair, else empty
``metric``     one of :data:`METRICS`
``value``      the number (float)
============== ===================================================================================

Figures (plotly): :func:`share_heatmap`, :func:`share_areas`, :func:`layer_bars`,
:func:`grad_norm_ratios`, :func:`metric_lines`; the interactive :class:`BalanceExplorer` (ipywidgets) and the
live :class:`BalanceMonitor` (shares of every shared layer while a model trains).
"""

import importlib
from typing import Any

from ._frame import COLUMNS, METRICS, by_module, imbalance_index, module_of
from ._recorder import Observable, Recorder, RecorderError, record
from ._storage import combine_runs, load_run, load_runs, save_run

# The display layer (plotly figures, ipywidgets) loads only when one of its names is first used, so that a
# training job that records runs needs neither Jupyter nor plotly (tests/test_layers.py keeps it so).
_DISPLAY = {
    "BalanceExplorer": "._explorer",
    "ExplorerApp": "._explorer",
    "find_runs": "._explorer",
    "RunChecklist": "._explorer",
    "run_label": "._explorer",
    "BalanceMonitor": "._monitor",
    "grad_norm_ratios": "._figures",
    "layer_bars": "._figures",
    "metric_lines": "._figures",
    "share_areas": "._figures",
    "share_heatmap": "._figures",
}


def __getattr__(name: str) -> Any:
    if name in _DISPLAY:
        value = getattr(importlib.import_module(_DISPLAY[name], __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "COLUMNS",
    "METRICS",
    "BalanceExplorer",
    "BalanceMonitor",
    "ExplorerApp",
    "Observable",
    "Recorder",
    "RunChecklist",
    "RecorderError",
    "by_module",
    "combine_runs",
    "find_runs",
    "grad_norm_ratios",
    "imbalance_index",
    "layer_bars",
    "load_run",
    "load_runs",
    "metric_lines",
    "run_label",
    "module_of",
    "record",
    "save_run",
    "share_areas",
    "share_heatmap",
]
