"""Rare-class sampling for the training part only (never before the split)."""

from __future__ import annotations

import numpy as np
import torch

from marsseg.data.split import RARE_CLASS


def contains_class(masks: np.ndarray, *, label: int = RARE_CLASS) -> np.ndarray:
    """(N,) bool: which masks contain `label` anywhere."""
    return (masks == label).reshape(len(masks), -1).any(axis=1)


def oversample_rare_class(
    indices: np.ndarray, masks: np.ndarray, factor: int, *, label: int = RARE_CLASS
) -> np.ndarray:
    """`indices` with every sample whose mask contains `label` repeated `factor` times in all.

    Args:
        indices: training indices into `masks`.
        masks: (N, H, W) label masks of the whole cleaned set.
        factor: 1 leaves `indices` unchanged; 4 makes each big-rock image appear four times.
    """
    if factor < 1:
        raise ValueError(f"oversample factor must be >= 1, got {factor}")
    rare = indices[contains_class(masks[indices], label=label)]
    return np.concatenate([indices] + [rare] * (factor - 1))


def rare_class_sampler(
    indices: np.ndarray, masks: np.ndarray, factor: float, seed: int, *, label: int = RARE_CLASS
) -> torch.utils.data.WeightedRandomSampler:
    """The alternative to repetition: draw samples with big-rock images `factor` times as likely.

    The sampler yields positions into `indices` (one epoch = len(indices) draws, with replacement).
    """
    if factor <= 0:
        raise ValueError(f"sampler factor must be > 0, got {factor}")
    weights = np.where(contains_class(masks[indices], label=label), float(factor), 1.0)
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.WeightedRandomSampler(
        torch.as_tensor(weights, dtype=torch.double),
        num_samples=len(indices),
        replacement=True,
        generator=generator,
    )


def curriculum_indices(
    indices: np.ndarray,
    masks: np.ndarray,
    factor: int,
    epoch: int,
    curriculum_epochs: int,
    seed: int | list[int],
    *,
    label: int = RARE_CLASS,
) -> np.ndarray:
    """One epoch's training indices under a curriculum that starts balanced.

    Epoch 0 draws as many big-rock images as other images; the big-rock share then falls linearly to the share of
    `oversample_rare_class(indices, masks, factor)`, which is returned as it is from epoch `curriculum_epochs` on
    (counting from 0). Every epoch has that set's length, so the number of steps (and the learning-rate schedule)
    does not change.

    Args:
        indices: training indices into `masks`.
        masks: (N, H, W) label masks of the whole cleaned set.
        factor: the oversampling factor the curriculum ends at.
        epoch: 0-based epoch number.
        curriculum_epochs: epochs until the final share is reached; 0 switches the curriculum off.
        seed: draws the epoch's images (the same seed gives the same indices); anything np.random.default_rng takes.
    """
    final = oversample_rare_class(indices, masks, factor, label=label)
    rare_mask = contains_class(masks[indices], label=label)
    rare, common = indices[rare_mask], indices[~rare_mask]
    if epoch >= curriculum_epochs or len(rare) == 0 or len(common) == 0:
        return final
    total = len(final)
    end_share = len(rare) * factor / total
    start_share = max(0.5, end_share)
    share = start_share + (end_share - start_share) * epoch / curriculum_epochs
    # Never below the final count of big-rock draws, so the other images fit without repetition.
    rare_draws = max(round(share * total), len(rare) * factor)
    rng = np.random.default_rng(seed)
    # A permutation repeated cyclically: every big-rock image is drawn equally often, give or take one.
    return np.concatenate([np.resize(rng.permutation(rare), rare_draws), rng.permutation(common)[: total - rare_draws]])
