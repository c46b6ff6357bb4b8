"""The experiments the notebooks run, as library functions, so that their claims can be tested.

By job:

- :mod:`._training` — :func:`train`, the one training loop every experiment uses (any method, a seed that
  fixes the initial network and the batch order, optional recorder and periodic evaluation);
- :mod:`._problem` — any :class:`~mao_lab.problems.Problem` (MultiMNIST is
  :func:`~mao_lab.problems.multimnist_problem`): :func:`train_on_problem` trains one method,
  :func:`compare_on_problem` every method and the single-task baselines;
- the toy problems' own experiments: :mod:`._landscape` (the two-task toy), :mod:`._regression` (GradNorm's
  imbalanced regression);
- :mod:`._analysis` — the shared analyses: layer ownership, imbalance over steps and layers, Delta_m and
  result tables; :mod:`._summaries` — the notebooks' ``summary.json`` (their prose is in the notebooks);
- :mod:`._figures` and :mod:`._landscape_figures` — plotly figures; :mod:`._widgets` — ipywidgets;
- :mod:`._labels` — the methods' readable names and run names; :mod:`._runs` — finding saved runs.
"""

from ._analysis import (
    balance_summary,
    delta_m,
    delta_m_table,
    imbalance_by_method,
    imbalance_over_steps,
    largest_shares,
    layer_ownership,
    method_ownership,
    module_level,
    multimnist_results,
    results_wide,
    shared_layers,
)
from ._figures import (
    delta_m_figure,
    imbalance_by_layer_figure,
    imbalance_by_method_figure,
    imbalance_over_steps_figure,
    magnitude_figure,
    ownership_figure,
    task_metric_figure,
)
from ._labels import METHOD_LABELS, SINGLE_TASK, method_label, parse_run_name, run_name
from ._landscape import (
    ELEMENTWISE_METHODS,
    PAPERS_SETTING,
    PAPERS_VARIANTS,
    arc_distance,
    conflict_band,
    landscape_gradients,
    landscape_trajectories,
    loss_distance,
    papers_comparison,
    pareto_stationary_arc,
    pareto_table,
    reach_matrix,
    reached_counts,
    rescaling_gap,
)
from ._landscape_figures import (
    distance_figure,
    loss_space_figure,
    parameter_space_figure,
    rescaling_figure,
)
from ._problem import compare_on_problem, train_on_problem
from ._regression import compare_methods, final_losses, train_with_recorder
from ._run_origins import origin_names
from ._runs import find_run_dirs, is_run_dir, load_balance_runs
from ._summaries import (
    explorer_summary,
    findings_paragraph,
    landscape_summary,
    multimnist_summary,
    ranked,
    regression_summary,
)
from ._training import (
    AUTOCAST_DTYPES,
    TrainingRun,
    index_batches,
    resolve_autocast,
    resolve_device,
    tensor_batches,
    train,
)
from ._widgets import (
    HeatmapExplorer,
    LandscapePlayground,
    MultiMNISTExplorer,
    RegressionPlayground,
    show_figure,
)

__all__ = [
    "AUTOCAST_DTYPES",
    "ELEMENTWISE_METHODS",
    "METHOD_LABELS",
    "PAPERS_SETTING",
    "PAPERS_VARIANTS",
    "SINGLE_TASK",
    "HeatmapExplorer",
    "LandscapePlayground",
    "MultiMNISTExplorer",
    "RegressionPlayground",
    "TrainingRun",
    "arc_distance",
    "balance_summary",
    "compare_methods",
    "compare_on_problem",
    "conflict_band",
    "delta_m",
    "delta_m_figure",
    "delta_m_table",
    "distance_figure",
    "explorer_summary",
    "final_losses",
    "find_run_dirs",
    "findings_paragraph",
    "imbalance_by_layer_figure",
    "imbalance_by_method",
    "imbalance_by_method_figure",
    "imbalance_over_steps",
    "imbalance_over_steps_figure",
    "index_batches",
    "is_run_dir",
    "landscape_gradients",
    "landscape_summary",
    "landscape_trajectories",
    "largest_shares",
    "layer_ownership",
    "load_balance_runs",
    "loss_distance",
    "loss_space_figure",
    "magnitude_figure",
    "method_label",
    "method_ownership",
    "module_level",
    "multimnist_results",
    "multimnist_summary",
    "ranked",
    "origin_names",
    "ownership_figure",
    "papers_comparison",
    "parameter_space_figure",
    "pareto_stationary_arc",
    "pareto_table",
    "parse_run_name",
    "reach_matrix",
    "reached_counts",
    "regression_summary",
    "rescaling_figure",
    "rescaling_gap",
    "resolve_autocast",
    "resolve_device",
    "results_wide",
    "run_name",
    "shared_layers",
    "show_figure",
    "task_metric_figure",
    "tensor_batches",
    "train",
    "train_on_problem",
    "train_with_recorder",
]
