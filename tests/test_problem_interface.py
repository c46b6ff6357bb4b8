"""The one problem interface: MultiMNIST and the regression re-expressed on it give bit for bit what the code
before it gave, and ``train`` on a problem with a device and autocast follows a plain torch loop.

The references below are the pre-interface code, kept here verbatim in substance: the study's per-problem
closures (``mao_lab/study/_runs.py``'s old ``_Problem``) and the experiments' old loops (``multimnist_model``
seeded on its own, ``tensor_batches``, ``evaluate_multimnist``).  Every comparison is exact (``torch.equal``,
``assert_frame_equal`` without tolerance), except the autocast check against an independent loop.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
import torch
from torch import nn

from mao_lab.experiments import (
    SINGLE_TASK,
    compare_on_problem,
    tensor_batches,
    train,
    train_on_problem,
    train_with_recorder,
)
from mao_lab.problems import (
    ImbalancedRegression,
    MultiMNIST,
    MultiMNISTProblem,
    Problem,
    RegressionProblem,
    TaskMetric,
    evaluate_multimnist,
    index_batches,
    load_multimnist,
    load_problem,
    multimnist_model,
    multimnist_problem,
    regression_model,
    regression_problem,
    seeded_loader,
    task_losses,
    task_metrics,
    verify_problem,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TASKS = ("left", "right", "sum", "reconstruct")


# -- the references: the code before the interface ----------------------------------------------------------


def _old_study_multimnist(
    tasks: tuple[str, ...], num_train: int, num_val: int, num_test: int, batch_size: int
) -> dict[str, Any]:
    """The study's old MultiMNIST closures (validation = the last ``num_val`` training images)."""
    whole = load_multimnist(split="train", tasks=tasks)

    def rows(part: slice) -> MultiMNIST:
        return MultiMNIST(
            whole.images[part],
            [t[part] for t in whole.targets],
            whole.tasks,
            "train",
            whole.left_index[part],
            whole.right_index[part],
        )

    train_set, val = rows(slice(0, num_train)), rows(slice(len(whole) - num_val, None))
    test = load_multimnist(split="test", tasks=tasks, limit=num_test)

    def scored(model: nn.Module, data: MultiMNIST) -> list[dict[str, Any]]:
        return [
            {"task": s.task, "metric": s.metric, "value": s.value, "higher_is_better": s.higher_is_better}
            for s in task_metrics(model(data.images), list(data.targets), data.tasks)
        ]

    return {
        "build": lambda: multimnist_model(tasks),
        "losses": lambda model, batch: dict(zip(tasks, task_losses(model(batch[0]), batch[1], tasks))),
        "batches": tensor_batches(train_set.images, list(train_set.targets), batch_size),
        "validate": lambda model: scored(model, val),
        "test": lambda model: scored(model, test),
    }


def _old_study_regression(num_tasks: int, num_samples: int, num_val: int, batch_size: int) -> dict[str, Any]:
    problem = ImbalancedRegression(num_tasks, sigma_range=(1.0, 100.0), num_samples=num_samples, seed=0)
    x, ys = problem.split("train")
    cut = len(x) - num_val
    names = tuple(f"task{k}" for k in range(num_tasks))

    def scored(model: nn.Module, inputs: torch.Tensor, targets: list[torch.Tensor]) -> list[dict[str, Any]]:
        losses = problem.task_losses(model(inputs), targets, normalize=True)
        return [
            {"task": f"task{k}", "metric": "normalised_mse", "value": float(loss), "higher_is_better": False}
            for k, loss in enumerate(losses)
        ]

    return {
        "build": lambda: regression_model(num_tasks, in_dim=problem.in_dim, out_dim=problem.out_dim),
        "losses": lambda model, batch: dict(zip(names, problem.task_losses(model(batch[0]), batch[1]))),
        "batches": tensor_batches(x[:cut], [y[:cut] for y in ys], batch_size),
        "validate": lambda model: scored(model, x[cut:], [y[cut:] for y in ys]),
        "test": lambda model: scored(model, *problem.split("test")),
    }


def _old_run(old: dict[str, Any], method: str, **options: Any) -> Any:
    """``train`` as the study called it: on the old study's model, losses, batches and validation."""
    return train(old["build"], method, old["losses"], batches=old["batches"], evaluate=old["validate"], **options)


def _assert_same_run(old, new) -> None:
    pd.testing.assert_frame_equal(old.evaluations, new.evaluations)
    pd.testing.assert_frame_equal(old.train_losses, new.train_losses)
    for a, b in zip(old.model.state_dict().values(), new.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


# -- the study's problems -------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["mao", "pcgrad"])  # PCGrad draws a random task order: the generator's use counts
@pytest.mark.parametrize("tasks", [TASKS, ("left", "sum", "reconstruct")])
def test_multimnist_problem_trains_bit_for_bit_as_the_study_did(method: str, tasks: tuple[str, ...]) -> None:
    old = _old_study_multimnist(tasks, 96, 32, 32, 16)
    problem = multimnist_problem(tasks, num_train=96, num_val=32, num_test=32, batch_size=16)
    reference = _old_run(old, method, steps=7, seed=3, eval_every=3, record_every=2)
    run = train(problem, method, steps=7, seed=3, evaluate="validation", eval_every=3, record_every=2, device="cpu")
    _assert_same_run(reference, run)
    pd.testing.assert_frame_equal(reference.metrics, run.metrics)
    with torch.no_grad():
        assert old["test"](run.model.eval()) == [m._asdict() for m in problem.evaluate(run.model, "test")]


def test_a_task_subset_of_the_problem_is_the_problem_of_those_tasks() -> None:
    """The study trains ``mm_same`` on a problem loaded with two tasks.

    The four-task problem's subset is the same run.
    """
    old = _old_study_multimnist(("left", "right"), 64, 16, 16, 16)
    whole = multimnist_problem(num_train=64, num_val=16, num_test=16, batch_size=16)
    reference = _old_run(old, "ius", steps=5, seed=1)
    run = train(whole, "ius", tasks=("left", "right"), steps=5, seed=1, evaluate="validation", device="cpu")
    _assert_same_run(reference, run)


@pytest.mark.parametrize("num_tasks", [2, 4])
def test_regression_problem_trains_bit_for_bit_as_the_study_did(num_tasks: int) -> None:
    old = _old_study_regression(num_tasks, 400, 64, 16)
    problem = regression_problem(num_tasks, num_samples=400, num_val=64, batch_size=16)
    reference = _old_run(old, "mao", steps=9, seed=2, eval_every=4, record_every=3)
    run = train(problem, "mao", steps=9, seed=2, evaluate="validation", eval_every=4, record_every=3, device="cpu")
    _assert_same_run(reference, run)
    with torch.no_grad():
        assert old["test"](run.model) == [m._asdict() for m in problem.evaluate(run.model, "test")]


# -- the experiments' functions --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def splits() -> tuple[MultiMNIST, MultiMNIST]:
    return load_multimnist(tasks=("left", "sum", "reconstruct"), limit=96), load_multimnist(
        split="test", tasks=("left", "sum", "reconstruct"), limit=48
    )


def _old_train_multimnist(
    method: str, data: MultiMNIST, test: MultiMNIST, *, steps: int, batch_size: int, seed: int, every: int | None
) -> Any:
    tasks = tuple(data.tasks)
    return train(
        lambda: multimnist_model(tasks, seed=seed),
        method,
        lambda model, batch: dict(zip(tasks, task_losses(model(batch[0]), batch[1], tasks))),
        steps=steps,
        batches=tensor_batches(data.images, data.targets, batch_size),
        seed=seed,
        evaluate=lambda model: [
            {"task": s.task, "metric": s.metric, "value": s.value, "higher_is_better": s.higher_is_better}
            for s in evaluate_multimnist(model, test)
        ],
        record_every=every,
    )


@pytest.mark.parametrize("method", ["mao", "rlw"])  # RLW draws its weights after the network is built
def test_train_on_a_multimnist_problem_is_what_it_was(splits, method: str) -> None:
    data, test = splits
    reference = _old_train_multimnist(method, data, test, steps=6, batch_size=16, seed=4, every=2)
    problem = MultiMNISTProblem(data, test, batch_size=16)
    metrics, scores = train_on_problem(problem, method, steps=6, batch_size=16, seed=4, every=2, device="cpu")
    pd.testing.assert_frame_equal(reference.metrics, metrics)
    old = reference.evaluations
    pd.testing.assert_frame_equal(old.reset_index(drop=True), scores[list(old.columns)].reset_index(drop=True))


def test_the_single_task_baseline_is_the_old_loop_on_a_one_task_copy_of_the_data(splits) -> None:
    """``compare_on_problem``'s baseline trains on the multi-task problem with one task's loss; the old baseline
    trained on a copy of the data holding that task's target only.  Same network, batches and scores."""
    data, test = splits
    one = lambda d: MultiMNIST(d.images, [d.targets[1]], ("sum",), d.split, d.left_index, d.right_index)
    reference = _old_train_multimnist("sum", one(data), one(test), steps=5, batch_size=16, seed=2, every=None)
    problem = MultiMNISTProblem(data, test, batch_size=16)
    _, scores = compare_on_problem(problem, ["mao"], seeds=(2,), steps=5, batch_size=16, device="cpu", progress=False)
    baseline = scores[(scores["method"] == SINGLE_TASK) & (scores["task"] == "sum")]
    assert baseline["step"].tolist() == [0, 5]
    assert baseline["value"].tolist() == reference.evaluations["value"].tolist()


def test_train_with_recorder_is_what_it_was() -> None:
    data = ImbalancedRegression(3, num_samples=300, in_dim=8, out_dim=4)
    names = ["task0", "task1", "task2"]
    x_test, y_test = data.split("test")
    reference = train(
        lambda: regression_model(3, in_dim=8, out_dim=4, seed=5),
        "rlw",
        lambda model, batch: dict(zip(names, data.task_losses(model(batch[0]), batch[1]))),
        steps=8,
        batches=tensor_batches(*data.split("train"), 16),
        seed=5,
        record_every=2,
        eval_every=4,
        evaluate=lambda model: [
            {"task": n, "test_loss": float(v)} for n, v in zip(names, data.task_losses(model(x_test), y_test))
        ],
    )
    metrics, losses = train_with_recorder(
        data, "rlw", steps=8, batch_size=16, seed=5, every=2, eval_every=4, device="cpu"
    )
    pd.testing.assert_frame_equal(reference.metrics, metrics)
    assert losses["test_loss"].tolist() == reference.evaluations["test_loss"].tolist()


# -- device and autocast ---------------------------------------------------------------------------------------


def test_autocast_bf16_on_the_cpu_is_a_plain_autocast_adam_loop() -> None:
    """``train(problem, "sum", autocast="bf16")``.

    The forward under ``torch.autocast``, float32 losses, Adam on their sum.
    """
    problem = regression_problem(2, num_samples=200, num_val=40, batch_size=16)
    run = train(problem, "sum", steps=5, seed=1, device="cpu", autocast="bf16")
    assert run.train_losses["loss"].notna().all()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = problem.build_model()
    adam = torch.optim.Adam(model.parameters(), lr=1e-3)
    seen = []
    for _, batch in zip(range(5), problem.batches("train", seed=1)):
        adam.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = problem.task_losses(model, batch)
        assert all(loss.dtype == torch.float32 for loss in losses.values())  # MSE autocasts to float32
        seen.append([float(v.detach()) for v in losses.values()])
        sum(losses.values()).backward()
        adam.step()
    table = run.train_losses.pivot(index="step", columns="task", values="loss")
    assert table.to_numpy().ravel().tolist() == pytest.approx([v for row in seen for v in row], rel=1e-6)
    for a, b in zip(model.parameters(), run.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    full = train(problem, "sum", steps=5, seed=1, device="cpu")
    assert not all(torch.equal(a, b) for a, b in zip(full.model.parameters(), run.model.parameters()))  # bf16 did act


def test_device_and_autocast_are_checked() -> None:
    problem = regression_problem(2, num_samples=200, num_val=40)
    with pytest.raises(ValueError, match="autocast must be one of"):
        train(problem, "sum", steps=1, device="cpu", autocast="fp8")
    with pytest.raises(ValueError, match="device must be a torch device"):
        train(problem, "sum", steps=1, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            train(problem, "sum", steps=1, device="cuda")
    with pytest.raises(ValueError, match="needs a Problem"):
        train(lambda: regression_model(2), "sum", lambda m, b: [], steps=1, evaluate="validation")
    with pytest.raises(ValueError, match="unknown task 'task9'"):
        train(problem, "sum", steps=1, tasks=("task9",), device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_matches_the_cpu_run_closely() -> None:
    problem = multimnist_problem(("left", "sum"), num_train=64, num_val=32, num_test=32, batch_size=16)
    cpu = train(problem, "mao", steps=4, seed=0, evaluate="validation", device="cpu")
    gpu = train(problem, "mao", steps=4, seed=0, evaluate="validation", device="cuda")
    assert next(gpu.model.parameters()).device.type == "cuda"
    assert gpu.evaluations["value"].tolist() == pytest.approx(cpu.evaluations["value"].tolist(), rel=1e-3, abs=1e-3)
    bf16 = train(problem, "mao", steps=4, seed=0, evaluate="validation", device="cuda", autocast="bf16")
    assert bf16.train_losses["loss"].notna().all()


# -- the interface itself ---------------------------------------------------------------------------------------


def test_load_problem_finds_the_shipped_problems_and_names_bad_paths() -> None:
    problem = load_problem("mao_lab.problems:regression_problem", num_tasks=3, num_samples=200, num_val=40)
    assert isinstance(problem, RegressionProblem) and problem.task_names == ("task0", "task1", "task2")
    assert isinstance(
        load_problem("mao_lab.problems:multimnist_problem", tasks=("left",), num_train=8, num_val=8, num_test=8),
        MultiMNISTProblem,
    )
    for spec, message in [
        ("mao_lab.problems", "expected an import path"),
        ("no_such_module:f", "cannot import"),
        ("mao_lab.problems:regression_model", "returned MultiTaskNet, not a Problem"),
    ]:
        with pytest.raises(ValueError, match=message):
            load_problem(spec, **({"num_tasks": 2} if "regression_model" in spec else {}))


def test_problem_splits_metrics_and_task_sets() -> None:
    problem = multimnist_problem(num_train=32, num_val=16, num_test=16, batch_size=8)
    assert dict(problem.task_sets()) == {
        "same_nature": ("left", "right"),
        "different_nature": ("left", "sum", "reconstruct"),
    }
    metrics = problem.evaluate(multimnist_model(TASKS, seed=0).eval(), "validation")
    assert all(isinstance(m, TaskMetric) for m in metrics)
    assert [(m.task, m.metric, m.higher_is_better) for m in metrics] == [
        ("left", "accuracy", True),
        ("right", "accuracy", True),
        ("sum", "mae", False),
        ("reconstruct", "mse", False),
    ]
    one_pass = list(problem.batches("test", batch_size=6))
    assert [len(images) for images, _ in one_pass] == [6, 6, 4]  # one pass, the last batch smaller
    with pytest.raises(ValueError, match="without a validation split"):
        RegressionProblem(ImbalancedRegression(2, num_samples=100)).evaluate(regression_model(2), "validation")
    assert isinstance(problem, Problem) and "MultiMNIST" in problem.description


def test_seeded_loader_gives_index_batches_order_with_worker_processes() -> None:
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    y = torch.arange(50)
    data = torch.utils.data.TensorDataset(x, y)
    loaded = [batch for batch, _ in zip(seeded_loader(data, 8, seed=4, num_workers=1, pin_memory=False), range(9))]
    expected = [rows for rows, _ in zip(index_batches(50, 8, seed=4), range(9))]  # 9 batches: into a second epoch
    for (bx, by), rows in zip(loaded, expected, strict=True):
        assert torch.equal(bx, x[rows]) and torch.equal(by, y[rows])


def test_verify_problem_names_what_does_not_fit() -> None:
    class Unkeyed(RegressionProblem):
        def task_losses(self, model, batch, tasks=None):
            return list(super().task_losses(model, batch, tasks).values())  # a list, not a dict by task

    class Unseeded(RegressionProblem):
        def batches(self, split, *, seed=0, batch_size=None):
            return super().batches(split, seed=int(torch.randint(0, 10**6, ())), batch_size=batch_size)

    data = ImbalancedRegression(2, num_samples=100, in_dim=8, out_dim=4)
    lines = verify_problem(RegressionProblem(data, num_val=20))
    assert lines[0] == "tasks: task0, task1" and lines[-1].startswith("test: task0 normalised_mse")
    with pytest.raises(ValueError, match="task_losses must return a dict of the tasks"):
        verify_problem(Unkeyed(data, num_val=20))
    with pytest.raises(ValueError, match="the seed must fix the order"):
        verify_problem(Unseeded(data, num_val=20))
