"""From a noisy image pair to every Blurry-Edges output (SPEC §2–4): the one pipeline behind
``blurry_edges_test.py``, ``blurry_edges_test_big.py`` and ``python -m blurry_edges.infer``.

Data flow for one pair (``P`` patch positions of the image's grid, row-major)::

    pair [2, 3, H, W] ──unfold──► patches [2, P, 3, R, R] ──local stage + ridge colors──► features [2, P, 19]
      ──► tokens [P, 38] ──global stage (whole grid, or 147×147 tiles + BlockLayout.assemble)──► raw [P, 12]
      ──► renderer (shared geometry, η per image, colors fitted to both noisy images)
      ──► one fold over the full grid: color maps, sharpened, refocused, boundary, depth, confidence
      ──► final depth: sparse (F > τ), W (τ = 0, dense ownership mask), PP (U-Net) or DT (domain transform)

Two facts keep large images cheap without changing a single number:

* The local stage and the color fit look at one patch at a time, and every tile of a
  :class:`~blurry_edges.patches.BlockLayout` is aligned with the full patch grid (tile origins are
  multiples of the stride), so a tile's tokens are a subset of the full grid's tokens. The local
  stage therefore runs once per patch of the full image, not once per patch of every tile.
* Rendering is done only for the patches that survive the margins (after ``assemble``), in bands of
  patch rows, and the bands are folded into the full-size accumulators, so a 587×587 image (80 656
  patch positions) never holds more than ``render_chunk`` rendered patches at a time.

Everything runs under ``torch.no_grad()`` on the device of the pipeline; bf16 autocast (optional)
covers the networks only, the renderer and the ridge regression stay in float32.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .camera import CameraParams
from .densify import DTParams, domain_transform_densify
from .metrics import METRIC_NAMES, average_metrics, eval_depth
from .patches import BlockLayout, PatchGrid
from .runs import non_negative_int, positive_int
from .features import autocast_context, local_features, pair_tokens
from .wedges import WedgeRenderer, decode_global

__all__ = [
    "DENSIFY_MODES", "TAU_SPARSE", "PipelineConfig", "DepthPipeline", "build_pipeline",
    "normalize_densify", "as_pair_tensor", "camera_from_args", "add_camera_arguments",
    "add_eval_arguments", "evaluate_test_set", "run_eval_script",
]

#: Final-depth modes: sparse (``none``), the authors' dense-mask variant ``w``, U-Net completion
#: ``pp`` ("Ours-PP") and the training-free domain-transform densifier ``dt``.
DENSIFY_MODES = ("none", "w", "pp", "dt")
#: Confidence threshold τ of the sparse output (SPEC §4); the W variant uses τ = 0.
TAU_SPARSE = 0.05
#: Reference optical power for the refocused view (1/m).
RHO_PRIME = 10.39

ArrayOrTensor = Union[np.ndarray, torch.Tensor]


def normalize_densify(mode: Optional[str]) -> str:
    """``None`` / ``"none"`` / ``"None"`` / ``""`` → ``"none"``; otherwise one of :data:`DENSIFY_MODES`."""
    if mode is None:
        return "none"
    m = str(mode).strip().lower()
    if m in ("", "none", "sparse"):
        return "none"
    if m not in DENSIFY_MODES:
        raise ValueError(f"unknown densify mode {mode!r}; choose one of {', '.join(DENSIFY_MODES)}")
    return m


@dataclass(frozen=True)
class PipelineConfig:
    """Settings of :class:`DepthPipeline` (defaults are the paper's).

    Attributes:
        R, stride: patch size and patch stride (21, 2).
        densify: ``"none"`` (sparse), ``"w"``, ``"pp"`` or ``"dt"`` (see :data:`DENSIFY_MODES`).
        rho_prime: optical power (1/m) of the refocused view (10.39).
        tau: confidence threshold of the sparse depth; ``None`` means 0.05, or 0 for ``"w"``
            (the authors' choices).
        bf16: bf16 autocast for the three networks (the renderer stays float32).
        margin: margin patches ``m`` dropped on every inner tile border (large images, SPEC §4).
        local_chunk: patches per local-stage forward pass (bounds memory; 256 is fastest on a 2-core CPU,
            where one batch of 8192 is ~1.5× slower).
        render_chunk: patches rendered at once (the pair render of 4096 patches at R = 21 is
            ≈45 MB per tensor in float32).
        tile_batch: tiles per global-stage forward pass (large images).
        dt_params: parameters of the domain-transform densifier (``densify="dt"``).
        dt_guide: guide image of the densifier: ``"mean"`` of the two restored color maps or
            ``"image1"`` (the restored color map of image 1).
    """

    R: int = 21
    stride: int = 2
    densify: str = "none"
    rho_prime: float = RHO_PRIME
    tau: Optional[float] = None
    bf16: bool = False
    margin: int = 10
    local_chunk: int = 256
    render_chunk: int = 4096
    tile_batch: int = 1
    dt_params: DTParams = field(default_factory=DTParams)
    dt_guide: str = "mean"

    def __post_init__(self) -> None:
        object.__setattr__(self, "densify", normalize_densify(self.densify))
        if self.dt_guide not in ("mean", "image1"):
            raise ValueError(f"dt_guide must be 'mean' or 'image1', got {self.dt_guide!r}")
        if self.tau is not None and not (0.0 <= self.tau < 1.0):
            raise ValueError(f"tau={self.tau} must lie in [0, 1)")
        for name in ("local_chunk", "render_chunk", "tile_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")

    @property
    def mask_variant(self) -> str:
        """Ownership mask of the renderer: the dense ``"w"`` mask for the W variant, else ``"sparse"``."""
        return "w" if self.densify == "w" else "sparse"

    @property
    def threshold(self) -> float:
        """τ: keep depth where confidence > τ (0.05; 0 for the W variant, as the authors do)."""
        if self.tau is not None:
            return float(self.tau)
        return 0.0 if self.densify == "w" else TAU_SPARSE


def as_pair_tensor(pair: ArrayOrTensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """An image pair ``[2, H, W, 3]`` or ``[2, 3, H, W]`` (array or tensor) → float32 ``[2, 3, H, W]``.

    Raises ``ValueError`` for another shape or non-finite values.
    """
    x = torch.as_tensor(np.ascontiguousarray(pair) if isinstance(pair, np.ndarray) else pair)
    if x.dim() != 4 or x.shape[0] != 2:
        raise ValueError(f"expected an image pair [2, H, W, 3] or [2, 3, H, W], got shape {list(x.shape)}")
    if x.shape[1] == 3 and x.shape[-1] != 3:
        pass                                   # already channels-first
    elif x.shape[-1] == 3:
        x = x.permute(0, 3, 1, 2)
    else:
        raise ValueError(f"expected 3 color channels (pair [2, H, W, 3] or [2, 3, H, W]), got shape {list(x.shape)}")
    x = x.to(device=device, dtype=torch.float32).contiguous()
    if not bool(torch.isfinite(x).all()):
        raise ValueError("the image pair contains NaN or infinite values")
    return x


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class DepthPipeline:
    """Local stage → global stage → renderer → global maps → final depth, for one image pair.

    Args:
        local_model: a ``LocalStage`` (any module ``[N, 3, R, R] → [N, 10]``).
        global_model: a ``GlobalStage``; its token grid ``rows × cols`` decides how images are cut:
            an image whose patch grid equals it is processed whole, a larger one through tiles of
            ``(rows − 1)·stride + R`` pixels (147 for the paper's 64 × 64 grid).
        camera: camera parameters (Eq. 7 and refocusing); defaults to the paper's.
        config: :class:`PipelineConfig`.
        unet: the depth-completion U-Net, required for ``densify="pp"``.
        device: where everything runs.
    """

    def __init__(self, local_model: nn.Module, global_model: nn.Module, camera: CameraParams | None = None,
                 config: PipelineConfig = PipelineConfig(), unet: nn.Module | None = None,
                 device: torch.device | str = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self.camera = camera or CameraParams()
        R, S = config.R, config.stride
        if getattr(local_model, "R", R) != R:
            raise ValueError(f"the local stage was built for R={local_model.R} but the pipeline uses R={R}")
        if getattr(global_model, "stride", S) != S:
            raise ValueError(f"the global stage was built for stride {global_model.stride} but the pipeline uses {S}")
        if config.densify == "pp" and unet is None:
            raise ValueError("densify='pp' needs the depth-completion U-Net (pretrained_depth_completion_pp.pth)")
        self.local = local_model.to(self.device).eval()
        self.glob = global_model.to(self.device).eval()
        self.unet = unet.to(self.device).eval() if unet is not None else None
        self.renderer = WedgeRenderer(R, self.camera)
        rows, cols = getattr(global_model, "rows", None), getattr(global_model, "cols", None)
        if rows is None or cols is None:
            raise ValueError("the global stage must expose its token grid as .rows and .cols")
        self.tile_rows, self.tile_cols = int(rows), int(cols)

    # ------------------------------------------------------------------ geometry of the input
    @property
    def tile_size(self) -> tuple[int, int]:
        """Pixel size of the image (or tile) the global stage was built for (147 × 147 by default)."""
        S, R = self.config.stride, self.config.R
        return (self.tile_rows - 1) * S + R, (self.tile_cols - 1) * S + R

    def layout(self, H: int, W: int, blocks: Optional[bool] = None) -> Optional[BlockLayout]:
        """``None`` when the image is processed whole, else its :class:`BlockLayout`.

        ``blocks=None`` decides by size: an image whose patch grid is the global stage's grid is one
        tile; anything else is cut into tiles. ``blocks=True`` always uses the tile path (an image of
        exactly one tile then gives the same numbers), ``blocks=False`` never does.
        """
        R, S = self.config.R, self.config.stride
        if H < R or W < R or (H - R) % S or (W - R) % S:
            raise ValueError(f"image {H}×{W} does not fit the patch grid: (size − R) must be a non-negative "
                             f"multiple of the stride {S} (R={R}); crop it by a pixel")
        grid = PatchGrid(H, W, R, S)
        fits = (grid.Hp, grid.Wp) == (self.tile_rows, self.tile_cols)
        if blocks is False or (blocks is None and fits):
            if not fits:
                th, tw = self.tile_size
                raise ValueError(f"the global stage was built for {th}×{tw} images but got {H}×{W}; "
                                 "process it in blocks (blurry_edges_test_big.py) or set --img_size")
            return None
        th, tw = self.tile_size
        if th != tw:
            raise ValueError(f"tiles must be square; the global stage's grid is {self.tile_rows}×{self.tile_cols}")
        if H < th or W < tw:
            raise ValueError(f"image {H}×{W} is smaller than one {th}×{tw} block")
        return BlockLayout(H, W, self.config.R, self.config.stride, block=th, margin=self.config.margin)

    def _band_rows(self, grid: PatchGrid) -> int:
        return max(1, self.config.render_chunk // grid.Wp)

    def _band(self, x: torch.Tensor, grid: PatchGrid, r0: int, r1: int) -> tuple[PatchGrid, torch.Tensor]:
        """Patch rows ``[r0, r1)`` of ``x [N, C, H, W]``: their sub-grid and patches ``[N, n, C, R, R]``."""
        band_grid, top = grid.band(r0, r1)
        return band_grid, band_grid.unfold(x[..., top:top + band_grid.H, :])

    # ------------------------------------------------------------------ stages
    def _global_forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, rows·cols, 38]`` → raw ``[B, rows·cols, 12]`` float32.

        On the CPU PyTorch's fused "fast path" of ``nn.TransformerEncoder`` is about 3× slower than
        the ordinary path at 4096 tokens (same outputs to 4e-6), so it is switched off there.
        """
        fast = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(fast and self.device.type != "cpu")
        try:
            with autocast_context(self.device, self.config.bf16):
                out = self.glob(tokens)
        finally:
            torch.backends.mha.set_fastpath_enabled(fast)
        return out.float()

    @torch.no_grad()
    def features(self, x: torch.Tensor, grid: PatchGrid) -> torch.Tensor:
        """Local stage + ridge colors for every patch of both images: ``[2, 3, H, W]`` → tokens ``[P, 38]``."""
        out = []
        # Bands only bound memory on large images; whole-image batches for the paper's 147×147.
        step = max(1, max(self.config.render_chunk, 8192) // grid.Wp)
        for r0 in range(0, grid.Hp, step):
            r1 = min(grid.Hp, r0 + step)
            _, patches = self._band(x, grid, r0, r1)                      # [2, n, 3, R, R]
            n = patches.shape[1]
            f = local_features(self.local, self.renderer, patches.reshape(2 * n, *patches.shape[2:]),
                               chunk=self.config.local_chunk, bf16=self.config.bf16)
            f = f.view(2, n, -1)
            out.append(pair_tokens(f[0], f[1]))
        return torch.cat(out, dim=0)

    @torch.no_grad()
    def global_params(self, x: torch.Tensor, blocks: Optional[bool] = None,
                      timing: Optional[dict] = None) -> torch.Tensor:
        """Raw global-stage outputs over the image's full patch grid: ``[2, 3, H, W]`` → ``[P, 12]``."""
        H, W = x.shape[-2:]
        layout = self.layout(H, W, blocks)                                # validates before any work
        grid = PatchGrid(H, W, self.config.R, self.config.stride)
        t0 = time.perf_counter()
        tokens = self.features(x, grid)                                   # [P, 38]
        _sync(self.device)
        t1 = time.perf_counter()
        if layout is None:
            raw = self._global_forward(tokens[None])[0]
        else:
            idx = tile_token_index(layout).to(tokens.device)              # [T, Pb]
            outs = [self._global_forward(tokens[idx[i:i + self.config.tile_batch]])
                    for i in range(0, idx.shape[0], self.config.tile_batch)]
            raw = layout.assemble(torch.cat(outs, dim=0))                 # [P, 12]
        _sync(self.device)
        if timing is not None:
            timing["local"] = t1 - t0
            timing["global"] = time.perf_counter() - t1
        return raw

    @torch.no_grad()
    def render_maps(self, raw: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Render every patch from the global outputs and fold once over the full grid (Eqs. 9–20).

        Args:
            raw: ``[P, 12]`` global-stage outputs over the full patch grid of ``x``.
            x: ``[2, 3, H, W]`` the noisy pair (the shared colors are fitted to both images).
        Returns:
            ``color [2, 3, H, W]``, ``sharpened [3, H, W]``, ``refocused [3, H, W]``, ``boundary [H, W]``,
            ``depth_raw [H, W]`` (mean wedge depth over the owning patches) and ``confidence [H, W]``.
        """
        H, W = x.shape[-2:]
        grid = PatchGrid(H, W, self.config.R, self.config.stride)
        if raw.shape != (grid.num_patches, 12):
            raise ValueError(f"expected raw outputs [{grid.num_patches}, 12], got {list(raw.shape)}")
        # channels: color of image 1 and 2 (6), sharpened (3), refocused (3), boundary, owned, depth
        acc = torch.zeros(15, H, W, device=x.device, dtype=torch.float32)
        step = self._band_rows(grid)
        for r0 in range(0, grid.Hp, step):
            r1 = min(grid.Hp, r0 + step)
            _, patches = self._band(x, grid, r0, r1)                      # [2, n, 3, R, R]
            geom, eta = decode_global(raw[r0 * grid.Wp:r1 * grid.Wp])     # [n, 8], [n, 2, 2]
            pr = self.renderer.render_pair(geom, eta, patches.transpose(0, 1),
                                           mask_variant=self.config.mask_variant)
            sharp = self.renderer.sharpened(pr.dists, pr.colors)
            refoc = self.renderer.refocused(pr.dists, pr.colors, pr.mask, pr.wedge_depth, self.config.rho_prime)
            owned = (pr.mask > 0).to(torch.float32)
            stack = torch.cat([pr.patches.flatten(1, 2), sharp, refoc, pr.boundary[:, None],
                               owned[:, None], (pr.depth * owned)[:, None]], dim=1)    # [n, 15, R, R]
            grid.fold_band_into(acc, r0, stack)
        cov = grid.coverage(x.device, torch.float32).clamp_min(1)
        n_owned = acc[13]
        return {
            "color": (acc[0:6] / cov).view(2, 3, H, W),
            "sharpened": acc[6:9] / cov,
            "refocused": acc[9:12] / cov,
            "boundary": acc[12] / cov,
            "depth_raw": acc[14] / n_owned.clamp_min(1),
            "confidence": n_owned / cov,
        }

    @torch.no_grad()
    def finalize_depth(self, maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Sparse depth (confidence > τ) and the final depth of the configured mode."""
        cfg = self.config
        depth_raw, conf = maps["depth_raw"], maps["confidence"]
        sparse = torch.where(conf > cfg.threshold, depth_raw, torch.zeros_like(depth_raw))
        out = {"depth_sparse": sparse}
        if cfg.densify in ("none", "w"):
            out["depth"] = sparse
        elif cfg.densify == "pp":
            # The authors feed the U-Net the folded depth map itself, not the τ-thresholded one.
            with autocast_context(self.device, cfg.bf16):
                dense = self.unet(depth_raw[None, None])
            out["depth"] = dense.float()[0, 0]
        else:  # "dt"
            color = maps["color"]
            guide = color.mean(dim=0) if cfg.dt_guide == "mean" else color[0]
            dense, support = domain_transform_densify(sparse, guide.clamp(0, 1), weight=conf,
                                                      boundary=maps["boundary"], params=cfg.dt_params)
            out["depth"] = dense.float()
            out["support"] = support.float()
        return out

    @torch.no_grad()
    def run(self, pair: ArrayOrTensor, blocks: Optional[bool] = None) -> dict[str, Any]:
        """All outputs for one noisy pair (photon counts / α), ``[2, H, W, 3]`` or ``[2, 3, H, W]``.

        Returns a dict of CPU float32 tensors: ``color [2, 3, H, W]`` (restored color maps),
        ``sharpened [3, H, W]``, ``refocused [3, H, W]``, ``boundary [H, W]``, ``depth_raw [H, W]``
        (folded depth, 0 where no patch owns the pixel), ``confidence [H, W]``, ``depth_sparse [H, W]``
        (``depth_raw`` where confidence > τ, else 0), ``depth [H, W]`` (final, per ``densify``;
        0 = no estimate), ``support [H, W]`` (``dt`` only), and ``timing``: seconds per stage
        (``local`` includes the color fit, ``render_fold``, ``densify``, ``total``), plus ``tiles``.
        """
        _sync(self.device)
        t0 = time.perf_counter()
        x = as_pair_tensor(pair, self.device)
        timing: dict[str, float] = {}
        raw = self.global_params(x, blocks, timing)
        t1 = time.perf_counter()
        maps = self.render_maps(raw, x)
        _sync(self.device)
        t2 = time.perf_counter()
        maps.update(self.finalize_depth(maps))
        _sync(self.device)
        t3 = time.perf_counter()
        timing.update(render_fold=t2 - t1, densify=t3 - t2, total=t3 - t0)
        out: dict[str, Any] = {k: v.detach().float().cpu() for k, v in maps.items()}
        layout = self.layout(*x.shape[-2:], blocks)
        out["tiles"] = 1 if layout is None else len(layout.origins())
        out["timing"] = timing
        return out


def tile_token_index(layout: BlockLayout) -> torch.Tensor:
    """For each tile of ``layout``, the full-grid index of each of its patches: ``[T, Pb]`` (row-major).

    Tile origins are multiples of the stride, so tile patch ``(i, j)`` of a tile at pixel
    ``(r, c)`` is full-grid patch ``(r/S + i, c/S + j)``: the same pixels, hence the same tokens.
    """
    S = layout.stride
    bg, fg = layout.block_grid, layout.full_grid
    rows, cols = torch.arange(bg.Hp), torch.arange(bg.Wp)
    out = []
    for r, c in layout.origins():
        if r % S or c % S:
            raise ValueError(f"tile origin ({r}, {c}) is not on the patch grid (stride {S})")
        out.append(((r // S + rows)[:, None] * fg.Wp + (c // S + cols)[None, :]).flatten())
    return torch.stack(out)


# ====================================================================== building from weight files
def build_pipeline(*, model_path: str | Path = "pretrained_weights", densify: Optional[str] = "none",
                   R: Optional[int] = None, stride: Optional[int] = None, img_size: Optional[Sequence[int]] = None,
                   camera: CameraParams | None = None, device: torch.device | str = "cpu",
                   bf16: bool = False, rho_prime: float = RHO_PRIME, margin: int = 10,
                   local_weights: str | Path | None = None, global_weights: str | Path | None = None,
                   pp_weights: str | Path | None = None, tile_batch: int = 1,
                   dt_params: DTParams | None = None, dt_guide: str = "mean",
                   tau: Optional[float] = None, log=None) -> DepthPipeline:
    """Build the networks, load their weights and return a :class:`DepthPipeline`.

    The weight files are chosen by :func:`blurry_edges.runs.choose_weights` (explicit files, else
    the freshly trained ``best_run_exp_*.pth`` in ``model_path``, else the authors' file names
    ``pretrained_{local_stage, global_stage(_w), depth_completion_pp}.pth``; the ``_w`` global
    weights for ``densify="w"``); ``log`` (e.g. ``print``) is told which file each network uses.
    ``R``, ``stride`` and ``img_size`` (the size the global stage works on: the whole image for the
    regular test script, one block for large images) default to what the weights record, else 21,
    2 and 147 × 147; a value that contradicts the weights, or local and global weights of different
    R or stride, is a ``ValueError``. The pipeline keeps the chosen files in ``weight_files``.
    """
    from .models import GlobalStage, LocalStage, UNet, load_weights
    from .runs import choose_weights, settings_from_weights, weights_meta

    mode = normalize_densify(densify)
    gkey = "global_w" if mode == "w" else "global"
    files = {"local": choose_weights("local", model_path, local_weights, log=log),
             gkey: choose_weights(gkey, model_path, global_weights, log=log)}
    if mode == "pp":
        files["pp"] = choose_weights("pp", model_path, pp_weights, log=log)
    metas = {k: (files[k], weights_meta(files[k])) for k in ("local", gkey)}
    settings = settings_from_weights(metas, R=R, stride=stride)
    R, stride = int(settings.get("R", 21)), int(settings.get("stride", 2))
    if img_size is None:
        img_size = metas[gkey][1].get("img_size") or (147, 147)
    H, W = int(img_size[0]), int(img_size[1])
    grid = PatchGrid(H, W, R, stride)
    if (H - R) % stride or (W - R) % stride:
        raise ValueError(f"img_size {H}×{W} does not fit the patch grid: (size − R) must be a multiple of the stride")
    device = torch.device(device)
    local = LocalStage(R=R)
    load_weights(local, files["local"], map_location="cpu", what="local stage")
    glob = GlobalStage(patch_rows=grid.Hp, patch_cols=grid.Wp, stride=stride)
    load_weights(glob, files[gkey], map_location="cpu",
                 what="global stage" + (" (W variant)" if mode == "w" else ""))
    unet = None
    if mode == "pp":
        unet = UNet()
        load_weights(unet, files["pp"], map_location="cpu", what="depth-completion U-Net")
    config = PipelineConfig(R=R, stride=stride, densify=mode, rho_prime=rho_prime, bf16=bf16, margin=margin,
                            tile_batch=tile_batch, dt_params=dt_params or DTParams(), dt_guide=dt_guide, tau=tau)
    pipeline = DepthPipeline(local, glob, camera, config, unet=unet, device=device)
    pipeline.weight_files = {k: str(v) for k, v in files.items()}
    pipeline.weights_meta = {k: m for k, (_, m) in metas.items()}
    return pipeline


# ====================================================================== shared command-line pieces
CAMERA_FIELDS = ("s", "rho_1", "rho_2", "sigma_cam", "pixel_pitch", "mag", "z_min", "z_max")


def add_camera_arguments(parser: argparse.ArgumentParser) -> None:
    """``--camera JSON`` plus one flag per :class:`CameraParams` field (flags override the file)."""
    g = parser.add_argument_group("camera (defaults: the paper's; a flag overrides --camera)")
    g.add_argument("--camera", type=str, default=None, help="JSON file with camera parameters")
    d = CameraParams()
    units = {"s": "m", "rho_1": "1/m", "rho_2": "1/m", "sigma_cam": "m", "pixel_pitch": "m", "mag": "",
             "z_min": "m", "z_max": "m"}
    for name in CAMERA_FIELDS:
        g.add_argument(f"--{name}", type=float, default=None,
                       help=f"{name} ({units[name] or 'factor'}; default {getattr(d, name)})")


def camera_given(args: argparse.Namespace) -> bool:
    return getattr(args, "camera", None) is not None or any(getattr(args, n, None) is not None for n in CAMERA_FIELDS)


def camera_from_args(args: argparse.Namespace, fallback: CameraParams | None = None) -> CameraParams:
    """Camera from ``--camera`` (else ``fallback``, else the defaults) with individual flags on top."""
    base = CameraParams.from_json(args.camera) if getattr(args, "camera", None) else (fallback or CameraParams())
    values = base.to_dict()
    for name in CAMERA_FIELDS:
        v = getattr(args, name, None)
        if v is not None:
            values[name] = float(v)
    return CameraParams.from_dict(values)


def _densify_arg(value: str) -> str:
    try:
        return normalize_densify(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_eval_arguments(parser: argparse.ArgumentParser, big: bool = False) -> None:
    """The options of ``blurry_edges_test.py`` (``big=False``) and ``blurry_edges_test_big.py``."""
    p = parser
    p.add_argument("--cuda", type=str, default=default_device(),
                   help="device, e.g. cuda, cuda:0 or cpu (default: cuda if available, else cpu)")
    p.add_argument("--model_path", type=str, default="./pretrained_weights",
                   help="folder with the weight files: freshly trained best_run_exp_*.pth, else the authors' names")
    p.add_argument("--img_size", type=positive_int, nargs=2, default=None, metavar=("H", "W"),
                   help="image size the global stage works on" + (" (the block size; default: what the global "
                        "weights were trained on, else 147 147)" if big else " (default: the test set's)"))
    if big:
        p.add_argument("--big_img_size", type=positive_int, nargs=2, default=None, metavar=("H", "W"),
                       help="expected size of the large images (default: whatever the test set holds; "
                            "any 147 + 2k with stride 2, the paper recommends 147 + 4x)")
        p.add_argument("--n_margin_patch", type=non_negative_int, default=10,
                       help="margin patches dropped on every inner block border")
    p.add_argument("--R", type=positive_int, default=None, help="patch size (default: the weights', else 21)")
    p.add_argument("--stride", type=positive_int, default=None,
                   help="patch stride (default: the global weights', else 2)")
    p.add_argument("--data_path", type=str, default="./data/data_test_big" if big else "./data/data_test",
                   help="test set (ours or the authors' images_ny.npy / depth_maps.npy / alphas.npy)")
    p.add_argument("--log_path", type=str, default="./logs", help="outputs go to LOG_PATH/RUN_NAME/")
    p.add_argument("--run_name", type=str, default=None,
                   help="sub-folder of --log_path (default: test[_big]_<densify>[_bf16]); when it holds an "
                        "earlier run, RUN_NAME_2, _3 … is used instead")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of an earlier run in LOG_PATH/RUN_NAME instead of a new folder")
    p.add_argument("--batch_size", type=positive_int, default=1,
                   help="scenes are processed one at a time; this many 147×147 blocks share a "
                        "global-stage forward pass" if big else "kept for compatibility: scenes are processed one at a time")
    p.add_argument("--crop", type=non_negative_int, default=10, help="pixels cropped on every side before the metrics")
    p.add_argument("--rho_prime", type=float, default=RHO_PRIME, help="optical power (1/m) of the refocused view")
    p.add_argument("--densify", type=_densify_arg, default="none", nargs="?", const="none",
                   help="none (sparse, default), w (dense-mask global weights), pp (U-Net completion) "
                        "or dt (domain-transform densifier)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the networks")
    p.add_argument("--max_scenes", type=positive_int, default=None, help="evaluate only the first N scenes")
    p.add_argument("--no_figures", action="store_true", help="skip the per-scene PNG figures")
    p.add_argument("--local_weights", type=str, default=None,
                   help="local-stage weights (default: MODEL_PATH/best_run_exp_local_stage.pth, "
                        "else MODEL_PATH/pretrained_local_stage.pth)")
    p.add_argument("--global_weights", type=str, default=None,
                   help="global-stage weights (default: MODEL_PATH/best_run_exp_global_stage.pth, else "
                        "MODEL_PATH/pretrained_global_stage.pth; …_w.pth for --densify w)")
    p.add_argument("--pp_weights", type=str, default=None,
                   help="U-Net weights (default: MODEL_PATH/best_run_exp_depth_completion_pp.pth, "
                        "else MODEL_PATH/pretrained_depth_completion_pp.pth)")
    p.add_argument("--dt_guide", choices=("mean", "image1"), default="mean",
                   help="guide of --densify dt: mean of both restored color maps, or image 1's")
    p.add_argument("--dt_confidence_weighted", action="store_true",
                   help="--densify dt: weight samples by the confidence map")
    add_method_arguments(p)
    add_camera_arguments(p)


#: Depth methods of the test scripts and of ``python -m blurry_edges.infer``.
METHODS = ("blurry_edges", "focal_track")


def add_method_arguments(parser: argparse.ArgumentParser, compare: bool = True) -> None:
    """``--method`` (Blurry-Edges or the training-free Focal Track baseline), its settings and ``--compare``."""
    from .focal_track import FocalTrackConfig

    d = FocalTrackConfig()
    g = parser.add_argument_group("method (README: Training-free baseline: Focal Track)")
    g.add_argument("--method", choices=METHODS, default="blurry_edges",
                   help="blurry_edges (default; needs the weight files) or focal_track (training-free, "
                        "Guo et al. ICCV 2017)")
    g.add_argument("--ft_window", type=int, default=d.window, help="focal_track: least-squares window (odd, px)")
    g.add_argument("--ft_prefilter", type=float, default=d.prefilter_sigma,
                   help="focal_track: σ (px) of the Gaussian pre-filter on both images (0 = off)")
    g.add_argument("--ft_threshold", type=float, default=d.threshold,
                   help="focal_track: keep depth where the confidence exceeds this")
    if compare:
        g.add_argument("--compare", action="store_true",
                       help="evaluate Focal Track and every Blurry-Edges mode whose weights exist on the same "
                            "test set and print a paper-Table-3-style comparison")


def focal_track_from_args(args: argparse.Namespace, camera: CameraParams, device: torch.device | str):
    """A :class:`~blurry_edges.focal_track.FocalTrackPipeline` from the ``--ft_*`` options (``ValueError`` if bad)."""
    from .focal_track import FocalTrackConfig, FocalTrackPipeline

    cfg = FocalTrackConfig(window=args.ft_window, prefilter_sigma=args.ft_prefilter, threshold=args.ft_threshold,
                           rho_prime=args.rho_prime)
    return FocalTrackPipeline(camera, cfg, device=device)


# ====================================================================== evaluation over a test set
def _to_hwc(t: torch.Tensor) -> np.ndarray:
    return t.movedim(-3, -1).numpy()


def save_scene_npz(path: Path, noisy: np.ndarray, out: dict[str, Any], gt: Optional[np.ndarray]) -> None:
    """Every map of one scene (images channel-last, float32)."""
    arrays = {
        "noisy": np.asarray(noisy, dtype=np.float32),
        "restored": _to_hwc(out["color"]),
        "sharpened": _to_hwc(out["sharpened"]),
        "refocused": _to_hwc(out["refocused"]),
        "boundary": out["boundary"].numpy(),
        "confidence": out["confidence"].numpy(),
        "depth_raw": out["depth_raw"].numpy(),
        "depth_sparse": out["depth_sparse"].numpy(),
        "depth": out["depth"].numpy(),
    }
    if "support" in out:
        arrays["support"] = out["support"].numpy()
    if gt is not None:
        arrays["gt_depth"] = np.asarray(gt, dtype=np.float32)
    np.savez_compressed(path, **arrays)


def _fmt(v: float) -> str:
    return "nan" if not math.isfinite(v) else f"{v:.4f}"


def evaluate_test_set(pipeline: DepthPipeline, dataset, out_dir: str | Path, *, crop: int = 10,
                      max_scenes: Optional[int] = None, figures: bool = True, blocks: Optional[bool] = None,
                      run_args: Optional[dict] = None, display_bgr: bool = False,
                      progress: bool = True) -> dict:
    """Run the pipeline on every scene of ``dataset`` (items ``(noisy [2, H, W, 3], depth [H, W])``).

    Writes ``scene_XXXX.npz`` (every map), ``scene_XXXX.png`` (figure, unless ``figures=False``),
    ``summary.csv`` and ``summary.json`` under ``out_dir``; returns the summary dict. Running time
    per scene is the pipeline's (network input to final depth), as the authors time it.
    """
    from tqdm import tqdm

    from .visualize import save_scene_figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cam = pipeline.camera
    n = len(dataset) if max_scenes is None else min(len(dataset), max_scenes)
    rows: list[dict] = []
    metrics = []
    it = tqdm(range(n), desc="scenes", disable=not progress, file=sys.stdout)
    for i in it:
        noisy, gt = dataset[i]
        noisy_np = np.asarray(noisy, dtype=np.float32)
        gt_np = np.asarray(gt, dtype=np.float32)
        out = pipeline.run(noisy_np, blocks=blocks)
        m = eval_depth(out["depth"].numpy(), gt_np, crop=crop, z_min=cam.z_min, z_max=cam.z_max)
        metrics.append(m)
        t = out["timing"]
        row = {"scene": i, **{k: getattr(m, k) for k in METRIC_NAMES}, "n_pixels": m.n_pixels,
               "time_s": t["total"], **{f"time_{k}_s": v for k, v in t.items() if k != "total"}}
        rows.append(row)
        msg = (f"scene {i:04d}: delta1={_fmt(m.delta1)} delta2={_fmt(m.delta2)} delta3={_fmt(m.delta3)} "
               f"RMSE={_fmt(m.rmse_cm)} cm AbsRel={_fmt(m.absrel)} time={t['total']:.2f} s")
        it.write(msg) if progress else print(msg)
        stem = out_dir / f"scene_{i:04d}"
        save_scene_npz(stem.with_suffix(".npz"), noisy_np, out, gt_np)
        if figures:
            save_scene_figure(stem.with_suffix(".png"), noisy_np, out, gt_np, z_min=cam.z_min, z_max=cam.z_max,
                              rho_prime=pipeline.config.rho_prime, bgr=display_bgr,
                              title=f"scene {i:04d}  ({getattr(pipeline, 'name', pipeline.config.densify)})",
                              labels=getattr(pipeline, "figure_labels", None))
    avg = average_metrics(metrics)
    times = [r["time_s"] for r in rows]
    from .runs import provenance

    summary = {
        "args": run_args or {},
        "provenance": provenance(getattr(pipeline, "weight_files", {})),
        "camera": cam.to_dict(),
        "config": asdict(pipeline.config),
        "device": str(pipeline.device),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "n_scenes": n,
        "per_scene": rows,
        "average": avg,
        "mean_time_s": float(np.mean(times)) if times else float("nan"),
        "median_time_s": float(np.median(times)) if times else float("nan"),
        "mean_time_after_first_s": float(np.mean(times[1:])) if len(times) > 1 else None,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    with open(out_dir / "summary.csv", "w", newline="") as fh:
        fields = list(rows[0].keys()) if rows else ["scene", *METRIC_NAMES, "n_pixels", "time_s"]
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow(r)
        w.writerow({"scene": "mean", **{k: avg[k] for k in METRIC_NAMES}, "time_s": summary["mean_time_s"]})
    return summary


#: The test set ``blurry_edges_test.py`` makes when run with no test set at the default location.
DEFAULT_TEST_SET = {False: ("./data/data_test_builtin", 5, (147, 147)), True: ("./data/data_test_big_builtin", 2, (587, 587))}
DEFAULT_TEST_SEED = 1869


def default_test_set(big: bool = False, log=print) -> Path:
    """The out-of-the-box test set: a few realistic scenes from the builtin textures (no download).

    Made on first use (``test_data_generator.py --source builtin`` with a fixed seed: 5 scenes of
    147×147, or 2 of 587×587 for ``big``, a few seconds), reused afterwards; the paper's test set
    (MS-COCO objects on paintings) is made with ``test_data_generator.py --source coco``.
    """
    from .synth.generate import generate_test
    from .synth.realistic import RealisticConfig

    path, n, size = DEFAULT_TEST_SET[bool(big)]
    path = Path(path)
    if (path / "manifest.json").is_file():
        log(f"no test set at the default location; using the builtin one at {path} ({n} scenes)")
        return path
    log(f"no test set at the default location: making a small one from the builtin textures at {path} "
        f"({n} scenes of {size[0]}×{size[1]}, seed {DEFAULT_TEST_SEED}; the paper's set: "
        f"`python test_data_generator.py --source coco`)")
    generate_test(RealisticConfig(img_size=size), path, n, source="builtin", seed=DEFAULT_TEST_SEED,
                  progress=False, log=lambda *a, **k: None)
    return path


def default_run_name(args: argparse.Namespace, big: bool) -> str:
    """``test[_big]_{sparse,w,pp,dt}[_bf16]`` for Blurry-Edges, ``test[_big]_focal_track`` for Focal Track."""
    if getattr(args, "method", "blurry_edges") == "focal_track":
        return f"test{'_big' if big else ''}_focal_track"
    return f"test{'_big' if big else ''}_{'sparse' if args.densify == 'none' else args.densify}" \
           f"{'_bf16' if args.bf16 else ''}"


def run_eval_script(argv: Optional[Sequence[str]] = None, big: bool = False) -> int:
    """Entry point of ``blurry_edges_test.py`` / ``blurry_edges_test_big.py``; returns an exit code."""
    from .data import TestSceneDataset
    from .runs import OutputLocationError, add_version_argument, check_output_dir, fresh_run_dir

    parser = argparse.ArgumentParser(
        description=("Blurry-Edges evaluation on large images through 147×147 blocks (SPEC §4)" if big else
                     "Blurry-Edges evaluation on a test set: per-scene depth metrics, figures and maps"))
    add_eval_arguments(parser, big=big)
    add_version_argument(parser)
    args = parser.parse_args(argv)
    try:
        check_output_dir(args.log_path, "--log_path")
    except OutputLocationError as e:
        parser.error(str(e))
    try:
        dataset = TestSceneDataset(args.data_path)
    except FileNotFoundError as e:
        if args.data_path != parser.get_default("data_path"):
            print(f"error: no test set: {e}\nA quick one: `python test_data_generator.py{' --big' if big else ''} "
                  f"--data_path {args.data_path} --source builtin --num_sample_test 5` (the builtin sources need no "
                  "download; the paper's set uses MS-COCO objects on paintings)", file=sys.stderr)
            return 2
        try:                   # out of the box: a small set from the builtin textures, made once
            dataset = TestSceneDataset(default_test_set(big))
        except (OSError, ValueError) as err:
            print(f"error: no test set at {args.data_path}, and the default one could not be made: {err}",
                  file=sys.stderr)
            return 2
        args.data_path = str(default_test_set(big))
    except ValueError as e:
        print(f"error: cannot read the test set at {args.data_path}: {e}", file=sys.stderr)
        return 2
    H, W = dataset.img_size
    if big and args.big_img_size is not None and tuple(args.big_img_size) != (H, W):
        print(f"error: --big_img_size {args.big_img_size[0]} {args.big_img_size[1]} but the test set at "
              f"{args.data_path} holds {H}×{W} images; drop the option or pass the matching size", file=sys.stderr)
        return 2
    ft_only = args.method == "focal_track" and not args.compare      # any size: no global stage
    if not big and not ft_only and args.img_size is not None and (H, W) != tuple(args.img_size):
        print(f"error: the test set at {args.data_path} holds {H}×{W} images but --img_size is "
              f"{args.img_size[0]} {args.img_size[1]}; pass --img_size {H} {W} or use blurry_edges_test_big.py "
              "for large images", file=sys.stderr)
        return 2
    dataset_camera = getattr(dataset, "camera", None)
    focal = args.method == "focal_track"
    if focal or args.compare:                          # no weights to take a camera from
        try:
            camera = camera_from_args(args, fallback=dataset_camera)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if dataset_camera is not None and camera_given(args) and dataset_camera != camera:
            print(f"note: the test set was made with camera {dataset_camera.to_dict()}, evaluating with {camera.to_dict()}")
        if args.compare:
            from .compare import run_comparison
            return run_comparison(args, dataset, camera, big=big)
    dt = DTParams(confidence_weighted=args.dt_confidence_weighted)
    try:
        # --method: the Blurry-Edges networks (weights needed) or the training-free Focal Track
        if focal:
            pipeline = focal_track_from_args(args, camera, args.cuda)
        else:
            pipeline = build_pipeline(
                model_path=args.model_path, densify=args.densify, R=args.R, stride=args.stride,
                img_size=args.img_size if (big or args.img_size is not None) else (H, W), camera=None,
                device=args.cuda, bf16=args.bf16, rho_prime=args.rho_prime,
                margin=getattr(args, "n_margin_patch", 10), local_weights=args.local_weights,
                global_weights=args.global_weights, pp_weights=args.pp_weights,
                tile_batch=max(1, args.batch_size), dt_params=dt, dt_guide=args.dt_guide, log=print)
            gkey = "global_w" if args.densify == "w" else "global"
            trained = pipeline.weights_meta.get(gkey, {}).get("img_size")
            if not big and args.img_size is None and trained is not None and list(trained) != [H, W]:
                raise ValueError(f"the test images are {H}×{W}, but the global stage in {pipeline.weight_files[gkey]} "
                                 f"was trained on {trained[0]}×{trained[1]} images; evaluate a test set of that size, use "
                                 f"blurry_edges_test_big.py (blocks of the trained size), or pass --img_size {H} {W} to "
                                 "run it on these images anyway")
            weights_camera = pipeline.weights_meta.get(gkey, {}).get("args", {}).get("camera_params")
            weights_camera = CameraParams.from_dict(weights_camera) if weights_camera else None
            if (not camera_given(args) and dataset_camera is not None and weights_camera is not None
                    and dataset_camera != weights_camera):
                raise ValueError(f"the test set at {args.data_path} was made with camera {dataset_camera.to_dict()}, the "
                                 f"weights in {pipeline.weight_files[gkey]} were trained with {weights_camera.to_dict()}; "
                                 "say which one to evaluate with: --camera FILE or the per-field flags (--rho_1 …)")
            camera = camera_from_args(args, fallback=dataset_camera or weights_camera)
            pipeline.camera = camera
            pipeline.renderer = WedgeRenderer(pipeline.config.R, camera)
        if big or focal:
            pipeline.layout(H, W, blocks=True)        # size checks before the first scene
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not focal:
        if dataset_camera is not None and camera_given(args) and dataset_camera != camera:
            print(f"note: the test set was made with camera {dataset_camera.to_dict()}, evaluating with {camera.to_dict()}")
        args.R, args.stride = pipeline.config.R, pipeline.config.stride
    run_name = args.run_name or default_run_name(args, big)
    out_dir = fresh_run_dir(args.log_path, run_name, args.overwrite)
    layout = pipeline.layout(H, W, blocks=True) if big else None
    print(f"{len(dataset)} scenes of {H}×{W} ({dataset.format} format) from {args.data_path}; device {args.cuda}, "
          + (f"method=focal_track {pipeline.describe()}" if focal else
             f"densify={args.densify}, bf16={args.bf16}, R={args.R}, stride={args.stride}")
          + (f", {len(layout.origins())} blocks per image" if layout is not None else ""))
    summary = evaluate_test_set(
        pipeline, dataset, out_dir, crop=args.crop, max_scenes=args.max_scenes, figures=not args.no_figures,
        blocks=True if big else None, run_args=vars(args),
        display_bgr=getattr(dataset, "channel_order", "RGB") == "BGR")
    avg = summary["average"]
    print(f"\nAverage over {summary['n_scenes']} scenes: delta1={_fmt(avg['delta1'])} delta2={_fmt(avg['delta2'])} "
          f"delta3={_fmt(avg['delta3'])} RMSE={_fmt(avg['rmse_cm'])} cm AbsRel={_fmt(avg['absrel'])}")
    print(f"Average running time: {summary['mean_time_s']:.3f} s per scene")
    print(f"Outputs written to {out_dir}/ (scene_XXXX.npz{'' if args.no_figures else ', scene_XXXX.png'}, "
          "summary.csv, summary.json)")
    return 0
