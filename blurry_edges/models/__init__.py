"""Networks of Blurry-Edges (paper Sec. 3.3), weight-compatible with the authors' released files.

* :class:`LocalStage`  – residual CNN, one patch ``[N, 3, R, R]`` → Ψ ``[N, 10]``.

Their raw outputs are decoded in one place, ``wedges.decode_local`` / ``wedges.decode_global``.
* :class:`GlobalStage` – Transformer over all patch tokens of an image pair ``[B, H'·W', 38]`` →
  ``[B, H'·W', 12]``.
* :class:`UNet`        – depth completion ("Ours-PP") ``[B, 1, H, W]`` → ``[B, 1, H, W]``.
* :func:`load_weights` / :func:`save_weights` and :data:`WEIGHT_FILES` (the authors' file names);
  :func:`weights_id`, the content identity a stage trained on another's outputs records.
"""
from .global_stage import GlobalStage, positional_encoding_2d
from .local_stage import LocalStage, ResidualBlock, Smish, smish
from .unet import UNet
from .weights import WEIGHT_DIR, WEIGHT_FILES, load_weights, save_weights, weights_id

__all__ = [
    "LocalStage", "GlobalStage", "UNet", "Smish", "smish", "ResidualBlock", "positional_encoding_2d",
    "load_weights", "save_weights", "weights_id", "WEIGHT_FILES", "WEIGHT_DIR",
]
