"""Camera frames cut into shuffled halves, as the course data has them, for the tests of pairing them; image files."""

from pathlib import Path

import numpy as np
from PIL import Image


def save_image(path: Path, array: np.ndarray, fmt: str | None = None) -> None:
    """Write an image file (format from the suffix, or `fmt`), making its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


def shuffled_halves(frames: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(2 * frames, 64, 128) halves of smooth random 128x128 frames in random order, and each one's frame."""
    import cv2

    rng = np.random.default_rng(seed)
    whole = [
        cv2.resize(rng.random((8, 16)).astype(np.float32), (128, 128), interpolation=cv2.INTER_CUBIC)
        for _ in range(frames)
    ]
    halves = np.stack([half for f in whole for half in (f[:64], f[64:])])
    halves = (np.clip(halves, 0, 1) * 255).astype(np.uint8)  # 2k = top, 2k + 1 = bottom of frame k
    order = rng.permutation(2 * frames)
    return halves[order], order // 2
