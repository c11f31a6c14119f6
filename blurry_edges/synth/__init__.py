"""Synthetic data: basic-shape training scenes and realistic test scenes (paper Sec. 4.2).

Modules: ``psf`` (Gaussian PSF, separable blurring), ``noise`` (Eq. 23), ``shapes`` (training
scenes, ground truth, patches), ``realistic`` (layered test-scene rendering), ``sources`` (MS-COCO,
paintings, built-in textures), ``writer`` (streaming, crash-safe dataset folders), ``generate``
(whole sets, parallel and reproducible), ``cli`` (the generator scripts' options).
"""
from .noise import add_noise, draw_alpha
from .psf import blur_reflect, gaussian_kernel_1d
from .realistic import RealisticConfig, make_test_scene, render_layer, render_layers
from .shapes import (SceneSpec, ShapeSceneConfig, ShapeSpec, cut_patch, draw_scene_spec, make_clean_scene,
                     make_scene, render_clean_scene, sample_patches, select_patches)
from .generate import generate_test, generate_train_val, scene_rng

__all__ = [
    "add_noise", "draw_alpha", "blur_reflect", "gaussian_kernel_1d",
    "RealisticConfig", "make_test_scene", "render_layer", "render_layers",
    "SceneSpec", "ShapeSceneConfig", "ShapeSpec", "cut_patch", "draw_scene_spec", "make_clean_scene",
    "make_scene", "render_clean_scene", "sample_patches", "select_patches",
    "generate_test", "generate_train_val", "scene_rng",
]
