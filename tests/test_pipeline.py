"""DepthPipeline: outputs of every densify mode, banded fold = one fold, block path = whole-image path,
multi-block assembly = the per-block computation, input checks.

Small geometry for speed (R = 11, 25×25 images → an 8×8 patch grid), randomly initialized
networks; the paper's geometry (R = 21, 147×147, 64×64 tokens) is checked for its layout only.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from blurry_edges.models import GlobalStage, LocalStage, UNet
from blurry_edges.patches import PatchGrid
from blurry_edges.pipeline import (DepthPipeline, PipelineConfig, as_pair_tensor, normalize_densify,
                                   tile_token_index)
from blurry_edges.wedges import decode_global

R, H, GRID = 11, 25, 8


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    return LocalStage(R).eval(), GlobalStage(GRID, GRID).eval(), UNet().eval()


@pytest.fixture(scope="module")
def pair():
    g = torch.Generator().manual_seed(1)
    # a two-region scene with noise, so the networks see some structure
    img = torch.full((2, 3, H, H), 0.3)
    img[:, :, :, H // 2:] = 0.7
    return (img + 0.05 * torch.randn(img.shape, generator=g)).clamp(0, 1)


class _CheapLocal(nn.Module):
    """Stand-in for the 7 M-parameter local stage where only the plumbing is under test."""

    def __init__(self, R: int):
        super().__init__()
        self.R = R
        self.fc = nn.Linear(3 * R * R, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


def make(nets, cheap: bool = False, **kw) -> DepthPipeline:
    local, glob, unet = nets
    if cheap:
        torch.manual_seed(0)
        local = _CheapLocal(R)
    kw.setdefault("margin", 2)
    return DepthPipeline(local, glob, config=PipelineConfig(R=R, **kw), unet=unet)


@pytest.fixture(scope="module")
def runs(nets, pair):
    """One run per densify mode with the real (random) networks, shared by the tests below."""
    return {mode: make(nets, densify=mode).run(pair) for mode in ("none", "w", "pp", "dt")}


@pytest.mark.parametrize("mode", ["none", "w", "pp", "dt"])
def test_outputs_every_mode(runs, mode):
    out = runs[mode]
    shapes = {"color": (2, 3, H, H), "sharpened": (3, H, H), "refocused": (3, H, H), "boundary": (H, H),
              "depth_raw": (H, H), "confidence": (H, H), "depth_sparse": (H, H), "depth": (H, H)}
    for k, s in shapes.items():
        assert tuple(out[k].shape) == s, k
        assert out[k].dtype == torch.float32 and torch.isfinite(out[k]).all(), k
    assert 0 <= out["confidence"].min() and out["confidence"].max() <= 1
    assert 0 <= out["boundary"].min() and out["boundary"].max() <= 1 + 1e-6
    tau = 0.0 if mode == "w" else 0.05
    kept = out["confidence"] > tau
    assert torch.equal(out["depth_sparse"][~kept], torch.zeros(int((~kept).sum())))
    assert torch.equal(out["depth_sparse"][kept], out["depth_raw"][kept])
    if mode in ("none", "w"):
        assert torch.equal(out["depth"], out["depth_sparse"])
    if mode == "dt":
        assert tuple(out["support"].shape) == (H, H)
    assert set(out["timing"]) >= {"local", "global", "render_fold", "densify", "total"}
    assert out["tiles"] == 1


def test_w_variant_uses_dense_mask(nets, pair):
    p = make(nets, cheap=True, densify="none")
    pw = make(nets, cheap=True, densify="w")
    assert pw.config.mask_variant == "w" and pw.config.threshold == 0.0 and p.config.threshold == 0.05
    x = as_pair_tensor(pair)
    raw = p.global_params(x)
    sparse, dense = p.render_maps(raw, x), pw.render_maps(raw, x)
    # same geometry: the dense ownership mask gives depth to (many) more pixels
    assert (dense["confidence"] > 0).sum() > (sparse["confidence"] > 0).sum()


def test_pp_gets_the_unthresholded_folded_depth(nets, pair):
    seen = {}

    class Spy(nn.Module):
        def forward(self, x):
            seen["x"] = x.clone()
            return x * 0 + 1.0

    local, glob, _ = nets
    p = DepthPipeline(local, glob, config=PipelineConfig(R=R, densify="pp"), unet=Spy())
    out = p.run(pair)
    assert torch.equal(seen["x"][0, 0].cpu(), out["depth_raw"])   # not depth_sparse (the authors' input)
    assert torch.all(out["depth"] == 1.0)


def test_banded_fold_equals_one_fold(nets, pair):
    p1 = make(nets, cheap=True, render_chunk=GRID * GRID)            # one band
    p2 = make(nets, cheap=True, render_chunk=GRID)                   # 16 bands of one patch row
    x = as_pair_tensor(pair)
    raw = p1.global_params(x)
    a, b = p1.render_maps(raw, x), p2.render_maps(raw, x)
    for k in ("color", "sharpened", "refocused", "boundary", "depth_raw", "confidence"):
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5, msg=k)
    # and the folds equal the library's PatchGrid folds of a single full render
    grid = PatchGrid(H, H, R, 2)
    geom, eta = decode_global(raw)
    patches = grid.unfold(x)                                           # [2, P, 3, R, R]
    pr = p1.renderer.render_pair(geom, eta, patches.transpose(0, 1))
    color = grid.fold_mean(pr.patches.transpose(0, 1))                 # [2, 3, H, W]
    depth, conf = grid.fold_depth(pr.depth[None], pr.mask[None])
    torch.testing.assert_close(a["color"], color, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a["depth_raw"], depth[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a["confidence"], conf[0], atol=1e-6, rtol=0)


def test_block_path_on_one_block_equals_whole_image(nets, pair):
    p = make(nets, densify="none")              # real local stage: the full path, twice
    a, b = p.run(pair), p.run(pair, blocks=True)
    assert p.layout(H, H, blocks=True) is not None and len(p.layout(H, H, blocks=True).origins()) == 1
    for k in ("color", "sharpened", "refocused", "boundary", "depth_raw", "confidence", "depth"):
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=k)


class _AsDouble(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.double())


def float32_tolerance(ref32: torch.Tensor, ref64: torch.Tensor) -> float:
    """Tolerance of a float32 result against the float64 ``ref64``, derived from the computation:
    8× the float32 reference's own error plus 256 float32 ulps of the outputs' magnitude."""
    eps32 = torch.finfo(torch.float32).eps
    float32_error = float((ref32.double() - ref64).abs().max())
    return 8 * float32_error + 256 * eps32 * float(ref64.abs().max())


def assert_close_to_float64(got: torch.Tensor, ref32: torch.Tensor, ref64: torch.Tensor) -> None:
    tol = float32_tolerance(ref32, ref64)
    err = float((got.double() - ref64).abs().max())
    assert err <= tol, f"off the float64 reference by {err:.3g} (tolerance {tol:.3g})"
    # a misplaced tile is off by the size of the outputs, orders of magnitude above the tolerance
    assert tol < 1e-2 * float(ref64.abs().max())


def test_float64_tolerance_absorbs_reduction_order_but_not_misplacement():
    """What an AMD EPYC (AVX512_BF16) gave: 3.1e-5 off in 2 of 2352 outputs of size ~1; an atol/rtol of
    1e-5 failed there. The derived tolerance accepts that; a swapped tile is still caught."""
    g = torch.Generator().manual_seed(0)
    ref64 = torch.randn(14, 14, 12, generator=g, dtype=torch.float64) * 2
    ref32 = ref64.float()
    amd = ref32.clone()
    amd.view(-1)[[5, 700]] += 3.1e-5
    assert_close_to_float64(amd, ref32, ref64)
    swapped = ref32.clone()
    swapped[:7, :7], swapped[7:, 7:] = ref32[7:, 7:], ref32[:7, :7]
    with pytest.raises(AssertionError, match="off the float64 reference"):
        assert_close_to_float64(swapped, ref32, ref64)


def test_multi_block_assembly_matches_per_block_runs(nets):
    """37×37 = two 25-pixel blocks per axis (step 25 − 11 + 2 − 2·2·1 = 12 px = 6 patches, m = 1).

    Reference, computed independently the way the authors do: run every block as its own image and
    keep, along each axis, local patch indices [m·(i>0), Hb − m·(i<last)) at full-grid offset i·(Hb − 2m).

    The block path and the reference reach the same numbers along different float32 reduction
    orders (batches of other sizes), which differ between CPUs. So both are compared with the
    reference recomputed in float64, and the tolerance is derived from the computation: the block
    path may be off the float64 answer by a small multiple of what the float32 reference itself is off.
    """
    import copy

    p = make(nets, cheap=True, margin=1)
    glob64 = copy.deepcopy(p.glob).double()
    if isinstance(getattr(glob64, "generator", None), nn.Linear):
        # the global stage casts the encoder's output to float32 before its output projection
        # (for bf16 autocast); in the reference that costs one float32 rounding, far inside tol
        glob64.generator = _AsDouble(glob64.generator)
    g = torch.Generator().manual_seed(3)
    size, step, m, hb, n_block = 37, 12, 1, GRID, 2
    x = torch.rand(2, 3, size, size, generator=g)
    raw = p.global_params(x, blocks=True)
    full = PatchGrid(size, size, R, 2)
    assert raw.shape == (full.num_patches, 12)
    ref32 = torch.full((full.Hp, full.Wp, 12), float("nan"))
    ref64 = torch.full((full.Hp, full.Wp, 12), float("nan"), dtype=torch.float64)
    fast = torch.backends.mha.get_fastpath_enabled()
    with torch.no_grad():
        for iv in range(n_block):
            for ih in range(n_block):
                r0, c0 = iv * step, ih * step
                tokens = p.features(x[..., r0:r0 + H, c0:c0 + H], PatchGrid(H, H, R, 2))[None]   # [1, Pb, 38]
                tile32 = p._global_forward(tokens)[0].view(hb, hb, 12)
                torch.backends.mha.set_fastpath_enabled(False)
                try:
                    tile64 = glob64(tokens.double())[0].view(hb, hb, 12)
                finally:
                    torch.backends.mha.set_fastpath_enabled(fast)
                lo_v, hi_v = (m if iv > 0 else 0), (hb - m if iv < n_block - 1 else hb)
                lo_h, hi_h = (m if ih > 0 else 0), (hb - m if ih < n_block - 1 else hb)
                where = (slice(r0 // 2 + lo_v, r0 // 2 + hi_v), slice(c0 // 2 + lo_h, c0 // 2 + hi_h))
                ref32[where] = tile32[lo_v:hi_v, lo_h:hi_h]
                ref64[where] = tile64[lo_v:hi_v, lo_h:hi_h]
    assert not torch.isnan(ref64).any()
    assert_close_to_float64(raw.view(full.Hp, full.Wp, 12), ref32, ref64)
    out = p.run(x)                                                     # auto: 37 ≠ 25 → blocks
    assert out["tiles"] == 4 and tuple(out["depth"].shape) == (size, size)


def test_tile_token_index_is_the_full_grid_position(nets):
    p = make(nets, cheap=True, margin=2)
    lay = p.layout(37, 49, blocks=True)
    idx = tile_token_index(lay)
    assert idx.shape == (len(lay.origins()), GRID * GRID)
    full = lay.full_grid
    for t, (r, c) in enumerate(lay.origins()):
        assert int(idx[t, 0]) == (r // 2) * full.Wp + c // 2
        assert int(idx[t, -1]) == (r // 2 + GRID - 1) * full.Wp + c // 2 + GRID - 1


def test_input_layouts_and_errors(nets, pair):
    p = make(nets, cheap=True)
    a = p.run(pair)
    b = p.run(pair.permute(0, 2, 3, 1).numpy())                        # [2, H, W, 3] array
    torch.testing.assert_close(a["depth"], b["depth"])
    bad = pair.clone()
    bad[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        p.run(bad)
    with pytest.raises(ValueError, match="pair"):
        p.run(pair[0])
    with pytest.raises(ValueError, match="built for 25×25"):
        p.run(torch.rand(2, 3, 27, 27), blocks=False)
    with pytest.raises(ValueError, match="smaller"):
        p.run(torch.rand(2, 3, 23, 23))
    with pytest.raises(ValueError, match="stride"):
        p.run(torch.rand(2, 3, 26, 26))
    with pytest.raises(ValueError, match="densify"):
        normalize_densify("dense")
    assert normalize_densify(None) == normalize_densify("None") == "none"
    local, glob, _ = nets
    with pytest.raises(ValueError, match="U-Net"):
        DepthPipeline(local, glob, config=PipelineConfig(R=R, densify="pp"))
    with pytest.raises(ValueError, match="R=11"):
        DepthPipeline(local, glob, config=PipelineConfig(R=21))


#: Unit roundoff of bfloat16 (8 significant bits, round to nearest): 2⁻⁸ ≈ 0.39 %.
BF16_U = 2.0 ** -8
#: Noise σ of the ``pair`` fixture (photon counts / α), the scale the restored colors are judged on.
PAIR_NOISE = 0.05


def _normwise(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm())


def test_bf16_pipeline_agrees_with_float32(nets, pair, runs):
    """bf16 autocast against float32 through the whole pipeline, with tolerances from bf16's precision.

    * Network outputs, norm-wise relative ``‖bf16 − fp32‖ / ‖fp32‖ ≤ 8 u`` with u = 2⁻⁸ the unit
      roundoff of bf16's 8-bit significand: every layer rounds its inputs and weights to bf16 once
      (accumulating in float32), so the error of a deep network is a few u (measured on random
      weights: local stage 0.5–1.3 u, global stage after the bf16 local stage 1.1–2.9 u). float32
      reduction order moves these by ~1e-7 ≪ u, so the bound does not depend on the CPU.
      Element-wise bounds would not do: an output near 0 has an unbounded relative error.
    * Restored color maps (fitted in float32 from the bf16 geometry): mean |Δ| below a quarter of
      the pair's photon noise σ = 0.05, i.e. bf16 changes the restoration by far less than the noise
      it removes (measured ≤ 0.003).
    * Depth is not compared here: with random weights the two η codes of a patch are arbitrary, and
      Eq. 7 turns their difference into depth with an unbounded gain; the criterion for depth (sparse
      and PP δ1 within 0.005, RMSE within 0.05 cm) needs trained weights (benchmarks/bench_inference.py).
    """
    from blurry_edges.features import local_outputs

    fp32, bf16 = make(nets), make(nets, bf16=True)
    x = as_pair_tensor(pair)
    patches = PatchGrid(H, H, R, 2).unfold(x).flatten(0, 1)                 # [2P, 3, R, R]
    local32 = local_outputs(fp32.local, patches)
    local16 = local_outputs(bf16.local, patches, bf16=True)
    assert _normwise(local32, local16) <= 8 * BF16_U
    assert not torch.equal(local32, local16)                                # bf16 did run
    assert _normwise(fp32.global_params(x), bf16.global_params(x)) <= 8 * BF16_U
    a, b = runs["none"], bf16.run(pair)
    for k in ("color", "sharpened", "refocused", "boundary", "confidence", "depth_raw", "depth"):
        assert b[k].dtype == torch.float32 and torch.isfinite(b[k]).all(), k
    assert float((a["color"] - b["color"]).abs().mean()) < PAIR_NOISE / 4


def test_bf16_on_the_cpu_runs_the_local_stage_channels_last(nets, pair):
    """Under bf16 on the CPU the pipeline's local stage is a channels_last copy (as in training,
    README "Training on a CPU") and gets channels_last inputs; the caller's modules and a float32
    pipeline keep the contiguous format (float32 numbers unchanged). The U-Net runs in float32."""
    from blurry_edges.features import uses_channels_last

    local, _, unet = nets
    bf16, fp32 = make(nets, bf16=True, densify="pp"), make(nets, densify="pp")
    assert uses_channels_last(bf16.local) and not uses_channels_last(bf16.unet)
    assert bf16.local is not local and not uses_channels_last(local) and not uses_channels_last(unet)
    assert fp32.local is local and not uses_channels_last(fp32.local)
    seen = []
    hook = bf16.local.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    try:
        bf16.features(as_pair_tensor(pair), PatchGrid(H, H, R, 2))
    finally:
        hook.remove()
    assert seen and all(seen)
    with pytest.raises(ValueError, match="resolve_bf16"):
        PipelineConfig(R=R, bf16="auto")                 # a spec is resolved first, never taken as truthy


def test_bf16_keeps_the_depth_completion_unet_in_float32(nets, pair):
    """``--bf16`` leaves the U-Net in float32: its input is depth in metres, which bf16 would round to
    0.4–0.8 cm steps (README "Speed"). Under bf16 the PP depth is the float32 U-Net applied to the
    pipeline's own (bf16-derived) folded depth map, the same computation a second time, so the two
    agree to float32 rounding (1e-6 m), far below one bf16 step of a depth near 1 m (3.9e-3 m)."""
    pipe = make(nets, bf16=True, densify="pp")
    out = pipe.run(pair)
    with torch.no_grad():
        ref = pipe.unet(out["depth_raw"][None, None].to(pipe.device).float())[0, 0].cpu()
    seen = []                                            # the U-Net's dtypes inside the pipeline's own call
    hook = pipe.unet.register_forward_hook(lambda m, args, y: seen.append((args[0].dtype, y.dtype)))
    try:
        pipe.finalize_depth({k: out[k].to(pipe.device) for k in ("depth_raw", "confidence")})
    finally:
        hook.remove()
    assert seen == [(torch.float32, torch.float32)]
    torch.testing.assert_close(out["depth"], ref, rtol=0, atol=1e-6)


def test_progress_bars_for_a_multi_block_image(nets, pair, capsys):
    """``run(progress=None)``: one bar per stage for an image of several blocks (37×37 = 2×2 blocks of
    25), none for an image of one block (the evaluation of 147×147 scenes stays quiet);
    ``progress=False`` prints nothing at all, ``progress=True`` shows the bars for one block too."""
    import re

    p = make(nets, margin=1)                            # the real LocalStage(11), random weights
    x = torch.rand(2, 3, 37, 37, generator=torch.Generator().manual_seed(4))
    out = p.run(x)
    printed = capsys.readouterr()
    assert out["tiles"] == 4
    for stage in ("local stage", "global stage", "render", "densify (none)"):
        assert stage in printed.out, stage
    assert re.search(r"global stage:.*/4 ", printed.out)              # counted in blocks
    assert re.search(r"local stage:.*/" + str(2 * PatchGrid(37, 37, R, 2).num_patches) + " ", printed.out)
    quiet = p.run(x, progress=False)
    assert capsys.readouterr() == ("", "")
    torch.testing.assert_close(quiet["depth_raw"], out["depth_raw"], rtol=0, atol=0)   # bars change no number
    p.run(pair)                                                         # one block: quiet by default
    assert capsys.readouterr() == ("", "")
    p.run(pair, progress=True)
    assert re.search(r"global stage:.*/1 ", capsys.readouterr().out)


def test_paper_geometry_layout():
    """R = 21, stride 2, 64×64 tokens: 147×147 is one image; 587×587 is 6×6 blocks of 147."""
    p = DepthPipeline(_CheapLocal(21), GlobalStage(), config=PipelineConfig(R=21))
    assert p.tile_size == (147, 147)
    assert p.layout(147, 147) is None
    big = p.layout(587, 587)
    assert big.step == 88 and len(big.origins()) == 36
    assert tile_token_index(big).shape == (36, 4096)
    assert p.layout(235, 147) is not None                      # 147 + 88: rectangular images work too


def test_depth_completion_inputs_are_the_pipelines_depth_raw(nets, pair):
    """The U-Net trains on ``features.global_depth_maps`` of pre-calculated features and is evaluated
    on the pipeline's ``depth_raw``: both must be the same map (one derivation, ``pair_depth``)."""
    from blurry_edges.features import global_depth_maps, local_params_for_images

    pipe = make(nets, densify="w")                  # the W ownership: random networks own pixels there
    out = pipe.run(pair)
    grid = PatchGrid(H, H, R, 2)
    images = pair.permute(0, 2, 3, 1)[None]                               # stored layout [n, 2, H, W, 3]
    params = local_params_for_images(pipe.local, pipe.renderer, grid, images)
    depth, conf = global_depth_maps(pipe.glob, pipe.renderer, grid, params, mask_variant="w")
    assert (out["depth_raw"] > 0).any()
    torch.testing.assert_close(depth[0], out["depth_raw"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conf[0], out["confidence"], rtol=1e-6, atol=1e-6)


def test_a_shared_feature_cache_runs_the_local_stage_once_per_pair(nets, pair, runs):
    """--compare's modes share one local stage: the second mode reuses the first one's tokens, gets the
    same maps as a run of its own, and reports the local stage's time as if it had run."""
    from blurry_edges.pipeline import FeatureCache

    cache = FeatureCache()
    sparse, dt = make(nets, densify="none"), make(nets, densify="dt")
    dt.local_identity = sparse.local_identity = "the same local weights"
    sparse.feature_cache = dt.feature_cache = cache
    calls = []
    a = sparse.run(pair)
    hook = dt.local.register_forward_hook(lambda *a: calls.append(1))   # (the same module object as sparse's)
    try:
        b = dt.run(pair)
    finally:
        hook.remove()
    assert len(cache) == 1 and cache.hits == 1
    assert calls == []                                        # dt's own local stage never ran
    for key in ("depth_raw", "confidence", "depth"):
        assert torch.equal(a[key], runs["none"][key]) and torch.equal(b[key], runs["dt"][key])
    assert b["timing"]["local"] == a["timing"]["local"]        # counted as the run that made the tokens
    assert b["timing"]["total"] >= b["timing"]["local"]
    # another pair, or another local stage, is a miss
    dt.run(pair.flip(-1))
    other = make(nets, densify="none")
    other.feature_cache = cache
    other.run(pair)
    assert cache.hits == 1 and len(cache) == 3


def test_a_feature_cache_on_disk_serves_a_later_run(nets, pair, runs, tmp_path):
    """--feature_cache DIR: a second process (a fresh cache object on the same folder) gets the tokens
    from disk, never runs the local stage and returns the same maps; a truncated entry is recomputed."""
    from blurry_edges.pipeline import FeatureCache

    first = make(nets, densify="none")
    first.local_identity = "sha1:same-weights"
    first.feature_cache = FeatureCache(tmp_path / "tokens")
    first.run(pair)
    entries = sorted((tmp_path / "tokens").glob("*.pt"))
    assert len(entries) == 1 and not list((tmp_path / "tokens").glob("*.tmp"))
    later = make(nets, densify="dt")
    later.local_identity = "sha1:same-weights"
    later.feature_cache = FeatureCache(tmp_path / "tokens")
    calls = []
    hook = later.local.register_forward_hook(lambda *a: calls.append(1))
    try:
        out = later.run(pair)
    finally:
        hook.remove()
    assert calls == [] and later.feature_cache.disk_hits == 1
    for key in ("depth_raw", "confidence", "depth"):
        assert torch.equal(out[key], runs["dt"][key])
    assert "1 pair(s) reused (1 from disk), 0 computed" in later.feature_cache.describe()
    # other local weights miss; a truncated entry is a miss that is rewritten, never an error
    other = make(nets, densify="none")
    other.local_identity = "sha1:other-weights"
    other.feature_cache = FeatureCache(tmp_path / "tokens")
    other.run(pair)
    assert other.feature_cache.hits == 0 and len(list((tmp_path / "tokens").glob("*.pt"))) == 2
    entries[0].write_bytes(entries[0].read_bytes()[:100])
    again = make(nets, densify="none")
    again.local_identity = "sha1:same-weights"
    again.feature_cache = FeatureCache(tmp_path / "tokens")
    torch.testing.assert_close(again.run(pair)["depth"], runs["none"]["depth"], rtol=0, atol=0)
    assert again.feature_cache.unreadable == 1 and "1 unreadable entry recomputed" in again.feature_cache.describe()
    assert FeatureCache(tmp_path / "tokens").get(FeatureCache.key(again, pair)) is not None   # rewritten whole
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        FeatureCache(tmp_path / "a_file")
