"""One row cross-validated with different fold counts: how much a larger training share is worth.

With K folds a fold trains on 1 - 1/K - val_fraction of the labeled crops (3 folds: 57 %; 5 folds: 70 %), where
`marsseg train` trains on 80 % (its validation and local test parts take 10 % each), so a K-fold figure reads what
a network trained on less data than a user's scores. Every crop is scored exactly once in each run, so two fold
counts are compared image by image (a paired bootstrap over frame groups), as `recipes.py --against` compares levers.

Run (each `OUT:K` a finished `benchmarks/recipes.py --folds K --out OUT` of the row; the first is the reference):
    .venv/bin/python benchmarks/fold_counts.py --data ../shared/data/mars64.npz \\
        --row cutmix_80_epochs_best_and_last_scales_1_0875 --seeds 1 runs/cv2:3 runs/cv5:5
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from cross_validation import CLASS_KEYS, difference_text, fold_plan, pooled_matrices

from marsseg.config import load_config
from marsseg.data.prepare import prepare_data
from marsseg.data.split import group_ids, kfold_splits
from marsseg.metrics import bootstrap_miou_difference, bootstrap_miou_interval, iou_per_class, mean_iou


def fold_count_table(data: str, row: str, seeds: list[int], runs: list[tuple[Path, int]]) -> str:
    """A markdown table: for each (out, folds) of `runs`, the row's training share, its out-of-fold mIoU of every
    seed's crops pooled into one matrix (cv.md gives the mean over seeds instead), interval, per-class IoU and its
    paired difference from the first run's."""
    base = load_config(None, {"data.path": data})
    prepared = prepare_data(base.data)
    groups, samples = group_ids(prepared.data), len(prepared.data)
    header = [
        "folds",
        "training share",
        "CV mIoU, seeds pooled",
        "90 % interval",
        *CLASS_KEYS,
        f"vs {runs[0][1]} folds (90 %)",
    ]
    lines = [
        f"{row}, seeds {', '.join(map(str, seeds))}; interval: 90 % bootstrap over {len(np.unique(groups))} groups",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    reference = None
    for out, folds in runs:
        plan = fold_plan(folds, base.data, prepared)
        per_seed = [pooled_matrices(Path(out), row, seed, folds, samples, plan) for seed in seeds]
        if any(pooled is None for pooled in per_seed):
            raise SystemExit(f"{out}: {row} has not finished all {folds} folds of seeds {seeds}")
        matrices = sum(m for m, _ in per_seed)
        splits = kfold_splits(prepared.data, folds, base.data.val_fraction, base.data.split_seed)
        share = np.mean([len(split.train) for split in splits]) / samples
        low, high = bootstrap_miou_interval(matrices, groups)
        comparison = ""
        if reference is None:
            reference = matrices
        else:
            comparison = difference_text(*bootstrap_miou_difference(matrices, reference, groups))
        ious = " | ".join(f"{v:.3f}" for v in iou_per_class(matrices.sum(axis=0)))
        lines.append(
            f"| {folds} | {share:.0%} | {mean_iou(matrices.sum(axis=0)):.3f} | {low:.3f}-{high:.3f} | {ious} | "
            f"{comparison} |"
        )
    return "\n".join(lines)


def parse_run(text: str) -> tuple[Path, int]:
    out, _, folds = text.rpartition(":")
    if not out or not folds.isdigit() or int(folds) < 2:
        raise argparse.ArgumentTypeError(
            f"{text}: expected OUT:K, a cross-validation folder and its fold count, 2 or more"
        )
    return Path(out), int(folds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the .npz the runs were cross-validated on")
    parser.add_argument("--row", required=True, help="a row of benchmarks/recipes.py finished in every run")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds, pooled")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("runs", nargs="+", type=parse_run, help="OUT:K, the first the reference")
    args = parser.parse_args()
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    print(fold_count_table(args.data, args.row, seeds, args.runs))


if __name__ == "__main__":
    main()
