"""K-fold cross-validation of recipes (`benchmarks/recipes.py --folds K`): a measurement that sees small gains.

Every labeled crop is held out once (data.split.kfold_splits: whole frame groups, stratified on big rock). Each
fold trains the recipe as `marsseg train` would, with the big-rock scale (and the variant's early stopping) on the
fold's own validation part, and scores its held-out part once. The held-out crops' confusion matrices of all folds
are pooled into one: the out-of-fold mIoU. Its 90 % interval resamples frame groups; a lever is compared with
"default" on the same folds and seeds, image by image (a paired bootstrap), which cancels most of the split's luck.
A variant with semi.teachers names other variants: each fold's teachers are their models of that fold and seed; so
does an ensemble row (a soft vote, nothing trained), and a variant that carries on another's folds (continued_fold).
Writes cv.md and cv.png in --out from every finished fold there; finished folds are skipped on a re-run.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from marsseg import report
from marsseg.checkpoints import check_resume_matches_run, load_checkpoint, save_checkpoint, scored_weights
from marsseg.config import (
    DataConfig,
    dotted_names,
    from_dict,
    get_field,
    load_config,
    save_config,
    set_field,
    to_dict,
)
from marsseg.data.prepare import prepare_data
from marsseg.data.split import group_ids, kfold_splits
from marsseg.engine import fit
from marsseg.metrics import bootstrap_miou_difference, bootstrap_miou_interval, iou_per_class, mean_iou

CLASSES = ("soil", "bedrock", "sand", "big_rock")


def difference_text(difference: float, low: float, high: float) -> str:
    """A paired difference and its 90 % interval as the tables print it: "+0.008 (-0.004 to +0.019)"."""
    return f"{difference:+.3f} ({low:+.3f} to {high:+.3f})"


def fold_dir(out: Path, name: str, seed: int, fold: int) -> Path:
    return out / f"{name}_seed{seed}_fold{fold}"


def fold_plan(folds: int, cfg: DataConfig, prepared, seams_only: bool = False) -> str:
    """What a fold's held-out crops depend on; a finished fold made under another plan is never reused. Folds
    grouped by seam_pairs alone (`seams_only`, those of the tables measured before 2026-11-29) keep their plan."""
    plan = f"{folds} folds, split seed {cfg.split_seed}, val {cfg.val_fraction}, data {prepared.fingerprint}"
    return plan if seams_only else f"{plan}, frames by seam_pairs and frame_halves"


def run_fold(cfg, run_dir: Path, prepared, split, plan: str, resume: bool = False, snapshot_every: int = 0) -> None:
    """Train one fold (or carry on `run_dir`'s run) and keep its held-out crops' confusion matrices
    (out_of_fold.npz); with `snapshot_every` N, also the scored model after every N-th epoch (epoch_N.pt), which an
    ensemble row names as "variant:epoch_N"."""
    on_epoch = None
    if not resume:
        for stale in run_dir.glob("epoch_*.pt"):  # an earlier run's snapshots
            stale.unlink()
    if snapshot_every and cfg.model.members > 1:
        raise SystemExit("--snapshot-every: snapshots are of one network's run; not with model.members > 1")
    if snapshot_every:

        def on_epoch(epoch: int, val_miou: float) -> None:
            if (epoch + 1) % snapshot_every == 0:
                save_snapshot(run_dir, epoch + 1)

    fit_args = {"resume": resume, "force": not resume, "prepared": replace(prepared, split=split)}
    result = fit(cfg, run_dir, on_epoch=on_epoch, **fit_args)
    np.savez(
        run_dir / "out_of_fold.npz",
        indices=split.test,
        matrices=result.test.image_matrices,
        train_seconds=result.train_seconds,
        plan=plan,
    )


def save_snapshot(run_dir: Path, epoch: int) -> None:
    """epoch_N.pt: the scored model (the EMA when the run keeps one) of the last.pt just written, as in best.pt."""
    last = load_checkpoint(run_dir / "last.pt")
    snapshot = {"config": last["config"], "model": scored_weights(last), "epoch": last["epoch"]}
    save_checkpoint(run_dir / f"epoch_{epoch}.pt", snapshot)


# What a continued fold may change in the finished run it carries on: when to stop, and how many threads it uses.
CONTINUED_FIELDS = ("optim.early_stopping_patience", "threads")


def continued_fold(cfg, source_dir: Path, run_dir: Path, prepared, split, plan: str) -> None:
    """A fold of `cfg`, a recipe that differs from the finished run `source_dir` only in CONTINUED_FIELDS: that run,
    resumed from its last.pt with `cfg`'s patience. Up to the epoch where early stopping ended it, a run with more
    patience follows the same course (the same seed, schedule and per-epoch draws, which a resume restores), so it
    trains only the epochs the source did not; a source that early stopping never ended is re-scored unchanged."""
    others = [name for name in dotted_names(to_dict(cfg)) if name not in CONTINUED_FIELDS]
    check_resume_matches_run(source_dir, cfg, others)
    if not (source_dir / "last.pt").is_file():
        raise SystemExit(f"{source_dir}: no last.pt to carry on from")
    shutil.rmtree(run_dir, ignore_errors=True)  # a continuation cut short starts again from the source
    shutil.copytree(source_dir, run_dir, ignore=shutil.ignore_patterns("out_of_fold.npz"))
    last = load_checkpoint(run_dir / "last.pt")
    continued = from_dict(last["config"])  # as a resume reads it
    for name in CONTINUED_FIELDS:
        set_field(continued, name, get_field(cfg, name))
    save_checkpoint(run_dir / "last.pt", {**last, "config": to_dict(continued)})
    save_config(continued, run_dir / "config.yaml")
    run_fold(cfg, run_dir, prepared, split, plan, resume=True)


def ensemble_fold(
    member_dirs: list[str], checkpoints: list[str], run_dir: Path, prepared, split, plan: str, inference: dict
) -> None:
    """Score the soft vote of finished runs of one fold (their probabilities averaged, the big-rock scale chosen on
    the fold's validation part) on its held-out part, as run_fold saves a trained one; its cost is the members'.
    `checkpoints` says which of each member ("best", "last" or a snapshot "epoch_N"); `inference`, how they predict:
    whole_frames (halves of a frame together) and scales, as keyword arguments of predict.predict_probabilities."""
    from marsseg.experiments import ensemble_scores

    scores = ensemble_scores(
        [Path(d) for d in member_dirs],
        replace(prepared, split=split),
        True,
        "cpu",
        checkpoints=checkpoints,
        **inference,
    )
    seconds = sum(float(np.load(Path(d) / "out_of_fold.npz")["train_seconds"]) for d in member_dirs)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "members": member_dirs,
        "checkpoints": checkpoints,
        "big_rock_scale": scores["scale"],
        **{key: list(value) if isinstance(value, tuple) else value for key, value in inference.items()},
    }
    (run_dir / "members.json").write_text(json.dumps(record))
    matrices = scores["test_evaluation"].image_matrices
    np.savez(run_dir / "out_of_fold.npz", indices=split.test, matrices=matrices, train_seconds=seconds, plan=plan)


def teacher_fold(out: Path, teacher: str, seed: int, fold: int, plan: str) -> str:
    """A variant's teacher, named by variant, is that variant's finished run of the same fold and seed: a model
    that never saw the fold's held-out labels."""
    run_dir = fold_dir(out, teacher, seed, fold)
    if load_fold(run_dir / "out_of_fold.npz", plan) is None:
        raise SystemExit(f"{run_dir}: the teacher {teacher} of this fold has not finished; cross-validate it first")
    return str(run_dir)


def member_seed(member: str, seed: int) -> tuple[str, int, str]:
    """An ensemble member "variant" is that variant's best checkpoint at the row's seed; "variant@k" at the row's
    seed + k; a suffix ":last" takes its last epoch's model instead, ":epoch_N" its snapshot after epoch N (run_fold's
    snapshot_every). Returns (variant, seed, checkpoint)."""
    member, _, checkpoint = member.partition(":")
    variant, _, offset = member.partition("@")
    return variant, seed + int(offset or 0), checkpoint or "best"


def load_fold(path: Path, plan: str):
    """A finished fold's out_of_fold.npz, or None when there is none; exits when it was made under another plan."""
    if not path.is_file():
        return None
    saved = np.load(path)
    if str(saved["plan"]) != plan:
        raise SystemExit(f"{path}: made for {saved['plan']}, not {plan}; use another --out")
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
        raise SystemExit(f"{out}: the folds of {name} seed {seed} do not score every crop exactly once")
    return matrices, minutes


def write_table(
    out: Path, names: list[str], seeds: list[int], folds: int, groups: np.ndarray, plan: str, against: str = "default"
) -> None:
    """cv.md: per row the pooled out-of-fold mIoU (mean ± std over seeds), per-class IoU, the 90 % interval over
    frame groups (seeds summed) and the paired difference from the row `against` on the seeds both have."""
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
        lines.append(
            f"| {name} | {len(runs)} | {per_seed.mean():.3f}{spread} | {low:.3f}-{high:.3f} | "
            + " | ".join(f"{v:.3f}" for v in ious)
            + f" | {comparison} | {minutes:.1f} |"
        )
    (out / "cv.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if differences:
        plot_differences(differences, folds, out / "cv.png", against)


def plot_differences(
    differences: dict[str, tuple[float, float, float]], folds: int, path: Path, against: str = "default"
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


def cross_validate(
    args,
    known_names: list[str],
    variant_config,
    ensembles: dict[str, list[str]] | None = None,
    row_inference: dict[str, dict] | None = None,
    continues: dict[str, str] | None = None,
) -> None:
    """Train every (variant, seed, fold) of `args` that has not finished, then write cv.md (rows in the order of
    `known_names`). `variant_config(args, name, seed)` gives a row's config; a row named in `ensembles` trains
    nothing: it is the soft vote of the variants listed there, fold by fold, predicting as `row_inference` says for
    that row (whole_frames, scales; by default each crop alone, at its own scale). A row named in `continues` carries
    on the finished folds of the variant named there (continued_fold); a fold whose source has not finished is
    trained from scratch, which gives the same run."""
    ensembles, continues = ensembles or {}, continues or {}
    out = Path(args.out)
    base = load_config(None, {"data.path": args.data})
    prepared = prepare_data(base.data)
    seams_only = getattr(args, "seams_only", False)
    splits = kfold_splits(
        prepared.data, args.folds, base.data.val_fraction, base.data.split_seed, seams_only=seams_only
    )
    plan = fold_plan(args.folds, base.data, prepared, seams_only)
    names = args.variants.split(",")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    only_folds = {int(f) for f in args.only_folds.split(",") if f} if getattr(args, "only_folds", "") else None
    if only_folds is not None and not only_folds <= set(range(args.folds)):
        raise SystemExit(f"--only-folds {args.only_folds}: expected folds among 0..{args.folds - 1}")
    for name in names:
        for seed in seeds:
            for fold, split in enumerate(splits):
                run_dir = fold_dir(out, name, seed, fold)
                if only_folds is not None and fold not in only_folds:
                    continue
                if load_fold(run_dir / "out_of_fold.npz", plan) is not None:
                    continue
                if name in ensembles:
                    members = [member_seed(m, seed) for m in ensembles[name]]
                    member_dirs = [teacher_fold(out, variant, s, fold, plan) for variant, s, _ in members]
                    checkpoints = [which for *_, which in members]
                    inference = (row_inference or {}).get(name, {})
                    ensemble_fold(member_dirs, checkpoints, run_dir, prepared, split, plan, inference)
                    print(f"{name} seed {seed} fold {fold}: scored", flush=True)
                    continue
                cfg = variant_config(args, name, seed)
                cfg.semi.teachers = [teacher_fold(out, t, seed, fold, plan) for t in cfg.semi.teachers]
                source_dir = fold_dir(out, continues[name], seed, fold) if name in continues else None
                if source_dir is not None and load_fold(source_dir / "out_of_fold.npz", plan) is not None:
                    continued_fold(cfg, source_dir, run_dir, prepared, split, plan)
                else:
                    run_fold(cfg, run_dir, prepared, split, plan, snapshot_every=getattr(args, "snapshot_every", 0))
                metrics = json.loads((run_dir / "metrics.json").read_text())
                print(f"{name} seed {seed} fold {fold}: held-out mIoU {metrics['test_miou']:.4f}", flush=True)
    # The table holds every finished row in --out, this call's and earlier ones': names and seeds from the fold dirs.
    finished = [p.name.rsplit("_fold", 1)[0].rsplit("_seed", 1) for p in out.glob("*_seed*_fold*")]
    every_name = {name for name, _ in finished} | set(names)
    every_seed = {int(seed) for _, seed in finished if seed.isdigit()} | set(seeds)
    ordered = [n for n in known_names if n in every_name]
    against = getattr(args, "against", "default")
    if against not in every_name:
        raise SystemExit(f"--against {against}: no finished row of that name in {out}")
    write_table(
        out, ordered, sorted(every_seed), args.folds, group_ids(prepared.data, seams_only=seams_only), plan, against
    )
