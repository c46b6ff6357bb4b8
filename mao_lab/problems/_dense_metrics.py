"""Losses and metrics of dense prediction, as MTAN, CAGrad, Nash-MTL and LibMTL score NYUv2.

Metrics (accumulated over a whole split, batch by batch, then read once):

- :class:`SegmentationScores`: mean intersection-over-union and pixel accuracy from one confusion
  matrix over every labelled pixel (label ``-1`` is ignored), as LibMTL's ``SegMetric``.  The mean
  is over the classes that occur (in the labels or the predictions) in the split; LibMTL's mean
  over all classes gives NaN when one never occurs, and equals this one otherwise.
- :class:`DepthScores`: absolute and relative error, ``|d̂ - d|`` and ``|d̂ - d| / d``, averaged over
  every pixel with a depth (``d != 0``: zero marks a missing depth in the preprocessed data).
- :class:`NormalScores`: the angle between predicted and true normals in degrees, over every pixel
  with a normal (not all zero): its mean, its median, and the fractions within 11.25, 22.5 and 30
  degrees.  Predictions are normalised first.

The metrics pool every valid pixel of the split, as LibMTL pools the angle errors; MTAN averages
per-batch values instead, which matches this when every batch has as many valid pixels.  MTAN and
LibMTL mark a missing normal by a zero channel *sum*, which differs from "all zero" only for true
normals whose components sum to exactly zero.

Losses (per batch, as the same projects train): cross-entropy ignoring label ``-1``; the L1 depth
error over valid pixels; ``1 - cos`` of the (normalised) normals over valid pixels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = [
    "DepthScores",
    "NormalScores",
    "SegmentationScores",
    "depth_loss",
    "normal_loss",
    "segmentation_loss",
]

IGNORE_LABEL = -1


# --- losses ----------------------------------------------------------------------------------------


def segmentation_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of ``logits (B, C, H, W)`` against ``labels (B, H, W)``, ignoring label ``-1``.

    A batch without a labelled pixel gives 0 (not NaN), with a gradient of zeros.

    >>> round(segmentation_loss(torch.zeros(1, 4, 1, 2), torch.tensor([[[2, -1]]])).item(), 4)  # log 4
    1.3863
    """
    if not (labels != IGNORE_LABEL).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels.long(), ignore_index=IGNORE_LABEL)


def _valid(target: Tensor) -> Tensor:
    """Pixels with a target: not all channels zero, as ``(B, 1, H, W)`` booleans."""
    return (target != 0).any(dim=1, keepdim=True)


def depth_loss(prediction: Tensor, depth: Tensor) -> Tensor:
    """Mean absolute depth error over the pixels with a depth (``depth != 0``); 0 when there are none.

    >>> depth_loss(torch.tensor([[[[1.0, 5.0]]]]), torch.tensor([[[[2.0, 0.0]]]])).item()
    1.0
    """
    mask = _valid(depth)
    return ((prediction - depth).abs() * mask).sum() / mask.sum().clamp_min(1)


def normal_loss(prediction: Tensor, normal: Tensor) -> Tensor:
    """``1 - cos`` between the normalised predicted and the true normals, averaged over valid pixels.

    >>> normal_loss(torch.tensor([[[[2.0]], [[0.0]], [[0.0]]]]), torch.tensor([[[[1.0]], [[0.0]], [[0.0]]]])).item()
    0.0
    """
    mask = _valid(normal)
    cosine = (F.normalize(prediction, dim=1) * normal).sum(dim=1, keepdim=True)
    return 1 - (cosine * mask).sum() / mask.sum().clamp_min(1)


# --- metrics ---------------------------------------------------------------------------------------


class SegmentationScores:
    """Confusion matrix of a split's labelled pixels; :meth:`scores` gives ``(mIoU, pixel accuracy)``.

    >>> scores = SegmentationScores(2)
    >>> scores.update(torch.tensor([[[0, 1, 1]]]), torch.tensor([[[0, 1, -1]]]))  # predicted labels
    >>> scores.scores()
    (1.0, 1.0)
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, prediction: Tensor, labels: Tensor) -> None:
        """Add a batch: ``prediction`` as logits ``(B, C, H, W)`` or labels ``(B, H, W)``; ``labels (B, H, W)``."""
        if prediction.dim() == labels.dim() + 1:
            prediction = prediction.argmax(dim=1)
        labels = labels.long().flatten()
        prediction = prediction.long().flatten().to(labels.device)
        keep = (labels >= 0) & (labels < self.num_classes)
        index = self.num_classes * labels[keep] + prediction[keep]
        counts = torch.bincount(index, minlength=self.num_classes**2).reshape(self.num_classes, self.num_classes)
        self.confusion += counts.cpu()  # rows: true class; columns: predicted class

    def scores(self) -> tuple[float, float]:
        h = self.confusion.double()
        total = h.sum().item()
        if total == 0:
            return math.nan, math.nan
        hits = torch.diag(h)
        union = h.sum(0) + h.sum(1) - hits
        present = union > 0
        miou = (hits[present] / union[present]).mean().item()
        return miou, hits.sum().item() / total


class DepthScores:
    """Absolute and relative depth errors pooled over a split's pixels with a depth.

    >>> scores = DepthScores()
    >>> scores.update(torch.tensor([[[[1.0, 3.0]]]]), torch.tensor([[[[2.0, 4.0]]]]))
    >>> scores.scores()  # (|1-2| + |3-4|) / 2, (1/2 + 1/4) / 2
    (1.0, 0.375)
    """

    def __init__(self) -> None:
        self.absolute = 0.0
        self.relative = 0.0
        self.count = 0

    def update(self, prediction: Tensor, depth: Tensor) -> None:
        mask = _valid(depth)
        predicted, true = prediction.masked_select(mask).double(), depth.masked_select(mask).double()
        error = (predicted - true).abs()
        self.absolute += error.sum().item()
        self.relative += (error / true.abs()).sum().item()
        self.count += int(mask.sum().item())

    def scores(self) -> tuple[float, float]:
        if self.count == 0:
            return math.nan, math.nan
        return self.absolute / self.count, self.relative / self.count


NORMAL_THRESHOLDS = (11.25, 22.5, 30.0)


class NormalScores:
    """Angle errors (degrees) of a split's pixels with a normal: mean, median, and fractions within
    11.25, 22.5 and 30 degrees.

    The median needs every angle: they are kept on the CPU as float32 (4 bytes a pixel; 290 MB for
    NYUv2's 654 test images).

    >>> scores = NormalScores()
    >>> scores.update(torch.tensor([[[[1.0]], [[1.0]], [[0.0]]]]), torch.tensor([[[[1.0]], [[0.0]], [[0.0]]]]))
    >>> [round(v, 6) for v in scores.scores()]
    [45.0, 45.0, 0.0, 0.0, 0.0]
    """

    def __init__(self) -> None:
        self.angles: list[np.ndarray] = []

    def update(self, prediction: Tensor, normal: Tensor) -> None:
        mask = _valid(normal).squeeze(1)
        cosine = (F.normalize(prediction.double(), dim=1) * normal.double()).sum(dim=1)
        angles = torch.rad2deg(torch.acos(cosine.masked_select(mask).clamp(-1.0, 1.0)))
        self.angles.append(angles.float().cpu().numpy())

    def scores(self) -> tuple[float, float, float, float, float]:
        angles = np.concatenate(self.angles) if self.angles else np.zeros(0, np.float32)
        if angles.size == 0:
            return (math.nan,) * 5
        within = tuple(float(np.mean(angles < t)) for t in NORMAL_THRESHOLDS)
        mean, median = float(np.mean(angles, dtype=np.float64)), float(np.median(angles))
        return mean, median, within[0], within[1], within[2]
