"""The training scripts end to end on tiny data sets written here in this implementation's format:
local training → pre-calculation → global training for R = 11 (stride 2) and R = 31 (stride 3),
the W variant and the depth-completion U-Net, explained errors for mismatched settings, and
``torchrun`` with two CPU processes (gloo) ending with identical weights on both ranks.

Run as ``torchrun ... tests/test_training_scripts.py OUT_DIR [local_training options]`` this file is
the per-rank worker of the last test.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(autouse=True)
def _quiet_global_state():
    """The scripts seed the RNGs and the global stage asks for deterministic algorithms; give the
    rest of the test session its state back. One thread: tiny tensors, busy 2-core machines."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    rng = torch.get_rng_state()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det)
    torch.set_rng_state(rng)


def write_train_val(root: Path, R: int, H: int, W: int, n_train: int = 4, n_val: int = 2) -> Path:
    """A tiny scene + patch data set in our on-disk layout (float32 arrays, α = 1, a manifest)."""
    from blurry_edges.camera import CameraParams
    from test_training import make_patches, make_scenes

    (root / "patches").mkdir(parents=True)
    pad = lambda x: np.pad(x, [(0, 0)] * (x.ndim - 3) + [(1, 1), (1, 1), (0, 0)])   # noqa: E731  (uncropped Sobel)
    for split, n, seed in (("train", n_train, 0), ("val", n_val, 1)):
        sc = [t.numpy() for t in make_scenes(n, H, W, R, 2, seed=seed).tensors]
        _, noisy, clean, dist, deri, bdepth, depth = sc
        arrays = {"images_ny": noisy, "images_gt": clean * 255.0, "alphas": np.ones(n, np.float32),
                  "boundary_distances": dist, "derivative_maps": pad(deri), "boundary_depths": bdepth,
                  "image_depths": depth}
        for name, arr in arrays.items():
            np.save(root / f"{name}_{split}.npy", arr.astype(np.float32))
        pt = [t.numpy() for t in make_patches(2 * n, R, seed=seed).tensors]
        p_arrays = {"patches_ny": pt[0], "patches_gt": pt[1] * 255.0, "alphas": np.ones(2 * n, np.float32),
                    "boundary_distances": pt[2], "derivative_maps": pad(pt[3])}
        for name, arr in p_arrays.items():
            np.save(root / "patches" / f"{name}_{split}.npy", arr.astype(np.float32))
    manifest = {"format": "blurry_edges_v1", "kind": "train_val", "R": R, "img_size": [H, W],
                "camera": CameraParams().to_dict(), "files": {}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def _common(tmp: Path) -> list[str]:
    return ["--cuda", "cpu", "--model_path", str(tmp / "w"), "--log_path", str(tmp / "logs"),
            "--checkpoint_dir", str(tmp / "ck"), "--no_progress"]


@pytest.mark.parametrize("R, stride, size", [(11, 2, 31), (31, 3, 41)])
def test_three_scripts_end_to_end(tmp_path, R, stride, size):
    import global_data_pre_cal
    import global_training
    import local_training
    from blurry_edges.models import GlobalStage, LocalStage, load_weights

    data = write_train_val(tmp_path / "data", R, size, size)
    c = _common(tmp_path)
    out = local_training.main(["--data_path", str(data), "--epoch_num", "1", "--batch_size", "4"] + c)
    local_w = Path(out["weights"])
    assert out["finished"] and local_w.name == "best_run_exp_local_stage.pth"
    assert load_weights(LocalStage(R), local_w)["R"] == R
    if R == 11:                     # a warm restart of the finished run: its own outputs, the source's moments
        restart = ["--data_path", str(data), "--epoch_num", "1", "--batch_size", "4", "--lr_schedule", "cosine",
                   "--restart_from", str(tmp_path / "ck" / "exp_local_stage_last.pt")]
        with pytest.raises(SystemExit, match="--restart_from"):
            local_training.main(restart + ["--init_from", str(local_w)] + c)
        again = local_training.main(restart + _common(tmp_path / "restart"))
        assert again["finished"] and load_weights(LocalStage(R), again["weights"])["args"]["restart_from"]

    with pytest.raises(ValueError, match="--R"):            # data made with R, weights asked for another
        global_data_pre_cal.main(["--data_path", str(data), "--local_weights", str(local_w), "--R", str(R + 2)] + c[:2])
    global_data_pre_cal.main(["--data_path", str(data), "--local_weights", str(local_w), "--stride", str(stride),
                              "--no_progress"] + c[:2])
    P = ((size - R) // stride + 1) ** 2
    params = np.load(data / "params_src_train.npy")
    assert params.shape == (4, 2, P, 19) and params.dtype == np.float32 and np.isfinite(params).all()
    assert json.loads((data / "params_src_train.json").read_text())["stride"] == stride

    out = global_training.main(["--data_path", str(data), "--epoch_num", "1", "--batch_size", "2"] + c)
    side = (size - R) // stride + 1
    meta = load_weights(GlobalStage(side, side, stride), out["weights"])
    assert (meta["R"], meta["stride"]) == (R, stride) and out["finished"]
    with pytest.raises(ValueError, match="stride"):
        load_weights(GlobalStage((size - R) // 2 + 1, (size - R) // 2 + 1, stride + 1), out["weights"])
    with pytest.raises(ValueError, match="--stride"):       # tokens pre-calculated with another stride
        global_training.main(["--data_path", str(data), "--epoch_num", "1", "--batch_size", "2",
                              "--stride", str(stride + 1)] + c)
    for name in ("exp_local_stage", "exp_global_stage"):
        assert (tmp_path / "logs" / f"loss_curve_{name}.png").is_file()
        assert (tmp_path / "logs" / f"{name}_training.txt").read_text().startswith("Arguments:")


def test_w_variant_and_depth_completion_scripts(tmp_path):
    import depth_completion_training
    import global_data_pre_cal
    import global_training
    from blurry_edges.models import LocalStage, UNet, load_weights, save_weights

    data = write_train_val(tmp_path / "data", 11, 31, 31)
    c = _common(tmp_path)
    torch.manual_seed(0)
    save_weights(LocalStage(11), tmp_path / "local.pth")
    global_data_pre_cal.main(["--data_path", str(data), "--local_weights", str(tmp_path / "local.pth"),
                              "--no_progress", "--cuda", "cpu"])
    sparse = global_training.main(["--data_path", str(data), "--epoch_num", "1", "--batch_size", "2"] + c)
    w = global_training.main(["--data_path", str(data), "--epoch_num", "1", "--batch_size", "2", "--densify", "w",
                              "--init_from", sparse["weights"], "--dynamic_epoch", "0", "0", "0"] + c)
    assert Path(w["weights"]).name == "best_run_exp_global_stage_w.pth" and w["finished"]

    args = ["--data_path", str(data), "--epoch_num", "1", "--batch_size", "2", "--global_weights", sparse["weights"]] + c
    pp = depth_completion_training.main(args)
    assert Path(pp["weights"]).name == "best_run_exp_depth_completion_pp.pth"
    load_weights(UNet(), pp["weights"])
    cache = np.load(data / "sparse_depth_train.npy")
    assert cache.shape == (4, 31, 31) and cache.dtype == np.float32
    assert ((cache == 0) | ((cache > 0.5) & (cache < 2.0))).all()          # metres, 0 = no estimate
    stamp = (data / "sparse_depth_train.npy").stat().st_mtime_ns
    depth_completion_training.main(args + ["--resume"])                     # finished: cache reused, no epochs
    assert (data / "sparse_depth_train.npy").stat().st_mtime_ns == stamp

    # --init_from: the U-Net starts from given weights (lr 0 keeps its parameters; BatchNorm statistics move)
    start = ["--data_path", str(data), "--epoch_num", "1", "--batch_size", "2", "--global_weights", sparse["weights"],
             "--learning_rate", "0", "--init_from", pp["weights"]]
    with pytest.raises(SystemExit, match="--restart_from"):
        depth_completion_training.main(start + ["--restart_from", str(tmp_path / "ck" / "exp_depth_completion_pp_last.pt")]
                                       + _common(tmp_path / "both"))
    init = depth_completion_training.main(start + _common(tmp_path / "init"))
    src, got = UNet(), UNet()
    load_weights(src, pp["weights"])
    meta = load_weights(got, init["weights"])
    assert meta["args"]["init_from"] == pp["weights"]
    want, fresh = dict(src.named_parameters()), dict(UNet().named_parameters())
    for name, p in got.named_parameters():
        assert torch.equal(p, want[name]), name
    assert any(not torch.equal(p, fresh[n]) for n, p in want.items())     # the source is not a fresh start


def _state_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_torchrun_two_cpu_processes_agree(tmp_path):
    data = write_train_val(tmp_path / "data", 11, 31, 31, n_train=4, n_val=2)
    out = tmp_path / "ranks"
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__)), str(out), "--data_path", str(data / "patches"), "--epoch_num", "1",
           "--batch_size", "4"] + _common(tmp_path)
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    hashes = [(out / f"rank{r}.txt").read_text() for r in range(2)]
    assert hashes[0] == hashes[1]
    assert (tmp_path / "w" / "best_run_exp_local_stage.pth").is_file()
    assert "1 " in (tmp_path / "logs" / "exp_local_stage_training.txt").read_text()


if __name__ == "__main__":           # one rank of test_torchrun_two_cpu_processes_agree
    import local_training

    result = local_training.main(sys.argv[2:])
    Path(sys.argv[1], f"rank{os.environ['RANK']}.txt").write_text(_state_hash(result["model"]))
