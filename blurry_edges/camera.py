"""Camera model and depth from defocus (paper Sec. 3.1, Eqs. 3 and 7).

Units: depths ``z`` in metres, optical powers ``rho`` in 1/m, blur ``sigma_px`` in pixels of the
(down-sampled) image, and smoothness ``eta`` in *normalized patch units*: a patch of size ``R``
spans [-1, 1], so one unit is ``R // 2`` pixels.

All functions accept Python floats, NumPy arrays or torch tensors (any shape) unless they say
otherwise; the projection onto the feasible region needs tensors or arrays.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

ArrayLike = Union[float, np.ndarray, torch.Tensor]


@dataclass(frozen=True)
class CameraParams:
    """Thin-lens camera with a Gaussian aperture (paper §3.1; defaults are the paper's).

    Attributes:
        s: lens-to-sensor distance (m).
        rho_1, rho_2: optical powers of the two captures (1/m); image 1 is "−", image 2 is "+".
        sigma_cam: standard deviation Σ of the Gaussian aperture (m).
        pixel_pitch: sensor pixel pitch (m).
        mag: down-sampling ("magnification") factor applied to the sensor image.
        z_min, z_max: working depth range (m), used for data, clipping and metrics.
    """

    s: float = 0.1104
    rho_1: float = 10.0
    rho_2: float = 10.2
    sigma_cam: float = 0.003
    pixel_pitch: float = 5.86e-6
    mag: float = 4.0
    z_min: float = 0.75
    z_max: float = 1.18

    def __post_init__(self) -> None:
        for name in ("s", "sigma_cam", "pixel_pitch", "mag", "z_min", "z_max"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"camera parameter {name}={value!r} must be a finite positive number")
        for name in ("rho_1", "rho_2"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"camera parameter {name}={value!r} must be a finite positive optical power (1/m)")
        if self.rho_1 == self.rho_2:
            raise ValueError("rho_1 and rho_2 must differ: depth from defocus needs two focus settings")
        if self.z_min >= self.z_max:
            raise ValueError(f"z_min={self.z_min} must be smaller than z_max={self.z_max}")
        if self.s > 1.0 or self.sigma_cam > 0.1 or self.pixel_pitch > 1e-3:
            raise ValueError(
                "camera values look like wrong units: s, sigma_cam and pixel_pitch are in metres "
                f"(got s={self.s}, sigma_cam={self.sigma_cam}, pixel_pitch={self.pixel_pitch})")

    # ------------------------------------------------------------------ serialization
    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CameraParams":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown camera keys {sorted(unknown)}; expected a subset of {sorted(known)}")
        return cls(**{k: float(v) for k, v in d.items()})

    @classmethod
    def from_json(cls, path: str | Path) -> "CameraParams":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"camera file {path} does not exist; write a JSON object such as "
                                    f"{json.dumps(cls().to_dict())}")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"camera file {path} is not valid JSON: {e}") from e
        if not isinstance(d, dict):
            raise ValueError(f"camera file {path} must hold a JSON object of camera parameters")
        return cls.from_dict(d)

    # ------------------------------------------------------------------ optics (Eq. 3)
    @property
    def rhos(self) -> tuple[float, float]:
        return (self.rho_1, self.rho_2)

    def sigma_px(self, z: ArrayLike, rho: ArrayLike) -> ArrayLike:
        """Defocus blur (Gaussian PSF standard deviation, pixels) of a point at depth ``z`` under power ``rho``.

        ``σ_px(z, ρ) = |(1/z − ρ)·s + 1| · Σ / (pitch · mag)`` (paper Eq. 3 in pixel units).
        """
        return abs((1.0 / z - rho) * self.s + 1.0) * (self.sigma_cam / (self.pixel_pitch * self.mag))

    def focus_distance(self, rho: float) -> float:
        """Depth (m) that is in focus (σ = 0) under power ``rho``."""
        return 1.0 / (rho - 1.0 / self.s)

    # ------------------------------------------------------------------ normalized units
    def eta_unit_px(self, R: int) -> int:
        """Pixels per normalized patch unit for patch size ``R`` (``R // 2``)."""
        if R < 3:
            raise ValueError(f"patch size R={R} must be at least 3")
        return R // 2

    def eta_from_depth(self, z: ArrayLike, rho: ArrayLike, R: int, xi: ArrayLike = 0.0) -> ArrayLike:
        """Boundary smoothness η (normalized units) at depth ``z``: ``η² = (σ_px/(R//2))² + ξ²``."""
        sig = self.sigma_px(z, rho) / self.eta_unit_px(R)
        return (sig ** 2 + xi ** 2) ** 0.5

    def eq7_constants(self, R: int) -> tuple[float, float, float]:
        """Constants of Eq. 7 in normalized units: ``(numerator, F, C)``.

        ``z = 2 s² (ρ2 − ρ1) / (F (η1² − η2²) + C)`` with ``F = ((R//2)·pitch·mag/Σ)²`` and
        ``C = s (ρ1 − ρ2)(2 − s ρ1 − s ρ2)``.
        """
        s, r1, r2 = self.s, self.rho_1, self.rho_2
        numerator = 2.0 * s * s * (r2 - r1)
        F = (self.eta_unit_px(R) * self.pixel_pitch * self.mag / self.sigma_cam) ** 2
        C = s * (r1 - r2) * (2.0 - s * r1 - s * r2)
        return numerator, F, C

    def feasible_intercept(self, R: int) -> float:
        """``c = |s (ρ2 − ρ1)| Σ / (pitch · mag) / (R//2)``: width of the feasible band of (η1, η2)."""
        return abs(self.s * (self.rho_2 - self.rho_1)) * self.sigma_cam / (self.pixel_pitch * self.mag) / self.eta_unit_px(R)

    def project_feasible(self, eta1: torch.Tensor, eta2: torch.Tensor, R: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Orthogonal projection of (η1, η2) onto the feasible set ``|η1 − η2| ≤ c, η1 + η2 ≥ c``.

        Follows the authors' case order: above the band → onto ``η2 = η1 + c``; else below the
        anti-diagonal → onto ``η1 + η2 = c``; else right of the band → onto ``η1 = η2 + c``.
        """
        c = self.feasible_intercept(R)
        upper = eta2 > eta1 + c
        low = eta1 + eta2 < c
        right = eta2 < eta1 - c
        where = torch.where if isinstance(eta1, torch.Tensor) else np.where
        m = (eta1 + eta2 - c) / 2            # projection onto η2 = η1 + c:   (m, m + c)
        # projection onto η1 + η2 = c:   (c/2 + (η1 − η2)/2, c/2 − (η1 − η2)/2)
        b = m                                # projection onto η1 = η2 + c:   (c + b, b)
        p1 = where(upper, m, where(low, c / 2 + (eta1 - eta2) / 2, where(right, c + b, eta1)))
        p2 = where(upper, m + c, where(low, c / 2 - (eta1 - eta2) / 2, where(right, b, eta2)))
        return p1, p2

    def depth_from_etas(self, eta1: torch.Tensor, eta2: torch.Tensor, R: int, project: bool = True) -> torch.Tensor:
        """Depth (m) of a boundary from its smoothness in image 1 and image 2 (Eq. 7).

        Texture blur ξ cancels because only ``η1² − η2²`` enters. With ``project`` the pair is first
        moved onto the physically feasible region (the authors always do this).
        """
        if project:
            eta1, eta2 = self.project_feasible(eta1, eta2, R)
        numerator, F, C = self.eq7_constants(R)
        return numerator / (F * (eta1 ** 2 - eta2 ** 2) + C)

    def refocus_eta(self, z: ArrayLike, rho_prime: float, R: int) -> ArrayLike:
        """Smoothness (normalized units) a boundary at depth ``z`` would have under power ``rho_prime``."""
        _, F, _ = self.eq7_constants(R)
        return abs((1.0 / z - rho_prime) * self.s + 1.0) / math.sqrt(F)


#: Smoothness used for the all-in-focus ("sharpened") rendering.
ETA_SHARP = 1e-4
