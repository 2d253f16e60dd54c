import pytest
import torch

from marsseg.models import DualUNet
from tests.models.base import ModelContract


class TestDualUNet(ModelContract):
    model_cls = DualUNet


class TestDualUNetDeepSupervisionLogits(ModelContract):
    model_cls = DualUNet
    kwargs = {"deep_supervision": True, "refine_input": "logits", "stem_stride": 2}


def test_deep_supervision_returns_a_tuple_only_in_train_mode():
    torch.manual_seed(0)
    model = DualUNet(width=8, deep_supervision=True)
    x = torch.randn(2, 1, 64, 128)
    final, first = model.train()(x)
    assert final.shape == first.shape == (2, 5, 64, 128)
    assert not torch.equal(final, first)
    with torch.no_grad():
        out = model.eval()(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5, 64, 128)


def test_without_deep_supervision_train_mode_returns_a_tensor():
    assert isinstance(DualUNet(width=8).train()(torch.randn(2, 1, 64, 128)), torch.Tensor)


def test_second_unet_sees_image_and_first_prediction():
    assert DualUNet(in_channels=3, num_classes=5, width=8).second.encoder[0][0][0].in_channels == 3 + 5


def test_bad_refine_input_is_rejected():
    with pytest.raises(ValueError, match="softmax, logits"):
        DualUNet(refine_input="probs")
