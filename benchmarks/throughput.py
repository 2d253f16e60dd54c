"""Training and inference throughput of every model on this machine, fp32 beside bf16, against measured peaks.

For each model: parameters, GFLOP per 64x128 image (torch.utils.flop_counter), then for fp32 and bf16 autocast
side by side: training images/s (the whole step of the recipe: forward, the recipe's loss, backward, AdamW, EMA)
and inference images/s, with the share of the machine's peak in that precision (the best of a 2048^3 matmul
and a 3x3 channels-last convolution, 64 -> 64 channels, 64x128, batch 64). Then, for the default recipe in each
precision: the share of a training step spent loading and augmenting data, the epoch time and the peak RSS of a
real `fit` epoch on the data file (each in a child process).

Targets (issue 12): the default recipe's training images/s in bf16 >= 1.8x fp32 where the CPU has native bf16;
data < 10 % of step time; peak RSS < 2 GB on ../shared/data/mars64.npz. Prints tables; asserts nothing.
Run: .venv/bin/python benchmarks/throughput.py [--models unet,deeplab] [--data FILE] [--skip-fit]
         [--losses lovasz_focal]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from marsseg.config import Config, load_config
from marsseg.losses import build_loss
from marsseg.models import MODELS, build_network, count_parameters, gflops_per_image
from marsseg.precision import autocast, cpu_has_native_bf16
from marsseg.training import build_ema, build_optimizer, configure_threads, training_step

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mars64.npz"
BATCH = 64
PRECISIONS = ("fp32", "bf16")


def timed(step, repeats: int, warmup: int = 2) -> float:
    """Seconds per call of `step`, after warm-up."""
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def measured_peak(precision: str) -> tuple[float, float]:
    """(matmul GFLOP/s, conv GFLOP/s) on this machine, under the autocast of `precision`."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    x = torch.randn(BATCH, 64, 64, 128).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    with torch.no_grad(), autocast("cpu", precision):
        matmul = 2 * 2048**3 / timed(lambda: a @ b, 5) / 1e9
        seconds = timed(lambda: conv(x), 5)
    return matmul, 2 * BATCH * 64 * 64 * 9 * 64 * 128 / seconds / 1e9


def time_model(cfg: Config, precision: str) -> tuple[float, float]:
    """(seconds per training step, seconds per inference batch) at batch 64, channels-last: the recipe's whole
    step (its loss, AdamW, EMA) as training runs it."""
    torch.manual_seed(0)
    model = build_network(cfg).to(memory_format=torch.channels_last)
    x = torch.randn(BATCH, 1, 64, 128).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 5, (BATCH, 64, 128))
    loss_fn = build_loss(cfg.loss, y.numpy())
    optimizer, ema = build_optimizer(cfg, model), build_ema(cfg, model)
    model.train()
    train_seconds = timed(
        lambda: training_step(model, x, y, loss_fn, optimizer, ema=ema, device="cpu", precision=precision), 4
    )
    model.eval()
    with torch.no_grad(), autocast("cpu", precision):
        infer_seconds = timed(lambda: model(x), 6)
    return train_seconds, infer_seconds


def model_rows(cfg: Config, peaks: dict[str, float]) -> list[str]:
    """One line per precision for the model of `cfg`, fp32 first."""
    model = build_network(cfg)
    gflop, params = gflops_per_image(model), count_parameters(model) / 1e6
    rows, fp32_rates = [], None
    for precision in PRECISIONS:
        train_seconds, infer_seconds = time_model(cfg, precision)
        rates = (BATCH / train_seconds, BATCH / infer_seconds)
        fp32_rates = fp32_rates or rates
        train_gflops = 3 * gflop * rates[0]  # backward costs about twice the forward
        infer_gflops = gflop * rates[1]
        rows.append(
            f"{cfg.model.name + ' w' + str(cfg.model.width):<16}{precision:<6}{params:>8.2f}{gflop:>8.3f}"
            f"{rates[0]:>10.0f}{rates[0] / fp32_rates[0]:>7.2f}x{100 * train_gflops / peaks[precision]:>7.0f}%"
            f"{rates[1]:>10.0f}{rates[1] / fp32_rates[1]:>7.2f}x{100 * infer_gflops / peaks[precision]:>7.0f}%"
        )
    return rows


def loss_rows(cfg: Config, names: list[str], rounds: int = 3) -> None:
    """The default model's training step (batch 64, the precision `auto` resolves to) with each loss of `names` and
    with the recipe's, timed in turn `rounds` times; prints each loss's median step time and its ratio."""
    base = load_config(None, overrides={"model.members": 1})
    precision = "bf16" if cpu_has_native_bf16() else "fp32"
    seconds: dict[str, list[float]] = {name: [] for name in [base.loss.name, *names]}
    for _ in range(rounds):
        for name in seconds:
            variant = load_config(None, overrides={"model.members": 1, "loss.name": name})
            variant.threads = cfg.threads
            seconds[name].append(time_model(variant, precision)[0])
    recipe = sorted(seconds[base.loss.name])[rounds // 2]
    print(f"training step of {base.model.name} w{base.model.width}, {precision}, batch {BATCH}, by loss:")
    for name, values in seconds.items():
        median = sorted(values)[rounds // 2]
        print(f"  {name:<16}{median:>8.3f} s/step {median / recipe:>6.2f}x the recipe's loss ({base.loss.name})")


def fit_one_epoch(data: str, precision: str) -> None:
    """Child process: one real epoch of the default recipe; prints data share, seconds and peak RSS."""
    import tempfile

    from marsseg.engine import fit

    cfg = load_config(
        None, overrides={"data.path": data, "optim.epochs": 1, "precision": precision, "model.members": 1}
    )
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
    parser.add_argument("--skip-fit", action="store_true", help="skip the one-epoch data-share and RSS runs")
    parser.add_argument(
        "--losses",
        default="",
        help="also time the default model's training step with these losses (e.g. lovasz_focal), in turn with the "
        "recipe's, and print each one's step time as a ratio to the recipe loss's",
    )
    parser.add_argument("--fit-child", choices=PRECISIONS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fit_child:
        fit_one_epoch(args.data, args.fit_child)
        return
    cfg = load_config(None, overrides={"model.members": 1})  # one network (an ensemble's members train one at a time)
    if args.width:
        cfg.model.width = args.width
    configure_threads(cfg.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; native bf16: {cpu_has_native_bf16()}")
    peaks = {}
    for precision in PRECISIONS:
        matmul, conv = measured_peak(precision)
        peaks[precision] = max(matmul, conv)
        print(f"peak {precision}: matmul {matmul:.0f} GFLOP/s, 3x3 conv {conv:.0f} GFLOP/s -> {peaks[precision]:.0f}")
    print(f"default model: {cfg.model.name} width {cfg.model.width} {cfg.model.options}; batch {BATCH}")
    print(
        f"{'model':<16}{'prec':<6}{'Mparams':>8}{'GFLOP':>8}{'train/s':>10}{'ratio':>8}{'%peak':>8}"
        f"{'infer/s':>10}{'ratio':>8}{'%peak':>8}"
    )
    for name in args.models.split(","):
        cfg.model.name = name
        for row in model_rows(cfg, peaks):
            print(row, flush=True)
    if args.losses:
        loss_rows(cfg, args.losses.split(","))
    if args.skip_fit:
        return
    source = args.data or "<synthetic>"
    for precision in PRECISIONS:
        output = subprocess.run(
            [sys.executable, __file__, "--fit-child", precision, "--data", args.data],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        share, seconds, rss = output[-3:]
        print(
            f"one epoch of the default recipe in {precision} on {source}: {float(seconds):.1f} s, data loading + "
            f"augmentation {100 * float(share):.1f}% of step time, peak RSS {float(rss):.0f} MiB",
            flush=True,
        )


if __name__ == "__main__":
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    main()
