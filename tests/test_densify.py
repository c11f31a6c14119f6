"""Depth-edge-aware domain-transform densifier (Karaali & Jung Eqs. 1–3), CPU, tiny images."""
import math

import pytest
import torch

from blurry_edges.densify import (DTParams, depth_edge_map, domain_transform_densify,
                                  domain_transform_filter)

NEAR, FAR = 0.8, 1.1


def half_planes(h=40, w=48, gap=0):
    """Left half at NEAR, right half at FAR; samples at the outer borders and along the dividing
    line on both sides (``gap`` sample-free columns between the two sides).

    Returns (sparse [H, W], boundary [H, W], c) with c the first column of the right half.
    """
    c = w // 2
    z = torch.zeros(h, w, dtype=torch.float64)
    z[:, :2] = NEAR
    z[:, -2:] = FAR
    z[:, c - 1 - gap // 2 - gap % 2] = NEAR
    z[:, c + gap // 2] = FAR
    # Boundary map of the dividing line between columns c-1 and c (B = exp(-d²/δ²), δ ≈ 0.7 px).
    x = torch.arange(w, dtype=torch.float64) - (c - 0.5)
    b = torch.exp(-(x / max(0.7, 0.5 * (gap + 1))) ** 2).expand(h, w).clone()
    return z, b, c


def flat_guide(h, w, value=0.5):
    return torch.full((3, h, w), value, dtype=torch.float64)


def test_constant_sparse_map_stays_constant():
    gen = torch.Generator().manual_seed(0)
    h, w = 37, 53
    mask = torch.rand(h, w, generator=gen) < 0.03
    z = torch.where(mask, torch.tensor(0.9), torch.tensor(0.0))
    guide = torch.rand(3, h, w, generator=gen)          # a busy guide: edges everywhere
    for dtype in (torch.float32, torch.float64):
        dense, support = domain_transform_densify(z.to(dtype), guide.to(dtype),
                                                  params=DTParams(sigma_s=10.0, sigma_r=3.75))  # a busy guide needs a wide σr
        assert dense.dtype == dtype and support.dtype == dtype
        assert bool((support > 0).all()), "every pixel should be reached"
        tol = 1e-5 if dtype == torch.float32 else 1e-10
        assert torch.allclose(dense, torch.full_like(dense, 0.9), atol=tol)


def test_no_samples_gives_zero_depth_and_zero_support():
    z = torch.zeros(16, 16)
    dense, support = domain_transform_densify(z, torch.rand(3, 16, 16))
    assert bool((dense == 0).all()) and bool((support == 0).all())


@pytest.mark.parametrize("gap", [0, 2])
def test_values_do_not_cross_a_depth_edge(gap):
    z, b, c = half_planes(gap=gap)
    h, w = z.shape
    guide = flat_guide(h, w)                             # nothing in the guide separates them
    params = DTParams(sigma_s=20.0, psi=100.0)
    dense, support = domain_transform_densify(z, guide, boundary=b, params=params)
    left, right = dense[:, : c - 1 - gap], dense[:, c + 1 + gap:]
    assert float(left.max()) < NEAR + 0.01 and float(right.min()) > FAR - 0.01
    assert bool((support[:, : c - 1 - gap] > 0.05).all()) and bool((support[:, c + 1 + gap:] > 0.05).all())
    # Without ψ and with a flat guide the two depths mix: the test can fail.
    mixed, _ = domain_transform_densify(z, guide, boundary=b, params=DTParams(sigma_s=20.0, psi=0.0))
    assert float(mixed[:, : c - 1 - gap].max()) > NEAR + 0.05
    assert float(mixed[:, c + 1 + gap:].min()) < FAR - 0.05
    # The loose criterion of the issue: away from the line each half keeps its own depth.
    assert float(dense[:, : c - 3].max()) < 0.85 and float(dense[:, c + 3:].min()) > 1.05
    assert float(mixed[:, : c - 3].max()) > 0.85


def test_depth_edge_also_holds_with_the_edge_in_the_guide_and_no_boundary_map():
    z, _, c = half_planes()
    h, w = z.shape
    guide = flat_guide(h, w, 0.3)
    guide[:, :, c:] = 0.35                               # a faint color step on the line
    dense, _ = domain_transform_densify(z, guide, params=DTParams(sigma_s=20.0, sigma_r=3.75, psi=100.0))
    assert float(dense[:, : c - 1].max()) < NEAR + 0.01 and float(dense[:, c + 1:].min()) > FAR - 0.01


def pattern_scene(h=32, w=48):
    """Same depth 0.9 everywhere; a strong color edge at column c; samples on the left only."""
    c = w // 2
    z = torch.zeros(h, w, dtype=torch.float64)
    z[:, 1] = 0.9
    z[:, c - 4] = 0.9                                    # not touching the edge (see below)
    guide = flat_guide(h, w, 0.1)
    guide[:, :, c:] = 0.9                                # Σ_c |ΔI| = 2.4 on the edge
    x = torch.arange(w, dtype=torch.float64) - (c - 0.5)
    b = torch.exp(-(x / 0.7) ** 2).expand(h, w).clone()
    return z, guide, b, c


def test_values_cross_a_pattern_edge():
    z, guide, b, c = pattern_scene()
    params = DTParams(sigma_s=24.0, sigma_r=3.75, psi=100.0)
    assert float(depth_edge_map(z, b, params=params).sum()) == 0.0, "same depth: not a depth edge"
    dense, support = domain_transform_densify(z, guide, boundary=b, params=params)
    assert torch.allclose(dense[:, c:], torch.full_like(dense[:, c:], 0.9), atol=1e-9)
    assert float(support[:, c:].min()) > 1e-3
    # ψ is what would stop it: flag the same boundary as a depth edge and nothing gets through.
    # (A flagged edge is a wall where no sample lies within edge_radius of it, as in Karaali's
    # setting, or between samples of different depth; it never walls in samples of one side.)
    flagged = (b > 0.5).double()
    _, support_blocked = domain_transform_densify(z, guide, depth_edges=flagged, params=params)
    assert float(support_blocked[:, c + 1:].max()) < 1e-3 * float(support[:, c + 1:].min())
    # The color term of Eq. 2 alone (small σr) slows propagation; the pattern edge is not a wall.
    _, support_small_sr = domain_transform_densify(z, guide, boundary=b,
                                                   params=DTParams(sigma_s=24.0, sigma_r=0.2))
    assert float(support_small_sr[:, c + 1:].max()) < float(support[:, c + 1:].min())


def test_confidence_weighting_reduces_an_outlier():
    h, w = 24, 24
    z = torch.zeros(h, w, dtype=torch.float64)
    z[:, 8] = 1.0
    z[12, 14] = 0.5                                      # an outlier sample
    conf = torch.where(z > 0, torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64))
    conf[12, 14] = 0.05
    guide = flat_guide(h, w)
    base = DTParams(sigma_s=8.0, psi=0.0)
    plain, _ = domain_transform_densify(z, guide, weight=conf, params=base)   # flag off: F ignored
    weighted, support_w = domain_transform_densify(
        z, guide, weight=conf, params=DTParams(sigma_s=8.0, psi=0.0, confidence_weighted=True))
    err_plain = (plain[8:17, 11:18] - 1.0).abs().max()
    err_weighted = (weighted[8:17, 11:18] - 1.0).abs().max()
    assert float(err_weighted) < 0.5 * float(err_plain)
    assert float(support_w.max()) <= 1.0 + 1e-12
    with pytest.raises(ValueError, match="confidence"):
        domain_transform_densify(z, guide, params=DTParams(confidence_weighted=True))


def test_depth_edge_map_marks_depth_not_pattern_boundaries():
    z, b, c = half_planes()
    e = depth_edge_map(z, b, tol=0.05)
    assert bool((e[:, c - 1: c + 1] == 1).all())             # the line itself
    assert float(e[:, : c - 3].sum() + e[:, c + 3:].sum()) == 0.0
    zp, _, bp, cp = pattern_scene(h=40)
    zp[:, cp] = 0.91                                          # same surface, within tolerance
    assert float(depth_edge_map(zp, bp, tol=0.05).sum()) == 0.0
    # batched input, and the valid mask overrides z > 0
    eb = depth_edge_map(torch.stack([z, zp]), torch.stack([b, bp]), tol=0.05)
    assert eb.shape == (2,) + z.shape and torch.equal(eb[0], e)
    assert float(depth_edge_map(z, b, torch.zeros_like(z), tol=0.05).sum()) == 0.0


def test_precomputed_depth_edges_match_the_automatic_ones():
    z, b, _ = half_planes()
    guide = flat_guide(*z.shape)
    params = DTParams(sigma_s=16.0)
    auto = domain_transform_densify(z, guide, boundary=b, params=params)
    given = domain_transform_densify(z, guide, depth_edges=depth_edge_map(z, b, params=params),
                                     params=params)
    assert torch.equal(auto[0], given[0]) and torch.equal(auto[1], given[1])


def test_samples_are_preserved():
    gen = torch.Generator().manual_seed(3)
    z, b, c = half_planes()
    guide = flat_guide(*z.shape)
    noisy = torch.where(z > 0, z + 0.01 * torch.randn(z.shape, generator=gen, dtype=z.dtype), z)
    dense, _ = domain_transform_densify(noisy, guide, boundary=b, params=DTParams(sigma_s=16.0, sigma_r=3.75, psi=100.0))
    valid = noisy > 0
    assert float((dense[valid] - noisy[valid]).abs().max()) < 0.03       # averaged with its surface
    exact, _ = domain_transform_densify(noisy, guide, boundary=b,
                                        params=DTParams(sigma_s=16.0, sigma_r=3.75, psi=100.0, preserve_samples=True))
    assert torch.equal(exact[valid], noisy[valid])


def test_batched_matches_single_and_numpy_input():
    gen = torch.Generator().manual_seed(1)
    zs = torch.where(torch.rand(2, 3, 20, 24, generator=gen) < 0.05,
                     0.75 + 0.4 * torch.rand(2, 3, 20, 24, generator=gen), torch.zeros(2, 3, 20, 24))
    guides = torch.rand(2, 3, 3, 20, 24, generator=gen)
    params = DTParams(sigma_s=6.0)
    dense, support = domain_transform_densify(zs, guides, params=params)
    assert dense.shape == zs.shape and support.shape == zs.shape
    d1, s1 = domain_transform_densify(zs[1, 2], guides[1, 2], params=params)
    assert torch.allclose(dense[1, 2], d1, atol=1e-6) and torch.allclose(support[1, 2], s1, atol=1e-6)
    dn, _ = domain_transform_densify(zs[1, 2].numpy(), guides[1, 2].numpy(), params=params)
    assert torch.allclose(dn, d1)
    gray, _ = domain_transform_densify(zs[0, 0], guides[0, 0, 0], params=params)   # [H, W] guide
    assert gray.shape == zs[0, 0].shape and bool(torch.isfinite(gray).all())


def test_bad_inputs_raise_clear_errors():
    z = torch.zeros(10, 12)
    z[3, 3] = 1.0
    guide = torch.rand(3, 10, 12)
    bad = z.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        domain_transform_densify(bad, guide)
    with pytest.raises(ValueError, match="NaN"):
        domain_transform_densify(z, guide.masked_fill(guide > 0.5, float("nan")))
    with pytest.raises(ValueError, match=r"\(3, 10, 11\)"):
        domain_transform_densify(z, torch.rand(3, 10, 11))
    with pytest.raises(ValueError, match=r"\(10, 11\)"):
        domain_transform_densify(z, guide, boundary=torch.zeros(10, 11))
    with pytest.raises(ValueError, match=">= 0"):
        domain_transform_densify(z, guide, weight=-torch.ones(10, 12))
    with pytest.raises(ValueError, match="floating"):
        domain_transform_densify(z, (guide * 255).to(torch.uint8))
    with pytest.raises(ValueError):
        DTParams(iterations=0)
    with pytest.raises(ValueError):
        DTParams(sigma_r=0.0)


def test_extreme_penalty_stays_finite():
    z, b, _ = half_planes()
    guide = torch.rand(3, *z.shape, dtype=torch.float32)
    dense, support = domain_transform_densify(z.float(), guide, boundary=b.float(),
                                              params=DTParams(sigma_s=2.0, sigma_r=1e-3, psi=1e6))
    assert bool(torch.isfinite(dense).all()) and bool(torch.isfinite(support).all())
    assert bool(((dense == 0) | ((dense >= NEAR - 1e-4) & (dense <= FAR + 1e-4))).all())


def test_work_is_linear_in_the_pixel_count():
    """Operation count, no timing: 2·N·((H−1) + (W−1)) sequential steps, each one row/column."""
    counts = {}
    for h, w in ((16, 24), (32, 48)):
        z = torch.zeros(h, w)
        z[::5, ::7] = 1.0
        stats = {}
        domain_transform_densify(z, torch.rand(3, h, w), params=DTParams(iterations=3), stats=stats)
        assert stats["scan_steps"] == 2 * 3 * ((h - 1) + (w - 1))
        assert stats["guide_scan_steps"] == 2 * 3 * ((h - 1) + (w - 1))
        # each step updates one column (2 signals × H) or one row (2 × W) of values
        assert stats["elements_updated"] == 2 * 3 * ((w - 1) * 2 * h + (h - 1) * 2 * w)
        counts[(h, w)] = stats["elements_updated"]
    ratio = counts[(32, 48)] / counts[(16, 24)]
    assert 3.8 < ratio < 4.3                           # 4× the pixels → ≈4× the work


def test_plain_filter_smooths_within_regions_only():
    img = torch.zeros(1, 20, 20, dtype=torch.float64)
    img[:, :, 10:] = 1.0
    noise = 0.02 * torch.randn(1, 20, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = domain_transform_filter(img + noise, img, sigma_s=7.0, sigma_r=0.5)
    assert float((out[:, :, :8] - 0.0).abs().max()) < 0.03 and float((out[:, :, 12:] - 1.0).abs().max()) < 0.03
    assert float(out.std()) > 0.45                       # the step survives
    assert math.isclose(float(domain_transform_filter(torch.ones(2, 9, 9), sigma_s=3.0, sigma_r=0.1).mean()),
                        1.0, rel_tol=1e-6)
