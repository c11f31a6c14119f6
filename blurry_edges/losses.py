"""Training objectives and their weight schedules (paper Sec. 3.4).

* :class:`LocalSchedule` / :class:`LocalLoss` – the local stage: color fidelity, boundary
  localization and smoothness of one rendered patch, the last two ramped in over the first
  ``dynamic_epoch`` epochs (β schedule).
* :class:`GlobalSchedule` / :class:`GlobalLoss` – the global stage: seven terms over all patches of
  an image pair, weighted by a three-phase γ schedule. With ``mask_variant="w"`` and a dense depth
  target the same class gives the objective of the "W" variant (our design; see ``the README section Training``).
* :func:`depth_completion_loss` – the U-Net of "Ours-PP" (our design).

Everything that does not change between steps (pixel coordinates, the fold normalizer) is cached
by the renderer and the :class:`~blurry_edges.patches.PatchGrid`; the Sobel operator is a pair of
shifted differences, so there is no kernel to rebuild. All losses are computed in float32 (the
networks may run under bf16 autocast; their outputs are cast up before decoding).

Conventions: images are channel-first here (``[..., 3, H, W]``); the datasets store them channel-
last and the training scripts permute.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional

import torch

from .patches import PatchGrid
from .wedges import (WedgeRenderer, boundary_map, decode_global, decode_local, eta_from_logit,
                     ownership_mask, sobel_magnitude)

__all__ = [
    "ramp_rate", "LocalWeights", "LocalSchedule", "LocalLoss",
    "GAMMA_NAMES", "GlobalWeights", "GlobalSchedule", "GlobalLoss", "depth_completion_loss",
]


def _at_least_f32(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 network outputs → float32; float32/float64 unchanged."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


# ============================================================================ schedules
def ramp_rate(index: float, length: float, continuous: bool = False) -> float:
    """Linear ramp used by both schedules: ``index / (length − 1)`` while ``index < length``, then 1.

    ``index`` is the 0-based epoch inside the ramp. A ramp of length ≤ 1 is already complete (the
    authors' formula would divide by zero there). ``continuous`` (a schedule advanced every step,
    ``index`` a fractional epoch): ``min(1, index / length)``, which reaches 1 at the ramp's end.
    """
    if index < 0:
        raise ValueError(f"epoch index must be ≥ 0, got {index}")
    if continuous:
        return 1.0 if length <= 0 else min(1.0, index / length)
    if index >= length or length <= 1:
        return 1.0
    return index / (length - 1)


@dataclass(frozen=True)
class LocalWeights:
    """Weights β of the local loss for one epoch."""

    bndry_loc: float
    smthns: float
    blur: float = 0.0


@dataclass(frozen=True)
class LocalSchedule:
    """β schedule of the local stage (paper Sec. 3.4): both weights grow linearly from 0 to their final
    value over epochs ``0 … dynamic_epoch − 1`` (rate ``epoch / (dynamic_epoch − 1)``), then stay.
    Validation always uses the final values.

    ``beta_blur`` weighs our supervised blur term (not in the paper, whose value 0 is the default):
    it carries its full weight from the first step, in training and validation alike."""

    beta_bndry_loc: float = 0.001
    beta_smthns: float = 0.0005
    dynamic_epoch: int = 200
    beta_blur: float = 0.0

    def __post_init__(self) -> None:
        if not self.beta_blur >= 0:
            raise ValueError(f"beta_blur={self.beta_blur} must be ≥ 0")

    def at(self, epoch: int) -> LocalWeights:
        """Weights used for training during 0-based ``epoch``."""
        r = ramp_rate(epoch, self.dynamic_epoch)
        return LocalWeights(bndry_loc=r * self.beta_bndry_loc, smthns=r * self.beta_smthns, blur=self.beta_blur)

    def final(self) -> LocalWeights:
        return LocalWeights(bndry_loc=self.beta_bndry_loc, smthns=self.beta_smthns, blur=self.beta_blur)


#: Names of the seven global-stage terms, in the order of the authors' code and of the CLI options ``--gamma_*``.
GAMMA_NAMES = ("color", "color_cons", "bndry_cons", "smthns", "smthns_cons", "bndry_loc", "depth")


@dataclass(frozen=True)
class GlobalWeights:
    """Weights γ of the seven global-stage terms for one epoch."""

    color: float
    color_cons: float
    bndry_cons: float
    smthns: float
    smthns_cons: float
    bndry_loc: float
    depth: float

    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class GlobalSchedule:
    """Three-phase γ schedule of the global stage (paper Sec. 3.4, the authors' ``update_gamma``).

    With key epochs ``(k0, k1, k2)`` (default 30, 100, 200) and three values ``(g0, g1, g2)`` per term:

    * epochs ``0 … k0−1``: ``g0 + r·(g1 − g0)`` with ``r = epoch / (k0 − 1)``;
    * epochs ``k0 … k1−1``: ``g1``;
    * epochs ``k1 … k2−1``: ``g1 + r·(g2 − g1)`` with ``r = (epoch − k1) / (k2 − k1 − 1)``;
    * from ``k2`` on, and in validation: ``g2``.
    """

    gamma_color: tuple[float, float, float] = (1.0, 0.1, 0.1)
    gamma_color_cons: tuple[float, float, float] = (0.2, 0.1, 0.05)
    gamma_bndry_cons: tuple[float, float, float] = (0.05, 0.05, 0.02)
    gamma_smthns: tuple[float, float, float] = (0.005, 0.1, 0.002)
    gamma_smthns_cons: tuple[float, float, float] = (0.005, 0.1, 0.002)
    gamma_bndry_loc: tuple[float, float, float] = (0.0001, 0.05, 0.0001)
    gamma_depth: tuple[float, float, float] = (0.0001, 0.05, 0.5)
    dynamic_epoch: tuple[float, float, float] = (30, 100, 200)
    #: advanced every step with fractional epochs (the CPU recipe's compressed schedule) instead of
    #: once per epoch as the authors do; see :func:`ramp_rate`.
    continuous: bool = False

    def __post_init__(self) -> None:
        for name in GAMMA_NAMES:
            values = tuple(float(v) for v in getattr(self, f"gamma_{name}"))
            if len(values) != 3:
                raise ValueError(f"gamma_{name} needs 3 values (start, middle, final), got {values}")
            object.__setattr__(self, f"gamma_{name}", values)
        keys = tuple(float(k) if self.continuous else int(k) for k in self.dynamic_epoch)
        if len(keys) != 3 or not 0 <= keys[0] <= keys[1] <= keys[2]:
            raise ValueError(f"dynamic_epoch must be 3 non-decreasing key epochs, got {self.dynamic_epoch}")
        object.__setattr__(self, "dynamic_epoch", keys)

    #: The paper's run length, against which ``compressed`` scales the key epochs.
    PAPER_EPOCHS = 350

    @classmethod
    def from_args(cls, args) -> "GlobalSchedule":
        """Build from an argparse namespace holding ``gamma_*`` and ``dynamic_epoch``
        (and optionally ``compress_schedule`` with ``epoch_num``, see :meth:`compressed`)."""
        sched = cls(**{f"gamma_{n}": tuple(getattr(args, f"gamma_{n}")) for n in GAMMA_NAMES},
                    dynamic_epoch=tuple(args.dynamic_epoch))
        if getattr(args, "compress_schedule", False):
            sched = sched.compressed(args.epoch_num)
        return sched

    def compressed(self, epochs: float, paper_epochs: float = PAPER_EPOCHS) -> "GlobalSchedule":
        """The same three phases squeezed from ``paper_epochs`` into ``epochs`` and advanced every step.

        Key epochs are scaled by ``epochs / paper_epochs`` (30, 100, 200 of 350 → 0.86, 2.9, 5.7 of
        10), so every phase keeps its share of the run and the final weights are reached at the same
        fraction of it (4/7) and held to the end.
        """
        if epochs <= 0:
            raise ValueError(f"cannot compress the schedule into {epochs} epochs")
        f = float(epochs) / float(paper_epochs)
        return replace(self, dynamic_epoch=tuple(k * f for k in self.dynamic_epoch), continuous=True)

    def rate_phase(self, epoch: int) -> tuple[float, int]:
        """``(rate, phase)``: interpolation rate and which pair of values it moves between
        (phase 0: g0→g1, phase 1: g1→g2)."""
        k0, k1, k2 = self.dynamic_epoch
        if epoch < k0:
            return ramp_rate(epoch, k0, self.continuous), 0
        if epoch < k1:
            return 1.0, 0
        if epoch < k2:
            return ramp_rate(epoch - k1, k2 - k1, self.continuous), 1
        return 1.0, 1

    def at(self, epoch: int) -> GlobalWeights:
        """Weights used for training during 0-based ``epoch``."""
        rate, phase = self.rate_phase(epoch)
        values = {}
        for name in GAMMA_NAMES:
            g = getattr(self, f"gamma_{name}")
            lo, hi = g[phase], g[phase + 1]
            values[name] = hi if rate >= 1.0 else lo + rate * (hi - lo)     # exact at the ramp's end
        return GlobalWeights(**values)

    def final(self) -> GlobalWeights:
        return GlobalWeights(**{n: getattr(self, f"gamma_{n}")[-1] for n in GAMMA_NAMES})


# ============================================================================ local stage
def true_blur(camera, depth: torch.Tensor, rho, R: int) -> torch.Tensor:
    """``σ_px(z, ρ) / (R//2)`` (Eq. 3 in patch units) where ``depth > 0``, 0 elsewhere; ``rho``
    broadcasts against ``depth``. The target of the supervised blur terms (``--beta_blur``)."""
    on = depth > 0
    z = torch.where(on, depth, torch.ones_like(depth))
    return torch.where(on, camera.eta_from_depth(z, rho, R), torch.zeros_like(z))


def blur_squared_error(camera, R: int, depth: torch.Tensor, rho, mask: torch.Tensor,
                       eta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of ``(η_owner − η_true)²`` over the pixels where ``depth`` and the ownership ``mask`` are
    non-zero, and their count: the supervised blur terms of both stages (``--beta_blur``).

    Args:
        depth: ``[..., R, R]`` true boundary depth (m, 0 off boundaries); mask: ``[..., R, R]`` (0/1/2).
        rho: optical power of the image, broadcasting against ``depth``.
        eta: ``[..., 2 (wedge)]`` that image's smoothness per wedge.
    """
    valid = (depth > 0) & (mask != 0)
    owner = torch.where(mask == 2, eta[..., 1, None, None], eta[..., 0, None, None])
    err = torch.where(valid, owner - true_blur(camera, depth, rho, R), torch.zeros_like(depth))
    return err.square().sum(), valid.sum()


class LocalLoss:
    """Objective of the local stage (paper Sec. 3.4, Eq. 21) for a batch of single patches.

    ``E[Σ_rgb (clean − render)²] + β_loc E[(dist · b)²] + β_smth E[Σ_rgb (deriv_gt − Sobel(render))²]``

    where the render's colors are ridge-fitted to ``fit_to`` (the clean patch in training, as the
    authors do, and the noisy patch in validation), ``b`` is the rendered boundary map (Eq. 9) and
    ``dist`` the patch's ground-truth distance to the nearest boundary.

    Optionally (``β_blur > 0``; ours, not the paper's) a supervised blur term: the local stage
    learns depth only through the blur η it estimates (Eq. 7), and the color loss alone teaches η
    slowly. The term is the global stage's depth term (Eq. 22) translated to one image's blur:
    ``Σ (η_owner − η_true)²`` over the pixels where the true boundary depth is non-zero and the
    sparse ownership mask (Eq. 19) is non-zero, divided by their count, with
    ``η_true = σ_px(z, ρ_image) / (R//2)`` (Eq. 3 in patch units; the synthetic scenes carry no
    texture blur).
    """

    def __init__(self, renderer: WedgeRenderer) -> None:
        self.renderer = renderer
        self.R = renderer.R

    def terms(self, raw: torch.Tensor, fit_to: torch.Tensor, clean: torch.Tensor,
              bndry_dist: torch.Tensor, deri: torch.Tensor, bndry_depth: Optional[torch.Tensor] = None,
              image: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """The unweighted terms (scalars): ``color``, ``bndry_loc``, ``smthns`` and, when
        ``bndry_depth`` and ``image`` are given, ``blur``.

        Args:
            raw: ``[B, 10]`` local-stage outputs.
            fit_to: ``[B, 3, R, R]`` patches the colors are fitted to.
            clean: ``[B, 3, R, R]`` clean patches (the color target).
            bndry_dist: ``[B, R, R]`` distance of each pixel to the nearest true boundary.
            deri: ``[B, 3, R−2, R−2]`` Sobel magnitude of the clean patch (ground truth).
            bndry_depth: ``[B, R, R]`` true boundary depth (m, 0 off boundaries).
            image: ``[B]`` which image each patch was cut from (0: ρ1, 1: ρ2).
        """
        geom, e = decode_local(_at_least_f32(raw))
        eta = eta_from_logit(e)
        patches, _, dists, _ = self.renderer.render_single(geom, eta, fit_to)
        b = boundary_map(dists, self.renderer.delta)
        out = {
            "color": (clean - patches).square().sum(-3).mean(),
            "bndry_loc": (bndry_dist * b).square().mean(),
            "smthns": (deri - sobel_magnitude(patches)).square().sum(-3).mean(),
        }
        if bndry_depth is not None and image is not None:
            cam = self.renderer.camera
            rhos = torch.tensor(cam.rhos, dtype=eta.dtype, device=eta.device)
            owner = ownership_mask(dists.detach(), "sparse", self.renderer.delta)
            err, count = blur_squared_error(cam, self.R, bndry_depth.to(eta.dtype), rhos[image.long()][:, None, None],
                                            owner, eta)
            out["blur"] = err / count.clamp(min=1).to(err.dtype)
        return out

    def __call__(self, raw: torch.Tensor, fit_to: torch.Tensor, clean: torch.Tensor,
                 bndry_dist: torch.Tensor, deri: torch.Tensor, weights: LocalWeights,
                 bndry_depth: Optional[torch.Tensor] = None, image: Optional[torch.Tensor] = None) -> torch.Tensor:
        if weights.blur > 0 and (bndry_depth is None or image is None):
            raise ValueError("the blur term (β_blur > 0) needs each patch's boundary depth and image index: "
                             "load the patches with LocalPatchDataset(..., with_blur=True)")
        t = self.terms(raw, fit_to, clean, bndry_dist, deri,
                       bndry_depth if weights.blur > 0 else None, image if weights.blur > 0 else None)
        loss = t["color"] + weights.bndry_loc * t["bndry_loc"] + weights.smthns * t["smthns"]
        if weights.blur > 0:
            loss = loss + weights.blur * t["blur"]
        return loss


# ============================================================================ global stage
class GlobalLoss:
    """Objective of the global stage (paper Sec. 3.4, Eq. 22) over all patches of a batch of pairs.

    Seven terms, each a mean over the batch, both images, all patches and their pixels:

    1. ``color``: ``Σ_rgb (clean patch − rendered patch)²``;
    2. ``color_cons``: ``Σ_rgb (rendered patch − the detached global color map re-cut)²``;
    3. ``bndry_cons``: ``(boundary patch − the detached global boundary map re-cut)²``;
    4. ``smthns``: ``Σ_rgb (Sobel(rendered patch) − ground-truth derivative map re-cut)²``;
    5. ``smthns_cons``: ``Σ_rgb (Sobel(rendered patch) − Sobel(detached global color map) re-cut)²``;
    6. ``bndry_loc``: ``(log2(dist + 1) · boundary patch)²``;
    7. ``depth``: ``Σ (patch depth − target)²`` over the pixels where the target is non-zero and the
       ownership mask is non-zero, divided by their count (0 when there is none).

    The sparse objective (the paper's) uses the boundary-depth map as the target and the sparse
    ownership mask. ``mask_variant="w"`` with the dense per-pixel depth as target is our objective
    for the "W" variant (the authors publish no code for it).

    With ``beta_blur > 0`` (ours, not the paper's; CPU recipe) an eighth term ``blur`` is added with
    that constant weight: the local stage's supervised blur term for both images, i.e. the squared
    error of the owning wedge's η in image k against ``σ_px(z, ρ_k)/(R//2)`` over the pixels where
    the boundary depth and the ownership mask are non-zero. The depth term alone constrains only
    ``η1² − η2²`` (Eq. 7); this also pins each η to the blur the image shows.

    Args:
        renderer: a :class:`WedgeRenderer` of patch size ``R``.
        grid: the image's :class:`PatchGrid` (same ``R``); its fold normalizer is cached.
        mask_variant: ``"sparse"`` or ``"w"`` (ownership masks, paper Eq. 19).
        beta_blur: weight of the blur term (0: the paper's objective).
    """

    def __init__(self, renderer: WedgeRenderer, grid: PatchGrid, mask_variant: str = "sparse",
                 beta_blur: float = 0.0) -> None:
        if not beta_blur >= 0:
            raise ValueError(f"beta_blur={beta_blur} must be ≥ 0")
        if beta_blur > 0 and mask_variant != "sparse":
            raise ValueError("the blur term supervises η on true boundary pixels: sparse objective only (--beta_blur 0 "
                             "with --densify w)")
        self.beta_blur = float(beta_blur)
        if grid.R != renderer.R:
            raise ValueError(f"patch grid R={grid.R} differs from the renderer's R={renderer.R}")
        if mask_variant not in ("sparse", "w"):
            raise ValueError(f"unknown mask variant {mask_variant!r}; use 'sparse' or 'w'")
        self.renderer = renderer
        self.grid = grid
        # The derivative maps are "valid" Sobel images, 2 pixels smaller; cutting them with an
        # (R−2)-window at the same stride gives exactly the Sobel of every R-patch.
        self.deri_grid = PatchGrid(grid.H - 2, grid.W - 2, grid.R - 2, grid.stride)
        self.mask_variant = mask_variant

    # ------------------------------------------------------------------ helpers
    def _cut_pair(self, img: torch.Tensor, grid: PatchGrid) -> torch.Tensor:
        """``[B, 2, C, h, w]`` → ``[B, P, 2, C, r, r]`` (a view-compatible layout for the renderer)."""
        B = img.shape[0]
        p = grid.unfold(img.flatten(0, 1))                       # [2B, P, C, r, r]
        return p.unflatten(0, (B, 2)).transpose(1, 2)

    def _cut_single(self, img: torch.Tensor, grid: PatchGrid) -> torch.Tensor:
        """``[B, h, w]`` → ``[B, P, r, r]``."""
        return grid.unfold(img.unsqueeze(1))[:, :, 0]

    def _fold_pair(self, patches: torch.Tensor) -> torch.Tensor:
        """``[B, P, 2, C, R, R]`` → ``[B, 2, C, H, W]`` (mean over covering patches)."""
        B = patches.shape[0]
        return self.grid.fold_mean(patches.transpose(1, 2).flatten(0, 1)).unflatten(0, (B, 2))

    # ------------------------------------------------------------------ the objective
    def terms(self, raw: torch.Tensor, fit_to: torch.Tensor, clean: torch.Tensor,
              bndry_dist: torch.Tensor, deri: torch.Tensor, depth_target: torch.Tensor,
              ) -> dict[str, torch.Tensor]:
        """The seven unweighted terms (scalars).

        Args:
            raw: ``[B, P, 12]`` global-stage outputs (``P = Hp·Wp`` tokens, row-major).
            fit_to: ``[B, 2, 3, H, W]`` images the shared colors are fitted to (clean pair in
                training, noisy pair in validation).
            clean: ``[B, 2, 3, H, W]`` clean pair (the color target).
            bndry_dist: ``[B, H, W]`` distance to the nearest true boundary.
            deri: ``[B, 2, 3, H−2, W−2]`` ground-truth derivative maps.
            depth_target: ``[B, H, W]`` boundary depth (sparse objective; 0 off boundaries) or the
                dense depth map (W objective).
        """
        grid = self.grid
        geom, eta = decode_global(_at_least_f32(raw))                       # [B, P, 8], [B, P, 2, 2]
        fit_p = self._cut_pair(fit_to, grid)                           # [B, P, 2, 3, R, R]
        clean_p = fit_p if clean is fit_to else self._cut_pair(clean, grid)
        pr = self.renderer.render_pair(geom, eta, fit_p, mask_variant=self.mask_variant)
        patches, bndry = pr.patches, pr.boundary                       # [B,P,2,3,R,R], [B,P,R,R]

        with torch.no_grad():                                          # global maps, detached
            g_img = self._fold_pair(patches.detach())                  # [B, 2, 3, H, W]
            g_bndry = grid.fold_mean(bndry.detach().unsqueeze(2))      # [B, 1, H, W]
            g_img_p = self._cut_pair(g_img, grid)
            g_bndry_p = grid.unfold(g_bndry)[:, :, 0]                  # [B, P, R, R]
            g_deri_p = self._cut_pair(sobel_magnitude(g_img), self.deri_grid)
            deri_p = self._cut_pair(deri, self.deri_grid)              # [B, P, 2, 3, R-2, R-2]
            log_dist_p = self._cut_single(torch.log2(bndry_dist + 1.0), grid)
            target_p = self._cut_single(depth_target, grid)            # [B, P, R, R]

        patch_deri = sobel_magnitude(patches)                          # [B, P, 2, 3, R-2, R-2]
        valid = (target_p != 0) & (pr.mask != 0)
        n_valid = valid.sum()
        depth_err = torch.where(valid, pr.depth - target_p, torch.zeros_like(target_p)).square().sum()
        depth_term = depth_err / n_valid.clamp_min(1).to(depth_err.dtype)
        extra = {}
        if self.beta_blur > 0:
            cam = self.renderer.camera
            errs = [blur_squared_error(cam, grid.R, target_p, rho, pr.mask, eta[..., k, :])[0]
                    for k, rho in enumerate(cam.rhos)]
            extra["blur"] = (errs[0] + errs[1]) / (2 * n_valid.clamp_min(1)).to(depth_err.dtype)

        return {
            "color": (clean_p - patches).square().sum(-3).mean(),
            "color_cons": (patches - g_img_p).square().sum(-3).mean(),
            "bndry_cons": (bndry - g_bndry_p).square().mean(),
            "smthns": (patch_deri - deri_p).square().sum(-3).mean(),
            "smthns_cons": (patch_deri - g_deri_p).square().sum(-3).mean(),
            "bndry_loc": (log_dist_p * bndry).square().mean(),
            "depth": depth_term,
            **extra,
        }

    def __call__(self, raw: torch.Tensor, fit_to: torch.Tensor, clean: torch.Tensor,
                 bndry_dist: torch.Tensor, deri: torch.Tensor, depth_target: torch.Tensor,
                 weights: GlobalWeights) -> torch.Tensor:
        t = self.terms(raw, fit_to, clean, bndry_dist, deri, depth_target)
        w = weights.as_dict()
        total = w[GAMMA_NAMES[0]] * t[GAMMA_NAMES[0]]
        for name in GAMMA_NAMES[1:]:
            total = total + w[name] * t[name]
        if self.beta_blur > 0:
            total = total + self.beta_blur * t["blur"]
        return total


# ============================================================================ depth completion
def depth_completion_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "l1",
                          valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Loss of the depth-completion U-Net (our design, ``the README section Training``).

    Args:
        pred, target: ``[B, 1, H, W]`` depth in metres (target: dense ground truth).
        kind: ``"l1"`` (mean absolute error, the default) or ``"l2"`` (mean squared error).
        valid: optional ``[B, 1, H, W]`` boolean mask of pixels that count (default: target > 0).
    """
    if valid is None:
        valid = target > 0
    diff = torch.where(valid, _at_least_f32(pred) - target, torch.zeros_like(target))
    n = valid.sum().clamp_min(1).to(diff.dtype)
    if kind == "l1":
        return diff.abs().sum() / n
    if kind == "l2":
        return diff.square().sum() / n
    raise ValueError(f"unknown depth-completion loss {kind!r}; use 'l1' or 'l2'")

