"""The depth-completion U-Net of "Ours-PP" trained on crops of the patch grid (README "Depth
completion" and "Training on a CPU"): the cached depth maps of crops are the matching windows of
the whole image's, each is paired with the same window of the ground truth, one epoch runs end to
end, the weights record the crop size and densify whole test images through the evaluation script.

Geometry for speed: R = 11, stride 2, 41×41 scenes (a 16×16 patch grid) and 8×8-token crops
(25×25 pixels). CPU only, one thread.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from blurry_edges.models import GlobalStage, LocalStage, UNet, load_weights, save_weights, weights_id   # noqa: E402
from blurry_edges.patches import CropLayout, PatchGrid                                   # noqa: E402

R, S, SIZE, T = 11, 2, 41, 8


@pytest.fixture(autouse=True)
def _one_thread():
    threads, det, rng = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), torch.get_rng_state()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det)
    torch.set_rng_state(rng)


def _data_and_weights(tmp_path: Path, token_wise: bool) -> tuple[Path, Path, Path]:
    """A tiny scene set, random local-stage weights and global-stage weights.

    ``token_wise``: the global stage's attention adds nothing (zero output projections), so each
    token's output depends only on that token and its position: a crop's tokens then give exactly
    the outputs they give in the whole grid, and the two caches can be compared pixel by pixel.
    """
    from test_training_scripts import write_train_val

    data = write_train_val(tmp_path / "data", R, SIZE, SIZE, n_train=2, n_val=2)
    torch.manual_seed(0)
    local = save_weights(LocalStage(R), tmp_path / "local.pth")
    side = (SIZE - R) // S + 1
    glob = GlobalStage(side, side, S)
    if token_wise:
        with torch.no_grad():
            for layer in glob.encoder.layers:
                layer.self_attn.out_proj.weight.zero_()
                layer.self_attn.out_proj.bias.zero_()
    glob_file = save_weights(glob, tmp_path / "global.pth", meta={"R": R, "stride": S})
    return data, local, glob_file


def _precal(data: Path, local: Path, *extra: str) -> None:
    import global_data_pre_cal

    global_data_pre_cal.main(["--data_path", str(data), "--local_weights", str(local), "--cuda", "cpu",
                              "--no_progress", "--bf16", "off", *extra])


def _train_pp(tmp_path: Path, data: Path, glob: Path, run: str) -> dict:
    import depth_completion_training

    return depth_completion_training.main([
        "--data_path", str(data), "--global_weights", str(glob), "--epoch_num", "1", "--batch_size", "2",
        "--cuda", "cpu", "--bf16", "off", "--no_progress", "--model_path", str(tmp_path / run),
        "--log_path", str(tmp_path / run / "logs"), "--checkpoint_dir", str(tmp_path / run / "ck")])


def test_crop_cache_is_the_window_of_the_whole_image_cache(tmp_path):
    from blurry_edges.data import SparseDensePairs

    data, local, glob = _data_and_weights(tmp_path, token_wise=True)
    _precal(data, local)
    whole_run = _train_pp(tmp_path, data, glob, "whole")
    whole = np.load(data / "sparse_depth_train.npy")
    assert whole.shape == (2, SIZE, SIZE)
    assert load_weights(UNet(), whole_run["weights"])["crop_tokens"] is None

    _precal(data, local, "--crop_tokens", str(T), "--seed", "5")
    crop_run = _train_pp(tmp_path, data, glob, "crops")             # another layout: the cache is rebuilt
    assert crop_run["finished"]
    crop = np.load(data / "sparse_depth_train.npy")
    info = json.loads((data / "sparse_depth_train.json").read_text())
    full = PatchGrid(SIZE, SIZE, R, S)
    layout = CropLayout(full, T)
    assert crop.shape == (2, layout.size, layout.size) and info["crop_tokens"] == T
    meta = load_weights(UNet(), crop_run["weights"])
    assert meta["crop_tokens"] == T and meta["img_size"] == [SIZE, SIZE] and (meta["R"], meta["stride"]) == (R, S)
    glob_model = GlobalStage(stride=S)
    load_weights(glob_model, glob)
    assert meta["global_weights_id"] == weights_id(glob_model.state_dict())   # the maps' global stage

    origins = np.load(data / "crop_origins_train.npy")
    compared = owned = 0
    for i, origin in enumerate(origins):
        rows, cols = layout.pixel_window(origin)
        # pixels whose every covering patch lies inside the crop fold the same patches in both maps
        same = (layout.grid.coverage() == full.coverage()[rows, cols]).numpy()
        np.testing.assert_allclose(crop[i][same], whole[i][rows, cols][same], rtol=1e-5, atol=1e-6)
        compared += int(same.sum())
        owned += int((crop[i][same] > 0).sum())
    assert compared >= 2 * 36 and owned > 0                  # a real comparison, depths included

    pairs = SparseDensePairs(data / "sparse_depth_train.npy", data, "train", layout, torch.from_numpy(origins).long())
    dense = np.load(data / "image_depths_train.npy")
    for i, origin in enumerate(origins):
        sparse_i, dense_i = pairs[i]
        rows, cols = layout.pixel_window(origin)
        assert torch.equal(sparse_i, torch.from_numpy(crop[i]))
        assert torch.equal(dense_i, torch.from_numpy(dense[i][rows, cols]))


def test_cache_built_by_two_processes_is_the_one_process_cache(tmp_path):
    """Two processes (threads with a shared barrier, as under torchrun) each compute their share of
    the scenes' maps; the published cache equals the one-process cache (one scene per pass in both,
    so each map is the same computation) and no partial file is left."""
    import argparse
    import threading

    import depth_completion_training
    from test_data import _ThreadContext, run_as_two_processes

    from blurry_edges.camera import CameraParams
    from blurry_edges.data import SceneDataset
    from blurry_edges.wedges import WedgeRenderer

    data, local, glob = _data_and_weights(tmp_path, token_wise=False)
    _precal(data, local)
    grid = PatchGrid(SIZE, SIZE, R, S)
    model = GlobalStage(grid.Hp, grid.Wp, S)
    load_weights(model, glob)
    model.eval()
    renderer = WedgeRenderer(R, CameraParams())
    scenes = SceneDataset(str(data), "train", with_params=True, with_depth=True)

    def build(folder: str, ctx) -> None:
        ctx.device = torch.device("cpu")
        args = argparse.Namespace(cache_path=str(tmp_path / folder), recompute_cache=False, precal_batch=1,
                                  num_workers=0, progress=False, global_bf16=False, global_weights=str(glob), R=R,
                                  stride=S, data_path=str(data))
        depth_completion_training.build_sparse_depth(args, "train", model, renderer, grid, ctx, scenes)

    build("one", _ThreadContext(0, 1, threading.Barrier(1), {}))
    run_as_two_processes(lambda ctx: build("two", ctx), slow_after_barrier=0.2)
    one, two = (np.load(tmp_path / f / "sparse_depth_train.npy") for f in ("one", "two"))
    assert one.shape == (2, SIZE, SIZE) and (one > 0).any()   # maps with depths in them, not only zeros
    np.testing.assert_array_equal(two, one)                   # scene by scene, the same computation
    assert not list((tmp_path / "two").glob(".sparse_depth_train.npy.partial*"))


def test_crop_cache_comes_from_the_global_stage_at_the_crops_place(tmp_path):
    """With attention the maps of a crop differ from the whole image's; they are the global stage's
    on the crop's tokens, with the positional codes of the crop's place in the full grid."""
    from blurry_edges.camera import CameraParams
    from blurry_edges.data import SceneDataset
    from blurry_edges.features import global_depth_maps
    from blurry_edges.wedges import WedgeRenderer

    data, local, glob = _data_and_weights(tmp_path, token_wise=False)
    _precal(data, local, "--crop_tokens", str(T), "--seed", "3")
    _train_pp(tmp_path, data, glob, "crops")
    cache = torch.from_numpy(np.load(data / "sparse_depth_val.npy"))
    scenes = SceneDataset(data, "val")
    params = torch.stack([scenes[i][0] for i in range(len(scenes))])
    layout = CropLayout(PatchGrid(SIZE, SIZE, R, S), T)
    model = GlobalStage(T, T, S)
    load_weights(model, glob)
    renderer = WedgeRenderer(R, CameraParams())
    at_place, _ = global_depth_maps(model.eval(), renderer, layout.grid, params, origin=scenes.crop_origins)
    at_zero, _ = global_depth_maps(model, renderer, layout.grid, params)
    torch.testing.assert_close(cache, at_place, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(cache, at_zero)                # the origin reached the global stage


def test_unet_trained_on_crops_runs_on_whole_images():
    """The U-Net is convolutional: the 67×67 crops of the CPU recipe and the paper's 147×147 maps."""
    net = UNet().eval()
    with torch.no_grad():
        for size in (67, 147):
            assert net(torch.rand(1, 1, size, size)).shape == (1, 1, size, size)


def test_crop_trained_weights_densify_whole_test_images(tmp_path):
    from blurry_edges.evaluate import run_eval_script
    from test_eval_scripts import write_authors_set

    data, local, glob = _data_and_weights(tmp_path, token_wise=False)
    _precal(data, local, "--crop_tokens", str(T))
    pp = _train_pp(tmp_path, data, glob, "crops")
    test_set = write_authors_set(tmp_path / "data_test", 1, SIZE)
    argv = ["--R", str(R), "--img_size", str(SIZE), str(SIZE), "--cuda", "cpu", "--data_path", str(test_set),
            "--model_path", str(tmp_path / "none"), "--local_weights", str(local), "--global_weights", str(glob),
            "--pp_weights", pp["weights"], "--densify", "pp", "--log_path", str(tmp_path / "eval"),
            "--max_scenes", "1", "--no_figures", "--no_progress"]
    assert run_eval_script(argv) == 0
    maps = np.load(tmp_path / "eval" / "test_pp" / "scene_0000.npz")
    assert maps["depth"].shape == (SIZE, SIZE) and np.isfinite(maps["depth"]).all()
    summary = json.loads((tmp_path / "eval" / "test_pp" / "summary.json").read_text())
    assert summary["n_scenes"] == 1 and summary["config"]["densify"] == "pp"


def test_depth_completion_names_the_command_that_makes_tokens(tmp_path):
    import depth_completion_training
    from test_training_scripts import write_train_val

    data = write_train_val(tmp_path / "data", R, SIZE, SIZE, n_train=2, n_val=2)
    with pytest.raises(FileNotFoundError, match=r"global_data_pre_cal\.py --data_path .*--crop_tokens"):
        depth_completion_training.main(["--data_path", str(data), "--cuda", "cpu", "--no_progress",
                                        "--model_path", str(tmp_path / "w"), "--log_path", str(tmp_path / "logs")])


def test_pairs_check_the_cache_against_the_layout(tmp_path):
    from blurry_edges.data import SparseDensePairs
    from test_training_scripts import write_train_val

    data = write_train_val(tmp_path / "data", R, SIZE, SIZE, n_train=2, n_val=2)
    layout = CropLayout(PatchGrid(SIZE, SIZE, R, S), T)
    np.save(tmp_path / "whole.npy", np.zeros((2, SIZE, SIZE), np.float32))
    np.save(tmp_path / "crops.npy", np.zeros((1, layout.size, layout.size), np.float32))   # first scene only
    origins = torch.tensor([[0, 8]])
    with pytest.raises(ValueError, match="--recompute_cache"):          # whole-image maps read as crops
        SparseDensePairs(tmp_path / "whole.npy", data, "train", layout, torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="--recompute_cache"):          # crop maps read as whole images
        SparseDensePairs(tmp_path / "crops.npy", data, "train")
    with pytest.raises(ValueError, match="both"):
        SparseDensePairs(tmp_path / "crops.npy", data, "train", layout)
    pairs = SparseDensePairs(tmp_path / "crops.npy", data, "train", layout, origins)
    assert len(pairs) == 1
    sparse, dense = pairs[0]
    full = np.load(data / "image_depths_train.npy")[0]
    assert sparse.shape == dense.shape == (layout.size, layout.size)
    assert torch.equal(dense, torch.from_numpy(full[0:layout.size, 16:16 + layout.size]))


def test_the_layout_of_the_tokens_is_found_and_checked(tmp_path):
    """``data.precal_crops``, shared by global_training.py and depth_completion_training.py."""
    from blurry_edges.data import SceneDataset, precal_crops
    from test_training_scripts import write_train_val

    data = write_train_val(tmp_path / "data", R, SIZE, SIZE, n_train=2, n_val=2)
    full = PatchGrid(SIZE, SIZE, R, S)
    for split in ("train", "val"):
        np.save(data / f"params_src_{split}.npy", np.zeros((2, 2, T * T, 19), np.float32))
    np.save(data / "crop_origins_train.npy", np.zeros((2, 2), np.int16))
    with pytest.raises(ValueError, match="--crop_tokens"):          # crops in one split only
        precal_crops(SceneDataset(data, "train"), SceneDataset(data, "val"), full)
    np.save(data / "crop_origins_val.npy", np.ones((2, 2), np.int16))
    crops = precal_crops(SceneDataset(data, "train"), SceneDataset(data, "val"), full)
    assert crops.tokens == T and crops.size == (T - 1) * S + R
    for split in ("train", "val"):                                    # whole-image tokens of stride 2 …
        (data / f"crop_origins_{split}.npy").unlink()
        np.save(data / f"params_src_{split}.npy", np.zeros((2, 2, full.num_patches, 19), np.float32))
    train, val = SceneDataset(data, "train"), SceneDataset(data, "val")
    assert precal_crops(train, val, full) is None
    with pytest.raises(ValueError, match="--stride"):                 # … read with stride 3
        precal_crops(train, val, PatchGrid(SIZE, SIZE, R, 3))
