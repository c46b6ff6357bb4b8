r"""The one training loop every experiment uses: any method, any model, a seed that fixes everything else.

:func:`train` builds the model and the method under one seed, steps the method over the batches for a
number of steps, and can record the run (:class:`mao_lab.recorder.Recorder`) and evaluate the model every
few steps.  The landscape, the regression, MultiMNIST and their single-task baselines all train through
it, so runs differ only where their problems differ; a single-task baseline is the same loop with one
task's loss.

**What a seed fixes.**  Under ``seed`` the loop builds the initial network (``build_model``), asks for
the order of the batches (``batches(seed)``) and draws any random numbers the method uses (RLW's weights,
GradDrop's masks, ...).  Two runs with the same seed and different methods therefore start from the
same network and see the same batches: they differ only by the method.  Evaluations run on a copy of
the random state, so how often a run is evaluated does not change its training.  The caller's global
random state is left as it was.

**A problem, a device, a precision.**  ``train`` takes a :class:`mao_lab.problems.Problem` in place of
``build_model`` and ``task_losses`` (its network, its training batches and its losses, on the ``tasks``
chosen), and ``evaluate="validation"`` (or ``"test"``) scores the problem's split.  ``device`` puts the
network and every batch on a device (by default the GPU when one is present, for a problem; the CPU for a
``build_model`` function, whose ``evaluate`` may read CPU tensors), and ``autocast="bf16"`` (or ``"fp16"``)
runs the forward passes under :func:`torch.autocast`; the losses reach the method in float32, and the
method steps the float32 parameters.  On the CPU without autocast, a run is bit for bit the run it was
before devices existed.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._task_gradients import TaskLosses
from .._validate import Int, require
from ..methods import Method, available, make
from ..problems import Problem, default_device, index_batches, metric_rows
from ..problems._interface import _to_device
from ..recorder import Recorder

__all__ = [
    "AUTOCAST_DTYPES",
    "TrainingRun",
    "index_batches",
    "resolve_autocast",
    "resolve_device",
    "tensor_batches",
    "train",
]

AUTOCAST_DTYPES: Mapping[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""The precisions ``train(autocast=...)`` names: bfloat16 (safe without loss scaling) and float16."""

Batch = Any
"""Whatever ``batches`` yields and ``task_losses`` reads (e.g. ``(inputs, [targets per task])``)."""

TaskLossFn = Callable[[nn.Module, Batch], TaskLosses]
"""``task_losses(model, batch)``: the per-task losses of ``model`` on ``batch`` (a list or a name → loss dict)."""

Evaluate = Callable[[nn.Module], Iterable[Mapping[str, Any]]]
"""``evaluate(model)``: rows of the evaluation table, by convention with ``task``, ``metric`` and ``value``."""

Autocast = Literal["bf16", "fp16"] | torch.dtype | None
"""A forward-pass precision for :func:`torch.autocast`, or ``None`` for the parameters' own (float32)."""


@dataclass
class TrainingRun:
    """What :func:`train` returns.

    Attributes:
        model: the trained model.
        method: the method that trained it (its state included).
        evaluations: one row per row ``evaluate`` returned, with the ``step`` it was made at first
            (``step`` 0 is the untrained model); empty without ``evaluate``.
        train_losses: ``step, task, loss``: the loss of every task on the batch of every step (``step``
            1 is the first batch), as the method saw it before it moved the parameters.
        metrics: the recorder's tidy table (:mod:`mao_lab.recorder`), or ``None`` without ``record_every``.
        seconds: the wall time of the training steps alone (evaluations and recording setup excluded).
    """

    model: nn.Module
    method: Method
    evaluations: pd.DataFrame
    train_losses: pd.DataFrame
    metrics: pd.DataFrame | None
    seconds: float


def train(
    build_model: Callable[[], nn.Module] | Problem,
    method_name: str,
    task_losses: TaskLossFn | None = None,
    *,
    steps: int,
    batches: Callable[[int], Iterable[Batch]] | None = None,
    seed: int = 0,
    lr: float = 1e-3,
    hyperparameters: Mapping[str, object] | None = None,
    record_every: int | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    run_params: Mapping[str, Any] | None = None,
    evaluate: Evaluate | str | None = None,
    eval_every: int | None = None,
    progress: bool = False,
    desc: str | None = None,
    tasks: Sequence[str] | None = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    autocast: Autocast = None,
) -> TrainingRun:
    """Train the model ``build_model()`` with ``mao_lab.methods.make(method_name, ...)`` for ``steps`` steps.

    Every step calls ``method.step(lambda: task_losses(model, batch))`` on the next batch: the one
    training-step contract of :class:`mao_lab.methods.Method`, the same for every method.

    Args:
        build_model: makes the initial network; called under ``seed``.  Or a
            :class:`~mao_lab.problems.Problem`: its network, training batches and losses on ``tasks``
            (``task_losses`` and ``batches`` then default to the problem's).
        method_name: a registry name (:func:`mao_lab.methods.available`).
        task_losses: ``task_losses(model, batch)`` → the per-task losses (a list, or a dict whose keys
            name the tasks in the recorder's table).
        steps: the number of training steps (0 evaluates the untrained model only).
        batches: ``batches(seed)`` → an iterable of at least ``steps`` batches (:func:`tensor_batches`
            makes one from tensors); ``None`` for full-batch problems, where ``task_losses`` gets ``None``.
        seed: fixes the initial network, the batch order and the method's random draws (module docstring).
        lr: the method's learning rate.
        hyperparameters: the method's other hyperparameters (``make``'s keyword arguments).
        record_every: attach a :class:`~mao_lab.recorder.Recorder` recording every this many steps.
        run_dir: with ``record_every``, the folder the recorder saves the run to (``params.json`` holds
            ``run_params``); an existing run there is replaced.
        run_params: the run's parameters, saved with the recording.
        evaluate: ``evaluate(model)`` → rows of the evaluation table; called without gradients, in
            ``eval`` mode, at step 0, every ``eval_every`` steps and after the last step.  With a problem, a
            split's name (``"validation"``, ``"test"``) scores that split (rows ``task, metric, value,
            higher_is_better``).
        eval_every: how often ``evaluate`` runs; ``None``: at the start and the end only.
        progress: show a tqdm bar over the steps (labelled ``desc``, by default the method's name).
        desc: the bar's label.
        tasks: with a problem, the tasks to train (all by default; one task for a single-task baseline).
        batch_size: with a problem, the training batch size (the problem's own by default).
        device: where the network and the batches live (module docstring for the default).
        autocast: ``"bf16"`` or ``"fp16"`` runs each forward pass under :func:`torch.autocast` (training only;
            evaluations run in full precision); float16 has no loss scaling here, so prefer bfloat16.

    Returns:
        A :class:`TrainingRun`.

    Raises:
        ValueError: an unknown method or hyperparameter, a bad count, an unknown device or precision, an
            option that needs a problem, or batches that run out.

    >>> from mao_lab.problems import regression_model
    >>> x, ys = torch.randn(64, 8), [torch.randn(64, 2), 10 * torch.randn(64, 2)]
    >>> losses = lambda model, batch: [((out - y) ** 2).mean() for out, y in zip(model(batch[0]), batch[1])]
    >>> test = lambda model: [{"task": k, "metric": "mse", "value": float(v)}
    ...                       for k, v in enumerate(losses(model, (x, ys)))]
    >>> run = train(lambda: regression_model(2, in_dim=8, hidden=4, out_dim=2), "mao", losses, steps=6,
    ...             batches=tensor_batches(x, ys, batch_size=16), evaluate=test, eval_every=3, record_every=2)
    >>> run.evaluations["step"].unique().tolist(), sorted(run.metrics["step"].unique().tolist())
    ([0, 3, 6], [0, 2, 4])
    >>> again = train(lambda: regression_model(2, in_dim=8, hidden=4, out_dim=2), "mao", losses, steps=6,
    ...               batches=tensor_batches(x, ys, batch_size=16), evaluate=test, record_every=2)
    >>> again.evaluations["value"].tolist() == run.evaluations.query("step != 3")["value"].tolist()  # the same run
    True

    On a problem (:class:`~mao_lab.problems.Problem`), its network, batches and losses, scored on a split:

    >>> from mao_lab.problems import regression_problem
    >>> problem = regression_problem(2, num_samples=200, num_val=40, batch_size=16)
    >>> run = train(problem, "mao", steps=2, evaluate="validation", device="cpu", autocast="bf16")
    >>> run.evaluations[["step", "task", "metric"]].values.tolist()[:2], run.train_losses["loss"].dtype
    ([[0, 'task0', 'normalised_mse'], [0, 'task1', 'normalised_mse']], dtype('float64'))
    """
    _check_arguments(method_name, steps, seed, record_every, eval_every)
    problem = build_model if isinstance(build_model, Problem) else None
    target = resolve_device(device, cuda_by_default=problem is not None)
    precision = resolve_autocast(autocast)
    build, task_losses, batches, evaluate, move = _from_problem(
        build_model, task_losses, batches, evaluate, tasks, batch_size
    )
    with torch.random.fork_rng(devices=[target] if target.type == "cuda" else []):
        torch.manual_seed(seed)
        model = build().to(target)
        method = make(method_name, model.parameters(), lr=lr, **dict(hyperparameters or {}))
        recorder = _recorder(model, method, record_every, run_dir, run_params)
        rows: list[dict[str, Any]] = []
        _evaluate(model, evaluate, 0, rows, target)
        losses = _Losses()
        forward = _forward(task_losses, target, precision)
        with tqdm(total=steps, desc=desc or method_name, disable=not progress, leave=False) as bar:
            for step, batch in zip(range(1, steps + 1), _batches(batches, seed)):
                batch = move(batch, target)
                losses.add(method, lambda batch=batch: forward(model, batch))
                bar.update()
                if evaluate is not None and (step == steps or (eval_every is not None and step % eval_every == 0)):
                    _evaluate(model, evaluate, step, rows, target)
        if losses.count < steps:
            raise ValueError(f"batches ran out at step {losses.count + 1}: give at least `steps` batches")
        if recorder is not None:
            recorder.close()
    return TrainingRun(
        model=model,
        method=method,
        evaluations=pd.DataFrame(rows, columns=None if rows else ["step", "task", "metric", "value"]),
        train_losses=losses.table(),
        metrics=recorder.to_frame() if recorder is not None else None,
        seconds=losses.seconds,
    )


class _Losses:
    """Steps a method and keeps what each step saw: the per-task losses, the task names, the time taken."""

    def __init__(self) -> None:
        self.seen: list[Tensor] = []
        self.names: list[str] = []
        self.seconds = 0.0

    @property
    def count(self) -> int:
        return len(self.seen)

    def add(self, method: Method, closure: Callable[[], TaskLosses]) -> None:
        def named() -> TaskLosses:
            losses = closure()
            if isinstance(losses, Mapping) and not self.names:
                self.names.extend(map(str, losses))
            return losses

        started = time.perf_counter()
        losses = method.step(named)
        self.seconds += time.perf_counter() - started
        self.seen.append(losses.detach().cpu())

    def table(self) -> pd.DataFrame:
        """``step, task, loss``, steps from 1."""
        if not self.seen:
            return pd.DataFrame(columns=["step", "task", "loss"])
        values = torch.stack(self.seen).double().numpy()
        names = self.names if len(self.names) == values.shape[1] else [f"task{k}" for k in range(values.shape[1])]
        table = pd.DataFrame(values, columns=names, index=pd.RangeIndex(1, len(self.seen) + 1, name="step"))
        return table.reset_index().melt(id_vars="step", var_name="task", value_name="loss")


def _batches(batches: Callable[[int], Iterable[Batch]] | None, seed: int) -> Iterable[Batch]:
    """The batches of ``seed``; without ``batches``, ``None`` for ever (full-batch problems)."""
    return batches(seed) if batches is not None else itertools.repeat(None)


def _check_arguments(method_name: str, steps: int, seed: int, record_every: int | None, eval_every: int | None) -> None:
    if method_name not in available():
        raise ValueError(f"unknown method {method_name!r}; available: {', '.join(available())}")
    require("steps", steps, Int(min=0))
    require("seed", seed, Int(min=0))
    for name, value in (("record_every", record_every), ("eval_every", eval_every)):
        if value is not None:
            require(name, value, Int(min=1))


def _recorder(
    model: nn.Module,
    method: Method,
    every: int | None,
    run_dir: str | os.PathLike[str] | None,
    params: Mapping[str, Any] | None,
) -> Recorder | None:
    if every is None:
        return None
    if run_dir is None:
        return Recorder(model, method, every)
    return Recorder(model, method, every, run_dir=run_dir, params=dict(params or {}), overwrite=True)


def _evaluate(
    model: nn.Module, evaluate: Evaluate | None, step: int, rows: list[dict[str, Any]], device: torch.device
) -> None:
    if evaluate is None:
        return
    was_training = model.training
    # A copy of the random state: evaluating (even with dropout) must not change what training draws next.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        model.eval()
        try:
            rows.extend({"step": step, **row} for row in evaluate(model))
        finally:
            model.train(was_training)


def recording(
    params: Mapping[str, Any],
    hyperparameters: Mapping[str, object],
    *,
    every: int | None,
    run_dir: str | os.PathLike[str] | None,
) -> dict[str, Any]:
    """:func:`train`'s keywords for a recorded run: the method's ``hyperparameters``, the recorder every ``every``
    steps (none when ``None``) and, with ``run_dir``, its log saved there with the run's parameters: ``params``,
    then ``every`` and the hyperparameters (``params.json``).

    >>> list(recording({"lr": 0.1}, {"beta": 0.5}, every=5, run_dir=None)["run_params"].items())
    [('lr', 0.1), ('every', 5), ('beta', 0.5)]
    """
    return {
        "hyperparameters": hyperparameters,
        "record_every": every,
        "run_dir": run_dir,
        "run_params": {**params, "every": every, **hyperparameters},
    }


def resolve_device(device: torch.device | str | None, *, cuda_by_default: bool = True) -> torch.device:
    """``device`` as a :class:`torch.device`, checked; ``None``: CUDA when present (``cuda_by_default``), else the CPU.

    >>> resolve_device("cpu"), resolve_device(None, cuda_by_default=False)
    (device(type='cpu'), device(type='cpu'))
    >>> resolve_device("tpu")
    Traceback (most recent call last):
    ...
    ValueError: device must be a torch device such as 'cpu', 'cuda' or 'cuda:1', got 'tpu'
    """
    if device is None:
        return default_device() if cuda_by_default else torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch device such as 'cpu', 'cuda' or 'cuda:1', got {device!r}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asks for CUDA, but torch sees no CUDA device here")
    return resolved


def resolve_autocast(autocast: Autocast) -> torch.dtype | None:
    """The autocast dtype named by ``autocast`` (``"bf16"``, ``"fp16"``, a dtype or ``None``), checked.

    >>> resolve_autocast("bf16"), resolve_autocast(None)
    (torch.bfloat16, None)
    """
    if autocast is None:
        return None
    dtype = AUTOCAST_DTYPES.get(autocast) if isinstance(autocast, str) else autocast
    if dtype not in AUTOCAST_DTYPES.values():
        raise ValueError(f"autocast must be one of {sorted(AUTOCAST_DTYPES)} or None, got {autocast!r}")
    return dtype


def _from_problem(
    build_model: Callable[[], nn.Module] | Problem,
    task_losses: TaskLossFn | None,
    batches: Callable[[int], Iterable[Batch]] | None,
    evaluate: Evaluate | str | None,
    tasks: Sequence[str] | None,
    batch_size: int | None,
) -> tuple[
    Callable[[], nn.Module],
    TaskLossFn,
    Callable[[int], Iterable[Batch]] | None,
    Evaluate | None,
    Callable[[Batch, torch.device], Batch],
]:
    """``build_model, task_losses, batches, evaluate`` and a batch mover, from a problem or as given."""
    if not isinstance(build_model, Problem):
        for name, value in (("tasks", tasks), ("batch_size", batch_size)):
            if value is not None:
                raise ValueError(f"{name} needs a Problem as the first argument of train(), not a build_model function")
        if isinstance(evaluate, str):
            raise ValueError(f"evaluate={evaluate!r} (a split's name) needs a Problem as the first argument of train()")
        if task_losses is None:
            raise ValueError("train() needs task_losses(model, batch) with a build_model function")
        return build_model, task_losses, batches, evaluate, lambda batch, device: _to_device(batch, device)
    problem = build_model
    chosen = problem.tasks_or_all(tasks)
    if batch_size is not None:
        require("batch_size", batch_size, Int(min=1))
    if task_losses is None:
        task_losses = lambda model, batch: problem.task_losses(model, batch, chosen)
    if batches is None:
        batches = lambda seed: problem.batches("train", seed=seed, batch_size=batch_size)
    if isinstance(evaluate, str):
        split = evaluate
        evaluate = lambda model: metric_rows(problem.evaluate(model, split, chosen))
    return lambda: problem.build_model(chosen), task_losses, batches, evaluate, problem.to_device


def _forward(task_losses: TaskLossFn, device: torch.device, precision: torch.dtype | None) -> TaskLossFn:
    """``task_losses`` under autocast (losses back in float32), or as it is without."""
    if precision is None:
        return task_losses

    def forward(model: nn.Module, batch: Batch) -> TaskLosses:
        with torch.autocast(device.type, dtype=precision):
            losses = task_losses(model, batch)
        if isinstance(losses, Mapping):
            return {name: loss.float() for name, loss in losses.items()}
        if isinstance(losses, Tensor):
            return losses.float()
        return [loss.float() for loss in losses]

    return forward


def tensor_batches(
    inputs: Tensor, targets: Sequence[Tensor], batch_size: int
) -> Callable[[int], Iterator[tuple[Tensor, list[Tensor]]]]:
    """``batches`` for :func:`train` from tensors: ``seed`` → ``(inputs[rows], [t[rows] for t in targets])``
    over :func:`index_batches`.

    >>> x, (y,) = next(tensor_batches(torch.arange(6.0), [torch.arange(6) * 10], batch_size=3)(0))
    >>> (y == 10 * x).all().item(), len(x)
    (True, 3)
    """
    targets = list(targets)
    if any(len(t) != len(inputs) for t in targets):
        raise ValueError(f"every target must have one row per input ({len(inputs)}), got {[len(t) for t in targets]}")

    def batches(seed: int) -> Iterator[tuple[Tensor, list[Tensor]]]:
        for rows in index_batches(len(inputs), batch_size, seed):
            yield inputs[rows], [t[rows] for t in targets]

    return batches
