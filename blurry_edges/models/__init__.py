"""Networks of Blurry-Edges (SPEC §3), weight-compatible with the authors' released files.

* :class:`LocalStage`  – residual CNN, one patch ``[N, 3, R, R]`` → Ψ ``[N, 10]``.
* :class:`GlobalStage` – Transformer over all patch tokens of an image pair ``[B, H'·W', 38]`` →
  ``[B, H'·W', 12]``.
* :class:`UNet`        – depth completion ("Ours-PP") ``[B, 1, H, W]`` → ``[B, 1, H, W]``.
* :func:`load_weights` / :func:`save_weights` and :data:`WEIGHT_FILES` (the authors' file names).
"""
from .global_stage import GlobalOutput, GlobalStage, positional_encoding_2d
from .local_stage import LocalOutput, LocalStage, ResidualBlock, Smish, eta_from_e, smish
from .unet import UNet
from .weights import WEIGHT_DIR, WEIGHT_FILES, load_weights, save_weights, weight_path

__all__ = [
    "LocalStage", "GlobalStage", "UNet", "Smish", "smish", "ResidualBlock", "eta_from_e",
    "LocalOutput", "GlobalOutput", "positional_encoding_2d",
    "load_weights", "save_weights", "weight_path", "WEIGHT_FILES", "WEIGHT_DIR",
]
