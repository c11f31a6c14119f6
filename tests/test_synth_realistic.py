"""Realistic test scenes: layered rendering, sources (MS-COCO fixture, built-in), test-set generation."""
import filecmp
import json

import cv2
import numpy as np
import pytest
from scipy import ndimage

from blurry_edges.camera import CameraParams
from blurry_edges.data import TestSceneDataset, read_manifest
from blurry_edges.synth import generate, realistic, sources
from blurry_edges.synth.realistic import RealisticConfig

TINY = RealisticConfig(img_size=(48, 48))
# pycocotools' mask decoder trips a NumPy 2 deprecation warning of its own
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")


# ------------------------------------------------------------------------------- rendering
def _reference_layer(layer, depth, kp, cam):
    """The authors' method literally (paper Sec. 4.2): per key point, full 2-D convolution with reflect borders, then the
    linear-interpolation weight (masks built from Δ = kp[1] − kp[0], as the authors)."""
    diff = kp[1] - kp[0]
    out = np.zeros((2,) + layer.shape)
    n = len(kp)
    for j, d in enumerate(kp):
        last = (depth <= d - diff) & (depth > d)
        nxt = (depth <= d) & (depth > d + diff)
        if j == 0:
            w = (depth > d) + (depth - d - diff) / (-diff) * nxt
        elif j == n - 1:
            w = (d - diff - depth) / (-diff) * last + (depth <= d)
        else:
            w = (d - diff - depth) / (-diff) * last + (depth - d - diff) / (-diff) * nxt
        for ii, rho in enumerate(cam.rhos):
            s = max(float(cam.sigma_px(d, rho)), 1e-6)
            k = int(np.ceil(3 * s))
            x, y = np.meshgrid(np.arange(-k, k + 1.0), np.arange(-k, k + 1.0))
            g = np.exp(-(x ** 2 + y ** 2) / (2 * s * s))
            g /= g.sum()
            out[ii] += ndimage.convolve(layer, g[:, :, None], mode="reflect") * w[:, :, None]
    return out


@pytest.mark.parametrize("n_interval", [12, 150])
def test_layer_rendering_equals_direct_convolution_per_key_point(n_interval):
    cam = CameraParams()
    rng = np.random.default_rng(0)
    H = W = 32
    rel, ang = realistic.draw_planes(rng)
    depth_bg, _ = realistic.plane_depth_maps(rel, ang, (H, W), (cam.z_min, cam.z_max))
    layer = rng.random((H, W, 4)) * 255
    kp = realistic.key_points(depth_bg, n_interval)
    ours = realistic.render_layer(layer, depth_bg, kp, cam, strip=8)
    np.testing.assert_allclose(ours, _reference_layer(layer, depth_bg, kp, cam), atol=1e-9)


def test_interpolation_weights_sum_to_one_on_neighbouring_key_points():
    rng = np.random.default_rng(1)
    depth = rng.uniform(0.8, 1.1, (20, 30))
    kp = np.linspace(1.05, 0.85, 11)                      # some pixels beyond both ends
    keys, pix, w = realistic.interpolation_weights(depth, kp)
    total = np.bincount(pix, weights=w, minlength=depth.size)
    np.testing.assert_allclose(total, 1.0, atol=1e-9)
    assert np.all(w > 0) and np.all(np.diff(keys) >= 0)
    d = depth.reshape(-1)[pix]
    near_end = (d > kp[0]) | (d <= kp[-1])
    assert np.all(np.abs(kp[keys] - d)[~near_end] <= (kp[0] - kp[1]) + 1e-12)


def test_test_scene_depths_and_layers():
    rng = np.random.default_rng(2)
    obj = np.full((48, 48, 3), 200, np.uint8)
    mask = np.zeros((48, 48), bool)
    mask[12:36, 10:40] = True
    obj = obj * mask[..., None].astype(np.uint8)
    bg = np.full((48, 48, 3), 40, np.uint8)
    s = realistic.make_test_scene(rng, obj, mask, bg, TINY)
    assert s["images_ny"].shape == (2, 48, 48, 3) and s["images_ny"].dtype == np.uint8
    assert s["images_gt"].dtype == np.uint8 and s["depth_map"].dtype == np.float32
    d = s["depth_map"]
    assert 0.75 <= d.min() and d.max() <= 1.18
    assert d[mask].max() <= d[~mask].min()                   # the object is nearer than the background
    assert 180 <= s["alpha"] <= 200 and s["images_ny"].max() <= round(float(s["alpha"]))
    # far from the object's edge the clean images keep the flat colors
    assert abs(int(s["images_gt"][0, 24, 25, 0]) - 200) <= 1 and abs(int(s["images_gt"][1, 2, 2, 0]) - 40) <= 1


# ----------------------------------------------------------------------------- MS-COCO fixture
def _polygon(x0, y0, x1, y1):
    return [float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]


@pytest.fixture(scope="module")
def coco_dirs(tmp_path_factory):
    """A tiny MS-COCO-format folder (pycocotools reads it) and a paintings folder."""
    root = tmp_path_factory.mktemp("coco")
    coco, paint = root / "MS_COCO_annotations", root / "Painting"
    (coco / "val2017").mkdir(parents=True)
    paint.mkdir()
    rng = np.random.default_rng(0)
    images = []
    for i in range(3):
        img = rng.integers(0, 255, (240, 320, 3)).astype(np.uint8)
        img[:, :, 2] = 255                                   # red in RGB (BGR file)
        cv2.imwrite(str(coco / "val2017" / f"{i:012d}.png"), img)     # lossless, unlike COCO's JPEGs
        images.append({"id": i + 1, "file_name": f"{i:012d}.png", "height": 240, "width": 320})
    anns = [
        # the one annotation that passes: area ≥ 40000, one component
        {"id": 11, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 50000.0,
         "bbox": [30, 20, 250, 200], "segmentation": [_polygon(30, 20, 280, 220)]},
        # too small
        {"id": 12, "image_id": 2, "category_id": 2, "iscrowd": 0, "area": 1000.0,
         "bbox": [10, 10, 40, 25], "segmentation": [_polygon(10, 10, 50, 35)]},
        # large but two components
        {"id": 13, "image_id": 3, "category_id": 2, "iscrowd": 0, "area": 60000.0,
         "bbox": [0, 0, 320, 240], "segmentation": [_polygon(0, 0, 140, 240), _polygon(180, 0, 320, 240)]},
    ]
    cats = [{"id": 1, "name": "cat", "supercategory": "animal"}, {"id": 2, "name": "dog", "supercategory": "animal"},
            {"id": 3, "name": "bird", "supercategory": "animal"}]          # bird: no image at all
    (coco / "instances_val2017.json").write_text(json.dumps(
        {"info": {}, "licenses": [], "images": images, "annotations": anns, "categories": cats}))
    for i in range(2):
        cv2.imwrite(str(paint / f"p{i}.png"), np.full((100 + 50 * i, 130, 3), 60 + 100 * i, np.uint8))
    (paint / "notes.txt").write_text("not an image")
    return coco, paint


def test_coco_source_applies_the_authors_object_filter(coco_dirs):
    coco, paint = coco_dirs
    src = sources.CocoSource(coco, (48, 48))
    for i in range(15):
        obj, mask, info = src.draw(np.random.default_rng(i))
        assert info["coco_annotation"] == 11
        assert obj.shape == (48, 48, 3) and obj.dtype == np.uint8 and mask.dtype == bool
        assert sources.is_single_component(mask)
        assert np.all(obj[ndimage.binary_erosion(mask, iterations=2)][:, 0] == 255)   # RGB: the files' red
        assert np.all(obj[~ndimage.binary_dilation(mask, iterations=2)] == 0)


def test_coco_test_set(coco_dirs, tmp_path):
    coco, paint = coco_dirs
    out = generate.generate_test(TINY, tmp_path / "test", 2, source="coco", frgd_path=coco, bkgd_path=paint,
                                 R=11, workers=1, progress=False)
    m = read_manifest(out)
    assert m["kind"] == "test" and m["source"] == "coco" and m["counts"] == {"test": 2}
    infos = json.loads((out / "sources.json").read_text())
    assert [i["coco_annotation"] for i in infos] == [11, 11]
    assert all(i["painting"] in ("p0.png", "p1.png") for i in infos)
    ds = TestSceneDataset(out, img_size=(48, 48))
    noisy, depth = ds[1]
    assert noisy.shape == (2, 48, 48, 3) and depth.shape == (48, 48) and len(ds) == 2


def test_missing_coco_names_the_expected_layout(tmp_path, coco_dirs):
    _, paint = coco_dirs
    with pytest.raises(FileNotFoundError, match="instances_val2017.json") as e:
        generate.generate_test(TINY, tmp_path / "t", 1, source="coco", frgd_path=tmp_path / "nope",
                               bkgd_path=paint, progress=False)
    assert "val2017" in str(e.value)
    coco, _ = coco_dirs
    with pytest.raises(FileNotFoundError, match="painting"):
        generate.generate_test(TINY, tmp_path / "t", 1, source="coco", frgd_path=coco,
                               bkgd_path=tmp_path / "nopaint", progress=False)
    assert not (tmp_path / "t").exists()


# ------------------------------------------------------------------------------------ builtin
def test_builtin_masks_are_smooth_single_components():
    for i in range(10):
        m = sources.smooth_blob_mask(np.random.default_rng(i), (147, 147))
        assert sources.is_single_component(m)
        assert 0.1 < m.mean() < 0.6


def test_builtin_test_set_is_identical_across_worker_counts(tmp_path):
    logs = []
    a = generate.generate_test(TINY, tmp_path / "a", 3, source="auto", frgd_path=tmp_path / "no_coco",
                               bkgd_path=tmp_path / "no_paint", workers=1, progress=False, log=logs.append)
    assert any("builtin" in line or "built-in" in line for line in logs)
    b = generate.generate_test(TINY, tmp_path / "b", 3, source="builtin", workers=2, progress=False)
    for name in ("images_ny.npy", "images_gt.npy", "depth_maps.npy", "alphas.npy", "sources.json"):
        assert filecmp.cmp(a / name, b / name, shallow=False), name
    m = read_manifest(a)
    assert m["source"] == "builtin" and m["files"]["images_ny.npy"] == {"shape": [3, 2, 48, 48, 3], "dtype": "uint8"}
    depth = np.load(a / "depth_maps.npy")
    assert depth.dtype == np.float32 and 0.75 <= depth.min() and depth.max() <= 1.18


def test_test_generator_script_rejects_impossible_options(tmp_path, capsys):
    from blurry_edges.synth.cli import run_test

    for argv, match in ([["--img_size", "8", "8"], "smaller than the patch size"],
                        [["--Z_range", "1.2", "0.8"], "Z_range"],
                        [["--num_sample_test", "-2"], "num_sample_test"],
                        [["--source", "coco", "--frgd_path", str(tmp_path / "x")], "instances_val2017.json"]):
        with pytest.raises(SystemExit) as e:
            run_test(argv + ["--data_path", str(tmp_path / "out"), "--quiet"])
        assert e.value.code == 2
        assert match in capsys.readouterr().err
        assert not (tmp_path / "out").exists()
