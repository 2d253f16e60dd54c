import shutil

import numpy as np
import pytest
import torch

from marsseg.checkpoints import load_model
from marsseg.cli import main
from marsseg.config import InferenceSettings
from marsseg.data.io import load_npz
from marsseg.predict import predict_labels, predict_probabilities, read_submission

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from marsseg.export import OnnxModel, load_for_inference  # noqa: E402


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    assert main(["export", str(trained_run), "--out", str(path)]) == 0
    return path


def assert_parity(trained_run, exported, images):
    """Logits within 1e-4; labels with flip TTA and the big-rock scale identical on at least 99.9 % of pixels."""
    model, cfg = load_model(trained_run)
    onnx = OnnxModel(exported)
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(images).float().sub(127.5).div(127.5)[:, None])
    onnx_logits, onnx_probabilities = onnx.outputs(images)
    assert (onnx_logits - torch_logits).abs().max() < 1e-4
    flip = InferenceSettings(tta=True)
    torch_labels = predict_labels(model, images, settings=flip, big_rock_scale=cfg.big_rock_scale)
    onnx_labels = predict_labels(onnx, images, settings=flip)  # the graph applies the big-rock scale itself
    assert (torch_labels == onnx_labels).mean() >= 0.999
    assert len(np.unique(torch_labels)) >= 3  # a model that predicts several classes, so parity means something
    plain = next(predict_probabilities(model, images))
    assert torch.allclose(onnx_probabilities[:, 4], 3 * plain[:, 4], atol=1e-5)  # big-rock scale 3 is inside


def test_parity_on_synthetic_crops(trained_run, exported, tiny_arrays):
    assert_parity(trained_run, exported, tiny_arrays["test_set"])


def test_parity_on_real_crops(trained_run, exported, real_npz):
    data = load_npz(real_npz)
    assert_parity(trained_run, exported, data.images[np.random.default_rng(0).choice(len(data), 128, replace=False)])


def test_dynamic_batch_height_and_width(trained_run, exported):
    model, _ = load_model(trained_run)
    onnx = OnnxModel(exported)
    images = np.random.default_rng(1).integers(0, 256, (3, 96, 160), dtype=np.uint8)  # 6 x 10 multiples of 16
    with torch.no_grad():
        expected = model(torch.from_numpy(images).float().sub(127.5).div(127.5)[:, None])
    assert onnx.input_multiple == model.input_multiple == 16
    assert (onnx.outputs(images)[0] - expected).abs().max() < 1e-4


def test_metadata_carries_the_config(trained_run, exported):
    _, run_cfg = load_model(trained_run)
    _, cfg = load_for_inference(exported)
    assert cfg.data.frame_size == run_cfg.data.frame_size and cfg.tta == run_cfg.tta and cfg.model == run_cfg.model
    assert run_cfg.big_rock_scale == 3 and cfg.big_rock_scale == 1  # applied by the graph, not again


def test_csv_and_image_files_from_the_onnx_file_match_the_run(trained_run, exported, tmp_path, tiny_arrays):
    for source, name in ((trained_run, "run"), (exported, "onnx")):
        assert main(["predict", str(source), "--out", str(tmp_path / f"{name}.csv")]) == 0
    run_labels, onnx_labels = read_submission(tmp_path / "run.csv")[1], read_submission(tmp_path / "onnx.csv")[1]
    assert (run_labels == onnx_labels).mean() >= 0.999
    from PIL import Image

    frame = np.concatenate([np.hstack(tiny_arrays["test_set"][0:2]), np.hstack(tiny_arrays["test_set"][2:4])])
    Image.fromarray(frame[:100, :200]).save(tmp_path / "frame.png")
    for source, name in ((trained_run, "run"), (exported, "onnx")):
        assert (
            main(["predict", str(source), "--images", str(tmp_path / "frame.png"), "--out", str(tmp_path / name)]) == 0
        )
    run_png, onnx_png = (np.array(Image.open(tmp_path / name / "labels" / "frame.png")) for name in ("run", "onnx"))
    assert run_png.shape == (100, 200) and (run_png == onnx_png).mean() >= 0.999


def test_bad_export_and_onnx_inputs_get_one_line_and_exit_2(trained_run, exported, tmp_path, capsys):
    for argv, words in (
        (["export", str(trained_run), "--out", str(exported)], "--force"),  # exists
        (["export", str(trained_run), "--out", str(tmp_path / "model.pt")], "ending in .onnx"),
        (["export", str(tmp_path), "--out", str(tmp_path / "m.onnx")], "checkpoint not found"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "model.pt").exists()
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"not a model")
    assert main(["predict", str(fake), "--out", str(tmp_path / "out.csv")]) == 2
    assert "not an ONNX model written by marsseg export" in capsys.readouterr().err
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,in_channels,members",
    [("unet", 1, 1), ("dual_unet", 1, 1), ("deeplab", 1, 1), ("danet", 1, 1), ("res_unet", 3, 1), ("res_unet", 1, 2)],
)
def test_every_model_exports_with_dynamic_sizes(tmp_path, name, in_channels, members):
    from marsseg.config import load_config
    from marsseg.export import export_onnx
    from marsseg.models import build_model

    # one network, or an ensemble of two (optim.keep "last": one network a member; the vote of a run's best and last
    # epochs has the ensemble's shape)
    overrides = {"model.name": name, "model.width": 8, "data.in_channels": in_channels, "model.members": members}
    cfg = load_config(None, overrides={**overrides, "optim.keep": "last"})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    export_onnx(model, cfg, tmp_path / "model.onnx")
    onnx = OnnxModel(tmp_path / "model.onnx")
    for shape in [(2, 64, 128), (1, 3 * model.input_multiple, 5 * model.input_multiple)]:
        images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        with torch.no_grad():
            x = torch.from_numpy(images).float().sub(127.5).div(127.5)[:, None].expand(-1, in_channels, -1, -1)
            expected = model(x)
        assert (onnx.outputs(images)[0] - expected).abs().max() < 1e-4


def test_predict_precision_flag_overrides_the_runs(trained_run, exported, tmp_path, capsys, monkeypatch):
    import marsseg.predict

    seen = []
    real_autocast = marsseg.predict.autocast
    monkeypatch.setattr(
        marsseg.predict,
        "autocast",
        lambda device, precision: seen.append(precision) or real_autocast(device, precision),
    )
    assert main(["predict", str(trained_run), "--out", str(tmp_path / "bf16.csv"), "--precision", "bf16"]) == 0
    assert set(seen) == {"bf16"}
    # a run trained in bf16 predicts in fp32 by default (inference_precision), so that it gives its ONNX graph's labels
    bf16_run = tmp_path / "bf16_run"
    shutil.copytree(trained_run, bf16_run)
    state = torch.load(bf16_run / "best.pt", weights_only=True)
    state["config"]["precision"] = "bf16"
    torch.save(state, bf16_run / "best.pt")
    seen.clear()
    assert main(["predict", str(bf16_run), "--out", str(tmp_path / "run.csv")]) == 0
    assert set(seen) == {"fp32"} and load_model(bf16_run)[1].precision == "bf16"
    assert main(["predict", str(exported), "--out", str(tmp_path / "onnx.csv")]) == 0
    # an .onnx file computes in fp32 whatever the run's inference_precision: its own predictions need no flag
    state["config"]["inference_precision"] = "bf16"
    torch.save(state, bf16_run / "best.pt")
    assert main(["export", str(bf16_run), "--out", str(tmp_path / "bf16.onnx")]) == 0
    assert main(["predict", str(tmp_path / "bf16.onnx"), "--out", str(tmp_path / "bf16_onnx.csv")]) == 0
    torch_labels, onnx_labels = read_submission(tmp_path / "run.csv")[1], read_submission(tmp_path / "onnx.csv")[1]
    assert (torch_labels == onnx_labels).mean() >= 0.999
    assert main(["predict", str(exported), "--out", str(tmp_path / "x.csv"), "--precision", "bf16"]) == 2
    assert "computes in fp32" in capsys.readouterr().err and not (tmp_path / "x.csv").exists()
