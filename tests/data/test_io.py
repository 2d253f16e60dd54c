import numpy as np
import pytest

from marsseg.cli import main
from marsseg.config import DataConfig
from marsseg.data.io import DataError, load_npz, save_npz, to_course_layout
from marsseg.data.prepare import prepare_data


def good_arrays(n=4, m=3):
    train = np.zeros((n, 2, 64, 128), np.uint8)
    train[:, 1] = 1
    return {"training_set": train, "test_set": np.zeros((m, 64, 128), np.uint8)}


def malformed_cases():
    yield "wrong keys", {"train": good_arrays()["training_set"]}, "training_set"
    yield "wrong rank", {"training_set": np.zeros((4, 64, 128), np.uint8)}, "(N, 2, 64, 128)"
    yield "wrong shape", {"training_set": np.zeros((4, 2, 32, 128), np.uint8)}, "(N, 2, 64, 128)"
    yield "not uint8", {"training_set": np.zeros((4, 2, 64, 128), np.int32)}, "int32"
    nan = np.zeros((4, 2, 64, 128), np.float32)
    nan[0, 0, 0, 0] = np.nan
    yield "NaN", {"training_set": nan}, "NaN"
    bad_labels = good_arrays()
    bad_labels["training_set"][1, 1, 5, 5] = 7
    yield "labels outside 0..4", bad_labels, "[7]"
    yield "empty training", {"training_set": np.zeros((0, 2, 64, 128), np.uint8)}, "0 samples"
    empty_test = good_arrays()
    empty_test["test_set"] = np.zeros((0, 64, 128), np.uint8)
    yield "empty test", empty_test, "test_set"
    wrong_test = good_arrays()
    wrong_test["test_set"] = np.zeros((3, 64, 64), np.uint8)
    yield "test shape", wrong_test, "(M, 64, 128)"
    yield "frame size not one integer", {**good_arrays(), "frame_size": np.array([128, 128])}, "frame_size"


@pytest.mark.parametrize("name,arrays,expected", list(malformed_cases()), ids=[c[0] for c in malformed_cases()])
def test_malformed_file_gets_one_line_and_exit_2(tmp_path, capsys, name, arrays, expected):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=expected.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_npz(path)
    assert main(["data", "inspect", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and expected in err and "Traceback" not in err


def test_missing_not_npz_and_truncated_files(tmp_path, capsys):
    text = tmp_path / "notes.npz"
    text.write_text("not a zip file")
    good = tmp_path / "good.npz"
    save_npz(good, good_arrays(n=20))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for path, words in (
        (tmp_path / "absent.npz", "not found"),
        (text, "not a readable"),
        (truncated, "not a readable"),
    ):
        assert main(["data", "inspect", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(path) in err and words in err


def test_good_file_round_trip(tmp_path):
    path = tmp_path / "ok.npz"
    arrays = good_arrays()
    arrays["training_set"][2, 0, 3, 4] = 200
    save_npz(path, arrays)
    data = load_npz(path, require_test=True)
    assert data.images.shape == (4, 64, 128) and data.images[2, 3, 4] == 200
    assert data.masks.max() == 1 and data.test_images.shape == (3, 64, 128)


def test_outputs_are_not_overwritten_without_force(tmp_path, tiny_npz, capsys):
    out = tmp_path / "synth.npz"
    out.write_bytes(b"precious")
    assert main(["data", "synth", "--out", str(out), "--n-train", "10", "--n-test", "2"]) == 2
    assert out.read_bytes() == b"precious"
    assert "--force" in capsys.readouterr().err
    assert main(["data", "synth", "--out", str(out), "--n-train", "10", "--n-test", "2", "--force"]) == 0
    assert load_npz(out).images.shape == (10, 64, 128)


def test_frame_size_survives_cleaning_and_must_match_the_config(tmp_path, tiny_arrays):
    path = tmp_path / "imported.npz"
    save_npz(path, {**tiny_arrays, "frame_size": np.array(256)})
    data = load_npz(path)
    assert data.frame_size == 256 and int(to_course_layout(data.subset(np.arange(3)))["frame_size"]) == 256
    with pytest.raises(DataError, match=r"found 256, expected data.frame_size 128; pass --set data.frame_size=256"):
        prepare_data(DataConfig(path=str(path)))
    assert prepare_data(DataConfig(path=str(path), frame_size=256)).data.frame_size == 256
