import csv

import pytest

from marsseg.cli import main


@pytest.mark.slow
def test_experiments_table_with_ensemble_and_rerun_skips_finished_rows(tmp_path, tiny_npz, capsys):
    out = tmp_path / "exp"
    args = [
        "experiments",
        "--data",
        str(tiny_npz),
        "--out",
        str(out),
        "--models",
        "res_unet,deeplab",
        "--epochs",
        "1",
        "--width",
        "8",
        "--batch-size",
        "32",
        "--seeds",
        "2",
        "--set",
        "threads=1",
    ]
    assert main(args) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["model"] for r in rows] == ["res_unet", "res_unet", "deeplab", "deeplab", "ensemble of 4"]
    assert [r["seed"] for r in rows[:4]] == ["0", "1", "0", "1"]
    assert all(0 <= float(r["test_miou"]) <= 1 and int(r["params"]) > 0 for r in rows)
    table = (out / "results.md").read_text()
    assert "±" in table and "| deeplab |" in table and (out / "results.png").stat().st_size > 1000
    stamp = (out / "runs" / "deeplab_seed1" / "best.pt").stat().st_mtime_ns
    assert main(args) == 0  # everything finished: nothing is trained again
    assert (out / "runs" / "deeplab_seed1" / "best.pt").stat().st_mtime_ns == stamp
    assert list(csv.DictReader(open(out / "results.csv")))[:4] == rows[:4]


def test_unknown_model_in_list_is_refused(tmp_path, tiny_npz, capsys):
    assert main(["experiments", "--data", str(tiny_npz), "--out", str(tmp_path / "e"), "--models", "unet,vit"]) == 2
    assert "vit" in capsys.readouterr().err
