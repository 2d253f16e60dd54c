"""The precision setting: what "auto" picks, bf16 training and what a run saves."""

import json

import pytest
import torch
import yaml

from marsseg import precision
from marsseg.checkpoints import load_model
from marsseg.cli import main
from marsseg.config import from_dict, load_config
from marsseg.engine import fit
from marsseg.errors import UserError
from marsseg.precision import cpu_flags_from_cpuinfo, resolve_precision

X86_WITHOUT_BF16 = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 avx512f avx512bw avx512vl\n"
X86_WITH_BF16 = "processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n"
ARM_WITH_BF16 = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n"


def test_cpu_flags_are_read_from_cpuinfo():
    assert "avx512_bf16" in cpu_flags_from_cpuinfo(X86_WITH_BF16)
    assert "avx512_bf16" not in cpu_flags_from_cpuinfo(X86_WITHOUT_BF16)
    assert "bf16" in cpu_flags_from_cpuinfo(ARM_WITH_BF16)
    assert cpu_flags_from_cpuinfo("no flags here") == set()


@pytest.mark.parametrize("native, expected", [(False, "fp32"), (True, "bf16")])
def test_auto_on_a_cpu_follows_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("auto", "cuda") == "bf16"
    assert precision.autocast("cpu", "auto").fast_dtype == torch.bfloat16
    assert torch.is_autocast_cpu_enabled() is False  # nothing switched on outside the context
    with precision.autocast("cpu", "auto"):
        assert torch.is_autocast_cpu_enabled() is native


def test_unknown_precision_is_refused(capsys):
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp16", "cpu")
    assert main(["train", "--out", "unused", "--set", "precision=fp16"]) == 2
    assert "precision" in capsys.readouterr().err


def test_auto_saves_fp32_on_a_cpu_without_bf16(monkeypatch, tmp_path, tiny_npz):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    overrides = {"data.path": str(tiny_npz), "model.width": 8, "optim.epochs": 1, "device": "cpu", "model.members": 1}
    cfg = load_config(None, overrides=overrides)
    assert cfg.precision == "auto"
    fit(cfg, tmp_path / "run", score_test=False)
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["precision"] == "fp32"


def test_bf16_run_trains_in_bf16_and_keeps_fp32_weights(tmp_path, tiny_npz):
    cfg = load_config(
        None,
        overrides={
            "data.path": str(tiny_npz),
            "model.width": 8,
            "optim.batch_size": 32,
            "optim.epochs": 2,
            "precision": "bf16",
            "model.members": 1,
        },
    )
    result = fit(cfg, tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["precision"] == "bf16"
    losses = [row["train_loss"] for row in result.history]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[1] < losses[0]
    model, saved = load_model(tmp_path / "run")
    assert saved.precision == "bf16"
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast, not a bf16 model


def test_checkpoint_from_before_the_setting_loads_as_fp32():
    assert from_dict({"seed": 1}).precision == "fp32"
    assert from_dict({"precision": "bf16"}).precision == "bf16"


def test_bf16_output_gives_an_fp32_loss():
    from marsseg.config import LossConfig
    from marsseg.losses import build_loss
    from marsseg.training import compute_loss

    target = torch.randint(0, 5, (2, 8, 8))
    loss_fn = build_loss(LossConfig(), target.numpy())
    logits = torch.randn(2, 5, 8, 8)
    loss = compute_loss(loss_fn, logits.bfloat16(), target)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(compute_loss(loss_fn, logits.bfloat16().float(), target).item())


def test_resume_refuses_a_precision_other_than_the_runs(tmp_path, tiny_npz, capsys):
    run = tmp_path / "run"
    args = ["train", "--data", str(tiny_npz), "--out", str(run), "--width", "8", "--epochs", "1"]
    assert main([*args, "--set", "precision=bf16"]) == 0
    capsys.readouterr()
    assert main([*args, "--set", "precision=fp32", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "'precision'" in err and "'bf16'" in err and "'fp32'" in err
    with pytest.raises(UserError):  # the library path refuses the same
        from marsseg.checkpoints import check_resume_matches_run

        check_resume_matches_run(run, load_config(None, overrides={"precision": "fp32"}), ["precision"])
