"""Training and inference throughput of every model on this machine, beside its measured peak.

For each model: parameters, GFLOP per 64x128 image (torch.utils.flop_counter), training and inference
images/s, achieved GFLOP/s and its share of the machine's peak (the best of a large fp32 matmul and a 3x3
channels-last convolution, 64 -> 64 channels, 64x128, batch 64). Then, for the default recipe: the share of
a training step spent loading and augmenting data, and the peak RSS of a real `fit` epoch on the data file.

Targets (issue 4): training the default model >= 60 % of peak, inference >= 80 %; data < 10 % of step time;
peak RSS < 2 GB on ../shared/data/mars64.npz. Prints tables; asserts nothing.
Run: .venv/bin/python benchmarks/throughput.py [--models unet,deeplab] [--data FILE] [--skip-fit]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from marsseg.config import Config, load_config
from marsseg.engine import build_model, configure_threads
from marsseg.models import MODELS, count_parameters, gflops_per_image

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mars64.npz"
BATCH = 64


def timed(step, repeats: int, warmup: int = 2) -> float:
    """Seconds per call of `step`, after warm-up."""
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def measured_peak() -> tuple[float, float]:
    """(matmul GFLOP/s, conv GFLOP/s) in fp32 on this machine."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    matmul = 2 * 2048**3 / timed(lambda: a @ b, 5) / 1e9
    x = torch.randn(BATCH, 64, 64, 128).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    with torch.no_grad():
        seconds = timed(lambda: conv(x), 5)
    return matmul, 2 * BATCH * 64 * 64 * 9 * 64 * 128 / seconds / 1e9


def time_model(model: torch.nn.Module) -> tuple[float, float]:
    """(seconds per training step, seconds per inference batch) at batch 64, channels-last."""
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(BATCH, 1, 64, 128).contiguous(memory_format=torch.channels_last)
    y = torch.randint(1, 5, (BATCH, 64, 128))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)

    def train_step():
        output = model(x)
        loss = F.cross_entropy(output[0] if isinstance(output, tuple) else output, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    train_seconds = timed(train_step, 4)
    model.eval()
    with torch.no_grad():
        infer_seconds = timed(lambda: model(x), 6)
    return train_seconds, infer_seconds


def model_row(cfg: Config, peak: float) -> str:
    model = build_model(cfg)
    gflop = gflops_per_image(model)
    train_seconds, infer_seconds = time_model(model)
    train_gflops = 3 * gflop * BATCH / train_seconds  # backward costs about twice the forward
    infer_gflops = gflop * BATCH / infer_seconds
    return (
        f"{cfg.model.name + ' w' + str(cfg.model.width):<16}{count_parameters(model) / 1e6:>8.2f}{gflop:>8.3f}"
        f"{BATCH / train_seconds:>10.0f}{train_gflops:>9.0f}{100 * train_gflops / peak:>7.0f}%"
        f"{BATCH / infer_seconds:>10.0f}{infer_gflops:>9.0f}{100 * infer_gflops / peak:>7.0f}%"
    )


def fit_one_epoch(data: str) -> None:
    """Child process: one real epoch of the default recipe; prints data share and peak RSS."""
    import tempfile

    from marsseg.engine import fit

    cfg = load_config(None, {"data.path": data, "optim.epochs": 1})
    with tempfile.TemporaryDirectory() as run_dir:
        result = fit(cfg, run_dir, force=True, score_test=False)
    record = result.history[-1]
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec.
    peak_rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024
    print(f"{record['data_share']:.4f} {record['seconds']:.1f} {peak_rss:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--width", type=int, default=None, help="width for every model (default: the recipe's)")
    parser.add_argument("--data", default=str(REAL_DATA) if REAL_DATA.is_file() else "")
    parser.add_argument("--skip-fit", action="store_true", help="skip the one-epoch data-share and RSS run")
    parser.add_argument("--fit-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fit_child:
        fit_one_epoch(args.data)
        return
    cfg = load_config()
    if args.width:
        cfg.model.width = args.width
    configure_threads(cfg.threads)
    matmul, conv = measured_peak()
    peak = max(matmul, conv)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; peak fp32: matmul {matmul:.0f} GFLOP/s, "
        f"3x3 conv {conv:.0f} GFLOP/s -> peak {peak:.0f} GFLOP/s"
    )
    print(f"default model: {cfg.model.name} width {cfg.model.width} {cfg.model.options}; batch {BATCH}")
    print(
        f"{'model':<16}{'Mparams':>8}{'GFLOP':>8}{'train/s':>10}{'GFLOP/s':>9}{'%peak':>8}"
        f"{'infer/s':>10}{'GFLOP/s':>9}{'%peak':>8}"
    )
    for name in args.models.split(","):
        cfg.model.name = name
        print(model_row(cfg, peak), flush=True)
    if not args.skip_fit:
        source = args.data or "<synthetic>"
        output = subprocess.run(
            [sys.executable, __file__, "--fit-child", "--data", args.data], check=True, capture_output=True, text=True
        ).stdout.split()
        share, seconds, rss = output[-3:]
        print(
            f"one epoch of the default recipe on {source}: {float(seconds):.1f} s, data loading + augmentation "
            f"{100 * float(share):.1f}% of step time, peak RSS {float(rss):.0f} MiB"
        )


if __name__ == "__main__":
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    main()
