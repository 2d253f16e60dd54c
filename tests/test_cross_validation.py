"""benchmarks/cross_validation.py: every labeled crop scored once, out of fold, and pooled."""

import json
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

from marsseg.config import load_config
from marsseg.data.prepare import prepare_data
from marsseg.errors import UserError
from marsseg.metrics import mean_iou
from tests.tiny_runs import ON_CPU, tiny_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from cross_validation import cross_validate, fold_plan, member_seed, pooled_matrices  # noqa: E402


def test_cross_validation_pools_every_crop_out_of_fold_and_compares_in_pairs(tmp_path, tiny_npz, capsys):
    def variant_config(args, name, seed):
        overrides = {"optim.epochs": 1, "seed": seed, "big_rock_scale": 1.0}
        if name == "no_ema":
            overrides["optim.ema_decay"] = 0.0
        if name in ("student", "orphan"):  # offline self-training, teachers named by variant
            overrides.update({"semi.weight": 1.0, "semi.batch_size": 8, "semi.loss": "recipe"})
            overrides["semi.teachers"] = ["default"] if name == "student" else ["never_run"]
        return tiny_config(tiny_npz, **overrides)

    args = Namespace(out=str(tmp_path), data=str(tiny_npz), folds=2, variants="default,no_ema", first_seed=0, seeds=1)
    cross_validate(args, ["default", "no_ema"], variant_config)
    prepared = prepare_data(tiny_config(tiny_npz).data)
    samples, plan = len(prepared.data), fold_plan(2, tiny_config(tiny_npz).data, prepared)
    default, minutes = pooled_matrices(tmp_path, "default", 0, 2, samples, plan)
    held_out = [np.load(tmp_path / f"default_seed0_fold{k}" / "out_of_fold.npz")["indices"] for k in range(2)]
    assert sorted(np.concatenate(held_out).tolist()) == list(range(samples))  # each crop once
    assert (default.sum(axis=(1, 2)) == 64 * 128).all()  # and every crop's matrix counts its pixels
    assert minutes > 0
    table = (tmp_path / "cv.md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert f"{mean_iou(default.sum(axis=0)):.3f}" in rows["default"]
    no_ema, _ = pooled_matrices(tmp_path, "no_ema", 0, 2, samples, plan)
    assert f"{mean_iou(no_ema.sum(axis=0)) - mean_iou(default.sum(axis=0)):+.3f}" in rows["no_ema"]
    assert (tmp_path / "cv.png").stat().st_size > 0  # the paired differences, plotted
    # --against sets the row the others are paired with
    cross_validate(Namespace(**vars(args), against="no_ema"), ["default", "no_ema"], variant_config)
    table = (tmp_path / "cv.md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert "vs no_ema (90 %)" in table
    assert f"{mean_iou(default.sum(axis=0)) - mean_iou(no_ema.sum(axis=0)):+.3f}" in rows["default"]
    with pytest.raises(SystemExit, match="--against nothing"):
        cross_validate(Namespace(**vars(args), against="nothing"), ["default", "no_ema"], variant_config)
    # a re-run trains nothing: every fold has finished
    before = (tmp_path / "default_seed0_fold0" / "out_of_fold.npz").stat().st_mtime
    cross_validate(args, ["default", "no_ema"], variant_config)
    assert (tmp_path / "default_seed0_fold0" / "out_of_fold.npz").stat().st_mtime == before
    # folds made under another plan (here 2 folds, asked for 3) are refused, never pooled
    with pytest.raises(UserError, match="made for 2 folds"):
        cross_validate(Namespace(**{**vars(args), "folds": 3}), ["default", "no_ema"], variant_config)
    # a student's teachers are the named variant's models of the same fold and seed, never another fold's
    cross_validate(Namespace(**{**vars(args), "variants": "student"}), ["default", "student"], variant_config)
    for fold in range(2):
        saved = load_config(str(tmp_path / f"student_seed0_fold{fold}" / "config.yaml"))
        assert saved.semi.teachers == [str(tmp_path / f"default_seed0_fold{fold}")]
    with pytest.raises(SystemExit, match="teacher never_run of this fold has not finished"):
        cross_validate(Namespace(**{**vars(args), "variants": "orphan"}), ["orphan"], variant_config)
    # a soft-voting ensemble row trains nothing: its members' probabilities, averaged, scored out of fold
    vote_args = Namespace(**{**vars(args), "variants": "vote"})
    cross_validate(vote_args, ["default", "no_ema", "vote"], variant_config, {"vote": ["default", "no_ema"]})
    assert not (tmp_path / "vote_seed0_fold0" / "best.pt").exists()
    vote, vote_minutes = pooled_matrices(tmp_path, "vote", 0, 2, samples, plan)
    assert (vote.sum(axis=(1, 2)) == 64 * 128).all()
    assert vote_minutes == pytest.approx(minutes + pooled_matrices(tmp_path, "no_ema", 0, 2, samples, plan)[1])
    assert f"{mean_iou(vote.sum(axis=0)):.3f}" in (tmp_path / "cv.md").read_text()


def test_a_continued_fold_carries_on_where_early_stopping_ended_the_finished_run(tmp_path, tiny_npz):
    def variant_config(args, name, seed):
        patience = {"patient": 9, "impatient": 1}[name]
        overrides = {"optim.epochs": 5, "optim.early_stopping_patience": patience, "optim.keep": "best", "seed": seed}
        return tiny_config(tiny_npz, **overrides, **ON_CPU)  # the carried-on run is compared with a fresh one

    args = Namespace(
        out=str(tmp_path), data=str(tiny_npz), folds=2, first_seed=0, seeds=1, only_folds="0", against="impatient"
    )
    cross_validate(Namespace(**vars(args), variants="impatient"), ["impatient"], variant_config)
    stopped = json.loads((tmp_path / "impatient_seed0_fold0" / "metrics.json").read_text())
    assert stopped["epochs_run"] < 5  # early stopping ended it
    continued = Namespace(**vars(args), variants="patient")
    cross_validate(continued, ["impatient", "patient"], variant_config, continues={"patient": "impatient"})
    fresh = Namespace(**{**vars(args), "out": str(tmp_path / "fresh"), "against": "patient"}, variants="patient")
    # no finished source in that directory: the continued variant's fold is trained from scratch
    cross_validate(fresh, ["patient"], variant_config, continues={"patient": "impatient"})
    assert not (tmp_path / "fresh" / "impatient_seed0_fold0").exists()
    carried_on = json.loads((tmp_path / "patient_seed0_fold0" / "metrics.json").read_text())
    fresh = json.loads((tmp_path / "fresh" / "patient_seed0_fold0" / "metrics.json").read_text())
    assert carried_on["epochs_run"] == fresh["epochs_run"] == 5
    assert carried_on["test_miou"] == fresh["test_miou"]  # the same run as one trained with that patience from scratch
    # ... carried on, not trained again: the epochs before the stop are the source's own records, seconds included
    source_rows = (tmp_path / "impatient_seed0_fold0" / "metrics.csv").read_text().splitlines()
    carried_rows = (tmp_path / "patient_seed0_fold0" / "metrics.csv").read_text().splitlines()
    assert carried_rows[: len(source_rows)] == source_rows and len(carried_rows) == 6
    saved = load_config(str(tmp_path / "patient_seed0_fold0" / "config.yaml"))
    assert saved.optim.early_stopping_patience == 9
    for name in ("impatient", "patient"):
        assert (tmp_path / f"{name}_seed0_fold0" / "out_of_fold.npz").is_file()
    # a source that differs in more than patience and threads is refused, before anything is copied
    with pytest.raises(UserError, match="optim.epochs"):
        cross_validate(
            Namespace(**vars(args), variants="longer"),
            ["longer"],
            lambda a, n, s: tiny_config(tiny_npz, **{"optim.epochs": 6, "optim.keep": "best", "seed": s}, **ON_CPU),
            continues={"longer": "impatient"},
        )
    assert not (tmp_path / "longer_seed0_fold0").exists()


def test_an_ensemble_member_may_name_a_seed_offset():
    assert member_seed("default", 3) == ("default", 3, "best")
    assert member_seed("default@1", 3) == ("default", 4, "best")
    assert member_seed("cutmix@2:last", 0) == ("cutmix", 2, "last")
    assert member_seed("default:last", 1) == ("default", 1, "last")


def test_folds_grouped_by_seam_pairs_alone_keep_the_plan_their_finished_folds_were_saved_under(tiny_npz):
    data_cfg = tiny_config(tiny_npz).data
    prepared = prepare_data(data_cfg)
    old = f"2 folds, split seed {data_cfg.split_seed}, val {data_cfg.val_fraction}, data {prepared.fingerprint}"
    assert fold_plan(2, data_cfg, prepared, seams_only=True) == old  # the plan string of before 2026-11-29
    assert fold_plan(2, data_cfg, prepared) != old  # folds of today's grouping are never taken for those


def test_recipes_refuses_epochs_that_would_replace_a_variants_own(tmp_path):
    import subprocess

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "recipes.py"
    argv = [sys.executable, str(script), "--out", str(tmp_path / "out"), "--epochs", "5"]
    refused = subprocess.run([*argv, "--variants", "default,cutmix_27_epochs"], capture_output=True, text=True)
    assert refused.returncode == 2
    assert "cutmix_27_epochs" in refused.stderr and "--epochs would replace" in refused.stderr
    assert not (tmp_path / "out").exists()


def test_snapshots_of_a_fold_are_its_scored_model_after_every_nth_epoch_and_vote_as_members(tmp_path, tiny_npz):
    import torch

    from marsseg.checkpoints import load_model

    def variant_config(args, name, seed):
        return tiny_config(tiny_npz, **{"optim.epochs": 4, "optim.keep": "best", "seed": seed, "big_rock_scale": 1.0})

    args = Namespace(
        out=str(tmp_path),
        data=str(tiny_npz),
        folds=2,
        variants="run",
        first_seed=0,
        seeds=1,
        snapshot_every=2,
        against="run",
    )
    cross_validate(args, ["run"], variant_config)
    fold = tmp_path / "run_seed0_fold0"
    assert sorted(p.name for p in fold.glob("epoch_*.pt")) == ["epoch_2.pt", "epoch_4.pt"]
    last, _ = load_model(fold, which="last")
    second, fourth = (
        load_model(fold, which="epoch_2")[0].state_dict(),
        load_model(fold, which="epoch_4")[0].state_dict(),
    )
    assert all(torch.equal(a, b) for a, b in zip(fourth.values(), last.state_dict().values(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(second.values(), fourth.values(), strict=True))
    # a row may vote a snapshot with the last epoch
    vote_args = Namespace(**{**vars(args), "variants": "early_and_last"})
    rows = {"early_and_last": ["run:epoch_2", "run:last"]}
    cross_validate(vote_args, ["run", "early_and_last"], variant_config, rows)
    members = json.loads((tmp_path / "early_and_last_seed0_fold1" / "members.json").read_text())
    assert members["checkpoints"] == ["epoch_2", "last"]
    with pytest.raises(ValueError, match="epoch_N"):
        load_model(fold, which="epoch_two")
