"""DeepLabv3+-style model: residual bottleneck encoder, ASPP, and a decoder fed with 1/4-resolution features."""

import torch
from torch import nn

from marsseg.models.blocks import Bottleneck, ConvBNReLU, check_model_args, resize


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 branch, one 3x3 branch per rate, image pooling; fused by 1x1."""

    def __init__(self, in_ch: int, out_ch: int, rates: tuple[int, ...], dropout: float):
        super().__init__()
        branches = [ConvBNReLU(in_ch, out_ch, kernel_size=1)]
        branches += [ConvBNReLU(in_ch, out_ch, dilation=rate) for rate in rates]
        self.branches = nn.ModuleList(branches)
        # No batch norm here: after global pooling there is one value per channel and image, which
        # batch norm cannot normalise when training on a batch of 1.
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_ch, out_ch, 1), nn.ReLU(inplace=True))
        self.project = nn.Sequential(
            ConvBNReLU((len(branches) + 1) * out_ch, out_ch, kernel_size=1), nn.Dropout2d(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches]  # each (B, out_ch, h, w)
        outs.append(self.pool(x).expand(-1, -1, *x.shape[-2:]))  # (B, out_ch, h, w), the same at every pixel
        return self.project(torch.cat(outs, dim=1))  # (B, out_ch, h, w)


class DeepLabV3(nn.Module):
    """DeepLabv3+ for small images: bottleneck encoder to 1/8 (or 1/16), ASPP, fused with 1/4 features.

    Args:
        in_channels: image channels (1 for grayscale).
        num_classes: output channels (logits).
        width: stem channels; encoder stage i (1/2**i resolution) has width * 2**i channels.
        output_stride: 8 or 16, the downsampling of the features ASPP sees (8x16 or 4x8 for 64x128).
        atrous_rates: dilations of ASPP's 3x3 branches (besides its 1x1 and image-pooling branches); the
            DeepLab defaults (6, 12, 18) would read only padding on an 8x16 map.
        dropout: channel dropout after ASPP and in the decoder.
    """

    def __init__(
        self,
        in_channels: int = 1,
        *,
        num_classes: int = 5,
        width: int = 32,
        output_stride: int = 8,
        atrous_rates: tuple[int, ...] = (2, 4, 6),
        dropout: float = 0.1,
    ):
        super().__init__()
        check_model_args(in_channels, num_classes, width, dropout=dropout)
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride!r}")
        if not atrous_rates or any(not isinstance(r, int) or r < 1 for r in atrous_rates):
            raise ValueError(f"atrous_rates must be a non-empty tuple of integers >= 1, got {atrous_rates!r}")
        self.input_multiple = output_stride  # H and W divisible by it keep the features aligned with the pixels
        self.stem = ConvBNReLU(in_channels, width)
        stages, ch = [], width
        for _ in range(output_stride.bit_length() - 1):  # 3 stages for 8, 4 for 16
            # A strided bottleneck halves H, W (U-Net-like downsampling), a second one adds depth there.
            stages.append(nn.Sequential(Bottleneck(ch, 2 * ch, stride=2), Bottleneck(2 * ch, 2 * ch)))
            ch *= 2
        self.stages = nn.ModuleList(stages)
        self.aspp = ASPP(ch, 4 * width, atrous_rates, dropout)
        # Squeeze the 1/4 features so the decoder is led by ASPP's context, as in DeepLabv3+ (48 of 304).
        self.low_proj = ConvBNReLU(4 * width, width, kernel_size=1)
        self.decoder = nn.Sequential(
            ConvBNReLU(5 * width, 2 * width), ConvBNReLU(2 * width, 2 * width), nn.Dropout2d(dropout)
        )
        self.head = nn.Conv2d(2 * width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]  # (H, W)
        x = self.stem(x)  # (B, width, H, W)
        for i, stage in enumerate(self.stages):
            x = stage(x)  # (B, width * 2**(i+1), H / 2**(i+1), W / 2**(i+1))
            if i == 1:
                low = x  # (B, 4 * width, H/4, W/4)
        x = self.aspp(x)  # (B, 4 * width, H/os, W/os)
        x = resize(x, low.shape[-2:])  # (B, 4 * width, H/4, W/4)
        x = self.decoder(torch.cat([x, self.low_proj(low)], dim=1))  # (B, 2 * width, H/4, W/4)
        return resize(self.head(x), size)  # (B, num_classes, H, W)
