import csv
import json

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
        "--set",
        "model.members=1",
        "--set",
        "device=cpu",  # the run is rescored below on the CPU, to six digits (tiny_runs.ON_CPU)
    ]
    assert main(args) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["model"] for r in rows] == ["res_unet", "res_unet", "deeplab", "deeplab", "ensemble of 4"]
    assert [r["seed"] for r in rows[:4]] == ["0", "1", "0", "1"]
    assert all(0 <= float(r["test_miou"]) <= 1 and int(r["params"]) > 0 for r in rows)
    table = (out / "results.md").read_text()
    assert "±" in table and "| deeplab |" in table and (out / "results.png").stat().st_size > 1000
    # an ensemble of one run chooses its big-rock scale as training did, so it reproduces the run's figures
    from marsseg.checkpoints import load_model
    from marsseg.config import inference_settings
    from marsseg.data.prepare import prepare_data
    from marsseg.experiments import ensemble_scores

    run = out / "runs" / "res_unet_seed0"
    metrics = json.loads((run / "metrics.json").read_text())
    cfg = load_model(run)[1]
    scores = ensemble_scores([run], prepare_data(cfg.data), inference_settings(cfg), device="cpu")
    assert scores["scale"] == metrics["big_rock_scale"]
    assert scores["val"][0] == pytest.approx(metrics["val_miou"], abs=1e-6)
    assert scores["test"][0] == pytest.approx(metrics["test_miou"], abs=1e-6)
    stamp = (out / "runs" / "deeplab_seed1" / "best.pt").stat().st_mtime_ns
    saved = out / "runs" / "deeplab_seed1" / "config.yaml"  # as written before model.members existed
    saved.write_text(saved.read_text().replace("  members: 1\n", ""))
    assert "members" not in saved.read_text()
    assert main(args) == 0  # everything finished: nothing is trained again
    assert (out / "runs" / "deeplab_seed1" / "best.pt").stat().st_mtime_ns == stamp
    assert list(csv.DictReader(open(out / "results.csv")))[:4] == rows[:4]


@pytest.mark.slow
def test_experiments_of_ensemble_runs_vote_their_run_directories(tmp_path, tiny_npz):
    out = tmp_path / "exp"
    args = ["experiments", "--data", str(tiny_npz), "--out", str(out), "--models", "res_unet", "--seeds", "2"]
    assert (
        main([*args, "--epochs", "1", "--width", "8", "--batch-size", "32", "--members", "2", "--set", "threads=1"])
        == 0
    )
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["model"] for r in rows] == ["res_unet x2", "res_unet x2", "ensemble of 2"]
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["res_unet_seed0", "res_unet_seed1"]
    assert (out / "runs" / "res_unet_seed1" / "member_1" / "best.pt").is_file()
    assert 0 <= float(rows[2]["test_miou"]) <= 1


def test_unknown_model_in_list_is_refused(tmp_path, tiny_npz, capsys):
    assert main(["experiments", "--data", str(tiny_npz), "--out", str(tmp_path / "e"), "--models", "unet,vit"]) == 2
    assert "vit" in capsys.readouterr().err


def test_a_row_keeps_the_base_model_options_only_for_the_base_model():
    from marsseg.config import load_config
    from marsseg.experiments import config_for

    base = load_config(None, overrides={"model.name": "unet", "model.options": {"levels": 5}, "seed": 3})
    same, other = config_for(base, "unet", 1), config_for(base, "deeplab", 0)
    assert (same.model.name, same.model.options, same.seed) == ("unet", {"levels": 5}, 4)
    assert (other.model.name, other.model.options, other.seed) == ("deeplab", {}, 3)
    assert base.model.options == {"levels": 5}  # the base is not changed


def test_a_finished_run_of_another_recipe_is_refused_naming_the_field(tmp_path, tiny_npz):
    from marsseg.config import save_config, set_field
    from marsseg.data.prepare import prepare_data
    from marsseg.errors import UserError
    from marsseg.experiments import run_one
    from marsseg.training import with_resolved_precision
    from tests.tiny_runs import tiny_config

    cfg = tiny_config(tiny_npz)
    old = with_resolved_precision(tiny_config(tiny_npz))
    set_field(old, "optim.keep", "best")  # e.g. a run made before optim.keep's default became "last"
    set_field(old, "optim.early_stopping_patience", 15)
    save_config(old, tmp_path / "config.yaml")
    with pytest.raises(UserError, match="field 'optim.early_stopping_patience': the run has 15, this command 0"):
        run_one(cfg, tmp_path, prepare_data(cfg.data))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]  # nothing trained or written
