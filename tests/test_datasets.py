"""The papers' benchmarks read from disk: MultiMNIST from MNIST IDX files, NYUv2 and CelebA.

Every loader is tested on tiny files the test writes in the exact on-disk format of the real
download, and every metric against a value worked out here by hand or by an independent loop.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from mao_lab.problems import (
    DatasetLayoutError,
    MultiTaskNet,
    load_problem,
    mnist_idx_multimnist,
    read_idx,
)
from mao_lab.problems._mnist_idx import build_idx_pairs

pytestmark = pytest.mark.usefixtures("one_thread")

# --- MNIST IDX -------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """An IDX file as MNIST distributes it: big-endian magic and dimensions, then the bytes."""
    return struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_mnist(root: Path, n_train: int = 60, n_test: int = 12, gzipped: bool = False, seed: int = 0) -> dict:
    """Random 'digits' (distinct, so each image's pair can be identified) and labels in IDX files."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)).astype(np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)).astype(np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        data = idx_bytes(array, 2051 if array.ndim == 3 else 2049)
        if gzipped:
            (root / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (root / name).write_bytes(data)
    return arrays


def reference_overlay(left: np.ndarray, right: np.ndarray, left_at=(0, 0), right_at=(6, 6)) -> np.ndarray:
    """Sener & Koltun's construction written out: a 36x36 canvas, max where digits overlap, Pillow NEAREST."""
    canvas = np.zeros((36, 36), dtype=np.uint8)
    (ly, lx), (ry, rx) = left_at, right_at
    canvas[ly : ly + 28, lx : lx + 28] = left
    canvas[ry : ry + 28, rx : rx + 28] = np.maximum(canvas[ry : ry + 28, rx : rx + 28], right)
    return np.asarray(Image.fromarray(canvas).resize((28, 28), Image.NEAREST))


def test_read_idx_reads_what_was_written_raw_and_gzipped(tmp_path: Path) -> None:
    images = np.arange(2 * 28 * 28, dtype=np.int64).reshape(2, 28, 28) % 251
    (tmp_path / "a").write_bytes(idx_bytes(images, 2051))
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(images, 2051)))
    np.testing.assert_array_equal(read_idx(tmp_path / "a", 2051), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz", 2051), images)
    labels = np.array([7, 0, 9])
    (tmp_path / "l").write_bytes(idx_bytes(labels, 2049))
    np.testing.assert_array_equal(read_idx(tmp_path / "l", 2049), labels)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (idx_bytes(np.zeros((2, 28, 28)), 2049), "magic number 2049, expected 2051"),
        (idx_bytes(np.zeros((2, 28, 28)), 2051)[:-5], "truncated or corrupt"),
        (b"\x00\x00", "magic number None"),
    ],
)
def test_a_malformed_idx_file_is_one_line_naming_it(tmp_path: Path, content: bytes, fragment: str) -> None:
    file = tmp_path / "train-images-idx3-ubyte"
    file.write_bytes(content)
    with pytest.raises(DatasetLayoutError) as caught:
        read_idx(file, 2051)
    message = str(caught.value)
    assert "\n" not in message and str(file) in message and fragment in message and "expected <root>/" in message


def test_a_missing_mnist_file_names_the_file_and_the_layout(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetLayoutError, match=r"t10k-labels-idx1-ubyte: missing .*expected <root>/\{train-images"):
        mnist_idx_multimnist(root=tmp_path)
    with pytest.raises(DatasetLayoutError, match="no such folder"):
        mnist_idx_multimnist(root=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="pass root="):
        mnist_idx_multimnist()


def test_mismatched_label_count_is_reported(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(59), 2049))
    with pytest.raises(DatasetLayoutError, match="59 labels for 60 images"):
        mnist_idx_multimnist(root=tmp_path)


@pytest.mark.parametrize("gzipped", [False, True])
def test_multimnist_idx_images_are_sener_and_koltuns_construction(tmp_path: Path, gzipped: bool) -> None:
    arrays = write_mnist(tmp_path, gzipped=gzipped)
    problem = load_problem("mao_lab.problems:mnist_idx_multimnist", root=str(tmp_path), tasks=("left", "right", "sum"))
    digits, labels = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"].astype(np.int64)
    # 60 training digits: the last sixth (10) held out for validation, the rest paired for training.
    pools = {"train": np.arange(50), "validation": np.arange(50, 60)}
    for split, pool in pools.items():
        data = problem.dataset(split)
        assert len(data) == len(pool)
        images, targets = data[list(range(len(pool)))]
        for i, left in enumerate(pool):
            image = np.rint(images[i, 0].numpy() * 255).astype(np.uint8)
            # The right digit: the one other digit of the same pool that reproduces the image.
            matches = [j for j in pool if j != left and np.array_equal(image, reference_overlay(digits[left], digits[j]))]
            assert len(matches) == 1, (split, i)
            assert targets["left"][i].item() == labels[left]
            assert targets["right"][i].item() == labels[matches[0]]
            assert targets["sum"][i].item() == pytest.approx((labels[left] + labels[matches[0]]) / 18)
    assert len(problem.dataset("test")) == 12


def test_shifted_pairs_match_the_reference_at_their_origins() -> None:
    rng = np.random.default_rng(3)
    digits = rng.integers(0, 256, (5, 28, 28)).astype(np.uint8)
    images, right, left_at, right_at = build_idx_pairs(digits, np.random.default_rng(0), max_shift=4)
    assert (left_at >= 0).all() and (left_at <= 4).all() and (right_at >= 2).all() and (right_at <= 8).all()
    assert (right != np.arange(5)).all()
    for i in range(5):
        expected = reference_overlay(digits[i], digits[right[i]], tuple(left_at[i]), tuple(right_at[i]))
        np.testing.assert_array_equal(images[i], expected)


def test_training_batches_are_an_endless_shuffle_fixed_by_the_seed(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    problem = mnist_idx_multimnist(root=tmp_path, batch_size=10)
    def first(seed: int, n: int) -> list[torch.Tensor]:
        stream = iter(problem.batches("train", seed=seed))
        return [next(stream)[0] for _ in range(n)]
    a, b, c = first(0, 6), first(0, 6), first(1, 6)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    # One epoch (5 batches of 10) shows every training image once; the stream then goes on.
    epoch = torch.cat(a[:5]).flatten(1)
    everything = problem.dataset("train")[list(range(50))][0].flatten(1)
    assert sorted(map(tuple, epoch.tolist())) == sorted(map(tuple, everything.tolist()))
    assert a[5].shape == (10, 1, 28, 28)
    sizes = [len(x) for x, _ in problem.batches("test", batch_size=5)]
    assert sizes == [5, 5, 2]


class ConstantClass(nn.Module):
    """Predicts class 3 for every image (and 0.5 for the sum), whatever the image."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        logits = torch.zeros(len(x), 10)
        logits[:, 3] = 1.0
        return [logits, logits.clone(), torch.full((len(x),), 0.5)]


def test_evaluate_scores_against_the_labels_on_disk(tmp_path: Path) -> None:
    arrays = write_mnist(tmp_path, n_test=12)
    problem = mnist_idx_multimnist(root=tmp_path, tasks=("left", "right", "sum"), eval_batch_size=5)
    scores = {m.task: m for m in problem.evaluate(ConstantClass(), "test")}
    test_labels = arrays["t10k-labels-idx1-ubyte"].astype(np.int64)
    # Image i of the test split has t10k digit i on the left.
    assert scores["left"].value == pytest.approx(np.mean(test_labels == 3))
    _, targets = problem.dataset("test")[list(range(12))]
    right = targets["right"].numpy()
    assert scores["right"].value == pytest.approx(np.mean(right == 3))
    assert scores["sum"].value == pytest.approx(np.mean(np.abs(0.5 * 18 - (test_labels + right))), rel=1e-6)
    assert scores["sum"].higher_is_better is False and scores["left"].higher_is_better is True


def test_the_model_and_losses_fit_the_batches(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    problem = mnist_idx_multimnist(root=tmp_path, tasks=("left", "right", "sum", "reconstruct"), batch_size=4)
    model = problem.build_model()
    assert isinstance(model, MultiTaskNet) and model.num_tasks == 4
    batch = next(iter(problem.batches("train")))
    losses = problem.task_losses(model, batch)
    assert list(losses) == ["left", "right", "sum", "reconstruct"]
    assert all(loss.ndim == 0 and torch.isfinite(loss) for loss in losses.values())
    # The reconstruct target is the left digit alone, where the image has it: the image is at least as bright.
    images, targets = batch
    assert (images >= targets["reconstruct"]).all()
    assert problem.task_sets() == {"same_nature": ("left", "right"), "different_nature": ("left", "sum", "reconstruct")}
    single = problem.build_model(["sum"])
    assert list(problem.task_losses(single, batch, ["sum"])) == ["sum"]
