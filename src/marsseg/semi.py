"""Semi-supervised training on unlabeled crops: FixMatch-style consistency, one part of the training step.

Each step also draws a batch of unlabeled crops. The teacher (the EMA of the model, else the model itself) labels
a weak view of them (a random left-right flip); where it is confident, the model must give the same labels on a
strong view (CutMix between the unlabeled crops, contrast, brightness, noise and blur), trained in the same forward
pass as the labeled batch. Pseudo-labels starve a rare class (the teacher is seldom confident about it), so big
rock has a threshold of its own. With semi.loss "soft" and teachers (finished runs), the target is instead their
averaged distribution over classes 1..4 on every pixel (distillation through soft targets): no threshold, so their
doubt about big rock is kept.

The pool (data.unlabeled): by default the data file's test_set plus the images, never the masks, of the
validation and local-test parts, so that the local estimate sees what the hidden test sees; or another .npz, whose
training and test images are used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from marsseg.checkpoints import load_model
from marsseg.config import Config, inference_settings
from marsseg.data.dataset import images_to_tensor
from marsseg.data.prepare import PreparedData, load_data, recorded_fingerprint
from marsseg.data.split import RARE_CLASS, Split
from marsseg.errors import UserError
from marsseg.losses import FIRST_SCORED_CLASS, IGNORED
from marsseg.models import final_logits
from marsseg.precision import autocast
from marsseg.predict import predict_probabilities, scale_big_rock

PREDICT_BATCH = 128  # crops per forward pass when teachers label the pool


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


def check_teachers(teachers: list[str], prepared: PreparedData) -> None:
    """Refuse a teacher that trained on this run's validation or local-test crops (same data, another split): its
    labels of their images would leak into early stopping and the final figure. A teacher trained on other data
    cannot be checked, and is said so."""
    held_out = np.union1d(prepared.split.val, prepared.split.test)
    for run_dir in teachers:
        if recorded_fingerprint(run_dir) != prepared.fingerprint:
            print(f"teacher {run_dir} trained on other data: its crops are not checked against this run's split")
            continue
        split_path = Path(run_dir) / "split.json"
        if not split_path.is_file():
            raise UserError(f"{split_path}: missing; is {run_dir} a marsseg run directory?")
        seen = np.intersect1d(Split.load(split_path).train, held_out)
        if len(seen):
            raise UserError(
                f"teacher {run_dir} trained on {len(seen)} of this run's validation and local-test crops; "
                "use a teacher with this run's split (data.split_seed, data.val_fraction, data.test_fraction; "
                "a run trained before 2026-11-29 grouped frames otherwise and has another split)"
            )


def label_pool(
    teachers: list[str],
    images: np.ndarray,
    threshold: float,
    rare_threshold: float,
    device,
    progress: bool = True,
    soft: bool = False,
) -> torch.Tensor:
    """(M, H, W) int8: the pool `images` (M, H, W) labelled once by the best checkpoints of the runs `teachers`;
    with `soft`, (M, 4, H, W) float16: their averaged probabilities themselves (soft targets, no threshold).

    Each teacher's probabilities (its own flip TTA and big-rock scale, as its predictions have them), renormalised
    over classes 1..4 (background is never a label), are averaged over teachers; then confident_labels. Soft targets
    leave out the big-rock scales, which were chosen for an argmax, not as probabilities: the student learns the
    teachers' own shares and chooses its own scale. Loading the teachers leaves the global random state as it was,
    so the student starts as it would without them."""
    with torch.random.fork_rng(devices=[]):
        models = [load_model(run_dir) for run_dir in teachers]
    streams = [
        predict_probabilities(
            model.to(device),
            images,
            inference_settings(cfg, precision=cfg.precision),
            batch_size=PREDICT_BATCH,
            device=device,
        )
        for model, cfg in models
    ]
    scales = [1.0 if soft else (cfg.big_rock_scale or 1.0) for _, cfg in models]
    labels = []
    batches = zip(*streams, strict=True)
    total = -(-len(images) // PREDICT_BATCH)
    for batch in tqdm(batches, total=total, desc="pseudo-label", disable=not progress, leave=False):
        scored = [
            scale_big_rock(probs, scale)[:, FIRST_SCORED_CLASS:] for probs, scale in zip(batch, scales, strict=True)
        ]
        averaged = torch.stack([p / p.sum(dim=1, keepdim=True).clamp(min=1e-12) for p in scored]).mean(dim=0)
        if soft:
            labels.append(averaged.to(torch.float16))
        else:
            labels.append(confident_labels(averaged, threshold, rare_threshold).to(torch.int8))
    return torch.cat(labels)


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

    def __init__(self, cfg: Config, images: np.ndarray, device, processes: int = 1, labels: torch.Tensor | None = None):
        self.images = torch.from_numpy(np.ascontiguousarray(images))  # (M, H, W) uint8
        self.labels = labels  # (M, H, W) int8, (M, 4, H, W) float16 (soft targets) or None
        self.cfg, self.device = cfg, device
        # Each process's share of a step's unlabeled crops, as each takes batch_size / processes labeled ones.
        self.batch_size = max(1, cfg.semi.batch_size // processes)
        self.generator = torch.Generator().manual_seed(cfg.seed)

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed + 7)

    def next_batch(self, teacher: nn.Module, memory_format=torch.contiguous_format) -> PseudoLabeled:
        """Draw crops, label a weak view (with `teacher` unless the pool is labelled), and return a strong view
        with its pseudo-labels."""
        semi = self.cfg.semi
        chosen = torch.randint(0, len(self.images), (self.batch_size,), generator=self.generator)
        weak = images_to_tensor(self.images[chosen].numpy(), self.cfg.data.in_channels)  # (B, C, H, W)
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
                teacher, weak_on_device, semi.threshold, semi.rare_threshold, self.device, self.cfg.precision
            ).cpu()
        strong, targets = strong_view(weak, targets, self.generator)
        strong = strong.to(self.device).contiguous(memory_format=memory_format)
        return PseudoLabeled(strong, targets.to(self.device), semi.weight, semi.loss)


def build_unlabeled_stream(
    cfg: Config, prepared: PreparedData, device, processes: int = 1, progress: bool = True
) -> UnlabeledStream | None:
    """The stream of unlabeled batches for one of `processes` training processes, or None when semi-supervised
    training is off (semi.weight 0). With semi.teachers, the pool is labelled here, once."""
    if cfg.semi.weight <= 0:
        return None
    images = unlabeled_images(cfg, prepared)
    labels = None
    if cfg.semi.teachers:
        semi = cfg.semi
        check_teachers(semi.teachers, prepared)
        soft = semi.loss == "soft"
        labels = label_pool(semi.teachers, images, semi.threshold, semi.rare_threshold, device, progress, soft)
        if progress:
            teachers = f"{len(images)} unlabeled crops by {len(semi.teachers)} teacher(s)"
            print(f"pseudo-labels: {teachers}; {_pool_words(labels)}", flush=True)
    return UnlabeledStream(cfg, images, device, processes, labels)


def _pool_words(labels: torch.Tensor) -> str:
    """What the teachers said of the pool: the share of pixels kept and of big rock among them; for soft targets,
    big rock's share of the probability and of the pixels where it is the most likely class."""
    if labels.is_floating_point():  # (M, 4, H, W) soft targets
        rock = labels[:, RARE_CLASS - FIRST_SCORED_CLASS]
        share, likeliest = rock.float().mean(), (rock >= labels.amax(dim=1)).float().mean()
        return f"soft targets; big rock {share:.1%} of the probability, the likeliest on {likeliest:.1%} of pixels"
    kept = labels != IGNORED
    rock = (labels == RARE_CLASS).sum() / max(int(kept.sum()), 1)
    return f"{kept.float().mean():.1%} of pixels kept, {rock:.1%} of them big rock"
