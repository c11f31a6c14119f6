"""Patches ↔ image (paper Eqs. 17–20), and big images as 147×147 blocks with margins.

Patches are cut in row-major order over the patch grid ``(Hp, Wp)``, ``Hp = (H − R)//S + 1``,
and put back by summing (``fold``) and dividing by how many patches cover each pixel.

Shapes: images ``[N, C, H, W]``; patches ``[N, P, C, R, R]`` with ``P = Hp·Wp``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


class PatchGrid:
    """The patch grid of an ``H×W`` image for patch size ``R`` and stride ``S``.

    The fold normalizer (patches covering each pixel) is computed once per device and dtype.
    """

    def __init__(self, H: int, W: int, R: int, stride: int) -> None:
        if stride < 1:
            raise ValueError(f"stride={stride} must be ≥ 1")
        if H < R or W < R:
            raise ValueError(f"image {H}×{W} is smaller than the patch size R={R}")
        self.H, self.W, self.R, self.stride = H, W, R, stride
        self.Hp = (H - R) // stride + 1
        self.Wp = (W - R) // stride + 1
        self._coverage: dict[tuple, torch.Tensor] = {}

    @property
    def num_patches(self) -> int:
        return self.Hp * self.Wp

    def __repr__(self) -> str:
        return f"PatchGrid(H={self.H}, W={self.W}, R={self.R}, stride={self.stride}, grid={self.Hp}×{self.Wp})"

    def check_image(self, img: torch.Tensor) -> None:
        if img.shape[-2:] != (self.H, self.W):
            raise ValueError(f"expected images of size {self.H}×{self.W}, got {tuple(img.shape[-2:])}")

    def unfold(self, img: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` → ``[N, P, C, R, R]`` (row-major patch order)."""
        self.check_image(img)
        N, C = img.shape[:2]
        cols = F.unfold(img, self.R, stride=self.stride)                 # [N, C·R·R, P]
        return cols.transpose(1, 2).reshape(N, self.num_patches, C, self.R, self.R)

    def fold_sum(self, patches: torch.Tensor) -> torch.Tensor:
        """``[N, P, C, R, R]`` → ``[N, C, H, W]``: sum of the patches covering each pixel."""
        N, P, C = patches.shape[:3]
        if P != self.num_patches or patches.shape[-2:] != (self.R, self.R):
            raise ValueError(f"expected [N, {self.num_patches}, C, {self.R}, {self.R}] patches, got {tuple(patches.shape)}")
        cols = patches.reshape(N, P, C * self.R * self.R).transpose(1, 2)
        return F.fold(cols, (self.H, self.W), self.R, stride=self.stride)

    def band(self, r0: int, r1: int) -> tuple["PatchGrid", int]:
        """Patch rows ``[r0, r1)`` as a grid of their own (full width) and the pixel row it starts at.

        Large images are rendered and folded band by band to bound memory: :meth:`fold_band_into`
        adds each band's fold at its place, which sums exactly the patches :meth:`fold_sum` would.
        """
        if not 0 <= r0 < r1 <= self.Hp:
            raise ValueError(f"patch rows [{r0}, {r1}) are not inside the {self.Hp} rows of {self}")
        top, bottom = r0 * self.stride, (r1 - 1) * self.stride + self.R
        return PatchGrid(bottom - top, self.W, self.R, self.stride), top

    def fold_band_into(self, acc: torch.Tensor, r0: int, patches: torch.Tensor) -> None:
        """``acc [C, H, W] +=`` the fold of ``patches [n, C, R, R]``: the patches of whole patch rows
        from ``r0`` on (row-major, ``n`` a multiple of the grid's width), see :meth:`band`."""
        rows = patches.shape[0] // self.Wp
        if rows * self.Wp != patches.shape[0]:
            raise ValueError(f"{patches.shape[0]} patches are not whole rows of {self.Wp}")
        band_grid, top = self.band(r0, r0 + rows)
        acc[:, top:top + band_grid.H, :] += band_grid.fold_sum(patches[None])[0]

    def coverage(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """``[H, W]``: how many patches cover each pixel (0 on a border the grid misses)."""
        key = (torch.device(device) if device is not None else torch.device("cpu"), dtype)
        if key not in self._coverage:
            ones = torch.ones(1, self.num_patches, 1, self.R, self.R, device=device, dtype=dtype)
            self._coverage[key] = self.fold_sum(ones)[0, 0]
        return self._coverage[key]

    def fold_mean(self, patches: torch.Tensor) -> torch.Tensor:
        """``[N, P, *C, R, R]`` → ``[N, *C, H, W]``: average over covering patches (Eqs. 17–18)."""
        N, P = patches.shape[:2]
        chan = patches.shape[2:-2]
        flat = patches.reshape(N, P, -1, self.R, self.R)
        cov = self.coverage(patches.device, patches.dtype).clamp_min(1)
        return (self.fold_sum(flat) / cov).reshape(N, *chan, self.H, self.W)

    def fold_depth(self, depth: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Depth and confidence maps (Eqs. 19–20).

        Args:
            depth: ``[N, P, R, R]`` per-patch depth (0 where not owned).
            mask: ``[N, P, R, R]`` ownership (> 0 where the patch gives the pixel a depth).
        Returns:
            ``(depth [N, H, W], confidence [N, H, W])``: mean depth over the patches that own the
            pixel, and the fraction F of covering patches that do.
        """
        owned = (mask > 0).to(depth.dtype)
        n_owned = self.fold_sum(owned.unsqueeze(2))[:, 0]
        total = self.fold_sum((depth * owned).unsqueeze(2))[:, 0]
        cov = self.coverage(depth.device, depth.dtype).clamp_min(1)
        return total / n_owned.clamp_min(1), n_owned / cov


@dataclass(frozen=True)
class BlockLayout:
    """Large images processed as ``block×block`` tiles (README "Evaluate on a test set").

    Tiles advance by ``block − R + S − 2·S·m`` pixels (88 for the defaults); the last tile of a row
    or column is placed flush with the image end, so any size with ``(size − block) % S == 0`` works
    (the paper recommends ``147 + 4x``). Each patch of the full grid is taken from one tile, away
    from that tile's inner borders by at least ``m`` patches where possible.
    """

    H: int
    W: int
    R: int = 21
    stride: int = 2
    block: int = 147
    margin: int = 10

    def __post_init__(self) -> None:
        S, m = self.stride, self.margin
        if self.H < self.block or self.W < self.block:
            raise ValueError(f"image {self.H}×{self.W} is smaller than one block ({self.block}×{self.block})")
        for size in (self.H, self.W):
            if (size - self.block) % S:
                raise ValueError(f"image size {size} does not align with the patch grid: "
                                 f"(size − {self.block}) must be a multiple of the stride {S} "
                                 f"(e.g. {self.block} + 4x for stride 2); crop or pad the image")
        if self.step <= 0:
            raise ValueError(f"margin m={m} is too large for block {self.block} and R={self.R}")

    @property
    def step(self) -> int:
        return self.block - self.R + self.stride - 2 * self.stride * self.margin

    @property
    def block_grid(self) -> PatchGrid:
        return PatchGrid(self.block, self.block, self.R, self.stride)

    @property
    def full_grid(self) -> PatchGrid:
        return PatchGrid(self.H, self.W, self.R, self.stride)

    def _origins(self, size: int) -> list[int]:
        last = size - self.block
        origins = list(range(0, last, self.step)) + [last]
        return sorted(set(origins))

    @property
    def row_origins(self) -> list[int]:
        return self._origins(self.H)

    @property
    def col_origins(self) -> list[int]:
        return self._origins(self.W)

    def origins(self) -> list[tuple[int, int]]:
        """Top-left pixel of every tile, row-major."""
        return [(r, c) for r in self.row_origins for c in self.col_origins]

    def _owner(self, origins: list[int], n_full: int, n_block: int) -> tuple[torch.Tensor, torch.Tensor]:
        """For each full-grid patch index along one axis: (tile index, index inside the tile)."""
        tile = torch.empty(n_full, dtype=torch.long)
        local = torch.empty(n_full, dtype=torch.long)
        for b, o in enumerate(origins):
            off = o // self.stride
            start = 0 if b == 0 else off + self.margin
            end = n_full if b == len(origins) - 1 else off + n_block - self.margin
            idx = torch.arange(start, end)
            tile[idx] = b
            local[idx] = idx - off
        return tile, local

    def assemble(self, tiles: torch.Tensor) -> torch.Tensor:
        """Per-tile patch tensors → the full patch grid.

        Args:
            tiles: ``[T, Pb, ...]`` with ``T = len(origins())`` (row-major) and ``Pb`` the patches of one tile.
        Returns:
            ``[P, ...]`` over the full image's patch grid (row-major).
        """
        bg, fg = self.block_grid, self.full_grid
        tr, lr = self._owner(self.row_origins, fg.Hp, bg.Hp)
        tc, lc = self._owner(self.col_origins, fg.Wp, bg.Wp)
        n_cols = len(self.col_origins)
        tile_idx = (tr[:, None] * n_cols + tc[None, :]).flatten()
        patch_idx = (lr[:, None] * bg.Wp + lc[None, :]).flatten()
        return tiles[tile_idx.to(tiles.device), patch_idx.to(tiles.device)]


@dataclass(frozen=True)
class CropLayout:
    """Square windows of ``tokens × tokens`` patch positions cut from a full image's patch grid.

    The CPU training recipe (README "Training on a CPU") trains the global stage on such crops: a
    window of the full ``Hp × Wp`` grid whose first token is ``origin = (r0, c0)`` covers the pixels
    ``[r0·S, r0·S + size)`` × ``[c0·S, c0·S + size)`` with ``size = (tokens − 1)·S + R``, and the
    patch grid of that pixel window is exactly the window of the full grid (same patches, same
    order). Attention over ``tokens²`` instead of ``Hp·Wp`` tokens makes a training step about 9×
    cheaper per token at 24 × 24 (576 of 4096 tokens).
    """

    full: PatchGrid
    tokens: int

    def __post_init__(self) -> None:
        if self.tokens < 1 or self.tokens > min(self.full.Hp, self.full.Wp):
            raise ValueError(f"crop of {self.tokens}×{self.tokens} tokens does not fit the "
                             f"{self.full.Hp}×{self.full.Wp} patch grid of {self.full.H}×{self.full.W} images "
                             f"(R={self.full.R}, stride={self.full.stride}); use 1 … {min(self.full.Hp, self.full.Wp)}")

    @property
    def size(self) -> int:
        """Side of the pixel window, ``(tokens − 1)·S + R``."""
        return (self.tokens - 1) * self.full.stride + self.full.R

    @property
    def grid(self) -> PatchGrid:
        """The patch grid of one crop (``tokens × tokens`` patches)."""
        return PatchGrid(self.size, self.size, self.full.R, self.full.stride)

    @property
    def max_origin(self) -> tuple[int, int]:
        return self.full.Hp - self.tokens, self.full.Wp - self.tokens

    def draw_origins(self, n: int, seed: int) -> "torch.Tensor":
        """``[n, 2]`` int64 origins (token row, column), uniform over every position the window fits."""
        g = torch.Generator().manual_seed(int(seed))
        r_max, c_max = self.max_origin
        rows = torch.randint(0, r_max + 1, (n,), generator=g)
        cols = torch.randint(0, c_max + 1, (n,), generator=g)
        return torch.stack((rows, cols), dim=1)

    def pixel_window(self, origin) -> tuple[slice, slice]:
        """Rows and columns of the image covered by the crop at ``origin`` (token row, column)."""
        r0, c0 = int(origin[0]), int(origin[1])
        r_max, c_max = self.max_origin
        if not (0 <= r0 <= r_max and 0 <= c0 <= c_max):
            raise ValueError(f"crop origin ({r0}, {c0}) outside 0…{r_max} × 0…{c_max}")
        S = self.full.stride
        return slice(r0 * S, r0 * S + self.size), slice(c0 * S, c0 * S + self.size)
