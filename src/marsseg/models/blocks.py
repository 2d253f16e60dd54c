"""Building blocks shared by the models: conv-bn-relu, residual blocks, the U-Net up-sampling step."""

import torch
import torch.nn.functional as F
from torch import nn


def check_integer(name: str, value, minimum: int, *, maximum: int | None = None) -> None:
    """Raise a ValueError naming the argument unless `value` is an integer (not a bool) in minimum..maximum."""
    is_integer = isinstance(value, int) and not isinstance(value, bool)
    if not is_integer or value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}")


def check_model_args(in_channels: int, num_classes: int, width: int, *, dropout: float = 0.0) -> None:
    """Raise a ValueError naming the argument when a constructor argument every model shares is bad."""
    for name, value, minimum in (("in_channels", in_channels, 1), ("num_classes", num_classes, 2), ("width", width, 1)):
        check_integer(name, value, minimum)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


def resize(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize to `size` (H, W); the one place that picks the interpolation for every model."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ConvBNReLU(nn.Sequential):
    """Conv (no bias: batch norm supplies it) -> BatchNorm -> ReLU; padding keeps H, W (divided by stride)."""

    def __init__(self, in_ch: int, out_ch: int, *, kernel_size: int = 3, stride: int = 1, dilation: int = 1):
        padding = dilation * (kernel_size // 2)
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """The U-Net level: two 3x3 conv-bn-relu."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(ConvBNReLU(in_ch, out_ch), ConvBNReLU(out_ch, out_ch))


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    # Identity when shapes match; otherwise a 1x1 projection, as in ResNet's option B.
    if in_ch == out_ch and stride == 1:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs plus a shortcut; `stride=2` halves H and W."""

    def __init__(self, in_ch: int, out_ch: int, *, stride: int = 1):
        super().__init__()
        self.conv1 = ConvBNReLU(in_ch, out_ch, stride=stride)
        self.conv2 = nn.Sequential(nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch))
        self.shortcut = _shortcut(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1x1 squeeze to out_ch/4, 3x3 (strided or dilated), 1x1 expand, plus a shortcut."""

    def __init__(self, in_ch: int, out_ch: int, *, stride: int = 1, dilation: int = 1):
        super().__init__()
        mid = max(1, out_ch // 4)
        self.body = nn.Sequential(
            ConvBNReLU(in_ch, mid, kernel_size=1),
            ConvBNReLU(mid, mid, stride=stride, dilation=dilation),
            nn.Conv2d(mid, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        )
        self.shortcut = _shortcut(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class UpBlock(nn.Module):
    """Decoder step: 1x1 reduce, bilinear upsample to the skip's size, concat the skip, double conv.

    Reducing channels *before* upsampling does the channel mixing at a quarter of the pixels, which is
    cheaper on CPU than the usual concat-then-conv of the wide tensor (and than a transposed conv).
    """

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int):
        super().__init__()
        self.reduce = ConvBNReLU(in_ch, out_ch, kernel_size=1)
        self.conv = DoubleConv(out_ch + skip_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = resize(self.reduce(x), skip.shape[-2:])  # (B, out_ch, Hs, Ws)
        return self.conv(torch.cat([x, skip], dim=1))  # (B, out_ch, Hs, Ws)
