"""Training/validation set generation: layout, manifest, reproducibility, patches, faults."""
import filecmp
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from blurry_edges.data import read_manifest
from blurry_edges.synth import generate, shapes
from blurry_edges.synth.cli import run_train_val
from blurry_edges.synth.shapes import ShapeSceneConfig

REPO = Path(__file__).resolve().parents[1]
CFG = ShapeSceneConfig(img_size=(48, 48), R=11, num_shape=(3, 6))
N_TRAIN, N_VAL = 6, 3


def _make(path, workers=1, seed=5, **kw):
    return generate.generate_train_val(CFG, path, N_TRAIN, N_VAL, seed=seed, workers=workers, progress=False, **kw)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _make(tmp_path_factory.mktemp("gen") / "data_train_val")


def test_layout_dtypes_and_manifest(tiny):
    m = read_manifest(tiny)
    assert m["format"] == "blurry_edges_v1" and m["kind"] == "train_val"
    assert m["R"] == 11 and m["img_size"] == [48, 48] and m["seed"] == 5
    assert m["counts"] == {"train": 6, "patches_train": 12, "val": 3, "patches_val": 6}
    assert m["camera"]["rho_1"] == 10.0 and m["channel_order"] == "RGB"
    expected = {
        "images_ny": ((2, 48, 48, 3), "uint8"), "images_gt": ((2, 48, 48, 3), "uint8"),
        "images_aif": ((48, 48, 3), "uint8"), "image_depths": ((48, 48), "float32"),
        "boundary_depths": ((48, 48), "float32"), "boundary_locations": ((48, 48), "uint8"),
        "boundary_distances": ((48, 48), "uint8"), "derivative_maps": ((2, 48, 48, 3), "float16"),
        "alphas": ((), "float32"),
    }
    patches = {
        "patches_ny": ((11, 11, 3), "uint8"), "patches_gt": ((11, 11, 3), "uint8"),
        "patches_aif": ((11, 11, 3), "uint8"), "boundary_locations": ((11, 11), "uint8"),
        "image_depths": ((11, 11), "float32"), "boundary_depths": ((11, 11), "float32"),
        "boundary_distances": ((11, 11), "uint8"), "derivative_maps": ((11, 11, 3), "float16"),
        "alphas": ((), "float32"), "patch_index": ((4,), "int32"),
    }
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        for stem, (shape, dtype) in expected.items():
            a = np.load(tiny / f"{stem}_{split}.npy")
            assert a.shape == (n,) + shape and a.dtype == dtype, stem
            assert m["files"][f"{stem}_{split}.npy"] == {"shape": list(a.shape), "dtype": dtype}
        for stem, (shape, dtype) in patches.items():
            a = np.load(tiny / "patches" / f"{stem}_{split}.npy")
            assert a.shape == (2 * n,) + shape and a.dtype == dtype, stem
            assert m["files"][f"patches/{stem}_{split}.npy"]["dtype"] == dtype
    assert not list(tiny.parent.glob("*.tmp-*"))
    assert not (tiny / "png").exists()                       # previews only on request


def test_scenes_are_the_library_scenes(tiny):
    s = shapes.make_scene(generate.scene_rng(5, "val", 2), CFG)
    np.testing.assert_array_equal(np.load(tiny / "images_ny_val.npy")[2], s["images_ny"])
    np.testing.assert_array_equal(np.load(tiny / "derivative_maps_val.npy")[2], s["derivative_map"])
    assert np.load(tiny / "alphas_val.npy")[2] == s["alpha"]


def test_patches_are_cut_near_boundaries(tiny):
    half = 11 // 2
    for split in ("train", "val"):
        idx = np.load(tiny / "patches" / f"patch_index_{split}.npy")
        assert len({(a, c, d) for a, _, c, d in idx.tolist()}) == len(idx)      # no centre twice
        ny = np.load(tiny / f"images_ny_{split}.npy")
        gt = np.load(tiny / f"images_gt_{split}.npy")
        bloc = np.load(tiny / f"boundary_locations_{split}.npy")
        der = np.load(tiny / f"derivative_maps_{split}.npy")
        alphas = np.load(tiny / f"alphas_{split}.npy")
        p = {k: np.load(tiny / "patches" / f"{k}_{split}.npy") for k in
             ("patches_ny", "patches_gt", "boundary_locations", "boundary_distances", "derivative_maps", "alphas")}
        for i, (sc, im, h, w) in enumerate(idx):
            assert shapes.patch_candidates(bloc[sc], 11)[h, w]
            sl = (slice(h - half, h + half + 1), slice(w - half, w + half + 1))
            np.testing.assert_array_equal(p["patches_ny"][i], ny[sc, im][sl])
            np.testing.assert_array_equal(p["patches_gt"][i], gt[sc, im][sl])
            np.testing.assert_array_equal(p["derivative_maps"][i], der[sc, im][sl])
            np.testing.assert_array_equal(p["boundary_locations"][i], bloc[sc][sl])
            np.testing.assert_array_equal(p["boundary_distances"][i], shapes.city_block_distance(bloc[sc][sl]))
            assert p["alphas"][i] == alphas[sc]


def test_same_seed_same_bytes_across_worker_counts(tiny, tmp_path):
    other = _make(tmp_path / "w2", workers=2)
    files = sorted(p.relative_to(tiny) for p in tiny.rglob("*.npy"))
    assert len(files) == 2 * 9 + 2 * 10
    for rel in files:
        assert filecmp.cmp(tiny / rel, other / rel, shallow=False), rel
    different = _make(tmp_path / "seed6", seed=6)
    assert not filecmp.cmp(tiny / "images_ny_train.npy", different / "images_ny_train.npy", shallow=False)


def test_full_size_scenes_are_identical_across_worker_counts(tmp_path):
    cfg = ShapeSceneConfig()                                   # 147×147, R = 21, 15–25 shapes
    a = generate.generate_train_val(cfg, tmp_path / "a", 3, 1, seed=11, workers=1, progress=False)
    b = generate.generate_train_val(cfg, tmp_path / "b", 3, 1, seed=11, workers=2, progress=False)
    for rel in sorted(p.relative_to(a) for p in a.rglob("*.npy")):
        assert filecmp.cmp(a / rel, b / rel, shallow=False), rel
    assert np.load(a / "boundary_distances_train.npy").dtype == np.uint16       # 146 + 146 > 255


def test_existing_set_is_kept_unless_overwrite(tiny, tmp_path):
    path = _make(tmp_path / "d")
    before = (path / "images_ny_train.npy").read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        _make(path, seed=9)
    assert (path / "images_ny_train.npy").read_bytes() == before
    _make(path, seed=9, overwrite=True)
    assert (path / "images_ny_train.npy").read_bytes() != before
    assert read_manifest(path)["seed"] == 9
    assert not list(tmp_path.glob("d.*"))                   # no temporary or old folder left


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_interrupted_run_leaves_nothing_that_looks_complete(tmp_path, monkeypatch, exc):
    calls = []

    def failing(rng, cfg):
        calls.append(1)
        if len(calls) == 4:
            raise exc("stop")
        return shapes.make_scene(rng, cfg)

    monkeypatch.setattr(generate, "make_scene", failing)
    with pytest.raises(exc):
        _make(tmp_path / "data")
    assert not (tmp_path / "data").exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv,match", [
    (["--num_shape", "5", "5"], "num_shape"),
    (["--num_shape", "6", "3"], "num_shape"),
    (["--num_sample_train", "-1"], "num_sample_train"),
    (["--num_sample_val", "-3"], "num_sample_val"),
    (["--img_size", "8", "8"], "smaller than the patch size"),
    (["--Z_range", "1.18", "0.75"], "Z_range"),
    (["--alpha", "200", "180"], "alpha"),
    (["--cam_params", "{not json"], "cam_params"),
])
def test_impossible_options_fail_before_any_work(tmp_path, capsys, argv, match):
    with pytest.raises(SystemExit) as e:
        run_train_val(argv + ["--data_path", str(tmp_path / "out"), "--quiet"])
    assert e.value.code == 2
    assert match in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_script_end_to_end_with_previews(tmp_path):
    out = tmp_path / "set"
    r = subprocess.run([sys.executable, str(REPO / "train_val_data_generator.py"), "--data_path", str(out),
                        "--num_sample_train", "3", "--num_sample_val", "2", "--img_size", "40", "44", "--R", "11",
                        "--num_shape", "2", "4", "--workers", "2", "--save_png", "1", "--quiet",
                        "--cam_params", '{"rho_2": 10.3}'],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert str(out) in r.stdout
    m = read_manifest(out)
    assert m["camera"]["rho_2"] == 10.3 and m["img_size"] == [40, 44]
    assert np.load(out / "images_ny_train.npy").shape == (3, 2, 40, 44, 3)
    assert (out / "png" / "train" / "clean_0_1.png").is_file() and not (out / "png" / "train" / "clean_1_0.png").exists()


def test_storage_is_under_a_quarter_of_float64():
    cfg = ShapeSceneConfig()
    ours, authors = generate.train_val_bytes(cfg, 10000), generate.train_val_float64_bytes(cfg, 10000)
    assert ours <= authors / 4


def test_patches_per_scene_sets_the_number_of_local_stage_patches(tmp_path):
    """--patches_per_scene k cuts k patches per scene (the authors' 2 by default), recorded in the manifest."""
    import json

    from blurry_edges.synth.cli import run_train_val

    out = run_train_val(["--data_path", str(tmp_path / "set"), "--num_sample_train", "3", "--num_sample_val", "2",
                         "--img_size", "48", "48", "--R", "11", "--num_shape", "3", "6", "--patches_per_scene", "5",
                         "--quiet"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["patches_train"] == 15 and manifest["counts"]["patches_val"] == 10
    assert np.load(out / "patches" / "patches_ny_train.npy", mmap_mode="r").shape[0] == 15
    with pytest.raises(SystemExit):
        run_train_val(["--data_path", str(tmp_path / "bad"), "--num_sample_train", "1", "--num_sample_val", "1",
                       "--patches_per_scene", "0", "--quiet"])
