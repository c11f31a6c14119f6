"""Global stage: a Transformer encoder that refines all patches of an image pair jointly (SPEC §3).

Every patch position of the ``rows × cols`` grid (``H' × W'`` in the paper) is one token, flattened
row-major (token ``t = r·cols + c``). Each token carries the local-stage estimates of *both*
images side by side, 19 numbers per image::

    [xy/3 (4), (angle − π)/π (4), e − 0.5 (2), (color − 0.5)·2 (9)]      → 38 features

and the network returns 12 numbers per token: shared geometry for both images ("defocus
consistency") and four smoothness codes (see :meth:`GlobalStage.decode`).

Parameter names follow the authors' ``pretrained_global_stage.pth`` / ``pretrained_global_stage_w.pth``.
The positional encoding is a fixed table, stored as a non-persistent buffer, so it is not part of
the state dict.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from .local_stage import eta_from_e

__all__ = ["GlobalStage", "GlobalOutput", "positional_encoding_2d"]


def positional_encoding_2d(rows: int, cols: int, d_model: int = 128, stride: int = 2) -> torch.Tensor:
    """Fixed 2-D sinusoidal encoding of a ``rows × cols`` patch grid, ``[rows·cols, d_model]`` float32.

    Token ``t = r·cols + c`` sits at pixel offsets ``(r·stride, c·stride)``. The first ``d/2``
    dimensions encode the row offset and the last ``d/2`` the column offset; within each half,
    dimension pair ``(j, j+1)`` (``j`` even) holds ``sin(p·ω_j)`` and ``cos(p·ω_j)`` with
    ``ω_j = exp(−j · 2 ln(10⁴) / d)``.

    For a square ``L × L`` grid this equals, value for value, the authors' ``L × L`` table flattened
    row-major; a rectangular grid gets the top-left ``rows × cols`` block of a large square table.
    """
    if d_model % 4 != 0:
        raise ValueError(f"d_model must be divisible by 4 for a 2-D sin/cos encoding, got {d_model}")
    half = d_model // 2
    # Computed in float32 in the same order as the reference so the values match bit for bit.
    omega = torch.exp(torch.arange(0, half, 2, dtype=torch.float32) * (-2.0 * math.log(10000.0) / d_model))

    def encode(n: int) -> torch.Tensor:  # [n, half]: interleaved sin/cos of the n offsets
        angle = (torch.arange(n, dtype=torch.float32) * stride)[:, None] * omega[None, :]
        return torch.stack((torch.sin(angle), torch.cos(angle)), dim=-1).reshape(n, half)

    row_code = encode(rows)[:, None, :].expand(rows, cols, half)
    col_code = encode(cols)[None, :, :].expand(rows, cols, half)
    return torch.cat((row_code, col_code), dim=-1).reshape(rows * cols, d_model).contiguous()


class GlobalOutput(NamedTuple):
    """Decoded global-stage prediction for tokens with leading shape ``[...]``.

    Attributes:
        xy: ``[..., 2, 2]`` vertices shared by both images, indexed (wedge, (x, y)).
        angles: ``[..., 2, 2]`` shared angles, indexed (wedge, (θ, φ)), each in [0, 2π).
        e: ``[..., 2, 2]`` smoothness codes, indexed (image, wedge); image 0 is the first ("−")
            capture, image 1 the second ("+").
        eta: ``[..., 2, 2]`` η = 10^(2·erf(e) − 2) ∈ (10⁻⁴, 1), same indexing as ``e``.
    """

    xy: torch.Tensor
    angles: torch.Tensor
    e: torch.Tensor
    eta: torch.Tensor


class GlobalStage(nn.Module):
    """Transformer encoder over all patch tokens of an image pair (paper §3.4, SPEC §3).

    ``in_src_projection`` (linear 38→d) → add the fixed 2-D positional encoding → ``encoder``
    (``num_layers`` post-norm, ReLU, batch-first ``nn.TransformerEncoderLayer`` s and a final
    LayerNorm) → ``generator`` (linear d→12). About 1.07 M parameters with the defaults.

    Args:
        patch_rows, patch_cols: the token grid ``H' × W'`` (64 × 64 for a 147-pixel image, R = 21,
            stride 2). Fixed at construction (see :meth:`set_grid`).
        stride: patch stride in pixels; the positional encoding uses offsets ``index · stride``.
        in_features, out_features, d_model, nhead, num_layers, dim_feedforward, dropout: the
            Transformer's sizes (the paper's values by default).

    Shapes: ``[B, rows·cols, in_features]`` → ``[B, rows·cols, out_features]``, tokens row-major.
    """

    def __init__(
        self,
        patch_rows: int = 64,
        patch_cols: int = 64,
        stride: int = 2,
        in_features: int = 38,
        out_features: int = 12,
        d_model: int = 128,
        nhead: int = 8,
        num_layers: int = 8,
        dim_feedforward: int = 256,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.stride = int(stride)
        self.d_model = d_model
        self.in_src_projection = nn.Linear(in_features, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, nhead, dim_feedforward, dropout=dropout, activation="relu",
            batch_first=True, norm_first=False,
        )
        self.encoder = nn.TransformerEncoder(
            layer, num_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )
        self.generator = nn.Linear(d_model, out_features)
        self.set_grid(patch_rows, patch_cols)
        self.reset_parameters()

    def set_grid(self, patch_rows: int, patch_cols: int) -> None:
        """(Re)build the positional encoding for a ``patch_rows × patch_cols`` token grid.

        The weights do not depend on the grid, so one model can serve images of another size.
        """
        if patch_rows < 1 or patch_cols < 1:
            raise ValueError(f"token grid must be at least 1 × 1, got {patch_rows} × {patch_cols}")
        self.rows, self.cols = int(patch_rows), int(patch_cols)
        table = positional_encoding_2d(self.rows, self.cols, self.d_model, self.stride)[None]
        old = getattr(self, "pos_encoding", None)
        if old is not None:
            table = table.to(device=old.device, dtype=old.dtype)
        # [1, rows·cols, d_model]; persistent=False keeps it out of state_dict() (and weight files).
        self.register_buffer("pos_encoding", table, persistent=False)

    def reset_parameters(self) -> None:
        """Xavier-normal for every weight with more than one dimension (the authors' training
        init); biases and LayerNorm parameters keep PyTorch's defaults."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_normal_(p)

    def forward(self, src: torch.Tensor) -> torch.Tensor:
        """``[B, rows·cols, 38]`` token features → ``[B, rows·cols, 12]`` raw outputs."""
        n_tokens = self.rows * self.cols
        if src.dim() != 3 or src.shape[1] != n_tokens or src.shape[2] != self.in_src_projection.in_features:
            raise ValueError(
                f"GlobalStage built for a {self.rows} × {self.cols} token grid expects "
                f"[B, {n_tokens}, {self.in_src_projection.in_features}], got {list(src.shape)}; "
                "use set_grid(rows, cols) for another image size"
            )
        tokens = self.in_src_projection(src) + self.pos_encoding
        return self.generator(self.encoder(tokens))

    @staticmethod
    def decode(raw: torch.Tensor) -> GlobalOutput:
        """Map raw outputs ``[..., 12]`` to parameters (SPEC §3): ``xy = out[0:4]·3``,
        ``angles = ((out[4:8] + 1)·π) mod 2π``, ``e = out[8:12] + 0.5``, ``η = 10^(2·erf(e) − 2)``."""
        if raw.shape[-1] != 12:
            raise ValueError(f"expected raw global-stage outputs [..., 12], got {list(raw.shape)}")
        lead = raw.shape[:-1]
        xy = (raw[..., 0:4] * 3.0).reshape(*lead, 2, 2)
        angles = torch.remainder((raw[..., 4:8] + 1.0) * math.pi, 2 * math.pi).reshape(*lead, 2, 2)
        e = (raw[..., 8:12] + 0.5).reshape(*lead, 2, 2)
        return GlobalOutput(xy=xy, angles=angles, e=e, eta=eta_from_e(e))
