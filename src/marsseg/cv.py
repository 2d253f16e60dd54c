"""K-fold cross-validation (`marsseg cv`): how this project measures a lever, and how a user compares recipes.

Every labeled crop is held out once (data.split.kfold_splits: whole frame groups, stratified on big rock). Each fold
trains a configuration as `marsseg train` would, with the big-rock scale (and early stopping, if asked) chosen on the
fold's own validation part, and scores its held-out part once. The held-out crops' confusion matrices of all folds
are pooled into one: the out-of-fold mIoU. Its 90 % interval resamples frame groups; every configuration is compared
with the first on the same folds and seeds, image by image (a paired bootstrap), which cancels most of the split's
luck. A finished fold leaves out_of_fold.npz in its folder and is skipped on a re-run; a fold killed part-way resumes
from its last.pt. benchmarks/cross_validation.py adds the studies' extras (ensembles of finished rows, continued folds,
snapshots) on top of these functions.
"""

from __future__ import annotations

import csv
import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from marsseg import report
from marsseg.config import Config, DataConfig, load_config, save_config, to_dict
from marsseg.data.prepare import PreparedData, prepare_data
from marsseg.data.split import Split, group_ids, kfold_splits
from marsseg.engine import fit
from marsseg.errors import UserError
from marsseg.evaluation import CLASS_KEYS
from marsseg.metrics import bootstrap_miou_difference, bootstrap_miou_interval, iou_per_class, mean_iou


def difference_text(difference: float, low: float, high: float) -> str:
    """A paired difference and its 90 % interval as the tables print it: "+0.008 (-0.004 to +0.019)"."""
    return f"{difference:+.3f} ({low:+.3f} to {high:+.3f})"


def fold_dir(out: Path, name: str, seed: int, fold: int) -> Path:
    return out / f"{name}_seed{seed}_fold{fold}"


def fold_plan(folds: int, cfg: DataConfig, prepared, *, seams_only: bool = False) -> str:
    """What a fold's held-out crops depend on; a finished fold made under another plan is never reused. Folds
    grouped by seam_pairs alone (`seams_only`, those of the tables measured before 2026-11-29) keep their plan."""
    plan = f"{folds} folds, split seed {cfg.split_seed}, val {cfg.val_fraction}, data {prepared.fingerprint}"
    return plan if seams_only else f"{plan}, frames by seam_pairs and frame_halves"


def run_fold(
    cfg: Config, run_dir: Path, prepared: PreparedData, split: Split, plan: str, *, resume: bool = False, on_epoch=None
) -> None:
    """Train one fold (or carry on `run_dir`'s run) and keep its held-out crops' confusion matrices, the training
    seconds and the fold plan in out_of_fold.npz, the mark of a finished fold. `on_epoch`: engine.fit's."""
    fit_args = {"resume": resume, "force": not resume, "prepared": replace(prepared, split=split)}
    result = fit(cfg, run_dir, on_epoch=on_epoch, **fit_args)
    np.savez(
        run_dir / "out_of_fold.npz",
        indices=split.test,
        matrices=result.test.image_matrices,
        train_seconds=result.train_seconds,
        plan=plan,
    )


def load_fold(path: Path, plan: str):
    """A finished fold's out_of_fold.npz as a dict, or None when there is none.

    Raises:
        UserError: the fold was made under another plan (other data, folds or grouping).
    """
    if not path.is_file():
        return None
    with np.load(path) as npz:
        saved = {key: npz[key] for key in npz.files}
    if str(saved["plan"]) != plan:
        raise UserError(f"{path}: made for {saved['plan']}, not {plan}; use another --out")
    return saved


def pooled_matrices(
    out: Path, name: str, seed: int, folds: int, size: int, plan: str
) -> tuple[np.ndarray, float] | None:
    """(N, C, C) every crop's out-of-fold confusion matrix in sample order, and the training minutes of all folds;
    None until every fold of (name, seed) has finished."""
    matrices, minutes, scored = None, 0.0, np.zeros(size, dtype=np.int64)
    for fold in range(folds):
        saved = load_fold(fold_dir(out, name, seed, fold) / "out_of_fold.npz", plan)
        if saved is None:
            return None
        if matrices is None:
            matrices = np.zeros((size, *saved["matrices"].shape[1:]), dtype=np.int64)
        matrices[saved["indices"]] = saved["matrices"]
        np.add.at(scored, saved["indices"], 1)
        minutes += float(saved["train_seconds"]) / 60
    if not (scored == 1).all():
        raise UserError(f"{out}: the folds of {name} seed {seed} do not score every crop exactly once")
    return matrices, minutes


def write_table(
    out: Path,
    names: list[str],
    seeds: list[int],
    folds: int,
    groups: np.ndarray,
    plan: str,
    *,
    against: str = "default",
) -> list[dict]:
    """cv.md and cv.csv: per row the pooled out-of-fold mIoU (mean ± std over seeds), per-class IoU, the 90 % interval
    over frame groups (seeds summed) and the paired difference from the row `against` on the seeds both have; cv.png
    plots the differences. Returns cv.csv's records."""
    pooled = {}
    for name in names:
        runs = {s: pooled_matrices(out, name, s, folds, len(groups), plan) for s in seeds}
        pooled[name] = {s: r for s, r in runs.items() if r is not None}
    lines = [
        f"{folds}-fold cross-validation, pooled out of fold; interval: 90 % bootstrap over {len(np.unique(groups))} "
        "frame groups",
        "",
        f"| variant | seeds | CV mIoU | 90 % interval | soil | bedrock | sand | big rock | vs {against} (90 %) "
        "| minutes per fold |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    differences = {}  # name -> (difference, low, high) against the row `against`, for the plot
    records = []  # cv.csv: one row a configuration
    for name, runs in pooled.items():
        if not runs:
            continue
        per_seed = np.array([mean_iou(m.sum(axis=0)) for m, _ in runs.values()])
        summed = sum(m for m, _ in runs.values())
        low, high = bootstrap_miou_interval(summed, groups)
        spread = f" ± {per_seed.std(ddof=1):.3f}" if len(per_seed) > 1 else ""
        ious = iou_per_class(summed.sum(axis=0))
        comparison = ""
        shared = sorted(set(runs) & set(pooled.get(against, {})))
        if name != against and shared:
            ours = sum(runs[s][0] for s in shared)
            theirs = sum(pooled[against][s][0] for s in shared)
            difference, d_low, d_high = bootstrap_miou_difference(ours, theirs, groups)
            differences[name] = (difference, d_low, d_high)
            comparison = difference_text(difference, d_low, d_high)
        minutes = np.mean([m for _, m in runs.values()]) / folds
        record = {"name": name, "seeds": len(runs), "miou": per_seed.mean(), "low": low, "high": high}
        record.update(zip(CLASS_KEYS, ious.tolist(), strict=True))
        if name in differences:
            record.update(zip(("difference", "difference_low", "difference_high"), differences[name], strict=True))
        records.append({**record, "minutes_per_fold": minutes})
        lines.append(
            f"| {name} | {len(runs)} | {per_seed.mean():.3f}{spread} | {low:.3f}-{high:.3f} | "
            + " | ".join(f"{v:.3f}" for v in ious)
            + f" | {comparison} | {minutes:.1f} |"
        )
    (out / "cv.md").write_text("\n".join(lines) + "\n")
    with open(out / "cv.csv", "w", newline="") as handle:
        fields = [
            "name",
            "seeds",
            "miou",
            "low",
            "high",
            *CLASS_KEYS,
            "difference",
            "difference_low",
            "difference_high",
        ]
        writer = csv.DictWriter(handle, fieldnames=[*fields, "minutes_per_fold"])
        writer.writeheader()
        writer.writerows(records)
    print("\n".join(lines))
    if differences:
        plot_differences(differences, folds, out / "cv.png", against=against)
    return records


def plot_differences(
    differences: dict[str, tuple[float, float, float]], folds: int, path: Path, *, against: str = "default"
) -> None:
    """cv.png: each lever's pooled out-of-fold mIoU minus the row `against`'s, with its paired 90 % interval."""
    plt = report.plt
    names = list(differences)
    values = np.array([differences[n] for n in names])  # (rows, 3): difference, low, high
    figure, axis = plt.subplots(figsize=(7, 0.45 * len(names) + 1.4))
    errors = np.abs(values[:, 1:] - values[:, :1]).T
    axis.errorbar(values[:, 0], names, xerr=errors, fmt="o", color="#6a7fa8", capsize=4)
    axis.axvline(0, color="orange", label=against)
    axis.set(
        xlabel=f"mIoU minus {against}'s, pooled out of fold (90 % paired bootstrap)",
        title=f"{folds}-fold cross-validation, same folds and seeds",
    )
    axis.invert_yaxis()
    axis.legend(fontsize=8, loc="best")
    report.save_figure(figure, path)


def check_row_config(out: Path, name: str, cfg: Config) -> None:
    """A row's config is saved as OUT/NAME.yaml when its first fold starts; a later call that would change it is
    refused, so that no row pools folds of two recipes."""
    path = out / f"{name}.yaml"
    if path.is_file():
        if to_dict(load_config(str(path))) != to_dict(cfg):
            raise UserError(f"{path}: the row {name!r} has another config than this call's; use another --out")
    else:
        save_config(cfg, path)


def cross_validate(
    rows: list[tuple[str, Config]],
    data_path: str,
    out: str | os.PathLike,
    *,
    folds: int = 3,
    seeds: int = 1,
) -> list[dict]:
    """Train every (row, seed, fold) that has not finished in `out`, then write cv.md, cv.csv and cv.png there and
    return cv.csv's records. `rows`: (name, config); every row is compared with the first on the same folds. Seed s
    of a row trains with its config's seed + s. Resumable: finished folds are kept, a killed one resumes from last.pt.

    Raises:
        UserError: names that repeat, a row whose config changed since its folds in `out` were trained, folds of
            another plan (other data or fold count) in `out`.
    """
    names = [name for name, _ in rows]
    if len(set(names)) < len(names) or not names:
        raise UserError(f"cv: found configurations named {names}, expected one or more distinct names")
    base = rows[0][1].data
    for name, cfg in rows[1:]:  # one set of folds for every row: their data sections must agree
        if replace(cfg.data, path=base.path) != base:
            raise UserError(f"cv: the row {name!r} has other data.* settings than {names[0]!r}; every row shares folds")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prepared = prepare_data(replace(base, path=data_path))
    splits = kfold_splits(prepared.data, folds, val_fraction=base.val_fraction, seed=base.split_seed)
    plan = fold_plan(folds, base, prepared)
    for name, cfg in rows:
        check_row_config(out, name, cfg)
    for name, cfg in rows:
        for seed in range(seeds):
            for fold, split in enumerate(splits):
                run_dir = fold_dir(out, name, seed, fold)
                if load_fold(run_dir / "out_of_fold.npz", plan) is not None:
                    print(f"{name} seed {seed} fold {fold + 1} of {folds}: finished before, kept", flush=True)
                    continue
                resume = (run_dir / "last.pt").is_file() or (run_dir / "member_0" / "last.pt").is_file()
                print(f"{name} seed {seed} fold {fold + 1} of {folds}" + (" (resumed)" if resume else ""), flush=True)
                fold_cfg = replace(cfg, seed=cfg.seed + seed, data=replace(cfg.data, path=data_path))
                run_fold(fold_cfg, run_dir, prepared, split, plan, resume=resume)
    return write_table(out, names, list(range(seeds)), folds, group_ids(prepared.data), plan, against=names[0])
