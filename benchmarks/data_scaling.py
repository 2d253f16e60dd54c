"""What more labels buy: the default recipe trained on mars64 alone, on mars64 + about 700 frames of ai4mars_more and
on mars64 + all 1,437, scored on the same held-out mars64 crops and on ai4mars_sample at 256x256.

The held-out crops are 20 % of mars64's cleaned training crops, whole frame groups (halves of a frame, exact and
near-duplicates) dealt out as the split deals them (split.split_data, seed 0); no row trains on them. Every row trains
on the other 80 % plus its ai4mars_more frames (the first N of a fixed permutation of the frames, so the 700 are part
of the 1,437), with the run's own validation part for its keep rule and big-rock scale and no local test part
(data.test_fraction 0: the held-out crops are the test). All rows share one schedule (--epochs).

Each (row, seed) is written when it finishes, so a killed study goes on where it stopped:
- benchmarks/results/data_scaling.csv: one line per (row, seed) with both scores, per class, and its wall minutes
  (training and scoring, whatever else shared the machine);
- benchmarks/results/data_scaling/ROW_seedS.npz: the per-crop and per-frame confusion matrices, for the paired
  intervals of the report.
`--report` prints the table (seeds pooled: mIoU, 90 % bootstrap interval over frame groups, per class, the paired
difference from mars64 alone) to benchmarks/results/data_scaling.md and plots mIoU and big-rock IoU against labeled
frames (docs/data_scaling_cpu.png).

Run: .venv/bin/python benchmarks/data_scaling.py [--epochs 15] [--seeds 0 1] [--rows mars64 +700 +1437 ...]
     .venv/bin/python benchmarks/data_scaling.py --report
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from marsseg.api import load
from marsseg.config import inference_settings
from marsseg.data.ai4mars import import_ai4mars
from marsseg.data.clean import find_contaminated, remove_contaminated
from marsseg.data.io import MarsData, load_npz, save_npz, to_course_layout
from marsseg.data.merge import merge_data_files
from marsseg.data.split import group_ids, inferred_frame_ids, split_data
from marsseg.evaluation import CLASS_KEYS, evaluate_labeled_frames
from marsseg.metrics import (
    bootstrap_miou_difference,
    bootstrap_miou_interval,
    confusion_matrices_per_image,
    iou_per_class,
    mean_iou,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
TABLE = RESULTS / "data_scaling.csv"
MATRICES = RESULTS / "data_scaling"
PLOT = ROOT / "docs" / "data_scaling_cpu.png"
HELD_OUT = 0.2  # share of mars64's crops held out from every row
# row name -> (ai4mars_more frames added, config overrides)
ROWS = {
    "mars64": (0, {}),
    "+700": (700, {}),
    "+1437": (1437, {}),
    "+1437 width 48": (1437, {"model.width": 48}),
}
FIELDS = [
    "row",
    "seed",
    "epochs",
    "labeled_frames",
    "train_minutes",
    "heldout_miou",
    *(f"heldout_{c}" for c in CLASS_KEYS),
    "sample_miou",
    *(f"sample_{c}" for c in CLASS_KEYS),
]


def with_frames(data: MarsData) -> MarsData:
    frames = data.frame_ids if data.frame_ids is not None else inferred_frame_ids(data.images)
    return MarsData(data.images, data.masks, None, frames, data.path, data.frame_size)


def prepare(work: Path) -> dict[int, Path]:
    """The held-out crops and each row's training file under `work/data` (written once): {frames added: path}."""
    folder = work / "data"
    files = {extra: folder / f"train_plus_{extra}.npz" for extra in sorted({e for e, _ in ROWS.values()})}
    if all(path.exists() for path in files.values()) and (folder / "heldout.npz").exists():
        return files
    folder.mkdir(parents=True, exist_ok=True)
    raw = load_npz(SHARED / "mars64.npz")
    mars = with_frames(remove_contaminated(raw, find_contaminated(raw)))
    split = split_data(mars, val_fraction=0.0, test_fraction=HELD_OUT, seed=0)
    save_npz(folder / "heldout.npz", to_course_layout(mars.subset(split.test)))
    save_npz(folder / "train_plus_0.npz", to_course_layout(mars.subset(np.sort(split.train))))
    more = import_ai4mars(SHARED / "ai4mars_more", require_labels=True).arrays
    frames = np.random.default_rng(0).permutation(np.unique(more["frame_id"]))
    for extra, path in files.items():
        if extra == 0:
            continue
        chosen = np.isin(more["frame_id"], frames[:extra])
        part = folder / f"ai4mars_more_{extra}.npz"
        arrays = {"training_set": more["training_set"][chosen], "frame_id": more["frame_id"][chosen]}
        save_npz(part, {**arrays, "frame_size": more["frame_size"]})
        save_npz(path, merge_data_files([folder / "train_plus_0.npz", part], keep_test=False))
    return files


def labeled_frames(path: Path) -> int:
    """Frames as crops / 2: each frame gives a top and a bottom crop (mars64's unpaired halves counted as half)."""
    return len(load_npz(path)) // 2


def train(data: Path, run: Path, seed: int, epochs: int, overrides: dict) -> None:
    """`marsseg train` as a user runs it, resumed where a killed study left it."""
    command = [sys.executable, "-m", "marsseg", "train", "--data", str(data), "--out", str(run)]
    command += ["--epochs", str(epochs), "--seed", str(seed), "--set", "data.test_fraction=0"]
    command += [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
    if (run / "last.pt").exists():
        command.append("--resume")
    elif run.exists():
        command.append("--force")
    subprocess.run(command, check=True)


def score(run: Path, heldout: MarsData) -> tuple[np.ndarray, np.ndarray]:
    """(held-out crops' matrices (N, 5, 5), sample frames' matrices (F, 5, 5)), predicted as `marsseg predict` does."""
    model = load(run)
    labels = model.predict(heldout.images)
    crops = confusion_matrices_per_image(torch.from_numpy(heldout.masks), torch.from_numpy(labels)).numpy()
    cfg = model.config
    frames = evaluate_labeled_frames(
        model.model,
        SHARED / "ai4mars_sample",
        cfg.data.frame_size,
        settings=inference_settings(cfg),
        big_rock_scale=cfg.big_rock_scale or 1.0,
    )
    return crops, frames.evaluation.image_matrices


def done_rows() -> set[tuple[str, int, int]]:
    if not TABLE.exists():
        return set()
    with open(TABLE) as handle:
        return {(r["row"], int(r["seed"]), int(r["epochs"])) for r in csv.DictReader(handle)}


def append_row(record: dict) -> None:
    new = not TABLE.exists()
    with open(TABLE, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(record)


def matrices_path(row: str, seed: int, epochs: int) -> Path:
    return MATRICES / f"{row.replace(' ', '_').replace('+', 'plus')}_seed{seed}_epochs{epochs}.npz"


def run_study(work: Path, rows: list[str], seeds: list[int], epochs: int) -> None:
    files = prepare(work)
    heldout = load_npz(work / "data" / "heldout.npz")
    RESULTS.mkdir(exist_ok=True)
    MATRICES.mkdir(exist_ok=True)
    for seed in seeds:
        for row in rows:
            if (row, seed, epochs) in done_rows():
                continue
            extra, overrides = ROWS[row]
            run = work / matrices_path(row, seed, epochs).stem
            started = time.time()
            train(files[extra], run, seed, epochs, overrides)
            crops, frames = score(run, heldout)
            np.savez_compressed(matrices_path(row, seed, epochs), heldout=crops, sample=frames)
            record = {"row": row, "seed": seed, "epochs": epochs, "labeled_frames": labeled_frames(files[extra])}
            record["train_minutes"] = round((time.time() - started) / 60, 1)
            for name, matrices in (("heldout", crops), ("sample", frames)):
                matrix = matrices.sum(axis=0)
                record[f"{name}_miou"] = round(mean_iou(matrix), 4)
                ious = iou_per_class(matrix).tolist()
                record.update({f"{name}_{c}": round(v, 4) for c, v in zip(CLASS_KEYS, ious, strict=True)})
            append_row(record)
            print(f"{row} seed {seed}: held-out {record['heldout_miou']}, sample {record['sample_miou']}", flush=True)


def report(work: Path, epochs: int) -> None:
    heldout_groups = group_ids(load_npz(work / "data" / "heldout.npz"))
    with open(TABLE) as handle:
        records = [r for r in csv.DictReader(handle) if int(r["epochs"]) == epochs]
    rows = [row for row in ROWS if any(r["row"] == row for r in records)]
    seeds = {row: sorted(int(r["seed"]) for r in records if r["row"] == row) for row in rows}
    frames = {row: next(int(r["labeled_frames"]) for r in records if r["row"] == row) for row in rows}
    lines = [
        f"Default recipe, {epochs} epochs, seeds pooled (confusion matrices summed); 90 % bootstrap intervals over "
        "frame groups; difference: paired, against mars64 alone on the seeds both rows have.",
        "",
        "| row | labeled frames | seeds | scored on | mIoU | 90 % | soil | bedrock | sand | big rock "
        "| vs mars64 (90 %) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    plotted = {}
    for row in rows:
        for part, groups in (("heldout", heldout_groups), ("sample", None)):
            loaded = {s: np.load(matrices_path(row, s, epochs))[part] for s in seeds[row]}
            summed = sum(loaded.values())
            groups = np.arange(len(summed)) if groups is None else groups
            low, high = bootstrap_miou_interval(summed, groups)
            ious = iou_per_class(summed.sum(axis=0))
            miou = mean_iou(summed.sum(axis=0))
            plotted[(row, part)] = (miou, low, high, ious[-1])
            versus = ""
            shared = sorted(set(seeds[row]) & set(seeds.get("mars64", [])))
            if row != "mars64" and shared:
                ours = sum(loaded[s] for s in shared)
                theirs = sum(np.load(matrices_path("mars64", s, epochs))[part] for s in shared)
                difference, d_low, d_high = bootstrap_miou_difference(ours, theirs, groups)
                versus = f"{difference:+.3f} ({d_low:+.3f} to {d_high:+.3f})"
            where = "held-out mars64 crops" if part == "heldout" else "ai4mars_sample at 256"
            lines.append(
                f"| {row} | {frames[row]} | {len(seeds[row])} | {where} | {miou:.3f} | {low:.3f}-{high:.3f} | "
                + " | ".join(f"{v:.3f}" for v in ious)
                + f" | {versus} |"
            )
    text = "\n".join(lines) + "\n"
    (RESULTS / "data_scaling.md").write_text(text)
    print(text)
    plot(plotted, rows, frames, epochs)


def plot(plotted: dict, rows: list[str], frames: dict, epochs: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plain = [row for row in rows if not ROWS[row][1]]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, part, title in ((axes[0], "heldout", "held-out mars64 crops"), (axes[1], "sample", "ai4mars_sample")):
        x = [frames[row] for row in plain]
        miou = np.array([plotted[(row, part)][:3] for row in plain])
        axis.errorbar(x, miou[:, 0], yerr=[miou[:, 0] - miou[:, 1], miou[:, 2] - miou[:, 0]], marker="o", label="mIoU")
        axis.plot(x, [plotted[(row, part)][3] for row in plain], marker="s", label="big-rock IoU")
        for row in rows:
            if ROWS[row][1]:
                axis.plot(frames[row], plotted[(row, part)][0], marker="^", linestyle="", label=f"{row} mIoU")
        axis.set(title=title, xlabel="labeled frames in training", ylabel="IoU", ylim=(0, 1))
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(f"What more labels buy: the default recipe at {epochs} epochs (90 % intervals)")
    figure.tight_layout()
    figure.savefig(PLOT, dpi=100)
    print(f"plot: {PLOT}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "data_scaling", help="runs and data files")
    parser.add_argument("--epochs", type=int, default=15, help="every row's schedule (default: %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="(default: %(default)s)")
    parser.add_argument("--rows", nargs="+", default=["mars64", "+1437", "+700"], choices=list(ROWS))
    parser.add_argument("--report", action="store_true", help="print the table and draw the plot of what is done")
    args = parser.parse_args()
    if not (SHARED / "mars64.npz").exists():
        sys.exit(f"{SHARED}: not found; this study needs ../shared/data")
    if args.report:
        report(args.work, args.epochs)
    else:
        run_study(args.work, args.rows, args.seeds, args.epochs)


if __name__ == "__main__":
    main()
