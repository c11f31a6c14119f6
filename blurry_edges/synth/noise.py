"""Photon-limited sensor noise (paper Eq. 23, Sec. 4.2).

``I = Poisson(α · clean / 255) + N(0, σ²)``, clipped to ``[0, α]`` and rounded: a photon count.
The networks see ``I / α``. α (the mean photon count of a white pixel) is drawn per scene.
"""
from __future__ import annotations

import numpy as np


def counts_dtype(alpha_max: float) -> np.dtype:
    """Smallest unsigned integer type that holds every count (counts are ≤ round(α_max))."""
    return np.dtype(np.uint8) if round(float(alpha_max)) <= 255 else np.dtype(np.uint16)


def draw_alpha(rng: np.random.Generator, alpha_range) -> np.float32:
    """Photon level α ~ U(lo, hi) for one scene.

    Drawn in float64, then rounded to float32 *before* it is used, so the α stored on disk is
    exactly the α that made the noise.
    """
    lo, hi = float(alpha_range[0]), float(alpha_range[1])
    return np.float32(rng.uniform(lo, hi))


def add_noise(rng: np.random.Generator, clean: np.ndarray, alpha: float, sigma: float,
              dtype=None) -> np.ndarray:
    """Noisy photon counts of a clean image.

    Args:
        rng: random generator (consumed: one Poisson and one normal draw per value).
        clean: clean image in [0, 255] (uint8, or float for the unrounded realistic renders), any shape.
        alpha: photon level α of the scene.
        sigma: read-noise standard deviation in photons (the authors use 2).
        dtype: integer dtype of the result (default: ``counts_dtype(alpha)``).

    Returns:
        ``round(clip(Poisson(α·clean/255) + σ·N(0, 1), 0, α))`` as integers, same shape as ``clean``.
    """
    alpha = float(alpha)
    lam = np.asarray(clean, dtype=np.float64) / 255.0 * alpha
    np.maximum(lam, 0.0, out=lam)
    noisy = rng.poisson(lam).astype(np.float32)
    # read noise in float32: ample for a value that is rounded to an integer right after
    noisy += np.float32(sigma) * rng.standard_normal(lam.shape, dtype=np.float32)
    np.clip(noisy, np.float32(0.0), np.float32(alpha), out=noisy)
    np.round(noisy, out=noisy)
    return noisy.astype(dtype if dtype is not None else counts_dtype(alpha))
