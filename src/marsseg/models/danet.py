"""DANet (Fu et al. 2019): position and channel self-attention on a residual encoder at 1/8 resolution."""

import torch
from torch import nn

from marsseg.models.blocks import BasicBlock, ConvBNReLU, UpBlock, check_model_args, resize


class PositionAttention(nn.Module):
    """Spatial self-attention: every pixel is a weighted sum of all pixels' values; query/key have C/8 channels."""

    def __init__(self, channels: int):
        super().__init__()
        qk = max(1, channels // 8)
        self.query = nn.Conv2d(channels, qk, 1)
        self.key = nn.Conv2d(channels, qk, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        # Starts at 0 so the module begins as the identity and learns how much attention to mix in.
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (B, N, C/8), N = h * w
        k = self.key(x).flatten(2)  # (B, C/8, N)
        attn = torch.softmax(q @ k, dim=-1)  # (B, N, N): row i = how much pixel i reads from each pixel
        out = self.value(x).flatten(2) @ attn.transpose(1, 2)  # (B, C, N)
        return self.gamma * out.reshape(b, c, h, w) + x  # (B, C, h, w)


class ChannelAttention(nn.Module):
    """Channel self-attention: every channel map is a weighted sum of all channel maps (no projections)."""

    def __init__(self):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        flat = x.flatten(2)  # (B, C, N)
        # The paper's softmax(A A^T). (The reference code's softmax(max - energy) equals softmax(-energy),
        # since softmax ignores a per-row constant, i.e. it attends to the *least* similar channels.)
        attn = torch.softmax(flat @ flat.transpose(1, 2), dim=-1)  # (B, C, C)
        return self.gamma * (attn @ flat).reshape(b, c, h, w) + x  # (B, C, h, w)


class DANet(nn.Module):
    """Dual attention network: residual encoder to 1/8, position + channel attention summed, U-Net decoder.

    Args:
        in_channels: image channels (1 for grayscale).
        num_classes: output channels (logits).
        width: stem channels; encoder stage i (1/2**i resolution) has width * 2**i channels.
        dropout: channel dropout on the fused attention features (0.1 as in the paper).
    """

    def __init__(self, in_channels: int = 1, *, num_classes: int = 5, width: int = 32, dropout: float = 0.1):
        super().__init__()
        check_model_args(in_channels, num_classes, width, dropout=dropout)
        self.input_multiple = 8  # three strided stages
        self.stem = ConvBNReLU(in_channels, width)
        self.stages = nn.ModuleList(
            # Two basic blocks per stage (ResNet-18 style), the first one strided: 1/2, 1/4, 1/8.
            [
                nn.Sequential(BasicBlock(c, 2 * c, stride=2), BasicBlock(2 * c, 2 * c))
                for c in (width, 2 * width, 4 * width)
            ]
        )
        inter = 2 * width  # the paper reduces the encoder's channels by 4 before attention
        self.position_in = ConvBNReLU(8 * width, inter)
        self.position = PositionAttention(inter)
        self.position_out = ConvBNReLU(inter, inter)
        self.channel_in = ConvBNReLU(8 * width, inter)
        self.channel = ChannelAttention()
        self.channel_out = ConvBNReLU(inter, inter)
        self.dropout = nn.Dropout2d(dropout)
        # Attention at 1/8 sees the whole image but blurs edges; skips from 1/4 and 1/2 sharpen them.
        self.up_quarter = UpBlock(inter, 4 * width, 2 * width)
        self.up_half = UpBlock(2 * width, 2 * width, width)
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]  # (H, W)
        x = self.stem(x)  # (B, width, H, W)
        features = []
        for stage in self.stages:
            x = stage(x)  # channels x2, H and W /2 per stage
            features.append(x)
        half, quarter, eighth = features  # (B, 2w, H/2, W/2), (B, 4w, H/4, W/4), (B, 8w, H/8, W/8)
        pos = self.position_out(self.position(self.position_in(eighth)))  # (B, 2w, H/8, W/8)
        chan = self.channel_out(self.channel(self.channel_in(eighth)))  # (B, 2w, H/8, W/8)
        x = self.dropout(pos + chan)  # (B, 2w, H/8, W/8)
        x = self.up_quarter(x, quarter)  # (B, 2w, H/4, W/4)
        x = self.up_half(x, half)  # (B, w, H/2, W/2)
        return resize(self.head(x), size)  # (B, num_classes, H, W)
