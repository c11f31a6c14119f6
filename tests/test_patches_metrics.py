import math

import numpy as np
import pytest
import torch

from blurry_edges.metrics import average_metrics, eval_depth
from blurry_edges.patches import BlockLayout, PatchGrid


@pytest.mark.parametrize("H, W, R, S", [(147, 147, 21, 2), (31, 45, 11, 2), (40, 40, 7, 3)])
def test_fold_unfold_identity(H, W, R, S):
    grid = PatchGrid(H, W, R, S)
    img = torch.rand(2, 3, H, W, dtype=torch.float64)
    patches = grid.unfold(img)
    assert patches.shape == (2, grid.Hp * grid.Wp, 3, R, R)
    cov = grid.coverage(dtype=torch.float64)
    covered = cov > 0
    out = grid.fold_mean(patches)
    assert torch.allclose(out[..., covered], img[..., covered], atol=1e-12)
    if (H - R) % S == 0 and (W - R) % S == 0:
        assert covered.all()


def test_unfold_row_major_order():
    grid = PatchGrid(25, 27, 5, 2)
    img = torch.arange(25 * 27, dtype=torch.float32).view(1, 1, 25, 27)
    p = grid.unfold(img)
    k = 3 * grid.Wp + 4                      # patch row 3, column 4 → top-left pixel (6, 8)
    assert p[0, k, 0, 0, 0] == img[0, 0, 6, 8]
    assert p[0, k, 0, 4, 4] == img[0, 0, 10, 12]


def test_fold_depth_mean_and_confidence():
    grid = PatchGrid(9, 9, 5, 2)   # 3×3 patches
    P = grid.num_patches
    depth = torch.zeros(1, P, 5, 5)
    mask = torch.zeros(1, P, 5, 5, dtype=torch.long)
    # patch 0 claims the pixel (4, 4) (its bottom-right corner) with 1.0; patch 4 (center) with 2.0
    depth[0, 0, 4, 4], mask[0, 0, 4, 4] = 1.0, 1
    depth[0, 4, 2, 2], mask[0, 4, 2, 2] = 2.0, 2
    d, conf = grid.fold_depth(depth, mask)
    assert d[0, 4, 4] == pytest.approx(1.5)
    assert conf[0, 4, 4] == pytest.approx(2 / 9)     # pixel (4,4) is covered by all 9 patches
    assert d[0, 0, 0] == 0 and conf[0, 0, 0] == 0


def test_patch_grid_errors():
    with pytest.raises(ValueError, match="smaller than the patch size"):
        PatchGrid(10, 30, 21, 2)
    grid = PatchGrid(31, 31, 11, 2)
    with pytest.raises(ValueError, match="31×31"):
        grid.unfold(torch.zeros(1, 3, 30, 31))


def test_block_layout_single_block_is_identity():
    bl = BlockLayout(147, 147)
    assert bl.origins() == [(0, 0)]
    t = torch.randn(1, 4096, 5)
    assert torch.equal(bl.assemble(t), t[0])


@pytest.mark.parametrize("size", [587, 147 + 4 * 7, 147 + 88])
def test_block_layout_assembles_a_consistent_grid(size):
    bl = BlockLayout(size, size)
    full, blk = bl.full_grid, bl.block_grid
    # every tile holds the global patch index of its patches: assembling must return 0..P-1
    tiles = []
    for r0, c0 in bl.origins():
        rows = torch.arange(blk.Hp) + r0 // 2
        cols = torch.arange(blk.Wp) + c0 // 2
        tiles.append((rows[:, None] * full.Wp + cols[None, :]).flatten())
    out = bl.assemble(torch.stack(tiles))
    assert torch.equal(out, torch.arange(full.num_patches))
    if size == 587:
        assert len(bl.origins()) == 36 and bl.step == 88


def test_block_layout_picks_interior_patches():
    bl = BlockLayout(587, 587)
    tiles = torch.stack([torch.full((4096,), i) for i in range(len(bl.origins()))])
    owner = bl.assemble(tiles).view(bl.full_grid.Hp, bl.full_grid.Wp)
    assert owner[0, 0] == 0 and owner[-1, -1] == 35
    assert owner[0, 53] == 0 and owner[0, 54] == 1          # first tile keeps 0..53 (64 − m)


def test_block_layout_errors():
    with pytest.raises(ValueError, match="smaller than one block"):
        BlockLayout(100, 200)
    with pytest.raises(ValueError, match="multiple of the stride"):
        BlockLayout(148, 147)


def test_metrics_hand_computed():
    gt = np.full((4, 4), 1.0)
    pred = np.zeros((4, 4))
    pred[0, 0] = 1.0        # exact
    pred[0, 1] = 0.9        # normalized: gt 0.581, pred 0.349 → ratio 1.667
    pred[0, 2] = 1.3        # clipped to 1.18 → normalized 1.0 vs 0.581 → ratio 1.72
    m = eval_depth(pred, gt, crop=0)
    gn = (1.0 - 0.75) / 0.43
    r1 = gn / ((0.9 - 0.75) / 0.43)
    r2 = 1.0 / gn
    assert m.n_pixels == 3
    assert m.delta1 == pytest.approx(1 / 3)
    assert m.delta2 == pytest.approx((1 + (r1 < 1.5625) + (r2 < 1.5625)) / 3)
    assert m.delta3 == pytest.approx((1 + (r1 < 1.25 ** 3) + (r2 < 1.25 ** 3)) / 3)
    err = np.array([0.0, 0.1, 0.18])
    assert m.rmse_cm == pytest.approx(math.sqrt(np.mean(err ** 2)) * 100)
    assert m.absrel == pytest.approx(np.mean(err) * 100)


def test_metrics_crop_empty_and_average():
    gt = np.full((30, 30), 1.0)
    pred = np.zeros((30, 30))
    pred[:10, :] = 1.1            # all inside the crop border
    m = eval_depth(pred, gt, crop=10)
    assert m.n_pixels == 0 and math.isnan(m.delta1)
    good = eval_depth(np.full((30, 30), 1.0), gt)
    avg = average_metrics([m, good])
    assert avg["delta1"] == 1.0 and avg["n_images"] == 2
    with pytest.raises(ValueError):
        eval_depth(np.zeros((3, 3)), np.zeros((4, 4)))


@pytest.mark.parametrize("rows_per_band", [1, 2, 3])
def test_band_folds_add_up_to_one_fold(rows_per_band):
    grid = PatchGrid(17, 13, 5, 2)                                      # 7 × 5 patches, bands of uneven size
    g = torch.Generator().manual_seed(0)
    patches = torch.rand(grid.num_patches, 4, 5, 5, generator=g, dtype=torch.float64)
    acc = torch.zeros(4, 17, 13, dtype=torch.float64)
    for r0 in range(0, grid.Hp, rows_per_band):
        r1 = min(grid.Hp, r0 + rows_per_band)
        band_grid, top = grid.band(r0, r1)
        assert (band_grid.Hp, band_grid.Wp, top) == (r1 - r0, grid.Wp, 2 * r0)
        grid.fold_band_into(acc, r0, patches[r0 * grid.Wp:r1 * grid.Wp])
    torch.testing.assert_close(acc, grid.fold_sum(patches[None])[0], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="whole rows"):
        grid.fold_band_into(acc, 0, patches[:3])
