"""``python -m mao_lab.bench step``: MAO's training step against TorchJD and against the physical limit.

Any method that needs every task's gradient of every shared parameter must at least run one forward
pass, one backward pass through the trunk per task and one backward pass per head.  The ``limit``
candidate times exactly that, with bare ``torch.autograd.grad`` calls (each task's gradients dropped
as soon as they exist).  The other candidates take a full training step on their own copy of the same
model, on the same batch:

- ``mao``: forward, then ``MAO.step(losses)`` (per-task gradients, checks and update);
- ``mao_registry``: the same step through the registry, ``make("mao", ...).step(closure)``, as the
  notebooks and experiments run it (it shares ``MAO.step``'s step: ``registry_vs_mao`` should be ~1);
- ``mao_features``: the same with ``step(losses, features=...)`` (head backward, then trunk backward);
- ``torchjd``: forward, TorchJD's ``mtl_backward(..., parallel_chunk_size=1)``,
  ``jac_to_grad(shared, Mean())`` and ``torch.optim.Adam(foreach=True).step()``;
- with ``vmap`` (the default on CUDA): ``mao_vmap`` (``step(..., features=..., batched=True)``) and
  ``torchjd_vmap`` (``parallel_chunk_size=None``), both backpropagating all tasks through the trunk
  in one vmapped call.

The update alone is timed too: ``mao_update`` is ``MAO._apply_task_gradients`` (the update of
``MAO.step(task_grads=...)``) on fixed per-task gradients (finiteness check included), ``adam_update`` is
``Adam(foreach=True).step()`` on the same parameters.  MAO keeps one Adam per task, so the goal is
``mao_update <= T * adam_update``.  The same update is timed with each implementation of :func:`mao_lab.mao`:
``mao_update_single`` (``foreach=False``, the reference loop), ``mao_update_foreach`` (``foreach=True``) and
``mao_update_fused`` (``fused=True``); ``update_foreach_vs_single`` and ``update_fused_vs_single`` are what
chose the default on each device (the faster; see ``mao_lab._mao_functional._default_to_fused_or_foreach``),
``update_default_vs_single`` what the default gains over the reference and ``update_fused_vs_default`` what
fusing every parameter (one task's too) would add.

All candidates of a configuration are timed interleaved (see :mod:`._timing`); every ratio is a ratio
of medians, and ``paired`` gives the median of the per-repetition ratios, which cancels slow drifts of
a shared machine.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchjd.aggregation import Mean

from .. import MAO, compute_task_gradients
from ..methods import make
from ..problems import MultiTaskNet, multimnist_model, seeded_init, task_losses
from ._timing import Timings, fix_threads, interleaved_timings, synchronizer, thread_clock

__all__ = ["BenchConfig", "STEP_CONFIGS", "run_step_benchmark"]

MNIST_TASKS = {2: ("left", "right"), 4: ("left", "right", "sum", "reconstruct")}
MLP_WIDTHS = (256, 1024, 640, 128)  # 1,001,216 shared parameters
BATCH = 256
QUICK_BATCH = 32
LR = 1e-3
BUDGET_S = 40.0  # timing per configuration in a full run: the number of repetitions is what fits
MIN_REPETITIONS = 7
MAX_REPETITIONS = 60
QUICK_REPETITIONS = 2


@dataclass(frozen=True)
class BenchConfig:
    """One model and task count to benchmark: ``multimnist_cnn`` (T = 2 or 4) or ``mlp_1m`` (any T)."""

    model: str
    tasks: int


STEP_CONFIGS: tuple[BenchConfig, ...] = (
    BenchConfig("multimnist_cnn", 2),
    BenchConfig("multimnist_cnn", 4),
    BenchConfig("mlp_1m", 8),
    BenchConfig("mlp_1m", 16),
)

LossFn = Callable[[Sequence[Tensor]], list[Tensor]]


def _mlp_model(num_tasks: int, seed: int) -> MultiTaskNet:
    """A ReLU MLP trunk of about 1M parameters and one scalar regression head per task."""
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(MLP_WIDTHS[:-1], MLP_WIDTHS[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    with seeded_init(seed):
        trunk = nn.Sequential(*layers)
        heads = [nn.Sequential(nn.Linear(MLP_WIDTHS[-1], 1), nn.Flatten(0)) for _ in range(num_tasks)]
        return MultiTaskNet(trunk, heads)


def _problem(
    config: BenchConfig, seed: int, device: torch.device, batch: int = BATCH
) -> tuple[MultiTaskNet, Tensor, LossFn]:
    """The model, one fixed batch of inputs, and the per-task losses of the model's outputs on it."""
    g = torch.Generator().manual_seed(seed)
    if config.model == "multimnist_cnn":
        if config.tasks not in MNIST_TASKS:
            raise ValueError(f"the MultiMNIST CNN is benchmarked with 2 or 4 tasks, not {config.tasks}")
        names = MNIST_TASKS[config.tasks]
        model = multimnist_model(names, seed=seed)
        x = torch.rand(batch, 1, 28, 28, generator=g)
        targets = []
        for name in names:
            if name in ("left", "right"):
                targets.append(torch.randint(0, 10, (batch,), generator=g))
            elif name == "sum":
                targets.append(torch.rand(batch, generator=g))
            else:
                targets.append(torch.rand(batch, 1, 28, 28, generator=g))
        targets = [t.to(device) for t in targets]

        def losses(outputs: Sequence[Tensor]) -> list[Tensor]:
            return task_losses(outputs, targets, names)

    elif config.model == "mlp_1m":
        model = _mlp_model(config.tasks, seed)
        x = torch.randn(batch, MLP_WIDTHS[0], generator=g)
        # Targets of very different scales: the setting MAO is for (it does not change the cost).
        y = torch.randn(config.tasks, batch, generator=g) * torch.logspace(0, 2, config.tasks).unsqueeze(1)
        y = y.to(device)

        def losses(outputs: Sequence[Tensor]) -> list[Tensor]:
            return [F.mse_loss(out, y[k]) for k, out in enumerate(outputs)]

    else:
        raise ValueError(f"unknown benchmark model {config.model!r} (known: 'multimnist_cnn', 'mlp_1m')")
    return model.to(device), x.to(device), losses


def _split(model: MultiTaskNet) -> tuple[list[Tensor], list[list[Tensor]]]:
    return list(model.shared_parameters()), [list(model.task_parameters(k)) for k in range(model.num_tasks)]


def _candidates(
    config: BenchConfig, seed: int, device: torch.device, vmap: bool, batch: int
) -> tuple[dict[str, Callable[[], object]], dict[str, object]]:
    """The timed callables, each with its own copy of the model, and the objects to inspect afterwards."""
    model, x, loss_fn = _problem(config, seed, device, batch)
    mao_opt = MAO((mao_model := copy.deepcopy(model)).parameters(), lr=LR)
    registry_method = make("mao", (registry_model := copy.deepcopy(model)).parameters(), lr=LR)
    features_opt = MAO((features_model := copy.deepcopy(model)).parameters(), lr=LR)
    adam = torch.optim.Adam((torchjd_model := copy.deepcopy(model)).parameters(), lr=LR, foreach=True)
    candidates: dict[str, Callable[[], object]] = {
        "limit": _limit_step(copy.deepcopy(model), x, loss_fn),
        "mao": lambda: mao_opt.step(loss_fn(mao_model(x))),
        "mao_registry": lambda: registry_method.step(lambda: loss_fn(registry_model(x))),
        "mao_features": lambda: _mao_features_step(features_model, features_opt, x, loss_fn, False),
        "torchjd": lambda: _torchjd_step(torchjd_model, adam, x, loss_fn, 1),
        **_update_candidates(model, x, loss_fn),
    }
    if vmap:
        vmap_mao_opt = MAO((vmap_mao_model := copy.deepcopy(model)).parameters(), lr=LR)
        vmap_adam = torch.optim.Adam((vmap_torchjd_model := copy.deepcopy(model)).parameters(), lr=LR, foreach=True)
        candidates["mao_vmap"] = lambda: _mao_features_step(vmap_mao_model, vmap_mao_opt, x, loss_fn, True)
        candidates["torchjd_vmap"] = lambda: _torchjd_step(vmap_torchjd_model, vmap_adam, x, loss_fn, None)
    return candidates, {"model": model, "mao_opt": mao_opt, "adam": adam}


_MEAN = Mean()  # TorchJD's mean of the Jacobian's rows, made once (not inside the timed step)


def _limit_step(model: MultiTaskNet, x: Tensor, loss_fn: LossFn) -> Callable[[], None]:
    """The physical limit: a forward pass, then one backward pass per task through its head and the trunk."""
    shared, heads = _split(model)

    def limit() -> None:
        losses = loss_fn(model(x))
        for k, loss in enumerate(losses):
            torch.autograd.grad(loss, shared + heads[k], retain_graph=k < len(losses) - 1)

    return limit


def _mao_features_step(model: MultiTaskNet, opt: MAO, x: Tensor, loss_fn: LossFn, batched: bool) -> None:
    features = model.features(x)
    opt.step(loss_fn([head(features) for head in model.heads]), features=features, batched=batched)


def _torchjd_step(
    model: MultiTaskNet, opt: torch.optim.Optimizer, x: Tensor, loss_fn: LossFn, parallel_chunk_size: int | None
) -> None:
    """TorchJD's multi-task step: ``mtl_backward``, the mean of the Jacobian's rows, then Adam."""
    from torchjd.autojac import jac_to_grad, mtl_backward

    features = model.features(x)
    losses = loss_fn([head(features) for head in model.heads])
    shared, heads = _split(model)
    mtl_backward(
        losses, features=features, tasks_params=heads, shared_params=shared, parallel_chunk_size=parallel_chunk_size
    )
    jac_to_grad(shared, _MEAN)
    opt.step()
    opt.zero_grad(set_to_none=True)


def _update_candidates(model: MultiTaskNet, x: Tensor, loss_fn: LossFn) -> dict[str, Callable[[], object]]:
    """The update alone, on fixed gradients: MAO's per-task gradients, Adam's of the summed loss."""
    update_model = copy.deepcopy(model)
    update_params = list(update_model.parameters())
    task_grads = compute_task_gradients(loss_fn(update_model(x)), update_params)
    adam_model = copy.deepcopy(model)
    sum(loss_fn(adam_model(x))).backward()
    adam_update_opt = torch.optim.Adam(adam_model.parameters(), lr=LR, foreach=True)
    candidates: dict[str, Callable[[], object]] = {"adam_update": adam_update_opt.step}
    for name, flags in UPDATE_IMPLEMENTATIONS.items():
        # Each on its own copy of the parameters, on the same gradients (_apply_task_gradients reads
        # them by position, so a copy's parameters go in place of the originals).
        params = [p.detach().clone().requires_grad_(p.requires_grad) for p in update_params]
        grads = type(task_grads)(task_grads.task_names, tuple(params), task_grads.tasks, task_grads.grads)
        opt = MAO(params, lr=LR, **flags)
        candidates[name] = functools.partial(opt._apply_task_gradients, grads)
    return candidates


UPDATE_IMPLEMENTATIONS: dict[str, dict[str, bool]] = {
    "mao_update": {},  # the default
    "mao_update_single": {"foreach": False},
    "mao_update_foreach": {"foreach": True},
    "mao_update_fused": {"fused": True},
}


def _state_bytes(opt: torch.optim.Optimizer, keys: Sequence[str]) -> int:
    return sum(
        t.numel() * t.element_size()
        for state in opt.state.values()
        for key, t in state.items()
        if key in keys and isinstance(t, Tensor)
    )


def _memory(inspect: dict[str, object], num_tasks: int) -> dict[str, float]:
    """The optimizer state after the timed steps (its peak: it only grows), against its expected size."""
    model, mao_opt, adam = inspect["model"], inspect["mao_opt"], inspect["adam"]
    assert isinstance(model, MultiTaskNet) and isinstance(mao_opt, MAO) and isinstance(adam, torch.optim.Optimizer)
    shared, heads = _split(model)
    n_shared = sum(p.numel() for p in shared)
    n_task = sum(p.numel() for ps in heads for p in ps)
    expected = (2 * num_tasks * n_shared + 2 * n_task) * shared[0].element_size()
    measured = _state_bytes(mao_opt, ("exp_avg", "exp_avg_sq"))
    reserve = getattr(mao_opt, "_task_gradient_reserve", None)
    return {
        "shared_params": n_shared,
        "task_specific_params": n_task,
        "optimizer_state_bytes": measured,
        "expected_state_bytes": expected,
        "state_vs_expected": measured / expected,
        "step_counter_bytes": _state_bytes(mao_opt, ("step",)),
        "held_gradient_bytes": reserve.nbytes() if reserve is not None else 0,
        "adam_state_bytes": _state_bytes(adam, ("exp_avg", "exp_avg_sq")),
    }


RATIOS = {
    "mao_vs_torchjd": ("mao", "torchjd", False),
    "mao_vs_limit": ("mao", "limit", False),
    "registry_vs_mao": ("mao_registry", "mao", False),  # make("mao") against MAO itself: the same step
    "update_vs_adam": ("mao_update", "adam_update", True),  # divided by T
    "mao_features_vs_torchjd": ("mao_features", "torchjd", False),
    "torchjd_vs_limit": ("torchjd", "limit", False),
    # The part of MAO's step that is its update: reading and writing 2*T moments per shared parameter
    # is memory traffic that no gradient computation can hide, and the limit above does not include it.
    "update_share_of_step": ("mao_update", "mao", False),
    # mao_lab.mao's implementations of the update, against each other.
    "update_foreach_vs_single": ("mao_update_foreach", "mao_update_single", False),
    "update_fused_vs_single": ("mao_update_fused", "mao_update_single", False),
    "update_default_vs_single": ("mao_update", "mao_update_single", False),
    "update_fused_vs_default": ("mao_update_fused", "mao_update", False),
}
VMAP_RATIOS = {
    "mao_vmap_vs_torchjd_vmap": ("mao_vmap", "torchjd_vmap", False),
    "mao_vmap_vs_limit": ("mao_vmap", "limit", False),
}


def _ratios(t: Timings, num_tasks: int, vmap: bool) -> tuple[dict[str, float], dict[str, float]]:
    """Ratios of medians, and medians of the per-repetition ratios."""
    ratios, paired = {}, {}
    for key, (top, bottom, per_task) in {**RATIOS, **(VMAP_RATIOS if vmap else {})}.items():
        scale = num_tasks if per_task else 1
        ratios[key] = t.median(top) / (scale * t.median(bottom))
        paired[key] = statistics.median(a / (scale * b) for a, b in zip(t.samples[top], t.samples[bottom]))
    return ratios, paired


def run_step_benchmark(
    quick: bool = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
    threads: int = 2,
    configs: Sequence[BenchConfig] = STEP_CONFIGS,
    progress: bool = True,
    budget_s: float | None = None,
    vmap: bool | None = None,
    cpu_time: bool = False,
) -> dict:
    """Run the step benchmark and return its JSON-ready result (see the module docstring).

    Args:
        quick: a run of seconds: batch 32, two repetitions; the ratios are then rough.
        seed: seeds the models and the batch.
        device: ``"cpu"`` or ``"cuda"``.
        threads: ``torch.set_num_threads``; the published numbers use 2.
        configs: what to run (default: the MultiMNIST CNN with 2 and 4 tasks, the 1M MLP with 8 and 16).
        progress: a tqdm bar on stderr.
        budget_s: seconds of timing per configuration in a full run (default 40); the number of
            repetitions (between 7 and 60) is what fits.
        vmap: also time the vmapped trunk backward (default: on CUDA only).
        cpu_time: time the thread's CPU time instead of the wall clock (CPU, ``threads=1`` only): on a
            machine that other work loads, waiting for a core is not counted.
    """
    dev = _checked_device(device)
    threads = fix_threads(threads)
    clock = thread_clock(threads, dev) if cpu_time else time.perf_counter
    vmap = dev.type == "cuda" if vmap is None else vmap
    batch = QUICK_BATCH if quick else BATCH
    started = time.perf_counter()
    load_before = _load_average()
    _warn_if_busy(dev, threads, load_before)
    results = []
    with _progress(len(configs), progress) as bar:
        for config in configs:
            results.append(_run_config(config, seed, dev, vmap, batch, quick, budget_s, bar, clock))
            bar.update(1)
    import torchjd

    return {
        "benchmark": "step",
        "device": str(dev),
        "device_name": _device_name(dev),
        "threads": threads,
        "clock": "thread CPU time" if cpu_time else "wall",
        "quick": quick,
        "seed": seed,
        "torch": torch.__version__,
        "torchjd": _version("torchjd", torchjd),
        "load_average": [load_before, _load_average()],
        "seconds": round(time.perf_counter() - started, 1),
        "configs": results,
    }


def _run_config(
    config: BenchConfig,
    seed: int,
    dev: torch.device,
    vmap: bool,
    batch: int,
    quick: bool,
    budget_s: float | None,
    bar: _Bar,
    clock: Callable[[], float] = time.perf_counter,
) -> dict:
    """Time every candidate of one configuration, interleaved; its ratios, memory and medians."""
    label = f"{config.model} T={config.tasks}"
    bar.set_postfix_str(f"{label}: warm-up")
    candidates, inspect = _candidates(config, seed, dev, vmap, batch)
    timings = interleaved_timings(
        candidates,
        repetitions=QUICK_REPETITIONS if quick else MAX_REPETITIONS,
        warmup=1 if quick else 3,
        min_sample_s=0.002 if quick else 0.02,
        budget_s=None if quick else (BUDGET_S if budget_s is None else budget_s),
        min_repetitions=MIN_REPETITIONS,
        sync=synchronizer(dev),
        on_plan=lambda reps: bar.set_postfix_str(f"{label}: {reps} repetitions"),
        clock=clock,
    )
    ratios, paired = _ratios(timings, config.tasks, vmap)
    entry: dict[str, object] = {"model": config.model, "tasks": config.tasks, "batch": batch, **ratios}
    entry.update(_memory(inspect, config.tasks))
    entry["repetitions"] = len(timings.samples["mao"])
    entry["paired"] = {k: round(v, 4) for k, v in paired.items()}
    entry["median_ms"] = {name: round(timings.median(name) * 1e3, 4) for name in candidates}
    entry["spread"] = {name: round(timings.spread(name), 4) for name in candidates}
    return _rounded(entry)


def _checked_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}: use 'cpu' or 'cuda'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but torch.cuda.is_available() is False on this machine")
    return dev


def _warn_if_busy(dev: torch.device, threads: int, load: float | None) -> None:
    cores = os.cpu_count() or 1
    if dev.type == "cpu" and load is not None and load + threads > cores + 0.5:
        print(
            f"bench step: the machine is busy (load average {load} on {cores} cores, {threads} threads "
            "asked for): threads that wait for each other on shared cores make every ratio unreliable",
            file=sys.stderr,
        )


class _Bar(Protocol):
    def set_postfix_str(self, text: str) -> None: ...
    def update(self, n: int) -> None: ...


class _NoBar:
    """Stands in for the tqdm bar when ``progress`` is off."""

    def set_postfix_str(self, text: str) -> None:
        pass

    def update(self, n: int) -> None:
        pass


@contextlib.contextmanager
def _progress(total: int, enabled: bool) -> Iterator[_Bar]:
    """A tqdm bar over the configurations on stderr (closed however the run ends), or nothing."""
    if not enabled:
        yield _NoBar()
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc="bench step", file=sys.stderr, unit="config")
    try:
        yield bar
    finally:
        bar.close()


def _load_average() -> float | None:
    """The machine's 1-minute load average: on a busy machine every ratio is noisier."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"{os.cpu_count()} CPU cores"


def _version(name: str, module: object) -> str:
    version = getattr(module, "__version__", None)
    if version:
        return str(version)
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version(name)
    except PackageNotFoundError:
        return "unknown"


def _rounded(entry: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v) for k, v in entry.items()}
