"""Whole frames in one pass against the 64x128 halves the model was trained on, on AI4Mars frames it never saw.

The frames of an AI4Mars folder (default ../shared/data/ai4mars_sample, 200 frames of 256x256) are imported as
`marsseg data import` does (resized by the run's data.frame_size / their side, masks by block majority) and
predicted three ways, with the run's flip TTA and big-rock scale:

- whole frame: each resized frame in one pass (`predict.frame_probabilities`, as `predict --images` does);
- halves: its top and bottom 64x128 crops separately (as the CSV path predicts crops);
- whole frame at the file's size: `predict.predict_frame` (probabilities resized back to 256x256), scored against
  the original label PNG: exactly what `predict --images` writes.

Prints mIoU over classes 1..4 and per-class IoU (true-0 pixels ignored), the same within 8 rows of the seam
between the halves (16 of 128 rows), and a paired bootstrap over frames of the whole-minus-halves difference.
Run: .venv/bin/python benchmarks/full_frames.py RUN_DIR_OR_ONNX [--sample DIR] [--tta on|off]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from cross_validation import difference_text

from marsseg.config import InferenceSettings
from marsseg.data.ai4mars import find_pairs, import_ai4mars, read_label
from marsseg.data.frames import read_gray_image
from marsseg.data.io import CLASS_NAMES
from marsseg.export import load_for_inference
from marsseg.metrics import confusion_matrices_per_image, confusion_matrix, iou_per_class, mean_iou
from marsseg.predict import frame_probabilities, labels_from_probabilities, predict_frame, predict_probabilities

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ai4mars_sample"
SEAM_ROWS = 8  # rows on either side of the seam scored separately


def per_frame_matrices(labels: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(F, 5, 5) confusion matrices, one per frame."""
    return confusion_matrices_per_image(torch.from_numpy(masks), torch.from_numpy(labels)).numpy()


def split_at_seam(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(near, away): `masks` with the pixels farther than SEAM_ROWS from the middle row set to 0 (not scored), and
    with those nearer set to 0."""
    band = slice(masks.shape[1] // 2 - SEAM_ROWS, masks.shape[1] // 2 + SEAM_ROWS)
    near, away = np.zeros_like(masks), masks.copy()
    near[:, band], away[:, band] = masks[:, band], 0
    return near, away


def bootstrap_difference(first: np.ndarray, second: np.ndarray, draws: int = 2000) -> tuple[float, float]:
    """95 % interval of mIoU(first) - mIoU(second) over frames resampled with replacement, the same frames for
    both (paired: metrics.bootstrap_miou_interval bootstraps one method's mIoU, not a difference)."""
    rng = np.random.default_rng(0)
    differences = []
    for _ in range(draws):
        chosen = rng.integers(0, len(first), len(first))
        differences.append(mean_iou(first[chosen].sum(0)) - mean_iou(second[chosen].sum(0)))
    return tuple(np.percentile(differences, [2.5, 97.5]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run directory or an exported .onnx file")
    parser.add_argument("--sample", default=str(SAMPLE), help="an AI4Mars folder (images/ + labels/, or the release)")
    parser.add_argument("--tta", choices=("on", "off"), help="default: the run's")
    args = parser.parse_args()

    model, cfg = load_for_inference(args.run)
    tta = cfg.tta if args.tta is None else args.tta == "on"
    scale = cfg.big_rock_scale or 1.0
    settings = InferenceSettings(in_channels=cfg.data.in_channels, tta=tta, precision=cfg.precision)
    side = cfg.data.frame_size
    arrays = import_ai4mars(args.sample, frame_size=side, require_labels=True).arrays
    crops, crop_masks = arrays["training_set"][:, 0], arrays["training_set"][:, 1]  # (2F, 64, 128)
    if len(crops) != 2 * len(arrays["frame_name"]):
        raise SystemExit(f"expected square frames cut into a top and a bottom half; found {len(crops)} crops")
    frames, masks = crops.reshape(-1, side, side), crop_masks.reshape(-1, side, side)  # (F, 128, 128)

    start = time.perf_counter()
    whole = np.stack(
        [
            labels_from_probabilities(frame_probabilities(model, frame, settings=settings)[None], big_rock_scale=scale)[
                0
            ]
            for frame in frames
        ]
    ).astype(np.uint8)
    whole_seconds = time.perf_counter() - start
    start = time.perf_counter()
    halves = np.concatenate(
        [
            labels_from_probabilities(p, big_rock_scale=scale).numpy()
            for p in predict_probabilities(model, crops, settings=settings, batch_size=64)
        ]
    ).reshape(masks.shape)
    halves_seconds = time.perf_counter() - start

    full_matrices = []
    for image_path, label_path in find_pairs(Path(args.sample), require_labels=True)[1]:  # in frame_name's order
        image = read_gray_image(image_path)
        truth = read_label(label_path, image.shape, image_path)
        labels = predict_frame(model, image, side, settings=settings, big_rock_scale=scale)
        full_matrices.append(confusion_matrix(torch.from_numpy(truth), torch.from_numpy(labels)).numpy())
    full_matrices = np.stack(full_matrices)

    near, away = split_at_seam(masks)
    whole_matrices, halves_matrices = per_frame_matrices(whole, masks), per_frame_matrices(halves, masks)
    whole_seam, halves_seam = per_frame_matrices(whole, near), per_frame_matrices(halves, near)
    whole_away, halves_away = per_frame_matrices(whole, away), per_frame_matrices(halves, away)
    rows = (
        (f"whole frame, one pass ({side}x{side})", whole_matrices, whole_seam, whole_away, whole_seconds),
        (
            f"halves, two passes ({crops.shape[1]}x{crops.shape[2]})",
            halves_matrices,
            halves_seam,
            halves_away,
            halves_seconds,
        ),
        ("whole frame at the file's size (predict --images)", full_matrices, None, None, None),
    )
    print(
        f"{args.run}: {len(frames)} frames of {args.sample}, flip TTA {'on' if tta else 'off'}, big-rock scale "
        f"{scale:g}, frame size {side}, precision {settings.precision}"
    )
    band = f"rows {side // 2 - SEAM_ROWS}-{side // 2 + SEAM_ROWS - 1}"
    header = ["", "mIoU", *CLASS_NAMES[1:], f"mIoU near the seam ({band})", "mIoU away from it", "seconds"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, matrices, near_seam, rest, seconds in rows:
        total = matrices.sum(0)
        cells = [f"{mean_iou(total):.3f}", *(f"{iou:.3f}" for iou in iou_per_class(total))]
        cells += ["-" if part is None else f"{mean_iou(part.sum(0)):.3f}" for part in (near_seam, rest)]
        cells.append("-" if seconds is None else f"{seconds:.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    agree = 100 * (whole == halves).mean()
    print(f"whole minus halves (95 % bootstrap over frames); labels agree on {agree:.1f} % of pixels")
    for name, first, second in (
        ("all pixels", whole_matrices, halves_matrices),
        ("near the seam", whole_seam, halves_seam),
        ("away from it", whole_away, halves_away),
    ):
        low, high = bootstrap_difference(first, second)
        difference = mean_iou(first.sum(0)) - mean_iou(second.sum(0))
        print(f"  {name}: mIoU {difference_text(difference, low, high)}")


if __name__ == "__main__":
    main()
