"""Semi-supervised training on unlabeled crops: FixMatch-style consistency, one part of the training step.

Each step also draws a batch of unlabeled crops. The teacher (the EMA of the model, else the model itself) labels
a weak view of them (a random left-right flip); where it is confident, the model must give the same labels on a
strong view (CutMix between the unlabeled crops, contrast, brightness, noise and blur), trained in the same forward
pass as the labeled batch. Pseudo-labels starve a rare class (the teacher is seldom confident about it), so big
rock has a threshold of its own. With semi.loss "soft" and teachers (finished runs), the target is instead their
averaged distribution over classes 1..4 on every pixel (distillation through soft targets): no threshold, so their
doubt about big rock is kept. Teachers label the pool in teachers.py, above the checkpoints they load.

The pool (data.unlabeled): by default the data file's test_set plus the images, never the masks, of the
validation and local-test parts, so that the local estimate sees what the hidden test sees; or another .npz, whose
training and test images are used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from marsseg.config import Config
from marsseg.data.dataset import images_to_tensor
from marsseg.data.prepare import PreparedData, load_data
from marsseg.data.split import RARE_CLASS
from marsseg.losses import FIRST_SCORED_CLASS, IGNORED
from marsseg.models import final_logits
from marsseg.precision import autocast


def unlabeled_images(cfg: Config, prepared: PreparedData) -> np.ndarray:
    """(M, H, W) uint8: the pool of data.unlabeled (see the module's docstring)."""
    if cfg.data.unlabeled:
        other = load_data(cfg.data.unlabeled)
        parts = [other.images] + ([other.test_images] if other.test_images is not None else [])
    else:
        data, split = prepared.data, prepared.split
        parts = [data.images[split.val], data.images[split.test]]
        if data.test_images is not None:
            parts.append(data.test_images)
    return np.concatenate(parts)


@dataclass
class PseudoLabeled:
    """A strong view of unlabeled crops and what the model must say about it."""

    images: torch.Tensor  # (B, C, H, W) model input
    # (B, H, W) long: pseudo-labels 1..4, IGNORED where the teacher was not sure; with semi.loss "soft",
    # (B, 4, H, W) float: the teachers' probabilities of classes 1..4
    targets: torch.Tensor
    weight: float  # of this batch's loss against the labeled loss
    # semi.loss: "cross_entropy" (pseudo_label_loss), "recipe" (the labeled loss) or "soft" (soft_target_loss)
    loss: str = "cross_entropy"


def pseudo_labels(
    teacher: nn.Module,
    images: torch.Tensor,
    threshold: float,
    rare_threshold: float,
    device,
    *,
    precision: str = "fp32",
) -> torch.Tensor:
    """(B, H, W) the teacher's labels in 1..4 for `images` (B, C, H, W), IGNORED below the confidence threshold
    (`rare_threshold` where the label is big rock). Background (0) is never a pseudo-label: no pixel is scored
    as background."""
    was_training = teacher.training
    teacher.eval()
    with torch.no_grad(), autocast(device, precision):
        logits = final_logits(teacher(images))
    teacher.train(was_training)
    return confident_labels(logits.float()[:, FIRST_SCORED_CLASS:].softmax(dim=1), threshold, rare_threshold)


def confident_labels(scored: torch.Tensor, threshold: float, rare_threshold: float) -> torch.Tensor:
    """(B, H, W) labels in 1..4 from the probabilities of classes 1..4 (B, 4, H, W): the most likely, IGNORED where
    its share of the four is below `threshold` (`rare_threshold` for big rock)."""
    confidence, labels = (scored / scored.sum(dim=1, keepdim=True).clamp(min=1e-12)).max(dim=1)
    labels = labels + FIRST_SCORED_CLASS
    needed = torch.where(labels == RARE_CLASS, rare_threshold, threshold)
    return torch.where(confidence >= needed, labels, torch.full_like(labels, IGNORED))


def strong_view(
    images: torch.Tensor, targets: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A strong augmentation of model inputs (B, C, H, W) in about -1..1 and their pseudo-labels (B, H, W), or soft
    targets (B, 4, H, W): CutMix with another crop of the batch (half of the crops; targets follow), then per crop a
    contrast factor in 0.6..1.4, a brightness shift of +-0.3, Gaussian noise of std up to 0.05 and, for half of
    them, a 3x3 blur."""
    batch, _, height, width = images.shape
    originals, original_targets = images, targets
    images, targets = images.clone(), targets.clone()
    partners = torch.randperm(batch, generator=generator)
    mixed = torch.rand(batch, generator=generator) < 0.5
    sides = torch.rand(batch, generator=generator) * 0.4 + 0.1  # the box covers 10-50 % of the crop
    for i in torch.nonzero(mixed).flatten().tolist():
        box_height = max(1, round(height * float(sides[i]) ** 0.5))
        box_width = max(1, round(width * float(sides[i]) ** 0.5))
        top = int(torch.randint(0, height - box_height + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - box_width + 1, (1,), generator=generator))
        box = (slice(top, top + box_height), slice(left, left + box_width))
        partner = int(partners[i])
        images[i, :, box[0], box[1]] = originals[partner, :, box[0], box[1]]
        targets[i, ..., box[0], box[1]] = original_targets[partner, ..., box[0], box[1]]
    contrast = torch.empty(batch, 1, 1, 1).uniform_(0.6, 1.4, generator=generator)
    brightness = torch.empty(batch, 1, 1, 1).uniform_(-0.3, 0.3, generator=generator)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = (images - mean) * contrast + mean + brightness
    noise = torch.randn(images.shape, generator=generator) * torch.rand(batch, 1, 1, 1, generator=generator) * 0.05
    images = images + noise
    blurred = torch.rand(batch, generator=generator) < 0.5
    if blurred.any():
        channels = images.shape[1]
        kernel = torch.tensor([1.0, 2.0, 1.0])
        kernel = (kernel[:, None] * kernel[None, :] / 16).expand(channels, 1, 3, 3)
        smooth = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="reflect"), kernel, groups=channels)
        images = torch.where(blurred[:, None, None, None], smooth, images)
    return images, targets


class UnlabeledStream:
    """Batches of the unlabeled pool for the training step, drawn by a generator that each epoch reseeds (so a
    resumed run draws what an uninterrupted one would). With `labels` (the pool labelled once by teachers: labels, or
    with semi.loss "soft" probabilities), a batch takes them; else the teacher given to next_batch labels a weak
    view."""

    def __init__(
        self, cfg: Config, images: np.ndarray, device, *, processes: int = 1, labels: torch.Tensor | None = None
    ):
        self.images = torch.from_numpy(np.ascontiguousarray(images))  # (M, H, W) uint8
        self.labels = labels  # (M, H, W) int8, (M, 4, H, W) float16 (soft targets) or None
        self.cfg, self.device = cfg, device
        # Each process's share of a step's unlabeled crops, as each takes batch_size / processes labeled ones.
        self.batch_size = max(1, cfg.semi.batch_size // processes)
        self.generator = torch.Generator().manual_seed(cfg.seed)

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed + 7)

    def next_batch(self, teacher: nn.Module, *, memory_format=torch.contiguous_format) -> PseudoLabeled:
        """Draw crops, label a weak view (with `teacher` unless the pool is labelled), and return a strong view
        with its pseudo-labels."""
        semi = self.cfg.semi
        chosen = torch.randint(0, len(self.images), (self.batch_size,), generator=self.generator)
        weak = images_to_tensor(self.images[chosen].numpy(), in_channels=self.cfg.data.in_channels)  # (B, C, H, W)
        flipped = torch.rand(len(weak), generator=self.generator) < 0.5
        weak = torch.where(flipped[:, None, None, None], weak.flip(-1), weak)
        if self.labels is not None:
            targets = self.labels[chosen]
            targets = targets.float() if targets.is_floating_point() else targets.long()  # soft targets, or labels
            flipped_targets = flipped.view(-1, *[1] * (targets.dim() - 1))
            targets = torch.where(flipped_targets, targets.flip(-1), targets)
        else:
            weak_on_device = weak.to(self.device).contiguous(memory_format=memory_format)
            targets = pseudo_labels(
                teacher, weak_on_device, semi.threshold, semi.rare_threshold, self.device, precision=self.cfg.precision
            ).cpu()
        strong, targets = strong_view(weak, targets, self.generator)
        strong = strong.to(self.device).contiguous(memory_format=memory_format)
        return PseudoLabeled(strong, targets.to(self.device), semi.weight, semi.loss)
