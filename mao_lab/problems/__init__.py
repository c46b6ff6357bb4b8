"""Problems to balance tasks on: a toy landscape, an imbalanced regression and MultiMNIST.

- :func:`landscape_losses` — the two-task landscape of CAGrad, Nash-MTL and FAMO, with its Pareto set.
- :class:`ImbalancedRegression` and :func:`regression_model` — GradNorm's regressions of unequal scale.
- :func:`load_multimnist` and :func:`multimnist_model` — overlaid real MNIST digits, with tasks of
  different nature (classification, regression, dense reconstruction).

Every model is a :class:`MultiTaskNet`: a shared ``trunk`` and one head per task.

The lab reads any problem, yours included, through one interface, :class:`Problem` (``docs/your-problem.md``),
found by an import path (:func:`load_problem`).  The shipped ones: :func:`multimnist_problem`
(``"mao_lab.problems:multimnist_problem"``) and :func:`regression_problem`
(``"mao_lab.problems:regression_problem"``).
"""

from ._celeba import CELEBA_ATTRIBUTES, CELEBA_LAYOUT, CelebA, ResNet18Trunk, celeba, celeba_model
from ._dense_metrics import DepthScores, NormalScores, SegmentationScores, depth_loss, normal_loss, segmentation_loss
from ._interface import (
    SPLITS,
    Problem,
    Split,
    default_device,
    index_batches,
    load_problem,
    metric_rows,
    model_device,
    seeded_loader,
    verify_problem,
)
from ._landscape import (
    LANDSCAPE_EPS,
    LANDSCAPE_STARTS,
    PARETO_X1_RANGE,
    PARETO_X2,
    landscape_grid,
    landscape_losses,
    pareto_distance,
    pareto_front,
    reaches_pareto_set,
)
from ._model import MultiTaskNet, seeded_init
from ._multimnist import (
    DEFAULT_MULTIMNIST_PATH,
    MULTIMNIST_SHA256,
    MULTIMNIST_TASKS,
    DataIntegrityError,
    MultiMNIST,
    MultiMNISTProblem,
    MultiMNISTTask,
    TaskMetric,
    build_multimnist,
    evaluate_multimnist,
    load_multimnist,
    multimnist_model,
    multimnist_problem,
    overlay_digits,
    place_left_digit,
    task_losses,
    task_metrics,
)
from ._nyuv2 import NYUV2_LAYOUT, NYUV2_TASKS, NYUv2, SegNetTrunk, nyuv2, nyuv2_model
from ._regression import (
    REGRESSION_METRICS,
    ImbalancedRegression,
    RegressionProblem,
    geometric_sigmas,
    regression_model,
    regression_problem,
)

__all__ = [
    "DEFAULT_MULTIMNIST_PATH",
    "LANDSCAPE_EPS",
    "LANDSCAPE_STARTS",
    "MULTIMNIST_SHA256",
    "MULTIMNIST_TASKS",
    "PARETO_X1_RANGE",
    "PARETO_X2",
    "REGRESSION_METRICS",
    "SPLITS",
    "DataIntegrityError",
    "ImbalancedRegression",
    "MultiMNIST",
    "MultiMNISTProblem",
    "MultiMNISTTask",
    "MultiTaskNet",
    "Problem",
    "RegressionProblem",
    "Split",
    "TaskMetric",
    "build_multimnist",
    "default_device",
    "evaluate_multimnist",
    "geometric_sigmas",
    "index_batches",
    "landscape_grid",
    "landscape_losses",
    "load_multimnist",
    "load_problem",
    "metric_rows",
    "model_device",
    "multimnist_model",
    "multimnist_problem",
    "overlay_digits",
    "pareto_distance",
    "pareto_front",
    "place_left_digit",
    "reaches_pareto_set",
    "regression_model",
    "regression_problem",
    "seeded_loader",
    "verify_problem",
    "seeded_init",
    "task_losses",
    "task_metrics",
]

# The papers' benchmarks, read from the user's own copy of each dataset (docs/datasets.md).
from ._dataset_tools import DatasetLayoutError
from ._mnist_idx import MNIST_IDX_LAYOUT, MnistIdxMultiMNIST, mnist_idx_multimnist, read_idx, read_mnist_idx

__all__ += [
    "MNIST_IDX_LAYOUT",
    "DatasetLayoutError",
    "MnistIdxMultiMNIST",
    "mnist_idx_multimnist",
    "read_idx",
    "read_mnist_idx",
]


__all__ += [
    "NYUV2_LAYOUT",
    "NYUV2_TASKS",
    "DepthScores",
    "NYUv2",
    "NormalScores",
    "SegNetTrunk",
    "SegmentationScores",
    "depth_loss",
    "normal_loss",
    "nyuv2",
    "nyuv2_model",
    "segmentation_loss",
]


__all__ += ["CELEBA_ATTRIBUTES", "CELEBA_LAYOUT", "CelebA", "ResNet18Trunk", "celeba", "celeba_model"]
