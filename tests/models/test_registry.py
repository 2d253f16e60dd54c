import pytest
import torch

from marsseg.models import MODELS, UNet, count_parameters, create_model, gflops_per_image


@pytest.mark.parametrize("name", sorted(MODELS))
def test_create_model_builds_each_model(name):
    model = create_model(name, in_channels=3, num_classes=4, width=8)
    assert isinstance(model, MODELS[name])
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 128)).shape == (1, 4, 64, 128)


def test_unknown_name_lists_the_options():
    with pytest.raises(
        ValueError, match="unknown model 'foo'; choose one of: danet, deeplab, dual_unet, res_unet, unet"
    ):
        create_model("foo")


def test_unexpected_kwarg_lists_the_accepted_ones():
    with pytest.raises(ValueError, match="depth") as info:
        create_model("unet", depth=5)
    for accepted in ("width", "stem_stride", "residual", "dropout"):
        assert accepted in str(info.value)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"width": 0}, "width"),
        ({"num_classes": 1}, "num_classes"),
        ({"in_channels": 0}, "in_channels"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_values_are_rejected(name, kwargs, field):
    with pytest.raises(ValueError, match=field):
        create_model(name, **kwargs)


def test_count_parameters_counts_trainable_ones():
    model = UNet(width=8)
    n = count_parameters(model)
    assert n == sum(p.numel() for p in model.parameters()) > 0
    model.head.weight.requires_grad_(False)
    assert count_parameters(model) == n - model.head.weight.numel()


def test_gflops_is_positive_grows_with_width_and_keeps_train_mode():
    small, large = UNet(width=8).train(), UNet(width=16)
    g_small = gflops_per_image(small)
    assert 0 < g_small < gflops_per_image(large)
    assert small.training
    # The first 3x3 conv alone: 64*128 pixels * 8 out * 9 taps * 1 in * 2 FLOP per multiply-add.
    assert g_small > 64 * 128 * 8 * 9 * 2 / 1e9
