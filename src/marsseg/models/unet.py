"""U-Net: the baseline encoder-decoder with skip connections at every level."""

import torch
from torch import nn

from marsseg.models.blocks import (
    BasicBlock,
    ConvBNReLU,
    DoubleConv,
    UpBlock,
    check_integer,
    check_model_args,
    resize,
)

LEVELS = 4  # three poolings: 64x128 -> 8x16 at the bottom (4x8 with a strided stem)


class UNet(nn.Module):
    """U-Net with batch norm and four levels of width, 2*width, 4*width, 8*width channels.

    Args:
        in_channels: image channels (1 for grayscale).
        num_classes: output channels (logits).
        width: channels of the first level; doubled at each level down.
        stem_stride: 1, or 2 for a strided 3x3 stem conv that halves H and W before the encoder and a
            bilinear x2 upsample of the logits at the end (about 4x fewer FLOPs per image).
        residual: use residual basic blocks instead of double convs in the encoder.
        dropout: channel dropout on the bottom (most abstract) features.
        levels: encoder levels (levels - 1 poolings); H and W must be divisible by 2**(levels - 1) (x2 with a
            strided stem).
        full_res: with a strided stem, 0 (upsample the logits bilinearly) or the channels of one more decoder step
            at full resolution, whose skip is a 3x3 conv-bn-relu of the input image: the decoder then sees the
            image's own pixels, which the strided stem skips, at a small cost in FLOPs.
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
        levels: int = LEVELS,
        full_res: int = 0,
    ):
        super().__init__()
        check_model_args(in_channels, num_classes, width, dropout=dropout)
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride!r}")
        check_integer("levels", levels, 2, maximum=6)
        channels = [width * 2**level for level in range(levels)]
        self.input_multiple = stem_stride * 2 ** (levels - 1)  # H and W must be divisible by this
        block = BasicBlock if residual else DoubleConv
        if stem_stride == 2:
            self.stem = ConvBNReLU(in_channels, width, stride=2)
            first_in = width
        else:
            self.stem = nn.Identity()
            first_in = in_channels
        self.encoder = nn.ModuleList(
            [block(first_in if level == 0 else channels[level - 1], channels[level]) for level in range(levels)]
        )
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout2d(dropout)
        # decoder[0] goes from the bottom level up one; the last one ends at the first level.
        self.decoder = nn.ModuleList(
            [UpBlock(channels[level + 1], channels[level], channels[level]) for level in reversed(range(levels - 1))]
        )
        check_integer("full_res", full_res, 0)
        if full_res and stem_stride == 1:
            raise ValueError("full_res needs stem_stride=2: without a strided stem the decoder is at full resolution")
        if full_res:
            self.full_res_skip = ConvBNReLU(in_channels, full_res)
            self.full_res_up = UpBlock(width, full_res, full_res)
        self.full_res = full_res
        self.head = nn.Conv2d(full_res or width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]  # (H, W)
        image = x
        x = self.stem(x)  # (B, in_channels, H, W), or (B, width, H/2, W/2) with stem_stride=2
        skips = []
        for level, block in enumerate(self.encoder):
            if level > 0:
                x = self.pool(x)
            x = block(x)  # (B, width * 2**level, H' / 2**level, W' / 2**level)
            skips.append(x)
        x = self.dropout(skips.pop())  # (B, 8 * width, H' / 8, W' / 8)
        for up in self.decoder:
            x = up(x, skips.pop())  # one level up: double H, W, halve channels
        if self.full_res:
            x = self.full_res_up(x, self.full_res_skip(image))  # (B, full_res, H, W)
        logits = self.head(x)  # (B, num_classes, H', W')
        # Upsampling the logits (num_classes channels) is the cheapest place to get back to full size.
        return logits if logits.shape[-2:] == size else resize(logits, size)  # (B, num_classes, H, W)


class ResUNet(UNet):
    """The default model: a U-Net whose strided stem halves the resolution first and whose encoder blocks are
    residual. About 4x fewer FLOPs per image than the plain U-Net; on a CPU that buys more epochs in the same
    time."""

    def __init__(
        self,
        in_channels: int = 1,
        *,
        num_classes: int = 5,
        width: int = 32,
        dropout: float = 0.0,
        levels: int = LEVELS,
        full_res: int = 0,
    ):
        super().__init__(
            in_channels,
            num_classes=num_classes,
            width=width,
            stem_stride=2,
            residual=True,
            dropout=dropout,
            levels=levels,
            full_res=full_res,
        )
