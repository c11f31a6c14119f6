"""Basic-shape scenes, PSF, noise and ground-truth maps (paper Secs. 3.1 and 4.2)."""
from collections import deque

import numpy as np
import pytest
from scipy import ndimage, optimize, special

from blurry_edges.camera import CameraParams
from blurry_edges.synth import noise, psf, shapes
from blurry_edges.synth.shapes import SceneSpec, ShapeSceneConfig, ShapeSpec

SMALL = ShapeSceneConfig(img_size=(48, 48), R=11, num_shape=(3, 6))


# --------------------------------------------------------------------------------------- PSF
@pytest.mark.parametrize("sigma", [0.0, 0.3, 1.0, 2.7, 5.5])
def test_kernel_is_the_authors_truncated_normalized_gaussian(sigma):
    g = psf.gaussian_kernel_1d(sigma)
    k = int(np.ceil(max(sigma, 1e-6) * 3))
    assert g.shape == (2 * k + 1,)
    assert g.sum() == pytest.approx(1.0)
    x, y = np.meshgrid(np.arange(-k, k + 1.0), np.arange(-k, k + 1.0))
    s = max(sigma, 1e-6)
    ref = np.exp(-(x ** 2 + y ** 2) / (2 * s * s))
    np.testing.assert_allclose(np.outer(g, g), ref / ref.sum(), atol=1e-15)


@pytest.mark.parametrize("shape,sigma", [((30, 41), 1.7), ((9, 12), 5.5), ((25, 25, 3), 3.2), ((20, 17, 4), 0.8)])
def test_separable_blur_equals_direct_2d_convolution_with_reflect_borders(shape, sigma):
    rng = np.random.default_rng(0)
    img = rng.random(shape) * 255
    g = psf.gaussian_kernel_1d(sigma)
    k2 = np.outer(g, g)
    if img.ndim == 3:
        k2 = k2[:, :, None]
    ref = ndimage.convolve(img, k2, mode="reflect")
    np.testing.assert_allclose(psf.blur_reflect(img, g), ref, atol=1e-10)


# ------------------------------------------------------------------------------------- noise
def test_noise_on_a_flat_image_has_poisson_gaussian_statistics():
    rng = np.random.default_rng(1)
    c, alpha, sigma = 128, 190.0, 2.0
    clean = np.full((2, 147, 147, 3), c, np.uint8)
    counts = noise.add_noise(rng, clean, alpha, sigma)
    assert counts.dtype == np.uint8
    x = counts.astype(np.float64)
    mean = alpha * c / 255
    assert x.mean() == pytest.approx(mean, abs=0.15)
    # Poisson variance (= mean) + read noise σ² = 4, + 1/12 from rounding to integers
    assert x.var() == pytest.approx(mean + sigma ** 2 + 1 / 12, abs=2.0)


def test_noise_is_clipped_to_alpha_and_integer():
    rng = np.random.default_rng(2)
    counts = noise.add_noise(rng, np.full((64, 64, 3), 254, np.uint8), 181.3, 2.0)
    assert counts.max() <= round(181.3) and counts.min() >= 0
    assert noise.counts_dtype(200) == np.uint8 and noise.counts_dtype(1000) == np.uint16


def test_alpha_is_float32_in_range():
    rng = np.random.default_rng(3)
    a = [noise.draw_alpha(rng, (180, 200)) for _ in range(200)]
    assert all(isinstance(v, np.float32) and 180 <= v <= 200 for v in a)


# ----------------------------------------------------------------------------------- physics
def _fit_edge(profile, x):
    def model(x, lo, hi, x0, s):
        return lo + (hi - lo) * 0.5 * (1 + special.erf((x - x0) / (np.sqrt(2) * s)))
    p, _ = optimize.curve_fit(model, x, profile, p0=(profile[0], profile[-1], x.mean(), 2.0))
    return p


@pytest.mark.parametrize("z", [0.75, 1.18, 0.95])
def test_straight_edge_has_the_blur_of_eq3_in_each_image(z):
    """A vertical edge at depth z: an erf fit of each image's profile gives σ_px(z, ρ_i) (paper Sec. 3.1)."""
    cam = CameraParams()
    cfg = ShapeSceneConfig(img_size=(147, 147), camera=cam)
    z = float(np.float32(z))
    # a rectangle whose left side is the column x = 73 and which covers everything to its right
    rect = ShapeSpec(kind=1, color=(254, 254, 254), z=z, center=(173.0, 73.5), size=(200.0, 400.0, 0.0))
    scene = shapes.render_clean_scene(SceneSpec((0, 0, 0), (rect,)), cfg)
    x = np.arange(30, 117, dtype=np.float64)
    for ii, rho in enumerate(cam.rhos):
        profile = scene["images_gt"][ii, 70, 30:117, 1].astype(np.float64)
        lo, hi, x0, s = _fit_edge(profile, x)
        expected = float(cam.sigma_px(z, rho))
        if expected < 0.8:
            continue                 # a near-focused edge is a step: nothing to fit
        # truncation at 3σ and 8-bit rounding bias the fit by at most a few hundredths of a pixel
        assert s == pytest.approx(expected, rel=0.03, abs=0.05), (ii, s, expected)
        assert x0 == pytest.approx(72.5, abs=0.1)
        assert lo == pytest.approx(0, abs=0.5) and hi == pytest.approx(254, abs=0.5)
    # the ground truth of this scene is known exactly
    cols = np.arange(147)
    np.testing.assert_array_equal(scene["image_depth"], np.where(cols >= 73, np.float32(z), np.float32(1.18))[None].repeat(147, 0))
    np.testing.assert_array_equal(scene["boundary_location"], np.where(cols == 73, 255, 0)[None].repeat(147, 0))
    np.testing.assert_array_equal(scene["boundary_distance"], np.abs(cols - 73)[None].repeat(147, 0))
    np.testing.assert_array_equal(scene["boundary_depth"], np.where(np.abs(cols - 73) <= 1, np.float32(z), 0)[None].repeat(147, 0))
    np.testing.assert_array_equal(scene["image_aif"][:, :, 0], np.where(cols >= 73, 254, 0)[None].repeat(147, 0))


def test_nearer_shapes_are_painted_over_farther_ones():
    cfg = ShapeSceneConfig(img_size=(64, 64), R=11)
    far = ShapeSpec(kind=0, color=(200, 10, 10), z=1.1, center=(32.0, 32.0), size=(20.0,))
    near = ShapeSpec(kind=1, color=(10, 200, 10), z=0.8, center=(32.0, 32.0), size=(10.0, 10.0, 0.0))
    s = shapes.render_clean_scene(SceneSpec((0, 0, 0), (far, near)), cfg)
    assert s["image_depth"][32, 32] == np.float32(0.8)
    assert s["image_depth"][32, 15] == np.float32(1.1)
    assert tuple(s["image_aif"][32, 32]) == (10, 200, 10)
    # the far circle's boundary survives outside the near square, the square's is inside the circle
    assert s["boundary_location"][12, 32] == 255
    assert s["boundary_depth"][32, 32] == 0 and s["boundary_depth"][27, 32] == np.float32(0.8)


# ---------------------------------------------------------------------------------- GT maps
def _bfs_distance(boundary):
    H, W = boundary.shape
    dist = np.full((H, W), -1, np.int64)
    q = deque()
    for y, x in zip(*np.nonzero(boundary)):
        dist[y, x] = 0
        q.append((y, x))
    if not q:
        return np.ones((H, W), np.int64)
    while q:
        y, x = q.popleft()
        for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            v, u = y + dy, x + dx
            if 0 <= v < H and 0 <= u < W and dist[v, u] < 0:
                dist[v, u] = dist[y, x] + 1
                q.append((v, u))
    return dist


@pytest.mark.parametrize("density", [0.0, 0.001, 0.02, 0.3])
def test_city_block_distance_matches_breadth_first_growth(density):
    rng = np.random.default_rng(4)
    b = rng.random((40, 57)) < density
    np.testing.assert_array_equal(shapes.city_block_distance(b), _bfs_distance(b))


def test_sobel_magnitude_matches_scipy_convolution():
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (2, 30, 35, 3)).astype(np.uint8)
    kx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float64)[:, :, None]
    ky = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], np.float64)[:, :, None]
    ours = shapes.derivative_map(img)
    assert ours.dtype == np.float16
    for ii in range(2):
        f = img[ii].astype(np.float64)
        ref = np.sqrt(ndimage.convolve(f, kx) ** 2 + ndimage.convolve(f, ky) ** 2) / 255
        np.testing.assert_array_equal(ours[ii], ref.astype(np.float16))     # the authors' value, rounded once
    # the same bits whatever the memory layout of the input (worker processes allocate differently)
    buf = np.empty(img.size + 7, np.uint8)
    shifted = buf[3:3 + img.size].reshape(img.shape)
    shifted[...] = img
    np.testing.assert_array_equal(shapes.derivative_map(shifted[1:]), ours[1:])


def test_patch_candidates_are_near_boundaries_and_inside_the_margin():
    b = np.zeros((48, 48), np.uint8)
    b[20, 30] = 255
    cand = shapes.patch_candidates(b, 11)
    ys, xs = np.nonzero(cand)
    assert np.all(np.maximum(abs(ys - 20), abs(xs - 30)) <= 6)
    assert ys.min() >= 5 and ys.max() <= 42 and xs.min() >= 5 and xs.max() <= 42
    assert cand[14, 24] and cand[26, 36] and not cand[13, 30]


# ------------------------------------------------------------------------------------ scenes
def test_make_scene_shapes_dtypes_and_ranges():
    for i in range(5):
        s = shapes.make_scene(np.random.default_rng([7, i]), SMALL)
        assert s["images_ny"].shape == (2, 48, 48, 3) and s["images_ny"].dtype == np.uint8
        assert s["images_gt"].shape == (2, 48, 48, 3) and s["images_gt"].dtype == np.uint8
        assert s["images_gt"].max() <= 254
        assert isinstance(s["alpha"], np.float32) and 180 <= s["alpha"] <= 200
        assert s["images_ny"].max() <= round(float(s["alpha"]))
        assert s["image_depth"].dtype == np.float32 and s["image_depth"].shape == (48, 48)
        assert 0.75 <= s["image_depth"].min() and s["image_depth"].max() <= np.float32(1.18)
        bd = s["boundary_depth"]
        assert bd.dtype == np.float32 and np.all((bd == 0) | ((bd >= 0.75) & (bd <= 1.18)))
        assert set(np.unique(s["boundary_location"])) <= {0, 255}
        assert s["boundary_distance"].dtype == np.uint8
        np.testing.assert_array_equal(s["boundary_distance"], _bfs_distance(s["boundary_location"] > 0))
        assert s["derivative_map"].dtype == np.float16 and s["derivative_map"].shape == (2, 48, 48, 3)
        assert 0 <= float(s["derivative_map"].min()) and float(s["derivative_map"].max()) <= 4 * np.sqrt(2) + 1e-2
        assert s["image_aif"].shape == (48, 48, 3) and s["image_aif"].dtype == np.uint8
        assert s["n_candidates"] == np.count_nonzero(shapes.patch_candidates(s["boundary_location"], 11))
        assert SMALL.num_shape[0] <= s["n_shapes"] < SMALL.num_shape[1]


def test_same_generator_same_scene_and_different_seed_differs():
    a = shapes.make_scene(np.random.default_rng([1, 0, 0, 3]), SMALL)
    b = shapes.make_scene(np.random.default_rng([1, 0, 0, 3]), SMALL)
    c = shapes.make_scene(np.random.default_rng([2, 0, 0, 3]), SMALL)
    for k in ("images_ny", "images_gt", "image_depth", "derivative_map"):
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["images_gt"], c["images_gt"])


def test_shape_counts_sizes_and_order_follow_the_authors():
    cfg = ShapeSceneConfig()
    kinds, radii, n = [], [], []
    for i in range(300):
        spec = shapes.draw_scene_spec(np.random.default_rng([3, i]), cfg)
        n.append(len(spec.shapes))
        z = [sh.z for sh in spec.shapes]
        assert z == sorted(z, reverse=True)                   # far to near
        for sh in spec.shapes:
            kinds.append(sh.kind)
            assert all(0 <= c <= 254 for c in sh.color)
            if sh.kind == 0:
                radii.append(sh.size[0])
    assert min(n) == 15 and max(n) == 25
    assert set(kinds) == {0, 1, 2}
    assert min(radii) >= 0 and max(radii) == 57                # randint(0, 0.8·147/2) is 0…57


def test_select_patches_draws_distinct_candidates():
    rng = np.random.default_rng(8)
    counts = np.array([5, 0, 3, 10])
    scene, local, image = shapes.select_patches(rng, counts, 18)
    assert len(set(zip(scene.tolist(), local.tolist()))) == 18          # all candidates, none twice
    assert np.all(local < counts[scene]) and set(image.tolist()) <= {0, 1}
    with pytest.raises(ValueError, match="candidate"):
        shapes.select_patches(rng, counts, 19)


@pytest.mark.parametrize("kw,match", [
    (dict(num_shape=(5, 5)), "num_shape"), (dict(num_shape=(-1, 3)), "num_shape"),
    (dict(img_size=(8, 8)), "smaller than the patch size"), (dict(R=10), "odd"),
    (dict(alpha=(200, 180)), "alpha"), (dict(sigma=-1.0), "sigma"),
])
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        ShapeSceneConfig(**{**dict(img_size=(48, 48), R=11), **kw}).validate()
