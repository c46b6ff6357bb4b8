"""The papers' benchmarks read from disk: MultiMNIST from MNIST IDX files, NYUv2 and CelebA.

Every loader is tested on tiny files the test writes in the exact on-disk format of the real
download, and every metric against a value worked out here by hand or by an independent loop.
"""

from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from mao_lab.problems import (
    CELEBA_ATTRIBUTES,
    DatasetLayoutError,
    MultiTaskNet,
    ResNet18Trunk,
    celeba,
    load_problem,
    mnist_idx_multimnist,
    read_idx,
)
from mao_lab.problems._dense_metrics import (
    DepthScores,
    NormalScores,
    SegmentationScores,
    depth_loss,
    normal_loss,
    segmentation_loss,
)
from mao_lab.problems._mnist_idx import build_idx_pairs
from mao_lab.problems._nyuv2 import nyuv2 as nyuv2_problem

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
            matches = [
                j for j in pool if j != left and np.array_equal(image, reference_overlay(digits[left], digits[j]))
            ]
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


# --- dense metrics, by hand ------------------------------------------------------------------------


def one_hot_logits(labels: list[list[int]], classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(labels), classes).permute(2, 0, 1).float()[None]


def test_segmentation_scores_by_hand() -> None:
    labels = torch.tensor([[[0, 0, 1], [2, -1, 1]]])
    predicted = [[0, 1, 1], [2, 2, 0]]
    # Valid pixels (true, predicted): (0,0) (0,1) (1,1) (2,2) (1,0); the -1 pixel is ignored.
    # IoU: class 0 = 1 / (2 + 2 - 1), class 1 = 1 / (2 + 2 - 1), class 2 = 1 / (1 + 1 - 1).
    expected_miou, expected_accuracy = (1 / 3 + 1 / 3 + 1) / 3, 3 / 5
    for classes in (3, 4):  # a class that never occurs does not count in the mean
        scores = SegmentationScores(classes)
        scores.update(one_hot_logits(predicted, classes)[..., :1, :], labels[:, :1, :])  # two batches,
        scores.update(one_hot_logits(predicted, classes)[..., 1:, :], labels[:, 1:, :])  # one matrix
        miou, accuracy = scores.scores()
        assert miou == pytest.approx(expected_miou) and accuracy == pytest.approx(expected_accuracy)


def test_depth_scores_by_hand() -> None:
    scores = DepthScores()
    scores.update(torch.tensor([[[[1.0, 5.0], [5.0, 1.0]]]]), torch.tensor([[[[2.0, 0.0], [4.0, 1.0]]]]))
    # Valid: |1-2| = 1, |5-4| = 1, |1-1| = 0; relative 1/2, 1/4, 0.
    assert scores.scores() == pytest.approx((2 / 3, 0.25))
    scores.update(torch.tensor([[[[3.0]]]]), torch.tensor([[[[1.0]]]]))  # pooled over the 4 pixels
    assert scores.scores() == pytest.approx((4 / 4, (0.75 + 2) / 4))
    loss = depth_loss(torch.tensor([[[[1.0, 5.0], [5.0, 1.0]]]]), torch.tensor([[[[2.0, 0.0], [4.0, 1.0]]]]))
    assert loss.item() == pytest.approx(2 / 3)


def test_normal_scores_by_hand() -> None:
    degrees = [10.0, 20.0, 29.0, 40.0, 90.0]
    radians = np.deg2rad(degrees)
    # True normals along z; predictions tilted by each angle about x, then scaled by 3 (normalised away).
    true = torch.zeros(1, 3, 1, 6)
    true[0, 2, 0, :5] = 1.0  # the sixth pixel has no normal
    prediction = torch.zeros(1, 3, 1, 6)
    prediction[0, 1, 0, :5] = torch.tensor(3 * np.sin(radians), dtype=torch.float32)
    prediction[0, 2, 0, :5] = torch.tensor(3 * np.cos(radians), dtype=torch.float32)
    prediction[0, :, 0, 5] = torch.tensor([1.0, 0.0, 0.0])
    scores = NormalScores()
    scores.update(prediction, true)
    mean, median, within_11, within_22, within_30 = scores.scores()
    assert mean == pytest.approx(37.8, abs=1e-4) and median == pytest.approx(29.0, abs=1e-4)
    assert (within_11, within_22, within_30) == pytest.approx((1 / 5, 2 / 5, 3 / 5))
    assert normal_loss(prediction, true).item() == pytest.approx(1 - np.mean(np.cos(radians)), abs=1e-6)


def test_segmentation_loss_ignores_unlabelled_pixels() -> None:
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 5.0]]]])  # (1, 2 classes, 1, 2)
    labels = torch.tensor([[[1, -1]]])
    # Only the first pixel counts: -log softmax([2, 0])[1] = log(1 + e^2).
    assert segmentation_loss(logits, labels).item() == pytest.approx(np.log(1 + np.exp(2.0)))
    nothing = segmentation_loss(logits.requires_grad_(), torch.full((1, 1, 2), -1))
    assert nothing.item() == 0.0


# --- NYUv2 files -----------------------------------------------------------------------------------

H, W = 8, 12


def write_nyuv2(root: Path, sizes: dict[str, int] | None = None, channels_first: bool = False, seed: int = 0) -> dict:
    """The preprocessed release's layout: <root>/{train,val}/{image,label,depth,normal}/<i>.npy, H x W x C."""
    rng = np.random.default_rng(seed)
    written: dict[str, list[dict[str, np.ndarray]]] = {}
    for folder, n in (sizes or {"train": 5, "val": 3}).items():
        written[folder] = []
        for i in range(n):
            normal = rng.normal(size=(H, W, 3))
            normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
            depth = rng.uniform(0.5, 10, size=(H, W, 1))
            depth[0, :3] = 0.0
            normal[0, :3] = 0.0
            label = rng.integers(-1, 13, size=(H, W)).astype(np.float32)  # stored as floats, as released
            arrays = {"image": rng.uniform(size=(H, W, 3)), "label": label, "depth": depth, "normal": normal}
            written[folder].append(arrays)
            for modality, array in arrays.items():
                (root / folder / modality).mkdir(parents=True, exist_ok=True)
                stored = np.moveaxis(array, -1, 0) if channels_first and array.ndim == 3 else array
                np.save(root / folder / modality / f"{i}.npy", stored)
    return written


@pytest.mark.parametrize("channels_first", [False, True])
def test_nyuv2_reads_the_preprocessed_layout(tmp_path: Path, channels_first: bool) -> None:
    written = write_nyuv2(tmp_path, channels_first=channels_first)
    problem = load_problem("mao_lab.problems:nyuv2", root=str(tmp_path), validation_size=2, width=4, levels=2)
    assert [len(problem.dataset(s)) for s in ("train", "validation", "test")] == [3, 2, 3]
    for split, folder, offset in (("train", "train", 0), ("validation", "train", 3), ("test", "val", 0)):
        image, targets = problem.dataset(split)[1]
        source = written[folder][offset + 1]
        np.testing.assert_allclose(image.numpy(), np.moveaxis(source["image"], -1, 0), rtol=1e-6)
        np.testing.assert_array_equal(targets["segmentation"].numpy(), source["label"].astype(np.int64))
        np.testing.assert_allclose(targets["depth"].numpy(), np.moveaxis(source["depth"], -1, 0), rtol=1e-6)
        np.testing.assert_allclose(targets["normal"].numpy(), np.moveaxis(source["normal"], -1, 0), rtol=1e-6)
    images, targets = next(iter(problem.batches("train", batch_size=2)))
    assert images.shape == (2, 3, H, W) and targets["segmentation"].dtype == torch.int64
    losses = problem.task_losses(problem.build_model(), (images, targets))
    assert list(losses) == ["segmentation", "depth", "normal"] and all(torch.isfinite(v) for v in losses.values())


def npy_problem(root: Path) -> None:
    nyuv2_problem(root=root, validation_size=2)


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (lambda root: __import__("shutil").rmtree(root / "val" / "normal"), r"val/normal: missing folder"),
        (lambda root: (root / "train" / "depth" / "2.npy").unlink(), r"train/depth/2.npy: missing"),
        (lambda root: np.save(root / "val" / "image" / "0.npy", np.zeros((H, W, 4))), r"val/image/0.npy: shape"),
        (lambda root: (root / "val" / "label" / "0.npy").write_bytes(b"not numpy"), "not a readable .npy"),
        (lambda root: np.save(root / "val" / "label" / "0.npy", np.full((H, W), 13.0)), "outside -1..12"),
        (lambda root: np.save(root / "val" / "depth" / "0.npy", np.ones((H, W + 1, 1))), "different sizes"),
    ],
)
def test_a_malformed_nyuv2_folder_is_one_line_naming_the_file(tmp_path: Path, damage, fragment: str) -> None:
    write_nyuv2(tmp_path)
    damage(tmp_path)
    with pytest.raises(DatasetLayoutError) as caught:
        npy_problem(tmp_path)
    message = str(caught.value)
    assert "\n" not in message and re.search(fragment, message) and "{train,val}/{image,label,depth,normal}" in message


class ConstantDense(nn.Module):
    """Class 0 everywhere, depth 1 everywhere, the normal (0, 0, 2) everywhere, whatever the image."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b, _, h, w = x.shape
        logits = torch.zeros(b, 13, h, w)
        logits[:, 0] = 1.0
        normal = torch.zeros(b, 3, h, w)
        normal[:, 2] = 2.0
        return [logits, torch.ones(b, 1, h, w), normal]


def test_nyuv2_evaluate_pools_the_split_as_an_independent_loop_does(tmp_path: Path) -> None:
    written = write_nyuv2(tmp_path)
    problem = nyuv2_problem(root=tmp_path, validation_size=2, eval_batch_size=2)
    scores = {(m.task, m.metric): m.value for m in problem.evaluate(ConstantDense(), "test")}
    labels, depths, angles = [], [], []
    for arrays in written["val"]:
        labels += [int(v) for v in arrays["label"].ravel() if v >= 0]
        depths += [float(v) for v in arrays["depth"].ravel() if v != 0]
        for row in arrays["normal"].reshape(-1, 3):
            if any(row != 0):
                angles.append(np.degrees(np.arccos(np.clip(row[2], -1, 1))))
    # Always class 0: IoU of class 0 = (#0) / (#valid), of every other occurring class 0.
    occurring = set(labels)
    assert scores[("segmentation", "miou")] == pytest.approx(labels.count(0) / len(labels) / len(occurring))
    assert scores[("segmentation", "pixel_accuracy")] == pytest.approx(labels.count(0) / len(labels))
    assert scores[("depth", "abs_error")] == pytest.approx(np.mean([abs(1 - d) for d in depths]), rel=1e-5)
    assert scores[("depth", "rel_error")] == pytest.approx(np.mean([abs(1 - d) / d for d in depths]), rel=1e-5)
    assert scores[("normal", "angle_mean")] == pytest.approx(np.mean(angles), rel=1e-5)
    assert scores[("normal", "angle_median")] == pytest.approx(np.median(angles), rel=1e-5)
    for threshold in (11.25, 22.5, 30):
        assert scores[("normal", f"within_{threshold:g}")] == pytest.approx(np.mean(np.array(angles) < threshold))
    directions = {(m.task, m.metric): m.higher_is_better for m in problem.evaluate(ConstantDense(), "validation")}
    assert directions[("segmentation", "miou")] and not directions[("depth", "abs_error")]
    assert not directions[("normal", "angle_median")] and directions[("normal", "within_30")]


def test_synthetic_nyuv2_has_the_real_shapes_and_trains() -> None:
    problem = nyuv2_problem(synthetic=True, synthetic_shape=(16, 24), synthetic_sizes=(4, 2, 2), width=4, batch_size=2)
    model = problem.build_model()
    images, targets = next(iter(problem.batches("train")))
    assert images.shape == (2, 3, 16, 24) and targets["depth"].shape == (2, 1, 16, 24)
    assert targets["segmentation"].min() >= -1 and targets["segmentation"].max() <= 12
    outputs = model(images)
    assert [tuple(y.shape) for y in outputs] == [(2, 13, 16, 24), (2, 1, 16, 24), (2, 3, 16, 24)]
    assert torch.allclose(outputs[2].norm(dim=1), torch.ones(2, 16, 24), atol=1e-5)  # unit normals
    sum(problem.task_losses(model, (images, targets)).values()).backward()
    assert all(p.grad is not None for p in model.trunk.parameters())
    again = problem.dataset("train")[[1, 0]]
    assert torch.equal(again[0][1], problem.dataset("train")[[0]][0][0])  # an item is fixed by its index
    assert len(problem.evaluate(model, "test")) == 9


# --- CelebA ----------------------------------------------------------------------------------------

FACE_COLOURS = [
    (200, 50, 10),
    (10, 200, 50),
    (50, 10, 200),
    (120, 120, 120),
    (250, 250, 0),
    (0, 0, 0),
    (30, 90, 150),
    (255, 255, 255),
]
PARTITION = [0, 0, 1, 0, 2, 0, 1, 2]  # 4 train, 2 validation, 2 test, interleaved as in the release


def write_celeba(root: Path, release_folders: bool = False, seed: int = 0, kaggle: bool = False) -> np.ndarray:
    """The aligned release: 178 x 218 JPEGs, the attribute list (with its -1/1 values) and the partition.

    With ``kaggle``, as Kaggle's copy unzips: the JPEGs in ``img_align_celeba/img_align_celeba/`` and the two
    lists as CSV files with a header row (``image_id,...``) at the root.
    """
    rng = np.random.default_rng(seed)
    values = rng.choice([-1, 1], size=(len(FACE_COLOURS), len(CELEBA_ATTRIBUTES)))
    names = [f"{k + 1:06d}.jpg" for k in range(len(FACE_COLOURS))]
    anno, evaluation, faces = (
        (root / "Anno", root / "Eval", root / "Img" / "img_align_celeba")
        if release_folders
        else (root, root, root / "img_align_celeba" / "img_align_celeba" if kaggle else root / "img_align_celeba")
    )
    for folder in (anno, evaluation, faces):
        folder.mkdir(parents=True, exist_ok=True)
    for name, colour in zip(names, FACE_COLOURS):
        Image.new("RGB", (178, 218), colour).save(faces / name, quality=95)
    if kaggle:
        header = ",".join(("image_id", *CELEBA_ATTRIBUTES))
        rows = [",".join([name, *(str(v) for v in row)]) for name, row in zip(names, values)]
        (root / "list_attr_celeba.csv").write_text("\n".join([header, *rows]) + "\n")
        partition = "".join(f"{n},{p}\n" for n, p in zip(names, PARTITION))
        (root / "list_eval_partition.csv").write_text("image_id,partition\n" + partition)
        return values
    # As released: the count, the names with a trailing space, values padded to two characters.
    lines = [str(len(names)), " ".join(CELEBA_ATTRIBUTES) + " "]
    lines += [name + " " + " ".join(f"{v:2d}" for v in row) for name, row in zip(names, values)]
    (anno / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (evaluation / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, p in zip(names, PARTITION)))
    return values


@pytest.mark.parametrize(
    ("release_folders", "kaggle"), [(False, False), (True, False), (False, True)], ids=["flat", "release", "kaggle"]
)
def test_celeba_reads_the_official_partition_and_labels(tmp_path: Path, release_folders: bool, kaggle: bool) -> None:
    values = write_celeba(tmp_path, release_folders, kaggle=kaggle)
    problem = load_problem("mao_lab.problems:celeba", root=str(tmp_path), size=64, width=2, blocks=(1, 1))
    assert problem.task_names == CELEBA_ATTRIBUTES and len(problem.task_names) == 40
    for split, code in (("train", 0), ("validation", 1), ("test", 2)):
        rows = [k for k, p in enumerate(PARTITION) if p == code]
        data = problem.dataset(split)
        assert len(data) == len(rows)
        for item, row in enumerate(rows):
            image, labels = data[item]
            assert image.shape == (3, 64, 64)
            # A face of one colour comes back as that colour in [0, 1], red first (JPEG: within 3/255).
            expected = torch.tensor(FACE_COLOURS[row], dtype=torch.float32)[:, None, None] / 255
            assert (image - expected).abs().max() <= 3 / 255
            assert labels.tolist() == [1.0 if v == 1 else 0.0 for v in values[row]]


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (lambda root: (root / "list_attr_celeba.csv").unlink(), r"list_attr_celeba.txt: missing \(nor .*\.csv\)"),
        (
            lambda root: _edit(root / "list_attr_celeba.csv", 0, lambda line: line.replace("image_id", "file")),
            "list_attr_celeba.csv: line 1 is not the header",
        ),
        (
            lambda root: _edit(root / "list_attr_celeba.csv", 3, lambda line: line.rsplit(",", 1)[0] + ",0"),
            "list_attr_celeba.csv: line 4 holds a value",
        ),
        (
            lambda root: _edit(root / "list_eval_partition.csv", 3, lambda line: line.replace(",1", ",3")),
            "list_eval_partition.csv: line 4 is not",
        ),
        (
            lambda root: (root / "img_align_celeba" / "img_align_celeba" / "000001.jpg").unlink(),
            r"img_align_celeba/img_align_celeba/000001.jpg: missing",
        ),
    ],
)
def test_a_malformed_kaggle_celeba_folder_is_one_line_naming_the_file(tmp_path: Path, damage, fragment: str) -> None:
    write_celeba(tmp_path, kaggle=True)
    damage(tmp_path)
    with pytest.raises(DatasetLayoutError) as caught:
        celeba(root=tmp_path)
    message = str(caught.value)
    assert "\n" not in message and re.search(fragment, message) and "img_align_celeba/img_align_celeba/" in message


class ConstantLogits(nn.Module):
    """Predicts 'present' (logit +1) for every attribute asked for."""

    def __init__(self, tasks: int) -> None:
        super().__init__()
        self.tasks = tasks

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.ones(len(x)) for _ in range(self.tasks)]


def test_celeba_evaluate_and_losses_use_each_attributes_column(tmp_path: Path) -> None:
    values = write_celeba(tmp_path)
    chosen = ("Smiling", "Young", "5_o_Clock_Shadow")
    problem = celeba(root=tmp_path, size=16, tasks=chosen, width=2, blocks=(1, 1), eval_batch_size=3)
    train_rows = [k for k, p in enumerate(PARTITION) if p == 0]
    for name, score in zip(chosen, problem.evaluate(ConstantLogits(3), "train")):
        column = CELEBA_ATTRIBUTES.index(name)
        assert score.task == name and score.metric == "accuracy" and score.higher_is_better
        assert score.value == pytest.approx(np.mean([values[r, column] == 1 for r in train_rows]))
    batch = next(iter(problem.batches("train", batch_size=4)))
    losses = problem.task_losses(ConstantLogits(3), batch)
    for name in chosen:
        present = batch[1][:, CELEBA_ATTRIBUTES.index(name)]
        # Binary cross-entropy of logit 1: -log sigmoid(1) where present, -log(1 - sigmoid(1)) where absent.
        expected = np.mean([np.log1p(np.exp(-1.0)) if p == 1 else np.log1p(np.exp(1.0)) for p in present.tolist()])
        assert losses[name].item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="distinct attributes"):
        celeba(root=tmp_path, tasks=("Smiling", "Grumpy"))


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (lambda root: (root / "list_eval_partition.txt").unlink(), r"list_eval_partition.txt: missing"),
        (lambda root: (root / "img_align_celeba" / "000001.jpg").unlink(), r"000001.jpg: missing"),
        (lambda root: (root / "img_align_celeba" / "000001.jpg").write_bytes(b"no jpeg"), "not a readable image"),
        (
            lambda root: _edit(root / "list_attr_celeba.txt", 1, lambda line: line.replace("Young", "")),
            "line 2 names 39 attributes",
        ),
        (lambda root: _edit(root / "list_attr_celeba.txt", 4, lambda line: line[:-2] + " 0"), "line 5 holds a value"),
        (lambda root: _edit(root / "list_attr_celeba.txt", 0, lambda line: "9"), "where line 1 says 9"),
        (lambda root: _edit(root / "list_eval_partition.txt", 2, lambda line: line.replace(" 1", " 3")), "line 3 is"),
    ],
)
def test_a_malformed_celeba_folder_is_one_line_naming_the_file(tmp_path: Path, damage, fragment: str) -> None:
    write_celeba(tmp_path)
    damage(tmp_path)
    with pytest.raises(DatasetLayoutError) as caught:
        celeba(root=tmp_path)
    message = str(caught.value)
    assert "\n" not in message and re.search(fragment, message) and "list_attr_celeba.txt (count" in message


def _edit(file: Path, line: int, change) -> None:
    lines = file.read_text().splitlines()
    lines[line] = change(lines[line])
    file.write_text("\n".join(lines) + "\n")


def test_synthetic_celeba_has_the_real_shapes_and_trains() -> None:
    problem = celeba(synthetic=True, size=64, width=2, blocks=(1, 1, 1, 1), batch_size=3, synthetic_sizes=(6, 3, 3))
    model = problem.build_model()
    images, labels = next(iter(problem.batches("train")))
    assert images.shape == (3, 3, 64, 64) and labels.shape == (3, 40) and set(labels.unique().tolist()) <= {0.0, 1.0}
    losses = problem.task_losses(model, (images, labels))
    assert len(losses) == 40 and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.trunk.parameters())
    assert len(problem.evaluate(model, "test")) == 40
    assert sum(p.numel() for p in ResNet18Trunk().parameters()) == 11_168_832  # ResNet-18 less its 7x7 stem and fc


# --- the benchmark ---------------------------------------------------------------------------------


def test_problems_benchmark_reports_times_ratios_and_state_memory() -> None:
    from mao_lab.bench._problems_bench import ProblemBenchConfig, run_problems_benchmark

    configs = [
        ProblemBenchConfig(
            "celeba",
            "mao_lab.problems:celeba",
            {"synthetic": True, "size": 8, "width": 2, "blocks": (1, 1), "synthetic_sizes": (2, 1, 1)},
        ),
        ProblemBenchConfig(
            "nyuv2",
            "mao_lab.problems:nyuv2",
            {"synthetic": True, "synthetic_shape": (8, 12), "width": 2, "levels": 2, "synthetic_sizes": (2, 1, 1)},
        ),
    ]
    result = run_problems_benchmark(threads=1, repetitions=1, batch=2, configs=configs)
    assert result["benchmark"] == "problems" and result["device"] == "cpu"
    by_problem = {entry["problem"]: entry for entry in result["configs"]}
    assert by_problem["celeba"]["tasks"] == 40 and by_problem["nyuv2"]["tasks"] == 3
    assert by_problem["celeba"]["input_shape"] == [3, 8, 8] and by_problem["nyuv2"]["input_shape"] == [3, 8, 12]
    for entry in result["configs"]:
        assert set(entry["median_ms"]) == {"limit", "mao", "adam_sum"}
        assert all(value > 0 for value in entry["median_ms"].values())
        assert entry["mao_vs_limit"] > 0 and entry["mao_vs_adam_sum"] > 0
        # MAO keeps two float32 moments per task for every shared parameter, two for every head parameter.
        shared, heads, tasks = entry["shared_params"], entry["task_specific_params"], entry["tasks"]
        assert entry["mao_state_bytes"] == 4 * (2 * tasks * shared + 2 * heads)
        assert entry["adam_state_bytes"] == 4 * (2 * shared + 2 * heads)
    trunk = ResNet18Trunk(width=2, blocks=(1, 1))
    assert by_problem["celeba"]["shared_params"] == sum(p.numel() for p in trunk.parameters())
    assert by_problem["celeba"]["task_specific_params"] == 40 * (trunk.features + 1)


def test_problems_benchmark_cli_refuses_a_missing_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    from mao_lab.bench.__main__ import main

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit) as caught:
        main(["problems", "--device", "cuda"])
    assert caught.value.code == 2 and "CUDA is not available" in capsys.readouterr().err


def test_worker_processes_load_the_same_batches(tmp_path: Path) -> None:
    write_nyuv2(tmp_path)
    in_process = nyuv2_problem(root=tmp_path, validation_size=2, eval_batch_size=2)
    workers = nyuv2_problem(root=tmp_path, validation_size=2, eval_batch_size=2, num_workers=2)
    for (a, ta), (b, tb) in zip(in_process.batches("test"), workers.batches("test"), strict=True):
        assert torch.equal(a, b) and all(torch.equal(ta[k], tb[k]) for k in ta)
    stream_a, stream_b = iter(in_process.batches("train", seed=4)), iter(workers.batches("train", seed=4))
    for _ in range(3):  # across an epoch boundary (3 training images, batches of 8 -> one batch an epoch)
        assert torch.equal(next(stream_a)[0], next(stream_b)[0])
    with pytest.raises(ValueError, match="num_workers must be an int >= 0"):
        nyuv2_problem(root=tmp_path, num_workers=-1)
