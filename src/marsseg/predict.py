"""Inference (optionally averaged over flips), the Kaggle submission CSV, and label images for image files of any
size (whole frames in one pass, or in tiles)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from marsseg.config import InferenceSettings
from marsseg.data.ai4mars import TO_AI4MARS
from marsseg.data.dataset import images_to_tensor
from marsseg.data.frames import find_image_files, read_gray_image, resize_image, resized_shape
from marsseg.data.io import NUM_CLASSES, refuse_to_overwrite, staged_directory, write_atomically
from marsseg.data.split import RARE_CLASS, frame_halves
from marsseg.errors import UserError
from marsseg.losses import FIRST_SCORED_CLASS
from marsseg.models import final_logits
from marsseg.models.blocks import resize
from marsseg.precision import autocast

# Labels are the argmax over classes FIRST_SCORED_CLASS.. (1..4) only: a pixel whose true label is 0 is never scored,
# and 0 on a pixel labelled 1..4 is never a hit. (0 can still beat a wrong class, removing its false positive; on
# mars64 a rule that abstains gained no more than the big-rock scale: benchmarks/decision_rules.py.)
BIG_ROCK = RARE_CLASS


# An image model: a torch module, or a function from uint8 images (B, H, W) to probabilities (B, C, H, W) on the
# CPU such as export.OnnxModel (an exported graph that scales its input and applies the big-rock scale itself).
ImageModel = nn.Module | Callable[[np.ndarray], torch.Tensor]


def torch_probabilities(
    model: nn.Module, in_channels: int, device: torch.device, *, precision: str = "fp32"
) -> Callable[[np.ndarray], torch.Tensor]:
    """The function uint8 images (B, H, W) -> softmax probabilities (B, C, H, W) on the CPU of a torch model.
    `precision` is the run's (precision.py); the softmax is taken in fp32."""
    model.eval()

    def probabilities(images: np.ndarray) -> torch.Tensor:
        x = images_to_tensor(images, in_channels=in_channels).to(device)
        if device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            return final_logits(model(x)).float().softmax(dim=1).cpu()

    return probabilities


@torch.no_grad()
def predict_probabilities(
    model: ImageModel,
    images: np.ndarray,
    *,
    settings: InferenceSettings = InferenceSettings(),
    device: torch.device | str = "cpu",
    batch_size: int = 128,
    progress: bool = False,
    frames: np.ndarray | None = None,
) -> Iterator[torch.Tensor]:
    """Yield softmax probabilities (b, C, H, W) on the CPU, batch by batch, for uint8 images (N, H, W), predicted
    as `settings` say.

    With `tta`, the probabilities are averaged over the identity and a horizontal flip (the flip that
    training also uses; an upside-down crop is not a rover view). With `whole_frames`, crops that are the two
    halves of one camera frame (data.split.frame_halves, found among `images`) are predicted together as one
    (2H, W) image, so that each sees the other across the seam; the rest alone. `frames`, frame_halves' result when
    it is already known (a shard of a larger set), replaces finding them. With several `scales`, every image (or
    frame) is also predicted resized by each (rescaled_probabilities) and the probabilities are averaged, flips
    included. `precision` is the run's (precision.py; an exported model has its own).
    """
    if isinstance(model, nn.Module):
        probabilities = torch_probabilities(
            model, settings.in_channels, torch.device(device), precision=settings.precision
        )
    else:
        probabilities = model

    multiple = getattr(model, "input_multiple", 1)

    def predict_at(batch: np.ndarray, scale: float) -> torch.Tensor:
        probs = rescaled_probabilities(probabilities, batch, scale, multiple=multiple)
        if settings.tta:
            probs = (
                probs + rescaled_probabilities(probabilities, batch[:, :, ::-1], scale, multiple=multiple).flip(-1)
            ) / 2
        return probs

    def predict(batch: np.ndarray) -> torch.Tensor:
        return sum(predict_at(batch, scale) for scale in settings.scales) / len(settings.scales)

    if frames is not None:
        below = frames
    else:
        below = frame_halves(images) if settings.whole_frames else np.full(len(images), -1)
    above = np.full(len(images), -1)
    above[below[below >= 0]] = np.flatnonzero(below >= 0)
    height = images.shape[1]
    waiting: dict[int, torch.Tensor] = {}  # halves predicted with a partner in an earlier batch
    frames_a_pass = max(1, batch_size // 2)  # a frame is two crops' worth of pixels
    for start in tqdm(range(0, len(images), batch_size), desc="predict", disable=not progress, leave=False):
        indices = np.arange(start, min(start + batch_size, len(images)))
        done = {i: waiting.pop(i) for i in indices.tolist() if i in waiting}
        alone = [i for i in indices.tolist() if below[i] < 0 and above[i] < 0]
        if alone:
            done.update(zip(alone, predict(images[alone]), strict=True))
        tops = sorted({i if below[i] >= 0 else int(above[i]) for i in indices.tolist() if i not in done})
        for first in range(0, len(tops), frames_a_pass):
            chunk = tops[first : first + frames_a_pass]
            stitched = np.concatenate([images[chunk], images[below[chunk]]], axis=1)  # (b, 2H, W)
            for top, probs in zip(chunk, predict(stitched), strict=True):
                for index, half in ((top, probs[:, :height]), (int(below[top]), probs[:, height:])):
                    if index > indices[-1]:
                        waiting[index] = half.clone()  # its own batch comes later; the clone frees the frame's
                    else:
                        done[index] = half
        yield torch.stack([done[i] for i in indices.tolist()])


def pad_to_multiple(images: np.ndarray, multiple: int) -> np.ndarray:
    """Images (..., H, W) reflect-padded at the bottom and right until H and W are multiples of `multiple` (a
    model's input_multiple); crop the predictions back to (H, W)."""
    height, width = images.shape[-2:]
    pad = [(0, 0)] * (images.ndim - 2) + [(0, -height % multiple), (0, -width % multiple)]
    return np.pad(images, pad, mode="reflect")


def rescaled_probabilities(
    probabilities: Callable[[np.ndarray], torch.Tensor], images: np.ndarray, scale: float, *, multiple: int = 1
) -> torch.Tensor:
    """(B, C, H, W) probabilities of uint8 images (B, H, W) predicted at `scale`: the images resized to (H, W) x
    `scale` (antialiased when shrinking), reflect-padded at the bottom and right up to `multiple` (the model's
    input_multiple), predicted, cropped, and the probabilities resized back to (H, W) bilinearly."""
    if scale == 1.0:
        return probabilities(images)
    height, width = images.shape[1:]
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    pixels = torch.from_numpy(np.ascontiguousarray(images)).float()[:, None]
    pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
    resized = pixels[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()
    padded = pad_to_multiple(resized, multiple)
    return resize(probabilities(padded)[:, :, : size[0], : size[1]], (height, width))


def scale_big_rock(probs: torch.Tensor, big_rock_scale: float) -> torch.Tensor:
    """(B, C, H, W) probabilities with the big-rock channel multiplied by `big_rock_scale` (a new tensor); the
    exported ONNX graph calls it too."""
    factors = torch.ones(probs.shape[1], dtype=probs.dtype, device=probs.device)
    factors[BIG_ROCK] = big_rock_scale
    return probs * factors.view(1, -1, 1, 1)


def labels_from_probabilities(probs: torch.Tensor, *, big_rock_scale: float = 1.0) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W) labels in 1..4 (see FIRST_SCORED_CLASS).

    `big_rock_scale` multiplies the big-rock probability before the argmax: a model trained on a class under
    1 % of the pixels ranks it too low, and a scale chosen on validation trades its precision for recall.
    """
    if big_rock_scale != 1.0:
        probs = scale_big_rock(probs, big_rock_scale)
    return probs[:, FIRST_SCORED_CLASS:].argmax(dim=1) + FIRST_SCORED_CLASS


def predict_labels(
    model: ImageModel,
    images: np.ndarray,
    *,
    settings: InferenceSettings = InferenceSettings(),
    device: torch.device | str = "cpu",
    big_rock_scale: float = 1.0,
    batch_size: int = 128,
    progress: bool = False,
) -> np.ndarray:
    """(N, H, W) uint8 labels for uint8 images (N, H, W)."""
    batches = predict_probabilities(
        model, images, settings=settings, device=device, batch_size=batch_size, progress=progress
    )
    return np.concatenate(
        [labels_from_probabilities(p, big_rock_scale=big_rock_scale).numpy().astype(np.uint8) for p in batches]
    )


# ---------------------------------------------------------------- whole frames of any size, image files

# Above this many pixels (after resizing and padding) a frame is predicted in overlapping tiles of about this size,
# one at a time: a 1024x1024 frame through res_unet width 32 peaks at 0.65 GB of process memory (fp32, flip TTA).
MAX_FRAME_PIXELS = 1024 * 1024


def tile_starts(length: int, tile: int, multiple: int) -> list[int]:
    """Starts of tiles of `tile` pixels covering `length` (both multiples of `multiple`), overlapping by at least a
    quarter of a tile; the last one ends at `length`."""
    stride = max(multiple, tile * 3 // 4 // multiple * multiple)
    starts = list(range(0, length - tile + 1, stride))
    return starts if starts[-1] + tile == length else [*starts, length - tile]


@torch.no_grad()
def frame_probabilities(
    model: ImageModel,
    frame: np.ndarray,
    *,
    settings: InferenceSettings = InferenceSettings(),
    device: torch.device | str = "cpu",
    max_pixels: int = MAX_FRAME_PIXELS,
) -> torch.Tensor:
    """(C, H, W) probabilities for a uint8 frame (H, W) of any size: in one pass, reflect-padded at the bottom and
    right up to the model's `input_multiple` and cropped back, or, when the padded frame has more than
    `max_pixels` pixels, in overlapping tiles whose probabilities are averaged (`scales`: see
    predict_probabilities; a scale above 1 shrinks the budget, so that no pass exceeds `max_pixels`). A frame is
    one image: `settings.whole_frames` does not apply."""
    multiple = model.input_multiple
    settings = settings.replace(whole_frames=False)
    max_pixels = max(1, int(max_pixels / max(1.0, *settings.scales) ** 2))
    height, width = frame.shape
    padded = pad_to_multiple(frame, multiple)  # (H', W')
    if padded.size <= max_pixels:
        whole = predict_probabilities(model, padded[None], settings=settings, device=device, batch_size=1)
        return next(whole)[0, :, :height, :width]
    side = max(multiple, math.isqrt(max_pixels) // multiple * multiple)
    tile_height, tile_width = min(side, padded.shape[0]), min(side, padded.shape[1])
    origins = [
        (top, left)
        for top in tile_starts(padded.shape[0], tile_height, multiple)
        for left in tile_starts(padded.shape[1], tile_width, multiple)
    ]
    tiles = np.stack([padded[top : top + tile_height, left : left + tile_width] for top, left in origins])
    total, count = None, torch.zeros(padded.shape)
    batches = predict_probabilities(model, tiles, settings=settings, device=device, batch_size=1)
    for (top, left), probs in zip(origins, batches, strict=True):
        if total is None:
            total = torch.zeros(probs.shape[1], *padded.shape)  # (C, H', W')
        total[:, top : top + tile_height, left : left + tile_width] += probs[0]
        count[top : top + tile_height, left : left + tile_width] += 1
    return (total / count)[:, :height, :width]


def image_probabilities(
    model: ImageModel,
    image: np.ndarray,
    frame_size: int,
    *,
    settings: InferenceSettings = InferenceSettings(),
    device: torch.device | str = "cpu",
    max_pixels: int = MAX_FRAME_PIXELS,
) -> torch.Tensor:
    """(C, H, W) probabilities for a gray frame (H, W) of any size.

    The frame is resized by frame_size / its longer side, the scale the model was trained at (`data.frame_size`),
    predicted whole (see `frame_probabilities`), and its probabilities resized back bilinearly.
    """
    shape = resized_shape(image.shape, frame_size)
    frame = resize_image(image, shape)
    probs = frame_probabilities(model, frame, settings=settings, device=device, max_pixels=max_pixels)
    if shape != image.shape:
        probs = resize(probs[None], image.shape)[0]  # (C, H, W)
    return probs


def predict_frame(
    model: ImageModel,
    image: np.ndarray,
    frame_size: int,
    *,
    settings: InferenceSettings = InferenceSettings(),
    device: torch.device | str = "cpu",
    big_rock_scale: float = 1.0,
    max_pixels: int = MAX_FRAME_PIXELS,
) -> np.ndarray:
    """(H, W) uint8 labels 1..4 for a gray frame (H, W) of any size (image_probabilities, then the argmax)."""
    probs = image_probabilities(model, image, frame_size, settings=settings, device=device, max_pixels=max_pixels)
    return labels_from_probabilities(probs[None], big_rock_scale=big_rock_scale)[0].numpy().astype(np.uint8)


def predict_image_files(
    model: ImageModel,
    paths: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    frame_size: int,
    *,
    settings: InferenceSettings = InferenceSettings(),
    device: torch.device | str = "cpu",
    big_rock_scale: float = 1.0,
    max_pixels: int = MAX_FRAME_PIXELS,
    force: bool = False,
    progress: bool = False,
) -> tuple[list[Path], np.ndarray]:
    """Predict image files (or folders of them) of any size; write per image `out_dir/labels/NAME.png` (AI4Mars
    values: 0 soil, 1 bedrock, 2 sand, 3 big rock, 255 no label) and `out_dir/overlays/NAME.png` (colours over the
    image, a legend of them under it), all or nothing. Returns the files predicted and the pixel count of each
    label 0..4 over all of them.

    Raises:
        UserError: a missing path, an unreadable image, two images with one name, or an existing output
            without `force`; nothing is written then.
    """
    from marsseg.report import overlay_with_legend

    files = find_image_files(paths)
    seen: dict[str, Path] = {}
    for path in files:
        if path.stem in seen:
            raise UserError(f"{path}: a second image named {path.stem!r} (first: {seen[path.stem]}); rename one")
        seen[path.stem] = path
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: is a file, expected a folder for the label images (--out)")
    outputs = [Path(part) / f"{path.stem}.png" for path in files for part in ("labels", "overlays")]
    inputs = {path.resolve() for path in files}
    for output in outputs:
        if (out_dir / output).resolve() in inputs:
            raise UserError(f"{out_dir / output}: is one of the input images; choose another --out")
        refuse_to_overwrite(out_dir / output, force)
    counts = np.zeros(NUM_CLASSES, dtype=np.int64)
    with staged_directory(out_dir) as staging:
        (staging / "labels").mkdir()
        (staging / "overlays").mkdir()
        # The bar shows on a terminal only, and is cleared on an error, so that the error stays one line.
        with tqdm(files, desc="predict", unit="image", leave=False, disable=None if progress else True) as bar:
            for path in bar:
                image = read_gray_image(path)
                labels = predict_frame(
                    model,
                    image,
                    frame_size,
                    settings=settings,
                    device=device,
                    big_rock_scale=big_rock_scale,
                    max_pixels=max_pixels,
                )
                Image.fromarray(TO_AI4MARS[labels]).save(staging / "labels" / f"{path.stem}.png")
                Image.fromarray(overlay_with_legend(image, labels)).save(staging / "overlays" / f"{path.stem}.png")
                counts += np.bincount(labels.reshape(-1), minlength=NUM_CLASSES)
    return files, counts


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


def read_submission(path: str | os.PathLike, *, height: int = 64, width: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(ids, labels (N, H, W)) from a submission CSV; for checks and tests."""
    table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    return table[:, 0], table[:, 1:].reshape(-1, height, width).astype(np.uint8)
