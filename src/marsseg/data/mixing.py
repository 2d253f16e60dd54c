"""Augmentations that mix training crops: big-rock copy-paste, CutMix and frame shift. All draw only from the
training part (the dataset they are given), after the split, so no held-out pixel reaches training.

Big rock is under 1 % of the pixels and sits in a few hundred crops; pasting its connected components onto other
crops shows the model more rocks on more backgrounds, and CutMix puts label boundaries where no frame had them.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from marsseg.data.split import RARE_CLASS


@dataclass
class Component:
    """One connected region of a class, cut out of its crop: the pixels of its bounding box and which of them
    belong to it."""

    image: np.ndarray  # (h, w) uint8, the bounding box
    inside: np.ndarray  # (h, w) bool, the component's own pixels


def class_components(
    images: np.ndarray, masks: np.ndarray, indices: np.ndarray, *, label: int = RARE_CLASS, min_pixels: int = 4
) -> list[Component]:
    """Every 8-connected region of `label` with at least `min_pixels` pixels in the crops `indices`."""
    components = []
    for index in np.unique(indices):
        present = (masks[index] == label).astype(np.uint8)
        if not present.any():
            continue
        count, labels, stats, _ = cv2.connectedComponentsWithStats(present, connectivity=8)
        for component in range(1, count):  # 0 is everything else
            left, top, width, height, area = stats[component]
            if area < min_pixels:
                continue
            window = (slice(top, top + height), slice(left, left + width))
            components.append(Component(images[index][window].copy(), labels[window] == component))
    return components


def paste_components(
    image: np.ndarray,
    mask: np.ndarray,
    components: list[Component],
    rng: np.random.Generator,
    count: int,
    *,
    scale_range: tuple[float, float] = (0.75, 1.25),
    label: int = RARE_CLASS,
) -> tuple[np.ndarray, np.ndarray]:
    """`image` and `mask` with `count` components drawn from `components` pasted at random places: each scaled by a
    factor in `scale_range`, flipped left-right half of the time, and clipped to the crop. Returns new arrays."""
    image, mask = image.copy(), mask.copy()
    height, width = mask.shape
    for _ in range(count if components else 0):
        component = components[rng.integers(len(components))]
        scale = rng.uniform(*scale_range)
        h, w = component.inside.shape
        size = (max(1, min(width, round(w * scale))), max(1, min(height, round(h * scale))))  # cv2: (width, height)
        patch = cv2.resize(component.image, size, interpolation=cv2.INTER_LINEAR)
        inside = cv2.resize(component.inside.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
        if rng.random() < 0.5:
            patch, inside = patch[:, ::-1], inside[:, ::-1]
        top = int(rng.integers(0, height - size[1] + 1))
        left = int(rng.integers(0, width - size[0] + 1))
        window = (slice(top, top + size[1]), slice(left, left + size[0]))
        image[window][inside] = patch[inside]
        mask[window][inside] = label
    return image, mask


def cutmix_box(height: int, width: int, rng: np.random.Generator, *, max_area: float = 0.5) -> tuple[slice, slice]:
    """A random rectangle of the crop's aspect ratio covering 10 % .. `max_area` of it."""
    area = rng.uniform(0.1, max_area)
    box_height, box_width = max(1, round(height * np.sqrt(area))), max(1, round(width * np.sqrt(area)))
    top = int(rng.integers(0, height - box_height + 1))
    left = int(rng.integers(0, width - box_width + 1))
    return slice(top, top + box_height), slice(left, left + box_width)


def cutmix(
    image: np.ndarray, mask: np.ndarray, other_image: np.ndarray, other_mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`image` and `mask` with one box (cutmix_box) replaced by the same box of another crop. Returns new arrays."""
    window = cutmix_box(*mask.shape, rng)
    image, mask = image.copy(), mask.copy()
    image[window], mask[window] = other_image[window], other_mask[window]
    return image, mask


def frame_window(
    top: tuple[np.ndarray, np.ndarray], bottom: tuple[np.ndarray, np.ndarray], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A window of one half's size from the frame of two halves, `top` (image, mask) above `bottom`, starting
    1 .. H - 1 rows down, so that it holds rows of both halves. Returns new arrays."""
    height = top[1].shape[0]
    start = int(rng.integers(1, height))
    image = np.concatenate([top[0][start:], bottom[0][:start]])
    mask = np.concatenate([top[1][start:], bottom[1][:start]])
    return image, mask
