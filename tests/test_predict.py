import numpy as np
import torch
from matplotlib.colors import to_rgb
from PIL import Image

from marsseg.checkpoints import load_model
from marsseg.cli import main
from marsseg.config import InferenceSettings, inference_settings
from marsseg.data.ai4mars import TO_AI4MARS
from marsseg.predict import frame_probabilities, predict_labels, read_submission, tile_starts, write_submission
from marsseg.report import LABEL_COLORS, overlay_labels
from tests.frames import save_image

FLIP = InferenceSettings(tta=True)  # a bare model's settings with the flip


def test_submission_csv_layout(tmp_path):
    labels = np.random.default_rng(0).integers(1, 5, (3, 64, 128)).astype(np.uint8)
    path = tmp_path / "sub.csv"
    write_submission(labels, path)
    lines = path.read_text().splitlines()
    assert lines[0] == "id," + ",".join(str(i) for i in range(8192))
    assert len(lines) == 4 and lines[2].split(",")[0] == "1"
    assert lines[1].split(",")[1:4] == [str(v) for v in labels[0, 0, :3]]  # row-major: first row first
    assert lines[1].split(",")[129] == str(labels[0, 1, 0])  # pixel (1, 0) is column 128 of the labels
    ids, back = read_submission(path)
    assert ids.tolist() == [0, 1, 2] and np.array_equal(back, labels)


def test_train_evaluate_predict_from_the_command_line(tmp_path, tiny_npz, capsys):
    run = tmp_path / "run"
    flags = ["--width", "8", "--batch-size", "32", "--epochs", "1", "--set", "threads=1"]
    assert main(["train", "--data", str(tiny_npz), "--out", str(run), *flags]) == 0
    assert "local test part" in capsys.readouterr().out
    assert main(["evaluate", str(run), "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and (run / "worst_test.png").is_file() and (run / "confusion_test.png").is_file()
    assert "(flip TTA at scales 1, 0.875, halves of a frame together)" in out  # the config's default
    before = (run / "worst_test.png").read_bytes()
    assert main(["evaluate", str(run), "--split", "test", "--no-whole-frames", "--no-tta"]) == 2  # pictures exist
    assert "--force" in capsys.readouterr().err and (run / "worst_test.png").read_bytes() == before
    assert main(["evaluate", str(run), "--split", "test", "--no-whole-frames", "--no-tta", "--force"]) == 0
    assert "images (no TTA):" in capsys.readouterr().out
    csv_path = tmp_path / "submission.csv"
    assert main(["predict", str(run), "--out", str(csv_path)]) == 0
    ids, labels = read_submission(csv_path)
    assert ids.tolist() == list(range(16)) and labels.min() >= 1 and labels.max() <= 4  # never predicts 0
    assert main(["predict", str(run), "--out", str(csv_path)]) == 2  # exists: refused without --force
    other = tmp_path / "other.npz"
    np.savez(other, training_set=np.zeros((4, 2, 64, 128), np.uint8), test_set=np.zeros((2, 64, 128), np.uint8))
    assert main(["evaluate", str(run), "--data", str(other)]) == 2
    assert "differs" in capsys.readouterr().err


def test_overfit_batch_command_reports_steps(tiny_npz, capsys):
    code = main(
        [
            "overfit-batch",
            "--data",
            str(tiny_npz),
            "--width",
            "16",
            "--batch-size",
            "8",
            "--target",
            "0.8",
            "--max-steps",
            "150",
            "--set",
            "threads=1",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "overfit one batch of 8" in out and "steps" in out


def test_predicting_image_files_of_two_sizes(tmp_path, trained_run, tiny_arrays, capsys):
    model, cfg = load_model(trained_run)
    crop = tiny_arrays["test_set"][0]  # (64, 128): at the default frame size 128 the model sees it unresized
    big = np.repeat(np.repeat(crop, 4, axis=0), 4, axis=1)  # (256, 512): area-resized by 1/4 it is the crop again
    save_image(tmp_path / "in" / "small.png", crop)
    save_image(tmp_path / "in" / "big.png", np.stack([big] * 3, axis=-1))  # gray stored as RGB
    save_image(tmp_path / "in" / "odd.jpg", tiny_arrays["test_set"][1][:50, :90])  # a JPEG of another shape
    out = tmp_path / "predicted"
    assert main(["predict", str(trained_run), "--images", str(tmp_path / "in"), "--out", str(out)]) == 0
    assert "3 images" in capsys.readouterr().out
    expected = predict_labels(model, crop[None], settings=inference_settings(cfg), big_rock_scale=cfg.big_rock_scale)[0]
    small = np.array(Image.open(out / "labels" / "small.png"))
    assert np.array_equal(small, TO_AI4MARS[expected])  # AI4Mars values: course label - 1
    big_labels = np.array(Image.open(out / "labels" / "big.png"))
    assert big_labels.shape == (256, 512) and set(np.unique(big_labels)) <= {0, 1, 2, 3}
    nearest = np.repeat(np.repeat(TO_AI4MARS[expected], 4, axis=0), 4, axis=1)
    assert (big_labels == nearest).mean() > 0.95  # the probabilities were resized back bilinearly, not nearest
    assert np.array(Image.open(out / "labels" / "odd.png")).shape == (50, 90)
    overlay = np.array(Image.open(out / "overlays" / "big.png"))
    assert overlay.shape == (256 + 16, 512, 3) and overlay.dtype == np.uint8  # a legend row under the picture
    legend_colours = {tuple(c) for c in overlay[256:].reshape(-1, 3).tolist()}
    assert {tuple(int(round(255 * c)) for c in to_rgb(colour)) for colour in LABEL_COLORS.colors[1:]} <= legend_colours
    small_overlay = np.array(Image.open(out / "overlays" / "small.png"))  # 128 wide: the legend wraps onto rows
    assert small_overlay.shape[0] > 64 + 16 and np.array_equal(small_overlay[:64], overlay_labels(crop, expected))
    assert sorted(p.name for p in out.iterdir()) == ["labels", "overlays"]  # nothing else, no temporaries


def test_whole_frame_and_overlapping_tiles_agree(trained_run, tiny_arrays):
    model, _ = load_model(trained_run)
    frame = np.concatenate([np.hstack(tiny_arrays["test_set"][0:2]), np.hstack(tiny_arrays["test_set"][2:4])])
    frame = frame[:120, :250]  # (120, 250): not a multiple of the model's 16, so it is padded and cropped back
    whole = frame_probabilities(model, frame, settings=FLIP)
    tiled = frame_probabilities(model, frame, settings=FLIP, max_pixels=64 * 64)  # 64x64 tiles, 3 x 6 of them
    assert whole.shape == tiled.shape == (5, 120, 250)
    assert (whole.argmax(0) == tiled.argmax(0)).float().mean() > 0.85  # less context at tile borders
    assert torch.equal(frame_probabilities(model, frame, max_pixels=128 * 256), frame_probabilities(model, frame))


def test_tiles_cover_the_frame_with_overlap():
    assert tile_starts(256, 64, 16) == [0, 48, 96, 144, 192]
    assert tile_starts(100 * 16, 64, 16)[-1] == 100 * 16 - 64 and tile_starts(64, 64, 16) == [0]


def bad_image_inputs(tmp_path):
    """(name, the paths given to --images, extra flags, words the message must contain)"""
    good = tmp_path / "good.png"
    save_image(good, np.random.default_rng(0).integers(0, 256, (64, 128), dtype=np.uint8))
    broken = tmp_path / "broken.png"
    broken.write_bytes(good.read_bytes()[:2000])
    empty = tmp_path / "empty"
    empty.mkdir()
    save_image(tmp_path / "other" / "good.png", np.full((64, 128), 100, np.uint8))
    yield "truncated image", [good, broken], [], [str(broken), "unreadable image"]
    yield "missing path", [good, tmp_path / "absent.jpg"], [], [str(tmp_path / "absent.jpg"), "not found"]
    yield "folder without images", [empty], [], [str(empty), "no JPEG or PNG images"]
    yield "two images with one name", [good, tmp_path / "other"], [], ["other/good.png", "a second image named"]
    yield "images and data", [good], ["--data", str(good)], ["--images and --data"]


def test_bad_image_inputs_get_one_line_exit_2_and_no_output(tmp_path, trained_run, capsys):
    for name, paths, flags, words in bad_image_inputs(tmp_path):
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        code = main(["predict", str(trained_run), "--images", *map(str, paths), "--out", str(out), *flags])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and all(word in err for word in words), (name, err)
        assert not out.exists() and not list(tmp_path.glob(f".{out.name}*")), name  # no output, no temporaries


def test_existing_label_images_need_force(tmp_path, trained_run, capsys):
    image = tmp_path / "frame.png"
    save_image(image, np.full((64, 128), 90, np.uint8))
    out = tmp_path / "out"
    (out / "labels").mkdir(parents=True)
    (out / "labels" / "frame.png").write_bytes(b"precious")
    assert main(["predict", str(trained_run), "--images", str(image), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err and (out / "labels" / "frame.png").read_bytes() == b"precious"
    assert not (out / "overlays").exists()
    assert main(["predict", str(trained_run), "--images", str(image), "--out", str(out), "--force"]) == 0
    assert np.array(Image.open(out / "labels" / "frame.png")).shape == (64, 128)


def test_whole_frames_predicts_each_pair_of_halves_as_one_frame_across_batches():
    from marsseg.data.split import frame_halves
    from marsseg.predict import predict_probabilities
    from tests.frames import shuffled_halves

    halves, _ = shuffled_halves(12, seed=3)
    noise = np.random.default_rng(4).integers(0, 256, (5, 64, 128), dtype=np.uint8)
    images = np.concatenate([halves, noise])[np.random.default_rng(5).permutation(29)]
    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 5, kernel_size=5, padding=2).eval()  # sees 2 rows across the seam
    below = frame_halves(images)
    tops = np.flatnonzero(below >= 0)
    assert len(tops) >= 11

    def alone(crops: np.ndarray) -> torch.Tensor:
        return torch.cat(list(predict_probabilities(model, crops, settings=FLIP)))

    expected = alone(images)
    frames = alone(np.concatenate([images[tops], images[below[tops]]], axis=1))  # (pairs, C, 128, 128)
    expected[tops], expected[below[tops]] = frames[:, :, :64], frames[:, :, 64:]
    batches = list(predict_probabilities(model, images, settings=FLIP.replace(whole_frames=True), batch_size=4))
    assert [len(b) for b in batches] == [4] * 7 + [1]
    together = torch.cat(batches)
    assert torch.allclose(together, expected, atol=1e-6)
    assert torch.allclose(together[tops, :, :62], alone(images)[tops, :, :62], atol=1e-6)  # away from the seam
    assert not torch.allclose(together[tops, :, 62:], alone(images)[tops, :, 62:], atol=1e-3)  # at the seam


def pixelwise_probabilities(images: np.ndarray) -> torch.Tensor:
    """A "model" with no spatial extent: soil where a pixel is dark, sand where it is bright; it records the sizes
    it was given."""
    pixelwise_probabilities.sizes.append(images.shape[1:])
    bright = torch.from_numpy(np.ascontiguousarray(images)).float()[:, None] / 255
    probs = torch.zeros(len(images), 5, *images.shape[1:])
    probs[:, 1:2], probs[:, 3:4] = 1 - bright, bright
    return probs


def test_rescaled_probabilities_pad_to_the_multiple_and_come_back_at_the_images_size():
    from marsseg.predict import rescaled_probabilities

    images = np.zeros((2, 64, 128), np.uint8)
    images[:, :, 64:] = 255  # dark left half, bright right half
    pixelwise_probabilities.sizes = []
    same = rescaled_probabilities(pixelwise_probabilities, images, 1.0, multiple=16)
    assert torch.equal(same, pixelwise_probabilities(images))
    assert pixelwise_probabilities.sizes[0] == (64, 128)
    pixelwise_probabilities.sizes = []
    small = rescaled_probabilities(pixelwise_probabilities, images, 0.875, multiple=16)
    assert pixelwise_probabilities.sizes == [(64, 112)]  # 56 x 112, padded to the model's multiple of 16
    assert small.shape == (2, 5, 64, 128)
    assert torch.allclose(small.sum(dim=1), torch.ones(2, 64, 128), atol=1e-5)  # still probabilities
    labels = small.argmax(dim=1)
    assert (labels[:, :, :60] == 1).all() and (labels[:, :, 68:] == 3).all()  # away from the edge, as at scale 1
    assert torch.allclose(small[:, :, :, :56], same[:, :, :, :56], atol=1e-5)
    assert not torch.allclose(small[:, :, :, 56:72], same[:, :, :, 56:72], atol=1e-2)  # the edge blurs


def test_several_scales_average_each_scales_flip_averaged_probabilities():
    from marsseg.predict import predict_probabilities, rescaled_probabilities, torch_probabilities

    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 5, kernel_size=5, padding=2).eval()
    model.input_multiple = 8
    images = np.random.default_rng(1).integers(0, 256, (3, 64, 128), dtype=np.uint8)
    one = torch.cat(list(predict_probabilities(model, images, settings=FLIP)))
    both = torch.cat(list(predict_probabilities(model, images, settings=FLIP.replace(scales=(1.0, 0.75)))))

    softmax = torch_probabilities(model, 1, torch.device("cpu"))
    with torch.no_grad():
        at_075 = rescaled_probabilities(softmax, images, 0.75, multiple=8)
        flipped = rescaled_probabilities(softmax, images[:, :, ::-1], 0.75, multiple=8).flip(-1)
    assert torch.allclose(both, (one + (at_075 + flipped) / 2) / 2, atol=1e-5)
    assert not torch.allclose(both, one, atol=1e-3)


def test_tta_scales_from_the_config_and_the_command_line(trained_run, tmp_path, capsys, monkeypatch):
    import marsseg.predict
    from marsseg.config import ConfigError, from_dict, load_config

    seen = []
    real = marsseg.predict.rescaled_probabilities
    monkeypatch.setattr(
        marsseg.predict,
        "rescaled_probabilities",
        lambda probabilities, images, scale, multiple=1: (
            seen.append(scale) or real(probabilities, images, scale, multiple=multiple)
        ),
    )
    assert inference_settings(load_config(None, overrides={})).scales == (1.0, 0.875)
    assert inference_settings(load_config(None, overrides={"tta_scales": [1.0]})).scales == (1.0,)
    # a run saved before tta_scales existed was scored, and chose its big-rock scale, at its own scale only
    assert from_dict({"seed": 1}).tta_scales == [1.0]
    assert from_dict({"tta_scales": [1.0, 0.75]}).tta_scales == [1.0, 0.75]
    for bad in ([], [0.1], [1.0, float("nan")], [True]):
        try:
            load_config(None, overrides={"tta_scales": bad})
        except ConfigError as error:
            assert "tta_scales" in str(error)
        else:
            raise AssertionError(f"tta_scales {bad} was accepted")
    assert main(["evaluate", str(trained_run), "--split", "test", "--tta-scales", "1,0.875", "--force"]) == 0
    assert "(flip TTA at scales 1, 0.875, halves of a frame together)" in capsys.readouterr().out
    assert set(seen) == {1.0, 0.875}
    seen.clear()
    assert (
        main(["evaluate", str(trained_run), "--split", "test", "--no-tta", "--force"]) == 0
    )  # no TTA at all: no flip, scale 1
    assert "(no TTA, halves of a frame together)" in capsys.readouterr().out and set(seen) == {1.0}
    seen.clear()
    assert (
        main(["evaluate", str(trained_run), "--split", "test", "--no-tta", "--tta-scales", "1,0.875", "--force"]) == 0
    )
    assert "(no flips, scales 1, 0.875, halves of a frame together)" in capsys.readouterr().out
    assert set(seen) == {1.0, 0.875}
    seen.clear()
    assert main(["predict", str(trained_run), "--out", str(tmp_path / "scaled.csv"), "--tta-scales", "0.75"]) == 0
    assert set(seen) == {0.75}
    seen.clear()
    image, labels = tmp_path / "frame.png", tmp_path / "labels"
    save_image(image, np.full((64, 128), 90, np.uint8))
    assert (
        main(["predict", str(trained_run), "--images", str(image), "--out", str(labels), "--tta-scales", "1,0.5"]) == 0
    )
    assert "1 images (flip TTA at scales 1, 0.5, resized by" in capsys.readouterr().out
    assert set(seen) == {1.0, 0.5}
    out = tmp_path / "sub.csv"
    assert main(["predict", str(trained_run), "--out", str(out), "--tta-scales", "1,x"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--tta-scales" in err and not out.exists()


def test_a_scale_above_one_keeps_every_pass_within_max_pixels(trained_run, tiny_arrays, monkeypatch):
    import marsseg.predict

    model, _ = load_model(trained_run)
    frame = np.concatenate([np.hstack(tiny_arrays["test_set"][0:2]), np.hstack(tiny_arrays["test_set"][2:4])])
    pixels = []
    real = marsseg.predict.rescaled_probabilities

    def recording(probabilities, images, scale, multiple=1):
        pixels.append(round(images.shape[1] * scale) * round(images.shape[2] * scale))
        return real(probabilities, images, scale, multiple=multiple)

    monkeypatch.setattr(marsseg.predict, "rescaled_probabilities", recording)
    # the frame is 128 x 256
    probs = frame_probabilities(model, frame, settings=InferenceSettings(scales=(1.0, 2.0)), max_pixels=128 * 256)
    assert probs.shape == (5, 128, 256) and torch.allclose(probs.sum(0), torch.ones(128, 256), atol=1e-4)
    assert max(pixels) <= 128 * 256 < 4 * 128 * 256  # tiled: one whole pass at scale 2 would be 4x the budget
    assert len(pixels) > 2
