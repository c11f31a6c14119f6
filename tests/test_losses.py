"""Training objectives and weight schedules (paper Sec. 3.4): schedule values at the key epochs, the
losses against a reference written independently in the authors' tensor layout, the depth term's
guards, and the depth-completion loss. CPU only, tiny sizes."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from blurry_edges.camera import CameraParams
from blurry_edges.losses import (GAMMA_NAMES, GlobalLoss, GlobalSchedule, LocalLoss, LocalSchedule,
                                 depth_completion_loss, ramp_rate)
from blurry_edges.patches import PatchGrid
from blurry_edges.wedges import WedgeRenderer, wedge_distances


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread for these tiny tensors (OpenMP spinning slows a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- schedules
def test_ramp_rate():
    assert ramp_rate(0, 200) == 0.0
    assert ramp_rate(199, 200) == 1.0
    assert ramp_rate(250, 200) == 1.0
    assert ramp_rate(99, 199) == pytest.approx(0.5)
    assert ramp_rate(0, 1) == 1.0 and ramp_rate(0, 0) == 1.0      # degenerate ramps are complete
    with pytest.raises(ValueError):
        ramp_rate(-1, 10)


def test_local_schedule_key_epochs():
    s = LocalSchedule()                                    # β_loc 0.001, β_smth 0.0005, 200 epochs
    assert s.at(0).bndry_loc == 0.0 and s.at(0).smthns == 0.0
    assert s.at(1).bndry_loc == pytest.approx(0.001 / 199)
    assert s.at(100).smthns == pytest.approx(0.0005 * 100 / 199)
    for e in (199, 200, 999):
        assert s.at(e).bndry_loc == pytest.approx(0.001) and s.at(e).smthns == pytest.approx(0.0005)
    assert s.final().bndry_loc == 0.001 and s.final().smthns == 0.0005


GAMMAS = {   # the authors' γ schedule (paper Sec. 3.4): (start, middle, final)
    "color": (1.0, 0.1, 0.1), "color_cons": (0.2, 0.1, 0.05), "bndry_cons": (0.05, 0.05, 0.02),
    "smthns": (0.005, 0.1, 0.002), "smthns_cons": (0.005, 0.1, 0.002),
    "bndry_loc": (0.0001, 0.05, 0.0001), "depth": (0.0001, 0.05, 0.5),
}


@pytest.mark.parametrize("name", GAMMA_NAMES)
def test_global_schedule_key_epochs(name):
    s = GlobalSchedule()                                   # key epochs 30, 100, 200
    g0, g1, g2 = GAMMAS[name]
    w = {e: getattr(s.at(e), name) for e in (0, 15, 29, 30, 64, 99, 100, 150, 199, 200, 349)}
    assert w[0] == pytest.approx(g0)
    assert w[15] == pytest.approx(g0 + 15 / 29 * (g1 - g0))
    for e in (29, 30, 64, 99, 100):                        # end of ramp 1, plateau, start of ramp 2
        assert w[e] == pytest.approx(g1)
    assert w[150] == pytest.approx(g1 + 50 / 99 * (g2 - g1))
    for e in (199, 200, 349):
        assert w[e] == pytest.approx(g2)
    assert getattr(s.final(), name) == g2


def test_global_schedule_phases_and_validation():
    s = GlobalSchedule()
    assert s.rate_phase(0) == (0.0, 0) and s.rate_phase(50) == (1.0, 0)
    assert s.rate_phase(100) == (0.0, 1) and s.rate_phase(300) == (1.0, 1)
    # key epochs (0, 0, 0): the final weights from the first epoch (fine-tuning recipe of the W variant)
    zero = GlobalSchedule(dynamic_epoch=(0, 0, 0)).at(0).as_dict()
    assert zero == pytest.approx(s.final().as_dict())
    with pytest.raises(ValueError):
        GlobalSchedule(dynamic_epoch=(100, 30, 200))
    with pytest.raises(ValueError):
        GlobalSchedule(gamma_color=(1.0, 0.1))


# ----------------------------------------------------------------------------- local loss
# ----------------------------------------------------------------------------- the reference's own pieces
# Written from the paper's equations, not with the library's decoder, α-maps or color fit, so that the
# reference can disagree with them. Shared with the library: the signed wedge distances (checked on
# known wedges in test_wedges.py) and depth from η (Eq. 7, checked in test_camera.py).
def _eta_ref(e):
    """η = 10^(2·erf(e) − 2)."""
    return 10.0 ** (2.0 * torch.erf(e) - 2.0)


def _decode_local_ref(raw):
    """Local output [..., 10] → geometry [..., 8] (angles in [0, 2π)) and η [..., 2]."""
    angles = raw[..., 4:8] - 2 * math.pi * torch.floor(raw[..., 4:8] / (2 * math.pi))
    return torch.cat([raw[..., :4], angles], -1), _eta_ref(raw[..., 8:10])


def _decode_global_ref(raw):
    """Global output [..., 12] → geometry [..., 8] and η [..., 2 (image), 2 (wedge)]."""
    angles = (raw[..., 4:8] + 1.0) * math.pi
    angles = angles - 2 * math.pi * torch.floor(angles / (2 * math.pi))
    eta = _eta_ref(raw[..., 8:12] + 0.5)
    return torch.cat([raw[..., :4] * 3.0, angles], -1), torch.stack([eta[..., 0:2], eta[..., 2:4]], -2)


def _u_ref(d, eta):
    """Collective α-maps (Eqs. 11–12) for l = 2 wedges: d [..., 2, R, R], η [..., 2] → [..., 3, R, R]
    (layer 0 the background, wedge 2 in front)."""
    alphas = [torch.ones_like(d[..., 0, :, :])]                         # α_0 = 1: the background
    for i in range(2):
        alphas.append(0.5 * (1 + torch.erf(d[..., i, :, :] / (math.sqrt(2) * eta[..., i, None, None]))))
    out = []
    for i in range(3):
        a = alphas[i]
        for j in range(i + 1, 3):
            a = a * (1 - alphas[j])
        out.append(a)
    return torch.stack(out, -3)


def _ridge_ref(u, y, lam, pixel_dims=2):
    """Colors [..., C, K] minimizing Σ (y − Σ_k c_k u_k)² + λ Σ c² (Eq. 14), by a linear solve."""
    A = u.flatten(-pixel_dims).transpose(-1, -2)                        # [..., M, K]
    Y = y.flatten(-pixel_dims).transpose(-1, -2)                        # [..., M, C]
    eye = torch.eye(A.shape[-1], dtype=A.dtype)
    return torch.linalg.solve(A.transpose(-1, -2) @ A + lam * eye, A.transpose(-1, -2) @ Y).transpose(-1, -2)


def _sobel_ref(img):
    """Sobel magnitude by conv2d with Eq. 13's kernels (independent of wedges.sobel_magnitude)."""
    c = img.shape[-3]
    kx = torch.tensor([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=img.dtype)
    ky = torch.tensor([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=img.dtype)
    lead = img.shape[:-3]
    x = img.reshape(-1, c, *img.shape[-2:])
    gx = F.conv2d(x, kx.expand(c, 1, 3, 3), groups=c)
    gy = F.conv2d(x, ky.expand(c, 1, 3, 3), groups=c)
    return torch.sqrt(gx ** 2 + gy ** 2 + 1e-8).reshape(*lead, c, *gx.shape[-2:])


def test_local_loss_matches_reference():
    torch.manual_seed(0)
    R, B = 11, 5
    r = WedgeRenderer(R)
    raw = torch.randn(B, 10, dtype=torch.float64)
    clean = torch.rand(B, 3, R, R, dtype=torch.float64)
    noisy = clean + 0.1 * torch.randn_like(clean)
    dist = torch.rand(B, R, R, dtype=torch.float64) * 4
    deri = torch.rand(B, 3, R - 2, R - 2, dtype=torch.float64)
    w = LocalSchedule().at(120)
    got = LocalLoss(r)(raw, noisy, clean, dist, deri, w)

    # reference: colors on `noisy`, Eq. 9 boundary map written out
    geom, eta = _decode_local_ref(raw)
    d = wedge_distances(geom, R)
    u = _u_ref(d, eta)
    col = _ridge_ref(u, noisy, (0.005 * R * R) ** 2)
    patch = torch.einsum("bkhw,bck->bchw", u, col)
    d1, d2 = d[:, 0], d[:, 1]
    vis = torch.where(d2 >= 0, d2, torch.minimum(d1.abs(), d2.abs()))
    b = torch.exp(-vis ** 2 / 0.07 ** 2)
    ref = (((clean - patch) ** 2).sum(1).mean() + w.bndry_loc * ((dist * b) ** 2).mean()
           + w.smthns * ((deri - _sobel_ref(patch)) ** 2).sum(1).mean())
    assert torch.allclose(got, ref, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- global loss
def _global_reference(raw, fit, clean, dist, deri, target, w, R, S, variant, camera):
    """The seven terms in the authors' layout: patches as [B, 2, 3, R, R, Hp, Wp] via nn.Unfold,
    global maps via nn.Fold divided by the patch count."""
    B, _, _, H, W = clean.shape
    Hp, Wp = (H - R) // S + 1, (W - R) // S + 1
    unf = lambda x, k: F.unfold(x, k, stride=S)                                  # noqa: E731
    fold = lambda x: F.fold(x, (H, W), R, stride=S)                              # noqa: E731
    count = fold(torch.ones(1, R * R, Hp * Wp, dtype=raw.dtype))                 # [1, 1, H, W]

    geom, eta = _decode_global_ref(raw)                     # [B, P, 8], [B, P, 2 img, 2 wedge]
    d = wedge_distances(geom, R)                            # [B, P, 2, R, R]
    u = torch.stack([_u_ref(d, eta[:, :, i]) for i in range(2)], 2)             # [B, P, 2, 3, R, R]
    cut = lambda x: unf(x.flatten(0, 1), R).view(B, 2, 3, R, R, Hp * Wp)       # noqa: E731
    fit_p = cut(fit).permute(0, 5, 1, 2, 3, 4)              # [B, P, 2, 3, R, R]
    col = _ridge_ref(u.transpose(2, 3), fit_p.transpose(2, 3), (0.005 * R * R) ** 2, pixel_dims=3)
    patches = torch.einsum("bpikhw,bpck->bpichw", u, col).permute(0, 2, 3, 4, 5, 1)   # [B,2,3,R,R,P]
    d1, d2 = d[:, :, 0], d[:, :, 1]
    vis = torch.where(d2 >= 0, d2, torch.minimum(d1.abs(), d2.abs()))
    bnd = torch.exp(-vis ** 2 / 0.07 ** 2).permute(0, 2, 3, 1)                  # [B, R, R, P]

    g_img = (fold(patches.detach().reshape(B * 2, 3 * R * R, -1)) / count)      # [2B, 3, H, W]
    g_bnd = fold(bnd.detach().reshape(B, R * R, -1)) / count                    # [B, 1, H, W]
    g_img_p = unf(g_img, R).view(B, 2, 3, R, R, -1)
    g_bnd_p = unf(g_bnd, R).view(B, R, R, -1)
    p_deri = _sobel_ref(patches.permute(0, 1, 5, 2, 3, 4)).permute(0, 1, 3, 4, 5, 2)   # [B,2,3,R-2,R-2,P]
    gt_deri_p = unf(deri.flatten(0, 1), R - 2).view(B, 2, 3, R - 2, R - 2, -1)
    g_deri_p = unf(_sobel_ref(g_img), R - 2).view(B, 2, 3, R - 2, R - 2, -1)
    logd_p = unf(torch.log2(dist + 1).unsqueeze(1), R).view(B, R, R, -1)

    if variant == "w":
        own = torch.where(d2 > 0, 2, torch.where(d1 > 0, 1, 0))
    else:
        near2 = torch.exp(-d2 ** 2 / 0.07 ** 2) > 0.5
        near1 = torch.exp(-d1 ** 2 / 0.07 ** 2) > 0.5
        own = torch.where(near2, 2, torch.where(d2 >= 0, 0, torch.where(near1, 1, 0)))
    z = camera.depth_from_etas(eta[:, :, 0], eta[:, :, 1], R)                   # [B, P, 2]
    zmap = torch.where(own == 1, z[..., 0, None, None], torch.where(own == 2, z[..., 1, None, None], 0.0))
    tgt_p = unf(target.unsqueeze(1), R).view(B, R, R, -1).permute(0, 3, 1, 2)    # [B, P, R, R]
    m = ((tgt_p != 0) & (own != 0)).to(raw.dtype)
    depth = (((zmap - tgt_p) * m) ** 2).sum() / m.sum()

    terms = {
        "color": ((cut(clean) - patches) ** 2).sum(2).mean(),
        "color_cons": ((patches - g_img_p) ** 2).sum(2).mean(),
        "bndry_cons": ((bnd - g_bnd_p) ** 2).mean(),
        "smthns": ((p_deri - gt_deri_p) ** 2).sum(2).mean(),
        "smthns_cons": ((p_deri - g_deri_p) ** 2).sum(2).mean(),
        "bndry_loc": ((logd_p * bnd) ** 2).mean(),
        "depth": depth,
    }
    return sum(getattr(w, k) * v for k, v in terms.items()), terms


def _scene_batch(B, H, W, R, S, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    P = ((H - R) // S + 1) * ((W - R) // S + 1)
    raw = torch.randn(B, P, 12, dtype=dtype, generator=g)
    clean = torch.rand(B, 2, 3, H, W, dtype=dtype, generator=g)
    noisy = clean + 0.05 * torch.randn(clean.shape, dtype=dtype, generator=g)
    dist = torch.randint(0, 8, (B, H, W), generator=g).to(dtype)
    deri = torch.rand(B, 2, 3, H - 2, W - 2, dtype=dtype, generator=g)
    bdepth = torch.where(torch.rand(B, H, W, generator=g, dtype=dtype) > 0.6,
                         0.75 + 0.43 * torch.rand(B, H, W, generator=g, dtype=dtype), torch.zeros(B, H, W, dtype=dtype))
    dense = 0.75 + 0.43 * torch.rand(B, H, W, generator=g, dtype=dtype)
    return raw, noisy, clean, dist, deri, bdepth, dense


@pytest.mark.parametrize("variant", ["sparse", "w"])
@pytest.mark.parametrize("train", [True, False])
def test_global_loss_matches_reference(variant, train):
    R, S, H, W = 11, 2, 21, 23
    cam = CameraParams()
    raw, noisy, clean, dist, deri, bdepth, dense = _scene_batch(2, H, W, R, S)
    target = dense if variant == "w" else bdepth
    fit = clean if train else noisy
    w = GlobalSchedule().at(150)
    loss = GlobalLoss(WedgeRenderer(R, cam), PatchGrid(H, W, R, S), mask_variant=variant)
    got_terms = loss.terms(raw, fit, clean, dist, deri, target)
    ref, ref_terms = _global_reference(raw, fit, clean, dist, deri, target, w, R, S, variant, cam)
    for k in GAMMA_NAMES:
        assert torch.allclose(got_terms[k], ref_terms[k], rtol=1e-9, atol=1e-12), k
    assert torch.allclose(loss(raw, fit, clean, dist, deri, target, w), ref, rtol=1e-9)


def test_global_loss_gradients_flow_only_through_patches():
    R, S, H, W = 11, 3, 23, 23
    raw, noisy, clean, dist, deri, bdepth, _ = _scene_batch(1, H, W, R, S, dtype=torch.float32)
    raw.requires_grad_(True)
    loss = GlobalLoss(WedgeRenderer(R), PatchGrid(H, W, R, S))
    total = loss(raw, clean, clean, dist, deri, bdepth, GlobalSchedule().at(0))
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(raw.grad).all() and raw.grad.abs().sum() > 0


def test_depth_term_guards_an_empty_mask():
    R, S, H, W = 11, 2, 21, 21
    raw, noisy, clean, dist, deri, _, _ = _scene_batch(1, H, W, R, S, dtype=torch.float32)
    raw.requires_grad_(True)
    loss = GlobalLoss(WedgeRenderer(R), PatchGrid(H, W, R, S))
    t = loss.terms(raw, clean, clean, dist, deri, torch.zeros(1, H, W))      # no boundary depth anywhere
    assert t["depth"].item() == 0.0
    t["depth"].backward()
    assert torch.isfinite(raw.grad).all()


def test_depth_completion_loss():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    tgt = torch.tensor([[[[1.5, 2.0], [0.0, 5.0]]]])         # one pixel without ground truth
    assert depth_completion_loss(pred, tgt, "l1").item() == pytest.approx((0.5 + 0 + 1) / 3)
    assert depth_completion_loss(pred, tgt, "l2").item() == pytest.approx((0.25 + 0 + 1) / 3)
    with pytest.raises(ValueError):
        depth_completion_loss(pred, tgt, "huber")
    assert math.isfinite(depth_completion_loss(pred, torch.zeros_like(tgt)).item())
