"""The model marsseg ships: a file of tensors and plain values within 10 MB that `marsseg.load()` and the commands use
when no run is named, and that scores the external test frames with the figure recorded beside it."""

import json

import numpy as np
import pytest
import torch

import marsseg
from marsseg.checkpoints import SHIPPED_MODEL
from marsseg.cli import main

RECORDED = SHIPPED_MODEL.with_suffix(".json")  # `make model` writes it: evaluate --images on ai4mars_sample


def test_the_shipped_model_is_a_small_file_of_tensors_and_plain_values():
    assert SHIPPED_MODEL.is_file() and SHIPPED_MODEL.stat().st_size <= 10 * 2**20
    state = torch.load(SHIPPED_MODEL, weights_only=True)
    floats = [v for v in state["model"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    model = marsseg.load()
    assert model.source == str(SHIPPED_MODEL) and model.frame_size == 128
    frame = np.random.default_rng(0).integers(0, 256, (256, 256), dtype=np.uint8)
    labels = model.predict(frame)
    assert labels.shape == (256, 256) and labels.min() >= 1 and labels.max() <= 4


@pytest.mark.slow
def test_the_shipped_model_scores_the_external_test_frames_as_recorded(ai4mars_sample, tmp_path, capsys):
    recorded = json.loads(RECORDED.read_text())
    assert recorded["frames"] == 200 and recorded["precision"] == "fp32"
    out = tmp_path / "figures.json"
    assert main(["evaluate", "--images", str(ai4mars_sample), "--json", str(out)]) == 0
    assert "using the shipped model" in capsys.readouterr().out
    measured = json.loads(out.read_text())
    assert round(measured["miou"], 3) == round(recorded["miou"], 3)
    assert round(measured["iou"]["big_rock"], 3) == round(recorded["iou"]["big_rock"], 3)
