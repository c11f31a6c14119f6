"""Blurry-Edges: photon-limited depth estimation from defocused boundaries (CVPR 2025), in PyTorch.

The main API (README "From Python"):

* :class:`CameraParams` – the camera and depth from defocus (paper Sec. 3.1).
* :class:`WedgeRenderer` – the Blurry-Edges representation rendered per patch (paper Sec. 3.2).
* :class:`PatchGrid` – patches ↔ image, the folds of paper Eqs. 17–20.
* :class:`LocalStage`, :class:`GlobalStage`, :class:`UNet` – the networks (paper Sec. 3.3) and
  :func:`load_weights` for the authors' or freshly trained weight files.
* :class:`DepthPipeline`, :class:`PipelineConfig`, :func:`build_pipeline` – an image pair → every map.
"""
from .camera import ETA_SHARP, CameraParams
from .models import GlobalStage, LocalStage, UNet, load_weights, save_weights
from .patches import PatchGrid
from .pipeline import DepthPipeline, PipelineConfig, build_pipeline
from .wedges import WedgeRenderer

__all__ = ["CameraParams", "ETA_SHARP", "WedgeRenderer", "PatchGrid", "LocalStage", "GlobalStage", "UNet",
           "load_weights", "save_weights", "DepthPipeline", "PipelineConfig", "build_pipeline"]
__version__ = "0.1.0"
