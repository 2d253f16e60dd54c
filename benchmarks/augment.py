"""Augmentation throughput on one core: the full study pipeline (every transform on) and the default recipe.

Target: under 2 ms per 64x128 image with the full pipeline. Prints a table; asserts nothing.
Run: .venv/bin/python benchmarks/augment.py [--images N]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, as a DataLoader worker has

import cv2  # noqa: E402

from marsseg.config import AugmentConfig  # noqa: E402
from marsseg.data.augment import augment_pair, build_augmentation  # noqa: E402
from marsseg.data.synth import make_synthetic  # noqa: E402

PIPELINES = {
    "full (every transform, p=1 except flips 0.5)": AugmentConfig(
        hflip=0.5, vflip=0.5, elastic=1.0, grid_distortion=1.0, clahe=1.0, brightness_contrast=1.0, gamma=1.0
    ),
    "default recipe": AugmentConfig(),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    arrays = make_synthetic(n_train=256, n_test=1, seed=0)
    images, masks = arrays["training_set"][:, 0], arrays["training_set"][:, 1]
    print(f"{'pipeline':<48}{'img/s':>10}{'ms/img':>10}")
    for name, cfg in PIPELINES.items():
        pipeline = build_augmentation(cfg, seed=0)
        for i in range(50):  # warm-up
            augment_pair(pipeline, images[i % 256], masks[i % 256])
        start = time.perf_counter()
        for i in range(args.images):
            augment_pair(pipeline, images[i % 256], masks[i % 256])
        seconds = time.perf_counter() - start
        print(f"{name:<48}{args.images / seconds:>10.0f}{1000 * seconds / args.images:>10.3f}")


if __name__ == "__main__":
    main()
