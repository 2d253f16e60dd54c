"""Whole camera frames as image files: finding and reading them as gray, resizing images (area) and masks
(majority of each block), cutting a frame into crops. Used by `data import` and by `predict --images`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from marsseg.data.split import frame_units
from marsseg.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # compared in lower case: the AI4Mars release writes .JPG


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def images_in_folder(folder: Path) -> list[Path]:
    """The JPEG and PNG files directly in `folder`, sorted by name."""
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def find_image_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The image files named by `paths`: files as given, folders by their JPEG and PNG files (not recursive).

    Raises:
        UserError: a path that does not exist, or a folder without images.
    """
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            inside = images_in_folder(path)
            if not inside:
                raise UserError(f"{path}: no JPEG or PNG images in this folder, expected *.jpg, *.jpeg or *.png")
            found += inside
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(f"{path}: not found, expected an image file or a folder of them")
    return found


def open_image(path: Path) -> Image.Image:
    """The decoded image at `path` (decoded fully, so a truncated file fails here, not later).

    Raises:
        UserError: naming the file, when it is not a readable JPEG or PNG.
    """
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except UnidentifiedImageError:
        raise UserError(f"{path}: unreadable image (format not recognised), expected a JPEG or PNG file") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:  # truncated, corrupt, huge
        raise UserError(f"{path}: unreadable image ({error}), expected a JPEG or PNG file") from None


def read_gray_image(path: Path) -> np.ndarray:
    """(H, W) uint8 gray from a JPEG or PNG, gray or colour (colour by ITU-R 601 luma; gray stored as three equal
    channels comes back unchanged)."""
    image = open_image(path)
    if image.mode not in ("L", "1", "P", "RGB", "RGBA", "LA", "CMYK", "YCbCr"):
        raise UserError(f"{path}: found image mode {image.mode}, expected 8-bit gray or colour")
    return np.asarray(image if image.mode == "L" else image.convert("L"), dtype=np.uint8)


def resized_shape(shape: tuple[int, int], frame_size: int) -> tuple[int, int]:
    """(height, width) of a frame of `shape` resized so that its longer side is `frame_size`."""
    scale = frame_size / max(shape)
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def resize_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a gray uint8 image to `shape` (H, W): area averaging when shrinking (no aliasing), bilinear when
    enlarging."""
    if image.shape == tuple(shape):
        return image
    shrinking = shape[0] * shape[1] < image.shape[0] * image.shape[1]
    return cv2.resize(image, (shape[1], shape[0]), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def resize_mask(mask: np.ndarray, shape: tuple[int, int], tie_order: Sequence[int]) -> np.ndarray:
    """Resize a label mask to `shape` (H, W): each output pixel takes the value that covers most of its area.

    For an integer factor that is the majority of each block. Ties go to the value that comes first in
    `tie_order`, which must list every value the mask holds.
    """
    if mask.shape == tuple(shape):
        return mask
    # Each value's covered share of every output pixel; for integer factors INTER_AREA's block sums are exact, so
    # equal counts give equal shares and the tie rule decides.
    shares = np.stack(
        [
            cv2.resize((mask == value).astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
            for value in tie_order
        ]
    )  # (V, H, W)
    return np.asarray(tie_order, dtype=mask.dtype)[shares.argmax(axis=0)]  # argmax: the first of equal maxima


def cut_tiles(frame: np.ndarray, tile_shape: tuple[int, int]) -> np.ndarray:
    """(T, th, tw) tiles of a frame whose sides are multiples of `tile_shape`, row by row (top half first)."""
    rows, columns = frame.shape[0] // tile_shape[0], frame.shape[1] // tile_shape[1]
    tiles = frame.reshape(rows, tile_shape[0], columns, tile_shape[1]).swapaxes(1, 2)
    return tiles.reshape(rows * columns, *tile_shape)


def whole_frame_units(images: np.ndarray, masks: np.ndarray, below: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Training units of twice a crop's height (data.train_on_frames): (U, 2H, W) images and masks.

    Each pair of `below` (data.split.frame_halves over these crops, the training part's, so that no unit holds a
    held-out crop) becomes its frame; every other crop sits in the middle of a unit of its own, the image mirrored
    into the rows above and below it and the mask 0 there (background: never scored, no loss).
    """
    units = frame_units(below)
    tops = [unit[0] for unit in units if len(unit) == 2]
    singles = [unit[0] for unit in units if len(unit) == 1]
    height = images.shape[1]
    pad = ((0, 0), (height // 2, height - height // 2), (0, 0))
    unit_images = np.concatenate(
        [np.concatenate([images[tops], images[below[tops]]], axis=1), np.pad(images[singles], pad, mode="reflect")]
    )
    unit_masks = np.concatenate(
        [np.concatenate([masks[tops], masks[below[tops]]], axis=1), np.pad(masks[singles], pad, constant_values=0)]
    )
    return unit_images, unit_masks
