"""The Python API (marsseg.load, marsseg.train), model files (marsseg pack) and scoring labeled frames
(evaluate --images): each gives what the command line gives."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import marsseg
from marsseg.cli import main
from marsseg.data.ai4mars import TO_AI4MARS, TO_COURSE
from marsseg.predict import read_submission
from tests.frames import save_image


def test_load_predicts_what_the_command_line_predicts(trained_run, tiny_npz, tiny_arrays, tmp_path):
    model = marsseg.load(trained_run, device="cpu")
    crops = tiny_arrays["test_set"]  # (16, 64, 128): the CSV's path, halves of a frame together
    assert main(["predict", str(trained_run), "--data", str(tiny_npz), "--out", str(tmp_path / "s.csv")]) == 0
    labels = model.predict(crops)
    assert labels.dtype == np.uint8 and np.array_equal(labels, read_submission(tmp_path / "s.csv")[1])
    probs = model.predict_proba(crops)
    assert probs.shape == (16, 5, 64, 128) and np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert np.array_equal(model.predict(crops[3]), model.predict(crops[3:4])[0])  # one image (H, W)
    assert not np.array_equal(model.predict(crops, big_rock_scale=1.0), labels)  # the run's scale 3 by default
    # an image of another size goes the way of predict --images: resized by the frame size, labels at full size
    frame = np.repeat(np.repeat(crops[0], 2, axis=0), 2, axis=1)  # (128, 256)
    save_image(tmp_path / "in" / "frame.png", frame)
    assert main(["predict", str(trained_run), "--images", str(tmp_path / "in"), "--out", str(tmp_path / "o")]) == 0
    written = np.array(Image.open(tmp_path / "o" / "labels" / "frame.png"))
    assert np.array_equal(TO_AI4MARS[model.predict(frame)], written)
    assert model.predict(np.stack([frame, frame])).shape == (2, 128, 256)
    with pytest.raises(ValueError, match="uint8"):
        model.predict(crops.astype(np.float32))


def test_train_returns_the_runs_figures(tiny_npz, tmp_path):
    metrics = marsseg.train(
        data=tiny_npz, out=tmp_path / "run", model__width=8, **{"optim.batch_size": 32, "optim.epochs": 1}
    )
    assert metrics == json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 <= metrics["test_miou"] <= 1 and (tmp_path / "run" / "best.pt").is_file()
    assert marsseg.load(tmp_path / "run").config.model.width == 8


def test_pack_writes_one_file_that_predicts_as_the_run(trained_run, tiny_arrays, tmp_path, capsys):
    packed = tmp_path / "model.pt"
    assert main(["pack", str(trained_run), "--out", str(packed)]) == 0
    crops = tiny_arrays["test_set"]
    assert np.array_equal(marsseg.load(packed).predict(crops), marsseg.load(trained_run).predict(crops))
    half = tmp_path / "half.pt"
    assert main(["pack", str(trained_run), "--out", str(half), "--half"]) == 0
    printed = capsys.readouterr().out
    assert "fp16 weights" in printed and "labels agree" in printed
    assert half.stat().st_size < 0.6 * packed.stat().st_size
    agreement = (marsseg.load(half).predict(crops) == marsseg.load(packed).predict(crops)).mean()
    assert agreement >= 0.999
    assert main(["pack", str(trained_run), "--out", str(packed)]) == 2  # exists: refused without --force
    # the tiny run trained on a data file, which the model file names; one trained on the synthetic data names none
    assert main(["predict", str(packed), "--out", str(tmp_path / "s.csv")]) == 0
    synthetic = tmp_path / "synthetic.pt"
    state = torch.load(packed, weights_only=True)
    state["config"]["data"]["path"] = ""
    torch.save(state, synthetic)
    assert main(["predict", str(synthetic), "--out", str(tmp_path / "t.csv")]) == 2
    assert "--data" in capsys.readouterr().err and not (tmp_path / "t.csv").exists()
    assert main(["pack", str(trained_run), "--out", str(tmp_path / "model.bin")]) == 2


def labeled_frames(root, tiny_arrays, count=3):
    """`count` frames of two crops each, in the AI4Mars layout, with their labels."""
    train = tiny_arrays["training_set"]
    for k in range(count):
        image = np.concatenate([train[2 * k, 0], train[2 * k + 1, 0]])  # (128, 128)
        mask = np.concatenate([train[2 * k, 1], train[2 * k + 1, 1]])
        save_image(root / "images" / f"F{k}.png", image)
        save_image(root / "labels" / f"F{k}.png", TO_AI4MARS[mask])
    return root


def test_evaluate_images_scores_what_predict_images_writes(trained_run, tiny_arrays, tmp_path, capsys):
    root = labeled_frames(tmp_path / "frames", tiny_arrays)
    figures = tmp_path / "figures.json"
    assert main(["evaluate", str(trained_run), "--images", str(root), "--json", str(figures)]) == 0
    assert "3 labeled frames" in capsys.readouterr().out
    scored = json.loads(figures.read_text())
    assert main(["predict", str(trained_run), "--images", str(root / "images"), "--out", str(tmp_path / "p")]) == 0
    matrix = np.zeros((5, 5), np.int64)
    for k in range(3):
        truth = TO_COURSE[np.array(Image.open(root / "labels" / f"F{k}.png"))]
        predicted = TO_COURSE[np.array(Image.open(tmp_path / "p" / "labels" / f"F{k}.png"))]
        np.add.at(matrix, (truth.reshape(-1), predicted.reshape(-1)), 1)
    ious = [matrix[c, c] / (matrix[c, 1:].sum() + matrix[1:, c].sum() - matrix[c, c]) for c in range(1, 5)]
    present = [matrix[c, 1:].sum() + matrix[1:, c].sum() > 0 for c in range(1, 5)]
    expected = np.mean([iou for iou, seen in zip(ious, present, strict=True) if seen])
    assert scored["frames"] == 3 and scored["miou"] == pytest.approx(expected, abs=1e-9)
    assert scored["miou_interval90"][0] <= scored["miou"] <= scored["miou_interval90"][1]
    assert main(["evaluate", str(trained_run), "--images", str(root), "--json", str(figures)]) == 2  # exists


def test_no_run_means_the_shipped_model_or_a_clear_error(tmp_path, capsys, monkeypatch):
    import marsseg.checkpoints

    monkeypatch.setattr(marsseg.checkpoints, "SHIPPED_MODEL", tmp_path / "absent.pt")
    assert main(["predict", "--images", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "absent.pt" in err and "make model" in err and len(err.strip().splitlines()) == 1
    assert main(["predict", "--out", str(tmp_path / "s.csv")]) == 2
    assert "--images" in capsys.readouterr().err
    assert main(["evaluate"]) == 2 and "--images" in capsys.readouterr().err
