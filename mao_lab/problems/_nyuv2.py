"""NYUv2: 13-class segmentation, depth and surface normals, in the preprocessed layout of MTAN and its successors.

The data is the preprocessed NYUv2 release of MTAN (Liu, Johns & Davison, CVPR 2019), which CAGrad,
Nash-MTL, FAMO and LibMTL train on: 795 training and 654 test images at 288x384, one ``.npy`` file per
image and modality, stored height x width x channels (the loaders of ``lorenmt/mtan``
``im2im_pred/create_dataset.py`` and of LibMTL ``examples/nyu/create_dataset.py`` move the channel
axis first with ``np.moveaxis(..., -1, 0)``)::

    <root>/train/image/<i>.npy    float, 288 x 384 x 3, RGB in [0, 1]
    <root>/train/label/<i>.npy    288 x 384, classes 0..12, -1 where unlabelled
    <root>/train/depth/<i>.npy    float, 288 x 384 x 1, metres, 0 where missing
    <root>/train/normal/<i>.npy   float, 288 x 384 x 3, unit normals, 0 where missing
    <root>/val/...                the same four folders

with ``<i>`` running over ``0 .. n-1`` in each split.  Files saved channels-first (``3 x 288 x 384``)
are read too.

Splits: the literature trains on ``train`` and reports on ``val`` and chooses nothing on a held-out
set.  Here ``test`` is the ``val`` folder, and ``validation`` is the last ``validation_size``
training images (100 by default), held out of ``train``.  No augmentation (MTAN's own results use none).

Model: a SegNet-style encoder-decoder trunk (:class:`SegNetTrunk`: convolution blocks with max-pooling,
max-unpooling with the pooling indices on the way back) and one small convolutional head per task;
MTAN's SegNet is the same design, wider and one level deeper.  Losses and metrics: :mod:`._dense_metrics`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from ._dataset_tools import (
    BatchedDataset,
    DatasetLayoutError,
    DatasetProblem,
    require_folder,
)
from ._dense_metrics import (
    DepthScores,
    NormalScores,
    SegmentationScores,
    depth_loss,
    normal_loss,
    segmentation_loss,
)
from ._interface import Split, TaskMetric
from ._model import MultiTaskNet

__all__ = ["NYUV2_LAYOUT", "NYUV2_TASKS", "NYUv2", "NYUv2Files", "SegNetTrunk", "nyuv2", "nyuv2_model"]

NYUV2_TASKS = ("segmentation", "depth", "normal")
NUM_CLASSES = 13
NYUV2_SHAPE = (288, 384)
MODALITIES = ("image", "label", "depth", "normal")
CHANNELS = {"image": 3, "label": 0, "depth": 1, "normal": 3}
FOLDERS = {"train": "train", "test": "val"}

NYUV2_LAYOUT = (
    "<root>/{train,val}/{image,label,depth,normal}/<i>.npy for i = 0..n-1: image HxWx3 float, label HxW "
    "(0..12, -1 = unlabelled), depth HxWx1, normal HxWx3, H x W = 288 x 384 in MTAN's preprocessed release "
    "(see docs/datasets.md)"
)


# --- files -----------------------------------------------------------------------------------------


def _numbered(folder: Path) -> int:
    """How many files ``0.npy .. n-1.npy`` the folder holds (and nothing else numbered)."""
    if not folder.is_dir():
        raise DatasetLayoutError.of(folder, "missing folder", NYUV2_LAYOUT)
    numbers = sorted(int(m.group(1)) for p in folder.iterdir() if (m := re.fullmatch(r"(\d+)\.npy", p.name)))
    if not numbers:
        raise DatasetLayoutError.of(folder, "no <i>.npy files", NYUV2_LAYOUT)
    if numbers != list(range(len(numbers))):
        missing = sorted(set(range(numbers[-1] + 1)) - set(numbers))
        raise DatasetLayoutError.of(
            folder / f"{missing[0]}.npy", "missing (files must be numbered 0..n-1)", NYUV2_LAYOUT
        )
    return len(numbers)


def _channels_first(array: np.ndarray, channels: int, file: Path) -> np.ndarray:
    """``array`` as ``(C, H, W)`` (``(H, W)`` for labels), from the stored ``(H, W, C)`` or ``(C, H, W)``."""
    if channels == 0:
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        elif array.ndim == 3 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != 2:
            raise DatasetLayoutError.of(file, f"a label map of shape {array.shape}, not H x W", NYUV2_LAYOUT)
        return array
    if array.ndim == 2 and channels == 1:
        return array[None]
    if array.ndim == 3 and array.shape[-1] == channels:
        return np.moveaxis(array, -1, 0)
    if array.ndim == 3 and array.shape[0] == channels:
        return array
    raise DatasetLayoutError.of(file, f"shape {array.shape}, not H x W x {channels}", NYUV2_LAYOUT)


class NYUv2Files(Dataset):
    """One folder of the preprocessed release (``train`` or ``val``), an item per index.

    Item ``i`` is ``(image float (3, H, W), {"segmentation": int64 (H, W), "depth": float (1, H, W),
    "normal": float (3, H, W)})``, read from ``<folder>/{image,label,depth,normal}/<i>.npy``.
    """

    def __init__(self, folder: Path, indices: Sequence[int] | None = None) -> None:
        counts = {m: _numbered(folder / m) for m in MODALITIES}
        if len(set(counts.values())) != 1:
            raise DatasetLayoutError.of(
                folder,
                "modalities hold different numbers of files ("
                + ", ".join(f"{m}: {n}" for m, n in counts.items())
                + ")",
                NYUV2_LAYOUT,
            )
        self.folder = folder
        self.indices = list(range(counts["image"])) if indices is None else list(indices)
        self.shape = self[0][0].shape[-2:] if self.indices else None  # reads (and checks) the first item

    def __len__(self) -> int:
        return len(self.indices)

    def _load(self, modality: str, index: int) -> np.ndarray:
        file = self.folder / modality / f"{index}.npy"
        try:
            array = np.load(file, allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            raise DatasetLayoutError.of(
                file, f"not a readable .npy file ({type(error).__name__}: {error})", NYUV2_LAYOUT
            ) from None
        return _channels_first(array, CHANNELS[modality], file)

    def __getitem__(self, item: int) -> tuple[Tensor, dict[str, Tensor]]:
        index = self.indices[item]
        arrays = {m: self._load(m, index) for m in MODALITIES}
        sizes = {m: a.shape[-2:] for m, a in arrays.items()}
        if len(set(sizes.values())) != 1:
            raise DatasetLayoutError.of(
                self.folder / "*" / f"{index}.npy", f"modalities of different sizes {sizes}", NYUV2_LAYOUT
            )
        label = np.rint(arrays["label"]).astype(np.int64)
        if label.size and (label.min() < -1 or label.max() >= NUM_CLASSES):
            raise DatasetLayoutError.of(
                self.folder / "label" / f"{index}.npy",
                f"labels {label.min()}..{label.max()} outside -1..12",
                NYUV2_LAYOUT,
            )
        image = torch.from_numpy(np.ascontiguousarray(arrays["image"], dtype=np.float32))
        return image, {
            "segmentation": torch.from_numpy(label),
            "depth": torch.from_numpy(np.ascontiguousarray(arrays["depth"], dtype=np.float32)),
            "normal": torch.from_numpy(np.ascontiguousarray(arrays["normal"], dtype=np.float32)),
        }


class SyntheticNYUv2(BatchedDataset):
    """Random data of NYUv2's shapes, drawn per index (the same index gives the same item), for throughput
    benchmarks and shape tests: unit normals, depths in ``[0.5, 10]`` with 5% missing, 5% unlabelled pixels."""

    def __init__(self, size: int, shape: tuple[int, int], seed: int) -> None:
        self.size, self.shape, self.seed = size, shape, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, indices: Sequence[int]) -> tuple[Tensor, dict[str, Tensor]]:
        items = [self._item(int(i)) for i in indices]
        return torch.stack([x for x, _ in items]), {
            task: torch.stack([targets[task] for _, targets in items]) for task in NYUV2_TASKS
        }

    def _item(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        h, w = self.shape
        missing = torch.rand(1, h, w, generator=g) < 0.05
        label = torch.randint(0, NUM_CLASSES, (h, w), generator=g)
        label[torch.rand(h, w, generator=g) < 0.05] = -1
        depth = (0.5 + 9.5 * torch.rand(1, h, w, generator=g)).masked_fill(missing, 0.0)
        normal = F.normalize(torch.randn(3, h, w, generator=g), dim=0).masked_fill(missing, 0.0)
        return torch.rand(3, h, w, generator=g), {"segmentation": label, "depth": depth, "normal": normal}


# --- model -----------------------------------------------------------------------------------------


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SegNetTrunk(nn.Module):
    """SegNet-style encoder-decoder: ``levels`` blocks of two 3x3 convolutions, each followed by 2x2
    max-pooling (widths ``width, 2 width, 4 width, ...``), then as many blocks back up, each after a
    max-unpooling with the pooling indices.  Output: ``(B, width, H, W)`` features at full resolution.

    >>> SegNetTrunk(width=4, levels=2)(torch.zeros(1, 3, 12, 20)).shape
    torch.Size([1, 4, 12, 20])
    """

    def __init__(self, width: int = 32, levels: int = 4, in_channels: int = 3) -> None:
        super().__init__()
        widths = [width * 2**k for k in range(levels)]
        self.down = nn.ModuleList(
            nn.Sequential(_conv(c_in, c_out), _conv(c_out, c_out))
            for c_in, c_out in zip([in_channels, *widths], widths)
        )
        # On the way up, level k's block maps its width back to level k-1's (the last one keeps `width`).
        self.up = nn.ModuleList(
            nn.Sequential(_conv(c, c), _conv(c, c_next)) for c, c_next in zip(widths[::-1], [*widths[::-1][1:], width])
        )

    def forward(self, x: Tensor) -> Tensor:
        pooled: list[tuple[Tensor, torch.Size]] = []
        for block in self.down:
            x = block(x)
            size = x.shape[-2:]
            x, indices = F.max_pool2d(x, 2, return_indices=True)
            pooled.append((indices, size))
        for block, (indices, size) in zip(self.up, reversed(pooled)):
            x = block(F.max_unpool2d(x, indices, 2, output_size=size))
        return x


class _NormalHead(nn.Module):
    """Unit normals: MTAN's SegNet normalises its normal output too."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, features: Tensor) -> Tensor:
        return F.normalize(self.head(features), dim=1)


def _head(task: str, width: int) -> nn.Module:
    out = {"segmentation": NUM_CLASSES, "depth": 1, "normal": 3}[task]
    head = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(width, out, 1))
    return _NormalHead(head) if task == "normal" else head


def nyuv2_model(tasks: Sequence[str] = NYUV2_TASKS, width: int = 32, levels: int = 4) -> MultiTaskNet:
    """The SegNet-style trunk and one head per task (13 logits, 1 depth, 3 unit-normal channels per pixel).

    >>> [tuple(y.shape) for y in nyuv2_model(width=4, levels=2)(torch.zeros(2, 3, 8, 12))]
    [(2, 13, 8, 12), (2, 1, 8, 12), (2, 3, 8, 12)]
    """
    return MultiTaskNet(SegNetTrunk(width, levels), [_head(task, width) for task in tasks])


# --- the problem -----------------------------------------------------------------------------------


class NYUv2(DatasetProblem):
    """NYUv2 from the preprocessed release (or synthetic data of its shapes); build with :func:`nyuv2`."""

    name = "nyuv2"
    task_names = NYUV2_TASKS

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        synthetic: bool = False,
        validation_size: int = 100,
        width: int = 32,
        levels: int = 4,
        batch_size: int = 8,
        eval_batch_size: int = 8,
        num_workers: int = 0,
        pin_memory: bool = False,
        synthetic_shape: tuple[int, int] = NYUV2_SHAPE,
        synthetic_sizes: tuple[int, int, int] = (64, 16, 16),
    ) -> None:
        super().__init__(
            batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers, pin_memory=pin_memory
        )
        for name, value in (("width", width), ("levels", levels), ("validation_size", validation_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.width, self.levels = width, levels
        self._splits: dict[str, Dataset]
        if synthetic:
            shape = tuple(synthetic_shape)
            self._splits = {
                split: SyntheticNYUv2(n, shape, seed)
                for seed, (split, n) in enumerate(zip(("train", "validation", "test"), synthetic_sizes))  # type: ignore[arg-type]
            }
            self.description = f"synthetic NYUv2-shaped data ({shape[0]}x{shape[1]}); SegNet-style trunk, width {width}"
            return
        folder = require_folder(root, NYUV2_LAYOUT)
        train = NYUv2Files(folder / FOLDERS["train"])
        if validation_size >= len(train):
            raise ValueError(f"validation_size={validation_size} leaves no training image ({len(train)} in all)")
        cut = len(train) - validation_size
        self._splits = {
            "train": NYUv2Files(folder / "train", range(cut)),
            "validation": NYUv2Files(folder / "train", range(cut, len(train))),
            "test": NYUv2Files(folder / FOLDERS["test"]),
        }
        self.description = (
            f"NYUv2 ({cut} train / {validation_size} validation held out of train / {len(self._splits['test'])} "
            f"test = the val folder); SegNet-style trunk, width {width}, {levels} levels"
        )

    def build_model(self, tasks: Sequence[str] | None = None) -> MultiTaskNet:
        return nyuv2_model(self.tasks_or_all(tasks), self.width, self.levels)

    def task_losses(
        self, model: nn.Module, batch: tuple[Tensor, dict[str, Tensor]], tasks: Sequence[str] | None = None
    ) -> dict[str, Tensor]:
        names = self.tasks_or_all(tasks)
        image, targets = batch
        return {task: _LOSSES[task](output, targets[task]) for task, output in zip(names, model(image))}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: Split, tasks: Sequence[str] | None = None) -> list[TaskMetric]:
        names = self.tasks_or_all(tasks)
        scorers = {"segmentation": SegmentationScores(NUM_CLASSES), "depth": DepthScores(), "normal": NormalScores()}
        was_training = model.training
        model.eval()
        try:
            for image, targets in self._evaluation_batches(model, split):
                for task, output in zip(names, model(image)):
                    scorers[task].update(output, targets[task])  # type: ignore[attr-defined]
        finally:
            model.train(was_training)
        metrics: list[TaskMetric] = []
        for task in names:
            values = scorers[task].scores()  # type: ignore[attr-defined]
            metrics += [TaskMetric(task, name, float(v), higher) for (name, higher), v in zip(METRICS[task], values)]
        return metrics

    def task_sets(self) -> Mapping[str, tuple[str, ...]]:
        return {"different_nature": NYUV2_TASKS}


_LOSSES = {"segmentation": segmentation_loss, "depth": depth_loss, "normal": normal_loss}

METRICS: Mapping[str, tuple[tuple[str, bool], ...]] = {
    "segmentation": (("miou", True), ("pixel_accuracy", True)),
    "depth": (("abs_error", False), ("rel_error", False)),
    "normal": (
        ("angle_mean", False),
        ("angle_median", False),
        ("within_11.25", True),
        ("within_22.5", True),
        ("within_30", True),
    ),
}
"""Each task's metrics, in the order MTAN prints them, with whether higher is better."""


def nyuv2(root: str | os.PathLike[str] | None = None, **options: object) -> NYUv2:
    """NYUv2 from ``root`` (``--problem mao_lab.problems:nyuv2``), or ``nyuv2(synthetic=True)``.

    Options: ``validation_size`` (100), ``width`` (32), ``levels`` (4), ``batch_size`` (8),
    ``eval_batch_size`` (8), ``num_workers`` (0), ``pin_memory`` (False); with ``synthetic=True``,
    ``synthetic_shape`` ((288, 384)) and ``synthetic_sizes`` ((64, 16, 16) items per split).

    Raises:
        DatasetLayoutError: a folder or file is missing or malformed (one line naming it and the layout).

    >>> problem = nyuv2(synthetic=True, synthetic_shape=(8, 12), width=4, levels=2, batch_size=2)
    >>> sorted(problem.task_losses(problem.build_model(), next(iter(problem.batches("train")))))
    ['depth', 'normal', 'segmentation']
    """
    return NYUv2(root, **options)  # type: ignore[arg-type]
