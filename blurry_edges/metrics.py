"""Depth metrics exactly as the authors compute them (paper Table 3).

Two definitions are unusual and kept for comparability with the paper:

* δ_k is computed on depths *normalized to the working range*, ``n = (z − z_min)/(z_max − z_min)``
  clipped to [0, 1], not on metric depth: a pixel counts when ``max(n_gt/n_pred, n_pred/n_gt) <
  1.25^k`` (1e-8 added to both denominators). This is much stricter than the usual δ.
* "AbsRel" is the mean of ``|z_gt − z_pred| / z_gt`` **times 100** (a percentage), and RMSE is in cm.

Per image: crop ``crop`` pixels on every side, clip the prediction to ``[z_min, z_max]``, and
evaluate over the pixels where the (unclipped) prediction is > 0. The paper's table averages the
per-image values over the test set.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

METRIC_NAMES = ("delta1", "delta2", "delta3", "rmse_cm", "absrel")


@dataclass
class DepthMetrics:
    delta1: float
    delta2: float
    delta3: float
    rmse_cm: float
    absrel: float
    n_pixels: int

    def as_dict(self) -> dict:
        return asdict(self)


def eval_depth(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None, *, crop: int = 10,
               z_min: float = 0.75, z_max: float = 1.18, tau: float = 1.25) -> DepthMetrics:
    """Metrics of one predicted depth map ``pred [H, W]`` against ``gt [H, W]`` (metres).

    ``mask`` defaults to ``pred > 0`` (sparse predictions are evaluated where they exist). With an
    empty mask every metric is NaN (and ``n_pixels`` is 0) rather than a division error.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"pred and gt must be 2-D maps of one shape, got {pred.shape} and {gt.shape}")
    mask = (pred > 0) if mask is None else np.asarray(mask, dtype=bool)
    if crop > 0:
        if 2 * crop >= min(pred.shape):
            raise ValueError(f"crop={crop} leaves nothing of a {pred.shape} map")
        sl = (slice(crop, -crop), slice(crop, -crop))
        pred, gt, mask = pred[sl], gt[sl], mask[sl]
    pred = np.clip(pred, z_min, z_max)
    n = int(mask.sum())
    if n == 0:
        nan = float("nan")
        return DepthMetrics(nan, nan, nan, nan, nan, 0)
    p, g = pred[mask], gt[mask]
    err = np.abs(g - p)
    pn = np.clip((p - z_min) / (z_max - z_min), 0, 1)
    gn = np.clip((g - z_min) / (z_max - z_min), 0, 1)
    ratio = np.maximum(gn / (pn + 1e-8), pn / (gn + 1e-8))
    return DepthMetrics(
        delta1=float(np.mean(ratio < tau)),
        delta2=float(np.mean(ratio < tau ** 2)),
        delta3=float(np.mean(ratio < tau ** 3)),
        rmse_cm=float(np.sqrt(np.mean(err ** 2)) * 100.0),
        absrel=float(np.mean(err / g) * 100.0),
        n_pixels=n,
    )


def average_metrics(per_image: list[DepthMetrics]) -> dict[str, float]:
    """Mean of each metric over images (NaN entries, i.e. images with no prediction, are skipped)."""
    out: dict[str, float] = {}
    for name in METRIC_NAMES:
        vals = np.array([getattr(m, name) for m in per_image], dtype=np.float64)
        out[name] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
    out["n_images"] = len(per_image)
    return out
