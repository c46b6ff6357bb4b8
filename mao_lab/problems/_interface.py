"""The one problem interface: what the lab needs to know about a multi-task problem, yours included.

A :class:`Problem` is everything the lab's training loop, recorder, study and notebooks read about a
problem: how to build its network (a shared trunk and one head per task, :class:`MultiTaskNet`), its
batches for each split, its per-task losses, its per-task metrics (each with its direction), and its
task names.  Optionally it says which task sets are of one nature and which of different natures
(claim P2 of the study) and how it describes its own scale for a ledger.

Write one by subclassing :class:`Problem` (``docs/your-problem.md`` walks through it); the lab finds it
by an import path ``"package.module:factory"`` (:func:`load_problem`), where ``factory(**options)``
returns the problem.  Helpers: :func:`index_batches` (a seeded order of full batches, epoch after epoch),
:func:`seeded_loader` (the same order from a ``DataLoader`` with worker processes and pinned memory),
:func:`model_device` (where to move evaluation data), :func:`metric_rows` (metrics as table rows) and
:func:`verify_problem` (a problem checked the way the lab calls it).

>>> class Toy(Problem):
...     name = "toy"
...     task_names = ("a", "b")
...     def build_model(self, tasks=None):
...         tasks = self.tasks_or_all(tasks)
...         return MultiTaskNet(torch.nn.Linear(2, 3), [torch.nn.Linear(3, 1) for _ in tasks])
...     def batches(self, split, *, seed=0, batch_size=None):
...         generator = torch.Generator().manual_seed(seed)
...         while True:
...             x = torch.randn(4, 2, generator=generator)
...             yield x, {"a": x.sum(1, keepdim=True), "b": 10 * x[:, :1]}
...     def task_losses(self, model, batch, tasks=None):
...         x, targets = batch
...         tasks = self.tasks_or_all(tasks)
...         return {k: (out - targets[k]).pow(2).mean() for k, out in zip(tasks, model(x))}
...     def evaluate(self, model, split, tasks=None):
...         losses = self.task_losses(model, next(iter(self.batches(split, seed=1))), tasks)
...         return [TaskMetric(k, "mse", float(v), higher_is_better=False) for k, v in losses.items()]
>>> problem = Toy()
>>> sorted(problem.task_losses(problem.build_model(), next(iter(problem.batches("train")))))
['a', 'b']
>>> problem.tasks_or_all(["c"])
Traceback (most recent call last):
...
ValueError: problem 'toy': unknown task 'c'; its tasks are ('a', 'b')
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, NamedTuple, TypeVar

import torch
from torch import Tensor, nn

from .._validate import Int, require
from ._model import MultiTaskNet

__all__ = [
    "SPLITS",
    "Problem",
    "Split",
    "TaskMetric",
    "default_device",
    "index_batches",
    "load_problem",
    "metric_rows",
    "model_device",
    "seeded_loader",
    "verify_problem",
]

Split = Literal["train", "validation", "test"]
"""The three splits: train on ``train``, choose learning rates on ``validation``, report on ``test``."""

SPLITS: tuple[str, ...] = ("train", "validation", "test")


class TaskMetric(NamedTuple):
    """One task's score; ``higher_is_better`` gives the sign in Delta_m."""

    task: str
    metric: str
    value: float
    higher_is_better: bool


class Problem(ABC):
    """A multi-task problem: a network to build, batches, per-task losses and per-task metrics.

    Class attributes (or instance attributes set in ``__init__``):
        name: a short identifier (``"multimnist"``), used in run folders and ledgers.
        task_names: the tasks, in the order of the network's heads.
        description: one line on the data and the model, with their scale, for a ledger
            (``"5 000 MNIST digits, LeNet-style CNN"``).
        train_size: optional, the number of training examples (the study counts epochs with it:
            seconds per epoch, claim P4); ``None`` when unknown.

    Every method that takes ``tasks`` works on that subset of :attr:`task_names` (in that order) or on
    all tasks when it is ``None``: a single-task baseline is the same problem with one task.
    """

    name: str = ""
    task_names: tuple[str, ...] = ()
    description: str = ""
    train_size: int | None = None

    @abstractmethod
    def build_model(self, tasks: Sequence[str] | None = None) -> MultiTaskNet:
        """A fresh network for ``tasks``: a shared trunk (``model.features(x)``) and one head per task.

        Called under the run's seed: draw initial weights from torch's global generator.
        """

    @abstractmethod
    def batches(self, split: Split, *, seed: int = 0, batch_size: int | None = None) -> Iterable[Any]:
        """The batches of ``split``.  For ``"train"``, an endless stream in an order fixed by ``seed``;
        for ``"validation"`` and ``"test"``, one pass over the split."""

    @abstractmethod
    def task_losses(self, model: nn.Module, batch: Any, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        """The per-task scalar losses of ``model`` on ``batch``, as a task name → loss dict."""

    @abstractmethod
    def evaluate(self, model: nn.Module, split: Split, tasks: Sequence[str] | None = None) -> list[TaskMetric]:
        """Every task's metrics on ``split`` (called without gradients, in ``eval`` mode).

        ``model`` may live on a GPU: move the split's data where its parameters are
        (:func:`model_device`, :meth:`to_device`)."""

    # -- optional ---------------------------------------------------------------------------------------

    def task_sets(self) -> Mapping[str, tuple[str, ...]]:
        """Named task sets for claim P2: ``{"same_nature": (...), "different_nature": (...)}``, or ``{}``."""
        return {}

    def to_device(self, batch: Any, device: torch.device | str) -> Any:
        """``batch`` on ``device``: tensors moved (non-blocking from pinned memory), containers kept."""
        return _to_device(batch, torch.device(device))

    # -- helpers ---------------------------------------------------------------------------------------

    def tasks_or_all(self, tasks: Sequence[str] | None) -> tuple[str, ...]:
        """``tasks`` checked against :attr:`task_names` (all of them when ``None``)."""
        if tasks is None:
            return tuple(self.task_names)
        if isinstance(tasks, str):
            raise ValueError(f"problem {self.name!r}: tasks must be a sequence of names, got the string {tasks!r}")
        chosen = tuple(tasks)
        for task in chosen:
            if task not in self.task_names:
                raise ValueError(
                    f"problem {self.name!r}: unknown task {task!r}; its tasks are {tuple(self.task_names)}"
                )
        if len(set(chosen)) != len(chosen) or not chosen:
            raise ValueError(f"problem {self.name!r}: tasks must be distinct and at least one, got {chosen}")
        return chosen

    def targets_of(self, targets: Sequence[Tensor], tasks: Sequence[str]) -> list[Tensor]:
        """The targets of ``tasks`` among ``targets`` (one per task of :attr:`task_names`, in that order)."""
        return [targets[self.task_names.index(task)] for task in tasks]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, tasks={tuple(self.task_names)})"


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=batch.is_pinned())
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def load_problem(spec: str | Problem, **options: Any) -> Problem:
    """The problem named by an import path ``"package.module:factory"`` (``factory(**options)``).

    A :class:`Problem` is returned as it is.  A path that does not import, a missing factory, or a
    factory that returns something else raises ``ValueError`` naming the path.

    >>> load_problem("mao_lab.problems:no_such_factory")
    Traceback (most recent call last):
    ...
    ValueError: problem 'mao_lab.problems:no_such_factory': module 'mao_lab.problems' has no attribute 'no_such_factory'
    """
    if isinstance(spec, Problem):
        return spec
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ValueError(f"problem {spec!r}: expected an import path 'package.module:factory'")
    module_name, factory_name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"problem {spec!r}: cannot import {module_name!r} ({error})") from None
    factory = getattr(module, factory_name, None)
    if factory is None:
        raise ValueError(f"problem {spec!r}: module {module_name!r} has no attribute {factory_name!r}")
    problem = factory(**options)
    if not isinstance(problem, Problem):
        raise ValueError(f"problem {spec!r}: {factory_name}(...) returned {type(problem).__name__}, not a Problem")
    return problem


def default_device() -> torch.device:
    """Where a run trains when no device is named: the current CUDA device when one is present, else the CPU.

    >>> default_device().type in ("cpu", "cuda")
    True
    """
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (the CPU for a model without parameters).

    >>> model_device(nn.Linear(2, 2))
    device(type='cpu')
    """
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def metric_rows(metrics: Iterable[TaskMetric], **extra: Any) -> list[dict[str, Any]]:
    """:class:`TaskMetric` s as rows of a table (``task, metric, value, higher_is_better``, then ``extra``).

    >>> metric_rows([TaskMetric("a", "accuracy", 0.5, True)], split="val")
    [{'task': 'a', 'metric': 'accuracy', 'value': 0.5, 'higher_is_better': True, 'split': 'val'}]
    """
    return [{**metric._asdict(), **extra} for metric in metrics]


_Data = TypeVar("_Data")


def stored_split(problem: str, splits: Mapping[str, _Data | None], split: str, missing: str = "") -> _Data:
    """The data of ``split`` among a problem's ``splits``; ``ValueError`` for an unknown split, or one the problem
    was made without (``None``; ``missing`` says why it can be absent).

    >>> stored_split("toy", {"train": [1, 2], "validation": None}, "train")
    [1, 2]
    >>> stored_split("toy", {"train": [1, 2], "validation": None}, "validation", "num_val=0")
    Traceback (most recent call last):
    ValueError: problem 'toy' was made without a validation split (num_val=0)
    """
    if split not in splits:
        raise ValueError(f"problem {problem!r}: unknown split {split!r}; splits: {list(splits)}")
    data = splits[split]
    if data is None:
        raise ValueError(f"problem {problem!r} was made without a {split} split" + (f" ({missing})" if missing else ""))
    return data


def check_count(name: str, value: object, minimum: int) -> None:
    """Reject anything but an int (a bool is not one) of at least ``minimum``, naming ``name``.

    >>> check_count("num_workers", 0, 0)
    >>> check_count("batch_size", True, 1)
    Traceback (most recent call last):
    ValueError: batch_size must be an int >= 1, got True
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def index_batches(num_samples: int, batch_size: int, seed: int) -> Iterator[Tensor]:
    """Row indices of full batches of ``batch_size``, epoch after epoch, without end.

    Each epoch visits the rows in an order drawn from ``seed`` and the epoch's number only, so every
    method trained with the same seed sees the same batches.  A last, smaller batch is dropped: every
    step sees as many samples.

    >>> batches = [b.tolist() for b, _ in zip(index_batches(5, 2, seed=0), range(4))]
    >>> [len(b) for b in batches], len(set(batches[0] + batches[1]))
    ([2, 2, 2, 2], 4)
    """
    require("num_samples", num_samples, Int(min=1))
    require("batch_size", batch_size, Int(min=1))
    size = min(batch_size, num_samples)
    epoch = 0
    while True:
        order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        for start in range(0, num_samples - size + 1, size):
            yield order[start : start + size]
        epoch += 1


class _SeededBatchSampler(torch.utils.data.Sampler):
    """The row lists of :func:`index_batches`, for a ``DataLoader``'s ``batch_sampler``."""

    def __init__(self, num_samples: int, batch_size: int, seed: int) -> None:
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed

    def __iter__(self) -> Iterator[list[int]]:
        return (rows.tolist() for rows in index_batches(self.num_samples, self.batch_size, self.seed))


def seeded_loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    seed: int,
    *,
    num_workers: int = 0,
    pin_memory: bool | None = None,
    collate_fn: Any = None,
) -> Iterator[Any]:
    """An endless stream of training batches of ``dataset`` in :func:`index_batches`' order, from a ``DataLoader``
    that keeps a GPU fed: ``num_workers`` processes load the next batches while the GPU trains, in pinned memory
    (by default when CUDA is present) so that :meth:`Problem.to_device` copies them without blocking.

    The order depends on ``seed`` only, whatever ``num_workers``: a problem's ``batches("train", seed=...)`` can
    return it as it is.

    >>> data = torch.utils.data.TensorDataset(torch.arange(10.0), torch.arange(10) * 10)
    >>> x, y = next(seeded_loader(data, batch_size=4, seed=0))
    >>> rows = next(index_batches(10, 4, seed=0))
    >>> torch.equal(x, torch.arange(10.0)[rows]), torch.equal(y, 10 * rows)
    (True, True)
    """
    require("batch_size", batch_size, Int(min=1))
    require("num_workers", num_workers, Int(min=0))
    pin = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
    sampler = _SeededBatchSampler(len(dataset), batch_size, seed)  # type: ignore[arg-type]
    options: dict[str, Any] = {} if collate_fn is None else {"collate_fn": collate_fn}
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin, **options
    )
    return iter(loader)


def verify_problem(problem: Problem, *, batch_size: int = 4) -> list[str]:
    """Check ``problem`` against the interface on one small batch, the way the lab will call it; what it saw.

    Builds the network for all tasks and for the first task alone, draws a training batch (twice with one
    seed: the same batch), computes the losses (one finite scalar per task, by name) and their gradients, and
    scores every split the problem has.  Raises ``ValueError`` naming the first thing that does not fit.

    >>> from mao_lab.problems import regression_problem
    >>> verify_problem(regression_problem(2, num_samples=100, num_val=20))[:2]
    ['tasks: task0, task1', 'network: 8 shared parameter tensors, 2 heads']
    """

    def fail(message: str) -> ValueError:
        return ValueError(f"problem {getattr(problem, 'name', '?')!r}: {message}")

    missing = [
        m for m in ("build_model", "batches", "task_losses", "evaluate", "tasks_or_all") if not hasattr(problem, m)
    ]
    if missing:
        raise ValueError(f"expected a Problem, got {type(problem).__name__} (no {', '.join(missing)})")
    tasks = problem.tasks_or_all(None)
    if len(tasks) < 1 or not all(isinstance(t, str) and t for t in tasks):
        raise fail(f"task_names must be non-empty strings, got {tasks!r}")
    seen = [f"tasks: {', '.join(tasks)}"]
    model = problem.build_model(tasks)
    if not hasattr(model, "shared_parameters") or getattr(model, "num_tasks", None) != len(tasks):
        raise fail(
            f"build_model(tasks) must return a MultiTaskNet with one head per task ({len(tasks)}), got {model!r}"
        )
    seen.append(f"network: {len(list(model.shared_parameters()))} shared parameter tensors, {model.num_tasks} heads")
    first = next(iter(problem.batches("train", seed=0, batch_size=batch_size)), None)
    again = next(iter(problem.batches("train", seed=0, batch_size=batch_size)), None)
    if first is None:
        raise fail("batches('train') yielded nothing")
    if repr(_to_device(first, torch.device("cpu"))) != repr(_to_device(again, torch.device("cpu"))):
        raise fail("batches('train', seed=0) gave two different first batches: the seed must fix the order")
    losses = problem.task_losses(model, first, tasks)
    if not isinstance(losses, Mapping) or tuple(losses) != tasks:
        raise fail(
            f"task_losses must return a dict of the tasks in order {tasks}, got {type(losses).__name__} "
            f"{list(losses) if isinstance(losses, Mapping) else ''}"
        )
    for task, loss in losses.items():
        if not isinstance(loss, Tensor) or loss.dim() != 0 or not torch.isfinite(loss) or not loss.requires_grad:
            raise fail(f"the loss of task {task!r} must be a finite scalar tensor with a gradient, got {loss!r}")
    sum(losses.values()).backward()
    seen.append("losses: " + ", ".join(f"{task} {float(loss.detach()):.4g}" for task, loss in losses.items()))
    alone = problem.build_model(tasks[:1])
    if set(problem.task_losses(alone, first, tasks[:1])) != {tasks[0]}:
        raise fail(f"task_losses(model, batch, ({tasks[0]!r},)) must return that task's loss only")
    for split in ("validation", "test"):
        try:
            with torch.no_grad():
                metrics = problem.evaluate(model.eval(), split, tasks)
        except ValueError as error:  # a split the problem does not have
            seen.append(f"{split}: none ({error})")
            continue
        if not all(hasattr(m, "higher_is_better") for m in metrics) or {m.task for m in metrics} != set(tasks):
            raise fail(f"evaluate(model, {split!r}) must return TaskMetrics for every task, got {metrics!r}")
        seen.append(f"{split}: " + ", ".join(f"{m.task} {m.metric} {m.value:.4g}" for m in metrics))
    return seen
