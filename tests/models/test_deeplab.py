import pytest
import torch

from marsseg.models import DeepLabV3
from tests.models.base import ModelContract


class TestDeepLabV3(ModelContract):
    model_cls = DeepLabV3


class TestDeepLabV3Stride16(ModelContract):
    model_cls = DeepLabV3
    kwargs = {"output_stride": 16, "atrous_rates": (1, 2, 3)}


def test_aspp_has_a_branch_per_rate_plus_1x1_and_pooling():
    model = DeepLabV3(width=8, atrous_rates=(2, 4, 6))
    assert [b[0].dilation for b in model.aspp.branches] == [(1, 1), (2, 2), (4, 4), (6, 6)]
    assert model.aspp.project[0][0].in_channels == 5 * 4 * 8


def test_trains_on_a_batch_of_one():
    # The image-pooling branch has no batch norm, so a single image still trains.
    DeepLabV3(width=8).train()(torch.randn(1, 1, 64, 128)).sum().backward()


@pytest.mark.parametrize("kwargs", [{"output_stride": 4}, {"atrous_rates": ()}, {"atrous_rates": (0, 2)}])
def test_bad_options_are_rejected(kwargs):
    with pytest.raises(ValueError):
        DeepLabV3(**kwargs)
