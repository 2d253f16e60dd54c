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


def iou_per_class(matrix: torch.Tensor | np.ndarray) -> np.ndarray:
    """IoU of classes 1..4 (NaN where a class is neither present nor predicted).

    Row 0 (true background) is dropped first: such pixels are unlabeled, so predicting anything there is
    neither right nor wrong.
    """
    m = np.asarray(matrix, dtype=np.float64)[1:]  # (4, C): true labels 1..4 only
    ious = []
    for c in SCORED_CLASSES:
        tp = m[c - 1, c]
        union = m[c - 1].sum() + m[:, c].sum() - tp  # true c  +  predicted c  -  both
        ious.append(tp / union if union > 0 else np.nan)
    return np.array(ious)


def mean_iou(matrix: torch.Tensor | np.ndarray) -> float:
    """Mean IoU over classes 1..4 whose union is non-empty; NaN when none is."""
    ious = iou_per_class(matrix)
    return float(np.nanmean(ious)) if not np.isnan(ious).all() else float("nan")
