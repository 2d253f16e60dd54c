import numpy as np

from marsseg.cli import main
from marsseg.predict import read_submission, write_submission


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
