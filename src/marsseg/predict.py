"""Inference (optionally averaged over flips) and the Kaggle submission CSV."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from marsseg.data.dataset import images_to_tensor
from marsseg.data.io import write_atomically
from marsseg.data.split import RARE_CLASS
from marsseg.precision import autocast

# Why labels are argmax over classes 1..4 only: a pixel whose true label is 0 is never scored, and 0 on a pixel
# labelled 1..4 is never a hit. (0 can still beat a wrong class, removing its false positive; on mars64 a rule
# that abstains gained no more than the big-rock scale: benchmarks/decision_rules.py.)
FIRST_SCORED_CLASS = 1
BIG_ROCK = RARE_CLASS


def main_output(output: torch.Tensor | tuple) -> torch.Tensor:
    """The final logits of a model that may also return auxiliary outputs (deep supervision)."""
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def predict_probabilities(
    model: nn.Module,
    images: np.ndarray,
    in_channels: int = 1,
    batch_size: int = 128,
    tta: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = False,
    precision: str = "fp32",
) -> Iterator[torch.Tensor]:
    """Yield softmax probabilities (b, C, H, W) on the CPU, batch by batch, for uint8 images (N, H, W).

    With `tta`, the probabilities are averaged over the identity and a horizontal flip (the flip that
    training also uses; an upside-down crop is not a rover view). `precision` is the run's (precision.py); the
    softmax is taken in fp32.
    """
    model.eval()
    device = torch.device(device)
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc="predict", disable=not progress, leave=False):
        x = images_to_tensor(images[start : start + batch_size], in_channels).to(device)
        if device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            probs = main_output(model(x)).float().softmax(dim=1)
            if tta:
                flipped = main_output(model(x.flip(-1))).float().softmax(dim=1).flip(-1)
                probs = (probs + flipped) / 2
        yield probs.cpu()


def labels_from_probabilities(probs: torch.Tensor, big_rock_scale: float = 1.0) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W) labels in 1..4 (see FIRST_SCORED_CLASS).

    `big_rock_scale` multiplies the big-rock probability before the argmax: a model trained on a class under
    1 % of the pixels ranks it too low, and a scale chosen on validation trades its precision for recall.
    """
    if big_rock_scale != 1.0:
        probs = probs.clone()
        probs[:, BIG_ROCK] *= big_rock_scale
    return probs[:, FIRST_SCORED_CLASS:].argmax(dim=1) + FIRST_SCORED_CLASS


def predict_labels(
    model: nn.Module,
    images: np.ndarray,
    in_channels: int = 1,
    batch_size: int = 128,
    tta: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = False,
    big_rock_scale: float = 1.0,
    precision: str = "fp32",
) -> np.ndarray:
    """(N, H, W) uint8 labels for uint8 images (N, H, W)."""
    batches = predict_probabilities(model, images, in_channels, batch_size, tta, device, progress, precision)
    return np.concatenate([labels_from_probabilities(p, big_rock_scale).numpy().astype(np.uint8) for p in batches])


def write_submission(labels: np.ndarray, path: str | os.PathLike) -> None:
    """Kaggle CSV: header `id,0,...,8191`, then per image its index and its labels in row-major order."""
    n, height, width = labels.shape
    if labels.min() < 0 or labels.max() > 9:
        raise ValueError("labels must be single digits")
    header = "id," + ",".join(str(i) for i in range(height * width)) + "\n"
    # Labels are single digits, so each row is the digits interleaved with commas: built as bytes, not
    # formatted number by number (32 million of them for the course test set).
    cells = np.full((n, height * width, 2), ord(","), dtype=np.uint8)
    cells[:, :, 1] = labels.reshape(n, -1) + ord("0")

    def write(temporary: str) -> None:
        with open(temporary, "wb") as handle:
            handle.write(header.encode())
            for index in range(n):
                handle.write(str(index).encode() + cells[index].tobytes() + b"\n")

    write_atomically(path, write)


def read_submission(path: str | os.PathLike, height: int = 64, width: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(ids, labels (N, H, W)) from a submission CSV; for checks and tests."""
    table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    return table[:, 0], table[:, 1:].reshape(-1, height, width).astype(np.uint8)
