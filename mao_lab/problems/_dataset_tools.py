"""What the papers' benchmarks share: the layout error, batch streams that keep a GPU fed, and a base problem.

A benchmark reads the user's own copy of its dataset (nothing is downloaded); a missing or malformed
file raises :class:`DatasetLayoutError`, one line naming the file and the layout the loader expects.

Batches come from a ``torch.utils.data.DataLoader``: ``num_workers`` decode files in parallel and
``pin_memory`` lets :meth:`Problem.to_device` copy them to the GPU asynchronously.  Datasets held in
memory (MNIST, the synthetic modes) are indexed a whole batch at a time (their ``__getitem__`` takes
a list of indices), which skips the per-item collation.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
)

from ._interface import Problem, Split, check_count, model_device
from ._multimnist import DataIntegrityError

__all__ = ["BatchedDataset", "DatasetLayoutError", "DatasetProblem", "check_loader_options"]


class DatasetLayoutError(DataIntegrityError):
    """A dataset folder is missing a file, or a file is not in the format the loader expects.

    The message is one line: the file, what is wrong, and the layout the loader expects.

    >>> str(DatasetLayoutError.of("/data/mnist/t10k-labels-idx1-ubyte", "missing", "the IDX files in <root>/"))
    '/data/mnist/t10k-labels-idx1-ubyte: missing; expected the IDX files in <root>/'
    """

    @classmethod
    def of(cls, file: str | os.PathLike[str], problem: str, layout: str) -> DatasetLayoutError:
        """The error for ``file`` with ``problem``, pointing to the expected ``layout`` (kept on one line)."""
        return cls(f"{file}: {problem}; expected {layout}".replace("\n", " "))


class BatchedDataset(Dataset):
    """A dataset in memory whose ``__getitem__`` takes a list of indices and returns a whole batch."""

    def __len__(self) -> int:  # pragma: no cover - subclasses define it
        raise NotImplementedError


def check_loader_options(batch_size: int, eval_batch_size: int, num_workers: int, pin_memory: bool) -> None:
    """Reject what a ``DataLoader`` would only reject later, or silently misuse."""
    check_count("batch_size", batch_size, 1)
    check_count("eval_batch_size", eval_batch_size, 1)
    check_count("num_workers", num_workers, 0)
    if not isinstance(pin_memory, bool):
        raise ValueError(f"pin_memory must be a bool, got {pin_memory!r}")


class DatasetProblem(Problem):
    """A :class:`Problem` over a map-style dataset per split, with ``DataLoader`` options.

    Subclasses fill ``self._splits`` (or define :meth:`dataset`); :meth:`batches` streams it.

    Args:
        batch_size: training batch size (``batches(..., batch_size=)`` overrides it).
        eval_batch_size: batch size of the validation and test passes.
        num_workers: ``DataLoader`` worker processes (0 loads in the calling process; more keep a GPU fed).
        pin_memory: page-locked batches, for asynchronous copies to a GPU.
    """

    def __init__(self, *, batch_size: int, eval_batch_size: int, num_workers: int, pin_memory: bool) -> None:
        check_loader_options(batch_size, eval_batch_size, num_workers, pin_memory)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory

    def dataset(self, split: Split) -> Dataset:
        """The map-style dataset of ``split``; an item (or a batch) is ``(input, {task: target})``.

        Subclasses keep their datasets in ``self._splits`` (one per split), or define this method."""
        return self._splits[split]

    def batches(self, split: Split, *, seed: int = 0, batch_size: int | None = None) -> Iterator[Any]:
        """Training: an endless stream, reshuffled each epoch in an order fixed by ``seed``.
        Validation and test: one pass in file order."""
        if split not in ("train", "validation", "test"):
            raise ValueError(f"problem {self.name!r}: split must be 'train', 'validation' or 'test', got {split!r}")
        train = split == "train"
        size = (self.batch_size if train else self.eval_batch_size) if batch_size is None else batch_size
        check_loader_options(size, self.eval_batch_size, self.num_workers, self.pin_memory)
        if train:
            return _endless(self.dataset(split), seed, size, self.num_workers, self.pin_memory)
        return self._one_pass(split, size)

    def _one_pass(self, split: Split, batch_size: int) -> Iterator[Any]:
        data = self.dataset(split)
        return iter(_loader(data, SequentialSampler(data), batch_size, False, self.num_workers, self.pin_memory))

    def _evaluation_batches(self, model: nn.Module, split: Split) -> Iterator[Any]:
        """One pass over ``split`` (the training split too), each batch already on ``model``'s device."""
        if split not in ("train", "validation", "test"):
            raise ValueError(f"problem {self.name!r}: split must be 'train', 'validation' or 'test', got {split!r}")
        device = model_device(model)
        for batch in self._one_pass(split, self.eval_batch_size):
            yield self.to_device(batch, device)


def _loader(
    data: Dataset,
    sampler: Any,
    batch_size: int,
    drop_last: bool,
    num_workers: int,
    pin_memory: bool,
    persistent: bool = False,
) -> DataLoader:
    batch_sampler = BatchSampler(sampler, batch_size, drop_last)
    common: dict[str, Any] = {
        "num_workers": num_workers,
        "pin_memory": pin_memory,
        "persistent_workers": persistent and num_workers > 0,
    }
    if isinstance(data, BatchedDataset):
        # The sampler yields lists of indices and the dataset returns whole batches: nothing to collate.
        return DataLoader(data, sampler=batch_sampler, batch_size=None, **common)
    return DataLoader(data, batch_sampler=batch_sampler, **common)


def _endless(data: Dataset, seed: int, batch_size: int, num_workers: int, pin_memory: bool) -> Iterator[Any]:
    size = len(data)  # type: ignore[arg-type]
    if size == 0:
        raise ValueError("the training split is empty")
    # One generator for the whole stream: each epoch draws a fresh permutation from it, so the order
    # of every epoch is fixed by the seed alone.
    sampler = RandomSampler(data, generator=torch.Generator().manual_seed(seed))
    loader = _loader(data, sampler, batch_size, size >= batch_size, num_workers, pin_memory, persistent=True)
    while True:
        yield from loader


def listed(names: Sequence[str]) -> str:
    """``a, b and c`` for messages."""
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def require_folder(root: str | os.PathLike[str] | None, layout: str) -> Path:
    """``root`` as a path to an existing folder, or :class:`DatasetLayoutError` naming the layout."""
    if root is None:
        raise DatasetLayoutError.of("root", "no dataset folder given (pass root=...)", layout)
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetLayoutError.of(path, "not a folder" if path.exists() else "no such folder", layout)
    return path
