"""Merging data files: every sample keeps its source, frame ids stay apart (inferred for a file without them), frame
halves and duplicates never straddle a split of the merged data, and bad merges are refused."""

import numpy as np
import pytest

from marsseg.cli import main
from marsseg.data.io import DataError, load_npz, save_npz
from marsseg.data.merge import merge_data_files
from marsseg.data.split import group_ids, split_data
from tests.frames import shuffled_halves


def course_file(path, frames: int, seed: int, with_test: bool = True):
    """A file like the course's: shuffled frame halves without frame ids."""
    images, _ = shuffled_halves(frames, seed)
    masks = np.ones_like(images)
    masks[:, :10] = 2
    arrays = {"training_set": np.stack([images, masks], axis=1)}
    if with_test:
        arrays["test_set"] = images[:3]
    save_npz(path, arrays)
    return path


def imported_file(path, frames: int, seed: int):
    """A file like `data import` writes: two crops a frame, in order, with frame ids and a frame size."""
    images, _ = shuffled_halves(frames, seed)
    masks = np.full_like(images, 3)
    save_npz(
        path,
        {
            "training_set": np.stack([images, masks], axis=1),
            "frame_id": np.repeat(np.arange(frames), 2),
            "frame_size": np.array(128),
        },
    )
    return path


def test_merge_keeps_sources_and_frames_apart(tmp_path):
    course = course_file(tmp_path / "course.npz", 30, seed=1)
    imported = imported_file(tmp_path / "more.npz", 20, seed=2)
    arrays = merge_data_files([course, imported])
    assert arrays["training_set"].shape == (100, 2, 64, 128)
    assert arrays["source_name"].tolist() == ["course", "more"]
    assert arrays["source"].tolist() == [0] * 60 + [1] * 40
    assert int(arrays["frame_size"]) == 128 and arrays["test_set"].shape == (3, 64, 128)
    assert arrays["test_source"].tolist() == [0, 0, 0]
    frames = arrays["frame_id"]
    # the course file's frames are inferred from its halves: no true frame is split (the seam matchers may join a
    # few more than two crops, which only keeps more together); the imported file's 20 frames follow, apart
    _, truth = shuffled_halves(30, 1)
    same_frame = frames[:60][:, None] == frames[:60][None, :]
    assert same_frame[truth[:, None] == truth[None, :]].all()
    inferred = len(np.unique(frames[:60]))
    assert 20 <= inferred <= 30 and frames[:60].max() == inferred - 1
    assert frames[60:].tolist() == (inferred + np.repeat(np.arange(20), 2)).tolist()
    dropped = merge_data_files([course, imported], keep_test=False)
    assert "test_set" not in dropped and "test_source" not in dropped


def test_a_split_of_merged_data_keeps_frames_and_duplicates_on_one_side(tmp_path):
    course = course_file(tmp_path / "course.npz", 30, seed=1)
    imported = imported_file(tmp_path / "more.npz", 20, seed=2)
    arrays = merge_data_files([course, imported])
    arrays["training_set"][99, 0] = arrays["training_set"][0, 0]  # the same image in both sources
    save_npz(tmp_path / "merged.npz", arrays)
    data = load_npz(tmp_path / "merged.npz")
    assert data.source_names == ("course", "more") and data.subset(np.array([0, 99])).sources.tolist() == [0, 1]
    groups = group_ids(data)
    assert groups[0] == groups[99]  # a duplicate across sources is one group
    split = split_data(data, val_fraction=0.2, test_fraction=0.2, seed=0)
    side = np.zeros(len(data), int)
    side[split.val], side[split.test] = 1, 2
    for group in np.unique(groups):
        assert len(set(side[groups == group].tolist())) == 1


def test_merge_from_the_command_line_and_its_refusals(tmp_path, capsys):
    course = course_file(tmp_path / "course.npz", 10, seed=1)
    imported = imported_file(tmp_path / "more.npz", 5, seed=2)
    out = tmp_path / "merged.npz"
    assert main(["data", "merge", str(course), str(imported), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "training_set 30 crops of" in printed and "20  course" in printed and "10  more" in printed
    assert main(["data", "inspect", str(out)]) == 0
    assert "2 merged files (course 20, more 10 samples)" in capsys.readouterr().out
    before = out.read_bytes()
    assert main(["data", "merge", str(course), str(imported), "--out", str(out)]) == 2  # exists
    assert main(["data", "merge", str(course), str(out), "--out", str(out), "--force"]) == 2  # its own input
    assert out.read_bytes() == before
    assert main(["data", "merge", str(course), "--out", str(tmp_path / "one.npz")]) == 2
    assert "two or more" in capsys.readouterr().err
    save_npz(tmp_path / "other.npz", {**dict(np.load(imported)), "frame_size": np.array(256)})
    with pytest.raises(DataError, match="frame_size"):
        merge_data_files([imported, tmp_path / "other.npz"])
    with pytest.raises(DataError, match="named twice"):
        merge_data_files([course, course])
    # a merged file merged again keeps its sources' names
    again = merge_data_files([out, course_file(tmp_path / "third.npz", 4, seed=5)])
    assert again["source_name"].tolist() == ["course", "more", "third"]
    assert np.bincount(again["source"]).tolist() == [20, 10, 8]


def test_a_run_on_merged_data_reports_its_local_test_figure_per_source(tmp_path, tiny_arrays, capsys):
    import json

    from tests.tiny_runs import FAST

    train = tiny_arrays["training_set"]
    save_npz(tmp_path / "first.npz", {"training_set": train[:120], "test_set": tiny_arrays["test_set"]})
    save_npz(tmp_path / "second.npz", {"training_set": train[120:]})
    merged = tmp_path / "merged.npz"
    assert main(["data", "merge", str(tmp_path / "first.npz"), str(tmp_path / "second.npz"), "--out", str(merged)]) == 0
    run = tmp_path / "run"
    assert main(["train", "--data", str(merged), "--out", str(run), *FAST, "--epochs", "1"]) == 0
    assert "by source:" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    by_source = metrics["test_by_source"]
    split = json.loads((run / "split.json").read_text())
    assert set(by_source) <= {"first", "second"} and sum(f["crops"] for f in by_source.values()) == len(split["test"])
    assert all(0 <= f["miou"] <= 1 for f in by_source.values())
    assert main(["evaluate", str(run), "--split", "test"]) == 0
    assert "by source:" in capsys.readouterr().out
