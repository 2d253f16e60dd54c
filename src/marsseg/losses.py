"""Losses: class-weighted Dice, categorical focal, their sum (the study's), cross-entropy, Lovasz-softmax, and the
pseudo-label losses of semi-supervised training (hard pseudo-labels, and soft targets from teachers).

All take logits (B, C, H, W) and labels (B, H, W). With `ignore_background`, pixels whose true label is 0
take no part, as in the metric.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from marsseg.config import LossConfig

BACKGROUND = 0
FIRST_SCORED_CLASS = 1  # classes 1..4 are scored; a pseudo-label is one of them
IGNORED = -1  # the pseudo-label of a pixel the teacher is not confident about (semi.py)


def class_weights(
    masks: np.ndarray,
    scheme: str,
    *,
    num_classes: int = 5,
    manual: list[float] | None = None,
    ignore_background: bool = True,
) -> torch.Tensor:
    """Per-class weights from the pixel frequencies of the training masks, scaled to mean 1 over scored classes.

    Schemes: "none" (all 1), "inverse" (1 / f), "inverse_sqrt" (1 / sqrt f), "manual" (the given list).
    """
    if scheme == "manual":
        if manual is None or len(manual) != num_classes:
            raise ValueError(f"manual class weights: found {manual}, expected {num_classes} numbers")
        return torch.tensor(manual, dtype=torch.float32)
    counts = np.bincount(masks.reshape(-1), minlength=num_classes).astype(np.float64)
    frequency = counts / max(counts.sum(), 1)
    frequency = np.maximum(frequency, 1e-6)  # a class absent from the data still gets a finite weight
    if scheme == "none":
        weights = np.ones(num_classes)
    elif scheme == "inverse":
        weights = 1 / frequency
    elif scheme == "inverse_sqrt":
        weights = 1 / np.sqrt(frequency)
    else:
        raise ValueError(f"class weight scheme '{scheme}': expected one of none, inverse, inverse_sqrt, manual")
    if ignore_background:
        weights[BACKGROUND] = 0.0
    scored = weights[1:] if ignore_background else weights
    return torch.tensor(weights / scored.mean(), dtype=torch.float32)


def _valid_pixels(target: torch.Tensor, ignore_background: bool) -> torch.Tensor:
    return (target != BACKGROUND) if ignore_background else torch.ones_like(target, dtype=torch.bool)


class DiceLoss(nn.Module):
    """Soft Dice over the whole batch, in one of two forms.

    - global (default): 1 - 2 sum_c w_c I_c / sum_c w_c T_c, one ratio of weighted sums, where
      I_c = sum(p_c y_c) and T_c = sum(p_c + y_c) over the batch's valid pixels;
    - per class: sum_c w_c (1 - (2 I_c + s) / (T_c + s)) / sum_c w_c, the weighted mean of each class's own
      Dice loss, so a rare class counts as much as a common one (mean IoU scores classes that way).
    """

    def __init__(
        self, weights: torch.Tensor, *, ignore_background: bool = True, smooth: float = 1.0, per_class: bool = False
    ):
        super().__init__()
        self.register_buffer("weights", weights.float())
        self.ignore_background, self.smooth, self.per_class = ignore_background, smooth, per_class

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = logits.float().softmax(dim=1)  # (B, C, H, W)
        onehot = F.one_hot(target, probs.shape[1]).permute(0, 3, 1, 2).float()  # (B, C, H, W)
        valid = _valid_pixels(target, self.ignore_background).unsqueeze(1).float()  # (B, 1, H, W)
        probs, onehot = probs * valid, onehot * valid
        intersection = (probs * onehot).sum(dim=(0, 2, 3))  # (C,)
        total = (probs + onehot).sum(dim=(0, 2, 3))  # (C,)
        w = self.weights
        if self.per_class:
            dice = (2 * intersection + self.smooth) / (total + self.smooth)  # (C,)
            return (w * (1 - dice)).sum() / w.sum().clamp(min=1e-12)
        return 1 - (2 * (w * intersection).sum() + self.smooth) / ((w * total).sum() + self.smooth)


class FocalLoss(nn.Module):
    """Categorical focal loss: mean over valid pixels of -alpha_t (1 - p_t)^gamma log p_t."""

    def __init__(self, alpha: torch.Tensor, *, gamma: float = 2.0, ignore_background: bool = True):
        super().__init__()
        self.register_buffer("alpha", alpha.float())
        self.gamma, self.ignore_background = gamma, ignore_background

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_probs = logits.float().log_softmax(dim=1)  # (B, C, H, W)
        log_pt = log_probs.gather(1, target.unsqueeze(1)).squeeze(1)  # (B, H, W)
        focal = -self.alpha[target] * (1 - log_pt.exp()).pow(self.gamma) * log_pt
        valid = _valid_pixels(target, self.ignore_background)
        return focal[valid].sum() / valid.sum().clamp(min=1)


class CrossEntropyLoss(nn.Module):
    """Class-weighted cross-entropy, ignoring background pixels when asked."""

    def __init__(self, weights: torch.Tensor, *, ignore_background: bool = True):
        super().__init__()
        self.register_buffer("weights", weights.float())
        self.ignore_index = BACKGROUND if ignore_background else -100

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if (target != self.ignore_index).sum() == 0:
            return logits.sum() * 0.0  # nothing labeled in this batch
        return F.cross_entropy(logits.float(), target, weight=self.weights, ignore_index=self.ignore_index)


def lovasz_gradient(sorted_truth: torch.Tensor) -> torch.Tensor:
    """(P,) 0/1 truth of pixels sorted by decreasing error -> the gradient of the Lovasz extension of the Jaccard
    loss at that order (Berman et al. 2018, Alg. 1): how much each pixel's error adds to 1 - IoU."""
    total = sorted_truth.sum()
    intersection = total - sorted_truth.cumsum(0)
    union = total + (1 - sorted_truth).cumsum(0)
    jaccard = 1 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


class LovaszSoftmaxLoss(nn.Module):
    """Lovasz-softmax (Berman et al. 2018): the mean over the classes present in the batch of a convex surrogate of
    each class's 1 - IoU, over the batch's valid pixels: it optimises the measure mean IoU scores, each class
    counting as much as any other (no class weights)."""

    def __init__(self, ignore_background: bool = True):
        super().__init__()
        self.ignore_background = ignore_background

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = logits.float().softmax(dim=1)  # (B, C, H, W)
        valid = _valid_pixels(target, self.ignore_background)  # (B, H, W)
        probs = probs.permute(0, 2, 3, 1)[valid]  # (P, C)
        labels = target[valid]  # (P,)
        first = 1 if self.ignore_background else 0
        losses = []
        for c in range(first, probs.shape[1]):
            truth = (labels == c).float()
            if truth.sum() == 0:
                continue  # absent from the batch: its IoU is undefined
            errors = (truth - probs[:, c]).abs()
            with torch.no_grad():  # the order is a constant of the surrogate: no gradient flows through the sort
                # Non-negative float32 values order as their bit patterns read as int32, which sort faster.
                order = errors.view(torch.int32).sort(descending=True).indices
                weights = torch.empty_like(errors)
                weights[order] = lovasz_gradient(truth[order])
            losses.append(torch.dot(errors, weights))
        return torch.stack(losses).mean() if losses else logits.sum() * 0.0


class SumOfLosses(nn.Module):
    """weight_a * loss_a + weight_b * loss_b."""

    def __init__(self, first: nn.Module, second: nn.Module, first_weight: float, second_weight: float):
        super().__init__()
        self.first, self.second = first, second
        self.first_weight, self.second_weight = first_weight, second_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.first_weight * self.first(logits, target) + self.second_weight * self.second(logits, target)


def build_loss(cfg: LossConfig, train_masks: np.ndarray) -> nn.Module:
    """The loss named by `cfg`, with class weights from the training part's masks."""
    weights = class_weights(
        train_masks, cfg.class_weights, manual=cfg.manual_weights, ignore_background=cfg.ignore_background
    )
    dice = DiceLoss(weights, ignore_background=cfg.ignore_background, per_class=cfg.dice_per_class)
    focal = FocalLoss(weights, gamma=cfg.focal_gamma, ignore_background=cfg.ignore_background)
    cross_entropy = CrossEntropyLoss(weights, ignore_background=cfg.ignore_background)
    losses = {
        "dice_focal": lambda: SumOfLosses(dice, focal, cfg.dice_weight, cfg.focal_weight),
        "ce_dice": lambda: SumOfLosses(dice, cross_entropy, cfg.dice_weight, cfg.focal_weight),
        "lovasz_focal": lambda: SumOfLosses(
            LovaszSoftmaxLoss(cfg.ignore_background), focal, cfg.dice_weight, cfg.focal_weight
        ),
        "dice": lambda: dice,
        "focal": lambda: focal,
        "cross_entropy": lambda: cross_entropy,
    }
    if cfg.name not in losses:
        raise ValueError(f"unknown loss '{cfg.name}'; choose one of: {', '.join(losses)}")
    return losses[cfg.name]()


def pseudo_label_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over classes 1..4 on the confident pixels, divided by all pixels (as in FixMatch: while the
    teacher is unsure, the unlabeled loss stays small)."""
    log_probabilities = logits.float()[:, FIRST_SCORED_CLASS:].log_softmax(dim=1)  # (B, 4, H, W)
    kept = targets != IGNORED
    picked = (targets - FIRST_SCORED_CLASS).clamp(min=0)
    nll = -log_probabilities.gather(1, picked.unsqueeze(1)).squeeze(1)  # (B, H, W)
    return (nll * kept).sum() / targets.numel()


def soft_target_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The KL divergence from the teachers' probabilities (B, 4, H, W) of classes 1..4 to the model's, averaged over
    pixels: 0 where they agree (the cross-entropy against them has the same gradient)."""
    log_probabilities = logits.float()[:, FIRST_SCORED_CLASS:].log_softmax(dim=1)  # (B, 4, H, W)
    if targets.shape != log_probabilities.shape:
        raise ValueError(f"soft targets: found shape {tuple(targets.shape)}, expected {tuple(log_probabilities.shape)}")
    targets = targets.float()
    return (torch.xlogy(targets, targets) - targets * log_probabilities).sum(dim=1).mean()
