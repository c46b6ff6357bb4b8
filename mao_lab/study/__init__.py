"""The claims ledger: the two papers' claims tested on real data, with intervals over seeds and verdicts.

* :mod:`._stats`: t-intervals over seeds (paired where runs share a seed) and the verdict rules.
* :mod:`._design`: the study's settings, methods, learning-rate grid, seeds and budget.
* :mod:`._runs`: one point of the study (a configuration at some learning rates and seeds) into tidy tables.
* :mod:`._analysis`: learning-rate choices, Δm% per run, the claims and their parts (the ledger).
* :mod:`._study`: the phases on the sweep machinery; :mod:`._ledger`: the ledger's text files;
  :mod:`._figures`: the figures behind each verdict and a widget.
"""

# The public names are the submodules' ``__all__`` lists, each name written once there; helpers that submodules
# share stay off those lists (``_analysis.final_table`` among them: the public ``final_table`` is ``_figures``').
from . import _analysis, _design, _figures, _ledger, _runs, _stats, _study
from ._analysis import *  # noqa: F403
from ._design import *  # noqa: F403
from ._figures import *  # noqa: F403
from ._ledger import *  # noqa: F403
from ._runs import *  # noqa: F403
from ._stats import *  # noqa: F403
from ._study import *  # noqa: F403

__all__: list[str] = []
__all__ += _analysis.__all__
__all__ += _design.__all__
__all__ += _figures.__all__
__all__ += _ledger.__all__
__all__ += _runs.__all__
__all__ += _stats.__all__
__all__ += _study.__all__
