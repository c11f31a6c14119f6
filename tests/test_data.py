"""Datasets over our format and the authors' format (float64, no manifest), auto-detected."""
import json
import shutil
import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from blurry_edges.data import LocalPatchDataset, SceneDataset, TestSceneDataset, read_manifest
from blurry_edges.synth import generate
from blurry_edges.synth.realistic import RealisticConfig
from blurry_edges.synth.shapes import ShapeSceneConfig

CFG = ShapeSceneConfig(img_size=(48, 48), R=11, num_shape=(3, 6))
P = ((48 - 11) // 2 + 1) ** 2


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    root = generate.generate_train_val(CFG, tmp_path_factory.mktemp("ours") / "data_train_val", 4, 2, seed=3,
                                       workers=1, progress=False)
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):    # what the pre-calculation script will write
        np.save(root / f"params_src_{split}.npy", rng.standard_normal((n, 2, P, 19)))
    return root


@pytest.fixture(scope="module")
def authors(ours, tmp_path_factory):
    """The same set converted to the authors' on-disk format: float64 everywhere, clean·α/255, BGR names."""
    root = tmp_path_factory.mktemp("authors") / "data_train_val"
    (root / "patches").mkdir(parents=True)
    for split in ("train", "val"):
        a = np.load(ours / f"alphas_{split}.npy").astype(np.float64)
        for stem in ("images_ny", "image_depths", "boundary_depths", "boundary_distances",
                     "boundary_locations", "derivative_maps"):
            np.save(root / f"{stem}_{split}.npy", np.load(ours / f"{stem}_{split}.npy").astype(np.float64))
        np.save(root / f"alphas_{split}.npy", a)
        gt = np.load(ours / f"images_gt_{split}.npy").astype(np.float64)
        np.save(root / f"images_gt_{split}.npy", gt / 255 * a[:, None, None, None, None])
        np.save(root / f"images_aif_{split}.npy", np.load(ours / f"images_aif_{split}.npy") / 255.0)
        shutil.copy(ours / f"params_src_{split}.npy", root / f"params_src_{split}.npy")
        pa = np.load(ours / "patches" / f"alphas_{split}.npy").astype(np.float64)
        for stem in ("patches_ny", "boundary_distances", "derivative_maps", "boundary_locations"):
            np.save(root / "patches" / f"{stem}_{split}.npy",
                    np.load(ours / "patches" / f"{stem}_{split}.npy").astype(np.float64))
        pgt = np.load(ours / "patches" / f"patches_gt_{split}.npy").astype(np.float64)
        np.save(root / "patches" / f"patches_gt_{split}.npy", pgt / 255 * pa[:, None, None, None])
        np.save(root / "patches" / f"alphas_{split}.npy", pa)
    return root


def _assert_float32(items):
    for t in items:
        assert t.dtype == torch.float32 and t.device.type == "cpu" and torch.isfinite(t).all()


def test_local_patch_dataset_ours(ours):
    ds = LocalPatchDataset(ours, "train", R=11)
    assert len(ds) == 8 and ds.R == 11 and ds.img_size == (48, 48) and ds.camera.rho_2 == 10.2
    noisy, clean, dist, deri = ds[3]
    _assert_float32(ds[3])
    assert noisy.shape == (11, 11, 3) and clean.shape == (11, 11, 3)
    assert dist.shape == (11, 11) and deri.shape == (9, 9, 3)
    a = np.load(ours / "patches" / "alphas_train.npy")[3]
    np.testing.assert_allclose(noisy.numpy(), np.load(ours / "patches" / "patches_ny_train.npy")[3] / a, rtol=1e-6)
    np.testing.assert_allclose(clean.numpy(), np.load(ours / "patches" / "patches_gt_train.npy")[3] / 255, rtol=1e-6)
    der = np.load(ours / "patches" / "derivative_maps_train.npy")[3].astype(np.float32)
    np.testing.assert_array_equal(deri.numpy(), der[1:-1, 1:-1])
    assert 0 <= float(clean.min()) and float(clean.max()) <= 1
    # the patches sub-folder works as root too (the authors' local-training default)
    assert len(LocalPatchDataset(ours / "patches", "val")) == 4


def test_scene_dataset_ours(ours):
    ds = SceneDataset(ours, "val", with_params=True, with_depth=True, R=11, img_size=(48, 48))
    item = ds[1]
    assert len(item) == 7 and len(ds) == 2
    _assert_float32(item)
    params, noisy, clean, dist, deri, bdepth, depth = item
    assert params.shape == (2, P, 19) and noisy.shape == (2, 48, 48, 3) and clean.shape == (2, 48, 48, 3)
    assert dist.shape == (48, 48) and deri.shape == (2, 46, 46, 3) and bdepth.shape == (48, 48)
    assert depth.shape == (48, 48) and 0.75 <= float(depth.min()) and float(depth.max()) <= 1.18
    item = SceneDataset(ours, "train", with_params=False)[0]
    assert len(item) == 6 and item[0].numel() == 0


def test_authors_format_gives_the_same_items(ours, authors):
    assert read_manifest(authors) is None
    for split in ("train", "val"):
        a, b = LocalPatchDataset(ours, split), LocalPatchDataset(authors, split)
        assert b.format == "authors" and b.R == 11 and b.camera is None
        for i in range(len(a)):
            for x, y in zip(a[i], b[i]):
                torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
        a, b = SceneDataset(ours, split, with_depth=True), SceneDataset(authors, split, with_depth=True)
        assert b.R == 11 and b.img_size == (48, 48)
        for i in range(len(a)):
            for x, y in zip(a[i], b[i]):
                torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_dataloader_workers_reopen_the_memory_maps(ours):
    loader = DataLoader(LocalPatchDataset(ours, "train"), batch_size=4, num_workers=2)
    batches = list(loader)
    assert len(batches) == 2 and batches[0][0].shape == (4, 11, 11, 3)


def test_errors(ours, tmp_path):
    with pytest.raises(FileNotFoundError, match="train_val_data_generator.py"):
        SceneDataset(tmp_path / "missing", "train")
    with pytest.raises(FileNotFoundError, match="test_data_generator.py"):
        TestSceneDataset(tmp_path / "missing")
    with pytest.raises(ValueError, match="R=21"):
        LocalPatchDataset(ours, "train", R=21)
    with pytest.raises(ValueError, match="img_size"):
        SceneDataset(ours, "train", with_params=False, img_size=(147, 147))
    with pytest.raises(ValueError, match="split"):
        SceneDataset(ours, "test")
    # a tampered set: the manifest no longer matches the file
    bad = tmp_path / "bad"
    shutil.copytree(ours, bad)
    np.save(bad / "images_ny_train.npy", np.zeros((3, 2, 48, 48, 3), np.uint8))
    with pytest.raises(ValueError, match="manifest"):
        SceneDataset(bad, "train", with_params=False)
    # our 8-bit arrays without their manifest: an incomplete set, not the authors' data
    (bad / "manifest.json").unlink()
    with pytest.raises(ValueError, match="manifest"):
        LocalPatchDataset(bad, "val")
    no_params = tmp_path / "np"
    shutil.copytree(ours, no_params)
    (no_params / "params_src_val.npy").unlink()
    with pytest.raises(FileNotFoundError, match="global_data_pre_cal.py"):
        SceneDataset(no_params, "val")


def test_test_scene_dataset_ours_and_authors(tmp_path):
    cfg = RealisticConfig(img_size=(40, 40))
    ours = generate.generate_test(cfg, tmp_path / "data_test", 2, source="builtin", workers=1, progress=False)
    ds = TestSceneDataset(ours, img_size=(40, 40))
    noisy, depth = ds[0]
    _assert_float32((noisy, depth))
    assert noisy.shape == (2, 40, 40, 3) and depth.shape == (40, 40) and ds.channel_order == "RGB"
    a = np.load(ours / "alphas.npy")
    np.testing.assert_allclose(noisy.numpy(), np.load(ours / "images_ny.npy")[0] / a[0], rtol=1e-6)
    # the authors' files: same names, float64, BGR
    auth = tmp_path / "authors_test"
    auth.mkdir()
    np.save(auth / "images_ny.npy", np.load(ours / "images_ny.npy")[..., ::-1].astype(np.float64))
    np.save(auth / "images_gt.npy", np.load(ours / "images_gt.npy").astype(np.float64))
    np.save(auth / "depth_maps.npy", np.load(ours / "depth_maps.npy").astype(np.float64))
    np.save(auth / "alphas.npy", a.astype(np.float64))
    stored = TestSceneDataset(auth)
    assert stored.channel_order == "BGR" and stored.format == "authors"
    torch.testing.assert_close(stored[0][0], noisy.flip(-1))
    rgb = TestSceneDataset(auth, channel_order="RGB")
    torch.testing.assert_close(rgb[0][0], noisy)
    torch.testing.assert_close(rgb[0][1], depth)
    with pytest.raises(ValueError, match="'test' set"):
        SceneDataset(ours, "train", with_params=False)


def test_manifest_reader(ours, tmp_path):
    m = read_manifest(ours / "patches")
    assert m["kind"] == "train_val"
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something_else"}))
    with pytest.raises(ValueError, match="unknown data format"):
        read_manifest(tmp_path)


class _ThreadContext:
    """Two 'processes' as threads: barrier and any() synchronise them as the gloo ones do."""

    def __init__(self, rank: int, world: int, gate, shared: dict, slow_after_barrier: float = 0.0):
        self.rank, self.world_size, self.is_main = rank, world, rank == 0
        self.gate, self.shared, self.slow = gate, shared, slow_after_barrier

    def barrier(self) -> None:
        self.gate.wait()
        if self.slow:
            time.sleep(self.slow)                 # this process falls behind after every barrier

    def any(self, flag: bool) -> bool:
        self.shared[f"flag{self.rank}"] = bool(flag)
        self.gate.wait()                          # every process has contributed
        out = any(self.shared[f"flag{r}"] for r in range(self.world_size))
        self.gate.wait()                          # and read the result
        return out


def run_as_two_processes(work, slow_after_barrier: float = 0.3) -> dict:
    """``work(ctx)`` on two threads standing for two processes (rank 1 falls behind after every
    barrier); returns ``{rank: result}`` and re-raises the first error of either."""
    import threading

    gate, shared, results, errors = threading.Barrier(2), {}, {}, []

    def run(rank: int) -> None:
        try:
            results[rank] = work(_ThreadContext(rank, 2, gate, shared, slow_after_barrier if rank == 1 else 0.0))
        except BaseException as e:                # noqa: BLE001  (re-raised below)
            errors.append(e)
            gate.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    if errors:
        raise errors[0]
    return results


def test_partial_rows_all_processes_see_a_complete_split(tmp_path):
    """A process that falls behind after the barrier still sees the split complete: the main one
    removes the row records only after every process has read them (an earlier version let the slow
    process find them gone, call the split unfinished and leave the others waiting)."""
    from blurry_edges.data import PartialRows

    def work(ctx) -> bool:
        rows = PartialRows(tmp_path / "a.npy", (6, 3), np.float32, ctx, {"w": 1})
        for i in range(ctx.rank, 6, 2):
            rows.array[i] = i
            rows.commit([i])
        return rows.finish()

    results = run_as_two_processes(work)
    assert results == {0: True, 1: True}
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy")[:, 0], np.arange(6, dtype=np.float32))
    assert not list(tmp_path.glob(".a.npy.partial*"))
