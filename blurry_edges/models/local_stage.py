"""Local stage: a residual CNN that predicts Blurry-Edges parameters Ψ for one patch (paper Sec. 3.3).

The network sees a single noisy image patch ``[N, 3, R, R]`` and returns ten raw numbers per patch,
in this order::

    [x1, y1, x2, y2, θ1, φ1, θ2, φ2, e1, e2]

``(x_i, y_i)`` is the vertex of wedge ``i`` in normalized patch coordinates (the patch spans
[-1, 1]), ``θ_i`` its start angle and ``φ_i`` its angular extent (both taken modulo 2π), and ``e_i``
the unbounded code of its smoothness, ``η_i = 10^(2·erf(e_i) − 2)`` ∈ (10⁻⁴, 1).
:meth:`LocalStage.decode` turns the raw vector into these named quantities.

Parameter names and shapes follow the authors' released ``pretrained_local_stage.pth`` so that file
loads unchanged (see :mod:`blurry_edges.models.weights`).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["Smish", "smish", "ResidualBlock", "LocalStage"]


def smish(x: torch.Tensor) -> torch.Tensor:
    """Smish activation, ``x · tanh(ln(1 + sigmoid(x)))``, element-wise on any shape."""
    return x * torch.tanh(torch.log1p(torch.sigmoid(x)))


class Smish(nn.Module):
    """Module form of :func:`smish` (no parameters; any input shape, same output shape)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return smish(x)


def _conv_bn(c_in: int, c_out: int, kernel_size: int, *, activation: bool) -> nn.Sequential:
    """``[Conv2d(k×k, 'same' padding), BatchNorm2d]`` and, if asked, a trailing Smish."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel_size=kernel_size, padding=kernel_size // 2),
        nn.BatchNorm2d(c_out),
    ]
    if activation:
        layers.append(Smish())
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """Two 3×3 conv+BN stages with a skip connection, then Smish; keeps the spatial size.

    ``[N, c_in, H, W] → [N, c_out, H, W]``. Sub-modules (state-dict names): ``conv1`` =
    [conv3×3, BN, Smish], ``conv2`` = [conv3×3, BN], and ``downsample`` = [conv1×1, BN] on the skip
    path when the channel count changes (``None``, i.e. identity, otherwise).
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(c_in, c_out, 3, activation=True)
        self.conv2 = _conv_bn(c_out, c_out, 3, activation=False)
        self.downsample = _conv_bn(c_in, c_out, 1, activation=False) if c_in != c_out else None
        self.activation = Smish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        return self.activation(self.conv2(self.conv1(x)) + skip)


class LocalStage(nn.Module):
    """Residual CNN mapping one image patch to its Blurry-Edges parameters (paper Sec. 3.3).

    Layout (state-dict names in brackets)::

        [conv1]  conv7×7(3→64) + BN + Smish          R × R
        maxpool 3×3 / 2 (pad 1)                      ⌊(R−1)/2⌋+1
        [layer0] residual block 64→96
        maxpool 3×3 / 2 (pad 1)
        [layer1] block 96→256, [layer2] 256→384, [layer3] 384→256
        maxpool 2×2 / 2                              k × k
        [fc]     flatten, linear(256·k²→1024), BN1d, Smish, linear(1024→10)

    ``k`` follows from ``R`` (:meth:`feature_size`): 1 for R = 11, 3 for R = 21, 4 for R = 31.
    At R = 21 the network has 7,254,122 parameters.

    Args:
        R: patch size in pixels, odd and at least 7.

    Shapes: input ``[N, 3, R, R]`` → output ``[N, 10]`` raw ``[x1, y1, x2, y2, θ1, φ1, θ2, φ2, e1,
    e2]`` (see :meth:`decode`).
    """

    OUTPUT_DIM = 10
    CHANNELS = (64, 96, 256, 384, 256)  # stem, then the outputs of layer0..layer3
    FC_HIDDEN = 1024

    def __init__(self, R: int = 21) -> None:
        super().__init__()
        if isinstance(R, bool) or not isinstance(R, int) or R < 7 or R % 2 == 0:
            raise ValueError(f"patch size R must be an odd integer >= 7, got {R!r}")
        self.R = R
        c = self.CHANNELS
        self.conv1 = _conv_bn(3, c[0], 7, activation=True)
        # Each stage is a Sequential holding one block, so names read "layer0.0.conv1.0.weight".
        self.layer0 = nn.Sequential(ResidualBlock(c[0], c[1]))
        self.layer1 = nn.Sequential(ResidualBlock(c[1], c[2]))
        self.layer2 = nn.Sequential(ResidualBlock(c[2], c[3]))
        self.layer3 = nn.Sequential(ResidualBlock(c[3], c[4]))
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.maxpool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        k = self.feature_size(R)
        self.fc = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c[4] * k * k, self.FC_HIDDEN),
            nn.BatchNorm1d(self.FC_HIDDEN),
            Smish(),
            nn.Linear(self.FC_HIDDEN, self.OUTPUT_DIM),
        )
        self.reset_parameters()

    @staticmethod
    def feature_size(R: int) -> int:
        """Side ``k`` of the feature map entering ``fc`` for an ``R × R`` patch.

        The convolutions keep the size; the two 3×3/2 pools (padding 1) and the final 2×2/2 pool
        each shrink it by the usual ``⌊(n + 2p − kernel) / stride⌋ + 1`` rule.
        """
        n = R
        for kernel, stride, pad in ((3, 2, 1), (3, 2, 1), (2, 2, 0)):
            n = (n + 2 * pad - kernel) // stride + 1
        if n < 1:
            raise ValueError(f"patch size R={R} is too small for the local stage")
        return n

    def reset_parameters(self) -> None:
        """Xavier-normal for every weight with more than one dimension (the authors' training
        init); biases and BatchNorm affine parameters keep PyTorch's defaults."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_normal_(p)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """``[N, 3, R, R]`` patches → ``[N, 10]`` raw parameters (order in the class docstring)."""
        if patches.dim() != 4 or patches.shape[1] != 3 or patches.shape[-2:] != (self.R, self.R):
            raise ValueError(
                f"LocalStage(R={self.R}) expects patches of shape [N, 3, {self.R}, {self.R}], "
                f"got {list(patches.shape)}"
            )
        x = self.maxpool1(self.conv1(patches))
        x = self.maxpool1(self.layer0(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.fc[:-1](self.maxpool2(x))
        # The last linear layer (1024 → 10) runs in float32 even under autocast: its outputs are the
        # smoothness codes e, and bf16's 8-bit mantissa would move η = 10^(2·erf(e) − 2) by ~1 %.
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.fc[-1](x.float())
