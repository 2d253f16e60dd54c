"""Finishing a run: the big-rock scale chosen on validation, scored with and stored in the best checkpoint."""

import json

import pytest

from marsseg.checkpoints import load_model
from marsseg.config import inference_settings
from marsseg.data.prepare import prepare_data
from marsseg.data.split import Split
from marsseg.engine import fit
from marsseg.evaluation import BIG_ROCK_SCALES, evaluate, miou_interval
from tests.tiny_runs import ON_CPU, tiny_config


def test_scale_chosen_on_validation_is_stored_in_the_checkpoint(tmp_path, tiny_npz):
    fit(tiny_config(tiny_npz, **{"optim.epochs": 1, "big_rock_scale": 0.0}), tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["big_rock_scale"] in BIG_ROCK_SCALES
    assert len(metrics["big_rock_scale_val_miou"]) == len(BIG_ROCK_SCALES)
    assert metrics["val_miou"] == pytest.approx(max(metrics["big_rock_scale_val_miou"].values()), abs=1e-5)
    assert load_model(tmp_path / "run")[1].big_rock_scale == metrics["big_rock_scale"]


def test_the_local_test_interval_is_stored_as_a_rescoring_of_the_run_computes_it(tmp_path, tiny_npz):
    # stored rounded, `train` printed 0.869 where `evaluate` printed 0.868 for the same model (double rounding)
    fit(tiny_config(tiny_npz, **{"optim.epochs": 1, **ON_CPU}), tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    model, cfg = load_model(tmp_path / "run")
    prepared = prepare_data(cfg.data, split=Split.load(tmp_path / "run" / "split.json"))
    test = prepared.split.test
    rescored = evaluate(
        model,
        prepared.data.images[test],
        prepared.data.masks[test],
        settings=inference_settings(cfg),
        big_rock_scale=metrics["big_rock_scale"],
    )
    low, high, groups = miou_interval(rescored, prepared.data.subset(test))
    assert rescored.miou == pytest.approx(metrics["test_miou"], abs=1e-12)
    assert metrics["test_miou_interval90"] == [low, high] and metrics["test_groups"] == groups
    assert low <= metrics["test_miou"] <= high
