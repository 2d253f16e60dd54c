"""Ablation of the default recipe: each lever as one row, trained on one split, scored on validation.

Every variant is a file recipes/NAME.yaml (`--variants NAME,...`), trained on ROW_RECIPE (recipe A; B with --folds) with
the file's fields on top. Rows report validation figures only (flip TTA, argmax, at the best epoch; and mIoU with the
big-rock scale chosen on validation): every choice is made on validation, and the local test part is kept for the final
figure of the chosen recipe (`marsseg train` prints it). Finished runs are skipped on a re-run. Writes ablation.md (mean
± std where a row has several seeds) and ablation.png in --out, from every finished row there.
Run: .venv/bin/python benchmarks/recipes.py --data ../shared/data/mars64.npz --out runs/ablation \\
         [--variants default,cross_entropy,...] [--epochs N] [--seeds K]

With --folds K, each row is cross-validated instead (cross_validation.py): K group-aware folds, every labeled crop
held out once, scored out of fold and pooled into one confusion matrix, with paired comparisons against "default"
on the same folds and seeds. Writes cv.md and cv.png (the paired differences) in --out.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import yaml

from marsseg import report
from marsseg.checkpoints import check_same_split, saved_config
from marsseg.config import Config, dotted_names, get_field, load_config
from marsseg.data.prepare import prepare_data
from marsseg.engine import fit

CLASSES = ("soil", "bedrock", "sand", "big_rock")
REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mars64.npz"

RECIPES = Path(__file__).resolve().parents[1] / "recipes"

# What every row trains unless its recipe file says otherwise: recipe A on one split, B with --folds (docs/results.md's
# letters), the baseline every variant was measured against until CutMix. A file's fields come after these, so a file
# that sets one of them to today's default (cutmix.yaml) undoes it.
ROW_RECIPE: dict = {
    "model.members": 1,
    "optim.epochs": 40,  # every row's until the default's 80
    "augment.cutmix": 0.0,
    "augment.frame_shift": 0.0,  # every row's until cutmix_80_epochs_frame_shift
    # the best epoch on validation, early stopping after 15 epochs without one: every row until optim.keep
    "optim.keep": "best",
    "optim.early_stopping_patience": 15,
    "whole_frames": False,  # every crop predicted alone, as the rows were measured before whole_frames existed
    "tta_scales": [1.0],  # at the data's own scale only, as every row was measured (scales: ROW_INFERENCE)
}


def recipe_names() -> list[str]:
    """The variants: the stem of every recipes/*.yaml, "default" first, then in alphabetical order."""
    return sorted((path.stem for path in RECIPES.glob("*.yaml")), key=lambda name: (name != "default", name))


def recipe_fields(name: str) -> dict:
    """The dotted fields recipes/NAME.yaml sets, e.g. {"optim.lr": 0.0003}, as load_config reads them (the file is
    checked alone first, so a bad field names the file)."""
    path = RECIPES / f"{name}.yaml"
    config = load_config(str(path))
    values = yaml.safe_load(path.read_text()) or {}
    return {dotted: get_field(config, dotted) for dotted in dotted_names(values)}


VARIANTS: list[str] = recipe_names()

# Variants that differ from a finished one only in early-stopping patience (cross-validation only): a fold is that
# variant's fold of the same seed, carried on from the epoch where early stopping ended it
# (cross_validation.continued_fold); one it did not stop is already the new variant's run.
# A fold whose source has not finished is trained from scratch: the same run.
CONTINUES: dict[str, str] = {"cutmix_no_early_stop": "cutmix"}

# Soft-voting ensembles of finished variants (cross-validation only: --folds); a row trains nothing, it costs what
# its members cost. The ceiling of distilling them into one model (variant distill_ensemble). A member "variant@k"
# is that variant trained with the row's seed + k; "variant:last" its last epoch's model, not its best.
ENSEMBLES: dict[str, list[str]] = {
    "ensemble_of_2": ["default", "cutmix"],
    "two_seeds_of_default": ["default", "default@1"],
    "three_seeds_of_default": ["default", "default@1", "default@2"],
    "two_seeds_of_cutmix": ["cutmix", "cutmix@1"],  # the default of before whole_frames and optim.keep
    "three_seeds_of_cutmix": ["cutmix", "cutmix@1", "cutmix@2"],
    "default_last_epoch": ["default:last"],  # one member: the default's last epoch instead of its best on validation
    "ensemble_of_4": ["default", "copy_paste", "cutmix", "semi"],
    # The same finished networks, predicting the two halves of a frame together (config whole_frames): rows below.
    "cutmix_whole_frames": ["cutmix"],
    "two_seeds_of_cutmix_whole_frames": ["cutmix", "cutmix@1"],
    "three_seeds_of_cutmix_whole_frames": ["cutmix", "cutmix@1", "cutmix@2"],
    "two_seeds_of_cutmix_lovasz_whole_frames": ["cutmix_lovasz", "cutmix_lovasz@1"],
    # The same training time as today's default (3 x 27 epochs against 2 x 40), spent on three members
    "cutmix_27_epochs_whole_frames": ["cutmix_27_epochs"],
    "three_seeds_of_cutmix_27_epochs_whole_frames": ["cutmix_27_epochs", "cutmix_27_epochs@1", "cutmix_27_epochs@2"],
    # Today's default's networks, predicting at 0.875 of the size too (config tta_scales [1.0, 0.875])
    "cutmix_scales_1_0875": ["cutmix"],
    "two_seeds_of_cutmix_scales_1_0875": ["cutmix", "cutmix@1"],
    # The default's networks trained all 40 epochs: the best epoch on validation, or the last
    "cutmix_no_early_stop_whole_frames": ["cutmix_no_early_stop"],
    "cutmix_no_early_stop_last_whole_frames": ["cutmix_no_early_stop:last"],
    "two_seeds_of_cutmix_no_early_stop_whole_frames": ["cutmix_no_early_stop", "cutmix_no_early_stop@1"],
    "two_seeds_of_cutmix_no_early_stop_last_whole_frames": ["cutmix_no_early_stop:last", "cutmix_no_early_stop@1:last"],
    # Today's default's networks (last epochs), predicting at 0.875 of the size too
    "two_seeds_of_cutmix_no_early_stop_last_scales_1_0875": [
        "cutmix_no_early_stop:last",
        "cutmix_no_early_stop@1:last",
    ],
    # One network of 80 epochs, its last epoch: against two_seeds_of_cutmix_no_early_stop_last_whole_frames
    "cutmix_80_epochs_last_whole_frames": ["cutmix_80_epochs_no_early_stop:last"],
    # ... predicting at 0.875 of the size too (the default until best_and_last); and the copy-paste variant's last epoch
    "cutmix_80_epochs_last_scales_1_0875": ["cutmix_80_epochs_no_early_stop:last"],
    "cutmix_80_epochs_copy_paste_last_whole_frames": ["cutmix_80_epochs_copy_paste:last"],
    "cutmix_80_epochs_copy_paste_last_scales_1_0875": ["cutmix_80_epochs_copy_paste:last"],
    # The 80-epoch network voting with its own best epoch on validation (optim.keep best_and_last, today's default)
    "cutmix_80_epochs_best_and_last_scales_1_0875": [
        "cutmix_80_epochs_no_early_stop",
        "cutmix_80_epochs_no_early_stop:last",
    ],
    # ... and the copy-paste variant's networks voting the same way: against the row above
    "cutmix_80_epochs_copy_paste_best_and_last_scales_1_0875": [
        "cutmix_80_epochs_copy_paste",
        "cutmix_80_epochs_copy_paste:last",
    ],
    "cutmix_80_epochs_zoom_best_and_last_scales_1_0875": ["cutmix_80_epochs_zoom", "cutmix_80_epochs_zoom:last"],
    "cutmix_80_epochs_full_res_8_best_and_last_scales_1_0875": [
        "cutmix_80_epochs_full_res_8",
        "cutmix_80_epochs_full_res_8:last",
    ],
    "cutmix_80_epochs_levels_5_best_and_last_scales_1_0875": [
        "cutmix_80_epochs_levels_5",
        "cutmix_80_epochs_levels_5:last",
    ],
    "cutmix_80_epochs_weight_decay_0_1_best_and_last_scales_1_0875": [
        "cutmix_80_epochs_weight_decay_0_1",
        "cutmix_80_epochs_weight_decay_0_1:last",
    ],
    "cutmix_80_epochs_frame_shift_best_and_last_scales_1_0875": [
        "cutmix_80_epochs_frame_shift",
        "cutmix_80_epochs_frame_shift:last",
    ],
    # ... and each of its two networks alone, as the default's: which of them a fifth level changes
    "cutmix_80_epochs_best_scales_1_0875": ["cutmix_80_epochs_no_early_stop"],
    "cutmix_80_epochs_levels_5_best_scales_1_0875": ["cutmix_80_epochs_levels_5"],
    "cutmix_80_epochs_levels_5_last_scales_1_0875": ["cutmix_80_epochs_levels_5:last"],
    # ... or with snapshots of fixed epochs (folds trained with --snapshot-every 10)
    "cutmix_80_epochs_40_and_last_scales_1_0875": [
        "cutmix_80_epochs_no_early_stop:epoch_40",
        "cutmix_80_epochs_no_early_stop:last",
    ],
    "cutmix_80_epochs_60_and_last_scales_1_0875": [
        "cutmix_80_epochs_no_early_stop:epoch_60",
        "cutmix_80_epochs_no_early_stop:last",
    ],
    "cutmix_80_epochs_best_60_and_last_scales_1_0875": [
        "cutmix_80_epochs_no_early_stop",
        "cutmix_80_epochs_no_early_stop:epoch_60",
        "cutmix_80_epochs_no_early_stop:last",
    ],
    "cutmix_80_epochs_20_40_60_and_last_scales_1_0875": [
        "cutmix_80_epochs_no_early_stop:epoch_20",
        "cutmix_80_epochs_no_early_stop:epoch_40",
        "cutmix_80_epochs_no_early_stop:epoch_60",
        "cutmix_80_epochs_no_early_stop:last",
    ],
}
# How an ensemble row predicts (predict.predict_probabilities' whole_frames and scales); a row not named here predicts
# each crop alone at its own scale, as it was measured before whole_frames existed.
WHOLE_FRAMES = {"whole_frames": True}
SCALES_1_0875 = {"whole_frames": True, "scales": (1.0, 0.875)}  # also at 0.875 of the size (config tta_scales)
ROW_INFERENCE: dict[str, dict] = {
    "cutmix_whole_frames": WHOLE_FRAMES,
    "two_seeds_of_cutmix_whole_frames": WHOLE_FRAMES,
    "three_seeds_of_cutmix_whole_frames": WHOLE_FRAMES,
    "two_seeds_of_cutmix_lovasz_whole_frames": WHOLE_FRAMES,
    "cutmix_27_epochs_whole_frames": WHOLE_FRAMES,
    "three_seeds_of_cutmix_27_epochs_whole_frames": WHOLE_FRAMES,
    "cutmix_scales_1_0875": SCALES_1_0875,
    "two_seeds_of_cutmix_scales_1_0875": SCALES_1_0875,
    "cutmix_no_early_stop_whole_frames": WHOLE_FRAMES,
    "cutmix_no_early_stop_last_whole_frames": WHOLE_FRAMES,
    "two_seeds_of_cutmix_no_early_stop_whole_frames": WHOLE_FRAMES,
    "two_seeds_of_cutmix_no_early_stop_last_whole_frames": WHOLE_FRAMES,
    "two_seeds_of_cutmix_no_early_stop_last_scales_1_0875": SCALES_1_0875,
    "cutmix_80_epochs_last_whole_frames": WHOLE_FRAMES,
    "cutmix_80_epochs_last_scales_1_0875": SCALES_1_0875,
    "cutmix_80_epochs_copy_paste_last_whole_frames": WHOLE_FRAMES,
    "cutmix_80_epochs_copy_paste_last_scales_1_0875": SCALES_1_0875,
    "cutmix_80_epochs_best_and_last_scales_1_0875": SCALES_1_0875,
    "cutmix_80_epochs_copy_paste_best_and_last_scales_1_0875": SCALES_1_0875,
    "cutmix_80_epochs_zoom_best_and_last_scales_1_0875": SCALES_1_0875,
    "cutmix_80_epochs_full_res_8_best_and_last_scales_1_0875": SCALES_1_0875,
    "cutmix_80_epochs_levels_5_best_and_last_scales_1_0875": SCALES_1_0875,
    "cutmix_80_epochs_weight_decay_0_1_best_and_last_scales_1_0875": SCALES_1_0875,
    "cutmix_80_epochs_frame_shift_best_and_last_scales_1_0875": SCALES_1_0875,
    "cutmix_80_epochs_best_scales_1_0875": SCALES_1_0875,
    "cutmix_80_epochs_levels_5_best_scales_1_0875": SCALES_1_0875,
    "cutmix_80_epochs_levels_5_last_scales_1_0875": SCALES_1_0875,
    "cutmix_80_epochs_40_and_last_scales_1_0875": SCALES_1_0875,
    "cutmix_80_epochs_60_and_last_scales_1_0875": SCALES_1_0875,
    "cutmix_80_epochs_best_60_and_last_scales_1_0875": SCALES_1_0875,
    "cutmix_80_epochs_20_40_60_and_last_scales_1_0875": SCALES_1_0875,
}


def run_summary(run_dir: Path) -> dict:
    """One finished row: validation figures at the best epoch (flip TTA, plain argmax) and with the scale."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    with open(run_dir / "metrics.csv") as handle:
        best = list(csv.DictReader(handle))[metrics["best_epoch"] - 1]
    return {
        "val_miou": float(best["val_miou"]),
        **{name: float(best[f"iou_{name}"]) for name in CLASSES},
        "val_miou_scaled": metrics["val_miou"],
        "best_epoch": metrics["best_epoch"],
        "planned_epochs": saved_config(run_dir).optim.epochs,
        "minutes": metrics["train_seconds"] / 60,
    }


def write_table_and_plot(out: Path) -> None:
    """ablation.md and ablation.png from every finished row in `out` (mean ± std where a row has several seeds).

    Runs of one variant with different planned epochs (`--epochs`) become separate rows, never one average.
    """
    groups: dict[str, list[dict]] = {}
    for name in VARIANTS:
        runs = sorted(out.glob(f"{name}_seed*/metrics.json"))
        summaries = [run_summary(r.parent) for r in runs if r.parent.name.removeprefix(f"{name}_seed").isdigit()]
        plans = sorted({row["planned_epochs"] for row in summaries})
        for plan in plans:
            label = name if len(plans) == 1 else f"{name} ({plan} epochs)"
            groups[label] = [row for row in summaries if row["planned_epochs"] == plan]
    if not groups:
        return
    keys = ["val_miou", *CLASSES, "val_miou_scaled", "best_epoch", "planned_epochs", "minutes"]
    lines = [
        "| variant | seeds | val mIoU | soil | bedrock | sand | big rock | with big-rock scale | best epoch | epochs "
        "| minutes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in groups.items():
        cells = []
        for key in keys:
            values = np.array([row[key] for row in rows], dtype=float)
            digits = 0 if key in ("best_epoch", "planned_epochs") else 1 if key == "minutes" else 3
            varies = len(values) > 1 and key != "planned_epochs"  # one plan per row
            spread = f" ± {values.std(ddof=1):.{digits}f}" if varies else ""
            cells.append(f"{values.mean():.{digits}f}{spread}")
        lines.append(f"| {name} | {len(rows)} | " + " | ".join(cells) + " |")
    (out / "ablation.md").write_text("\n".join(lines) + "\n")

    plt = report.plt
    names = list(groups)
    figure, axes = plt.subplots(1, 2, figsize=(11, 0.35 * len(names) + 1.5), sharey=True)
    for axis, key, title in (
        (axes[0], "val_miou", "validation mIoU"),
        (axes[1], "big_rock", "validation big-rock IoU"),
    ):
        values = [np.array([row[key] for row in groups[name]]) for name in names]
        means = [v.mean() for v in values]
        errors = [v.std(ddof=1) if len(v) > 1 else 0.0 for v in values]
        axis.barh(names, means, xerr=errors, color="#6a7fa8", capsize=3, zorder=2)
        if "default" in groups and len(groups["default"]) > 1:  # the seed spread of the default: the noise band
            mean, std = means[names.index("default")], errors[names.index("default")]
            axis.axvspan(
                mean - std, mean + std, color="orange", alpha=0.3, zorder=1, label="default, mean ± std over seeds"
            )
            axis.legend(fontsize=8, loc="lower right")
        low = min(m - e for m, e in zip(means, errors, strict=True))
        high = max(m + e for m, e in zip(means, errors, strict=True))
        axis.set(title=title + " (flip TTA, argmax)", xlim=(max(0.0, low - 0.03), min(1.0, high + 0.03)))
    axes[0].invert_yaxis()
    report.save_figure(figure, out / "ablation.png")


def variant_config(args: argparse.Namespace, name: str, seed: int) -> Config:
    """Today's default config, then ROW_RECIPE with the command line's data, seed and threads, then the fields of
    recipes/NAME.yaml, then --epochs. A row trains one network unless its file sets model.members, and without CutMix
    unless it sets augment.cutmix: "default" is the recipe every row was measured against, the default until CutMix's
    three seeds. Variant "cutmix" is one network of the default of before optim.keep; the default of before 80 epochs,
    two such networks trained through the whole schedule and kept at their last epoch, is the row
    two_seeds_of_cutmix_no_early_stop_last_whole_frames; one network of 80 epochs is the row
    cutmix_80_epochs_last_whole_frames, that network predicting at scales 1 and 0.875 too the row
    cutmix_80_epochs_last_scales_1_0875, and the vote of its best epoch on validation and its last (optim.keep
    best_and_last) the row cutmix_80_epochs_best_and_last_scales_1_0875; with frame shift, today's default, the row
    cutmix_80_epochs_frame_shift_best_and_last_scales_1_0875. Rows train 40 epochs unless their file or --epochs says
    otherwise."""
    overrides = {
        **ROW_RECIPE,
        "data.path": args.data,
        "seed": seed,
        "threads": args.threads,
        "data.num_workers": args.workers,
        **recipe_fields(name),
    }
    if args.epochs:
        overrides["optim.epochs"] = args.epochs
    return load_config(None, overrides=overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REAL_DATA) if REAL_DATA.is_file() else "")
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated recipe names, each recipes/NAME.yaml (with --folds, also the rows of ENSEMBLES)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="override the recipe's epochs for every row (not with a variant that sets its own)",
    )
    parser.add_argument("--seeds", type=int, default=1, help="training seeds per row")
    parser.add_argument("--first-seed", type=int, default=0, help="rows use seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run; 0 = physical cores")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes per run")
    parser.add_argument("--folds", type=int, default=0, help="cross-validate each row over this many folds (>= 2)")
    parser.add_argument(
        "--only-folds", default="", help="with --folds, train only these folds (e.g. 0,1), to share them out"
    )
    parser.add_argument(
        "--seams-only",
        action="store_true",
        help="with --folds, group frames by seam_pairs alone: the folds of the tables measured before 2026-11-29",
    )
    parser.add_argument(
        "--snapshot-every",
        type=int,
        default=0,
        help="with --folds, also keep each trained fold's scored model after every N-th epoch (epoch_N.pt)",
    )
    parser.add_argument(
        "--against", default="default", help="with --folds, the row every other is compared with, pair by pair"
    )
    args = parser.parse_args()
    known = [*VARIANTS, *ENSEMBLES] if args.folds else list(VARIANTS)
    unknown = [name for name in args.variants.split(",") if name not in known]
    if unknown:
        parser.error(f"unknown variants {', '.join(unknown)}; choose from {', '.join(known)}")
    own_epochs = [n for n in args.variants.split(",") if n in VARIANTS and "optim.epochs" in recipe_fields(n)]
    if args.epochs and own_epochs:
        parser.error(f"--epochs would replace the epochs that {', '.join(own_epochs)} set; run them without it")
    if args.seams_only and not args.folds:
        parser.error("--seams-only groups the folds of --folds; the single split of a run has no such option")
    if args.folds:
        from cross_validation import cross_validate

        cross_validate(args, known, variant_config, ENSEMBLES, ROW_INFERENCE, CONTINUES)
        return
    base = load_config(None, overrides={"data.path": args.data})
    prepared = prepare_data(base.data)  # one split for every row
    print(f"{'variant':<30}{'seed':>5}{'val mIoU':>10}{'val big rock':>14}{'best epoch':>12}{'minutes':>9}")
    for name in args.variants.split(","):
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            run_dir = Path(args.out) / f"{name}_seed{seed}"
            check_same_split(run_dir, prepared.split)
            if not (run_dir / "metrics.json").is_file():
                cfg = variant_config(args, name, seed)
                cfg.semi.teachers = [str(Path(args.out) / f"{t}_seed{seed}") for t in cfg.semi.teachers]
                fit(cfg, run_dir, force=True, prepared=prepared)
            row = run_summary(run_dir)
            print(
                f"{name:<30}{seed:>5}{row['val_miou']:>10.4f}{row['big_rock']:>14.4f}{row['best_epoch']:>12d}"
                f"{row['minutes']:>9.1f}",
                flush=True,
            )
        write_table_and_plot(Path(args.out))
    print(f"table: {Path(args.out) / 'ablation.md'}  plot: {Path(args.out) / 'ablation.png'}")


if __name__ == "__main__":
    main()
