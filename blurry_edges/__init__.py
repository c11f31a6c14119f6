"""Blurry-Edges: photon-limited depth estimation from defocused boundaries (CVPR 2025), in PyTorch."""
from .camera import CameraParams, ETA_SHARP

__all__ = ["CameraParams", "ETA_SHARP"]
__version__ = "0.1.0"
