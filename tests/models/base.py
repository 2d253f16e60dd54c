"""Checks every segmentation model must pass; each model's test subclasses `ModelContract` in a few lines."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from marsseg.models import final_logits

NUM_CLASSES = 5


def block_batch(in_channels: int = 1, height: int = 32, width: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Two images of 8x8 blocks whose class is readable from the block's brightness, plus their masks."""
    gen = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, NUM_CLASSES, (2, height // 8, width // 8), generator=gen)
    mask = coarse.repeat_interleave(8, dim=1).repeat_interleave(8, dim=2)  # (2, H, W)
    image = mask.float().div(NUM_CLASSES - 1).unsqueeze(1).repeat(1, in_channels, 1, 1)  # (2, C, H, W)
    return image + 0.05 * torch.randn(image.shape, generator=gen), mask


class ModelContract:
    """Subclass as `class TestX(ModelContract)` and set `model_cls` (and `kwargs` for non-default options)."""

    model_cls: type[nn.Module]
    kwargs: dict = {}

    def make(self, **overrides) -> nn.Module:
        torch.manual_seed(0)
        return self.model_cls(**{"width": 8, **self.kwargs, **overrides})

    @pytest.mark.parametrize("in_channels", [1, 3])
    def test_output_shape_train_odd_batch(self, in_channels):
        model = self.make(in_channels=in_channels).train()
        out = final_logits(model(torch.randn(3, in_channels, 64, 128)))
        assert out.shape == (3, NUM_CLASSES, 64, 128)
        assert out.dtype == torch.float32

    @pytest.mark.parametrize("in_channels", [1, 3])
    def test_output_shape_eval_batch_one(self, in_channels):
        model = self.make(in_channels=in_channels).eval()
        with torch.no_grad():
            assert model(torch.randn(1, in_channels, 64, 128)).shape == (1, NUM_CLASSES, 64, 128)

    def test_other_sizes_divisible_by_16(self):
        model = self.make().eval()
        with torch.no_grad():
            assert model(torch.randn(2, 1, 48, 80)).shape == (2, NUM_CLASSES, 48, 80)

    def test_any_multiple_of_input_multiple_keeps_its_size(self):
        model = self.make().eval()
        height, width = 3 * model.input_multiple, 5 * model.input_multiple  # odd multiples: the hardest case
        assert model.input_multiple in (8, 16, 32, 64)
        with torch.no_grad():
            assert model(torch.randn(1, 1, height, width)).shape == (1, NUM_CLASSES, height, width)

    def test_eval_is_deterministic_and_channels_last_agrees(self):
        model = self.make().eval()
        x = torch.randn(2, 1, 64, 128)
        with torch.no_grad():
            first, second = model(x), model(x)
            last = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
        assert torch.equal(first, second)
        torch.testing.assert_close(last, first, atol=1e-4, rtol=1e-4)

    def test_gradients_reach_every_parameter(self):
        model = self.make().train()
        x, mask = block_batch()
        F.cross_entropy(final_logits(model(x)), mask).backward()
        for name, p in model.named_parameters():
            # Attention gammas start at 0, so the weights behind them get zero (but existing) gradients.
            assert p.grad is not None, f"{name} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"

    def test_overfits_a_small_batch(self):
        model = self.make().train()
        x, mask = block_batch()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        accuracy = 0.0
        for step in range(60):
            logits = final_logits(model(x))
            accuracy = (logits.argmax(1) == mask).float().mean().item()
            if accuracy >= 0.95 and step >= 10:
                break
            opt.zero_grad()
            F.cross_entropy(logits, mask).backward()
            opt.step()
        assert accuracy >= 0.9, f"pixel accuracy {accuracy:.3f} after {step + 1} steps"
