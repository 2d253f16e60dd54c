"""Mean IoU over classes 1..4 from one confusion matrix; pixels whose true label is 0 never count."""

from __future__ import annotations

import numpy as np
import torch

from marsseg.data.io import NUM_CLASSES

SCORED_CLASSES = (1, 2, 3, 4)


def confusion_matrix(true: torch.Tensor, pred: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts, rows = true label, columns = predicted label."""
    true, pred = true.reshape(-1).long(), pred.reshape(-1).long()
    counts = torch.bincount(num_classes * true + pred, minlength=num_classes**2)
    return counts.reshape(num_classes, num_classes)


def intersections_and_unions(matrix: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(true positives, unions) of classes 1..4, each (4,).

    Row 0 (true background) is dropped first: such pixels are unlabeled, so predicting anything there is
    neither right nor wrong.
    """
    m = np.asarray(matrix, dtype=np.float64)[1:]  # (4, C): true labels 1..4 only
    true_positives = np.array([m[c - 1, c] for c in SCORED_CLASSES])
    unions = m.sum(axis=1) + m[:, 1:].sum(axis=0) - true_positives  # true c  +  predicted c  -  both
    return true_positives, unions


def iou_per_class(matrix: torch.Tensor | np.ndarray) -> np.ndarray:
    """IoU of classes 1..4 (NaN where a class is neither present nor predicted)."""
    true_positives, unions = intersections_and_unions(matrix)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(unions > 0, true_positives / unions, np.nan)


def mean_iou(matrix: torch.Tensor | np.ndarray) -> float:
    """Mean IoU over classes 1..4 whose union is non-empty; NaN when none is."""
    ious = iou_per_class(matrix)
    return float(np.nanmean(ious)) if not np.isnan(ious).all() else float("nan")
