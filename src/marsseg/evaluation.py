"""Evaluation: a model's predictions scored against masks (Evaluation: mIoU, per-class IoU, confusion matrices), the
bootstrap interval of a test mIoU, the choice of the big-rock scale on validation (BIG_ROCK_SCALES), and labeled
frames of any size scored as `predict --images` labels them (evaluate_labeled_frames)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from marsseg.config import InferenceSettings
from marsseg.data.ai4mars import find_pairs, read_label
from marsseg.data.frames import read_gray_image
from marsseg.data.io import NUM_CLASSES, MarsData
from marsseg.data.split import group_ids
from marsseg.metrics import bootstrap_miou_interval, confusion_matrices_per_image, iou_per_class, mean_iou
from marsseg.predict import labels_from_probabilities, predict_frame, predict_probabilities

CLASS_KEYS = ("soil", "bedrock", "sand", "big_rock")  # the names of classes 1..4 in metrics.json


@dataclass
class Evaluation:
    """The score of a set of images: one confusion matrix over the whole set, and what follows from it."""

    matrix: np.ndarray  # (5, 5) confusion matrix, rows = true
    miou: float
    ious: np.ndarray  # (4,) classes 1..4
    per_image_miou: np.ndarray = field(default_factory=lambda: np.zeros(0))
    predictions: np.ndarray | None = None  # (N, H, W) labels, when kept
    image_matrices: np.ndarray | None = None  # (N, 5, 5) one confusion matrix per image (for intervals)


def evaluate_probabilities(
    batches, masks: np.ndarray, *, keep_predictions: bool = False, big_rock_scale: float = 1.0
) -> Evaluation:
    """Score a stream of probability batches (B, C, H, W), in order, against `masks`: one confusion matrix over
    the whole set. The one place where predictions become a score."""
    per_image, kept, start = [], [], 0
    for probs in batches:
        labels = labels_from_probabilities(probs, big_rock_scale=big_rock_scale)
        truth = torch.from_numpy(masks[start : start + len(labels)]).long()
        start += len(labels)
        per_image.append(confusion_matrices_per_image(truth, labels).numpy())
        if keep_predictions:
            kept.append(labels.numpy().astype(np.uint8))
    image_matrices = np.concatenate(per_image) if per_image else np.zeros((0, NUM_CLASSES, NUM_CLASSES), np.int64)
    evaluation = evaluation_of(image_matrices)
    if keep_predictions:
        evaluation.per_image_miou = np.array([mean_iou(m) for m in image_matrices])
        evaluation.predictions = np.concatenate(kept) if kept else None
    return evaluation


def evaluation_of(image_matrices: np.ndarray) -> Evaluation:
    """The Evaluation of images whose confusion matrices are `image_matrices` (N, C, C): one matrix over them all."""
    matrix = image_matrices.sum(axis=0)
    return Evaluation(matrix, mean_iou(matrix), iou_per_class(matrix), image_matrices=image_matrices)


def evaluate(
    model: nn.Module,
    images: np.ndarray,
    masks: np.ndarray,
    *,
    settings: InferenceSettings = InferenceSettings(),
    device: torch.device | str = "cpu",
    keep_predictions: bool = False,
    batch_size: int = 128,
    big_rock_scale: float = 1.0,
    frames: np.ndarray | None = None,
) -> Evaluation:
    """Score `model` on (images, masks), predicted as `settings` say (`frames`: see
    predict.predict_probabilities)."""
    batches = predict_probabilities(
        model, images, settings=settings, device=device, batch_size=batch_size, frames=frames
    )
    return evaluate_probabilities(batches, masks, keep_predictions=keep_predictions, big_rock_scale=big_rock_scale)


def miou_interval(evaluation: Evaluation, data: MarsData, *, confidence: float = 0.9) -> tuple[float, float, int]:
    """(low, high, number of groups): a bootstrap interval of `evaluation`'s mIoU over the frame groups of the
    images it scored (`data`, in the same order). Crops of one frame are resampled together: they are not
    independent draws."""
    groups = group_ids(data)
    low, high = bootstrap_miou_interval(evaluation.image_matrices, groups, confidence=confidence)
    return low, high, len(np.unique(groups))


def figures_by_source(evaluation: Evaluation, data: MarsData) -> dict[str, dict]:
    """For merged data (data.sources, in the order `evaluation` scored it): each source's crops, mIoU and per-class
    IoU from its own confusion matrix; {} for data of one source."""
    if data.sources is None:
        return {}
    figures = {}
    for index, name in enumerate(data.source_names):
        mine = data.sources == index
        if mine.any():
            matrix = evaluation.image_matrices[mine].sum(axis=0)
            ious = dict(zip(CLASS_KEYS, iou_per_class(matrix).tolist(), strict=True))
            figures[name] = {"crops": int(mine.sum()), "miou": mean_iou(matrix), "iou": ious}
    return figures


def by_source_text(figures: dict[str, dict]) -> str:
    """One line per source: its mIoU and big-rock IoU."""
    return "\n".join(
        f"  {name}: mIoU {f['miou']:.4f}, big rock {f['iou']['big_rock']:.4f} ({f['crops']} crops)"
        for name, f in figures.items()
    )


# Below 1 for recipes that show the model more big rock than the data has (copy-paste), which can over-predict it.
BIG_ROCK_SCALES = (0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)


def best_big_rock_scale(probabilities: torch.Tensor, masks: np.ndarray) -> tuple[float, dict[float, float]]:
    """For probabilities (N, C, H, W) of the images whose masks are `masks`: the best scale and every scale's mIoU."""
    scores = {s: evaluate_probabilities([probabilities], masks, big_rock_scale=s).miou for s in BIG_ROCK_SCALES}
    return max(scores, key=scores.get), scores


@dataclass
class FramesEvaluation:
    """Labeled frames (AI4Mars layout) predicted as `predict --images` does and scored at their own size."""

    evaluation: Evaluation  # image_matrices: one per frame
    names: list[str]  # the frames' file stems, in order
    interval: tuple[float, float]  # 90 % bootstrap interval of the mIoU over frames


def evaluate_labeled_frames(
    model,
    directory: str | os.PathLike,
    frame_size: int,
    *,
    settings: InferenceSettings = InferenceSettings(),
    device: torch.device | str = "cpu",
    big_rock_scale: float = 1.0,
    progress: bool = False,
) -> FramesEvaluation:
    """Score `model` on the labeled frames under `directory` (`images/` + `labels/`, or the AI4Mars release's
    layout): each image predicted whole at its own size (predict.predict_frame, as `predict --images` writes its
    labels), one confusion matrix over every pixel whose true label is not background.

    Raises:
        UserError: no images, an image without a label, or an unreadable file (data.ai4mars.find_pairs, read_label).
    """
    _, pairs, _ = find_pairs(Path(directory), require_labels=True)
    matrices = []
    for image_path, label_path in tqdm(pairs, desc="evaluate", unit="frame", disable=not progress, leave=False):
        image = read_gray_image(image_path)
        truth = read_label(label_path, image.shape, image_path)
        labels = predict_frame(
            model, image, frame_size, settings=settings, device=device, big_rock_scale=big_rock_scale
        )
        matrices.append(confusion_matrices_per_image(torch.from_numpy(truth[None]), torch.from_numpy(labels[None])))
    image_matrices = torch.cat(matrices).numpy()
    interval = bootstrap_miou_interval(image_matrices, np.arange(len(pairs)))
    return FramesEvaluation(evaluation_of(image_matrices), [image.stem for image, _ in pairs], interval)
