"""The recorder: attaches to a model and a method, and measures who trains what at every (N-th) step.

It is an observer (see :class:`mao_lab.StepObserver`): the method hands it the per-task gradients it
computed anyway and each task's part of the update it applied, so recording costs no backward pass.
A recorded step costs one small matrix product and one norm per parameter, and one concatenation; the
numbers stay in one flat tensor per step until a table is asked for.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .._observe import StepObserver, StepRecord
from .._task_gradients import TaskGradients
from ._frame import Layout, Level, by_module, decode, empty_frame, module_of, normalise_dtypes
from ._storage import (
    PARAMS_FILE,
    RunPath,
    full_tables,
    part_path,
    part_paths,
    save_run,
    write_params,
    write_table,
)

__all__ = ["Observable", "Recorder", "RecorderError", "RecorderWriteWarning", "record"]

# Raw step vectors on an accelerator are moved to the CPU in batches of this many steps, so that
# recording does not force a device synchronisation at every step.
_TRANSFER_BATCH = 64


class RecorderError(RuntimeError):
    """The recorder cannot measure this method (it hands over no per-task gradients)."""


class RecorderWriteWarning(UserWarning):
    """A periodic write of the recorder failed after a training step was applied.

    The step itself completed (the method's parameters and state moved): the failure is not raised,
    because a caller would take it for a failed step and repeat it.  The recorder keeps the unwritten
    steps in memory, lists the error in :attr:`Recorder.errors`, and writes them at the next flush or
    :meth:`Recorder.save`.
    """


class Observable(Protocol):
    """Anything the recorder can attach to: a :class:`mao_lab.methods.Method` or a :class:`mao_lab.MAO`."""

    def add_observer(self, observer: StepObserver) -> RemovableHandle: ...


NamedParameters = nn.Module | Mapping[str, Tensor] | Iterable[tuple[str, Tensor]]


class _Watcher:
    """What every observer of a method shares: it is added to the method at most once, and can be removed.

    Subclasses set ``self.method`` and ``self._handle = None``; :meth:`_started` runs on each new attach.
    """

    method: Observable
    _handle: RemovableHandle | None

    def _started(self) -> None:
        """Called each time watching (re)starts; nothing to do by default."""

    def attach(self) -> Self:
        """Start (again) watching the method; a no-op when already attached."""
        if self._handle is None:
            self._started()
            self._handle = self.method.add_observer(self)  # type: ignore[arg-type] - subclasses are StepObservers
        return self

    def detach(self) -> None:
        """Stop watching the method; what was seen so far is kept."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @property
    def attached(self) -> bool:
        return self._handle is not None


def _method_label(method: object) -> str:
    name = getattr(method, "name", "")
    kind = type(method).__name__
    return f"{name!r} ({kind})" if isinstance(name, str) and name else kind


class Recorder(_Watcher):
    """Record per-task, per-layer gradient and update magnitudes of every ``every``-th training step.

    One line attaches it; the training loop does not change::

        recorder = Recorder(model, method)          # method: a mao_lab.methods.Method or mao_lab.MAO
        for x, y in loader:
            method.step(lambda: task_losses(model(x), y))
        frame = recorder.to_frame()                  # the tidy table, see mao_lab.recorder
        recorder.save("runs/mao", {"method": "mao", "lr": 1e-3})

    Args:
        model: names the parameters (``model.named_parameters()``), or a name → parameter mapping.
        method: the method or optimizer to watch; it must produce per-task gradients (and, for the
            update metrics, per-task updates).
        every: record steps ``0, every, 2 * every, ...``.  Steps are numbered from 0 by the method's
            own count (:attr:`mao_lab.methods.Method.steps_taken`); for the :class:`mao_lab.MAO`
            optimizer, which keeps none, from when the recorder attached.
        run_dir: where :meth:`save` and periodic flushes write; ``None`` keeps everything in memory.
            It is created at once, and a path that cannot be a writable folder is refused here.
        params: the run's parameters, written to ``run_dir/params.json`` at once and on :meth:`save`.
        flush_every: with ``run_dir``, write the steps recorded since the last flush every this many
            recorded steps, so that an interrupted run leaves a readable table.
        overwrite: allow a ``run_dir`` that already holds metrics.  The earlier run stays whole until
            this one first writes (a flush or :meth:`save`); then its metrics are removed *before* the
            new ``params.json`` is written, so a crash never pairs new parameters with old metrics.

    A flush that fails during a training step (a full disk, a folder removed) does not raise: the
    step was applied, and raising would make the caller repeat it.  The recorder warns
    (:class:`RecorderWriteWarning`), appends the error to :attr:`errors`, keeps the steps in memory and
    writes them with the next flush or :meth:`save`.  :meth:`flush` and :meth:`save` called directly
    raise as usual.

    A method whose rule gives no per-task split of its update (GradDrop: the
    ``task_updates`` of its :class:`~mao_lab.StepRecord` is ``None``) is recorded without one: its
    gradients, cosines and losses are in the tables, its ``update_norm``, ``update_share`` and
    ``imbalance`` rows are absent (the split is not available, not zero).  A method that hands over no
    per-task gradients (``task_grads`` is ``None``) makes the first recorded step raise
    :class:`RecorderError`.

    A parameter reached by several tasks is ``shared``; one reached by one task only is ``task``-specific
    and belongs to that task (see :meth:`layers`).

    >>> from mao_lab import MAO
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = nn.ModuleDict({"trunk": nn.Linear(3, 4), "a": nn.Linear(4, 1), "b": nn.Linear(4, 1)})
    >>> optimizer = MAO(model.parameters(), lr=1e-2)
    >>> x = torch.randn(16, 3)
    >>> with Recorder(model, optimizer) as recorder:
    ...     for _ in range(3):
    ...         z = model["trunk"](x).relu()
    ...         _ = optimizer.step({"a": model["a"](z).pow(2).mean(), "b": 1e3 * model["b"](z).abs().mean()})
    >>> frame = recorder.to_frame()
    >>> sorted(frame["metric"].unique())
    ['cosine', 'grad_norm', 'imbalance', 'loss', 'update_norm', 'update_share']
    >>> shares = frame[(frame.metric == "update_share") & (frame.layer == "trunk.weight")]
    >>> shares.groupby("step")["value"].sum().round(6).tolist()
    [1.0, 1.0, 1.0]
    >>> layers = recorder.layers()
    >>> layers["kind"].tolist(), layers.loc["a.bias", "owner"]
    (['shared', 'shared', 'task', 'task', 'task', 'task'], 'a')
    """

    def __init__(
        self,
        model: NamedParameters,
        method: Observable,
        every: int = 1,
        *,
        run_dir: RunPath | None = None,
        params: Mapping[str, Any] | None = None,
        flush_every: int | None = None,
        overwrite: bool = False,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        if flush_every is not None and (
            isinstance(flush_every, bool) or not isinstance(flush_every, int) or flush_every < 1
        ):
            raise ValueError(f"flush_every must be a positive int or None, got {flush_every!r}")
        if flush_every is not None and run_dir is None:
            raise ValueError("flush_every needs a run_dir to flush to")
        if not callable(getattr(method, "add_observer", None)):
            raise TypeError(
                f"cannot record {_method_label(method)}: it has no add_observer(); pass a "
                "mao_lab.methods.Method (see mao_lab.methods.make) or a mao_lab.MAO optimizer"
            )
        self.every = every
        self.method = method
        self.run_dir = None if run_dir is None else _usable_folder(run_dir)
        self.params: dict[str, Any] = dict(params or {})
        self.flush_every = flush_every
        self.errors: list[Exception] = []
        """Writes that failed during training steps (see :class:`RecorderWriteWarning`), oldest first."""
        self._names, self._order = _parameter_names(model)
        self._params_given = params is not None
        # An earlier run's files in run_dir, kept whole until this run first writes there.
        self._stale = False
        if self.run_dir is not None:
            stale = full_tables(self.run_dir) + part_paths(self.run_dir)
            if stale and not overwrite:
                raise FileExistsError(
                    f"{self.run_dir} already holds recorded metrics ({stale[0].name}); pick another run_dir "
                    "or pass overwrite=True"
                )
            self._stale = bool(stale)
            if not self._stale and params is not None:
                write_params(self.run_dir, self.params)

        self._layouts: dict[tuple[object, ...], int] = {}
        self._layout_list: list[Layout] = []
        self._plans: list[tuple[tuple[int | None, ...], tuple[int | None, ...]]] = []
        self._steps: list[int] = []
        self._step_layouts: list[int] = []
        self._values: list[Tensor] = []  # flat raw vectors, on the CPU
        self._pending: list[Tensor] = []  # flat raw vectors still on an accelerator
        self._steps_seen = 0
        self._coming_step: int | None = None
        self._asked_unanswered = False
        self._step_counter: RemovableHandle | None = None  # a torch optimizer's step post-hook counting its steps
        self._flushed = 0  # recorded steps already written to part files
        self._parts_written = 0
        self._handle: RemovableHandle | None = None
        self.attach()

    # -- attaching (attach, detach, attached: from _Watcher) ---------------------------------------

    def close(self) -> None:
        """Detach, and with a ``run_dir``, save everything recorded there."""
        self.detach()
        if self.run_dir is not None:
            self.save()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            # Keep what the flushes wrote (readable), but do not present a failed run as finished.
            self.detach()

    # -- the observer protocol ---------------------------------------------------------------------

    def wants_record(self) -> bool:
        """Asked before each step: record it when its index is a multiple of ``every``."""
        step = self._next_step_index()
        self._coming_step = step if step % self.every == 0 else None
        return self._coming_step is not None

    def _next_step_index(self) -> int:
        # A Method counts its successful steps: using its count keeps step numbers right across a
        # detach/attach, a recorder attached mid-training, and steps that failed.  The MAO optimizer
        # has no such count; the recorder counts the steps that returned (torch.optim's step post-hook
        # runs only then), so a step refused on bad input takes no index.
        taken = getattr(self.method, "steps_taken", None)
        if isinstance(taken, int) and not isinstance(taken, bool):
            return taken
        if self._step_counter is not None:
            return self._steps_seen
        if self._coming_step is not None and self._asked_unanswered:
            return self._coming_step  # the step asked about last never delivered its record: it failed
        step = self._steps_seen
        self._steps_seen += 1
        self._asked_unanswered = True
        return step

    def _count_step(self, *_: object) -> None:
        self._steps_seen += 1

    def _started(self) -> None:
        self._asked_unanswered = False
        register = getattr(self.method, "register_step_post_hook", None)
        has_count = isinstance(getattr(self.method, "steps_taken", None), int)
        if callable(register) and not has_count and self._step_counter is None:
            self._step_counter = register(self._count_step)

    def detach(self) -> None:
        super().detach()
        if self._step_counter is not None:
            self._step_counter.remove()
            self._step_counter = None

    @torch.no_grad()
    def __call__(self, record: StepRecord) -> None:
        """Measure one step from its record (called by the method after the update)."""
        grads, updates = record.task_grads, record.task_updates
        if grads is None:
            self.detach()  # a retry of the (applied) step must not meet the same error again
            raise RecorderError(
                f"method {_method_label(self.method)} handed the recorder a step record without task_grads "
                "(per-task gradients): the recorder measures balance from what the method computed and never "
                "runs extra backward passes. This step itself was applied; the recorder has detached, so "
                "training can go on without it"
            )
        step = self._coming_step
        if step is None:  # called directly, without wants_record()
            step = self._steps[-1] + 1 if self._steps else 0
        self._coming_step = None
        self._asked_unanswered = False

        layout_index = self._layout_index(record, grads, updates)
        with _one_cpu_thread(record.losses.device):
            vector = self._measure(layout_index, record, grads, updates)

        self._steps.append(step)
        self._step_layouts.append(layout_index)
        if vector.device.type == "cpu":
            self._values.append(vector)
        else:
            self._pending.append(vector)
            if len(self._pending) >= _TRANSFER_BATCH:
                self._transfer()
        if self.flush_every is not None and len(self._steps) - self._flushed >= self.flush_every:
            self._flush_during_step()

    def _flush_during_step(self) -> None:
        """Flush from inside a step that was already applied: report a failure, never raise it."""
        try:
            self.flush()
        except Exception as error:  # noqa: BLE001 - whatever broke the write, the step stands
            self.errors.append(error)
            warnings.warn(
                RecorderWriteWarning(
                    f"the recorder could not write step {self._steps[-1]} to {self.run_dir} ({type(error).__name__}: "
                    f"{error}); the training step itself was applied; the {len(self._steps) - self._flushed} unwritten "
                    "step(s) stay in memory and are written by the next flush or save()"
                ),
                stacklevel=4,
            )

    def _measure(
        self, layout_index: int, record: StepRecord, grads: TaskGradients, updates: TaskGradients | None
    ) -> Tensor:
        """The step's raw numbers as one flat vector, in the order of its layout (see :class:`Layout`)."""
        grad_plan, update_plan = self._plans[layout_index]
        pieces: list[Tensor] = []
        for j in grad_plan:
            if j is None:
                continue
            flat = _flat(grads.grads[j])
            # The Gram matrix gives every norm (its diagonal) and every cosine at once.
            pieces.append((flat @ flat.T).reshape(-1))
        for j in update_plan:
            if j is None or updates is None:
                continue
            pieces.append(torch.linalg.vector_norm(_flat(updates.updates[j]), dim=1))
        pieces.append(record.losses.detach().reshape(-1))
        device = pieces[0].device
        return torch.cat(
            [p.to(device=device, dtype=torch.float64 if p.dtype == torch.float64 else torch.float32) for p in pieces]
        )

    def _layout_index(self, record: StepRecord, grads: TaskGradients, updates: TaskGradients | None) -> int:
        """The layout of this step's raw vector.  Without a split (``updates`` is ``None``) it has no
        update entries: the step's update rows are absent from the tables."""
        key = (
            record.task_names,
            tuple(map(id, grads.params)),
            grads.tasks,
            None if updates is None else tuple(map(id, updates.params)),
            None if updates is None else updates.tasks,
        )
        index = self._layouts.get(key)
        if index is not None:
            return index
        if grads.task_names != record.task_names or (updates is not None and updates.task_names != record.task_names):
            update_names = None if updates is None else updates.task_names
            raise RecorderError(
                f"method {_method_label(self.method)}: the record's task names {record.task_names} differ from "
                f"those of its gradients {grads.task_names} or updates {update_names}"
            )
        grad_at = {id(p): j for j, p in enumerate(grads.params) if grads.tasks[j]}
        update_at = {} if updates is None else {id(p): j for j, p in enumerate(updates.params) if updates.tasks[j]}
        ids = sorted(set(grad_at) | set(update_at), key=lambda i: self._order.get(i, len(self._order)))
        unnamed = iter(range(len(ids)))
        layers = tuple(self._names.get(i) or f"(unnamed).{next(unnamed)}" for i in ids)
        grad_plan = tuple(grad_at.get(i) for i in ids)
        update_plan = tuple(update_at.get(i) for i in ids)
        layout = Layout(
            task_names=record.task_names,
            layers=layers,
            grad_tasks=tuple(grads.tasks[j] if j is not None else () for j in grad_plan),
            update_tasks=tuple(updates.tasks[j] if updates is not None and j is not None else () for j in update_plan),
        )
        self._layouts[key] = index = len(self._layout_list)
        self._layout_list.append(layout)
        self._plans.append((grad_plan, update_plan))
        return index

    def _transfer(self) -> None:
        if not self._pending:
            return
        sizes = [len(v) for v in self._pending]
        # One device-to-host copy for many steps.
        self._values.extend(torch.cat(self._pending).cpu().split(sizes))
        self._pending.clear()

    # -- what was recorded ---------------------------------------------------------------------------

    @property
    def steps(self) -> list[int]:
        """The indices of the recorded steps."""
        return list(self._steps)

    def __len__(self) -> int:
        """The number of recorded steps."""
        return len(self._steps)

    def to_frame(self, level: Level = "parameter", *, start: int = 0, stop: int | None = None) -> pd.DataFrame:
        """The tidy table of everything recorded (see :data:`mao_lab.recorder.METRICS` for the metrics).

        Args:
            level: ``"parameter"`` (one layer per parameter tensor) or ``"module"`` (parameters of a
                module aggregated, see :func:`mao_lab.recorder.by_module`).
            start, stop: a slice of the recorded steps (by position, not step index).
        """
        if level not in ("parameter", "module"):
            raise ValueError(f"level must be 'parameter' or 'module', got {level!r}")
        self._transfer()
        positions = range(len(self._steps))[start:stop]
        if not positions:
            return empty_frame()
        steps = np.asarray(self._steps, dtype=np.int64)
        layouts = np.asarray(self._step_layouts)
        parts = []
        for index in sorted(set(layouts[list(positions)].tolist())):
            chosen = [i for i in positions if layouts[i] == index]
            values = torch.stack([self._values[i] for i in chosen]).double().numpy()
            parts.append(decode(self._layout_list[index], steps[chosen], values).frame())
        frame = (
            parts[0]
            if len(parts) == 1
            else normalise_dtypes(
                pd.concat(
                    [p.astype({c: object for c in p.columns if c not in ("step", "value")}) for p in parts],
                    ignore_index=True,
                ).sort_values("step", kind="stable", ignore_index=True)
            )
        )
        return by_module(frame) if level == "module" else frame

    def layers(self) -> pd.DataFrame:
        """One row per layer seen at the latest recorded step: its module, kind, owner and tasks.

        ``kind`` is ``"shared"`` when more than one task reaches the parameter, ``"task"`` otherwise;
        ``owner`` names the task of a task-specific parameter.
        """
        if not self._step_layouts:
            return pd.DataFrame(columns=["module", "kind", "owner", "tasks"]).rename_axis("layer")
        layout = self._layout_list[self._step_layouts[-1]]
        rows = []
        for i, layer in enumerate(layout.layers):
            tasks = [layout.task_names[k] for k in layout.tasks_of(i)]
            shared = len(tasks) > 1
            rows.append(
                (layer, module_of(layer), "shared" if shared else "task", None if shared else tasks[0], tuple(tasks))
            )
        return pd.DataFrame(rows, columns=["layer", "module", "kind", "owner", "tasks"]).set_index("layer")

    # -- storage ---------------------------------------------------------------------------------------

    def flush(self) -> Path | None:
        """Write the steps recorded since the last flush to a new part file in ``run_dir``.

        Returns the part's path (``None`` when nothing new was recorded).  Parts are complete files,
        written atomically; :func:`mao_lab.recorder.load_run` reads them when the run never finished.
        """
        if self.run_dir is None:
            raise ValueError("flush needs a run_dir (give one to the Recorder)")
        if self._flushed == len(self._steps):
            return None
        self._claim_run_dir()
        self._repair_run_dir()
        frame = self.to_frame(start=self._flushed)
        path = part_path(self.run_dir, self._parts_written + 1)
        write_table(frame, path)
        self._parts_written += 1
        self._flushed = len(self._steps)
        return path

    def _repair_run_dir(self) -> None:
        """If files this run wrote were removed (the folder cleaned mid-run), write them again from memory."""
        assert self.run_dir is not None
        ours = [part_path(self.run_dir, i) for i in range(1, self._parts_written + 1)]
        if self._params_given and not (self.run_dir / PARAMS_FILE).is_file():
            write_params(self.run_dir, self.params)
        if all(p.is_file() for p in ours):
            return
        for path in ours:  # the survivors go too: the next part holds every recorded step, once
            path.unlink(missing_ok=True)
        self._flushed = 0
        warnings.warn(
            RecorderWriteWarning(
                f"files of this run disappeared from {self.run_dir}; every recorded step is written again"
            ),
            stacklevel=3,
        )

    def _claim_run_dir(self) -> None:
        """Before this run's first write: remove an earlier run's metrics, then its parameters.

        In that order, so that at no moment does the folder hold this run's ``params.json`` beside
        the earlier run's metrics.
        """
        if not self._stale or self.run_dir is None:
            return
        for path in full_tables(self.run_dir) + part_paths(self.run_dir):
            path.unlink(missing_ok=True)
        if self._params_given:
            write_params(self.run_dir, self.params)
        else:
            (self.run_dir / PARAMS_FILE).unlink(missing_ok=True)
        self._stale = False

    def save(self, run_dir: RunPath | None = None, params: Mapping[str, Any] | None = None) -> Path:
        """Write the whole table and the run's parameters to a run folder; returns the table's path.

        Args:
            run_dir: the folder (default: the recorder's ``run_dir``).
            params: the run's parameters (default: those given to the recorder); saved as ``params.json``.
        """
        folder = Path(run_dir) if run_dir is not None else self.run_dir
        if folder is None:
            raise ValueError("save needs a run_dir (give one here or to the Recorder)")
        if params is not None:
            self.params = dict(params)
        own = folder == self.run_dir
        if own:
            self._claim_run_dir()
        # In its own run_dir the part files are this run's flushes: save_run keeps them until the full
        # table is in place.  Elsewhere, parts belong to another run and go before the new params.json.
        path = save_run(folder, self.to_frame(), self.params, parts_of_this_run=own)
        if own:
            self._flushed = len(self._steps)
        return path

    def __repr__(self) -> str:
        state = "attached" if self.attached else "detached"
        return f"Recorder({_method_label(self.method)}, every={self.every}, steps={len(self)}, {state})"


def record(model: NamedParameters, method: Observable, every: int = 1, **options: Any) -> Recorder:
    """Attach a :class:`Recorder` to ``method``: the one line to add to a training script."""
    return Recorder(model, method, every, **options)


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run the recorder's CPU work on one intra-op thread.

    Its work is a few dozen reductions of small tensors: threads cannot speed them up, but every
    parallel region waits for the pool's other threads, and on a busy machine (another process on
    the cores) each such wait costs a scheduler time slice.  Measured on the benchmark's model with
    two threads and a second busy process: 0.8 ms per recorded step on one thread, 3 to 90 ms on two.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _usable_folder(run_dir: RunPath) -> Path:
    """``run_dir`` as a folder this process can write, created if missing; a clear error otherwise."""
    try:
        folder = Path(run_dir)
    except TypeError:
        raise TypeError(f"run_dir must be a path, got {type(run_dir).__name__}") from None
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"run_dir {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except (OSError, ValueError) as error:  # ValueError: a NUL character in the path
        raise type(error)(f"run_dir {folder} cannot be used as a writable folder: {error}") from error
    return folder


def _flat(stacked: Tensor) -> Tensor:
    """``(n, *shape)`` to ``(n, numel)``; half precision is widened so that sums of squares stay exact enough."""
    flat = stacked.detach().reshape(stacked.shape[0], -1)
    return flat.float() if flat.dtype in (torch.float16, torch.bfloat16) else flat


def _parameter_names(model: NamedParameters) -> tuple[dict[int, str], dict[int, int]]:
    """``id(param) -> name`` and ``id(param) -> position`` (the model's order)."""
    if isinstance(model, nn.Module):
        named = list(model.named_parameters())
    elif isinstance(model, Mapping):
        named = list(model.items())
    else:
        named = list(model)
    names: dict[int, str] = {}
    order: dict[int, int] = {}
    for name, p in named:
        if not isinstance(p, Tensor):
            raise TypeError(f"parameter {name!r} is a {type(p).__name__}, not a tensor")
        names.setdefault(id(p), str(name))
        order.setdefault(id(p), len(order))
    return names, order


def _method_parameters(method: object) -> list[torch.Tensor] | None:
    """The trainable parameters a method or torch optimizer steps, or ``None`` if it does not say."""
    params = getattr(method, "params", None)
    if isinstance(params, (list, tuple)) and all(isinstance(p, torch.Tensor) for p in params):
        return list(params)
    groups = getattr(method, "param_groups", None)
    if isinstance(groups, list):
        params = [p for group in groups for p in group.get("params", [])]
        return [p for p in params if isinstance(p, torch.Tensor) and p.requires_grad]
    return None


def _check_same_parameters(names: dict[int, str], method: object) -> None:
    """Refuse a model that names none of the method's parameters (another model than the one it trains)."""
    params = _method_parameters(method)
    if not params:
        return
    named = sum(id(p) in names for p in params)
    if named == 0:
        raise ValueError(
            f"the model names none of the {len(params)} parameters that {type(method).__name__} trains: pass the model "
            "(or the name -> parameter mapping) whose parameters were given to the method"
        )
