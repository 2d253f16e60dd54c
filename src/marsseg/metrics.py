"""Mean IoU over classes 1..4 from one confusion matrix; pixels whose true label is 0 never count."""

from __future__ import annotations

import numpy as np
import torch

from marsseg.data.io import NUM_CLASSES

SCORED_CLASSES = (1, 2, 3, 4)


def confusion_matrix(true: torch.Tensor, pred: torch.Tensor, *, num_classes: int = NUM_CLASSES) -> torch.Tensor:
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


def confusion_matrices_per_image(
    true: torch.Tensor, pred: torch.Tensor, *, num_classes: int = NUM_CLASSES
) -> torch.Tensor:
    """(B, num_classes, num_classes) counts, one confusion matrix per image of (B, H, W) labels; their sum is
    `confusion_matrix` of the batch."""
    batch = true.shape[0]
    image = torch.arange(batch, device=true.device).repeat_interleave(true[0].numel())
    index = num_classes**2 * image + num_classes * true.reshape(-1).long() + pred.reshape(-1).long()
    return torch.bincount(index, minlength=batch * num_classes**2).reshape(batch, num_classes, num_classes)


def _resampled_group_sums(matrices: np.ndarray, groups: np.ndarray, draws: int, seed: int) -> np.ndarray:
    """(draws, C, C): the summed confusion matrix of each bootstrap draw of whole groups, with replacement. The same
    groups and seed give the same draws, so two sets of matrices over the same images are resampled in pairs."""
    ids, inverse = np.unique(groups, return_inverse=True)
    per_group = np.zeros((len(ids), *matrices.shape[1:]), dtype=np.float64)
    np.add.at(per_group, inverse, matrices)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(ids), np.full(len(ids), 1 / len(ids)), size=draws)  # (draws, G) times drawn
    return np.einsum("dg,gij->dij", counts, per_group)


def _percentile_interval(scores: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = 100 * (1 - confidence) / 2
    low, high = np.nanpercentile(scores, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_miou_interval(
    matrices: np.ndarray, groups: np.ndarray, *, confidence: float = 0.9, draws: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """A percentile bootstrap interval of mean IoU, resampling whole groups (frames) with replacement.

    Args:
        matrices: (N, C, C) confusion matrices, one per image.
        groups: (N,) group ids: images of one camera frame or near-duplicates, which do not vary independently.
    """
    resampled = _resampled_group_sums(matrices, groups, draws, seed)
    return _percentile_interval(np.array([mean_iou(m) for m in resampled]), confidence)


def bootstrap_miou_difference(
    matrices: np.ndarray,
    baseline: np.ndarray,
    groups: np.ndarray,
    *,
    confidence: float = 0.9,
    draws: int = 1000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(difference, low, high): mean IoU of `matrices` minus that of `baseline`, two predictions of the same images
    (N, C, C each), with a paired bootstrap interval: each draw resamples the same groups for both."""
    difference = mean_iou(matrices.sum(axis=0)) - mean_iou(baseline.sum(axis=0))
    ours = _resampled_group_sums(matrices, groups, draws, seed)
    theirs = _resampled_group_sums(baseline, groups, draws, seed)
    scores = np.array([mean_iou(a) - mean_iou(b) for a, b in zip(ours, theirs, strict=True)])
    return (difference, *_percentile_interval(scores, confidence))
