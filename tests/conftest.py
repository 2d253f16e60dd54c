"""Shared fixtures: a tiny synthetic data set, written once per session, and the real data where present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from marsseg.data.io import save_npz

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mars64.npz"
AI4MARS_SAMPLE = REAL_DATA.parent / "ai4mars_sample"  # 200 AI4Mars frames: images/NAME.jpg, labels/NAME.png


@pytest.fixture(scope="session")
def tiny_arrays() -> dict[str, np.ndarray]:
    from marsseg.data.synth import make_synthetic

    return make_synthetic(n_train=240, n_test=16, seed=3)


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory, tiny_arrays) -> Path:
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    save_npz(path, tiny_arrays)
    return path


@pytest.fixture(scope="session")
def real_npz() -> Path:
    if not REAL_DATA.is_file():
        pytest.skip(f"{REAL_DATA} is absent")
    return REAL_DATA


@pytest.fixture(scope="session")
def ai4mars_sample() -> Path:
    if not (AI4MARS_SAMPLE / "images").is_dir():
        pytest.skip(f"{AI4MARS_SAMPLE} is absent")
    return AI4MARS_SAMPLE


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_npz) -> Path:
    """A small model trained for a few seconds on the tiny data (good enough to predict more than one class), with
    a big-rock scale of 3 so that the scale shows in every inference path. In fp32: an exported graph computes in
    fp32, and the parity tests compare it with the run's own predictions."""
    from marsseg.cli import main

    run = tmp_path_factory.mktemp("runs") / "trained"
    flags = ["--width", "8", "--batch-size", "16", "--epochs", "4", "--lr", "0.01", "--set", "threads=1"]
    flags += ["--set", "big_rock_scale=3", "--set", "optim.ema_decay=0", "--set", "precision=fp32"]
    assert main(["train", "--data", str(tiny_npz), "--out", str(run), *flags]) == 0
    return run


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: the tests' tensors are small, and with two cores shared by pytest and the child processes
    some tests start, more threads only spin against each other. Set before every test, because training in this
    process sets its own count (threads=0 means every core), and results on a CPU depend on the count: a test's
    outcome must not depend on the tests before it."""
    torch.set_num_threads(1)
