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

**Your problem** (``python -m mao_lab.study --problem package.module:factory --study-file study.toml``): a
design whose ``problem`` is an import path (:func:`mao_lab.problems.load_problem`) has the settings

=============  ==============================================================  =====================
setting        tasks                                                           used by
=============  ==============================================================  =====================
``all``        every task of the problem                                        M1, M2, P1, P3, P4
``same``       the problem's ``task_sets()["same_nature"]``, when it has one    P2
``diff``       the problem's ``task_sets()["different_nature"]``                P2
=============  ==============================================================  =====================

and no regression settings; :func:`problem_design` makes one, :func:`read_study_file` reads its TOML file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "MM4_TASKS",
    "SINGLE_TASK_PREFIX",
    "STUDY_FILE_KEYS",
    "RunConfig",
    "StudyDesign",
    "full_design",
    "problem_design",
    "read_study_file",
    "smoke_design",
]

Problem = str
"""``"multimnist"`` or ``"regression"`` (the shipped study), or a problem's import path ``"package.module:factory"``."""

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
    "sum": 1.0,
    "uw": 1.1,
    "dwa": 1.0,
    "gradnorm": 1.1,
    "mgda": 2.4,
    "pcgrad": 2.1,
    "cagrad": 2.6,
    "imtl_g": 2.0,
    "mtadam": 2.3,
    "mao": 2.0,
    "ius": 3.9,
    "io": 4.0,
    "grouping": 2.0,
    "single": 0.8,
}


@dataclass(frozen=True)
class RunConfig:
    """One configuration: a setting (problem + tasks) and a method with its hyperparameters.

    Attributes:
        name: unique, ``<setting>.<variant>``, e.g. ``mm4.mao``, ``mm4.grouping2``, ``mm4.single-left``.
        setting: ``mm4``, ``mm_same``, ``mm_diff``, ``reg2``, ...
        problem: ``multimnist`` or ``regression``, or the import path of the design's problem.
        tasks: the task names (MultiMNIST tasks, ``task0..`` for the regression, your problem's).
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


def _single(setting: str, task: str, problem: Problem = "multimnist") -> RunConfig:
    variant = f"{SINGLE_TASK_PREFIX}{task}"
    return RunConfig(f"{setting}.{variant}", setting, problem, (task,), "sum", variant, {})


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
        problem: ``""`` for the shipped study (MultiMNIST and the regression), or the import path of your
            problem (:func:`mao_lab.problems.load_problem`); then ``mm4_methods`` are the methods on all its
            tasks and ``p2_methods`` those on its task sets, and the ``num_*`` and ``regression_*`` fields
            are unused (the problem's factory sizes its data).
        problem_options: the keyword arguments of the problem's factory.
        tasks, same_nature, different_nature: your problem's tasks and task sets (P2 needs both sets).
        description: your problem's one-line description, for the ledger.

    The fields of your problem are left out of :meth:`as_dict` while they hold their defaults, so the
    shipped study's ``design.json`` (and the points it resumes) are what they were before they existed.
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
    mm4_methods: tuple[str, ...] = (
        "sum",
        *WEIGHTINGS,
        *AGGREGATORS,
        "mtadam",
        "mao",
        *INDEPENDENT,
        "grouping2",
        "grouping3",
    )
    p2_methods: tuple[str, ...] = ("sum", *INDEPENDENT)
    regression_methods: tuple[str, ...] = ("sum", "mao")
    configs_per_point: int = 1
    smoke: bool = False
    problem: str = ""
    problem_options: Mapping[str, Any] = field(default_factory=dict)
    tasks: tuple[str, ...] = ()
    same_nature: tuple[str, ...] = ()
    different_nature: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        if len(self.lrs) < 3 or len(set(self.lrs)) != len(self.lrs) or not all(lr > 0 for lr in self.lrs):
            raise ValueError(f"lrs must hold at least three different positive learning rates, got {self.lrs}")
        if (
            not self.tuning_seeds
            or not set(self.tuning_seeds) <= set(self.seeds)
            or len(set(self.seeds)) != len(self.seeds)
            or len(set(self.tuning_seeds)) != len(self.tuning_seeds)
        ):
            raise ValueError(
                f"seeds must be different and include the different tuning_seeds={self.tuning_seeds}, got {self.seeds}"
            )
        if self.finalists is not None and (
            isinstance(self.finalists, bool)
            or not isinstance(self.finalists, int)
            or not 1 <= self.finalists <= len(self.lrs)
        ):
            raise ValueError(
                f"finalists must be None or an int in 1..{len(self.lrs)} (the rates), got {self.finalists!r}"
            )
        if not self.smoke and len(self.seeds) < 5:
            raise ValueError(f"the full study needs at least 5 seeds, got {self.seeds}")
        for name in (
            "steps",
            "regression_steps",
            "batch_size",
            "num_train",
            "num_val",
            "num_test",
            "regression_samples",
            "regression_val",
            "eval_every",
            "record_every",
            "configs_per_point",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.num_train + self.num_val > 10_000:
            raise ValueError(
                f"num_train + num_val must fit the 10000 training images, got {self.num_train} + {self.num_val}"
            )
        if self.regression_val >= 0.8 * self.regression_samples - self.batch_size:
            raise ValueError(f"regression_val={self.regression_val} leaves too few regression training samples")
        if self.problem:
            self._check_problem_fields()

    def _check_problem_fields(self) -> None:
        if self.problem.count(":") != 1 or not all(self.problem.split(":")):
            raise ValueError(f"problem must be an import path 'package.module:factory', got {self.problem!r}")
        if len(self.tasks) < 2 or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"a study needs a problem of at least two different tasks, got {self.tasks}")
        for name in ("same_nature", "different_nature"):
            unknown = sorted(set(getattr(self, name)) - set(self.tasks))
            if unknown:
                raise ValueError(f"{name} names tasks {unknown} that the problem does not have ({self.tasks})")
        from ..methods import available

        unknown = [
            v for v in (*self.mm4_methods, *self.p2_methods) if v not in available() and not v.startswith("grouping")
        ]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; available: {', '.join(available())} (and groupingS)")
        for variant in self.mm4_methods:
            if variant.startswith("grouping"):
                size = variant.removeprefix("grouping")
                if not size.isdigit() or not 1 < int(size) < len(self.tasks):
                    raise ValueError(
                        f"method {variant!r}: a group size strictly between 1 and the {len(self.tasks)} tasks, "
                        f"as in grouping2"
                    )

    @property
    def main_setting(self) -> str:
        """The setting of all tasks: ``mm4`` in the shipped study, ``all`` on your problem."""
        return "all" if self.problem else "mm4"

    @property
    def p2_settings(self) -> tuple[str, str] | None:
        """P2's settings (one nature, different natures), or ``None`` when the problem has no such task sets."""
        if not self.problem:
            return "mm_same", "mm_diff"
        return ("same", "diff") if self.same_nature and self.different_nature else None

    def configs(self) -> list[RunConfig]:
        """Every configuration of the study, in a stable order."""
        if self.problem:
            return self._problem_configs()
        configs = [_multitask("mm4", MM4_TASKS, v) for v in self.mm4_methods]
        configs += [_single("mm4", task) for task in MM4_TASKS]
        configs += [_multitask("mm_same", SAME_NATURE_TASKS, v) for v in self.p2_methods]
        configs += [_multitask("mm_diff", DIFFERENT_NATURE_TASKS, v) for v in self.p2_methods]
        for count in self.regression_tasks:
            tasks = tuple(f"task{k}" for k in range(count))
            configs += [_multitask(f"reg{count}", tasks, v, "regression") for v in self.regression_methods]
        return configs

    def _problem_configs(self) -> list[RunConfig]:
        configs = [_multitask("all", self.tasks, v, self.problem) for v in self.mm4_methods]
        configs += [_single("all", task, self.problem) for task in self.tasks]
        if self.p2_settings is not None:
            configs += [_multitask("same", self.same_nature, v, self.problem) for v in self.p2_methods]
            configs += [_multitask("diff", self.different_nature, v, self.problem) for v in self.p2_methods]
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
        data = json.loads(json.dumps(dataclasses.asdict(self)))
        if not self.problem:  # the shipped study: its design.json as it was before problems were pluggable
            for name in _PROBLEM_FIELDS:
                data.pop(name)
        return data

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


_PROBLEM_FIELDS = ("problem", "problem_options", "tasks", "same_nature", "different_nature", "description")


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
        seeds=(0, 1, 2),
        steps=4,
        regression_steps=4,
        batch_size=16,
        num_train=64,
        num_val=32,
        num_test=32,
        regression_samples=400,
        regression_val=64,
        eval_every=2,
        record_every=2,
        configs_per_point=100,
        smoke=True,
    )


STUDY_FILE_KEYS: Mapping[str, str] = {
    "problem": "the problem's import path 'package.module:factory' (--problem overrides it)",
    "options": "a table of the factory's keyword arguments",
    "methods": "the methods trained on all tasks (names of mao_lab.methods.available(), or groupingS)",
    "p2_methods": "the methods trained on each task set of P2 (default: sum, ius, io)",
    "lrs": "the learning-rate grid (at least three rates)",
    "seeds": "the seeds (the first two are the tuning seeds unless tuning_seeds says; at least five outside --smoke)",
    "tuning_seeds": "the seeds the rates are chosen on, among seeds (default: the first two seeds)",
    "finalists": "how many of the first tuning seed's best rates the other tuning seeds run (default 2)",
    "steps": "training steps of every run",
    "batch_size": "the training batch size",
    "eval_every": "validation every this many steps",
    "record_every": "the recorder logs balance every this many steps",
}
"""What a study file may hold (TOML, read with :mod:`tomllib`)."""


def read_study_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A study file's settings, checked: only :data:`STUDY_FILE_KEYS`, of the right types.

    A file reads like::

        problem = "mao_lab.problems:regression_problem"
        methods = ["sum", "mao", "ius", "io"]
        lrs = [0.001, 0.003, 0.01]
        seeds = [0, 1, 2, 3, 4]
        steps = 500

        [options]
        num_tasks = 3

    Raises:
        ValueError: naming the file and what is wrong with it.
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        raise ValueError("reading a study file needs Python 3.11 or later (tomllib)") from None
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as error:
        raise ValueError(f"study file {file}: cannot read it ({error.strerror or error})") from None
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"study file {file} is not valid TOML: {error}") from None
    unknown = sorted(set(data) - set(STUDY_FILE_KEYS))
    if unknown:
        raise ValueError(f"study file {file}: unknown key(s) {unknown}; known: {sorted(STUDY_FILE_KEYS)}")
    kinds = {
        "problem": str,
        "options": dict,
        "methods": list,
        "p2_methods": list,
        "lrs": list,
        "seeds": list,
        "tuning_seeds": list,
        "finalists": int,
        "steps": int,
        "batch_size": int,
        "eval_every": int,
        "record_every": int,
    }
    for key, value in data.items():
        if not isinstance(value, kinds[key]) or isinstance(value, bool):
            raise ValueError(f"study file {file}: {key} must be {STUDY_FILE_KEYS[key]}, got {value!r}")
    for key, kind in (
        ("methods", str),
        ("p2_methods", str),
        ("lrs", (int, float)),
        ("seeds", int),
        ("tuning_seeds", int),
    ):
        if key in data and not all(isinstance(v, kind) and not isinstance(v, bool) for v in data[key]):
            raise ValueError(f"study file {file}: {key} must be {STUDY_FILE_KEYS[key]}, got {data[key]!r}")
    return data


def problem_design(
    problem: Any,
    spec: str,
    *,
    options: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    smoke: bool = False,
) -> StudyDesign:
    """The study of your ``problem`` (a :class:`~mao_lab.problems.Problem` made by ``spec(**options)``).

    ``settings`` are a study file's (:func:`read_study_file`: methods, lrs, seeds, steps, ...); the rest are
    :func:`full_design`'s, or :func:`smoke_design`'s with ``smoke``.  Grouping variants that do not fit the
    problem's task count are dropped from the defaults (a study file's are checked).

    >>> from mao_lab.problems import regression_problem
    >>> design = problem_design(regression_problem(3, num_samples=200, num_val=40),
    ...                         "mao_lab.problems:regression_problem",
    ...                         options={"num_tasks": 3, "num_samples": 200, "num_val": 40},
    ...                         settings={"methods": ["sum", "mao"], "steps": 5}, smoke=True)
    >>> [c.name for c in design.configs()][:3], design.steps
    (['all.sum', 'all.mao', 'all.single-task0'], 5)
    """
    settings = dict(settings or {})
    base = smoke_design() if smoke else full_design()
    tasks = tuple(problem.task_names)
    sets = dict(problem.task_sets())
    methods = tuple(
        settings.pop("methods", None)
        or [v for v in base.mm4_methods if not v.startswith("grouping") or int(v.removeprefix("grouping")) < len(tasks)]
    )
    fields: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in settings.items() if k not in ("problem", "options")
    }
    if "seeds" in fields and "tuning_seeds" not in fields:  # the rates are chosen on the mean over the first seeds
        fields["tuning_seeds"] = fields["seeds"][: len(base.tuning_seeds)]
    return dataclasses.replace(
        base,
        mm4_methods=methods,
        regression_tasks=(),
        problem=spec,
        problem_options=dict(options or {}),
        tasks=tasks,
        same_nature=tuple(sets.get("same_nature", ())),
        different_nature=tuple(sets.get("different_nature", ())),
        description=str(getattr(problem, "description", "") or ""),
        **fields,
    )
