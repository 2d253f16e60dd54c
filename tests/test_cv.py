"""marsseg cv: configurations cross-validated on the same folds, pooled out of fold, compared in pairs, resumable."""

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from marsseg.cli import main
from marsseg.config import load_config
from marsseg.cv import fold_plan, pooled_matrices
from marsseg.data.prepare import prepare_data
from marsseg.metrics import iou_per_class, mean_iou

TINY = ["--set", "model.width=8", "--set", "optim.batch_size=32", "--set", "threads=1", "--set", "tta_scales=[1.0]"]


def configs(tmp_path):
    (tmp_path / "a.yaml").write_text("big_rock_scale: 1.0\n")
    (tmp_path / "b.yaml").write_text("big_rock_scale: 1.0\noptim:\n  ema_decay: 0.0\n")
    return ["--config", str(tmp_path / "a.yaml"), "--config", str(tmp_path / "b.yaml")]


def test_cv_pools_every_crop_out_of_fold_and_compares_with_the_first(tmp_path, tiny_npz, capsys):
    out = tmp_path / "cv"
    argv = ["cv", "--data", str(tiny_npz), "--out", str(out), "--folds", "2", "--epochs", "1", *configs(tmp_path)]
    assert main([*argv, *TINY]) == 0
    assert "differences from a" in capsys.readouterr().out
    cfg = load_config(str(out / "a.yaml"))
    prepared = prepare_data(load_config(None, overrides={"data.path": str(tiny_npz)}).data)
    plan = fold_plan(2, cfg.data, prepared)
    a, _ = pooled_matrices(out, "a", 0, 2, len(prepared.data), plan)
    b, _ = pooled_matrices(out, "b", 0, 2, len(prepared.data), plan)
    assert (a.sum(axis=(1, 2)) == 64 * 128).all()  # every crop scored once, all its pixels
    with open(out / "cv.csv") as handle:
        rows = {row["name"]: row for row in csv.DictReader(handle)}
    assert float(rows["a"]["miou"]) == pytest.approx(mean_iou(a.sum(axis=0)))
    assert float(rows["b"]["big_rock"]) == pytest.approx(iou_per_class(b.sum(axis=0))[3], nan_ok=True)
    difference = mean_iou(b.sum(axis=0)) - mean_iou(a.sum(axis=0))
    assert float(rows["b"]["difference"]) == pytest.approx(difference)
    assert float(rows["b"]["difference_low"]) <= difference <= float(rows["b"]["difference_high"])
    assert float(rows["a"]["low"]) <= float(rows["a"]["miou"]) <= float(rows["a"]["high"])
    assert rows["a"]["difference"] == ""  # the first row is the one the others are compared with
    assert f"{difference:+.3f}" in (out / "cv.md").read_text() and (out / "cv.png").stat().st_size > 0
    # rows share folds: one whose data section differs is refused before anything trains
    (tmp_path / "c.yaml").write_text("data:\n  val_fraction: 0.2\n")
    assert (
        main(
            [
                "cv",
                "--out",
                str(tmp_path / "other"),
                "--config",
                str(tmp_path / "a.yaml"),
                "--config",
                str(tmp_path / "c.yaml"),
                *TINY,
            ]
        )
        == 2
    )
    assert "data.*" in capsys.readouterr().err and not (tmp_path / "other").exists()
    # a row whose recipe changed is refused: its folds would pool two recipes
    (tmp_path / "b.yaml").write_text("optim:\n  ema_decay: 0.5\n")
    assert main([*argv, *TINY]) == 2
    assert "another config" in capsys.readouterr().err


@pytest.mark.slow
def test_cv_resumes_after_a_kill_at_the_fold_it_reached(tmp_path, tiny_npz, capsys):
    out = tmp_path / "cv"
    argv = ["cv", "--data", str(tiny_npz), "--out", str(out), "--folds", "3", "--epochs", "2", *TINY]
    argv += ["--set", "device=cpu"]
    process = subprocess.Popen(
        [sys.executable, "-m", "marsseg", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    first = out / "default_seed0_fold0" / "out_of_fold.npz"
    while not (first.exists() and (out / "default_seed0_fold1" / "last.pt").exists()) and time.time() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert first.exists() and not (out / "cv.md").exists()  # killed in the second fold
    finished_at = first.stat().st_mtime
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "default seed 0 fold 1 of 3: finished before, kept" in said and "fold 2 of 3 (resumed)" in said
    assert first.stat().st_mtime == finished_at  # the finished fold was kept, not trained again
    assert all((out / f"default_seed0_fold{k}" / "out_of_fold.npz").is_file() for k in range(3))
    table = (out / "cv.md").read_text()
    assert "| default | 1 |" in table
    killed = np.genfromtxt(out / "default_seed0_fold1" / "metrics.csv", delimiter=",", names=True)
    assert len(killed) == 2  # the killed fold resumed and trained its two epochs, no more
