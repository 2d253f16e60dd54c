"""K-fold cross-validation of recipes, the library of `benchmarks/recipes.py --folds K`: nothing runs from here.

`marsseg cv` (marsseg.cv) with the studies' extras: ensembles of finished rows, continued folds, snapshots, teachers
named by variant.

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

import argparse
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from marsseg import cv
from marsseg.checkpoints import check_resume_matches_run, load_checkpoint, save_checkpoint, scored_weights
from marsseg.config import (
    dotted_names,
    from_dict,
    get_field,
    load_config,
    save_config,
    set_field,
    to_dict,
)
from marsseg.cv import difference_text, fold_dir, fold_plan, load_fold, pooled_matrices, write_table
from marsseg.data.prepare import prepare_data
from marsseg.data.split import group_ids, kfold_splits
from marsseg.evaluation import CLASS_KEYS

__all__ = ["CLASS_KEYS", "difference_text", "fold_dir", "fold_plan", "load_fold", "pooled_matrices", "write_table"]


def run_fold(cfg, run_dir: Path, prepared, split, plan: str, resume: bool = False, snapshot_every: int = 0) -> None:
    """cv.run_fold, and with `snapshot_every` N also the scored model after every N-th epoch (epoch_N.pt), which an
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

    cv.run_fold(cfg, run_dir, prepared, split, plan, resume=resume, on_epoch=on_epoch)


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
    whole_frames (halves of a frame together) and scales, fields of config.InferenceSettings (flip TTA on, the first
    member's input channels and inference precision)."""
    from marsseg.checkpoints import saved_config
    from marsseg.config import inference_settings
    from marsseg.experiments import ensemble_scores

    given = {key: tuple(value) if key == "scales" else value for key, value in inference.items()}
    settings = inference_settings(saved_config(member_dirs[0])).replace(tta=True, whole_frames=False, scales=(1.0,))
    scores = ensemble_scores(
        [Path(d) for d in member_dirs],
        replace(prepared, split=split),
        settings.replace(**given),
        device="cpu",
        checkpoints=checkpoints,
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
    base = load_config(None, overrides={"data.path": args.data})
    prepared = prepare_data(base.data)
    seams_only = getattr(args, "seams_only", False)
    splits = kfold_splits(
        prepared.data, args.folds, val_fraction=base.data.val_fraction, seed=base.data.split_seed, seams_only=seams_only
    )
    plan = fold_plan(args.folds, base.data, prepared, seams_only=seams_only)
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
        out,
        ordered,
        sorted(every_seed),
        args.folds,
        group_ids(prepared.data, seams_only=seams_only),
        plan,
        against=against,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Cross-validate with: python benchmarks/recipes.py --folds K --variants NAME,... (see its --help).",
    )
    parser.parse_args()
    parser.error("nothing to run here; cross-validate with benchmarks/recipes.py --folds K")


if __name__ == "__main__":
    main()
