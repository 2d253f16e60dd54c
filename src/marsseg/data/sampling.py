"""Rare-class sampling for the training part only (never before the split)."""

from __future__ import annotations

import numpy as np
import torch

from marsseg.data.split import RARE_CLASS


def contains_class(masks: np.ndarray, label: int = RARE_CLASS) -> np.ndarray:
    """(N,) bool: which masks contain `label` anywhere."""
    return (masks == label).reshape(len(masks), -1).any(axis=1)


def oversample_rare_class(indices: np.ndarray, masks: np.ndarray, factor: int, label: int = RARE_CLASS) -> np.ndarray:
    """`indices` with every sample whose mask contains `label` repeated `factor` times in all.

    Args:
        indices: training indices into `masks`.
        masks: (N, H, W) label masks of the whole cleaned set.
        factor: 1 leaves `indices` unchanged; 4 makes each big-rock image appear four times.
    """
    if factor < 1:
        raise ValueError(f"oversample factor must be >= 1, got {factor}")
    rare = indices[contains_class(masks[indices], label)]
    return np.concatenate([indices] + [rare] * (factor - 1))


def rare_class_sampler(
    indices: np.ndarray, masks: np.ndarray, factor: float, seed: int, label: int = RARE_CLASS
) -> torch.utils.data.WeightedRandomSampler:
    """The alternative to repetition: draw samples with big-rock images `factor` times as likely.

    The sampler yields positions into `indices` (one epoch = len(indices) draws, with replacement).
    """
    if factor <= 0:
        raise ValueError(f"sampler factor must be > 0, got {factor}")
    weights = np.where(contains_class(masks[indices], label), float(factor), 1.0)
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.WeightedRandomSampler(
        torch.as_tensor(weights, dtype=torch.double),
        num_samples=len(indices),
        replacement=True,
        generator=generator,
    )
