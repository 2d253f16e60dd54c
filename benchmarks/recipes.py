"""Ablation of the default recipe: each lever as one row, trained on one split, scored on validation.

Every variant is the default config plus a few overrides. Rows report validation mIoU and validation big-rock IoU
only: every choice is made on validation, and the local test part is kept for the final figure of the chosen
recipe (`marsseg train` prints it). Finished runs are skipped on a re-run.
Run: .venv/bin/python benchmarks/recipes.py --data ../shared/data/mars64.npz --out runs/ablation \\
         [--variants default,no_ignore_bg,...] [--epochs N] [--seeds K]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from marsseg.config import load_config
from marsseg.data.prepare import prepare_data
from marsseg.engine import fit

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mars64.npz"

VARIANTS: dict[str, dict] = {
    "default": {},
    "study_recipe": {  # lr 3e-4, no EMA, flips + brightness/contrast + gamma, 40 epochs, patience 10
        "optim.lr": 3e-4,
        "optim.ema_decay": 0.0,
        "augment.elastic": 0.0,
        "augment.grid_distortion": 0.0,
        "optim.epochs": 40,
        "optim.early_stopping_patience": 10,
    },
    "lr_3e-4": {"optim.lr": 3e-4},
    "no_ema": {"optim.ema_decay": 0.0},
    "no_elastic_grid": {"augment.elastic": 0.0, "augment.grid_distortion": 0.0},
    "flips_only": {
        "augment.elastic": 0.0,
        "augment.grid_distortion": 0.0,
        "augment.brightness_contrast": 0.0,
        "augment.gamma": 0.0,
    },
    "plus_vflip_clahe": {"augment.vflip": 0.5, "augment.clahe": 0.3},
    "cross_entropy": {"loss.name": "cross_entropy"},
    "cross_entropy_with_background": {
        "loss.name": "cross_entropy",
        "loss.ignore_background": False,
        "loss.class_weights": "none",
    },
    "study_loss_with_background": {"loss.ignore_background": False, "loss.class_weights": "none"},
    "no_class_weights": {"loss.class_weights": "none"},
    "inverse_class_weights": {"loss.class_weights": "inverse"},
    "no_oversampling": {"data.oversample_factor": 1},
    "oversample_x8": {"data.oversample_factor": 8},
    "weighted_sampler": {"data.sampler": "weighted"},
    "rare_crop": {"augment.rare_crop": 0.5},  # half of the big-rock draws zoomed on the rock (scale 0.5..1)
    "balanced_curriculum": {"data.curriculum_epochs": 10},  # half big-rock draws at first, x4's share at epoch 10
    "plain_unet": {"model.name": "unet"},
    "full_res_unet16": {"model.name": "unet", "model.width": 16, "model.options": {"levels": 5}},
    "dice_per_class": {"loss.dice_per_class": True},
    "cosine_40_no_early_stop": {"optim.epochs": 40, "optim.early_stopping_patience": 40},
    "width_48_cosine_40": {"model.width": 48, "optim.epochs": 40, "optim.early_stopping_patience": 40},
    "width_48": {"model.width": 48},
    "plateau": {"optim.scheduler": "plateau"},
    "onecycle": {"optim.scheduler": "onecycle"},
    "warm_restarts": {"optim.scheduler": "cosine_restarts"},
    "batch_32": {"optim.batch_size": 32},
    "big_rock_scale_on_val": {"big_rock_scale": 0.0},
    "no_tta": {"tta": False},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REAL_DATA) if REAL_DATA.is_file() else "")
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs for every row")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run; 0 = physical cores")
    args = parser.parse_args()
    base = load_config(None, {"data.path": args.data})
    prepared = prepare_data(base.data)  # one split for every row
    print(f"{'variant':<30}{'seed':>5}{'val mIoU':>10}{'val big rock':>14}{'epochs':>8}{'minutes':>9}")
    for name in args.variants.split(","):
        rows = []
        for seed in range(args.seeds):
            overrides = {"data.path": args.data, "seed": seed, "threads": args.threads, **VARIANTS[name]}
            if args.epochs:
                overrides["optim.epochs"] = args.epochs
            run_dir = Path(args.out) / f"{name}_seed{seed}"
            if not (run_dir / "metrics.json").is_file():
                fit(load_config(None, overrides), run_dir, force=True, prepared=prepared)
            metrics = json.loads((run_dir / "metrics.json").read_text())
            rows.append(
                (
                    metrics["val_miou"],
                    metrics["val_iou"]["big_rock"],
                    metrics["epochs_run"],
                    metrics["train_seconds"] / 60,
                )
            )
            print(
                f"{name:<30}{seed:>5}{rows[-1][0]:>10.4f}{rows[-1][1]:>14.4f}{rows[-1][2]:>8d}{rows[-1][3]:>9.1f}",
                flush=True,
            )
        if len(rows) > 1:
            mean, std = np.mean(rows, axis=0), np.std(rows, axis=0, ddof=1)
            print(f"{name + ' (mean ± std)':<35}{mean[0]:.4f}±{std[0]:.4f}  {mean[1]:.4f}±{std[1]:.4f}")


if __name__ == "__main__":
    main()
