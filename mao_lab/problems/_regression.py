r"""GradNorm's imbalanced multi-task regression (Chen et al., ICML 2018).

Task ``i`` regresses ``y_i = sigma_i * tanh(s * (B + E_i) x)`` from ``x ~ N(0, I)`` in ``R^250``, with
``B`` (shared by all tasks) of i.i.d. ``N(0, 10^2)`` entries and ``E_i`` (task ``i``'s own) of
i.i.d. ``N(0, 3.5^2)`` entries.  The tasks are closely related — the shared ``B`` dominates — but the
scales ``sigma_i`` differ by orders of magnitude, so on the summed MSE the large-``sigma`` task
swamps the others.  That imbalance is what a task-balancing method must undo.

About ``s``: taken literally, each entry of ``(B + E_i) x`` has standard deviation
``sqrt(250 * (10^2 + 3.5^2)) ~ 168``, so ``tanh`` would be saturated and the targets would be little
more than signs.  By default ``s = 1 / sqrt(in_dim * (shared_std^2 + task_std^2))``, which gives
every pre-activation unit variance: ``tanh`` then works in its curved range, and the tasks stay
related (correlation of pre-activations ``10^2 / (10^2 + 3.5^2) ~ 0.89``).  Pass
``preactivation_scale=1.0`` for the literal, saturated form.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .._validate import Int, require
from ._interface import Problem, TaskMetric, index_batches, model_device, stored_split
from ._model import MultiTaskNet, seeded_init

__all__ = ["ImbalancedRegression", "RegressionProblem", "geometric_sigmas", "regression_model", "regression_problem"]

Split = Literal["train", "test"]


def geometric_sigmas(num_tasks: int, sigma_range: tuple[float, float] = (1.0, 100.0)) -> Tensor:
    """``num_tasks`` scales spread geometrically (evenly on a log scale) over ``sigma_range``.

    >>> geometric_sigmas(3)
    tensor([  1.,  10., 100.])
    """
    require("num_tasks", num_tasks, Int(min=1))
    if (
        len(sigma_range) != 2
        or not all(math.isfinite(s) and s > 0 for s in sigma_range)
        or sigma_range[0] > sigma_range[1]
    ):
        raise ValueError(f"sigma_range must be (low, high) with 0 < low <= high, got {sigma_range!r}")
    low, high = (float(s) for s in sigma_range)
    if num_tasks == 1:
        return torch.tensor([low])
    return torch.logspace(math.log10(low), math.log10(high), num_tasks, dtype=torch.float64).float()


class ImbalancedRegression:
    """Deterministic data of GradNorm's toy problem: ``num_tasks`` related regressions of unequal scale.

    Everything (the matrices ``B`` and ``E_i`` and every sample) is drawn from one
    ``torch.Generator`` seeded with ``seed``, so equal arguments give equal data on any machine.
    The first ``num_samples - num_test`` samples are the training split, the rest the test split.

    Args:
        num_tasks: number of tasks ``T``.
        sigmas: the ``T`` task scales; by default :func:`geometric_sigmas` over ``sigma_range``.
        sigma_range: ``(low, high)`` used when ``sigmas`` is not given (``[1, 100]`` for two tasks).
        in_dim: input dimension (250 in GradNorm).
        out_dim: output dimension of every task (100 in GradNorm).
        num_samples: total number of samples, train and test together.
        test_fraction: share of the samples held out as the test split.
        shared_std: standard deviation of the entries of the shared matrix ``B``.
        task_std: standard deviation of the entries of each task's ``E_i``.
        preactivation_scale: ``s`` in ``tanh(s (B + E_i) x)``; ``None`` picks unit pre-activation
            variance (see the module docstring).
        seed: seed of the data generator.

    Attributes:
        sigmas: float tensor of shape ``(T,)``.
        inputs: float tensor of shape ``(num_samples, in_dim)``.
        targets: float tensor of shape ``(T, num_samples, out_dim)``.

    >>> data = ImbalancedRegression(num_samples=100, test_fraction=0.2)
    >>> data.sigmas
    tensor([  1., 100.])
    >>> x, ys = data.split("train")
    >>> tuple(x.shape), [tuple(y.shape) for y in ys]
    ((80, 250), [(80, 100), (80, 100)])
    >>> x, ys = next(data.batches(32, split="test"))
    >>> tuple(x.shape), len(ys)
    ((20, 250), 2)
    """

    def __init__(
        self,
        num_tasks: int = 2,
        sigmas: Sequence[float] | Tensor | None = None,
        sigma_range: tuple[float, float] = (1.0, 100.0),
        in_dim: int = 250,
        out_dim: int = 100,
        num_samples: int = 10_000,
        test_fraction: float = 0.2,
        shared_std: float = 10.0,
        task_std: float = 3.5,
        preactivation_scale: float | None = None,
        seed: int = 0,
    ) -> None:
        for name, value, minimum in (
            ("num_tasks", num_tasks, 1),
            ("in_dim", in_dim, 1),
            ("out_dim", out_dim, 1),
            ("num_samples", num_samples, 2),
        ):
            require(name, value, Int(min=minimum))
        if sigmas is None:
            sigma_tensor = geometric_sigmas(num_tasks, sigma_range)
        else:
            sigma_tensor = torch.as_tensor(sigmas, dtype=torch.float32).flatten().clone()
            if sigma_tensor.numel() != num_tasks:
                raise ValueError(f"sigmas must hold num_tasks={num_tasks} values, got {sigma_tensor.numel()}")
            if not bool(torch.all(torch.isfinite(sigma_tensor) & (sigma_tensor > 0))):
                raise ValueError(f"sigmas must be finite and positive, got {sigma_tensor.tolist()}")
        if not (isinstance(test_fraction, (int, float)) and 0 < test_fraction < 1):
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
        num_test = round(num_samples * test_fraction)
        if not 1 <= num_test <= num_samples - 1:
            raise ValueError(
                f"test_fraction={test_fraction} leaves an empty split of num_samples={num_samples} samples"
            )
        for name, value in (("shared_std", shared_std), ("task_std", task_std)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
        if shared_std == 0 and task_std == 0:
            raise ValueError("shared_std and task_std cannot both be 0: every target would be 0")
        if preactivation_scale is None:
            preactivation_scale = 1.0 / math.sqrt(in_dim * (shared_std**2 + task_std**2))
        elif not (
            isinstance(preactivation_scale, (int, float))
            and math.isfinite(preactivation_scale)
            and preactivation_scale > 0
        ):
            raise ValueError(
                f"preactivation_scale must be a finite positive number or None, got {preactivation_scale!r}"
            )
        require("seed", seed, Int())

        self.num_tasks = num_tasks
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.num_samples = num_samples
        self.num_train = num_samples - num_test
        self.preactivation_scale = float(preactivation_scale)
        self.seed = seed
        self.sigmas = sigma_tensor

        # One generator and a fixed order of draws (B, then each E_i, then x): that order is part of
        # the data's definition, so changing it changes every dataset.
        generator = torch.Generator().manual_seed(seed)
        shared = shared_std * torch.randn(out_dim, in_dim, generator=generator)
        own = task_std * torch.randn(num_tasks, out_dim, in_dim, generator=generator)
        self.inputs = torch.randn(num_samples, in_dim, generator=generator)
        preactivations = torch.einsum("toi,ni->tno", shared + own, self.inputs) * self.preactivation_scale
        self.targets = self.sigmas[:, None, None] * torch.tanh(preactivations)

    def split(self, which: Split = "train") -> tuple[Tensor, list[Tensor]]:
        """``(inputs, [targets of task 0, ..., task T-1])`` of the ``"train"`` or ``"test"`` split."""
        rows = self._rows(which)
        return self.inputs[rows], [task_targets[rows] for task_targets in self.targets]

    def batches(
        self,
        batch_size: int,
        split: Split = "train",
        shuffle: bool = True,
        seed: int | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[Tensor, list[Tensor]]]:
        """One pass over a split in mini-batches of ``(inputs, [targets per task])``.

        Args:
            batch_size: samples per batch.
            split: ``"train"`` or ``"test"``.
            shuffle: visit the samples in a random order.
            seed: seed of that order; ``None`` draws it from the global generator, so successive
                epochs differ while staying reproducible under ``torch.manual_seed``.
            drop_last: skip a last, smaller batch.
        """
        require("batch_size", batch_size, Int(min=1))
        inputs, targets = self.split(split)
        count = inputs.shape[0]
        if shuffle:
            generator = torch.Generator().manual_seed(seed) if seed is not None else None
            order = torch.randperm(count, generator=generator)
        else:
            order = torch.arange(count)
        stop = count - count % batch_size if drop_last else count
        for start in range(0, stop, batch_size):
            rows = order[start : start + batch_size]
            yield inputs[rows], [task_targets[rows] for task_targets in targets]

    def task_losses(
        self, outputs: Sequence[Tensor], targets: Sequence[Tensor], normalize: bool = False
    ) -> list[Tensor]:
        """Per-task mean squared errors; ``normalize=True`` divides task ``i``'s by ``sigma_i^2``.

        The raw losses are what a method is trained on (and what makes the problem imbalanced); the
        normalised ones put every task on the same footing, for evaluation.
        """
        if len(outputs) != self.num_tasks or len(targets) != self.num_tasks:
            raise ValueError(
                f"outputs and targets must hold num_tasks={self.num_tasks} tensors, "
                f"got {len(outputs)} and {len(targets)}"
            )
        losses = [F.mse_loss(output, target) for output, target in zip(outputs, targets)]
        if normalize:
            losses = [loss / sigma**2 for loss, sigma in zip(losses, self.sigmas.tolist())]
        return losses

    def _rows(self, which: str) -> slice:
        if which == "train":
            return slice(0, self.num_train)
        if which == "test":
            return slice(self.num_train, self.num_samples)
        raise ValueError(f"split must be 'train' or 'test', got {which!r}")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_tasks={self.num_tasks}, sigmas={self.sigmas.tolist()}, "
            f"in_dim={self.in_dim}, out_dim={self.out_dim}, num_samples={self.num_samples}, "
            f"num_train={self.num_train}, seed={self.seed})"
        )


def regression_model(
    num_tasks: int,
    in_dim: int = 250,
    hidden: int = 100,
    out_dim: int = 100,
    depth: int = 4,
    seed: int | None = None,
) -> MultiTaskNet:
    """GradNorm's network: ``depth`` shared ReLU layers of width ``hidden``, one linear head per task.

    Args:
        num_tasks: number of heads.
        in_dim: input dimension.
        hidden: width of the shared layers.
        out_dim: output dimension of each head.
        depth: number of shared ``Linear + ReLU`` layers.
        seed: seeds the initialisation without touching the global generator; ``None`` uses it.

    >>> net = regression_model(3, seed=0)
    >>> [tuple(y.shape) for y in net(torch.zeros(8, 250))]
    [(8, 100), (8, 100), (8, 100)]
    """
    sizes = {"num_tasks": num_tasks, "in_dim": in_dim, "hidden": hidden, "out_dim": out_dim, "depth": depth}
    for name, value in sizes.items():
        require(name, value, Int(min=1))
    with seeded_init(seed):
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        heads = [nn.Linear(hidden, out_dim) for _ in range(num_tasks)]
        return MultiTaskNet(nn.Sequential(*layers), heads)


REGRESSION_METRICS: Mapping[str, str] = {
    "normalised_mse": "the test MSE divided by sigma^2 (every task on one footing)",
    "mse": "the raw MSE (the scale the training loss sees)",
}


class RegressionProblem(Problem):
    """GradNorm's regression as a :class:`~mao_lab.problems.Problem`: the tasks ``task0, task1, ...``, the raw MSE
    as each task's training loss (which makes the problem imbalanced), and per task the ``metrics`` named.

    The training split of ``data`` is cut in two: its last ``num_val`` samples are the validation split.  A
    batch is ``(inputs, [target per task])``.

    Args:
        data: the regression's samples.
        num_val: training samples held out for validation (0: no validation split).
        batch_size: the training batch size when :meth:`batches` is not given one.
        metrics: names from :data:`REGRESSION_METRICS`, in the order :meth:`evaluate` gives them per task.

    >>> problem = RegressionProblem(ImbalancedRegression(2, num_samples=100, in_dim=8, out_dim=4), num_val=20)
    >>> sizes = [len(next(iter(problem.batches(s, batch_size=100)))[0]) for s in ("train", "validation", "test")]
    >>> problem.task_names, sizes
    (('task0', 'task1'), [60, 20, 20])
    """

    name = "regression"

    def __init__(
        self,
        data: ImbalancedRegression,
        *,
        num_val: int = 0,
        batch_size: int = 64,
        metrics: Sequence[str] = ("normalised_mse",),
    ) -> None:
        require("num_val", num_val, Int(min=0, max=data.num_train - 1))
        require("batch_size", batch_size, Int(min=1))
        unknown = [m for m in metrics if m not in REGRESSION_METRICS]
        if isinstance(metrics, str) or not metrics or unknown:
            raise ValueError(f"metrics must name some of {list(REGRESSION_METRICS)}, got {metrics!r}")
        self.data = data
        self.task_names = tuple(f"task{k}" for k in range(data.num_tasks))
        self.batch_size = batch_size
        self.metrics = tuple(metrics)
        x, ys = data.split("train")
        cut = len(x) - num_val
        self.train_size = cut
        self._splits: dict[str, tuple[Tensor, list[Tensor]] | None] = {
            "train": (x[:cut], [y[:cut] for y in ys]),
            "validation": (x[cut:], [y[cut:] for y in ys]) if num_val else None,
            "test": data.split("test"),
        }
        self.sigmas = dict(zip(self.task_names, data.sigmas.tolist()))
        scales = ", ".join(f"{s:.3g}" for s in data.sigmas.tolist())
        self.description = (
            f"GradNorm's imbalanced regression: {data.num_tasks} tasks of scales "
            f"{scales}, {cut} training, {num_val} validation, "
            f"{data.num_samples - data.num_train} test samples in R^{data.in_dim}; a 4-layer ReLU MLP"
        )

    def split(self, split: str) -> tuple[Tensor, list[Tensor]]:
        """``(inputs, [targets per task])`` of ``split``."""
        return stored_split(self.name, self._splits, split, "num_val=0")

    def build_model(self, tasks: Sequence[str] | None = None) -> MultiTaskNet:
        names = self.tasks_or_all(tasks)
        return regression_model(len(names), in_dim=self.data.in_dim, out_dim=self.data.out_dim)

    def batches(
        self, split: str, *, seed: int = 0, batch_size: int | None = None
    ) -> Iterator[tuple[Tensor, list[Tensor]]]:
        x, ys = self.split(split)
        size = batch_size or self.batch_size
        if split == "train":
            for rows in index_batches(len(x), size, seed):
                yield x[rows], [y[rows] for y in ys]
        else:
            for start in range(0, len(x), size):
                yield x[start : start + size], [y[start : start + size] for y in ys]

    def task_losses(
        self, model: nn.Module, batch: tuple[Tensor, Sequence[Tensor]], tasks: Sequence[str] | None = None
    ) -> dict[str, Tensor]:
        names = self.tasks_or_all(tasks)
        x, targets = batch
        return {name: F.mse_loss(out, y) for name, out, y in zip(names, model(x), self.targets_of(targets, names))}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, tasks: Sequence[str] | None = None) -> list[TaskMetric]:
        names = self.tasks_or_all(tasks)
        x, ys = self.to_device(self.split(split), model_device(model))
        scores = []
        for name, out, y in zip(names, model(x), self.targets_of(ys, names)):
            loss = F.mse_loss(out, y)
            for metric in self.metrics:
                value = loss / self.sigmas[name] ** 2 if metric == "normalised_mse" else loss
                scores.append(TaskMetric(name, metric, float(value), False))
        return scores


def regression_problem(
    num_tasks: int = 2,
    *,
    sigma_range: tuple[float, float] = (1.0, 100.0),
    sigmas: Sequence[float] | None = None,
    num_samples: int = 5000,
    num_val: int = 1000,
    batch_size: int = 64,
    data_seed: int = 0,
    metrics: Sequence[str] = ("normalised_mse",),
) -> RegressionProblem:
    """GradNorm's regression with ``num_tasks`` tasks as a problem (``"mao_lab.problems:regression_problem"``).

    >>> problem = regression_problem(3, num_samples=200, num_val=40)
    >>> problem.task_names, round(problem.sigmas["task2"])
    (('task0', 'task1', 'task2'), 100)
    """
    data = ImbalancedRegression(
        num_tasks, sigmas=sigmas, sigma_range=tuple(sigma_range), num_samples=num_samples, seed=data_seed
    )
    return RegressionProblem(data, num_val=num_val, batch_size=batch_size, metrics=metrics)
