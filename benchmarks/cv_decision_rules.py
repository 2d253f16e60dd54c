"""How the default's vote becomes labels, cross-validated: rules fitted on each fold's validation part, scored on its
held-out part, pooled out of fold over the folds of a finished variant (`benchmarks/recipes.py --folds K`).

Every fold's vote of its best epoch on validation and its last (today's default, optim.keep best_and_last) predicts
the fold's validation and held-out crops once (flip TTA, halves of a frame together, scales 1 and 0.875; the folds
keep their best epoch alone in best.pt, optim.keep "best"); each rule is then fitted on validation alone. Per-class
IoU is the mean over seeds. Rules:

- big-rock scale: the big-rock probability multiplied by the scale of evaluation.BIG_ROCK_SCALES with the best
  validation mIoU (what `marsseg train` does; every other rule is compared with it, paired on the same crops);
- the last epoch alone, with its own big-rock scale (the default of before best_and_last);
- finer scales: the same choice from 25 scales between 0.5 and 8;
- a factor for every class: bedrock and sand (0.5-2, relative to soil) and big rock, by coordinate ascent, twice;
- a weighted vote: the best epoch's weight 0.3, 0.5 or 0.7, with its big-rock scale;
- a geometric vote: the softmax of the two networks' mean log-probabilities;
- smoothed: the probabilities averaged over a 3x3 or 5x5 window before the argmax.

Run: .venv/bin/python benchmarks/cv_decision_rules.py --data ../shared/data/mars64.npz --out runs/cv2
    [--variant cutmix_80_epochs_no_early_stop] [--seeds 4] [--folds 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from cross_validation import difference_text, fold_dir

from marsseg.checkpoints import check_same_split, load_model
from marsseg.config import InferenceSettings, load_config
from marsseg.data.prepare import prepare_data
from marsseg.data.split import group_ids, kfold_splits
from marsseg.evaluation import BIG_ROCK_SCALES
from marsseg.metrics import (
    bootstrap_miou_difference,
    confusion_matrices_per_image,
    confusion_matrix,
    iou_per_class,
    mean_iou,
)
from marsseg.predict import predict_probabilities

FINE_SCALES = tuple(float(s) for s in np.round(np.geomspace(0.5, 8.0, 25), 3))
CLASS_FACTORS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 1.75, 2.0)
BASELINE = "vote, big-rock scale (the default)"


def labels(probabilities: torch.Tensor, factors: tuple[float, ...]) -> torch.Tensor:
    """Labels 1..4 from (N, 5, H, W) probabilities with classes 1..4 multiplied by `factors`."""
    weighted = probabilities[:, 1:] * torch.tensor(factors, dtype=probabilities.dtype).view(1, 4, 1, 1)
    return weighted.argmax(dim=1) + 1


def val_miou(probabilities: torch.Tensor, masks: torch.Tensor, factors: tuple[float, ...]) -> float:
    return mean_iou(confusion_matrix(masks, labels(probabilities, factors)))


def best_big_rock(probabilities, masks, scales=BIG_ROCK_SCALES, others=(1.0, 1.0, 1.0)) -> tuple[float, ...]:
    return max(((*others, s) for s in scales), key=lambda f: val_miou(probabilities, masks, f))


def every_class_factors(probabilities, masks) -> tuple[float, ...]:
    factors = list(best_big_rock(probabilities, masks))
    for _ in range(2):
        for c in (1, 2):  # bedrock, sand; soil stays 1
            candidates = [(*factors[:c], g, *factors[c + 1 :]) for g in CLASS_FACTORS]
            factors = list(max(candidates, key=lambda f: val_miou(probabilities, masks, f)))
        factors = list(best_big_rock(probabilities, masks, others=tuple(factors[:3])))
    return tuple(factors)


def smoothed(probabilities: torch.Tensor, size: int) -> torch.Tensor:
    return F.avg_pool2d(probabilities, size, stride=1, padding=size // 2, count_include_pad=False)


def geometric(best: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    return torch.softmax((best.clamp_min(1e-6).log() + last.clamp_min(1e-6).log()) / 2, dim=1)


def fold_probabilities(run_dir: Path, images: dict[str, np.ndarray]) -> dict[str, dict[str, torch.Tensor]]:
    """{"best" | "last": {part: (N, 5, H, W) probabilities}} as the default predicts them."""
    result = {}
    for which in ("best", "last"):
        model, cfg = load_model(run_dir, which=which)
        if cfg.optim.keep != "best":  # best.pt must be the best epoch alone, not already a vote
            raise SystemExit(f"{run_dir}: kept optim.keep {cfg.optim.keep!r}; the folds of recipes.py keep 'best'")
        result[which] = {
            part: torch.cat(
                list(
                    predict_probabilities(
                        model,
                        part_images,
                        settings=InferenceSettings(
                            in_channels=cfg.data.in_channels,
                            tta=True,
                            scales=(1.0, 0.875),
                            precision=cfg.precision,
                            whole_frames=True,
                        ),
                    )
                )
            ).float()
            for part, part_images in images.items()
        }
    return result


def rule_predictions(p: dict, val_masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every rule's held-out labels, each fitted on the validation part."""
    vote = {part: (p["best"][part] + p["last"][part]) / 2 for part in ("val", "test")}
    rules = {
        BASELINE: labels(vote["test"], best_big_rock(vote["val"], val_masks)),
        "last epoch alone, big-rock scale": labels(p["last"]["test"], best_big_rock(p["last"]["val"], val_masks)),
        "vote, finer big-rock scales": labels(vote["test"], best_big_rock(vote["val"], val_masks, FINE_SCALES)),
        "vote, a factor for every class": labels(vote["test"], every_class_factors(vote["val"], val_masks)),
    }
    weighted = {}
    for w in (0.3, 0.5, 0.7):
        mixed = {part: w * p["best"][part] + (1 - w) * p["last"][part] for part in ("val", "test")}
        factors = best_big_rock(mixed["val"], val_masks)
        weighted[w] = (val_miou(mixed["val"], val_masks, factors), labels(mixed["test"], factors))
    rules["weighted vote, weight on validation"] = max(weighted.values(), key=lambda v: v[0])[1]
    geo = {part: geometric(p["best"][part], p["last"][part]) for part in ("val", "test")}
    rules["geometric vote, big-rock scale"] = labels(geo["test"], best_big_rock(geo["val"], val_masks))
    for size in (3, 5):
        smooth = {part: smoothed(vote[part], size) for part in ("val", "test")}
        rules[f"vote smoothed {size}x{size}, big-rock scale"] = labels(
            smooth["test"], best_big_rock(smooth["val"], val_masks)
        )
    return rules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True, help="the --out of benchmarks/recipes.py --folds")
    parser.add_argument("--variant", default="cutmix_80_epochs_no_early_stop")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = load_config(None, overrides={"data.path": args.data})
    prepared = prepare_data(base.data)
    data = prepared.data
    splits = kfold_splits(data, args.folds, val_fraction=base.data.val_fraction, seed=base.data.split_seed)
    groups = group_ids(data)
    # rule -> seed -> (N, C, C) every crop's held-out confusion matrix, in sample order
    matrices: dict[str, dict[int, np.ndarray]] = {}
    for seed in range(args.seeds):
        for fold, split in enumerate(splits):
            run_dir = fold_dir(Path(args.out), args.variant, seed, fold)
            check_same_split(run_dir, split)  # held-out crops the network trained on would flatter every rule
            images = {part: data.images[getattr(split, part)] for part in ("val", "test")}
            probabilities = fold_probabilities(run_dir, images)
            val_masks = torch.from_numpy(data.masks[split.val])
            test_masks = torch.from_numpy(data.masks[split.test])
            for rule, predicted in rule_predictions(probabilities, val_masks).items():
                per_seed = matrices.setdefault(rule, {}).setdefault(seed, np.zeros((len(data.masks), 5, 5), np.int64))
                per_seed[split.test] = confusion_matrices_per_image(test_masks, predicted).numpy()
            print(f"seed {seed} fold {fold}: scored", flush=True)
    print(f"\n{args.variant}, {args.seeds} seeds x {args.folds} folds, pooled out of fold, paired with the default")
    print("| rule | CV mIoU | soil | bedrock | sand | big rock | vs the default rule (90 %) | per seed |")
    print("|---|---|---|---|---|---|---|---|")
    for rule, per_seed in matrices.items():
        mious = [mean_iou(m.sum(axis=0)) for m in per_seed.values()]
        ious = np.mean([iou_per_class(m.sum(axis=0)) for m in per_seed.values()], axis=0)
        summed, baseline = sum(per_seed.values()), sum(matrices[BASELINE].values())
        comparison = "" if rule == BASELINE else difference_text(*bootstrap_miou_difference(summed, baseline, groups))
        print(
            f"| {rule} | {np.mean(mious):.3f} | "
            + " | ".join(f"{v:.3f}" for v in ious)
            + f" | {comparison} | {' / '.join(f'{m:.3f}' for m in mious)} |"
        )


if __name__ == "__main__":
    main()
