"""fit end to end on tiny synthetic data: the run files, the curriculum, rare crops and schedule wired into training,
the EMA model scored; bad input refused with one line."""

import csv
import json

import numpy as np
import pytest
import torch
import yaml

from marsseg.checkpoints import load_model
from marsseg.cli import main
from marsseg.config import ConfigError, inference_settings, load_config
from marsseg.data.augment import crop_around_class
from marsseg.data.sampling import curriculum_indices
from marsseg.engine import fit
from marsseg.models import Ensemble
from marsseg.precision import resolve_device
from marsseg.training import lr_factor
from tests.tiny_runs import FAST, ON_CPU, tiny_config


def test_fit_writes_run_files_and_checkpoint_rebuilds_the_model(tmp_path, tiny_npz):
    result = fit(tiny_config(tiny_npz, big_rock_scale=1.0, **{"optim.keep": "best"}), tmp_path / "run")
    run = tmp_path / "run"
    for name in (
        "config.yaml",
        "split.json",
        "data.json",
        "metrics.csv",
        "curves.png",
        "best.pt",
        "last.pt",
        "metrics.json",
        "confusion.png",
    ):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["test_miou"] <= 1 and set(metrics["test_iou"]) == {"soil", "bedrock", "sand", "big_rock"}
    assert result.epochs_run == 2 and len((run / "metrics.csv").read_text().splitlines()) == 3
    model, cfg = load_model(run)  # rebuilt from the checkpoint alone
    assert cfg.model.width == 8
    from marsseg.data.prepare import prepare_data
    from marsseg.data.split import Split
    from marsseg.evaluation import evaluate

    prepared = prepare_data(cfg.data, split=Split.load(run / "split.json"))
    val = prepared.split.val
    device = resolve_device(cfg.device)  # on the device it was scored on: CPU and GPU differ in the last digits
    rescored = evaluate(
        model.to(device),
        prepared.data.images[val],
        prepared.data.masks[val],
        settings=inference_settings(cfg),
        device=device,
    )
    assert rescored.miou == pytest.approx(metrics["val_miou"], abs=1e-6)
    # the epoch was chosen on the same figure that is reported (same TTA, same decision rule)
    history = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
    assert float(history[metrics["best_epoch"] - 1]["val_miou"]) == pytest.approx(metrics["val_miou"], abs=1e-5)


def test_a_run_keeps_its_last_epoch_or_its_best_and_stops_early_only_when_asked(tmp_path, tiny_npz, monkeypatch):
    results = {}
    # The last of the 4 epochs at 100x the schedule's learning rate, so that it ends below the best on any machine (a
    # tiny run's validation often rises every epoch, and whether it does depends on the machine's arithmetic)
    monkeypatch.setattr(
        "marsseg.engine.lr_factor", lambda done, *rest: lr_factor(done, *rest) * (100.0 if done >= 0.75 else 1.0)
    )

    def run(name, **overrides):
        overrides = {
            "optim.epochs": 4,
            "optim.lr": 0.02,
            "big_rock_scale": 1.0,
            **ON_CPU,  # the two rules' runs are compared epoch by epoch
            # per-epoch validation runs in the training precision, the final figures in inference_precision (fp32):
            # one precision for both, so that the kept epoch's record is its final figure on any CPU
            "precision": "fp32",
            **overrides,
        }
        results[name] = fit(tiny_config(tiny_npz, **overrides), tmp_path / name)
        history = list(csv.DictReader((tmp_path / name / "metrics.csv").read_text().splitlines()))
        return json.loads((tmp_path / name / "metrics.json").read_text()), [float(h["val_miou"]) for h in history]

    assert load_config().optim.keep == "best_and_last" and load_config().optim.early_stopping_patience == 0
    last, history = run("last", **{"optim.keep": "last"})
    assert max(history) > history[-1]  # else this test could not tell the two rules apart
    assert last["epochs_run"] == 4 and last["best_epoch"] == 4
    assert last["val_miou"] == pytest.approx(history[-1], abs=1e-5)
    kept, _ = load_model(tmp_path / "last")
    final, _ = load_model(tmp_path / "last", which="last")  # the last epoch's EMA weights
    for a, b in zip(kept.state_dict().values(), final.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.load(tmp_path / "last" / "best.pt", weights_only=True)["epoch"] == 3  # 0-based: the fourth
    best, best_history = run("best", **{"optim.keep": "best"})
    assert best_history == history  # what is kept does not change training
    assert torch.load(tmp_path / "best" / "best.pt", weights_only=True)["epoch"] == best["best_epoch"] - 1
    assert history[best["best_epoch"] - 1] == pytest.approx(max(history), abs=1e-5)  # metrics.csv rounds to 5 places
    assert best["val_miou"] == pytest.approx(max(history), abs=1e-5)
    # the default: the soft vote of those two networks, the best epoch's and the last's, one training
    both, both_history = run("both", big_rock_scale=0.0)  # the scale chosen on validation, as by default
    assert both_history == history and both["best_epoch"] == [best["best_epoch"], 4]
    # the vote's figure is unscaled, as an epoch's; metrics.json's is at the scale chosen from the same probabilities
    scores = both["big_rock_scale_val_miou"]
    assert results["both"].best_val_miou == pytest.approx(scores["1.0"], abs=1e-5)
    assert both["val_miou"] == pytest.approx(scores[str(both["big_rock_scale"])], abs=1e-5) == results["both"].val.miou
    assert both["val_miou"] == pytest.approx(max(scores.values()), abs=1e-5)
    vote, _ = load_model(tmp_path / "both")
    best_network, _ = load_model(tmp_path / "best")
    assert isinstance(vote, Ensemble) and len(vote.members) == 2
    for member, network in zip(vote.members, (best_network, final), strict=True):
        for a, b in zip(member.state_dict().values(), network.state_dict().values(), strict=True):
            assert torch.equal(a, b)
    x = torch.rand(2, 1, 64, 128)
    with torch.no_grad():
        mean = (best_network(x).softmax(1) + final(x).softmax(1)) / 2
        torch.testing.assert_close(vote(x).softmax(1), mean, atol=1e-5, rtol=1e-4)
    # patience 1 stops after the first epoch that does not beat the best before it
    stale = [e for e in range(1, 4) if history[e] < max(history[:e])]  # clearly below: metrics.csv rounds
    stopped, _ = run("stopped", **{"optim.keep": "best", "optim.early_stopping_patience": 1})
    assert stale and stopped["epochs_run"] == stale[0] + 1
    # a config written before optim.keep kept the best epoch, as its run did
    from marsseg.config import from_dict, to_dict

    old = to_dict(load_config())
    del old["optim"]["keep"]
    old["optim"]["early_stopping_patience"] = 15
    assert from_dict(old).optim.keep == "best"
    del old["augment"]["frame_shift"]  # ... and one written before frame_shift trained without it
    assert from_dict(old).augment.frame_shift == 0.0 and load_config().augment.frame_shift == 0.5
    # ... and given to --config, it is refused rather than stopping early and keeping an unfinished last epoch
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    with pytest.raises(ConfigError, match="optim.keep=best"):
        load_config(str(tmp_path / "old.yaml"))


def test_a_vote_whose_best_epoch_is_its_last_keeps_that_network_once(tmp_path, tiny_npz, capsys):
    run = tmp_path / "run"
    flags = ["--data", str(tiny_npz), *FAST, "--epochs", "1", "--set", "threads=1", "--set", "big_rock_scale=1"]
    assert main(["train", "--out", str(run), *flags]) == 0  # optim.keep "best_and_last", the default
    assert "at epoch 1, both the best on validation and the last, kept" in capsys.readouterr().out
    assert json.loads((run / "metrics.json").read_text())["best_epoch"] == [1, 1]
    kept, cfg = load_model(run)
    final, _ = load_model(run, which="last")
    assert cfg.optim.keep == "best_and_last" and not isinstance(kept, Ensemble)
    assert kept.state_dict().keys() == final.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(kept.state_dict().values(), final.state_dict().values(), strict=True))
    assert main(["predict", str(run), "--out", str(tmp_path / "submission.csv")]) == 0
    assert len((tmp_path / "submission.csv").read_text().splitlines()) == 1 + 16  # the tiny file's 16 test images


def test_bad_config_and_bad_data_exit_2_with_one_line(tmp_path, tiny_npz, capsys):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("optim:\n  lr: -0.1\n")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("optim:\n  learning_rate: 0.1\n")
    wrong_type = tmp_path / "type.yaml"
    wrong_type.write_text("optim:\n  epochs: many\n")
    for path, words in ((bad_yaml, "optim.lr"), (unknown, "learning_rate"), (wrong_type, "optim.epochs")):
        assert main(["train", "--data", str(tiny_npz), "--out", str(tmp_path / "r"), "--config", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err
    assert main(["train", "--data", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "r")]) == 2
    assert "nope.npz" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_config_precedence_defaults_then_file_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.01\n  epochs: 7\nmodel:\n  width: 24\n")
    cfg = load_config(str(path), overrides={"optim.lr": 0.002})
    assert cfg.optim.lr == 0.002 and cfg.optim.epochs == 7 and cfg.model.width == 24
    assert cfg.optim.batch_size == 64  # default untouched


def test_big_rock_scale_turns_close_calls_into_big_rock():
    from marsseg.predict import labels_from_probabilities

    probs = torch.tensor([0.0, 0.3, 0.25, 0.25, 0.2]).reshape(1, 5, 1, 1).repeat(1, 1, 1, 2)
    probs[0, :, 0, 1] = torch.tensor([0.5, 0.4, 0.05, 0.05, 0.0])
    assert labels_from_probabilities(probs).flatten().tolist() == [1, 1]  # never 0, even where 0 is likeliest
    assert labels_from_probabilities(probs, big_rock_scale=2.0).flatten().tolist() == [4, 1]


def test_fit_with_curriculum_rare_crops_and_warm_restarts(tmp_path, tiny_npz, capsys, monkeypatch):
    overrides = {
        "optim.epochs": 3,
        "data.curriculum_epochs": 2,
        "augment.rare_crop": 0.5,
        "optim.scheduler": "cosine_restarts",
    }
    import marsseg.data.dataset
    import marsseg.engine

    calls = {"curriculum": [], "crops": 0}

    def counting_curriculum(*args):
        calls["curriculum"].append(args[3])  # the epoch
        return curriculum_indices(*args)

    def counting_crop(*args):
        calls["crops"] += 1
        return crop_around_class(*args)

    monkeypatch.setattr(marsseg.engine, "curriculum_indices", counting_curriculum)
    monkeypatch.setattr(marsseg.data.dataset, "crop_around_class", counting_crop)
    result = fit(tiny_config(tiny_npz, **overrides), tmp_path / "run", score_test=False)
    history = list(csv.DictReader((tmp_path / "run" / "metrics.csv").read_text().splitlines()))
    assert result.epochs_run == 3 and 0 < result.best_val_miou <= 1
    assert calls["curriculum"] == [0, 1, 2] and calls["crops"] > 0  # both are wired into training
    # The tiny set gives 7 batches per epoch whatever the curriculum draws; the lr logged is that of each epoch's
    # last step: in the warm-up, at the second restart, then at the end of the last cycle.
    expected = [lr_factor((7 * epoch - 1) / 21, 1 / 3, "cosine_restarts") for epoch in (1, 2, 3)]
    assert [float(row["lr"]) / 1e-3 for row in history] == pytest.approx(expected, abs=1e-4)
    assert expected[1] == pytest.approx(1.0)
    flags = ["--set", "data.curriculum_epochs=2", "--set", "data.sampler=weighted"]
    assert main(["train", "--data", str(tiny_npz), "--out", str(tmp_path / "r"), *FAST, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "curriculum" in err and not (tmp_path / "r").exists()


def test_training_on_frames_trains_on_units_and_frame_shift_on_the_training_parts_pairs(tmp_path, tiny_npz, capsys):
    from marsseg.data.prepare import prepare_data
    from marsseg.data.split import frame_halves, frames_among
    from marsseg.distributed import Ranks
    from marsseg.engine import _training_loader

    cfg = tiny_config(tiny_npz, **{"data.train_on_frames": True, "augment.frame_shift": 0.0})
    prepared = prepare_data(cfg.data)
    dataset, _, loader = _training_loader(cfg, prepared, Ranks(0, 1))
    images, masks = next(iter(loader))
    assert images.shape[-2:] == (128, 128) and masks.shape[-2:] == (128, 128)
    assert (masks[:, :32] == 0).float().mean() > 0.9  # the tiny set's crops come from no frame: mostly centred alone
    below = frame_halves(prepared.data.images[prepared.split.train])  # pairs among the training crops only
    assert len(dataset.images) == len(prepared.split.train) - (below >= 0).sum()  # one unit a frame, one a lone crop
    result = fit(cfg, tmp_path / "run", score_test=False)
    assert result.epochs_run == cfg.optim.epochs and 0 < result.best_val_miou <= 1
    shifting = _training_loader(tiny_config(tiny_npz, **{"augment.frame_shift": 0.5}), prepared, Ranks(0, 1))[0]
    assert shifting.frame_shift == 0.5 and shifting.images.shape[1:] == (64, 128)  # crops, not units
    assert np.array_equal(shifting.below, frames_among(prepared.data.images, prepared.split.train))
    tops = np.flatnonzero(shifting.below >= 0)
    assert len(tops) > 0  # the tiny set's training part holds a few crops that frame_halves pairs
    assert np.isin(tops, prepared.split.train).all() and np.isin(shifting.below[tops], prepared.split.train).all()
    assert (
        _training_loader(tiny_config(tiny_npz, **{"augment.frame_shift": 0.0}), prepared, Ranks(0, 1))[0].below == -1
    ).all()
    for flags, field in (
        (["--set", "augment.frame_shift=0", "--semi", "1"], "semi.weight"),
        ([], "augment.frame_shift"),  # on by default, and units have no seam to shift across
    ):
        args = ["--out", str(tmp_path / "r"), *FAST, "--set", "data.train_on_frames=true", *flags]
        assert main(["train", "--data", str(tiny_npz), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and field in err and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_ema_model_is_scored_and_reasonable(tmp_path, tiny_npz):
    plain = fit(
        tiny_config(tiny_npz, **{"optim.epochs": 3, "optim.ema_decay": 0.0}), tmp_path / "plain", score_test=False
    )
    averaged = fit(
        tiny_config(tiny_npz, **{"optim.epochs": 3, "optim.ema_decay": 0.9}), tmp_path / "ema", score_test=False
    )
    assert averaged.best_val_miou > 0.8 * plain.best_val_miou > 0


def test_unknown_model_or_option_is_a_config_error_before_anything_is_written(tmp_path, tiny_npz, capsys):
    for flags, words in ((["--model", "vit"], "unknown model 'vit'"), (["--set", "model.options={depth: 3}"], "depth")):
        assert main(["train", "--data", str(tiny_npz), "--out", str(tmp_path / "r"), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err
        assert not (tmp_path / "r").exists()


def test_more_bad_input_exits_2_with_one_line(tmp_path, tiny_npz, capsys):
    run = tmp_path / "file_not_dir"
    run.write_text("x")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    torch.save({"weights": 1}, foreign / "best.pt")
    cases = [
        (["train", "--data", str(tiny_npz), "--out", str(tmp_path / "r"), "--set", "optim.lr=["], "not a YAML value"),
        (["train", "--data", str(tiny_npz), "--out", str(tmp_path / "r"), "--set", "optim.lr=.nan"], "finite"),
        (
            ["train", "--data", str(tiny_npz), "--out", str(tmp_path / "r"), "--set", "loss.manual_weights=[1, 2]"],
            "manual_weights",
        ),
        (
            ["train", "--data", str(tiny_npz), "--out", str(tmp_path / "r"), "--set", "augment.rare_crop_min_scale=0"],
            "rare_crop_min_scale",
        ),
        (["train", "--data", str(tiny_npz), "--out", str(run)], "not a directory"),
        (["train", "--data", str(tiny_npz), "--out", str(tmp_path / "r"), "--members", "0"], "model.members"),
        (["data", "split", str(tiny_npz), "--val-fraction", "1.5"], "val_fraction"),
        (["data", "synth", "--out", str(tmp_path / "s.npz"), "--seed", "-1"], "--seed"),
        (["predict", str(foreign), "--out", str(tmp_path / "p.csv")], "not a marsseg checkpoint"),
        (["evaluate", str(tmp_path)], "best.pt"),
    ]
    for argv, words in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, (argv, err)
    assert run.read_text() == "x"


def test_an_ensemble_run_trains_its_members_as_runs_of_their_own_and_its_vote_is_one_model(tmp_path, tiny_npz, capsys):
    from marsseg.data.prepare import prepare_data
    from marsseg.data.split import Split
    from marsseg.evaluation import evaluate
    from marsseg.models import Ensemble
    from marsseg.predict import read_submission

    run, alone = tmp_path / "run", tmp_path / "alone"
    flags = ["--data", str(tiny_npz), *FAST, "--epochs", "2", "--set", "threads=1", "--set", "big_rock_scale=1"]
    flags += ["--set", "device=cpu"]  # member 1 is compared with a run of its own (ON_CPU)
    assert main(["train", "--out", str(run), *flags, "--members", "2", "--seed", "3"]) == 0
    said = capsys.readouterr().out
    assert "member_1 (2 of 2, seed 4)" in said and "member_1: validation mIoU" in said
    kept = [torch.load(run / f"member_{k}" / "best.pt", weights_only=True)["epochs"] for k in range(2)]
    for k, (best, last) in enumerate(kept):  # each member keeps the vote of its best and last epochs, or one network
        words = (
            "at epoch 2, both the best on validation and the last, kept"
            if best == last
            else f"for the vote of epoch {best} (the best on validation) and epoch 2 (the last), kept"
        )
        assert last == 2 and f"member_{k}: validation mIoU" in said and words in said
    assert "soft vote of 2 members: validation mIoU" in said and "member_K/" in said
    # member 1 is the run a single network with seed 3 + 1 makes, on the same split
    assert main(["train", "--out", str(alone), *flags, "--members", "1", "--seed", "4"]) == 0
    member = np.genfromtxt(run / "member_1" / "metrics.csv", delimiter=",", names=True)
    single = np.genfromtxt(alone / "metrics.csv", delimiter=",", names=True)
    np.testing.assert_allclose(member["train_loss"], single["train_loss"], rtol=1e-5)
    assert (run / "member_1" / "split.json").read_text() == (alone / "split.json").read_text()

    model, cfg = load_model(run)
    assert isinstance(model, Ensemble) and cfg.model.members == 2 and cfg.seed == 3
    saved = yaml.safe_load((run / "config.yaml").read_text())  # what "auto" resolved to, as a single run's says
    assert saved["precision"] == cfg.precision != "auto" and saved["model"]["members"] == 2
    for k, net in enumerate(model.members):  # each member's kept model, as its own run kept it
        own = load_model(run / f"member_{k}")[0]
        assert isinstance(net, Ensemble) == (kept[k][0] != kept[k][1]) == isinstance(own, Ensemble)
        assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), own.state_dict().values(), strict=True))
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["best_epoch"]) == 2 and metrics["epochs_run"] == 4
    prepared = prepare_data(cfg.data, split=Split.load(run / "split.json"))
    val = prepared.split.val
    images, masks = prepared.data.images[val], prepared.data.masks[val]
    rescored = evaluate(model, images, masks, settings=inference_settings(cfg))
    assert rescored.miou == pytest.approx(metrics["val_miou"], abs=1e-6)  # the soft vote is what was scored
    assert f"soft vote of 2 members: validation mIoU {metrics['val_miou']:.4f}" in said  # scale 1: the same figure
    assert main(["predict", str(run), "--out", str(tmp_path / "sub.csv")]) == 0
    ids, labels = read_submission(tmp_path / "sub.csv")
    assert len(ids) == len(prepared.data.test_images) and set(labels.ravel().tolist()) <= {0, 1, 2, 3, 4}

    # interrupted before member 1 and the vote: --resume keeps member 0 and makes the same vote
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for name in ("best.pt", "metrics.json"):
        (run / name).unlink()
    import shutil

    shutil.rmtree(run / "member_1")
    member_0 = (run / "member_0" / "last.pt").stat().st_mtime_ns
    assert main(["train", "--out", str(run), *flags, "--members", "2", "--seed", "3", "--resume"]) == 0
    assert (run / "member_0" / "last.pt").stat().st_mtime_ns == member_0  # not trained again
    after = load_model(run)[0].state_dict()
    assert all(torch.allclose(before[k].float(), after[k].float(), atol=1e-6) for k in before)

    # --force replaces the run: its members' folders go, anything else of the user's stays
    (run / "member_notes").mkdir()
    assert main(["train", "--out", str(run), *flags, "--epochs", "1", "--force"]) == 0
    assert sorted(p.name for p in run.glob("member_*")) == ["member_notes"] and (run / "last.pt").is_file()


def test_exponent_without_a_point_is_a_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-3\n")  # YAML reads this as a string
    assert load_config(str(path)).optim.lr == 0.001
