"""Global stage: a Transformer encoder that refines all patches of an image pair jointly (paper Sec. 3.3).

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

import torch
from torch import nn

from ..wedges import ETA_LOGIT_RANGE


__all__ = ["GlobalStage", "positional_encoding_2d", "positional_encoding_at"]


def _encode_offsets(offsets: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """``[..., n]`` pixel offsets → ``[..., n, 2·len(omega)]``: interleaved ``sin(p·ω), cos(p·ω)``."""
    angle = offsets.to(torch.float32)[..., None] * omega
    return torch.stack((torch.sin(angle), torch.cos(angle)), dim=-1).flatten(-2)


def _omega(d_model: int, device=None) -> torch.Tensor:
    if d_model % 4 != 0:
        raise ValueError(f"d_model must be divisible by 4 for a 2-D sin/cos encoding, got {d_model}")
    # Computed in float32 in the same order as the reference so the values match bit for bit.
    return torch.exp(torch.arange(0, d_model // 2, 2, dtype=torch.float32, device=device)
                     * (-2.0 * math.log(10000.0) / d_model))


def positional_encoding_2d(rows: int, cols: int, d_model: int = 128, stride: int = 2) -> torch.Tensor:
    """Fixed 2-D sinusoidal encoding of a ``rows × cols`` patch grid, ``[rows·cols, d_model]`` float32.

    Token ``t = r·cols + c`` sits at pixel offsets ``(r·stride, c·stride)``. The first ``d/2``
    dimensions encode the row offset and the last ``d/2`` the column offset; within each half,
    dimension pair ``(j, j+1)`` (``j`` even) holds ``sin(p·ω_j)`` and ``cos(p·ω_j)`` with
    ``ω_j = exp(−j · 2 ln(10⁴) / d)``.

    For a square ``L × L`` grid this equals, value for value, the authors' ``L × L`` table flattened
    row-major; a rectangular grid gets the top-left ``rows × cols`` block of a large square table.
    """
    origin = torch.zeros(1, 2, dtype=torch.long)
    return positional_encoding_at(origin, rows, cols, d_model, stride)[0]


def positional_encoding_at(origin: torch.Tensor, rows: int, cols: int, d_model: int = 128,
                           stride: int = 2) -> torch.Tensor:
    """The encoding of :func:`positional_encoding_2d` for ``rows × cols`` windows of a larger grid.

    Args:
        origin: ``[B, 2]`` integer (row, column) of each window's first token in the larger grid.
    Returns:
        ``[B, rows·cols, d_model]`` float32: token ``(r, c)`` of window ``b`` gets the code of grid
        position ``(origin[b, 0] + r, origin[b, 1] + c)``, so a network trained on crops of a grid
        sees the positions they have in the full grid.
    """
    if origin.dim() != 2 or origin.shape[1] != 2:
        raise ValueError(f"origin must be [B, 2] (row, column) token offsets, got {list(origin.shape)}")
    omega = _omega(d_model, origin.device)
    half = d_model // 2
    B = origin.shape[0]
    r = (origin[:, :1] + torch.arange(rows, device=origin.device)) * stride       # [B, rows]
    c = (origin[:, 1:] + torch.arange(cols, device=origin.device)) * stride       # [B, cols]
    row_code = _encode_offsets(r, omega)[:, :, None, :].expand(B, rows, cols, half)
    col_code = _encode_offsets(c, omega)[:, None, :, :].expand(B, rows, cols, half)
    return torch.cat((row_code, col_code), dim=-1).reshape(B, rows * cols, d_model).contiguous()


class GlobalStage(nn.Module):
    """Transformer encoder over all patch tokens of an image pair (paper Sec. 3.3).

    ``in_src_projection`` (linear 38→d) → add the fixed 2-D positional encoding → ``encoder``
    (``num_layers`` post-norm, ReLU, batch-first ``nn.TransformerEncoderLayer`` s and a final
    LayerNorm) → ``generator`` (linear d→12). About 1.07 M parameters with the defaults.

    Args:
        patch_rows, patch_cols: the token grid ``H' × W'`` (64 × 64 for a 147-pixel image, R = 21,
            stride 2). Fixed at construction (see :meth:`set_grid`).
        stride: patch stride in pixels; the positional encoding uses offsets ``index · stride``.
        in_features, out_features, d_model, nhead, num_layers, dim_feedforward, dropout: the
            Transformer's sizes (the paper's values by default).
        token_xy_bound: ours, not the paper's (``None``, the default, as in the paper): clamp the
            vertex coordinates of the input tokens to ``±token_xy_bound`` (see :meth:`bound_tokens`).
            Weights trained with it record it in their meta, and
            :func:`~blurry_edges.models.load_weights` sets it from there.

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
        token_xy_bound: float | None = None,
    ) -> None:
        super().__init__()
        self.stride = int(stride)
        self.token_xy_bound = token_xy_bound
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

    def set_attention_dropout(self, p: float) -> None:
        """Dropout on the attention weights of every layer (0.1 in the paper; parameters unchanged).

        With 0, PyTorch's memory-efficient (flash) attention kernel serves training on the CPU: no
        ``T × T`` attention map is kept for the backward pass (a 4096-token step needs ~15 GB with
        it, ~1 GB without) and a 576-token step runs ~1.6× faster. Dropout elsewhere (feed-forward,
        residual) stays as constructed.
        """
        if not 0.0 <= p < 1.0:
            raise ValueError(f"attention dropout must be in [0, 1), got {p}")
        for layer in self.encoder.layers:
            layer.self_attn.dropout = float(p)

    @property
    def token_xy_bound(self) -> float | None:
        return self._token_xy_bound

    @token_xy_bound.setter
    def token_xy_bound(self, bound: float | None) -> None:
        if bound is not None and not (isinstance(bound, (int, float)) and math.isfinite(bound) and bound > 0):
            raise ValueError(f"token_xy_bound must be a positive number or None, got {bound!r}")
        self._token_xy_bound = None if bound is None else float(bound)

    def bound_tokens(self, src: torch.Tensor) -> torch.Tensor:
        """``[..., 38]`` tokens with both images' vertex coordinates (``xy/3``, features 0–3 and
        19–22) clamped to ``±token_xy_bound`` and their η logits (``e − 0.5``, features 8–9 and
        27–28) to ``wedges.ETA_LOGIT_RANGE``, beyond which every logit decodes to the same η; the
        tokens themselves when ``token_xy_bound`` is ``None``.

        Ours (README "Training on a CPU"): a local stage trained from scratch places the vertex of
        1–4 % of its patches far outside them (``xy/3`` up to ~40, a boundary that crosses the patch
        as a nearly straight line) and emits η logits down to −80. Such tokens reach the
        Transformer hundreds of times larger than the rest and the global stage passed on almost
        nothing of the other patches' η (stage 10, ``pretrained_weights/TRAINING.md``).
        """
        if self._token_xy_bound is None:
            return src
        b = self._token_xy_bound
        lo, hi = ETA_LOGIT_RANGE
        half = src.shape[-1] // 2
        parts = []
        for img in (src[..., :half], src[..., half:]):
            parts += [img[..., 0:4].clamp(-b, b), img[..., 4:8], img[..., 8:10].clamp(lo - 0.5, hi - 0.5), img[..., 10:]]
        return torch.cat(parts, dim=-1)

    @property
    def attention_dropout(self) -> float:
        return float(self.encoder.layers[0].self_attn.dropout)

    def reset_parameters(self) -> None:
        """Xavier-normal for every weight with more than one dimension (the authors' training
        init); biases and LayerNorm parameters keep PyTorch's defaults."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_normal_(p)

    def forward(self, src: torch.Tensor, origin: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, rows·cols, 38]`` token features → ``[B, rows·cols, 12]`` raw outputs, float32.

        Args:
            src: the tokens of a ``rows × cols`` grid, row-major.
            origin: optional ``[B, 2]`` (row, column) of each grid's first token in a larger grid:
                for crops of a patch grid (the CPU recipe, README "Training on a CPU"), whose tokens
                then get the positional codes of their place in the full grid. ``None``: ``(0, 0)``.

        Under autocast the encoder may run in bf16, but the output projection runs in float32:
        depth comes from ``η1² − η2²`` (paper Eq. 7), a difference of nearly equal numbers that
        bf16's 8-bit mantissa would swamp.
        """
        n_tokens = self.rows * self.cols
        if src.dim() != 3 or src.shape[1] != n_tokens or src.shape[2] != self.in_src_projection.in_features:
            raise ValueError(
                f"GlobalStage built for a {self.rows} × {self.cols} token grid expects "
                f"[B, {n_tokens}, {self.in_src_projection.in_features}], got {list(src.shape)}; "
                "use set_grid(rows, cols) for another image size"
            )
        if origin is None:
            pos = self.pos_encoding
        else:
            if origin.shape != (src.shape[0], 2):
                raise ValueError(f"origin must be [B, 2] = [{src.shape[0]}, 2], got {list(origin.shape)}")
            pos = positional_encoding_at(origin.to(src.device), self.rows, self.cols, self.d_model,
                                         self.stride).to(self.pos_encoding.dtype)
        hidden = self.encoder(self.in_src_projection(self.bound_tokens(src)) + pos)
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            return self.generator(hidden.float())
