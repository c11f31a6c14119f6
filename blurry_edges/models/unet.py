"""Depth-completion U-Net ("Ours-PP", paper Sec. 4.4, Table 3): densifies the sparse global depth map.

A standard U-Net with 64-128-256-512-1024 channels, max-pool down-sampling and transposed-conv
up-sampling. State-dict names (``inc``, ``down1..4.maxpool_conv``, ``up1..4.up`` / ``.conv``,
``outc.conv`` and ``double_conv`` inside) match the authors' ``pretrained_depth_completion_pp.pth``.
Odd sizes (the paper's 147 × 147 images) are handled by zero-padding the up-sampled map to its skip
connection before concatenation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNet", "DoubleConv", "Down", "Up", "OutConv"]


class DoubleConv(nn.Module):
    """``[conv3×3 (no bias), BN, ReLU] × 2``: ``[B, c_in, H, W] → [B, c_out, H, W]``."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Down(nn.Module):
    """2×2 max-pool then :class:`DoubleConv`: ``[B, c_in, H, W] → [B, c_out, ⌊H/2⌋, ⌊W/2⌋]``."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(c_in, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Transposed-conv ×2 up-sampling (halving the channels), pad to the skip map, concatenate
    ``[skip, up]``, then :class:`DoubleConv`.

    ``x [B, c_in, h, w]`` and ``skip [B, c_in/2, H, W]`` (``H ∈ {2h, 2h+1}``) → ``[B, c_out, H, W]``.
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_in // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(c_in, c_out)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        dy = skip.shape[-2] - x.shape[-2]
        dx = skip.shape[-1] - x.shape[-1]
        if dy or dx:  # odd input sizes lose a row/column in the pool; give it back as zeros
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class OutConv(nn.Module):
    """1×1 convolution to the output channels: ``[B, c_in, H, W] → [B, c_out, H, W]``."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UNet(nn.Module):
    """U-Net for depth completion: sparse depth ``[B, n_channels, H, W]`` → dense ``[B, n_classes, H, W]``.

    For the paper's 147 × 147 maps the encoder sizes are 147 → 73 → 36 → 18 → 9, and the decoder
    climbs back to 147 (any H, W ≥ 16 work). About 31 M parameters.
    """

    WIDTHS = (64, 128, 256, 512, 1024)

    def __init__(self, n_channels: int = 1, n_classes: int = 1) -> None:
        super().__init__()
        self.n_channels, self.n_classes = n_channels, n_classes
        w = self.WIDTHS
        self.inc = DoubleConv(n_channels, w[0])
        self.down1, self.down2, self.down3, self.down4 = (Down(w[i], w[i + 1]) for i in range(4))
        self.up1, self.up2, self.up3, self.up4 = (Up(w[i], w[i - 1]) for i in range(4, 0, -1))
        self.outc = OutConv(w[0], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.n_channels or min(x.shape[-2:]) < 16:
            raise ValueError(
                f"UNet expects [B, {self.n_channels}, H, W] with H, W >= 16, got {list(x.shape)}"
            )
        s1 = self.inc(x)
        s2 = self.down1(s1)
        s3 = self.down2(s2)
        s4 = self.down3(s3)
        y = self.down4(s4)
        y = self.up1(y, s4)
        y = self.up2(y, s3)
        y = self.up3(y, s2)
        y = self.up4(y, s1)
        return self.outc(y)
