"""Dual U-Net: a second U-Net refines the first one's prediction, seeing the image alongside it."""

from typing import Literal

import torch
from torch import nn

from marsseg.models.unet import UNet

REFINE_INPUTS = ("softmax", "logits")


class DualUNet(nn.Module):
    """Two U-Nets in sequence; the second takes the image concatenated with the first one's output.

    Args:
        in_channels, num_classes, width, stem_stride, residual, dropout: as for `UNet`, used by both.
        refine_input: what the second U-Net sees of the first one's output: "softmax" (bounded, so the
            refiner is not thrown off by the scale of the logits) or the raw "logits".
        deep_supervision: when True and training, `forward` returns `(final_logits, first_logits)` so a
            loss can also be put on the first U-Net; otherwise it always returns the final logits only.
    """

    def __init__(
        self,
        in_channels: int = 1,
        *,
        num_classes: int = 5,
        width: int = 32,
        stem_stride: int = 1,
        residual: bool = False,
        dropout: float = 0.0,
        refine_input: Literal["softmax", "logits"] = "softmax",
        deep_supervision: bool = False,
    ):
        super().__init__()
        if refine_input not in REFINE_INPUTS:
            raise ValueError(f"refine_input must be one of {', '.join(REFINE_INPUTS)}; got {refine_input!r}")
        self.refine_input = refine_input
        self.deep_supervision = deep_supervision
        options = dict(width=width, stem_stride=stem_stride, residual=residual, dropout=dropout)
        self.first = UNet(in_channels, num_classes=num_classes, **options)
        self.second = UNet(in_channels + num_classes, num_classes=num_classes, **options)
        self.input_multiple = self.first.input_multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        first_logits = self.first(x)  # (B, num_classes, H, W)
        guess = first_logits.softmax(dim=1) if self.refine_input == "softmax" else first_logits
        final_logits = self.second(torch.cat([x, guess], dim=1))  # (B, num_classes, H, W)
        if self.deep_supervision and self.training:
            return final_logits, first_logits
        return final_logits
