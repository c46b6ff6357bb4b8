"""Problems to balance tasks on: a toy landscape, an imbalanced regression and MultiMNIST.

- :func:`landscape_losses` — the two-task landscape of CAGrad, Nash-MTL and FAMO, with its Pareto set.
- :class:`ImbalancedRegression` and :func:`regression_model` — GradNorm's regressions of unequal scale.
- :func:`load_multimnist` and :func:`multimnist_model` — overlaid real MNIST digits, with tasks of
  different nature (classification, regression, dense reconstruction).

Every model is a :class:`MultiTaskNet`: a shared ``trunk`` and one head per task.
"""

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
from ._interface import Problem, Split, load_problem
from ._model import MultiTaskNet, seeded_init
from ._multimnist import (
    DEFAULT_MULTIMNIST_PATH,
    MULTIMNIST_SHA256,
    MULTIMNIST_TASKS,
    DataIntegrityError,
    MultiMNIST,
    MultiMNISTTask,
    TaskMetric,
    build_multimnist,
    evaluate_multimnist,
    load_multimnist,
    multimnist_model,
    overlay_digits,
    place_left_digit,
    task_losses,
    task_metrics,
)
from ._regression import ImbalancedRegression, geometric_sigmas, regression_model

__all__ = [
    "DEFAULT_MULTIMNIST_PATH",
    "DataIntegrityError",
    "ImbalancedRegression",
    "LANDSCAPE_EPS",
    "LANDSCAPE_STARTS",
    "MULTIMNIST_SHA256",
    "MULTIMNIST_TASKS",
    "MultiMNIST",
    "MultiMNISTTask",
    "MultiTaskNet",
    "PARETO_X1_RANGE",
    "PARETO_X2",
    "Problem",
    "Split",
    "TaskMetric",
    "build_multimnist",
    "evaluate_multimnist",
    "geometric_sigmas",
    "landscape_grid",
    "landscape_losses",
    "load_problem",
    "load_multimnist",
    "multimnist_model",
    "overlay_digits",
    "pareto_distance",
    "pareto_front",
    "place_left_digit",
    "reaches_pareto_set",
    "regression_model",
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

from ._dense_metrics import DepthScores, NormalScores, SegmentationScores, depth_loss, normal_loss, segmentation_loss
from ._nyuv2 import NYUV2_LAYOUT, NYUV2_TASKS, NYUv2, SegNetTrunk, nyuv2, nyuv2_model

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

from ._celeba import CELEBA_ATTRIBUTES, CELEBA_LAYOUT, CelebA, ResNet18Trunk, celeba, celeba_model

__all__ += ["CELEBA_ATTRIBUTES", "CELEBA_LAYOUT", "CelebA", "ResNet18Trunk", "celeba", "celeba_model"]
