"""The claims ledger: the two papers' claims tested on real data, with intervals over seeds and verdicts.

* :mod:`._stats`: t-intervals over seeds (paired where runs share a seed) and the verdict rules.
* :mod:`._design`: the study's settings, methods, learning-rate grid, seeds and budget.
* :mod:`._runs`: one point of the study (a configuration at some learning rates and seeds) into tidy tables.
* :mod:`._analysis`: learning-rate choices, Δm% per run, the claims and their parts (the ledger).
* :mod:`._study`: the phases on the sweep machinery; :mod:`._ledger`: the ledger's text files;
  :mod:`._figures`: the figures behind each verdict and a widget.
"""

from ._design import (
    MM4_TASKS,
    SINGLE_TASK_PREFIX,
    STUDY_FILE_KEYS,
    RunConfig,
    StudyDesign,
    full_design,
    problem_design,
    read_study_file,
    smoke_design,
)
from ._analysis import BALANCE_THRESHOLD, CLAIMS, choose_learning_rates, claims_ledger, delta_m_runs, method_intervals, worst_balance
from ._figures import (
    ClaimsExplorer,
    balance_figure,
    claim_figure,
    compute_figure,
    delta_m_figure,
    final_table,
    learning_rate_figure,
    spread_figure,
    validation_curve,
    validation_curve_figure,
)
from . import _figures
from ._ledger import (
    BUDGET_FRACTIONS,
    LEVELLING_FRACTION,
    LEVELLING_STATUSES,
    ledger_markdown,
    levelling_by_budget,
    levelling_off,
    load_ledger,
    validation_curves,
    validation_levels,
    write_ledger,
)
from ._runs import RunTables, problem_of, run_config, run_point
from ._study import POINT_NOTEBOOK, StudyError, gpu_resources, load_study, provenance, run_study, summarise
from ._stats import (
    DIRECTIONS,
    VERDICTS,
    Direction,
    Interval,
    Verdict,
    combine_verdicts,
    mean_interval,
    paired_interval,
    verdict,
)

__all__ = [
    *_figures.__all__,  # the figures and the explorer, listed once where they are defined
    "BALANCE_THRESHOLD",
    "CLAIMS",
    "POINT_NOTEBOOK",
    "StudyError",
    "choose_learning_rates",
    "claims_ledger",
    "delta_m_runs",
    "ledger_markdown",
    "load_ledger",
    "load_study",
    "method_intervals",
    "provenance",
    "run_study",
    "summarise",
    "worst_balance",
    "validation_curves",
    "validation_levels",
    "levelling_off",
    "levelling_by_budget",
    "BUDGET_FRACTIONS",
    "LEVELLING_FRACTION",
    "LEVELLING_STATUSES",
    "write_ledger",
    "DIRECTIONS",
    "MM4_TASKS",
    "SINGLE_TASK_PREFIX",
    "VERDICTS",
    "Direction",
    "Interval",
    "RunConfig",
    "RunTables",
    "StudyDesign",
    "Verdict",
    "combine_verdicts",
    "full_design",
    "mean_interval",
    "paired_interval",
    "run_config",
    "run_point",
    "smoke_design",
    "verdict",
    "STUDY_FILE_KEYS",
    "gpu_resources",
    "problem_design",
    "problem_of",
    "read_study_file",
]
