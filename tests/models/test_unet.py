import pytest

from marsseg.models import ResUNet, UNet, gflops_per_image
from marsseg.models.blocks import BasicBlock
from tests.models.base import ModelContract


class TestUNet(ModelContract):
    model_cls = UNet


class TestUNetStridedResidual(ModelContract):
    model_cls = UNet
    kwargs = {"stem_stride": 2, "residual": True, "dropout": 0.1}


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
