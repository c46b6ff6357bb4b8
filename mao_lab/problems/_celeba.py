"""CelebA: 40 binary face attributes, one task each (T = 40), as Sener & Koltun (2018) and FAMO pose it.

Read from the user's copy of the aligned-and-cropped release (Liu et al., ICCV 2015), in either of the
two layouts it is distributed in::

    <root>/list_attr_celeba.txt          <root>/Anno/list_attr_celeba.txt
    <root>/list_eval_partition.txt   or  <root>/Eval/list_eval_partition.txt
    <root>/img_align_celeba/*.jpg        <root>/Img/img_align_celeba/*.jpg

or as Kaggle's copy unzips it::

    <root>/list_attr_celeba.csv
    <root>/list_eval_partition.csv
    <root>/img_align_celeba/img_align_celeba/*.jpg

Kaggle's CSV files hold the same table with commas and a header row (``image_id,5_o_Clock_Shadow,...`` and
``image_id,partition``) instead of the count line.

``list_attr_celeba.txt``: the number of images, a line of the 40 attribute names, then one line per image,
``000001.jpg`` and 40 values of ``-1`` or ``1``.  ``list_eval_partition.txt``: ``000001.jpg 0`` per image,
0 = train (162 770 images), 1 = validation (19 867), 2 = test (19 962): the official partition, used
as it is.

Images (178 x 218 JPEGs) are decoded with Pillow and resized whole to ``size x size`` (64 by default)
with bilinear filtering, as Sener & Koltun's loader does (``imresize`` of the full aligned image), and
scaled to ``[0, 1]``; attribute ``-1`` becomes 0.

Model: a ResNet-18-style trunk written here (:class:`ResNet18Trunk`: a 3x3 stem without max-pooling,
four stages of two basic blocks, global average pooling to ``8 * width`` features) and one linear
logit per attribute; loss: binary cross-entropy; metric: accuracy per attribute.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from ._dataset_tools import (
    BatchedDataset,
    DatasetLayoutError,
    DatasetProblem,
    require_folder,
)
from ._interface import Split, TaskMetric
from ._model import MultiTaskNet

__all__ = ["CELEBA_ATTRIBUTES", "CELEBA_LAYOUT", "CelebA", "ResNet18Trunk", "celeba", "celeba_model"]

CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
)
"""The 40 attributes, in the order of ``list_attr_celeba.txt``'s columns."""

CELEBA_LAYOUT = (
    "<root>/list_attr_celeba.txt (count, 40 attribute names, then '<name>.jpg' and 40 values -1/1 per line), "
    "<root>/list_eval_partition.txt ('<name>.jpg 0|1|2' per line) and <root>/img_align_celeba/<name>.jpg "
    "(or the release's Anno/, Eval/ and Img/img_align_celeba/ subfolders, or Kaggle's list_attr_celeba.csv, "
    "list_eval_partition.csv and img_align_celeba/img_align_celeba/; see docs/datasets.md)"
)

PARTITIONS = {"train": 0, "validation": 1, "test": 2}


# --- files -----------------------------------------------------------------------------------------


def _locate(root: Path, name: str, subfolder: str) -> Path:
    """``root/name`` or ``root/subfolder/name``, or for a ``.txt`` list Kaggle's ``root/<stem>.csv``."""
    candidates = [root / name, root / subfolder / name]
    if name.endswith(".txt"):
        candidates.append(root / name.replace(".txt", ".csv"))
    for candidate in candidates:
        if candidate.exists():
            return candidate
    others = " nor ".join(str(c.relative_to(root)) for c in candidates[1:])
    raise DatasetLayoutError.of(root / name, f"missing (nor {others})", CELEBA_LAYOUT)


def _locate_faces(root: Path) -> Path:
    """The folder of the JPEGs: ``img_align_celeba`` or ``Img/img_align_celeba``, or Kaggle's doubly nested
    ``img_align_celeba/img_align_celeba`` (its zip holds the release's folder inside a folder of the same name)."""
    faces = _locate(root, "img_align_celeba", "Img")
    nested = faces / "img_align_celeba"
    return nested if nested.is_dir() else faces


def _split_row(line: str, csv: bool) -> list[str]:
    return [field.strip() for field in line.split(",")] if csv else line.split()


def read_attributes(file: Path) -> tuple[tuple[str, ...], list[str], np.ndarray]:
    """``list_attr_celeba.txt`` (or Kaggle's ``.csv``): the attribute names, the image names, and ``uint8 (n, 40)``
    labels in {0, 1}.

    The release's text file starts with the number of images and a line of the 40 names; Kaggle's CSV with
    a header ``image_id,<the 40 names>``.  Either way, one row per image follows: its file name, 40 values -1/1.
    """
    lines = _read_lines(file)
    csv = file.suffix == ".csv"
    if csv:
        header = _split_row(lines[0], csv=True) if lines else []
        if not header or header[0] != "image_id":
            raise DatasetLayoutError.of(file, "line 1 is not the header 'image_id,<40 attribute names>'", CELEBA_LAYOUT)
        names, first, declared = tuple(header[1:]), 2, None
    else:
        if len(lines) < 2 or not lines[0].strip().isdigit():
            raise DatasetLayoutError.of(file, "line 1 is not the number of images", CELEBA_LAYOUT)
        names, first, declared = tuple(lines[1].split()), 3, int(lines[0])
    if len(names) != len(CELEBA_ATTRIBUTES):
        where = "line 1" if csv else "line 2"
        raise DatasetLayoutError.of(file, f"{where} names {len(names)} attributes, not 40", CELEBA_LAYOUT)
    rows = [_split_row(line, csv) for line in lines[first - 1 :] if line.strip()]
    if declared is not None and len(rows) != declared:
        raise DatasetLayoutError.of(file, f"{len(rows)} image lines where line 1 says {declared}", CELEBA_LAYOUT)
    images, values = [], np.empty((len(rows), len(names)), dtype=np.int8)
    for k, row in enumerate(rows):
        if len(row) != len(names) + 1:
            raise DatasetLayoutError.of(file, f"line {k + first} has {len(row) - 1} values, not 40", CELEBA_LAYOUT)
        try:
            values[k] = [int(v) for v in row[1:]]
        except ValueError:
            problem = f"line {k + first} holds a value that is not -1 or 1"
            raise DatasetLayoutError.of(file, problem, CELEBA_LAYOUT) from None
        images.append(row[0])
    if not np.isin(values, (-1, 1)).all():
        bad = int(np.flatnonzero(~np.isin(values, (-1, 1)).all(axis=1))[0])
        raise DatasetLayoutError.of(file, f"line {bad + first} holds a value that is not -1 or 1", CELEBA_LAYOUT)
    return names, images, (values > 0).astype(np.uint8)


def read_partition(file: Path) -> dict[str, int]:
    """``list_eval_partition.txt`` (or Kaggle's ``.csv``, after its header ``image_id,partition``):
    image name -> 0 (train), 1 (validation) or 2 (test)."""
    csv = file.suffix == ".csv"
    lines = _read_lines(file)
    if csv and (not lines or _split_row(lines[0], csv=True) != ["image_id", "partition"]):
        raise DatasetLayoutError.of(file, "line 1 is not the header 'image_id,partition'", CELEBA_LAYOUT)
    expected = "'<name>.jpg,0|1|2'" if csv else "'<name>.jpg 0|1|2'"
    partition = {}
    for k, line in enumerate(lines[1:] if csv else lines, start=2 if csv else 1):
        row = _split_row(line, csv) if line.strip() else []
        if not row:
            continue
        if len(row) != 2 or row[1] not in ("0", "1", "2"):
            raise DatasetLayoutError.of(file, f"line {k} is not {expected}", CELEBA_LAYOUT)
        partition[row[0]] = int(row[1])
    return partition


def _read_lines(file: Path) -> list[str]:
    try:
        return file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetLayoutError.of(file, f"unreadable ({type(error).__name__})", CELEBA_LAYOUT) from None


def load_face(file: Path, size: int) -> Tensor:
    """One aligned face as ``float (3, size, size)`` in ``[0, 1]``: Pillow decode, bilinear resize."""
    try:
        with Image.open(file) as image:
            pixels = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR))
    except FileNotFoundError:
        raise DatasetLayoutError.of(file, "missing", CELEBA_LAYOUT) from None
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DatasetLayoutError.of(file, f"not a readable image ({type(error).__name__})", CELEBA_LAYOUT) from None
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255.0)


class CelebAFaces(Dataset):
    """One partition: item ``i`` is ``(image float (3, size, size), attributes float (40,) in {0, 1})``."""

    def __init__(self, folder: Path, images: Sequence[str], labels: np.ndarray, size: int) -> None:
        self.folder, self.images, self.size = folder, list(images), size
        self.labels = torch.from_numpy(labels.astype(np.float32))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return load_face(self.folder / self.images[index], self.size), self.labels[index]


class SyntheticCelebA(BatchedDataset):
    """Random faces of CelebA's shapes, drawn per index, for throughput benchmarks and shape tests."""

    def __init__(self, size: int, image_size: int, seed: int) -> None:
        self.size, self.image_size, self.seed = size, image_size, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        images, labels = [], []
        for index in indices:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(index))
            images.append(torch.rand(3, self.image_size, self.image_size, generator=g))
            labels.append(torch.randint(0, 2, (len(CELEBA_ATTRIBUTES),), generator=g).float())
        return torch.stack(images), torch.stack(labels)


# --- model -----------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 convolutions with batch norm, and a shortcut (1x1 when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18Trunk(nn.Module):
    """ResNet-18's layout for small images: a 3x3 stem (no max-pooling), stages of ``blocks`` basic blocks
    of widths ``width, 2 width, 4 width, 8 width`` (strides 1, 2, 2, 2), global average pooling.

    >>> trunk = ResNet18Trunk(width=4, blocks=(1, 1, 1, 1))
    >>> trunk(torch.zeros(2, 3, 16, 16)).shape
    torch.Size([2, 32])
    >>> sum(p.numel() for p in ResNet18Trunk().parameters())  # ResNet-18's 11.2 M, less its classifier
    11168832
    """

    def __init__(self, width: int = 64, blocks: Sequence[int] = (2, 2, 2, 2)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        stages, c_in = [], width
        for k, count in enumerate(blocks):
            c_out = width * 2**k
            stages += [
                BasicBlock(c_in if j == 0 else c_out, c_out, (1 if k == 0 else 2) if j == 0 else 1)
                for j in range(count)
            ]
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.features = c_in

    def forward(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1).flatten(1)


def celeba_model(
    tasks: Sequence[str] = CELEBA_ATTRIBUTES, width: int = 64, blocks: Sequence[int] = (2, 2, 2, 2)
) -> MultiTaskNet:
    """The ResNet-18-style trunk and one logit per attribute (``(B,)`` each).

    >>> [tuple(y.shape) for y in celeba_model(("Smiling", "Young"), width=4, blocks=(1, 1))(torch.zeros(2, 3, 8, 8))]
    [(2,), (2,)]
    """
    trunk = ResNet18Trunk(width, blocks)
    return MultiTaskNet(trunk, [nn.Sequential(nn.Linear(trunk.features, 1), nn.Flatten(0)) for _ in tasks])


# --- the problem -----------------------------------------------------------------------------------


class CelebA(DatasetProblem):
    """CelebA's 40 attributes from the user's copy (or synthetic faces); build with :func:`celeba`."""

    name = "celeba"

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        size: int = 64,
        tasks: Sequence[str] | None = None,
        synthetic: bool = False,
        width: int = 64,
        blocks: Sequence[int] = (2, 2, 2, 2),
        batch_size: int = 256,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        pin_memory: bool = False,
        synthetic_sizes: tuple[int, int, int] = (1024, 256, 256),
    ) -> None:
        super().__init__(
            batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers, pin_memory=pin_memory
        )
        for name, value in (("size", size), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.size, self.width, self.blocks = size, width, tuple(blocks)
        self._splits: dict[str, Dataset]
        if synthetic:
            attributes = CELEBA_ATTRIBUTES
            self._splits = {
                split: SyntheticCelebA(n, size, seed)
                for seed, (split, n) in enumerate(zip(("train", "validation", "test"), synthetic_sizes))
            }
        else:
            folder = require_folder(root, CELEBA_LAYOUT)
            attributes, images, labels = read_attributes(_locate(folder, "list_attr_celeba.txt", "Anno"))
            partition_file = _locate(folder, "list_eval_partition.txt", "Eval")
            partition = read_partition(partition_file)
            faces = _locate_faces(folder)
            unassigned = [name for name in images if name not in partition]
            if unassigned:
                raise DatasetLayoutError.of(
                    partition_file,
                    f"no partition for {unassigned[0]} ({len(unassigned)} images)",
                    CELEBA_LAYOUT,
                )
            chosen = np.array([partition[name] for name in images])
            self._splits = {}
            for split, code in PARTITIONS.items():
                rows = np.flatnonzero(chosen == code)
                self._splits[split] = CelebAFaces(faces, [images[r] for r in rows], labels[rows], size)
                if len(rows):
                    load_face(faces / images[rows[0]], size)  # a missing or unreadable folder shows now
        self.attributes = tuple(attributes)
        self.task_names = self.attributes if tasks is None else self._known(tasks)
        sizes = " / ".join(str(len(self._splits[s])) for s in ("train", "validation", "test"))  # type: ignore[arg-type]
        source = "synthetic CelebA-shaped faces" if synthetic else "CelebA aligned faces"
        self.description = (
            f"{source} at {size}x{size} ({sizes} train/validation/test), {len(self.task_names)} "
            f"attributes; ResNet-18-style trunk, width {width}"
        )

    def _known(self, tasks: Sequence[str]) -> tuple[str, ...]:
        if isinstance(tasks, str):
            raise ValueError(f"problem 'celeba': tasks must be a sequence of attribute names, got {tasks!r}")
        unknown = [t for t in tasks if t not in self.attributes]
        if unknown or not tasks or len(set(tasks)) != len(tasks):
            raise ValueError(f"problem 'celeba': tasks must be distinct attributes of {self.attributes}, got {tasks}")
        return tuple(tasks)

    def dataset(self, split: Split) -> Dataset:
        return self._splits[split]

    def build_model(self, tasks: Sequence[str] | None = None) -> MultiTaskNet:
        return celeba_model(self.tasks_or_all(tasks), self.width, self.blocks)

    def _columns(self, names: Sequence[str]) -> list[int]:
        return [self.attributes.index(name) for name in names]

    def task_losses(
        self, model: nn.Module, batch: tuple[Tensor, Tensor], tasks: Sequence[str] | None = None
    ) -> dict[str, Tensor]:
        names = self.tasks_or_all(tasks)
        images, labels = batch
        return {
            name: F.binary_cross_entropy_with_logits(logit, labels[:, column])
            for name, logit, column in zip(names, model(images), self._columns(names))
        }

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: Split, tasks: Sequence[str] | None = None) -> list[TaskMetric]:
        names = self.tasks_or_all(tasks)
        columns = self._columns(names)
        correct, count = torch.zeros(len(names), dtype=torch.float64), 0
        was_training = model.training
        model.eval()
        try:
            for images, labels in self._evaluation_batches(model, split):
                logits = torch.stack(list(model(images)), dim=1)
                correct += ((logits > 0).float() == labels[:, columns]).sum(dim=0).double().cpu()
                count += len(images)
        finally:
            model.train(was_training)
        return [TaskMetric(name, "accuracy", float(c / count), True) for name, c in zip(names, correct)]

    def task_sets(self) -> Mapping[str, tuple[str, ...]]:
        return {"same_nature": tuple(self.task_names)}


def celeba(root: str | os.PathLike[str] | None = None, size: int = 64, **options: object) -> CelebA:
    """CelebA from ``root`` (``--problem mao_lab.problems:celeba``), or ``celeba(synthetic=True)``.

    Options: ``tasks`` (a subset of the 40 attributes; all by default), ``width`` (64), ``blocks``
    ((2, 2, 2, 2)), ``batch_size`` (256), ``eval_batch_size`` (256), ``num_workers`` (0), ``pin_memory``
    (False); with ``synthetic=True``, ``synthetic_sizes`` ((1024, 256, 256) faces per split).

    Raises:
        DatasetLayoutError: a file is missing or malformed (one line naming it and the layout).

    >>> problem = celeba(synthetic=True, size=8, width=2, blocks=(1, 1), batch_size=4)
    >>> len(problem.task_names), len(problem.task_losses(problem.build_model(), next(iter(problem.batches("train")))))
    (40, 40)
    """
    return CelebA(root, size=size, **options)  # type: ignore[arg-type]
