"""Focal Track: training-free depth from differential defocus (Guo, Alexander & Zickler, ICCV 2017).

The analytical baseline of the paper's Table 3 (sparse rows, two images: δ1 0.588, RMSE 6.308 cm,
AbsRel 4.640), derived here from the camera model of paper §3.1 (Eq. 3) and nothing else.

Physics. A Gaussian PSF of standard deviation σ applied to a sharp image ``I₀`` is the solution of
the heat equation ``∂I/∂t = ∇²I`` at time ``t = σ²/2``. Two captures of one fronto-parallel patch,
blurred by ``σ₁ = σ(z, ρ1)`` and ``σ₂ = σ(z, ρ2)``, are two moments of the same diffusion, so

    I₂ − I₁ ≈ ½ (σ₂² − σ₁²) ∇²Ī,        Ī = (I₁ + I₂) / 2                               (1)

(the mid-point rule: the Laplacian of the average image stands for the Laplacian half-way in
"time"; it is exact to second order in σ₂² − σ₁², and the noise of the two captures enters the
numerator and the regressor without correlation, so the numerator is unbiased). With Eq. 3 in
pixels, ``σ(z, ρ) = Σ |(1/z − ρ) s + 1| / (pitch · mag)``, the absolute value squares away and

    v(z) := σ₂² − σ₁² = a·(1/z) + b,   a = 2K²s²(ρ1 − ρ2),   b = K²s(ρ1 − ρ2)(2 − s(ρ1 + ρ2)),   (2)

with ``K = Σ / (pitch · mag)``: affine in the inverse depth, hence one depth per value of ``v``.

Estimation, per pixel (like Guo et al., a least-squares fit of the differential equation over a
neighbourhood): with ``D = I₂ − I₁`` and ``L = ∇²Ī`` summed over a square window ``Ω`` and
the colour channels (the per-channel normal equations add up),

    v̂ = 2 Σ_Ω L·D / Σ_Ω L²,       RSS = Σ_Ω (D − ½ v̂ L)² = Σ D² − (Σ L·D)² / Σ L²,          (3)

then ``1/z = (v̂ − b) / a`` and ``z`` is clipped to the working range.

Confidence. The per-sample standard error of ``v̂`` is ``e_v = 2 √(RSS / Σ L²)`` (px²): it is small
where the Laplacian carries much energy *and* the heat-equation model explains the difference
image, large on textureless or noise-only regions (a constant region has ``Σ L² = 0``: no
estimate). Propagated through Eq. 2 to depth, ``e_z = z² e_v / |a|`` (metres), it gives the
confidence ``c = 1 / (1 + e_z / (z_max − z_min)) ∈ [0, 1]``; the sparse map keeps ``c > τ``.

Noise. Inputs are photon-limited (counts / α with α ≈ 180–200, paper Eq. 23), and a Laplacian
amplifies noise. Both images are pre-filtered by the *same* Gaussian ``G_f`` (σ_f px) first:
Gaussians compose by adding variances, so ``G_f * I_k`` has blur ``σ_k² + σ_f²`` and the
difference ``(σ₂² + σ_f²) − (σ₁² + σ_f²) = σ₂² − σ₁²`` of Eq. 2 is unchanged; only the
noise (and the highest, least reliable frequencies) is suppressed.

Noise in the regressor. The noise left in ``L`` adds its energy to ``Σ L²`` and would shrink ``v̂``
toward 0 (depths toward the middle of the range) and give noise-only regions a confident-looking
fit. Its expectation is known from the photon model, ``var(I) = κ I + 4κ²`` (``κ = 1/α``, read noise
of 2 photons), and the norm of the composite filter (Laplacian ∘ pre-filter), so it is subtracted
from ``Σ L²`` before Eq. 3 and the confidence; ``κ`` is estimated from the images themselves
(:func:`estimate_noise_gain`), so α need not be known.

Shapes: a pair is ``[2, H, W, C]`` or ``[2, C, H, W]`` (the pipeline's), or a batch ``[B, 2, C, H, W]``;
maps come back ``[B, H, W]``. Everything runs under ``torch.no_grad()`` on the device passed in.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from .camera import CameraParams

__all__ = ["FocalTrackConfig", "FocalTrackPipeline", "as_pair_batch", "gaussian_prefilter", "laplacian",
           "sigma_sq_difference_coeffs", "estimate_noise_gain", "focal_track", "FOCAL_TRACK_LABELS"]

ArrayOrTensor = Union[np.ndarray, torch.Tensor]

#: Panel titles of the evaluation figure for this method (the maps differ from Blurry-Edges' ones).
FOCAL_TRACK_LABELS = {
    "color1": "pre-filtered input 1", "color2": "pre-filtered input 2",
    "sharpened": "sharpened (heat eq., 1st order)", "refocused": "refocused (heat eq., 1st order)",
    "confidence": "confidence c", "boundary": "Laplacian energy (normalized)",
}


@dataclass(frozen=True)
class FocalTrackConfig:
    """Settings of Focal Track; the defaults are the ones chosen on validation scenes.

    How they were chosen: ``python benchmarks/tune_focal_track.py --data_path <val set>`` on the 20
    *basic-shape validation* scenes of ``train_val_data_generator.py --num_sample_train 8
    --num_sample_val 20`` (never on test scenes). For every window × pre-filter pair the dense
    estimate is scored with the paper's metrics (Table 3 definitions) at confidence thresholds
    τ ∈ {0.5, …, 0.95}; the pair and τ with the lowest RMSE among settings that keep at least 5 %
    of the evaluated pixels were taken: window 31, σ_f 1.5, τ 0.9 (δ1 0.600, RMSE 7.98 cm, 17.7 %
    of the pixels kept; README section "Training-free baseline: Focal Track").

    Attributes:
        window: side (px, odd) of the square least-squares window Ω of Eq. 3.
        prefilter_sigma: σ_f (px) of the Gaussian applied to both images (0 = none).
        threshold: τ; the sparse depth keeps pixels with confidence ``c > τ``.
        rho_prime: optical power (1/m) of the refocused view (figures only).
    """

    window: int = 31
    prefilter_sigma: float = 1.5
    threshold: float = 0.9
    rho_prime: float = 10.39

    def __post_init__(self) -> None:
        if not isinstance(self.window, int) or self.window < 3 or self.window % 2 == 0:
            raise ValueError(f"window={self.window!r} must be an odd integer >= 3 (pixels), e.g. 15")
        if not (math.isfinite(self.prefilter_sigma) and 0.0 <= self.prefilter_sigma <= 10.0):
            raise ValueError(f"prefilter_sigma={self.prefilter_sigma!r} must be in [0, 10] pixels (0 turns it off)")
        if not (math.isfinite(self.threshold) and 0.0 <= self.threshold < 1.0):
            raise ValueError(f"threshold={self.threshold!r} must lie in [0, 1) (a confidence)")

    @property
    def densify(self) -> str:
        """Focal Track's output is a sparse map (the pipeline's vocabulary)."""
        return "none"


# ====================================================================== small operators
def as_pair_batch(pair: ArrayOrTensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[2, H, W, C]``, ``[2, C, H, W]`` or ``[B, 2, C, H, W]`` (array or tensor) → float32 ``[B, 2, C, H, W]``.

    ``C`` is 1 or 3. Raises ``ValueError`` naming the shape for anything else, or for NaN/inf values.
    """
    x = torch.as_tensor(np.ascontiguousarray(pair) if isinstance(pair, np.ndarray) else pair)
    if x.dim() == 4:
        if x.shape[0] != 2:
            raise ValueError(f"an image pair must be [2, H, W, C] or [2, C, H, W], got shape {list(x.shape)}")
        if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
            x = x.permute(0, 3, 1, 2)
        elif x.shape[1] not in (1, 3):
            raise ValueError(f"expected 1 or 3 colour channels (pair [2, H, W, C] or [2, C, H, W]), "
                             f"got shape {list(x.shape)}")
        x = x[None]
    elif x.dim() == 5:
        if x.shape[1] != 2 or x.shape[2] not in (1, 3):
            raise ValueError(f"a batch of pairs must be [B, 2, C, H, W] with C = 1 or 3, got shape {list(x.shape)}")
    else:
        raise ValueError(f"expected a pair [2, H, W, C] / [2, C, H, W] or a batch [B, 2, C, H, W], "
                         f"got shape {list(x.shape)}")
    x = x.to(device=device, dtype=torch.float32).contiguous()
    if not bool(torch.isfinite(x).all()):
        raise ValueError("the image pair contains NaN or infinite values")
    return x


def _gaussian_1d(sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Normalized Gaussian ``[2k + 1]`` with ``k = ceil(3σ)`` (the project's truncation)."""
    k = max(1, int(math.ceil(3.0 * sigma)))
    t = torch.arange(-k, k + 1, device=device, dtype=dtype)
    g = torch.exp(-(t * t) / (2.0 * sigma * sigma))
    return g / g.sum()


def gaussian_prefilter(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``x [N, C, H, W]`` (reflect borders); ``sigma = 0`` returns ``x``."""
    if sigma <= 0:
        return x
    g = _gaussian_1d(sigma, x.device, x.dtype)
    k = g.numel() // 2
    N, C, H, W = x.shape
    if k >= min(H, W):
        raise ValueError(f"prefilter_sigma={sigma} needs images larger than {k} px; got {H}×{W}")
    y = x.reshape(N * C, 1, H, W)
    y = F.conv2d(F.pad(y, (k, k, 0, 0), mode="reflect"), g.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, k, k), mode="reflect"), g.view(1, 1, -1, 1))
    return y.view(N, C, H, W)


def laplacian(x: torch.Tensor) -> torch.Tensor:
    """Isotropic 9-point Laplacian of ``x [N, C, H, W]`` (px⁻², replicate borders).

    ``(1/6)[[1, 4, 1], [4, −20, 4], [1, 4, 1]]``: its leading error term is ``∇⁴/12``, the same in
    every direction, unlike the 5-point stencil's ``(∂x⁴ + ∂y⁴)/12``.
    """
    k = torch.tensor([[1.0, 4.0, 1.0], [4.0, -20.0, 4.0], [1.0, 4.0, 1.0]], device=x.device, dtype=x.dtype) / 6.0
    N, C, H, W = x.shape
    y = F.conv2d(F.pad(x.reshape(N * C, 1, H, W), (1, 1, 1, 1), mode="replicate"), k.view(1, 1, 3, 3))
    return y.view(N, C, H, W)


def _window_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    """Mean of ``x [N, 1, H, W]`` over the ``window × window`` square (only pixels inside the image)."""
    return F.avg_pool2d(x, window, stride=1, padding=window // 2, count_include_pad=False)


#: Median of a χ² variable with one degree of freedom: median(n²) = 0.4549 σ² for Gaussian n.
_CHI2_1_MEDIAN = 0.45493642311957283


def estimate_noise_gain(pair: torch.Tensor) -> torch.Tensor:
    """Photon-noise gain ``κ`` per pair, from the raw images: ``var(I) ≈ κ·I + 4κ²``.

    For photon counts / α (paper Eq. 23) ``κ = 1/α`` and the ``4κ²`` is the read noise (2 photons).
    Immerkær's mask ``M = [[1, −2, 1], [−2, 4, −2], [1, −2, 1]]`` (``‖M‖² = 36``) cancels every
    locally linear and quadratic-free structure, so ``(M * I)² / 36`` estimates the local noise
    variance; dividing by the local brightness and taking the median (robust to the few pixels on
    edges) over pixels, channels and both images gives ``κ``.

    Args:
        pair: ``[B, 2, C, H, W]`` raw (not pre-filtered) images.
    Returns:
        ``[B]`` κ (the same units as the images).
    """
    B, _, C, H, W = pair.shape
    m = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]], device=pair.device, dtype=pair.dtype)
    x = pair.reshape(B * 2 * C, 1, H, W)
    r2 = F.conv2d(x, m.view(1, 1, 3, 3)) ** 2 / 36.0                             # [B·2·C, 1, H−2, W−2]
    local = F.avg_pool2d(x, 3, stride=1).clamp_min(1e-3)
    ratio = (r2 / local).reshape(B, -1)
    return ratio.median(dim=1).values / _CHI2_1_MEDIAN


def _laplacian_noise_norm(sigma: float, device: torch.device) -> float:
    """``‖h‖²`` of the composite filter ``h`` = 9-point Laplacian ∘ Gaussian pre-filter (σ px)."""
    k = max(1, int(math.ceil(3.0 * sigma))) + 2
    delta = torch.zeros(1, 1, 4 * k + 1, 4 * k + 1, device=device, dtype=torch.float64)
    delta[0, 0, 2 * k, 2 * k] = 1.0
    return float((laplacian(gaussian_prefilter(delta, sigma)) ** 2).sum())


def sigma_sq_difference_coeffs(camera: CameraParams) -> tuple[float, float]:
    """``(a, b)`` of Eq. 2 above: ``σ_px(z, ρ2)² − σ_px(z, ρ1)² = a / z + b`` (px²)."""
    K = camera.sigma_cam / (camera.pixel_pitch * camera.mag)
    s, r1, r2 = camera.s, camera.rho_1, camera.rho_2
    return 2.0 * K * K * s * s * (r1 - r2), K * K * s * (r1 - r2) * (2.0 - s * (r1 + r2))


# ====================================================================== the estimator
@torch.no_grad()
def focal_track(pair: torch.Tensor, camera: CameraParams, config: FocalTrackConfig = FocalTrackConfig()
                ) -> dict[str, torch.Tensor]:
    """Per-pixel depth, confidence and the intermediate maps from a batch of pairs.

    Args:
        pair: ``[B, 2, C, H, W]`` float (image 1 taken with ρ1, image 2 with ρ2; counts / α).
        camera: the optics of Eq. 3 and the working range.
        config: window, pre-filter and threshold.
    Returns:
        ``depth_raw [B, H, W]`` (dense, clipped to [z_min, z_max]), ``confidence [B, H, W]``,
        ``depth_sparse [B, H, W]`` (``depth_raw`` where confidence > τ, else 0), ``v [B, H, W]``
        (estimated σ₂² − σ₁², px²), ``energy [B, H, W]`` (window mean of Σ_c L² less its expected noise
        energy), ``kappa [B]`` (estimated photon-noise gain),
        ``filtered [B, 2, C, H, W]`` and ``laplacian [B, C, H, W]`` (∇²Ī).
    """
    if pair.dim() != 5 or pair.shape[1] != 2:
        raise ValueError(f"expected [B, 2, C, H, W], got {list(pair.shape)}; use as_pair_batch() first")
    B, _, C, H, W = pair.shape
    if min(H, W) < config.window:
        raise ValueError(f"images of {H}×{W} are smaller than the {config.window}-pixel window; "
                         "use larger images or a smaller FocalTrackConfig.window")
    x = gaussian_prefilter(pair.reshape(B * 2, C, H, W), config.prefilter_sigma).view(B, 2, C, H, W)
    diff = x[:, 1] - x[:, 0]                                                      # D [B, C, H, W]
    mean_img = 0.5 * (x[:, 0] + x[:, 1])
    lap = laplacian(mean_img)                                                     # L [B, C, H, W]
    # Normal equations summed over the channels and the window (window means: ratios are unchanged),
    # and the brightness Σ_c Ī_c that sets the photon noise of L.
    stats = torch.stack([(lap * diff).sum(1), (lap * lap).sum(1), (diff * diff).sum(1),
                         0.5 * (pair[:, 0] + pair[:, 1]).clamp_min(0).sum(1)], dim=1)
    s_ld, s_ll, s_dd, bright = _window_mean(stats.view(B * 4, 1, H, W), config.window).view(B, 4, H, W).unbind(1)
    # Noise energy of L (errors in the regressor): var(Ī) = (κ Ī + 4κ²)/2 per pixel, times ‖h‖².
    kappa = estimate_noise_gain(pair).view(B, 1, 1)
    noise_ll = 0.5 * _laplacian_noise_norm(config.prefilter_sigma, pair.device) * (kappa * bright + 4 * C * kappa ** 2)
    signal_ll = s_ll - noise_ll
    tiny = torch.finfo(torch.float32).tiny
    has_texture = signal_ll > 1e-12
    s_ll_safe = torch.where(has_texture, signal_ll, torch.ones_like(s_ll))
    v = torch.where(has_texture, 2.0 * s_ld / s_ll_safe, torch.zeros_like(s_ll))
    rss = (s_dd - s_ld * s_ld / s_ll.clamp_min(1e-30)).clamp_min(0.0)
    a, b = sigma_sq_difference_coeffs(camera)
    inv_z = ((v - b) / a).clamp(1.0 / camera.z_max, 1.0 / camera.z_min)
    z = 1.0 / inv_z
    err_v = 2.0 * torch.sqrt(rss / s_ll_safe + tiny)                              # px², per sample
    err_z = z * z * err_v / abs(a)                                               # metres
    conf = torch.where(has_texture, 1.0 / (1.0 + err_z / (camera.z_max - camera.z_min)), torch.zeros_like(z))
    sparse = torch.where(conf > config.threshold, z, torch.zeros_like(z))
    return {"depth_raw": z, "confidence": conf, "depth_sparse": sparse, "v": v, "energy": signal_ll.clamp_min(0),
            "kappa": kappa.view(B),
            "filtered": x, "laplacian": lap}


def _heat_step(mean_img: torch.Tensor, lap: torch.Tensor, dt_sq: torch.Tensor) -> torch.Tensor:
    """First-order heat-equation move of ``mean_img [C, H, W]`` by ``Δσ² = dt_sq [H, W]``: ``I + ½ Δσ² ∇²I``."""
    return (mean_img + 0.5 * dt_sq[None] * lap).clamp(0.0, 1.0)


class FocalTrackPipeline:
    """Focal Track behind the interface of :class:`~blurry_edges.pipeline.DepthPipeline`.

    ``run(pair)`` returns the same keys as ``DepthPipeline.run`` so the evaluation writers, the
    metrics and the figures serve both methods unchanged:

    * ``depth`` = ``depth_sparse``: depth where the confidence exceeds τ, 0 elsewhere;
      ``depth_raw``: the dense estimate (clipped to the working range); ``confidence``.
    * ``color [2, 3, H, W]``: the two pre-filtered inputs (Focal Track restores nothing else).
    * ``sharpened`` / ``refocused [3, H, W]``: the average image moved along the heat equation to
      blur 0 and to the blur of power ``rho_prime`` at the estimated depth (first order, Eq. 1).
    * ``boundary [H, W]``: the window's Laplacian energy normalized to [0, 1] (Focal Track has no
      boundary map; this is the texture measure its confidence rests on).

    Args:
        camera: camera parameters (defaults to the paper's).
        config: :class:`FocalTrackConfig`.
        device: where it runs.
    """

    name = "focal_track"
    figure_labels = FOCAL_TRACK_LABELS

    def __init__(self, camera: CameraParams | None = None, config: FocalTrackConfig = FocalTrackConfig(),
                 device: torch.device | str = "cpu") -> None:
        self.camera = camera or CameraParams()
        self.config = config
        self.device = torch.device(device)
        self.weight_files: dict[str, str] = {}          # training-free: no weights (provenance records none)

    def layout(self, H: int, W: int, blocks: Optional[bool] = None) -> None:
        """Focal Track is a local filter: any image at least one window wide is processed whole."""
        if min(H, W) < self.config.window:
            raise ValueError(f"images of {H}×{W} are smaller than the {self.config.window}-pixel window")
        return None

    @torch.no_grad()
    def run(self, pair: ArrayOrTensor, blocks: Optional[bool] = None,
            progress: Optional[bool] = None) -> dict[str, Any]:
        """All outputs for one pair ``[2, H, W, 3]`` or ``[2, 3, H, W]`` (counts / α); ``blocks`` and
        ``progress`` are ignored (one pass over the whole image, no stages to report).

        Returns CPU float32 tensors (see the class docstring), ``tiles`` (1) and ``timing``
        (``focal_track``, ``views``, ``total`` seconds).
        """
        sync = (lambda: torch.cuda.synchronize(self.device)) if self.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        x = as_pair_batch(pair, self.device)
        if x.shape[0] != 1:
            raise ValueError(f"run() takes one pair; got a batch of {x.shape[0]} (call focal_track() for batches)")
        m = focal_track(x, self.camera, self.config)
        sync()
        t1 = time.perf_counter()
        cam = self.camera
        z = m["depth_raw"][0]
        filt, lap = m["filtered"][0], m["laplacian"][0]
        mean_img = 0.5 * (filt[0] + filt[1])
        # blur of the average image: mid-point of the two blurs plus the pre-filter (variances add)
        var_mean = 0.5 * (cam.sigma_px(z, cam.rho_1) ** 2 + cam.sigma_px(z, cam.rho_2) ** 2) \
            + self.config.prefilter_sigma ** 2
        var_prime = cam.sigma_px(z, self.config.rho_prime) ** 2 + self.config.prefilter_sigma ** 2
        energy = m["energy"][0]
        out = {
            "color": filt,
            "sharpened": _heat_step(mean_img, lap, -var_mean),
            "refocused": _heat_step(mean_img, lap, var_prime - var_mean),
            "boundary": energy / energy.max().clamp_min(1e-12),
            "confidence": m["confidence"][0],
            "depth_raw": z,
            "depth_sparse": m["depth_sparse"][0],
            "depth": m["depth_sparse"][0],
        }
        sync()
        t2 = time.perf_counter()
        res: dict[str, Any] = {k: v.detach().float().cpu() for k, v in out.items()}
        res["tiles"] = 1
        res["timing"] = {"focal_track": t1 - t0, "views": t2 - t1, "total": t2 - t0}
        return res

    def describe(self) -> dict:
        return {"method": self.name, **asdict(self.config)}
