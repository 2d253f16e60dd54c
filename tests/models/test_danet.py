import torch

from marsseg.models import DANet
from marsseg.models.danet import ChannelAttention, PositionAttention
from tests.models.base import ModelContract


class TestDANet(ModelContract):
    model_cls = DANet


def test_attention_starts_as_identity_and_gamma_learns():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 8, 16, requires_grad=True)
    for module in (PositionAttention(16), ChannelAttention()):
        out = module(x)
        assert torch.equal(out, x)  # gamma = 0
        out.square().sum().backward()
        assert module.gamma.grad is not None and module.gamma.grad.abs().item() > 0


def test_position_attention_mixes_pixels_once_gamma_is_set():
    torch.manual_seed(0)
    module = PositionAttention(16)
    with torch.no_grad():
        module.gamma.fill_(1.0)
    x = torch.randn(1, 16, 8, 16)
    y = torch.randn(1, 16, 8, 16)
    y[..., 0, 0] = x[..., 0, 0]
    # Same pixel, different surroundings -> different output: attention reads the whole map.
    assert not torch.allclose(module(x)[..., 0, 0], module(y)[..., 0, 0])


def test_query_key_have_an_eighth_of_the_channels():
    module = DANet(width=8).position
    assert module.query.out_channels == module.key.out_channels == 16 // 8
