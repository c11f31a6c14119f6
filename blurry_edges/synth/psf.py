"""Gaussian defocus PSF and fast, exact blurring (paper Secs. 3.1 and 4.2).

The authors blur with a 2-D Gaussian kernel truncated at ``k = ceil(3σ)`` pixels on each side,
normalized to sum 1, applied by direct 2-D convolution with half-sample-symmetric ("reflect",
``d c b a | a b c d``) borders. That kernel is the outer product of a 1-D kernel with itself, so the
same numbers (up to floating-point rounding) come from two 1-D passes, which is what this module
does — ``(2k + 1)`` instead of ``(2k + 1)²`` multiply-adds per pixel.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
from scipy import ndimage

#: Smallest standard deviation used for a kernel: an in-focus point gives the identity kernel.
MIN_SIGMA = 1e-6


def kernel_radius(sigma: float) -> int:
    """Half-width ``k = ceil(3 σ)`` of the truncated kernel (σ clamped to ``MIN_SIGMA``)."""
    return int(math.ceil(abs(max(float(sigma), MIN_SIGMA)) * 3))


def gaussian_kernel_1d(sigma: float, dtype=np.float64) -> np.ndarray:
    """Normalized 1-D Gaussian of standard deviation ``sigma`` (pixels) on ``[-k, k]``, ``k = ceil(3σ)``.

    ``np.outer(g, g)`` is the authors' 2-D kernel (same truncation, normalized), because the 2-D
    Gaussian factorizes and the square support is the product of the two 1-D supports.
    """
    sigma = max(float(sigma), MIN_SIGMA)
    k = kernel_radius(sigma)
    x = np.arange(-k, k + 1, dtype=np.float64)
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return (g / g.sum()).astype(dtype, copy=False)


def blur_reflect(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable correlation of ``image`` ([H, W] or [H, W, C]) with ``kernel`` on both axes.

    Borders are half-sample symmetric (SciPy's ``mode='reflect'``, OpenCV's ``BORDER_REFLECT``,
    repeated as often as a large kernel needs). The kernel is symmetric, so correlation and
    convolution agree. Returns an array of the input's floating dtype.
    """
    img = np.ascontiguousarray(image)
    out_dtype = img.dtype if img.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    kernel = np.asarray(kernel, dtype=out_dtype)
    channels = 1 if img.ndim == 2 else img.shape[2]
    if channels <= 4 and img.dtype in (np.uint8, np.float32, np.float64):
        ddepth = cv2.CV_64F if out_dtype == np.float64 else cv2.CV_32F
        out = cv2.sepFilter2D(img, ddepth, kernel, kernel, borderType=cv2.BORDER_REFLECT)
        return out.reshape(img.shape)
    img = img.astype(out_dtype)
    tmp = ndimage.correlate1d(img, kernel, axis=0, mode="reflect")
    return ndimage.correlate1d(tmp, kernel, axis=1, mode="reflect")


def blur_valid(padded: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """"Valid" separable correlation: the output is ``padded`` cropped by ``k`` on every side.

    ``padded`` must already carry the ``k``-pixel border the caller wants (e.g. a slice of an image
    padded once with ``np.pad(..., mode='symmetric')``, which equals the reflect border).
    """
    k = (len(kernel) - 1) // 2
    out = blur_reflect(padded, kernel)
    if k == 0:
        return out
    return out[k:-k, k:-k]

