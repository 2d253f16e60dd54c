"""Run directories and checkpoints: refusing an existing run, resuming after kill -9 exactly, refusing a resume
that would change the run or its data."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from marsseg.checkpoints import load_model
from marsseg.cli import main
from marsseg.engine import fit
from marsseg.errors import UserError
from tests.tiny_runs import FAST, tiny_config


def test_existing_run_dir_is_refused_without_resume_or_force(tmp_path, tiny_npz, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("mine")
    assert main(["train", "--data", str(tiny_npz), "--out", str(run), *FAST, "--epochs", "1"]) == 2
    assert "--resume" in capsys.readouterr().err and (run / "keep.txt").read_text() == "mine"
    assert main(["train", "--data", str(tiny_npz), "--out", str(tmp_path / "new"), "--resume"]) == 2


@pytest.mark.slow
def test_resume_after_kill_finishes_and_matches_an_uninterrupted_run(tmp_path, tiny_npz):
    # On the CPU, where training is deterministic (cuDNN's kernels are not, so on a GPU losses differ by ~1e-4);
    # in bf16, which a resumed run keeps (emulated, slower, on a CPU without native bf16)
    args = ["--data", str(tiny_npz), *FAST, "--epochs", "5", "--set", "threads=1", "--set", "device=cpu"]
    args += ["--set", "precision=bf16"]
    command = [sys.executable, "-m", "marsseg", "train", "--out", str(tmp_path / "killed"), *args]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / "killed" / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    epochs_before = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["epoch"] + 1
    assert epochs_before < 5  # it was killed mid-run
    # resumed with the command that started it, plus --resume
    assert main(["train", "--out", str(tmp_path / "killed"), *args, "--resume"]) == 0
    assert main(["train", "--out", str(tmp_path / "whole"), *args]) == 0
    assert load_model(tmp_path / "killed")[1].precision == "bf16"
    killed = np.genfromtxt(tmp_path / "killed" / "metrics.csv", delimiter=",", names=True)
    whole = np.genfromtxt(tmp_path / "whole" / "metrics.csv", delimiter=",", names=True)
    assert len(killed) == len(whole) == 5
    np.testing.assert_allclose(killed["train_loss"], whole["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(killed["val_miou"], whole["val_miou"], atol=1e-4)


def test_resume_refuses_overrides_and_other_data(tmp_path, tiny_npz, tiny_arrays, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_npz), "--out", str(run), *FAST, "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--epochs", "5"]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "'optim.epochs'" in err and "has 1" in err and "asks for 5" in err
    assert main(["train", "--out", str(run), "--resume", "--set", "model.options={dropout: 0.1}"]) == 2
    assert "'model.options'" in capsys.readouterr().err
    # the run's own values, from flags or a config file, are accepted (a relative path to the same file too)
    (tmp_path / "same.yaml").write_text("optim:\n  epochs: 1\nmodel:\n  width: 8\n")
    relative = os.path.relpath(tiny_npz)
    resumed = ["train", "--data", relative, "--out", str(run), *FAST, "--epochs", "1", "--resume"]
    assert main([*resumed, "--config", str(tmp_path / "same.yaml")]) == 0
    (tmp_path / "other.yaml").write_text("optim:\n  lr: 0.5\n")
    assert main([*resumed, "--config", str(tmp_path / "other.yaml")]) == 2
    assert "'optim.lr'" in capsys.readouterr().err
    changed = dict(tiny_arrays)
    changed["training_set"] = tiny_arrays["training_set"].copy()
    changed["training_set"][0, 0] ^= 1
    from marsseg.data.io import save_npz

    save_npz(tiny_npz.parent / "changed.npz", changed)
    cfg = tiny_config(tiny_npz.parent / "changed.npz")

    state = torch.load(run / "last.pt", weights_only=True)
    state["config"]["data"]["path"] = str(tiny_npz.parent / "changed.npz")
    torch.save(state, run / "last.pt")
    with pytest.raises(UserError, match="differs"):  # the resumed run's data changed under it
        fit(cfg, run, resume=True)
    # a run whose members an older marsseg trained side by side (one last.pt for both) is refused, not restarted
    state["config"]["data"]["path"] = str(tiny_npz)
    state["config"]["model"]["members"] = 2
    torch.save(state, run / "last.pt")
    with pytest.raises(UserError, match="side by side"):
        fit(cfg, run, resume=True)
    assert torch.load(run / "last.pt", weights_only=True)["config"]["model"]["members"] == 2  # nothing overwritten


def test_the_last_checkpoint_rebuilds_the_last_epochs_scored_model_the_ema(tmp_path, tiny_npz):
    fit(tiny_config(tiny_npz, **{"optim.ema_decay": 0.9, "optim.epochs": 2, "optim.keep": "best"}), tmp_path / "run")
    state = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)
    model, _ = load_model(tmp_path / "run", which="last")  # on the CPU, as load_checkpoint maps every run
    ema = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    for name, value in model.state_dict().items():
        assert torch.equal(value, ema[name]), name
    assert any(not torch.equal(state["model"][k], ema[k]) for k in ema)  # the trained weights are not the EMA's
    best_state = torch.load(tmp_path / "run" / "best.pt", map_location="cpu", weights_only=True)
    if best_state["epoch"] == state["epoch"]:  # the last epoch was the best: both files hold one scored model
        assert all(torch.equal(best_state["model"][k], v) for k, v in model.state_dict().items())


def test_a_run_of_another_split_is_not_reused(tmp_path):
    from marsseg.checkpoints import check_same_split
    from marsseg.data.split import Split

    split = Split(np.arange(0, 8), np.arange(8, 10), np.arange(10, 12))
    split.save(tmp_path / "split.json")
    check_same_split(tmp_path, split)  # the same split: reused
    check_same_split(tmp_path / "absent", split)  # nothing recorded yet: a new run
    moved = Split(np.arange(1, 9), np.array([0, 9]), np.arange(10, 12))  # one crop from training to validation
    with pytest.raises(UserError, match="another split"):
        check_same_split(tmp_path, moved)
    assert split.digest() != moved.digest() and split.digest() == Split.load(tmp_path / "split.json").digest()


def test_an_unfinished_vote_run_says_so_and_an_old_side_by_side_ensembles_last_checkpoint_still_loads(tmp_path):
    from marsseg.checkpoints import save_checkpoint
    from marsseg.config import from_dict, load_config, to_dict
    from marsseg.models import Ensemble, build_model

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "best_epoch.pt").write_bytes(b"")  # optim.keep best_and_last, killed before the vote
    with pytest.raises(UserError, match="has not finished"):
        load_model(tmp_path / "run")
    # an older marsseg trained an ensemble's members side by side: its last.pt holds both networks
    old = to_dict(load_config(None, overrides={"model.width": 8, "model.members": 2}))
    del old["optim"]["keep"]
    torch.manual_seed(0)
    ensemble = build_model(from_dict(old))
    (tmp_path / "old").mkdir()
    save_checkpoint(tmp_path / "old" / "last.pt", {"config": old, "model": ensemble.state_dict()})
    loaded, _ = load_model(tmp_path / "old", which="last")
    assert isinstance(loaded, Ensemble) and len(loaded.members) == 2
    assert all(
        torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), ensemble.state_dict().values(), strict=True)
    )


class PlantedPayload:
    """What a crafted model file can carry: unpickling it calls open(path, "w"), which creates the file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_model_file_that_would_run_code_is_refused_and_runs_nothing(tmp_path, tiny_npz, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_npz), "--out", str(run), *FAST, "--epochs", "1"]) == 0
    state = torch.load(run / "best.pt", weights_only=True)
    side_effect = tmp_path / "side_effect"
    state["model"]["payload"] = PlantedPayload(side_effect)
    torch.save(state, run / "best.pt")
    capsys.readouterr()
    for command in (
        ["predict", str(run), "--out", str(tmp_path / "sub.csv")],
        ["evaluate", str(run)],
        ["export", str(run), "--out", str(tmp_path / "model.onnx")],
    ):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(run / "best.pt") in err and "refused" in err, err
        assert not side_effect.exists()  # the payload never ran
    assert not (tmp_path / "sub.csv").exists() and not (tmp_path / "model.onnx").exists()
    torch.load(run / "best.pt", weights_only=False)  # what an unsafe loader would have done
    assert side_effect.exists()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    assert main(["export", str(junk), "--out", str(tmp_path / "junk.onnx")]) == 2
    err = capsys.readouterr().err
    assert "not a readable marsseg checkpoint" in err and "convert-run" not in err  # no nudge to the unsafe loader


def test_every_checkpoint_a_run_writes_loads_with_weights_only(tmp_path, tiny_npz):
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_npz), "--out", str(run), *FAST, "--epochs", "2"]) == 0
    files = sorted(run.glob("*.pt"))
    assert {f.name for f in files} >= {"best.pt", "last.pt"}
    for path in files:
        state = torch.load(path, weights_only=True)
        assert "config" in state
    rng = torch.load(run / "last.pt", weights_only=True)["rng"]
    assert rng["numpy"]["state"]["key"].dtype == torch.int64 and rng["numpy"]["state"]["key"].shape == (624,)


def test_a_run_of_an_earlier_marsseg_is_refused_until_converted(tmp_path, tiny_npz, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_npz), "--out", str(run), *FAST, "--epochs", "2"]) == 0
    state = torch.load(run / "last.pt", weights_only=True)
    np.random.seed(7)
    legacy = np.random.get_state()  # the tuple, with its key array, that earlier versions saved
    state["rng"]["numpy"] = legacy
    torch.save(state, run / "last.pt")
    capsys.readouterr()
    resume = ["train", "--data", str(tiny_npz), "--out", str(run), *FAST, "--epochs", "2", "--resume"]
    assert main(resume) == 2
    err = capsys.readouterr().err
    assert str(run / "last.pt") in err and "convert-run" in err
    assert main(["convert-run", str(run)]) == 0
    assert "trusting" in capsys.readouterr().out
    converted = torch.load(run / "last.pt", weights_only=True)["rng"]["numpy"]
    assert converted["state"]["key"].numpy().astype(np.uint32).tolist() == legacy[1].tolist()
    assert converted["state"]["pos"] == legacy[2]
    assert main(resume) == 0  # a finished run, resumed: it reads last.pt and finishes again
    assert len(np.genfromtxt(run / "metrics.csv", delimiter=",", names=True)) == 2
    assert main(["convert-run", str(tmp_path / "empty")]) == 2
