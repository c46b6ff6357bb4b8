"""The study's design: which problems, task sets, methods, learning rates, seeds and budgets.

Every training run of the study is one :class:`RunConfig` (a *setting* — a problem and a task set — and a
method with its hyperparameters) trained at one learning rate and one seed.  A :class:`StudyDesign` lists
the configurations and the budget; :func:`full_design` is what ``make study`` runs and :func:`smoke_design`
a tiny copy for CI whose numbers mean nothing.

Settings (``docs/references.md`` §4 and §5 for the problems):

=============  ==============================================================  =====================
setting        tasks                                                           used by
=============  ==============================================================  =====================
``mm4``        MultiMNIST: left digit, right digit, digit sum, reconstruction  M1, M2, P1, P3, P4
``mm_same``    MultiMNIST: left digit, right digit (one nature)                P2
``mm_diff``    MultiMNIST: left digit, digit sum, reconstruction (different)   P2
``reg2/4/8``   GradNorm's imbalanced regression with T = 2, 4, 8 tasks         M1
=============  ==============================================================  =====================

Single-task baselines (``single-<task>``: the same network with that task's head only, Adam) get the
same learning-rate grid, seeds and steps as every multi-task method.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "MM4_TASKS",
    "RunConfig",
    "SINGLE_TASK_PREFIX",
    "StudyDesign",
    "full_design",
    "smoke_design",
]

Problem = Literal["multimnist", "regression"]

MM4_TASKS: tuple[str, ...] = ("left", "right", "sum", "reconstruct")
SAME_NATURE_TASKS: tuple[str, ...] = ("left", "right")
DIFFERENT_NATURE_TASKS: tuple[str, ...] = ("left", "sum", "reconstruct")
SINGLE_TASK_PREFIX = "single-"

WEIGHTINGS: tuple[str, ...] = ("uw", "dwa", "gradnorm")
"""The loss weightings compared (uncertainty weighting, dynamic weight average, GradNorm)."""
AGGREGATORS: tuple[str, ...] = ("mgda", "pcgrad", "cagrad", "imtl_g")
"""The gradient aggregators compared."""
INDEPENDENT: tuple[str, ...] = ("ius", "io")
"""Pascal et al.'s independent task steps."""

# Measured median step times on one thread (MultiMNIST, 4 tasks, batch 64), relative to Adam on the sum;
# only used to start the longest points first.
_RELATIVE_COST: dict[str, float] = {
    "sum": 1.0, "uw": 1.1, "dwa": 1.0, "gradnorm": 1.1, "mgda": 2.4, "pcgrad": 2.1, "cagrad": 2.6,
    "imtl_g": 2.0, "mtadam": 2.3, "mao": 2.0, "ius": 3.9, "io": 4.0, "grouping": 2.0, "single": 0.8,
}


@dataclass(frozen=True)
class RunConfig:
    """One configuration: a setting (problem + tasks) and a method with its hyperparameters.

    Attributes:
        name: unique, ``<setting>.<variant>``, e.g. ``mm4.mao``, ``mm4.grouping2``, ``mm4.single-left``.
        setting: ``mm4``, ``mm_same``, ``mm_diff``, ``reg2``, ...
        problem: ``multimnist`` or ``regression``.
        tasks: the task names (MultiMNIST tasks, or ``task0..`` for the regression).
        method: a name of :func:`mao_lab.methods.available`; a single-task baseline trains ``sum`` on one task.
        variant: the method as the claims name it (``mao``, ``grouping2``, ``single-left``).
        hyperparameters: passed to :func:`mao_lab.methods.make`.
    """

    name: str
    setting: str
    problem: Problem
    tasks: tuple[str, ...]
    method: str
    variant: str
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)

    @property
    def single_task(self) -> bool:
        return self.variant.startswith(SINGLE_TASK_PREFIX)

    @property
    def relative_cost(self) -> float:
        """A rough cost per step (Adam on the sum of 4 MultiMNIST tasks = 1)."""
        key = "single" if self.single_task else self.method
        scale = len(self.tasks) / 4 if self.method in ("ius", "io") else 1.0
        return _RELATIVE_COST.get(key, 2.0) * max(scale, 0.25) * (0.2 if self.problem == "regression" else 1.0)

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "tasks": list(self.tasks), "hyperparameters": dict(self.hyperparameters)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        return cls(**{**data, "tasks": tuple(data["tasks"]), "hyperparameters": dict(data.get("hyperparameters", {}))})


def _multitask(setting: str, tasks: Sequence[str], variant: str, problem: Problem = "multimnist") -> RunConfig:
    method, hyperparameters = variant, {}
    if variant.startswith("grouping"):
        method, hyperparameters = "grouping", {"group_size": int(variant.removeprefix("grouping"))}
    return RunConfig(f"{setting}.{variant}", setting, problem, tuple(tasks), method, variant, hyperparameters)


def _single(setting: str, task: str) -> RunConfig:
    variant = f"{SINGLE_TASK_PREFIX}{task}"
    return RunConfig(f"{setting}.{variant}", setting, "multimnist", (task,), "sum", variant, {})


@dataclass(frozen=True)
class StudyDesign:
    """The whole study: configurations, learning-rate grid, seeds and training budget.

    Attributes:
        lrs: the learning-rate grid every configuration is tuned on (at least three values).
        tuning_seeds: the seeds the rate is chosen on (at least two in the full study): the criterion is the mean
            over them, so one seed's luck does not choose a rate at which the others fail.  The first runs every
            rate; the others run the ``finalists`` best rates by the first seed's criterion.  Each tuning seed's
            run at the chosen rate is also that seed's final run.
        finalists: how many rates (best first by the first tuning seed) the other tuning seeds run; ``None``:
            every rate.  Two of three rates keep the full study within its 90 minutes (README).
        seeds: the final seeds (the tuning seeds among them), at least five in the full study.
        steps: training steps of every MultiMNIST run (batches of ``batch_size``).
        regression_steps: training steps of every regression run.
        batch_size: the batch size of every run.
        num_train, num_val: MultiMNIST training images, and validation images carved from the end of the
            training file (never the test file).
        num_test: MultiMNIST test images.
        regression_samples: samples of each regression problem (80 % train, of which ``regression_val``
            are validation; 20 % test).
        regression_tasks: the task counts T of the regression settings.
        eval_every: validation metrics are computed every this many steps (the validation curve).
        record_every: the recorder logs balance every this many steps.
        mm4_methods, p2_methods, regression_methods: the multi-task variants per setting.
        grouping_sizes: P4's group sizes strictly between 1 and T (1 is IUS, T is Adam on the sum).
        configs_per_point: how many configurations one notebook run trains (1 in the full study: an
            interrupted study loses at most one configuration's runs).
        smoke: whether this is a smoke study (its numbers mean nothing).
    """

    lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
    tuning_seeds: tuple[int, ...] = (0, 1)
    finalists: int | None = 2
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    steps: int = 1200
    regression_steps: int = 1000
    batch_size: int = 64
    num_train: int = 9000
    num_val: int = 1000
    num_test: int = 2000
    regression_samples: int = 5000
    regression_val: int = 1000
    regression_tasks: tuple[int, ...] = (2, 4, 8)
    eval_every: int = 100
    record_every: int = 20
    mm4_methods: tuple[str, ...] = ("sum", *WEIGHTINGS, *AGGREGATORS, "mtadam", "mao", *INDEPENDENT, "grouping2", "grouping3")
    p2_methods: tuple[str, ...] = ("sum", *INDEPENDENT)
    regression_methods: tuple[str, ...] = ("sum", "mao")
    configs_per_point: int = 1
    smoke: bool = False

    def __post_init__(self) -> None:
        if len(self.lrs) < 3 or len(set(self.lrs)) != len(self.lrs) or not all(lr > 0 for lr in self.lrs):
            raise ValueError(f"lrs must hold at least three different positive learning rates, got {self.lrs}")
        if (not self.tuning_seeds or not set(self.tuning_seeds) <= set(self.seeds) or len(set(self.seeds)) != len(self.seeds)
                or len(set(self.tuning_seeds)) != len(self.tuning_seeds)):
            raise ValueError(f"seeds must be different and include the different tuning_seeds={self.tuning_seeds}, got {self.seeds}")
        if self.finalists is not None and (isinstance(self.finalists, bool) or not isinstance(self.finalists, int)
                                           or not 1 <= self.finalists <= len(self.lrs)):
            raise ValueError(f"finalists must be None or an int in 1..{len(self.lrs)} (the rates), got {self.finalists!r}")
        if not self.smoke and len(self.seeds) < 5:
            raise ValueError(f"the full study needs at least 5 seeds, got {self.seeds}")
        for name in ("steps", "regression_steps", "batch_size", "num_train", "num_val", "num_test", "regression_samples",
                     "regression_val", "eval_every", "record_every", "configs_per_point"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.num_train + self.num_val > 10_000:
            raise ValueError(f"num_train + num_val must fit the 10000 training images, got {self.num_train} + {self.num_val}")
        if self.regression_val >= 0.8 * self.regression_samples - self.batch_size:
            raise ValueError(f"regression_val={self.regression_val} leaves too few regression training samples")

    def configs(self) -> list[RunConfig]:
        """Every configuration of the study, in a stable order."""
        configs = [_multitask("mm4", MM4_TASKS, v) for v in self.mm4_methods]
        configs += [_single("mm4", task) for task in MM4_TASKS]
        configs += [_multitask("mm_same", SAME_NATURE_TASKS, v) for v in self.p2_methods]
        configs += [_multitask("mm_diff", DIFFERENT_NATURE_TASKS, v) for v in self.p2_methods]
        for count in self.regression_tasks:
            tasks = tuple(f"task{k}" for k in range(count))
            configs += [_multitask(f"reg{count}", tasks, v, "regression") for v in self.regression_methods]
        return configs

    def config(self, name: str) -> RunConfig:
        for config in self.configs():
            if config.name == name:
                return config
        raise KeyError(f"no configuration {name!r} in the design")

    @property
    def tuning_seed(self) -> int:
        """The first tuning seed: it runs every rate of the grid."""
        return self.tuning_seeds[0]

    @property
    def final_seeds(self) -> tuple[int, ...]:
        """The seeds the final phase trains (the tuning seeds' runs at the chosen rate are reused)."""
        return tuple(s for s in self.seeds if s not in self.tuning_seeds)

    @property
    def tuning_runs_per_config(self) -> int:
        """Runs of one configuration in the tuning phases: every rate at the first tuning seed, the finalists at
        the others.

        >>> StudyDesign().tuning_runs_per_config, StudyDesign(finalists=None).tuning_runs_per_config
        (5, 6)
        """
        return len(self.lrs) + (len(self.tuning_seeds) - 1) * (self.finalists or len(self.lrs))

    def steps_of(self, config: RunConfig) -> int:
        return self.regression_steps if config.problem == "regression" else self.steps

    def as_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudyDesign:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names - {"tuning_seed"})
        if unknown:
            raise ValueError(f"unknown design fields {unknown}; known: {sorted(names)}")
        data = dict(data)
        if "tuning_seed" in data:  # a study made before rates were chosen on several seeds: one tuning seed, every rate
            if "tuning_seeds" in data:
                raise ValueError("a design has tuning_seeds or the older tuning_seed, not both")
            data["tuning_seeds"], data["finalists"] = [data.pop("tuning_seed")], None
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def full_design() -> StudyDesign:
    """The full study that ``make study`` runs, sized for at most 90 minutes on 2 quiet cores with 2 workers.

    1200 MultiMNIST steps of 64 images (8.5 epochs of the 9000 training images).  A 1600-step study (the same
    design with ``--steps 1600``, README) showed the best method's validation Δm% level off by step 1200 under
    :func:`~mao_lab.study.levelling_off`, and the 1600-step study's measured phases add up to more than 90
    minutes, so the budget cut steps (from 1600) and kept the minimal grid of three rates, never the five seeds.
    """
    return StudyDesign()


def smoke_design() -> StudyDesign:
    """A tiny study with every configuration and claim, for CI: its numbers mean nothing."""
    return StudyDesign(
        seeds=(0, 1, 2), steps=4, regression_steps=4, batch_size=16, num_train=64, num_val=32, num_test=32,
        regression_samples=400, regression_val=64, eval_every=2, record_every=2, configs_per_point=100, smoke=True,
    )
