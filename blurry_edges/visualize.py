"""Figures and image files of the pipeline's outputs (matplotlib's object API, no display).

* :func:`save_scene_figure`: the evaluation figure of one scene: noisy pair, restored pair,
  sharpened and refocused color maps, confidence and boundary maps, ground-truth and estimated
  depth sharing one color bar in cm (pixels without an estimate drawn black).
* :func:`depth_to_color_png`: a depth map as a colored PNG with a scale bar in cm.
* :func:`save_rgb_png`, :func:`save_gray_png`: plain 8-bit images.

Images are given channel-last ``[H, W, 3]`` or channel-first ``[3, H, W]`` (NumPy or torch), with
colors in [0, 1]; depth maps are ``[H, W]`` in metres with 0 meaning "no estimate".
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import matplotlib
import numpy as np
from matplotlib.figure import Figure

__all__ = ["DEPTH_CMAP", "depth_to_color_png", "save_scene_figure", "save_rgb_png",
           "save_gray_png", "to_hwc"]

#: Colormap of depth maps (near = blue … far = red), like the authors' rainbow figures.
DEPTH_CMAP = "turbo"


def to_hwc(img: Any) -> np.ndarray:
    """``[H, W, 3]`` or ``[3, H, W]`` (array or tensor) → float ``[H, W, 3]``; ``[H, W]`` → ``[H, W, 3]``."""
    a = np.asarray(img.detach().cpu() if hasattr(img, "detach") else img, dtype=np.float32)
    if a.ndim == 2:
        return np.repeat(a[..., None], 3, axis=-1)
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[-1] != 3:
        a = np.moveaxis(a, 0, -1)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"expected an image [H, W, 3] or [3, H, W], got shape {a.shape}")
    return a


def _as_map(m: Any) -> np.ndarray:
    a = np.asarray(m.detach().cpu() if hasattr(m, "detach") else m, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"expected a map [H, W], got shape {a.shape}")
    return a


def _cmap(name: str = DEPTH_CMAP):
    return matplotlib.colormaps[name].with_extremes(bad="black")


def _masked_cm(depth: np.ndarray) -> np.ma.MaskedArray:
    """Depth in cm, masked where there is no estimate (≤ 0 or not finite)."""
    return np.ma.masked_where(~(np.isfinite(depth) & (depth > 0)), depth * 100.0)


def _dpi_for(h: int, w: int, panel_inches: float) -> int:
    """Enough dots per inch that a panel shows every pixel of an ``h × w`` map (capped)."""
    return int(min(300, max(100, np.ceil(max(h, w) / panel_inches))))


def depth_to_color_png(depth: Any, z_min: float, z_max: float, path: str | Path,
                       title: Optional[str] = "estimated depth") -> Path:
    """Save a depth map (metres) as a colored PNG with a scale bar in cm; black = no estimate."""
    d = _as_map(depth)
    h, w = d.shape
    panel = 5.0
    fig = Figure(figsize=(panel * w / max(h, w) + 1.4, panel * h / max(h, w) + (0.5 if title else 0.2)))
    ax = fig.subplots()
    im = ax.imshow(_masked_cm(d), cmap=_cmap(), vmin=z_min * 100, vmax=z_max * 100, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    cb.set_label("depth (cm)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_dpi_for(h, w, panel), bbox_inches="tight")
    return path


def save_rgb_png(img: Any, path: str | Path, bgr: bool = False) -> Path:
    """Save a color image in [0, 1] as an 8-bit PNG (``bgr=True`` if its channels are B, G, R)."""
    import cv2

    a = to_hwc(img)
    a = (np.clip(np.nan_to_num(a), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if not bgr:
        a = a[..., ::-1]                          # OpenCV writes B, G, R
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(a)):
        raise OSError(f"could not write {path}")
    return path


def save_gray_png(m: Any, path: str | Path, vmin: float = 0.0, vmax: float = 1.0) -> Path:
    """Save a map as an 8-bit gray PNG, ``vmin`` → black, ``vmax`` → white."""
    import cv2

    a = _as_map(m)
    a = (np.clip((np.nan_to_num(a) - vmin) / (vmax - vmin), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), a):
        raise OSError(f"could not write {path}")
    return path


def save_scene_figure(path: str | Path, noisy: Any, out: dict, gt_depth: Any = None, *,
                      z_min: float = 0.75, z_max: float = 1.18, rho_prime: float = 10.39,
                      bgr: bool = False, title: Optional[str] = None,
                      labels: Optional[dict[str, str]] = None) -> Path:
    """The evaluation figure of one scene (two rows of five panels and a depth color bar in cm).

    Args:
        noisy: ``[2, H, W, 3]`` noisy pair (counts / α; shown clipped to [0, 1]).
        out: :meth:`DepthPipeline.run` outputs (``color``, ``sharpened``, ``refocused``,
            ``confidence``, ``boundary``, ``depth``).
        gt_depth: ``[H, W]`` ground truth (metres) or ``None`` (the panel is left empty).
        bgr: the images' channels are B, G, R (the authors' test sets); shown flipped to RGB.
        labels: panel titles replacing the defaults, by key (``color1``, ``color2``, ``sharpened``,
            ``refocused``, ``confidence``, ``boundary``): another method's maps (e.g. Focal Track's).
    """
    lab = {"color1": "restored color map 1", "color2": "restored color map 2", "sharpened": "sharpened color map",
           "refocused": f"refocused (ρ′ = {rho_prime:g} m⁻¹)", "confidence": "confidence map",
           "boundary": "boundary map", **(labels or {})}
    noisy = np.asarray(noisy, dtype=np.float32)
    flip = (lambda a: a[..., ::-1]) if bgr else (lambda a: a)
    show = lambda a: np.clip(np.nan_to_num(flip(to_hwc(a))), 0.0, 1.0)  # noqa: E731
    color = out["color"]
    h, w = noisy.shape[1:3]
    panel = 2.6
    fig = Figure(figsize=(5 * panel + 0.8, 2 * panel + (0.9 if title else 0.6)))
    gs = fig.add_gridspec(2, 6, width_ratios=[1, 1, 1, 1, 1, 0.06], wspace=0.06, hspace=0.16)
    axes = np.array([[fig.add_subplot(gs[r, c]) for c in range(5)] for r in range(2)])
    cax = fig.add_subplot(gs[:, 5])
    panels = [
        (axes[0, 0], show(noisy[0]), "noisy input 1"),
        (axes[1, 0], show(noisy[1]), "noisy input 2"),
        (axes[0, 1], show(color[0]), lab["color1"]),
        (axes[1, 1], show(color[1]), lab["color2"]),
        (axes[0, 2], show(out["sharpened"]), lab["sharpened"]),
        (axes[1, 2], show(out["refocused"]), lab["refocused"]),
    ]
    for ax, img, name in panels:
        ax.imshow(img, interpolation="nearest")
        ax.set_title(name, fontsize=9)
    axes[0, 3].imshow(_as_map(out["confidence"]), cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    axes[0, 3].set_title(lab["confidence"], fontsize=9)
    axes[1, 3].imshow(_as_map(out["boundary"]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes[1, 3].set_title(lab["boundary"], fontsize=9)
    kw = dict(cmap=_cmap(), vmin=z_min * 100, vmax=z_max * 100, interpolation="nearest")
    if gt_depth is not None:
        axes[0, 4].imshow(_masked_cm(_as_map(gt_depth)), **kw)
    axes[0, 4].set_title("ground-truth depth" if gt_depth is not None else "(no ground truth)", fontsize=9)
    im = axes[1, 4].imshow(_masked_cm(_as_map(out["depth"])), **kw)
    axes[1, 4].set_title("estimated depth", fontsize=9)
    for ax in axes.flat:
        ax.set_axis_off()
    cb = fig.colorbar(im, cax=cax)
    cb.set_label("depth (cm)")
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_dpi_for(h, w, panel), bbox_inches="tight")
    return path
