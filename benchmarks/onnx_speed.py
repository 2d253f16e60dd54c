"""Inference speed of one model in torch and in onnxruntime, side by side: images/s, same batch, all cores.

Both take uint8 images and return softmax probabilities, as `predict` uses them: torch through
`predict.torch_probabilities` (channels-last, as predict runs it; in fp32, and in bf16 autocast where the CPU has
native bf16, which "auto" precision picks), onnxruntime through `export.OnnxModel` (the exported graph, fp32, with
its input scaling and big-rock scale). Inputs: the 64x128 crops of the course data and
128x128 whole frames (AI4Mars at the default frame size). Without a run, the default model (res_unet width 32,
untrained: speed does not depend on the weights) is exported to a temporary file.
Run: .venv/bin/python benchmarks/onnx_speed.py [RUN_DIR] [--batch 64] [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from marsseg.checkpoints import load_model
from marsseg.config import load_config
from marsseg.export import OnnxModel, export_onnx
from marsseg.models import build_network
from marsseg.precision import cpu_has_native_bf16
from marsseg.predict import torch_probabilities
from marsseg.training import configure_threads


def images_per_second(predict, images: np.ndarray, seconds: float) -> float:
    """Images/s of `predict(images)`, after two warm-up calls, over at least `seconds` (and 3 calls)."""
    for _ in range(2):
        predict(images)
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        predict(images)
        calls += 1
    return calls * len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", help="a run directory (default: an untrained default model)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0, help="time spent per measurement")
    args = parser.parse_args()

    threads = os.cpu_count() or 1
    configure_threads(threads)
    if args.run:
        model, cfg = load_model(args.run)
    else:
        # one network; the default's model, the vote of a run's best and last epochs, costs twice (unless they are one)
        cfg = load_config(None, overrides={"model.members": 1})
        torch.manual_seed(0)
        model, cfg.big_rock_scale = build_network(cfg).eval(), 1.0
    model = model.to(memory_format=torch.channels_last)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        export_onnx(model, cfg, path)
        onnx = OnnxModel(path, threads=threads)
        precisions = ("fp32", "bf16") if cpu_has_native_bf16() else ("fp32",)
        in_torch = {p: torch_probabilities(model, cfg.data.in_channels, torch.device("cpu"), p) for p in precisions}
        rng = np.random.default_rng(0)
        print(
            f"{cfg.model.name} width {cfg.model.width}, batch {args.batch}, {threads} threads, torch "
            f"{torch.__version__}, onnxruntime {onnx.session.get_providers()[0]}"
        )
        columns = [f"torch {p} images/s" for p in precisions]
        print(f"| input | {' | '.join(columns)} | onnxruntime fp32 images/s | onnxruntime / torch fp32 |")
        print("|---" * (len(columns) + 3) + "|")
        for height, width, name in ((64, 128, "64x128 crops"), (128, 128, "128x128 whole frames")):
            images = rng.integers(0, 256, (args.batch, height, width), dtype=np.uint8)
            with torch.no_grad():
                speeds = [images_per_second(in_torch[p], images, args.seconds) for p in precisions]
            onnx_speed = images_per_second(onnx, images, args.seconds)
            cells = " | ".join(f"{s:.0f}" for s in speeds)
            print(f"| {name} | {cells} | {onnx_speed:.0f} | {onnx_speed / speeds[0]:.2f} |")


if __name__ == "__main__":
    main()
