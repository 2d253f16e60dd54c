import pytest
import torch

from marsseg.models import ResUNet, UNet, count_parameters, gflops_per_image
from marsseg.models.blocks import BasicBlock
from tests.models.base import ModelContract


class TestUNet(ModelContract):
    model_cls = UNet


class TestUNetStridedResidual(ModelContract):
    model_cls = UNet
    kwargs = {"stem_stride": 2, "residual": True, "dropout": 0.1}


class TestUNetFiveLevels(ModelContract):
    model_cls = UNet
    kwargs = {"levels": 5}


class TestResUNet(ModelContract):
    model_cls = ResUNet


def test_res_unet_is_the_strided_residual_unet():
    model = ResUNet(width=8)
    assert isinstance(model.encoder[0], BasicBlock) and model.stem[0].stride == (2, 2)


def test_strided_stem_costs_fewer_flops():
    assert gflops_per_image(UNet(width=8, stem_stride=2)) < 0.5 * gflops_per_image(UNet(width=8))


def test_residual_encoder_uses_basic_blocks():
    assert all(isinstance(level, BasicBlock) for level in UNet(width=8, residual=True).encoder)
    assert not any(isinstance(m, BasicBlock) for m in UNet(width=8).modules())


def test_bad_stem_stride_is_rejected():
    with pytest.raises(ValueError, match="stem_stride must be 1 or 2"):
        UNet(stem_stride=4)


def test_levels_set_the_depth_and_a_fifth_level_keeps_full_resolution_output():
    model = UNet(width=8, levels=5)
    assert len(model.encoder) == 5 and len(model.decoder) == 4
    assert model.encoder[-1][1][0].out_channels == 8 * 2**4  # the deepest level's second conv
    assert model(torch.zeros(2, 1, 64, 128)).shape == (2, 5, 64, 128)
    assert count_parameters(model) > count_parameters(UNet(width=8, levels=4))


@pytest.mark.parametrize("levels", [1, 7, 2.0, True])
def test_bad_levels_are_rejected(levels):
    with pytest.raises(ValueError, match="levels"):
        UNet(levels=levels)


def test_input_multiple_follows_levels_and_stem():
    assert UNet(width=8).input_multiple == 8 and ResUNet(width=8).input_multiple == 16
    assert UNet(width=8, levels=6, stem_stride=2).input_multiple == 64


class TestResUNetFiveLevels(ModelContract):
    model_cls = ResUNet
    kwargs = {"levels": 5}


def test_res_unet_passes_levels_on_and_a_fifth_level_adds_parameters_more_than_flops():
    deeper, default = ResUNet(width=8, levels=5), ResUNet(width=8)
    assert len(deeper.encoder) == 5 and deeper.input_multiple == 32
    assert isinstance(deeper.encoder[-1], BasicBlock)
    # 2x4 pixels at 16 * width channels: 4.0x the parameters for 1.29x the FLOPs
    assert count_parameters(deeper) > 3.9 * count_parameters(default)
    assert 1.2 * gflops_per_image(default) < gflops_per_image(deeper) < 1.35 * gflops_per_image(default)


class TestResUNetFullRes(ModelContract):
    model_cls = ResUNet
    kwargs = {"full_res": 4}


def test_full_res_step_runs_the_head_at_full_resolution_with_the_image_as_skip():
    shapes = {}

    def record(name):
        def hook(module, inputs, output):
            shapes[name] = tuple(inputs[0].shape)

        return hook

    for full_res in (0, 4):
        model = ResUNet(width=8, full_res=full_res).eval()
        model.head.register_forward_hook(record(f"head {full_res}"))
        if full_res:
            model.full_res_skip.register_forward_hook(record("skip"))
        with torch.no_grad():
            assert model(torch.zeros(2, 1, 64, 128)).shape == (2, 5, 64, 128)
    assert shapes == {"head 0": (2, 8, 32, 64), "head 4": (2, 4, 64, 128), "skip": (2, 1, 64, 128)}
    assert gflops_per_image(ResUNet(width=8, full_res=4)) > gflops_per_image(ResUNet(width=8))


@pytest.mark.parametrize("full_res", [-1, 2.0, True])
def test_bad_full_res_is_rejected(full_res):
    with pytest.raises(ValueError, match="full_res must be an integer"):
        ResUNet(full_res=full_res)


def test_full_res_needs_a_strided_stem():
    with pytest.raises(ValueError, match="full_res needs stem_stride=2"):
        UNet(full_res=8)
