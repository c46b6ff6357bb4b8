"""The one training loop (``mao_lab.experiments.train``): what a seed fixes, what it returns, what it refuses.

Checked against loops written here with plain torch, not against the loop's own output.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from mao_lab.experiments import index_batches, tensor_batches, train, train_on_problem
from mao_lab.problems import MultiMNISTProblem, load_multimnist, multimnist_model, regression_model, task_losses
from mao_lab.recorder import load_run

X = torch.randn(96, 8, generator=torch.Generator().manual_seed(1))
YS = [
    torch.randn(96, 2, generator=torch.Generator().manual_seed(2)),
    30 * torch.randn(96, 2, generator=torch.Generator().manual_seed(3)),
]


def build() -> nn.Module:
    return regression_model(2, in_dim=8, hidden=6, out_dim=2)  # no seed of its own: the loop's seed decides


def mse(model: nn.Module, batch) -> list[torch.Tensor]:
    return [((out - y) ** 2).mean() for out, y in zip(model(batch[0]), batch[1])]


def test_one_seed_fixes_the_network_and_the_batches_whatever_the_method() -> None:
    seen: dict[str, list[torch.Tensor]] = {}

    def spying(name: str):
        def losses(model, batch):
            seen.setdefault(name, []).append(batch[0].clone())
            return mse(model, batch)

        return losses

    start = lambda model: [{"task": "all", "metric": "weights", "value": float(model.trunk[0].weight.sum())}]  # noqa: E731
    runs = {
        name: train(build, name, spying(name), steps=5, seed=7, batches=tensor_batches(X, YS, 16), evaluate=start)
        for name in ("sum", "mao", "pcgrad")
    }
    first = {name: run.evaluations.query("step == 0")["value"].item() for name, run in runs.items()}
    assert len(set(first.values())) == 1  # the same initial network
    for name in ("mao", "pcgrad"):
        assert all(torch.equal(a, b) for a, b in zip(seen["sum"], seen[name]))  # the same batches, in order
    assert (
        runs["sum"].evaluations.query("step == 5")["value"].item()
        != runs["mao"].evaluations.query("step == 5")["value"].item()
    )
    other = train(build, "sum", spying("other"), steps=5, seed=8, batches=tensor_batches(X, YS, 16), evaluate=start)
    assert other.evaluations.query("step == 0")["value"].item() != first["sum"]
    assert not torch.equal(seen["other"][0], seen["sum"][0])


def test_a_run_repeats_exactly_and_leaves_the_global_random_state_alone() -> None:
    before = torch.random.get_rng_state()
    one = train(build, "rlw", mse, steps=6, seed=3, batches=tensor_batches(X, YS, 16))  # RLW draws its weights
    assert torch.equal(torch.random.get_rng_state(), before)
    two = train(build, "rlw", mse, steps=6, seed=3, batches=tensor_batches(X, YS, 16))
    pd.testing.assert_frame_equal(one.train_losses, two.train_losses)
    for a, b in zip(one.model.parameters(), two.model.parameters()):
        assert torch.equal(a, b)


def test_how_often_a_run_is_evaluated_does_not_change_its_training() -> None:
    def noisy_losses(model, batch):  # like dropout: training draws random numbers at every step
        return [(0.5 + torch.rand(())) * loss for loss in mse(model, batch)]

    noisy = lambda model: [{"task": "t", "metric": "draw", "value": float(torch.rand(()))}]  # noqa: E731  (consumes randomness)
    often = train(
        build, "sum", noisy_losses, steps=6, seed=3, batches=tensor_batches(X, YS, 16), evaluate=noisy, eval_every=1
    )
    never = train(build, "sum", noisy_losses, steps=6, seed=3, batches=tensor_batches(X, YS, 16))
    assert often.evaluations["step"].tolist() == list(range(7))
    for a, b in zip(often.model.parameters(), never.model.parameters()):
        assert torch.equal(a, b)


def test_train_losses_are_each_batch_before_the_step_and_steps_are_counted() -> None:
    run = train(
        build,
        "sum",
        lambda m, b: dict(zip(["small", "large"], mse(m, b))),
        steps=4,
        seed=0,
        batches=tensor_batches(X, YS, 32),
    )
    torch.manual_seed(0)
    model = build()  # the same initial network, built as the loop builds it
    rows = next(index_batches(96, 32, seed=0))
    expected = [float(v.detach()) for v in mse(model, (X[rows], [y[rows] for y in YS]))]
    first = run.train_losses.query("step == 1").set_index("task")["loss"]
    assert first.to_dict() == pytest.approx({"small": expected[0], "large": expected[1]}, rel=1e-6)
    assert sorted(run.train_losses["step"].unique()) == [1, 2, 3, 4] and run.method.steps_taken == 4
    assert run.metrics is None and run.evaluations.empty and run.seconds > 0


def test_the_single_task_baseline_is_plain_adam_on_the_one_loss() -> None:
    """The baseline as ``compare_on_problem`` trains it (``train_on_problem`` with ``sum`` on one task of a two-task
    problem) against a raw ``torch.optim.Adam`` loop on that task's loss."""
    data = load_multimnist(tasks=("left", "sum"), limit=128)
    test = load_multimnist(split="test", tasks=("left", "sum"), limit=64)
    problem = MultiMNISTProblem(data, test, batch_size=32)
    metrics, scores = train_on_problem(problem, "sum", tasks=("sum",), steps=6, batch_size=32, seed=2, every=None)
    assert metrics is None and scores["task"].unique().tolist() == ["sum"]
    torch.manual_seed(2)
    model = multimnist_model(("sum",), seed=2)
    adam = torch.optim.Adam(model.parameters(), lr=1e-3)
    target = data.targets[data.tasks.index("sum")]
    for epoch in range(2):  # 128 images in batches of 32: four per epoch, drawn as the docstring says
        order = torch.randperm(128, generator=torch.Generator().manual_seed(2 * 100_003 + epoch))
        for start in range(0, 128, 32)[: 6 - 4 * epoch]:
            rows = order[start : start + 32]
            adam.zero_grad()
            task_losses(model(data.images[rows]), [target[rows]], ("sum",))[0].backward()
            adam.step()
    with torch.no_grad():
        model.eval()
        mae = (model(test.images)[0].squeeze(-1) - test.targets[test.tasks.index("sum")]).abs().mean().item() * 18
    assert scores.query("step == 6")["value"].item() == pytest.approx(mae, rel=1e-4)


def test_the_recorder_saves_the_run(tmp_path: Path) -> None:
    run = train(
        build,
        "mao",
        mse,
        steps=4,
        seed=0,
        batches=tensor_batches(X, YS, 16),
        record_every=2,
        run_dir=tmp_path / "run",
        run_params={"method": "mao"},
    )
    metrics, params = load_run(tmp_path / "run")
    assert params["method"] == "mao" and sorted(metrics["step"].unique()) == [0, 2]
    assert len(metrics) == len(run.metrics)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"steps": -1}, "steps must be a non-negative integer, got -1"),
        ({"seed": 1.5}, "seed must be a non-negative integer, got 1.5"),
        ({"eval_every": 0}, "eval_every must be a positive integer, got 0"),
        ({"steps": 7}, "batches ran out at step 7"),
    ],
)
def test_bad_arguments_are_named(change: dict, message: str) -> None:
    short = lambda seed: iter([(X[:16], [y[:16] for y in YS])] * 6)  # noqa: E731
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        train(build, "sum", mse, **{"steps": 3, "batches": short, **change})
    with pytest.raises(ValueError, match="unknown method 'adamm'"):
        train(build, "adamm", mse, steps=1)
