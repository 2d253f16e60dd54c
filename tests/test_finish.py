"""Finishing a run: the big-rock scale chosen on validation, scored with and stored in the best checkpoint."""

import json

import pytest

from marsseg.checkpoints import load_model
from marsseg.engine import fit
from marsseg.evaluation import BIG_ROCK_SCALES
from tests.tiny_runs import tiny_config


def test_scale_chosen_on_validation_is_stored_in_the_checkpoint(tmp_path, tiny_npz):
    fit(tiny_config(tiny_npz, **{"optim.epochs": 1, "big_rock_scale": 0.0}), tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["big_rock_scale"] in BIG_ROCK_SCALES
    assert len(metrics["big_rock_scale_val_miou"]) == len(BIG_ROCK_SCALES)
    assert metrics["val_miou"] == pytest.approx(max(metrics["big_rock_scale_val_miou"].values()), abs=1e-5)
    assert load_model(tmp_path / "run")[1].big_rock_scale == metrics["big_rock_scale"]
