"""Realistic test scenes: a textured background and a segmented object on tilted planes (paper Sec. 4.2).

Each layer (background painting, foreground object) lies on a plane tilted in a random direction.
Normalized depths come from four sorted uniforms ``1 > b1 ≥ b2 ≥ f1 ≥ f2 > 0``: the background spans
``[b2, b1]``, the object ``[f2, f1]`` (so the background is farther), mapped linearly to
``[Z_min, Z_max]``.

Rendering follows the authors (after Guo et al.): per layer, ``n_interval + 1`` (151) depth key
points evenly spaced between the layer's largest and smallest depth; for each key point the whole
layer is blurred with that depth's Gaussian PSF, and each pixel takes the linear interpolation of
the two key points that bracket its depth (pixels beyond the end key points take the end key point).
The object's binary mask is blurred the same way, clipped to [0, 1] and used for compositing:
``clean = background_blurred · (1 − mask_blurred) + object_blurred`` (the object texture was
masked before it was scaled, so it is zero away from the mask). The clean image is *not* rounded before the noise, as in the authors' code.

Speed: the authors convolve the full image in 2-D for every key point and optical power (~600
blurs per scene). Here each key point is blurred separably and only where its interpolation weight
is non-zero — the band of pixels whose depth lies between its neighbours — cut into row strips,
each blurred with just the border it needs from a once-padded layer. The numbers are the same up to
floating-point rounding.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..camera import CameraParams
from .noise import add_noise, counts_dtype, draw_alpha
from .psf import MIN_SIGMA, blur_valid, gaussian_kernel_1d

N_IMAGES = 2


@dataclass(frozen=True)
class RealisticConfig:
    """Distribution of one realistic test scene (the textures come from a ``sources`` object)."""

    img_size: tuple[int, int] = (147, 147)
    alpha: tuple[float, float] = (180.0, 200.0)
    sigma: float = 2.0
    camera: CameraParams = field(default_factory=CameraParams)
    n_interval: int = 150          # 151 key points per layer

    @property
    def z_range(self) -> tuple[float, float]:
        return (self.camera.z_min, self.camera.z_max)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["camera"] = self.camera.to_dict()
        d["img_size"] = list(self.img_size)
        d["alpha"] = list(self.alpha)
        return d

    @property
    def counts_dtype(self) -> np.dtype:
        return counts_dtype(self.alpha[1])


# ------------------------------------------------------------------------------------ geometry
def draw_planes(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Relative depth key points ``[b1, b2, f1, f2]`` (descending uniforms) and two tilt angles."""
    rel = np.sort(rng.random(4))[::-1].copy()
    angles = rng.random(2) * 2 * np.pi
    return rel, angles


def plane_depth_maps(rel: np.ndarray, angles: np.ndarray, img_size, z_range):
    """Depth (m) of the background plane and of the object plane over the whole image.

    The plane's normalized depth is the signed distance along direction ``angle`` from the image
    centre ``(W//2, H//2)``, rescaled to ``[b2, b1]`` (background) or ``[f2, f1]`` (object), then
    mapped to ``[Z_min, Z_max]``. Returns two float64 [H, W] maps.
    """
    H, W = img_size
    y = np.arange(H, dtype=np.float64)[:, None]
    x = np.arange(W, dtype=np.float64)[None, :]
    cx, cy = W // 2, H // 2
    z0, z1 = z_range
    out = []
    for layer in range(2):
        a = angles[layer]
        t = -np.sin(a) * (x - cx) + np.cos(a) * (y - cy)
        hi, lo = rel[2 * layer], rel[2 * layer + 1]
        span = t.max() - t.min()
        norm = (t - t.min()) / span * (hi - lo) + lo if span > 0 else np.full((H, W), lo)
        out.append((z1 - z0) * norm + z0)
    return out[0], out[1]


def key_points(depth: np.ndarray, n_interval: int, region: np.ndarray | None = None) -> np.ndarray:
    """``n_interval + 1`` key depths from the largest to the smallest depth (over ``region`` if given)."""
    d = depth[region] if region is not None else depth
    return np.linspace(d.max(), d.min(), n_interval + 1)


def interpolation_weights(depth: np.ndarray, kp: np.ndarray):
    """Linear interpolation weights of every pixel on the (descending) key points.

    A pixel with ``kp[j] ≥ d > kp[j+1]`` gets ``1 − (kp[j] − d)/Δ`` on key point ``j`` and
    ``(kp[j+1] + Δ − d)/Δ`` on ``j + 1`` (Δ = ``kp[0] − kp[1]``, the authors' formulas); pixels
    deeper than ``kp[0]`` or nearer than ``kp[-1]`` take weight 1 on that end key point.

    Returns ``(key, pixel, weight)`` flat arrays sorted by key point, zero weights dropped.
    """
    d = depth.reshape(-1)
    n = len(kp) - 1
    npix = d.size
    pix = np.arange(npix)
    delta = kp[0] - kp[1]
    if n == 0 or delta <= 0:      # a layer of constant depth: one key point carries everything
        return np.zeros(npix, np.int64), pix, np.ones(npix)
    j = (n + 1) - np.searchsorted(kp[::-1], d, side="left") - 1     # kp[j] ≥ d > kp[j+1]
    below, above = j < 0, j >= n
    mid = ~(below | above)
    jm = j[mid]
    dm = d[mid]
    keys = np.concatenate([np.zeros(below.sum(), np.int64), np.full(above.sum(), n, np.int64), jm, jm + 1])
    pixels = np.concatenate([pix[below], pix[above], pix[mid], pix[mid]])
    weights = np.concatenate([np.ones(below.sum()), np.ones(above.sum()),
                              (dm - kp[jm] + delta) / delta,          # (d − kp_j − diff)/(−diff)
                              (kp[jm + 1] + delta - dm) / delta])     # (kp_{j+1} − diff − d)/(−diff)
    # the neighbours' spacing can differ from Δ in the last bit: never let that make a weight negative
    np.maximum(weights, 0.0, out=weights)
    keep = weights != 0
    keys, pixels, weights = keys[keep], pixels[keep], weights[keep]
    order = np.argsort(keys, kind="stable")
    return keys[order], pixels[order], weights[order]


# ----------------------------------------------------------------------------------- rendering
def render_layer(layer: np.ndarray, depth: np.ndarray, kp: np.ndarray, camera: CameraParams,
                 strip: int = 32) -> np.ndarray:
    """Depth-dependent defocus of one layer under both optical powers.

    Args:
        layer: [H, W, C] float64 (C ≤ 4: RGB, plus the mask as a 4th channel for the object).
        depth: [H, W] depth (m) of the layer's plane at every pixel.
        kp: descending key depths (``key_points``).
        camera: the camera; image ``ii`` uses power ``camera.rhos[ii]``.
        strip: height of the row strips a key point's band is cut into (speed only).

    Returns:
        [2, H, W, C] float64: ``Σ_k w_k(x) · (G_{σ(kp_k, ρ)} ⊛ layer)(x)`` with reflect borders.
    """
    H, W, C = layer.shape
    keys, pixels, weights = interpolation_weights(depth, kp)
    sig = np.stack([np.asarray(camera.sigma_px(kp, rho), np.float64) for rho in camera.rhos], 1)
    radii = np.ceil(np.maximum(sig, MIN_SIGMA) * 3).astype(int)
    K = int(radii.max())
    padded = np.pad(layer, ((K, K), (K, K), (0, 0)), mode="symmetric")   # = SciPy 'reflect'
    out = np.zeros((N_IMAGES, H * W, C), np.float64)
    bounds = np.flatnonzero(np.diff(keys)) + 1
    for start, stop in zip(np.r_[0, bounds], np.r_[bounds, len(keys)]):
        key = int(keys[start])
        pix, w = pixels[start:stop], weights[start:stop]
        rows, cols = pix // W, pix % W
        band = rows // strip
        order = np.argsort(band, kind="stable")
        pix, w, rows, cols, band = pix[order], w[order], rows[order], cols[order], band[order]
        cuts = np.flatnonzero(np.diff(band)) + 1
        kernels = [gaussian_kernel_1d(sig[key, ii]) for ii in range(N_IMAGES)]
        for s0, s1 in zip(np.r_[0, cuts], np.r_[cuts, len(pix)]):
            r, c = rows[s0:s1], cols[s0:s1]
            r0, r1, c0, c1 = int(r.min()), int(r.max()) + 1, int(c.min()), int(c.max()) + 1
            for ii in range(N_IMAGES):
                k = int(radii[key, ii])
                block = padded[r0 + K - k:r1 + K + k, c0 + K - k:c1 + K + k]
                blurred = blur_valid(block, kernels[ii]).reshape(r1 - r0, c1 - c0, C)
                out[ii, pix[s0:s1]] += w[s0:s1, None] * blurred[r - r0, c - c0]
    return out.reshape(N_IMAGES, H, W, C)


def render_layers(background: np.ndarray, obj: np.ndarray, mask: np.ndarray, depth_bg: np.ndarray,
                  depth_fg: np.ndarray, camera: CameraParams, n_interval: int = 150) -> np.ndarray:
    """Composite the defocused background and object layers (both images).

    Args:
        background: [H, W, 3] background texture in [0, 255].
        obj: [H, W, 3] object texture in [0, 255], masked before scaling (zero away from ``mask``).
        mask: [H, W] bool object mask.
        depth_bg, depth_fg: [H, W] plane depths (m) of each layer over the whole image.
        camera: optics; n_interval: key points per layer minus one.

    Returns:
        clean [2, H, W, 3] float64 in [0, 255] (not rounded).
    """
    mask = np.asarray(mask, bool)
    kp_bg = key_points(depth_bg, n_interval)
    kp_fg = key_points(depth_fg, n_interval, region=mask) if mask.any() else key_points(depth_fg, n_interval)
    bg = render_layer(np.asarray(background, np.float64), depth_bg, kp_bg, camera)
    fg_layer = np.concatenate([np.asarray(obj, np.float64), mask[..., None].astype(np.float64)], axis=2)
    fg = render_layer(fg_layer, depth_fg, kp_fg, camera)
    alpha = np.clip(fg[..., 3:], 0.0, 1.0)
    return bg * (1.0 - alpha) + fg[..., :3]


def make_test_scene(rng: np.random.Generator, obj: np.ndarray, mask: np.ndarray, background: np.ndarray,
                    cfg: RealisticConfig) -> dict:
    """One realistic test scene from its textures: planes, rendering, noise.

    Args:
        rng: the scene's generator (planes, then α, then noise).
        obj: [H, W, 3] uint8 object texture (masked); mask: [H, W] bool;
        background: [H, W, 3] uint8.

    Returns:
        ``images_ny`` [2, H, W, 3] counts, ``images_gt`` [2, H, W, 3] uint8 (the clean render
        rounded for storage; the noise was drawn from the unrounded render), ``depth_map`` [H, W]
        float32 (object depth on the mask, background elsewhere), ``alpha`` float32.
    """
    rel, angles = draw_planes(rng)
    depth_bg, depth_fg = plane_depth_maps(rel, angles, cfg.img_size, cfg.z_range)
    mask = np.asarray(mask, bool)
    clean = render_layers(background, obj, mask, depth_bg, depth_fg, cfg.camera, cfg.n_interval)
    alpha = draw_alpha(rng, cfg.alpha)
    noisy = add_noise(rng, clean, alpha, cfg.sigma, dtype=cfg.counts_dtype)
    return {
        "images_ny": noisy,
        "images_gt": np.clip(np.round(clean), 0, 255).astype(np.uint8),
        "depth_map": np.where(mask, depth_fg, depth_bg).astype(np.float32),
        "alpha": alpha,
    }
