"""Importing AI4Mars (NavCam JPEGs with PNG labels) into the course layout, and its label values.

Layouts read: the full release (`msl/images/edr/*.JPG` with `msl/labels/train/*.png`) and flat `images/` +
`labels/` folders; an image and its label share a file stem. Each frame is resized so that its longer side is
`frame_size` (images by area, masks by the majority of each block), then cut into 64x128 crops. Labelled frames
become `training_set` with a `frame_id` per crop, so that a frame's crops stay on one side of every split;
frames without a label become `test_set`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from marsseg.data import frames
from marsseg.data.io import HEIGHT, WIDTH
from marsseg.errors import UserError

NO_LABEL = 255
AI4MARS_VALUES = (0, 1, 2, 3, NO_LABEL)  # soil, bedrock, sand, big rock, no label
TO_AI4MARS = np.array([NO_LABEL, 0, 1, 2, 3], dtype=np.uint8)  # indexed by the course value 0..4
TO_COURSE = np.zeros(256, dtype=np.uint8)  # indexed by the AI4Mars value: k -> k + 1, 255 (no label) -> 0
TO_COURSE[[0, 1, 2, 3]] = [1, 2, 3, 4]
# Majority ties in a block go to the lowest course value: background (no label) first, then soil, bedrock, sand and
# big rock. That is how mars64.npz was made (its data README): a block of two background and two soil pixels is
# background. (The mode of the AI4Mars values, soil first and no label last, differs on about 1.6 % of pixels.)
MASK_TIE_ORDER = (0, 1, 2, 3, 4)  # course values, in the order ties go

# (images, labels) folders of the layouts read, relative to the folder given, tried in this order.
LAYOUTS = (("msl/images/edr", "msl/labels/train"), ("images/edr", "labels/train"), ("images", "labels"))


@dataclass
class ImportResult:
    arrays: dict[str, np.ndarray]  # the course layout plus frame_id, test_frame_id, frame_name, frame_size
    labelled_frames: int
    unlabelled_frames: int
    labels_without_image: int
    images_folder: Path


def find_pairs(directory: Path, require_labels: bool) -> tuple[Path, list[tuple[Path, Path | None]], int]:
    """(the images folder, [(image, its label or None)] sorted by file stem, the number of labels without an image).

    Raises:
        UserError: no layout or no images; two images with one stem; with `require_labels`, an image without one.
    """
    for images_part, labels_part in LAYOUTS:
        if (directory / images_part).is_dir():
            images_folder, labels_folder = directory / images_part, directory / labels_part
            break
    else:
        expected = " or ".join(f"{images}/ with {labels}/" for images, labels in LAYOUTS)
        raise UserError(f"{directory}: no images found, expected {expected}")
    images = frames.images_in_folder(images_folder)
    if not images:
        raise UserError(f"{images_folder}: no JPEG or PNG images, expected one per frame (NAME.jpg or NAME.png)")
    by_stem: dict[str, Path] = {}
    for image in images:
        if image.stem in by_stem:
            raise UserError(f"{image}: a second image with the stem {image.stem!r} (first: {by_stem[image.stem].name})")
        by_stem[image.stem] = image
    labels = {p.stem: p for p in labels_folder.glob("*.png")} if labels_folder.is_dir() else {}
    pairs = [(image, labels.get(stem)) for stem, image in sorted(by_stem.items())]
    missing = [image for image, label in pairs if label is None]
    if require_labels and missing:
        raise UserError(
            f"{labels_folder}: {len(missing)} of {len(pairs)} images have no label (first: {missing[0]}); "
            "expected NAME.png for each image NAME (without --require-labels they go to test_set)"
        )
    return images_folder, pairs, len(set(labels) - set(by_stem))


def read_label(path: Path, image_shape: tuple[int, int], image_path: Path) -> np.ndarray:
    """An AI4Mars label PNG as course values (H, W) uint8, checked against its image's size.

    Raises:
        UserError: naming the file: unreadable, not single-channel 8-bit, another size, or values outside AI4Mars's.
    """
    image = frames.open_image(path)
    if image.mode not in ("L", "P"):
        raise UserError(f"{path}: found image mode {image.mode}, expected a single-channel 8-bit label PNG")
    label = np.asarray(image, dtype=np.uint8)
    if label.shape != image_shape:
        raise UserError(
            f"{path}: found size {label.shape[0]}x{label.shape[1]}, expected {image_shape[0]}x{image_shape[1]} "
            f"(height x width) like its image {image_path.name}"
        )
    values = np.unique(label)
    bad = values[~np.isin(values, AI4MARS_VALUES)]
    if bad.size:
        raise UserError(
            f"{path}: found label values {bad[:5].tolist()}, expected AI4Mars values "
            + ", ".join(map(str, AI4MARS_VALUES))
        )
    return TO_COURSE[label]


def frame_crops(frame: np.ndarray, path: Path, frame_size: int) -> np.ndarray:
    """(T, 64, 128) crops of a resized frame (image or mask); a frame that does not divide into crops is an error."""
    if frame.shape[0] % HEIGHT or frame.shape[1] % WIDTH:
        raise UserError(
            f"{path}: resized to {frame.shape[0]}x{frame.shape[1]} (height x width, frame size {frame_size}), "
            f"expected multiples of {HEIGHT}x{WIDTH} to cut into crops; choose another --frame-size"
        )
    return frames.cut_tiles(frame, (HEIGHT, WIDTH))


def import_ai4mars(
    directory: str | os.PathLike, *, frame_size: int = 128, require_labels: bool = False, progress: bool = False
) -> ImportResult:
    """Read every frame under `directory` into the course layout (see the module docstring). Nothing is written.

    Raises:
        UserError: naming the file, for the first bad input (see `find_pairs` and `read_label`), an unreadable
            image, or a folder without a single labelled frame.
    """
    directory = Path(directory)
    if frame_size < 1:
        raise UserError(f"--frame-size: found {frame_size}, expected >= 1")
    images_folder, pairs, labels_without_image = find_pairs(directory, require_labels)
    train_images, train_masks, train_frames, test_images, test_frames = [], [], [], [], []
    # The bar shows on a terminal only, and is cleared on an error, so that the error stays one line.
    with tqdm(pairs, desc="import", unit="frame", leave=False, disable=None if progress else True) as bar:
        for frame_id, (image_path, label_path) in enumerate(bar):
            image = frames.read_gray_image(image_path)
            shape = frames.resized_shape(image.shape, frame_size)
            crops = frame_crops(frames.resize_image(image, shape), image_path, frame_size)
            if label_path is None:
                test_images.append(crops)
                test_frames += [frame_id] * len(crops)
                continue
            mask = frames.resize_mask(read_label(label_path, image.shape, image_path), shape, MASK_TIE_ORDER)
            train_images.append(crops)
            train_masks.append(frame_crops(mask, label_path, frame_size))
            train_frames += [frame_id] * len(crops)
    if not train_images:
        raise UserError(f"{directory}: none of {len(pairs)} images has a label; the course layout needs at least one")
    arrays = {
        "training_set": np.stack([np.concatenate(train_images), np.concatenate(train_masks)], axis=1),
        "frame_id": np.array(train_frames, dtype=np.int64),
        "frame_name": np.array([image.stem for image, _ in pairs]),  # indexed by frame_id and test_frame_id
        "frame_size": np.array(frame_size),
    }
    if test_images:
        arrays["test_set"] = np.concatenate(test_images)
        arrays["test_frame_id"] = np.array(test_frames, dtype=np.int64)
    labelled = sum(label is not None for _, label in pairs)
    return ImportResult(arrays, labelled, len(pairs) - labelled, labels_without_image, images_folder)
