"""The study's augmentations as one Albumentations pipeline; masks are always resampled with nearest."""

from __future__ import annotations

import os

import cv2
import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check at import: the network is closed
import albumentations as A  # noqa: E402

from marsseg.config import AugmentConfig  # noqa: E402
from marsseg.data.split import RARE_CLASS  # noqa: E402

# Reflection keeps the border textured; a constant fill would invent black terrain.
BORDER = cv2.BORDER_REFLECT_101


def build_augmentation(cfg: AugmentConfig, *, seed: int = 0) -> A.Compose | None:
    """The training-time pipeline for uint8 (H, W) images and masks; None when every transform is off.

    Albumentations draws from the Compose's own generator, seeded here (global seeds do not reach it).
    """
    transforms = []
    if cfg.hflip > 0:
        transforms.append(A.HorizontalFlip(p=cfg.hflip))
    if cfg.vflip > 0:
        transforms.append(A.VerticalFlip(p=cfg.vflip))
    if cfg.zoom > 0:
        transforms.append(
            A.Affine(
                scale=(1 / (1 + cfg.zoom_limit), 1 + cfg.zoom_limit),
                keep_ratio=True,
                balanced_scale=True,
                border_mode=BORDER,
                mask_interpolation=cv2.INTER_NEAREST,
                p=cfg.zoom,
            )
        )
    if cfg.elastic > 0:
        transforms.append(
            A.ElasticTransform(
                alpha=cfg.elastic_alpha,
                sigma=cfg.elastic_sigma,
                border_mode=BORDER,
                mask_interpolation=cv2.INTER_NEAREST,
                p=cfg.elastic,
            )
        )
    if cfg.grid_distortion > 0:
        transforms.append(
            A.GridDistortion(
                distort_limit=cfg.grid_distort_limit,
                border_mode=BORDER,
                mask_interpolation=cv2.INTER_NEAREST,
                p=cfg.grid_distortion,
            )
        )
    if cfg.clahe > 0:
        transforms.append(A.CLAHE(clip_limit=cfg.clahe_clip_limit, tile_grid_size=(4, 8), p=cfg.clahe))
    if cfg.brightness_contrast > 0:
        transforms.append(
            A.RandomBrightnessContrast(
                brightness_limit=cfg.brightness_limit, contrast_limit=cfg.contrast_limit, p=cfg.brightness_contrast
            )
        )
    if cfg.gamma > 0:
        transforms.append(A.RandomGamma(gamma_limit=(100 - cfg.gamma_limit, 100 + cfg.gamma_limit), p=cfg.gamma))
    return A.Compose(transforms, seed=seed) if transforms else None


def augment_pair(pipeline: A.Compose | None, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply one random draw of `pipeline` to an image and its mask together."""
    if pipeline is None:
        return image, mask
    result = pipeline(image=image, mask=mask)
    return result["image"], result["mask"]


def crop_around_class(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, min_scale: float, *, label: int = RARE_CLASS
) -> tuple[np.ndarray, np.ndarray]:
    """A zoom on `label`: a crop centred on one of its pixels, resized back to the input's size.

    The crop keeps the image's aspect ratio and is a random fraction `min_scale..1` of each side; it is moved
    inside the image where the centre lies near a border. Images without `label` come back unchanged.
    """
    rows, cols = np.nonzero(mask == label)
    if len(rows) == 0:
        return image, mask
    height, width = mask.shape
    scale = rng.uniform(min_scale, 1.0)
    crop_height, crop_width = max(1, round(height * scale)), max(1, round(width * scale))
    pick = rng.integers(len(rows))
    top = int(np.clip(rows[pick] - crop_height // 2, 0, height - crop_height))
    left = int(np.clip(cols[pick] - crop_width // 2, 0, width - crop_width))
    window = (slice(top, top + crop_height), slice(left, left + crop_width))
    zoomed_image = cv2.resize(image[window], (width, height), interpolation=cv2.INTER_LINEAR)
    zoomed_mask = cv2.resize(mask[window], (width, height), interpolation=cv2.INTER_NEAREST)
    return zoomed_image, zoomed_mask
