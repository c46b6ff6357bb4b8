"""mao_lab — a lab for task balancing in multi-task learning, built around MAO.

The public API is re-exported here; the modules with a leading underscore are private.
"""

from ._checkpoints import CheckpointError
from ._mao import MAO
from ._mao_functional import mao
from ._memory import state_bytes
from ._observe import ObservableMixin, StepObserver, StepRecord
from ._task_gradients import (
    TaskGradients,
    TaskInputError,
    TaskLosses,
    TaskUpdates,
    as_task_losses,
    compute_task_gradients,
)

__all__ = [
    "CheckpointError",
    "MAO",
    "ObservableMixin",
    "StepObserver",
    "StepRecord",
    "TaskGradients",
    "TaskInputError",
    "TaskLosses",
    "TaskUpdates",
    "as_task_losses",
    "compute_task_gradients",
    "state_bytes",
    "mao",
]

__version__ = "0.1.0"
