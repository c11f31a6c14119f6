import math

import pytest
import torch

from blurry_edges.camera import CameraParams
from blurry_edges.wedges import (WedgeRenderer, boundary_map, decode_global, decode_local, encode_global_input,
                                 eta_from_logit, inverse_3x3, ownership_mask, render, ridge_colors, sobel_magnitude,
                                 u_maps, wedge_distances)


def _geom(n, gen, dtype=torch.float32):
    xy = torch.rand(n, 4, generator=gen, dtype=dtype) * 2 - 1
    ang = torch.rand(n, 4, generator=gen, dtype=dtype) * 2 * math.pi
    return torch.cat([xy, ang], dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_u_maps_are_a_partition_of_unity(dtype):
    g = torch.Generator().manual_seed(0)
    geom = _geom(16, g, dtype).view(2, 8, 8)       # any leading dims
    eta = 0.01 + torch.rand(2, 8, 2, generator=g, dtype=dtype)
    u = u_maps(wedge_distances(geom, 11), eta)
    assert u.shape == (2, 8, 3, 11, 11) and u.dtype == dtype
    assert (u >= 0).all() and (u <= 1).all()
    assert torch.allclose(u.sum(-3), torch.ones((), dtype=dtype), atol=1e-6 if dtype == torch.float32 else 1e-12)


def test_distances_signs_for_a_known_wedge():
    # wedge 1: vertex at the center, from θ=0 to θ=π/2 → the quadrant x>0, y>0 (rows grow with y)
    # wedge 2 pushed far away and empty.
    geom = torch.tensor([0.0, 0.0, 50.0, 50.0, 0.0, math.pi / 2, 0.0, 0.1])
    d = wedge_distances(geom, 21)
    assert d[0, 15, 15] > 0 and d[0, 5, 5] < 0 and d[0, 5, 15] < 0
    # inside: distance to the nearest bounding ray; pixel (row 15, col 17) has x=0.7, y=0.5
    assert float(d[0, 15, 17]) == pytest.approx(0.5, abs=1e-6)
    # behind the vertex the distance is Euclidean to the vertex: pixel (row 5, col 5) is (-0.5, -0.5)
    assert float(d[0, 5, 5]) == pytest.approx(-math.hypot(0.5, 0.5), abs=1e-6)
    assert (d[1] < 0).all()


def test_reflex_wedge_is_the_complement():
    g = torch.Generator().manual_seed(3)
    geom = _geom(5, g)
    comp = geom.clone()
    comp[:, 4] = geom[:, 4] + geom[:, 5]             # swap start/end: φ' = 2π − φ
    comp[:, 5] = 2 * math.pi - geom[:, 5]
    d, dc = wedge_distances(geom, 15)[:, 0], wedge_distances(comp, 15)[:, 0]
    away = d.abs() > 1e-4
    assert torch.equal((d > 0)[away], (dc < 0)[away])


def test_inverse_3x3_matches_linalg():
    g = torch.Generator().manual_seed(1)
    M = torch.randn(7, 3, 3, generator=g, dtype=torch.float64) + 3 * torch.eye(3, dtype=torch.float64)
    assert torch.allclose(inverse_3x3(M), torch.linalg.inv(M), atol=1e-10)


def test_ridge_colors_recovered_from_noisy_render():
    R = 21
    r = WedgeRenderer(R)
    # three well-populated layers: two half-plane-like wedges crossing the patch
    geom = torch.tensor([[-0.2, 0.1, 0.3, -0.2, 0.3, 2.6, 4.0, 2.2]])
    eta = torch.tensor([[0.05, 0.08]])
    dists = r.distances(geom)
    u = u_maps(dists, eta)
    area = u.sum(dim=(-1, -2)) / R ** 2
    assert (area > 0.15).all(), area
    g = torch.Generator().manual_seed(0)
    true = torch.rand(1, 3, 3, generator=g) * 0.8 + 0.1
    clean = render(u, true)
    noisy = clean + 0.02 * torch.randn(clean.shape, generator=g)
    _, colors, _, _ = r.render_single(geom, eta, noisy)
    # the ridge (λ = (0.005 R²)²) shrinks colors a few percent; noise moves them less than that
    assert torch.allclose(colors, true, atol=0.06)
    assert torch.allclose(colors, r.render_single(geom, eta, clean)[1], atol=0.02)
    # without the ridge the noisy fit recovers the true colors closely
    unbiased = WedgeRenderer(R, ridge_rate=1e-6).render_single(geom, eta, noisy)[1]
    assert torch.allclose(unbiased, true, atol=0.02)
    # the closed form equals a generic least-squares solve with the same ridge
    A = u.flatten(-2)[0].T
    ref = torch.linalg.solve(A.T @ A + r.lam * torch.eye(3), A.T @ noisy.flatten(-2)[0].T).T
    assert torch.allclose(colors[0], ref, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_joint_color_fit_over_a_pair(dtype):
    R = 15
    r = WedgeRenderer(R)
    g = torch.Generator().manual_seed(5)
    geom = torch.tensor([[-0.2, 0.1, 0.3, -0.2, 0.3, 2.6, 4.0, 2.2]] * 2, dtype=dtype)
    eta = torch.tensor([[[0.05, 0.08], [0.2, 0.3]]] * 2, dtype=dtype)
    true = torch.rand(2, 3, 3, generator=g, dtype=dtype)
    u = u_maps(r.distances(geom).unsqueeze(-4), eta)            # [2, 2, 3, R, R]
    fit = render(u, true.unsqueeze(-3))
    out = r.render_pair(geom, eta, fit)
    assert out.patches.shape == (2, 2, 3, R, R) and out.colors.shape == (2, 3, 3)
    assert torch.allclose(out.patches, fit, atol=0.02)
    assert out.depth.shape == (2, R, R) and out.wedge_depth.shape == (2, 2)
    assert out.patches.dtype == out.colors.dtype == out.depth.dtype == dtype


def test_gradcheck_float64():
    R = 7
    r = WedgeRenderer(R)
    g = torch.Generator().manual_seed(2)
    geom = _geom(3, g, torch.float64)
    eta = (0.05 + 0.3 * torch.rand(3, 2, generator=g, dtype=torch.float64))
    y = torch.rand(3, 3, R, R, generator=g, dtype=torch.float64)

    def f(geom, eta, y):
        p, c, d, u = r.render_single(geom, eta, y)
        return p, boundary_map(d)

    # keep pixels away from the non-differentiable kinks (|d| ties, ray sign flips)
    assert torch.autograd.gradcheck(f, (geom.requires_grad_(), eta.requires_grad_(), y.requires_grad_()),
                                    eps=1e-6, atol=1e-4, nondet_tol=1e-7)


@pytest.mark.parametrize("case", ["zero_extent", "vertex_far", "eta_low", "eta_high", "vertex_on_pixel"])
def test_finite_gradients_for_degenerate_parameters(case):
    R = 11
    r = WedgeRenderer(R)
    geom = torch.tensor([[0.1, -0.2, -0.3, 0.4, 1.0, 2.0, 3.0, 1.5]], dtype=torch.float32)
    eta = torch.tensor([[0.1, 0.2]])
    if case == "zero_extent":
        geom[0, 5] = 0.0
        geom[0, 7] = 2 * math.pi
    elif case == "vertex_far":
        geom[0, :4] = torch.tensor([1e3, -1e3, -5e2, 7e2])
    elif case == "eta_low":
        eta = eta_from_logit(torch.tensor([[-50.0, -50.0]]))
    elif case == "eta_high":
        eta = eta_from_logit(torch.tensor([[50.0, 50.0]]))
    elif case == "vertex_on_pixel":
        geom[0, :4] = torch.tensor([0.0, 0.0, 0.2, 0.2])   # exactly on the central pixel / a grid point
    geom.requires_grad_()
    eta = eta.clone().requires_grad_()
    y = torch.rand(1, 3, R, R)
    p, c, d, u = r.render_single(geom, eta, y)
    loss = p.square().sum() + boundary_map(d).sum() + sobel_magnitude(p).sum()
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(geom.grad).all() and torch.isfinite(eta.grad).all()


def test_ownership_masks():
    geom = torch.tensor([[-0.5, 0.0, 0.5, 0.0, -math.pi / 2, math.pi, -math.pi / 2, math.pi]])
    d = wedge_distances(geom, 21)   # wedge 1: x > -0.5 ; wedge 2 (front): x > 0.5
    m = ownership_mask(d, "sparse")[0]
    w = ownership_mask(d, "w")[0]
    col = lambda x: round((x + 1) * 10)
    assert m[10, col(0.5)] == 2 and m[10, col(-0.5)] == 1
    assert m[10, col(0.9)] == 0 and m[10, col(0.0)] == 0 and m[10, col(-0.9)] == 0
    assert w[10, col(0.9)] == 2 and w[10, col(0.0)] == 1 and w[10, col(-0.9)] == 0
    with pytest.raises(ValueError, match="variant"):
        ownership_mask(d, "dense")


def test_gradcheck_sobel_magnitude():
    g = torch.Generator().manual_seed(6)
    img = torch.rand(2, 3, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(sobel_magnitude, (img,), eps=1e-6, atol=1e-6)


def test_gradcheck_ridge_colors():
    g = torch.Generator().manual_seed(7)
    u = torch.softmax(torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64), dim=-3).requires_grad_()
    y = torch.rand(2, 3, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u, y: ridge_colors(u, y, 0.05), (u, y), eps=1e-6, atol=1e-6)


def test_gradcheck_depth_from_eta():
    """Depth from the pair's η (Eq. 7). The feasible-region projection is left out: noise-free pairs
    sit on its border, where it has a kink."""
    cam, R = CameraParams(), 21
    z = torch.tensor([0.8, 0.95, 1.1], dtype=torch.float64)
    eta1 = cam.refocus_eta(z, cam.rho_1, R).detach().requires_grad_()
    eta2 = cam.refocus_eta(z, cam.rho_2, R).detach().requires_grad_()
    torch.testing.assert_close(cam.depth_from_etas(eta1, eta2, R, project=False), z, rtol=1e-6, atol=1e-9)
    assert torch.autograd.gradcheck(lambda a, b: cam.depth_from_etas(a, b, R, project=False), (eta1, eta2),
                                    eps=1e-7, atol=1e-6, rtol=1e-4)


def test_sobel_matches_conv2d():
    g = torch.Generator().manual_seed(4)
    img = torch.rand(2, 3, 9, 12, generator=g, dtype=torch.float64)
    kx = torch.tensor([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=torch.float64)
    ky = torch.tensor([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=torch.float64)
    w = lambda k: k.expand(3, 1, 3, 3)
    ref = torch.sqrt(torch.nn.functional.conv2d(img, w(kx), groups=3) ** 2 +
                     torch.nn.functional.conv2d(img, w(ky), groups=3) ** 2 + 1e-8)
    assert torch.allclose(sobel_magnitude(img), ref, atol=1e-12)


def test_codecs():
    out = torch.randn(5, 12)
    geom, eta = decode_global(out)
    assert geom.shape == (5, 8) and eta.shape == (5, 2, 2)
    assert (geom[:, 4:] >= 0).all() and (geom[:, 4:] < 2 * math.pi).all()
    assert torch.allclose(eta[:, 1, 0], eta_from_logit(out[:, 10] + 0.5))
    g, e = decode_local(torch.randn(5, 10))
    colors = torch.rand(5, 3, 3)
    f = encode_global_input(g, e, colors)
    assert f.shape == (5, 19)
    assert torch.allclose(f[:, 10:], (colors.flatten(-2) - 0.5) * 2)
    with pytest.raises(ValueError):
        decode_global(torch.randn(5, 10))


def test_bf16_autocast_keeps_color_fit_in_float32():
    r = WedgeRenderer(11)
    g = torch.Generator().manual_seed(0)
    geom = _geom(4, g)
    eta = 0.05 + torch.rand(4, 2, generator=g) * 0.2
    y = torch.rand(4, 3, 11, 11, generator=g)
    ref = r.render_single(geom, eta, y)[1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        c = r.render_single(geom, eta, y)[1]
    assert c.dtype == torch.float32
    assert torch.allclose(c, ref, atol=1e-5)


def test_refocused_and_sharpened_views():
    R = 15
    r = WedgeRenderer(R, CameraParams())
    geom = torch.tensor([[-0.2, 0.1, 0.3, -0.2, 0.3, 2.6, 4.0, 2.2]])
    eta = torch.tensor([[[0.1, 0.15], [0.12, 0.2]]])
    fit = torch.rand(1, 2, 3, R, R)
    out = r.render_pair(geom, eta, fit)
    sharp = r.sharpened(out.dists, out.colors)
    refoc = r.refocused(out.dists, out.colors, out.mask, out.wedge_depth, 10.39)
    assert sharp.shape == refoc.shape == (1, 3, R, R)
    # a sharp rendering has larger gradients than the blurred image-1 rendering
    assert sobel_magnitude(sharp).mean() > sobel_magnitude(out.patches[:, 0]).mean()
