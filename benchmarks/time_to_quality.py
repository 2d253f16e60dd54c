"""Time to quality: the default recipe under wall-clock budgets, validation and local-test mIoU against minutes.

Each budget trains `marsseg train --minutes B` (the learning-rate schedule follows the budget, so a short run
still anneals), one seed each, and --seeds-at B:K more seeds at one budget for the spread. The full default run
(all the recipe's epochs, no budget) is trained first; a budget it fits in with room to spare (its training time x
1.1 below the budget) would train the same run again (the schedule follows the planned steps whenever they are ahead
of the clock), so that row is the full run. Rows report the figures `marsseg train` prints: validation and local-test
mIoU with flip TTA and the big-rock scale chosen on validation, and big-rock IoU. Finished runs are skipped on a
re-run. Writes time_to_quality.md and time_to_quality.png in --out.
Run: .venv/bin/python benchmarks/time_to_quality.py --data ../shared/data/mars64.npz --out runs/ttq \\
         [--budgets 2,4,8,15,30] [--seeds-at 4:3]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from marsseg import report
from marsseg.checkpoints import check_same_split
from marsseg.config import load_config
from marsseg.data.prepare import prepare_data
from marsseg.engine import fit

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mars64.npz"
FULL = 0  # the budget of the full default run: none


def train_row(data: str, minutes: float, seed: int, run_dir: Path, prepared, epochs: int | None = None) -> dict:
    """Train (unless finished) and return the row of one run."""
    check_same_split(run_dir, prepared.split)
    if not (run_dir / "metrics.json").is_file():
        overrides = {"data.path": data, "seed": seed, "optim.minutes": minutes, "model.members": 1}  # one network
        if epochs:
            overrides["optim.epochs"] = epochs
        fit(load_config(None, overrides=overrides), run_dir, force=True, prepared=prepared)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "budget": minutes,
        "seed": seed,
        "run": run_dir.name,
        "epochs": metrics["epochs_run"],
        "train_minutes": metrics["train_seconds"] / 60,
        "precision": metrics.get("precision", "fp32"),
        "val_miou": metrics["val_miou"],
        "val_big_rock": metrics["val_iou"]["big_rock"],
        "test_miou": metrics["test_miou"],
        "test_big_rock": metrics["test_iou"]["big_rock"],
    }


def write_table_and_plot(rows: list[dict], out: Path) -> None:
    keys = ("train_minutes", "epochs", "val_miou", "val_big_rock", "test_miou", "test_big_rock")
    lines = [
        "| budget (min) | seeds | minutes trained | epochs | val mIoU | val big rock | local-test mIoU "
        "| test big rock | run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    budgets = sorted({row["budget"] for row in rows}, key=lambda b: (b == FULL, b))
    means = {}
    for budget in budgets:
        group = [row for row in rows if row["budget"] == budget]
        cells = []
        for key in keys:
            values = np.array([row[key] for row in group], dtype=float)
            digits = 1 if key == "train_minutes" else 0 if key == "epochs" else 3
            spread = f" ± {values.std(ddof=1):.{digits}f}" if len(values) > 1 else ""
            cells.append(f"{values.mean():.{digits}f}{spread}")
        means[budget] = {key: np.array([row[key] for row in group], dtype=float) for key in keys}
        label = "none (all planned epochs)" if budget == FULL else f"{budget:g}"
        lines.append(f"| {label} | {len(group)} | " + " | ".join(cells) + f" | {', '.join(r['run'] for r in group)} |")
    (out / "time_to_quality.md").write_text("\n".join(lines) + "\n")

    plt = report.plt
    figure, axis = plt.subplots(figsize=(7, 4.2))
    runs_plotted: set[str] = set()
    plotted = []  # one point per distinct set of runs (a budget that never binds repeats the full run)
    for budget in budgets:
        runs = ",".join(row["run"] for row in rows if row["budget"] == budget)
        if runs not in runs_plotted:
            runs_plotted.add(runs)
            plotted.append(budget)
    budgets = plotted
    for key, label, color in (
        ("val_miou", "validation mIoU", "#6a7fa8"),
        ("test_miou", "local-test mIoU", "#c0504d"),
        ("val_big_rock", "validation big rock IoU", "#9bbb59"),
        ("test_big_rock", "local-test big rock IoU", "#f79646"),
    ):
        minutes = [means[b]["train_minutes"].mean() for b in budgets]
        values = [means[b][key].mean() for b in budgets]
        errors = [means[b][key].std(ddof=1) if len(means[b][key]) > 1 else 0.0 for b in budgets]
        axis.errorbar(minutes, values, yerr=errors, marker="o", capsize=3, label=label, color=color)
    axis.set(xscale="log", xlabel="minutes of training (this machine)", ylabel="IoU", ylim=(0, 1))
    axis.xaxis.set_minor_formatter(plt.NullFormatter())
    axis.set_xticks([m.mean() for m in (means[b]["train_minutes"] for b in budgets)])
    axis.set_xticklabels([f"{means[b]['train_minutes'].mean():.1f}" for b in budgets])
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="upper left", ncols=2)
    axis.set_title("default recipe under a time budget (error bars: spread over seeds)")
    report.save_figure(figure, out / "time_to_quality.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REAL_DATA) if REAL_DATA.is_file() else "")
    parser.add_argument("--out", default="runs/time_to_quality")
    parser.add_argument("--budgets", default="2,4,8,15,30", help="minutes, comma-separated")
    parser.add_argument("--seeds-at", default="4:3", help="BUDGET:K, K seeds (0..K-1) at one budget")
    parser.add_argument("--epochs", type=int, default=None, help="planned epochs (default: the recipe's)")
    args = parser.parse_args()
    budgets = sorted(float(b) for b in args.budgets.split(","))
    spread_budget, spread_seeds = args.seeds_at.split(":")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prepared = prepare_data(load_config(None, overrides={"data.path": args.data}).data)  # one split for every row
    print(f"{'budget':>8}{'seed':>6}{'epochs':>8}{'minutes':>9}{'val mIoU':>10}{'test mIoU':>11}{'test big rock':>15}")
    rows = []

    def show(row: dict) -> None:
        rows.append(row)
        print(
            f"{row['budget']:>8g}{row['seed']:>6}{row['epochs']:>8}{row['train_minutes']:>9.1f}{row['val_miou']:>10.4f}"
            f"{row['test_miou']:>11.4f}{row['test_big_rock']:>15.4f}",
            flush=True,
        )
        write_table_and_plot(rows, out)

    full = train_row(args.data, FULL, 0, out / "full_seed0", prepared, args.epochs)
    show(full)
    plan = [(b, 0) for b in budgets]
    plan += [(float(spread_budget), s) for s in range(1, int(spread_seeds))]
    for budget, seed in plan:
        if seed == 0 and full["train_minutes"] * 1.1 < budget:
            show({**full, "budget": budget})  # the budget never binds: the same run as the full one
            continue
        show(train_row(args.data, budget, seed, out / f"minutes{budget:g}_seed{seed}", prepared, args.epochs))
    print(f"table: {out / 'time_to_quality.md'}  plot: {out / 'time_to_quality.png'}")


if __name__ == "__main__":
    main()
