"""Tuning: workers share one SQLite study without losing or duplicating trials, and a killed worker's study resumes."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

optuna = pytest.importorskip("optuna")


def tune_command(tiny_npz, out, trials, epochs=1):
    return [
        sys.executable,
        "-m",
        "marsseg",
        "tune",
        "--data",
        str(tiny_npz),
        "--out",
        str(out),
        "--trials",
        str(trials),
        "--epochs",
        str(epochs),
        "--models",
        "res_unet",
        "--widths",
        "8",
        "--width",
        "8",
        "--batch-size",
        "32",
        "--set",
        "threads=1",
        "--heartbeat",
        "1",
        "--members",
        "3",
    ]


# Past the grace period of a dead worker's heartbeat (2 heartbeats of 1 s), plus the 1-second resolution of the
# timestamps that SQLite compares, plus a margin.
GRACE_SECONDS = 4.0


def trial_states(out):
    with sqlite3.connect(f"file:{out / 'study.db'}?mode=ro", uri=True) as db:  # read-only: never creates it
        return db.execute("select number, state from trials order by number").fetchall()


@pytest.mark.slow
def test_two_workers_finish_n_trials_between_them(tmp_path, tiny_npz):
    out = tmp_path / "study"
    out.mkdir()
    workers = [
        subprocess.Popen(tune_command(tiny_npz, out, 4), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for worker in workers:
        assert worker.wait(timeout=300) == 0, worker.stderr.read().decode()[-2000:]
        assert "Warning" not in worker.stderr.read().decode()  # Optuna's experimental-API noise is silenced
    states = trial_states(out)
    assert [number for number, _ in states] == [0, 1, 2, 3]  # none lost, none duplicated, none extra
    assert all(state in ("COMPLETE", "PRUNED") for _, state in states)
    assert sorted(p.name for p in (out / "trials").iterdir()) == [f"trial_000{i}" for i in range(4)]
    assert (out / "best.yaml").is_file() and (out / "history.png").is_file()
    assert len((out / "trials.csv").read_text().splitlines()) == 5
    # best.yaml is a config that marsseg train accepts
    from marsseg.config import load_config

    study = optuna.load_study(study_name="marsseg", storage=f"sqlite:///{out / 'study.db'}")
    first = study.trials[0].params  # the recipe the study starts from is measured first
    assert first["width"] == 8 and first["batch_size"] == 32 and first["lr"] == pytest.approx(load_config().optim.lr)

    assert load_config(str(out / "best.yaml")).model.width == 8
    # a trial trains one network; best.yaml keeps the base's members
    assert not any((out / "trials").glob("*/member_*")) and (out / "trials" / "trial_0000" / "last.pt").is_file()
    assert load_config(str(out / "best.yaml")).model.members == 3


@pytest.mark.slow
def test_killed_worker_keeps_finished_trials_and_the_study_resumes(tmp_path, tiny_npz):
    out = tmp_path / "study"
    out.mkdir()
    worker = subprocess.Popen(
        tune_command(tiny_npz, out, 3, epochs=3), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            if any(s == "COMPLETE" for _, s in trial_states(out)):
                break
        except sqlite3.OperationalError:  # the worker has not created the database or its tables yet
            pass
        time.sleep(0.2)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    finished_before = [(n, s) for n, s in trial_states(out) if s == "COMPLETE"]
    assert finished_before
    time.sleep(GRACE_SECONDS)
    assert subprocess.run(tune_command(tiny_npz, out, 3, epochs=3), capture_output=True).returncode == 0
    states = trial_states(out)
    assert all(item in states for item in finished_before)  # intact
    assert sum(s in ("COMPLETE", "PRUNED") for _, s in states) == 3
    assert all(s in ("COMPLETE", "PRUNED", "FAIL") for _, s in states)  # the killed one is marked failed


def test_the_base_recipe_is_a_point_of_the_search_space_only_when_it_lies_inside():
    from marsseg.config import load_config
    from marsseg.tune import base_params, suggest_config

    base = load_config()
    params = base_params(base)
    assert params["model"] == base.model.name and params["oversample_factor"] == base.data.oversample_factor
    assert suggest_config(optuna.trial.FixedTrial(params), base) == base  # the point reproduces the recipe
    assert base_params(base, widths=(16,)) is None
    assert base_params(load_config(None, overrides={"optim.batch_size": 48})) is None


def test_a_trial_claimed_by_a_worker_that_dies_at_once_is_failed_and_replaced(tmp_path):
    from marsseg.tune import claim_trial, open_study

    study, rdb = open_study(tmp_path, None, "s", seed=0, heartbeat=1)
    dead = claim_trial(study, rdb, 2, tmp_path)  # its worker dies before any heartbeat thread starts
    time.sleep(GRACE_SECONDS)
    claimed = claim_trial(study, rdb, 2, tmp_path)
    states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
    assert states == {dead.number: "FAIL", claimed.number: "RUNNING"}
    assert claim_trial(study, rdb, 2, tmp_path) is not None  # the failed trial does not count towards the 2


def test_a_study_continues_only_with_the_choices_it_started_with():
    from marsseg.errors import UserError
    from marsseg.tune import check_same_choices

    study = optuna.create_study()
    study.add_trial(
        optuna.trial.create_trial(
            params={"model": "unet", "width": 16},
            distributions={
                "model": optuna.distributions.CategoricalDistribution(["res_unet", "deeplab", "unet"]),
                "width": optuna.distributions.CategoricalDistribution([16, 32]),
            },
            value=0.5,
        )
    )
    check_same_choices(study, ("res_unet", "deeplab", "unet"), (16, 32))  # the same: fine
    with pytest.raises(UserError, match="started with --models res_unet,deeplab,unet; found res_unet,deeplab"):
        check_same_choices(study, ("res_unet", "deeplab"), (16, 32))
    with pytest.raises(UserError, match="--widths 16,32; found 16,24"):
        check_same_choices(study, ("res_unet", "deeplab", "unet"), (16, 24))


def test_a_trial_asked_by_a_worker_killed_before_its_first_heartbeat_is_failed_and_replaced(tmp_path):
    from marsseg.tune import claim_trial, open_study

    study, rdb = open_study(tmp_path, None, "s", seed=0, heartbeat=1)
    orphan = study.ask()  # as if the worker died between ask() and the first beat claim_trial records
    claimed = claim_trial(study, rdb, 2, tmp_path)  # too young to be judged: it still counts as running
    states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
    assert states == {orphan.number: "RUNNING", claimed.number: "RUNNING"}
    assert claim_trial(study, rdb, 2, tmp_path) is None
    time.sleep(GRACE_SECONDS)
    replacement = claim_trial(study, rdb, 2, tmp_path)
    states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
    assert states[orphan.number] == "FAIL" and states[replacement.number] == "RUNNING"


def test_a_study_continues_only_on_the_split_it_started_with(tmp_path):
    import numpy as np

    from marsseg.data.split import Split
    from marsseg.errors import UserError
    from marsseg.tune import check_same_split_for_study, open_study

    first = Split(np.arange(0, 8), np.arange(8, 10), np.arange(10, 12))
    other = Split(np.arange(1, 9), np.array([0, 9]), np.arange(10, 12))
    study, _ = open_study(tmp_path, None, "s", seed=0, heartbeat=1)
    check_same_split_for_study(study, first)  # a new study records it
    study.enqueue_trial({"lr": 1e-3})
    check_same_split_for_study(study, first)
    with pytest.raises(UserError, match="another split"):
        check_same_split_for_study(study, other)
    old, _ = open_study(tmp_path, None, "old", seed=0, heartbeat=1)
    old.enqueue_trial({"lr": 1e-3})  # trials, but no split recorded: started before studies recorded it
    with pytest.raises(UserError, match="before studies recorded their split"):
        check_same_split_for_study(old, first)


def test_a_study_scores_every_trial_at_the_same_kept_epoch(tmp_path):
    from marsseg.errors import UserError
    from marsseg.tune import check_same_kept_epoch_for_study, open_study

    study, _ = open_study(tmp_path, None, "s", seed=0, heartbeat=1)
    check_same_kept_epoch_for_study(study, "last")  # a new study records its rule
    assert study.user_attrs["keep"] == "last"
    study.enqueue_trial({"lr": 1e-3})
    check_same_kept_epoch_for_study(study, "last")
    with pytest.raises(UserError, match="with optim.keep last, this command with best"):
        check_same_kept_epoch_for_study(study, "best")
    old, _ = open_study(tmp_path, None, "old", seed=0, heartbeat=1)
    old.enqueue_trial({"lr": 1e-3})  # trials, no rule recorded: started before optim.keep, at their best epochs
    check_same_kept_epoch_for_study(old, "best")
    with pytest.raises(UserError, match="with optim.keep best, this command with last"):
        check_same_kept_epoch_for_study(old, "last")
