"""From a noisy image pair to every Blurry-Edges output (paper Sec. 3.2–3.3, Eqs. 9–20): the one
pipeline behind the evaluation of test sets (:mod:`blurry_edges.evaluate`, ``blurry_edges_test.py``,
``blurry_edges_test_big.py``) and ``python -m blurry_edges.infer``.

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
covers the local and global stages only: the global stage's output projection, the depth-completion
U-Net (its input is depth in metres, which bf16 would round to 0.4–0.8 cm steps), the renderer and
the ridge regression stay in float32. On the CPU under bf16 the local stage runs channels_last, as
in training.

Progress (:class:`StageProgress`): ``run(progress=None)`` shows one tqdm bar per stage (local stage,
global stage over the blocks, render, densify) only for an image cut into several blocks, so the
evaluation of 147×147 scenes stays as quiet as before; ``progress=True`` always shows them
(``python -m blurry_edges.infer``), ``progress=False`` never.
"""
from __future__ import annotations

import contextlib
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .camera import CameraParams
from .densify import DTParams, domain_transform_densify
from .patches import BlockLayout, PatchGrid
from .features import autocast_context, channels_last_copy, local_features, pair_tokens, resolve_bf16
from .wedges import WedgeRenderer, decode_global

__all__ = [
    "DENSIFY_MODES", "TAU_SPARSE", "RHO_PRIME", "PipelineConfig", "DepthPipeline", "StageProgress",
    "build_pipeline", "normalize_densify", "as_pair_tensor", "tile_token_index",
]

#: Final-depth modes: sparse (``none``), the authors' dense-mask variant ``w``, U-Net completion
#: ``pp`` ("Ours-PP") and the training-free domain-transform densifier ``dt``.
DENSIFY_MODES = ("none", "w", "pp", "dt")
#: Threshold on the confidence map F (paper Eq. 20) where the sparse output keeps a depth; the W variant uses 0.
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
        bf16: bf16 autocast for the local and global stages (the U-Net and the renderer stay float32); a bool, already
            resolved (``--bf16 auto`` is resolved by :func:`build_pipeline` / ``features.resolve_bf16``).
        margin: margin patches ``m`` dropped on every inner tile border (large images, README "Evaluate on a test set").
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
        if not isinstance(self.bf16, (bool, np.bool_)):
            raise ValueError(f"PipelineConfig.bf16 must be True or False, got {self.bf16!r}; resolve 'auto'/'on'/'off' "
                             "with blurry_edges.features.resolve_bf16 (build_pipeline(bf16=...) does)")
        object.__setattr__(self, "bf16", bool(self.bf16))
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


def _ignore(n: int = 1) -> None:
    return None


class StageProgress:
    """Progress of one pair through the stages: one tqdm bar per stage, on stdout like the per-scene
    bar of the evaluation (so it nests under it) and cleared when the stage ends (``leave=False``).

    Disabled (``enabled=False``), :meth:`stage` yields a no-op, so the stages call it unconditionally.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = bool(enabled)

    @contextlib.contextmanager
    def stage(self, desc: str, total: int, unit: str) -> Iterator[Callable[[int], object]]:
        """A bar of ``total`` ``unit``s for the duration of the block; yields its ``update(n)``."""
        if not self.enabled:
            yield _ignore
            return
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stdout, dynamic_ncols=True)
        try:
            yield bar.update
        finally:
            bar.close()


_QUIET = StageProgress(False)


def file_sha1(path: Union[str, Path]) -> str:
    """SHA-1 of a file's bytes (the identity of a weight file for :class:`FeatureCache`)."""
    import hashlib

    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class FeatureCache:
    """Local-stage tokens of image pairs already processed, shared by pipelines that run the same
    local stage on the same pairs (``blurry_edges_test.py --compare``: sparse, W, PP and dt differ
    only after the local stage, which dominates the time of a pair), and optionally kept on disk
    (``directory``; ``--feature_cache DIR``) so that a later run of other global-stage, W or U-Net
    weights on the same test set skips the local stage altogether.

    Keyed by what the tokens depend on: the local stage's identity (the SHA-1 of its weight file,
    or the module object), R, stride, precision, chunk size, device and the exact bytes of the
    input pair. A hit returns the tokens and the seconds the local stage took when it ran, which the
    reusing run reports as its own local time (so each mode's running time stays what it costs
    alone). On disk an entry is ``<SHA-1 of the key>.pt`` holding the key, the float32 tokens
    ``[P, 38]`` and those seconds; an entry that cannot be read, or holds another key, is a miss and
    is rewritten.
    """

    def __init__(self, directory: Optional[Union[str, Path]] = None) -> None:
        self._store: dict[tuple, tuple[torch.Tensor, float]] = {}
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            if self.directory.exists() and not self.directory.is_dir():
                raise ValueError(f"--feature_cache {self.directory} is a file, not a folder; pass a folder "
                                 "(it is created when missing)")
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ValueError(f"--feature_cache {self.directory} cannot be created ({e.strerror}); pass a "
                                 "folder you can write to") from e
        self.hits = 0
        self.disk_hits = 0
        self.unreadable = 0

    def __len__(self) -> int:
        return len(self._store)

    @staticmethod
    def key(pipeline: "DepthPipeline", x: torch.Tensor) -> tuple:
        import hashlib

        c = pipeline.config
        digest = hashlib.sha1(x.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()
        return (pipeline.local_identity, c.R, c.stride, bool(c.bf16), c.local_chunk, str(pipeline.device),
                tuple(x.shape), digest)

    def _path(self, key: tuple) -> Path:
        import hashlib

        assert self.directory is not None
        return self.directory / f"{hashlib.sha1(repr(key).encode()).hexdigest()}.pt"

    def get(self, key: tuple) -> Optional[tuple[torch.Tensor, float]]:
        hit = self._store.get(key)
        path = self._path(key) if hit is None and self.directory is not None else None
        if path is not None and path.is_file():
            try:
                entry = torch.load(path, map_location="cpu", weights_only=True)
                if entry["key"] == repr(key):
                    hit = (entry["tokens"], float(entry["seconds"]))
                    self._store[key] = hit
                    self.disk_hits += 1
            except Exception:                 # a truncated or foreign file: recompute and rewrite it
                self.unreadable += 1
        self.hits += hit is not None
        return hit

    def put(self, key: tuple, tokens: torch.Tensor, seconds: float) -> None:
        tokens = tokens.detach().float().cpu()
        self._store[key] = (tokens, float(seconds))
        if self.directory is not None:
            import os

            path = self._path(key)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            torch.save({"key": repr(key), "tokens": tokens, "seconds": float(seconds)}, tmp)
            os.replace(tmp, path)                 # a run stopped mid-write leaves no half entry

    def describe(self) -> str:
        """One line for the end of a run: where the tokens are and how many were reused."""
        where = f" in {self.directory}" if self.directory is not None else ""
        return (f"local-stage tokens{where}: {self.hits} pair(s) reused ({self.disk_hits} from disk), "
                f"{len(self._store) - self.disk_hits} computed"
                + (f"; {self.unreadable} unreadable entr{'y' if self.unreadable == 1 else 'ies'} recomputed"
                   if self.unreadable else ""))


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
        if self.device.type == "cpu" and config.bf16:
            # oneDNN runs bf16 convolutions fastest channels_last (README "Training on a CPU"); a copy,
            # so the caller's modules (and a float32 pipeline sharing them) keep their format
            self.local = channels_last_copy(self.local)
        self.renderer = WedgeRenderer(R, self.camera)
        self.feature_cache: Optional[FeatureCache] = None     # set to share local-stage tokens (--compare)
        self.local_identity: str = f"module-{id(local_model)}"  # build_pipeline: the local weight file
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
    def features(self, x: torch.Tensor, grid: PatchGrid, progress: StageProgress = _QUIET) -> torch.Tensor:
        """Local stage + ridge colors for every patch of both images: ``[2, 3, H, W]`` → tokens ``[P, 38]``
        (``progress``: a :class:`StageProgress`, counting patches; none by default)."""
        out = []
        # Bands only bound memory on large images; whole-image batches for the paper's 147×147.
        step = max(1, max(self.config.render_chunk, 8192) // grid.Wp)
        with progress.stage("local stage", 2 * grid.num_patches, "patch") as update:
            for r0 in range(0, grid.Hp, step):
                r1 = min(grid.Hp, r0 + step)
                _, patches = self._band(x, grid, r0, r1)                      # [2, n, 3, R, R]
                n = patches.shape[1]
                f = local_features(self.local, self.renderer, patches.reshape(2 * n, *patches.shape[2:]),
                                   chunk=self.config.local_chunk, bf16=self.config.bf16, progress=update)
                f = f.view(2, n, -1)
                out.append(pair_tokens(f[0], f[1]))
        return torch.cat(out, dim=0)

    @torch.no_grad()
    def global_params(self, x: torch.Tensor, blocks: Optional[bool] = None, timing: Optional[dict] = None,
                      progress: StageProgress = _QUIET) -> torch.Tensor:
        """Raw global-stage outputs over the image's full patch grid: ``[2, 3, H, W]`` → ``[P, 12]``
        (``progress``: a :class:`StageProgress` for the local stage, then the blocks; none by default)."""
        H, W = x.shape[-2:]
        layout = self.layout(H, W, blocks)                                # validates before any work
        grid = PatchGrid(H, W, self.config.R, self.config.stride)
        t0 = time.perf_counter()
        key = FeatureCache.key(self, x) if self.feature_cache is not None else None
        hit = self.feature_cache.get(key) if key is not None else None
        if hit is not None:                                               # same local stage, same pair
            tokens, local_seconds = hit[0].to(self.device), hit[1]
        else:
            tokens = self.features(x, grid, progress)                     # [P, 38]
        _sync(self.device)
        t1 = time.perf_counter()
        if hit is None:
            local_seconds = t1 - t0
            if key is not None:
                self.feature_cache.put(key, tokens, local_seconds)
        if layout is None:
            with progress.stage("global stage", 1, "image") as update:
                raw = self._global_forward(tokens[None])[0]
                update(1)
        else:
            idx = tile_token_index(layout).to(tokens.device)              # [T, Pb]
            outs = []
            with progress.stage("global stage", idx.shape[0], "block") as update:
                for i in range(0, idx.shape[0], self.config.tile_batch):
                    outs.append(self._global_forward(tokens[idx[i:i + self.config.tile_batch]]))
                    update(outs[-1].shape[0])
            raw = layout.assemble(torch.cat(outs, dim=0))                 # [P, 12]
        _sync(self.device)
        if timing is not None:
            timing["local"] = local_seconds
            timing["global"] = time.perf_counter() - t1
            if hit is not None:                  # run() counts the local stage as if it had run here
                timing["_local_reused_s"] = t1 - t0
        return raw

    @torch.no_grad()
    def render_maps(self, raw: torch.Tensor, x: torch.Tensor,
                    progress: StageProgress = _QUIET) -> dict[str, torch.Tensor]:
        """Render every patch from the global outputs and fold once over the full grid (Eqs. 9–20).

        Args:
            raw: ``[P, 12]`` global-stage outputs over the full patch grid of ``x``.
            x: ``[2, 3, H, W]`` the noisy pair (the shared colors are fitted to both images).
            progress: a :class:`StageProgress`, counting rendered patches (none by default).
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
        with progress.stage("render", grid.num_patches, "patch") as update:
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
                update(patches.shape[1])
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
            # The authors feed the U-Net the folded depth map itself, not the τ-thresholded one. It
            # runs in float32 even under bf16: its input is depth in metres, which bf16's 8-bit
            # significand rounds to 0.4–0.8 cm steps; measured with the stage-5 weights on 50 check
            # scenes, bf16 moved the PP δ1 by −0.016 and the RMSE by +0.21 cm (README "Speed").
            with torch.autocast(device_type=self.device.type, enabled=False):
                dense = self.unet(depth_raw[None, None].float())
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
    def run(self, pair: ArrayOrTensor, blocks: Optional[bool] = None,
            progress: Optional[bool] = None) -> dict[str, Any]:
        """All outputs for one noisy pair (photon counts / α), ``[2, H, W, 3]`` or ``[2, 3, H, W]``.

        ``blocks``: see :meth:`layout`. ``progress``: tqdm bars per stage on stdout (:class:`StageProgress`);
        ``None`` shows them only when the image is cut into more than one block, ``True`` always,
        ``False`` never.

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
        layout = self.layout(*x.shape[-2:], blocks)                      # validates before any work
        tiles = 1 if layout is None else len(layout.origins())
        bar = StageProgress(tiles > 1 if progress is None else progress)
        timing: dict[str, float] = {}
        raw = self.global_params(x, blocks, timing, progress=bar)
        t1 = time.perf_counter()
        maps = self.render_maps(raw, x, progress=bar)
        _sync(self.device)
        t2 = time.perf_counter()
        with bar.stage(f"densify ({self.config.densify})", 1, "map") as update:
            maps.update(self.finalize_depth(maps))
            _sync(self.device)
            update(1)
        t3 = time.perf_counter()
        reused = timing.pop("_local_reused_s", None)
        total = t3 - t0 if reused is None else t3 - t0 - reused + timing["local"]
        timing.update(render_fold=t2 - t1, densify=t3 - t2, total=total)
        out: dict[str, Any] = {k: v.detach().float().cpu() for k, v in maps.items()}
        out["tiles"] = tiles
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
                   bf16: "bool | str | None" = False, rho_prime: float = RHO_PRIME, margin: int = 10,
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
    ``bf16``: ``True``/``False`` or ``"auto"``/``"on"``/``"off"`` (``--bf16``), resolved for ``device``
    by :func:`blurry_edges.features.resolve_bf16`; the pipeline's ``config.bf16`` is the result.
    """
    from .models import GlobalStage, LocalStage, UNet, load_weights, weights_id
    from .runs import choose_weights, pairing_notes, settings_from_weights, weights_meta

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
    bf16 = resolve_bf16(bf16, device)
    local = LocalStage(R=R)
    load_weights(local, files["local"], map_location="cpu", what="local stage")
    glob = GlobalStage(patch_rows=grid.Hp, patch_cols=grid.Wp, stride=stride)
    load_weights(glob, files[gkey], map_location="cpu",
                 what="global stage" + (" (W variant)" if mode == "w" else ""))
    unet = None
    if mode == "pp":
        unet = UNet()
        metas["pp"] = (files["pp"], load_weights(unet, files["pp"], map_location="cpu", what="depth-completion U-Net"))
    ids = {"local": weights_id(local.state_dict())}
    if mode == "pp":
        ids["global"] = weights_id(glob.state_dict())
    for note in pairing_notes(files, {k: m for k, (_, m) in metas.items()}, ids):
        if log is not None:
            log(note)
        else:
            warnings.warn(note, stacklevel=2)
    config = PipelineConfig(R=R, stride=stride, densify=mode, rho_prime=rho_prime, bf16=bf16, margin=margin,
                            tile_batch=tile_batch, dt_params=dt_params or DTParams(), dt_guide=dt_guide, tau=tau)
    pipeline = DepthPipeline(local, glob, camera, config, unet=unet, device=device)
    pipeline.weight_files = {k: str(v) for k, v in files.items()}
    pipeline.local_identity = f"sha1:{file_sha1(files['local'])}"    # the same file anywhere, any copy
    pipeline.weights_meta = {k: m for k, (_, m) in metas.items()}
    return pipeline
