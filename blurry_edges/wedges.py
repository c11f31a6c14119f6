"""The Blurry-Edges representation and its renderer (paper Sec. 3.2, Eqs. 9–14).

One renderer serves every stage: local training, pre-calculation, global training, evaluation
and inference. Everything here is differentiable, batched over any leading dimensions ``...``,
works in float32 and float64, and has no Python loop over patches.

Shapes (``...`` = any leading batch dims, ``R`` = patch size, ``K = 3`` layers: background,
wedge 1, wedge 2, ``C = 3`` color channels):

* geometry ``geom``: ``[..., 8]`` = ``(x1, y1, x2, y2, θ1, φ1, θ2, φ2)`` in normalized patch
  coordinates (the patch spans [-1, 1]; ``x`` grows along columns, ``y`` along rows).
* smoothness ``eta``: ``[..., 2]`` (one per wedge) for one image.
* signed distances ``dists``: ``[..., 2, R, R]`` (positive inside a wedge).
* u-maps ``u``: ``[..., K, R, R]`` (they sum to one).
* colors: ``[..., C, K]`` (channel-major, the order of the global stage's input features).
* patches: ``[..., C, R, R]``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .camera import ETA_SHARP, CameraParams

#: Width δ of the normalized Gaussian used for boundary maps and ownership masks (Eq. 9).
DELTA_BOUNDARY = 0.07
#: Ridge-regression rate: λ = (RIDGE_RATE · R²)² (Eq. 14).
RIDGE_RATE = 5e-3
#: Weight ``w`` of the axial term of the distance behind a wedge vertex.
AXIAL_WEIGHT = 1.0

TWO_PI = 2.0 * math.pi


# ----------------------------------------------------------------------------- parameter codecs
ETA_LOGIT_RANGE = (-2.5, 2.5)
"""Smoothness logits ``e`` over which ``η = eta_from_logit(e)`` varies: erf(±2.5) = ±0.9996, so any
logit beyond decodes to the same η (1e-4 or 1) to within 0.2 %."""


def eta_from_logit(e: torch.Tensor) -> torch.Tensor:
    """Smoothness from a network output: ``η = 10^(2·erf(e) − 2)`` ∈ (1e-4, 1) (erf saturates at ±1)."""
    return torch.pow(10.0, 2.0 * torch.erf(e) - 2.0)


def decode_local(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Local-stage output ``[..., 10]`` → geometry ``[..., 8]`` (angles mod 2π) and η logits ``[..., 2]``."""
    if out.shape[-1] != 10:
        raise ValueError(f"local-stage output must have 10 values per patch, got shape {tuple(out.shape)}")
    geom = torch.cat([out[..., :4], torch.remainder(out[..., 4:8], TWO_PI)], dim=-1)
    return geom, out[..., 8:10]


def encode_global_input(geom: torch.Tensor, e_logit: torch.Tensor, colors: torch.Tensor) -> torch.Tensor:
    """Global-stage input features of one image's patches: ``[..., 19]``.

    ``[xy/3 (4), (angle − π)/π (4), e − 0.5 (2), (color − 0.5)·2 (9, channel-major)]``.

    Args:
        geom: ``[..., 8]`` with angles in [0, 2π).
        e_logit: ``[..., 2]`` smoothness logits (η = eta_from_logit(e)).
        colors: ``[..., 3, 3]`` ridge colors (channel, layer).
    """
    return torch.cat([geom[..., :4] / 3.0, (geom[..., 4:8] - math.pi) / math.pi, e_logit - 0.5,
                      (colors.flatten(-2) - 0.5) * 2.0], dim=-1)


def decode_global(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Global-stage output ``[..., 12]`` → shared geometry ``[..., 8]`` and η ``[..., 2 (image), 2 (wedge)]``.

    ``xy = out[:4]·3``, ``angles = ((out[4:8] + 1)·π) mod 2π``, ``η = 10^(2·erf(out[8:12] + 0.5) − 2)``
    ordered (wedge 1, image 1), (wedge 2, image 1), (wedge 1, image 2), (wedge 2, image 2).
    """
    if out.shape[-1] != 12:
        raise ValueError(f"global-stage output must have 12 values per patch, got shape {tuple(out.shape)}")
    geom = torch.cat([out[..., :4] * 3.0, torch.remainder((out[..., 4:8] + 1.0) * math.pi, TWO_PI)], dim=-1)
    eta = eta_from_logit(out[..., 8:12] + 0.5).unflatten(-1, (2, 2))
    return geom, eta


# ----------------------------------------------------------------------------- geometry
def patch_coords(R: int, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-center coordinates ``(X, Y)``, each ``[R, R]``, spanning [-1, 1]; X along columns."""
    lin = torch.linspace(-1.0, 1.0, R, device=device, dtype=dtype)
    Y, X = torch.meshgrid(lin, lin, indexing="ij")
    return X, Y


def _ray_distance(X, Y, px, py, angle, w: float) -> torch.Tensor:
    """Signed distance to the ray from ``(px, py)`` at ``angle``; behind the vertex it becomes the
    (signed) Euclidean distance to the vertex, ``sign(d)·√(d² + (w t)²)``. Shapes broadcast."""
    c, s = torch.cos(angle), torch.sin(angle)
    dx, dy = X - px, Y - py
    d = -s * dx + c * dy
    t = c * dx + s * dy
    behind = t < 0
    r2 = d * d + (w * t) * (w * t)
    # double-where keeps the gradient finite where d = t = 0 (a pixel exactly on the vertex)
    safe = torch.sqrt(torch.where(r2 > 0, r2, torch.ones_like(r2)))
    sign = torch.where(d < 0, -torch.ones_like(d), torch.ones_like(d))
    return torch.where(behind, torch.where(r2 > 0, safe, torch.zeros_like(r2)) * sign, d)


def wedge_distances(geom: torch.Tensor, R: int, w: float = AXIAL_WEIGHT,
                    coords: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """Signed distance of every pixel to each of the two wedges: ``[..., 8]`` → ``[..., 2, R, R]``.

    Wedge i has vertex ``(x_i, y_i)`` and bounding rays at θ_i and θ′_i = θ_i + φ_i. With
    ``g = +1`` if ``φ mod 2π < π`` else −1, a pixel is inside when ``g·d(θ) > 0`` and
    ``g·d(θ′) < 0`` (the authors use ``≥``/``≤`` for wedge 2; kept). The distance is
    ``min(|d(θ)|, |d(θ′)|)``, positive inside and negative outside.
    """
    X, Y = coords if coords is not None else patch_coords(R, geom.device, geom.dtype)
    g = geom[..., :, None, None]  # [..., 8, 1, 1]
    out = []
    for i in range(2):
        px, py = g[..., 2 * i, :, :], g[..., 2 * i + 1, :, :]
        theta, phi = g[..., 4 + 2 * i, :, :], g[..., 5 + 2 * i, :, :]
        d_a = _ray_distance(X, Y, px, py, theta, w)
        d_b = _ray_distance(X, Y, px, py, theta + phi, w)
        gsign = torch.where(torch.remainder(phi, TWO_PI) < math.pi, 1.0, -1.0).to(geom.dtype)
        if i == 0:
            inside = (gsign * d_a > 0) & (gsign * d_b < 0)
        else:
            inside = (gsign * d_a >= 0) & (gsign * d_b <= 0)
        sign = gsign * torch.where(inside, 1.0, -1.0).to(geom.dtype)
        out.append(torch.minimum(d_a.abs(), d_b.abs()) * sign)
    return torch.stack(out, dim=-3)


def u_maps(dists: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
    """Layered u-maps (Eqs. 11–12): ``[..., 2, R, R]``, η ``[..., 2]`` → ``[..., 3, R, R]``.

    ``α_i = ½(1 + erf(d_i / (√2 η_i)))``; wedge 2 in front:
    ``u0 = (1 − α1)(1 − α2)``, ``u1 = α1 (1 − α2)``, ``u2 = α2``.
    """
    alpha = 0.5 * (1.0 + torch.erf(dists / (math.sqrt(2.0) * eta[..., None, None])))
    a1, a2 = alpha[..., 0, :, :], alpha[..., 1, :, :]
    return torch.stack([(1.0 - a1) * (1.0 - a2), a1 * (1.0 - a2), a2], dim=-3)


# ----------------------------------------------------------------------------- colors (Eq. 14)
def inverse_3x3(M: torch.Tensor) -> torch.Tensor:
    """Closed-form inverse of a batch of 3×3 matrices ``[..., 3, 3]`` (adjugate / determinant)."""
    a, b, c = M[..., 0, 0], M[..., 0, 1], M[..., 0, 2]
    d, e, f = M[..., 1, 0], M[..., 1, 1], M[..., 1, 2]
    g, h, i = M[..., 2, 0], M[..., 2, 1], M[..., 2, 2]
    A, B, C = e * i - f * h, -(d * i - f * g), d * h - e * g
    det = a * A + b * B + c * C
    adj = torch.stack([
        torch.stack([A, -(b * i - c * h), b * f - c * e], dim=-1),
        torch.stack([B, a * i - c * g, -(a * f - c * d)], dim=-1),
        torch.stack([C, -(a * h - b * g), a * e - b * d], dim=-1),
    ], dim=-2)
    return adj / det[..., None, None]


def ridge_lambda(R: int, rate: float = RIDGE_RATE) -> float:
    """Ridge weight λ = (rate · R²)² of Eq. 14."""
    return (rate * R * R) ** 2


def ridge_colors(u: torch.Tensor, y: torch.Tensor, lam: float, n_pixel_dims: int = 2) -> torch.Tensor:
    """Colors of the layers by ridge regression (Eq. 14), solved in closed form per patch.

    Args:
        u: ``[..., K=3, *S]`` u-maps, ``S`` the ``n_pixel_dims`` pixel dims (``(R, R)``, or
           ``(2, R, R)`` to fit one set of colors to both images of a pair jointly).
        y: ``[..., C, *S]`` observed pixels.
        lam: ridge weight λ.
    Returns:
        ``[..., C, K]``: ``c = (AᵀA + λI)⁻¹ Aᵀ y`` per channel.

    Solved in at least float32 even under bf16 autocast (a 3×3 normal matrix in bf16 loses digits).
    """
    dtype = torch.promote_types(u.dtype, torch.float32)
    with torch.autocast(device_type=u.device.type, enabled=False):
        A = u.flatten(-n_pixel_dims).to(dtype)              # [..., K, M]
        Y = y.flatten(-n_pixel_dims).to(dtype)              # [..., C, M]
        AtA = A @ A.transpose(-1, -2)                       # [..., K, K]
        AtY = A @ Y.transpose(-1, -2)                       # [..., K, C]
        eye = torch.eye(AtA.shape[-1], dtype=dtype, device=u.device)
        colors = inverse_3x3(AtA + lam * eye) @ AtY         # [..., K, C]
    return colors.transpose(-1, -2)


def render(u: torch.Tensor, colors: torch.Tensor) -> torch.Tensor:
    """Color patch (Eq. 10): ``Σ_k c_k u_k``; u ``[..., K, R, R]``, colors ``[..., C, K]`` → ``[..., C, R, R]``."""
    return torch.einsum("...khw,...ck->...chw", u, colors.to(u.dtype))


# ----------------------------------------------------------------------------- maps from distances
def normalized_gaussian(x: torch.Tensor, delta: float = DELTA_BOUNDARY) -> torch.Tensor:
    return torch.exp(-(x * x) / (delta * delta))


def visible_boundary_distance(dists: torch.Tensor) -> torch.Tensor:
    """Distance to the nearest visible boundary: ``d2`` where ``d2 ≥ 0``, else ``min(|d1|, |d2|)``."""
    d1, d2 = dists[..., 0, :, :], dists[..., 1, :, :]
    return torch.where(d2 >= 0, d2, torch.minimum(d1.abs(), d2.abs()))


def boundary_map(dists: torch.Tensor, delta: float = DELTA_BOUNDARY) -> torch.Tensor:
    """Boundary map (Eq. 9): ``[..., 2, R, R]`` → ``[..., R, R]`` with ``b = exp(−dist²/δ²)``."""
    return normalized_gaussian(visible_boundary_distance(dists), delta)


def ownership_mask(dists: torch.Tensor, variant: str = "sparse", delta: float = DELTA_BOUNDARY) -> torch.Tensor:
    """Which wedge's depth a pixel carries: ``[..., 2, R, R]`` → int64 ``[..., R, R]`` in {0, 1, 2}.

    ``sparse`` (near boundaries only): 2 where ``exp(−d2²/δ²) > 0.5``; else 0 where ``d2 ≥ 0``;
    else 1 where ``exp(−d1²/δ²) > 0.5``; else 0.
    ``w`` (dense): 2 where ``d2 > 0``, else 1 where ``d1 > 0``, else 0.
    """
    d1, d2 = dists[..., 0, :, :], dists[..., 1, :, :]
    zero = torch.zeros_like(d1, dtype=torch.int64)
    if variant == "w":
        return torch.where(d2 > 0, zero + 2, torch.where(d1 > 0, zero + 1, zero))
    if variant != "sparse":
        raise ValueError(f"unknown ownership variant {variant!r}; use 'sparse' or 'w'")
    near2 = normalized_gaussian(d2, delta) > 0.5
    near1 = normalized_gaussian(d1, delta) > 0.5
    return torch.where(near2, zero + 2, torch.where(d2 >= 0, zero, torch.where(near1, zero + 1, zero)))


def depth_patch(mask: torch.Tensor, wedge_depth: torch.Tensor) -> torch.Tensor:
    """Per-pixel depth of a patch: mask ``[..., R, R]``, wedge depths ``[..., 2]`` → ``[..., R, R]`` (0 where unowned)."""
    z1, z2 = wedge_depth[..., 0, None, None], wedge_depth[..., 1, None, None]
    zero = torch.zeros((), dtype=wedge_depth.dtype, device=wedge_depth.device)
    return torch.where(mask == 1, z1, torch.where(mask == 2, z2, zero))


def sobel_magnitude(img: torch.Tensor) -> torch.Tensor:
    """Color-derivative map (Eq. 13): ``[..., C, H, W]`` → ``[..., C, H−2, W−2]`` ("valid").

    Cross-correlation with ``[[-1,0,1],[-2,0,2],[-1,0,1]]`` (x) and ``[[1,2,1],[0,0,0],[-1,-2,-1]]``
    (y); magnitude ``√(Gx² + Gy² + 1e-8)``.
    """
    left, right = img[..., :, :-2], img[..., :, 2:]
    hx = right - left                                              # [..., H, W-2]
    gx = hx[..., :-2, :] + 2.0 * hx[..., 1:-1, :] + hx[..., 2:, :]
    sy = img[..., :, :-2] + 2.0 * img[..., :, 1:-1] + img[..., :, 2:]
    gy = sy[..., :-2, :] - sy[..., 2:, :]
    return torch.sqrt(gx * gx + gy * gy + 1e-8)


# ----------------------------------------------------------------------------- the renderer
@dataclass
class PairRender:
    """Everything rendered from the global stage's output for the patches of an image pair.

    Shapes with ``...`` the leading dims of the inputs (e.g. ``[B, P]``):
    dists ``[..., 2, R, R]``; u ``[..., 2 (image), 3, R, R]``; colors ``[..., 3, 3]``;
    patches ``[..., 2, 3, R, R]``; boundary ``[..., R, R]``; mask ``[..., R, R]`` (int64);
    wedge_depth ``[..., 2]`` (m); depth ``[..., R, R]`` (0 where unowned).
    """

    dists: torch.Tensor
    u: torch.Tensor
    colors: torch.Tensor
    patches: torch.Tensor
    boundary: torch.Tensor
    mask: torch.Tensor
    wedge_depth: torch.Tensor
    depth: torch.Tensor


class WedgeRenderer:
    """Renderer for patch size ``R`` and a camera; caches pixel coordinates per device and dtype."""

    def __init__(self, R: int, camera: CameraParams | None = None, *, delta: float = DELTA_BOUNDARY,
                 ridge_rate: float = RIDGE_RATE, w: float = AXIAL_WEIGHT) -> None:
        if R < 3 or R % 2 == 0:
            raise ValueError(f"patch size R={R} must be an odd integer ≥ 3")
        self.R = R
        self.camera = camera or CameraParams()
        self.delta = delta
        self.lam = ridge_lambda(R, ridge_rate)
        self.w = w
        self._coords: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def coords(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (like.device, like.dtype)
        if key not in self._coords:
            self._coords[key] = patch_coords(self.R, like.device, like.dtype)
        return self._coords[key]

    def distances(self, geom: torch.Tensor) -> torch.Tensor:
        """``[..., 8]`` → ``[..., 2, R, R]``."""
        return wedge_distances(geom, self.R, self.w, self.coords(geom))

    # -- one image per patch (local stage) ---------------------------------------------------
    def render_single(self, geom: torch.Tensor, eta: torch.Tensor, fit_to: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Render patches of one image with colors fitted to ``fit_to`` ``[..., 3, R, R]``.

        Returns ``(patches [..., 3, R, R], colors [..., 3, 3], dists [..., 2, R, R], u [..., 3, R, R])``.
        """
        dists = self.distances(geom)
        u = u_maps(dists, eta)
        colors = ridge_colors(u, fit_to, self.lam)
        return render(u, colors), colors, dists, u

    # -- a pair of images sharing geometry and colors (global stage) ----------------------------
    def render_pair(self, geom: torch.Tensor, eta: torch.Tensor, fit_to: torch.Tensor,
                    mask_variant: str = "sparse") -> PairRender:
        """Render both images of a pair from shared geometry (defocus consistency).

        Args:
            geom: ``[..., 8]``; eta: ``[..., 2 (image), 2 (wedge)]``;
            fit_to: ``[..., 2, 3, R, R]`` patches the shared colors are fitted to (both images jointly).
        """
        dists = self.distances(geom)                                   # [..., 2, R, R]
        u = u_maps(dists.unsqueeze(-4), eta)                           # [..., 2, 3, R, R]
        colors = ridge_colors(u.transpose(-4, -3), fit_to.transpose(-4, -3), self.lam, n_pixel_dims=3)
        patches = render(u, colors.unsqueeze(-3))                      # [..., 2, 3, R, R]
        mask, wedge_depth, depth = self.pair_depth(dists, eta, mask_variant)
        return PairRender(dists=dists, u=u, colors=colors, patches=patches,
                          boundary=boundary_map(dists, self.delta), mask=mask,
                          wedge_depth=wedge_depth, depth=depth)

    def pair_depth(self, dists: torch.Tensor, eta: torch.Tensor, mask_variant: str = "sparse"
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Ownership and depth of a pair's patches; they need geometry and η only, no colors.

        The one derivation behind the global maps (:meth:`render_pair`, the pipeline) and the
        depth-completion training inputs (``features.global_depth_maps``).

        Args:
            dists: ``[..., 2, R, R]`` signed distances of the shared geometry; eta: ``[..., 2 (image), 2 (wedge)]``.
        Returns:
            ``(mask [..., R, R] (0 none, 1 or 2: the owning wedge, Eq. 19's H(b_i − τ)),
            wedge_depth [..., 2] (m, Eq. 16), depth [..., R, R] (0 where unowned))``.
        """
        mask = ownership_mask(dists, mask_variant, self.delta)
        wedge_depth = self.camera.depth_from_etas(eta[..., 0, :], eta[..., 1, :], self.R)  # [..., 2]
        return mask, wedge_depth, depth_patch(mask, wedge_depth)

    def render_with_eta(self, dists: torch.Tensor, colors: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
        """Re-render known geometry/colors with other smoothness (sharpened or refocused views)."""
        return render(u_maps(dists, eta), colors)

    def sharpened(self, dists: torch.Tensor, colors: torch.Tensor) -> torch.Tensor:
        """All-in-focus view: η = 1e-4 for both wedges. ``[..., 3, R, R]``."""
        eta = torch.full(dists.shape[:-3] + (2,), ETA_SHARP, dtype=dists.dtype, device=dists.device)
        return self.render_with_eta(dists, colors, eta)

    def refocused(self, dists: torch.Tensor, colors: torch.Tensor, mask: torch.Tensor,
                  wedge_depth: torch.Tensor, rho_prime: float) -> torch.Tensor:
        """View refocused to power ρ′: each wedge blurred as its depth dictates under ρ′.

        A wedge that owns no pixel of its patch (its depth is unreliable) is rendered sharp, as the
        authors do. Returns ``[..., 3, R, R]``.
        """
        eta = self.camera.refocus_eta(wedge_depth, rho_prime, self.R)       # [..., 2]
        owns = torch.stack([(mask == 1).flatten(-2).any(-1), (mask == 2).flatten(-2).any(-1)], dim=-1)
        eta = torch.where(owns, eta, torch.full_like(eta, ETA_SHARP))
        return self.render_with_eta(dists, colors, eta)
