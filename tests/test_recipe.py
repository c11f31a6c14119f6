"""The CPU training recipe (README "Training on a CPU"): crops of the patch grid, their
pre-calculation, positions in the full grid, compressed schedules, bf16 auto-detection, the
memory plan and gradient accumulation. CPU only, tiny data."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from blurry_edges import memory                                           # noqa: E402
from blurry_edges.losses import GlobalSchedule                            # noqa: E402
from blurry_edges.models.global_stage import (GlobalStage, positional_encoding_2d,   # noqa: E402
                                              positional_encoding_at)
from blurry_edges.patches import CropLayout, PatchGrid                    # noqa: E402
from blurry_edges.features import resolve_bf16                              # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    threads, det, rng = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), torch.get_rng_state()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det)
    torch.set_rng_state(rng)


# ----------------------------------------------------------------------------- crops
def test_crop_window_is_a_window_of_the_full_grid():
    full = PatchGrid(41, 41, 11, 2)                      # 16 × 16 patches
    crops = CropLayout(full, 6)
    assert crops.size == 5 * 2 + 11 and crops.grid.Hp == crops.grid.Wp == 6
    img = torch.rand(1, 3, 41, 41)
    all_patches = full.unfold(img)[0].view(16, 16, 3, 11, 11)
    for origin in crops.draw_origins(5, seed=3).tolist() + [[0, 0], [10, 10]]:
        rows, cols = crops.pixel_window(origin)
        window = crops.grid.unfold(img[..., rows, cols])[0].view(6, 6, 3, 11, 11)
        r0, c0 = origin
        assert torch.equal(window, all_patches[r0:r0 + 6, c0:c0 + 6])
    with pytest.raises(ValueError, match="does not fit"):
        CropLayout(full, 17)
    with pytest.raises(ValueError, match="outside"):
        crops.pixel_window((11, 0))


def test_origins_cover_the_grid_and_depend_only_on_the_seed():
    crops = CropLayout(PatchGrid(41, 41, 11, 2), 6)
    a, b = crops.draw_origins(400, seed=1), crops.draw_origins(400, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, crops.draw_origins(400, seed=2))
    assert a.min() == 0 and a.max() == 10                # every row/column offset 0 … Hp − tokens occurs


def test_positions_of_a_crop_are_those_of_its_place_in_the_full_grid():
    full = positional_encoding_2d(16, 16, 128, 2).view(16, 16, 128)
    origin = torch.tensor([[0, 0], [3, 7], [10, 10]])
    codes = positional_encoding_at(origin, 6, 6, 128, 2).view(3, 6, 6, 128)
    for k, (r0, c0) in enumerate(origin.tolist()):
        torch.testing.assert_close(codes[k], full[r0:r0 + 6, c0:c0 + 6], rtol=0, atol=1e-6)
    net = GlobalStage(6, 6, 2).eval()
    x = torch.rand(3, 36, 38)
    torch.testing.assert_close(net(x, torch.zeros(3, 2, dtype=torch.long)), net(x), rtol=0, atol=1e-6)
    assert not torch.allclose(net(x, origin), net(x))   # the origin reaches the output


def test_crop_precalculation_equals_full_precalculation_on_the_same_patches(tmp_path):
    import global_data_pre_cal
    from blurry_edges.data import SceneDataset
    from blurry_edges.models import LocalStage, save_weights
    from test_training_scripts import write_train_val

    data = write_train_val(tmp_path / "data", 11, 41, 41, n_train=3, n_val=2)
    torch.manual_seed(0)
    save_weights(LocalStage(11), tmp_path / "local.pth")
    common = ["--data_path", str(data), "--local_weights", str(tmp_path / "local.pth"), "--cuda", "cpu",
              "--no_progress", "--bf16", "off"]
    global_data_pre_cal.main(common)
    full = np.load(data / "params_src_train.npy").reshape(3, 2, 16, 16, 19)
    global_data_pre_cal.main(common + ["--crop_tokens", "6", "--max_scenes_train", "2", "--seed", "5"])
    crop = np.load(data / "params_src_train.npy")
    origins = np.load(data / "crop_origins_train.npy")
    assert crop.shape == (2, 2, 36, 19) and origins.shape == (2, 2)
    for i, (r0, c0) in enumerate(origins):
        expect = full[i, :, r0:r0 + 6, c0:c0 + 6].reshape(2, 36, 19)
        np.testing.assert_allclose(crop[i], expect, rtol=1e-4, atol=1e-4)

    ds = SceneDataset(data, "train")
    assert len(ds) == 2 and ds.crop_size == 21
    item = ds[1]
    params, noisy, clean, dist, deri, bdepth, origin = item
    r0, c0 = (int(v) * 2 for v in origins[1])
    full_ds = SceneDataset(data, "train", with_params=False)
    ref = full_ds[1]
    assert torch.equal(origin, torch.from_numpy(origins[1]).long())
    assert torch.equal(noisy, ref[1][:, r0:r0 + 21, c0:c0 + 21])
    assert torch.equal(bdepth, ref[5][r0:r0 + 21, c0:c0 + 21])
    # the Sobel map of the window is the interior of the stored full-size map
    assert torch.equal(deri, ref[4][:, r0:r0 + 19, c0:c0 + 19])


def test_precalculation_stopped_and_resumed_equals_one_run(tmp_path, capsys):
    """--max_minutes stops the pre-calculation after the scenes that fit and publishes nothing; the same
    command with --resume computes only the others, and the files equal an uninterrupted run's."""
    import global_data_pre_cal
    from blurry_edges.models import LocalStage, save_weights
    from test_training_scripts import write_train_val

    data = write_train_val(tmp_path / "data", 11, 41, 41, n_train=3, n_val=2)
    for seed, name in ((0, "a.pth"), (1, "b.pth")):
        torch.manual_seed(seed)
        save_weights(LocalStage(11), tmp_path / name)
    common = ["--data_path", str(data), "--cuda", "cpu", "--no_progress", "--bf16", "off", "--crop_tokens", "6"]
    a = common + ["--local_weights", str(tmp_path / "a.pth")]
    global_data_pre_cal.main(a)
    straight = {s: np.load(data / f"params_src_{s}.npy") for s in ("train", "val")}
    origins = np.load(data / "crop_origins_train.npy")
    for s in ("train", "val"):
        (data / f"params_src_{s}.npy").unlink()

    assert global_data_pre_cal.main(a + ["--max_minutes", "1e-6"]) == []         # one scene, then out of time
    assert not (data / "params_src_train.npy").exists()
    written = np.load(data / ".params_src_train.npy.partial.rank0.npy")
    assert written.tolist() == [0]
    with pytest.raises(ValueError, match="local_weights_id"):                     # other weights: refused
        global_data_pre_cal.main(common + ["--local_weights", str(tmp_path / "b.pth"), "--resume"])
    capsys.readouterr()
    global_data_pre_cal.main(a + ["--resume"])
    assert "1 of 3 rows" in capsys.readouterr().out
    for s in ("train", "val"):
        np.testing.assert_array_equal(np.load(data / f"params_src_{s}.npy"), straight[s])
    np.testing.assert_array_equal(np.load(data / "crop_origins_train.npy"), origins)
    assert not list(data.glob(".params_src_*"))                                  # no partial files left
    stamp = (data / "params_src_train.npy").stat().st_mtime_ns
    global_data_pre_cal.main(a + ["--resume"])                                   # complete: kept as it is
    assert "kept" in capsys.readouterr().out and (data / "params_src_train.npy").stat().st_mtime_ns == stamp
    global_data_pre_cal.main(a + ["--resume", "--max_scenes_train", "2"])          # fewer scenes: computed again
    out = capsys.readouterr().out
    assert "params_src_train.npy is complete" not in out and "params_src_val.npy is complete" in out
    assert np.load(data / "params_src_train.npy").shape == (2, 2, 36, 19)


def test_global_stage_trained_on_crops_runs_on_the_full_grid_and_through_blocks(tmp_path):
    import global_data_pre_cal
    import global_training
    from blurry_edges.models import LocalStage, load_weights, save_weights, weights_id
    from blurry_edges.pipeline import build_pipeline
    from test_training_scripts import write_train_val

    data = write_train_val(tmp_path / "data", 11, 41, 41, n_train=4, n_val=2)
    torch.manual_seed(0)
    save_weights(LocalStage(11), tmp_path / "local.pth")
    global_data_pre_cal.main(["--data_path", str(data), "--local_weights", str(tmp_path / "local.pth"),
                              "--cuda", "cpu", "--no_progress", "--crop_tokens", "6"])
    out = global_training.main(["--data_path", str(data), "--epoch_num", "2", "--batch_size", "2",
                                "--compress_schedule", "--attention_dropout", "0", "--cuda", "cpu",
                                "--model_path", str(tmp_path / "w"), "--log_path", str(tmp_path / "logs"),
                                "--checkpoint_dir", str(tmp_path / "ck"), "--no_progress"])
    assert out["finished"]
    meta = load_weights(GlobalStage(16, 16, 2), out["weights"])
    assert meta["crop_tokens"] == 6 and meta["img_size"] == [41, 41]
    local = LocalStage(11)
    load_weights(local, tmp_path / "local.pth")
    assert meta["local_weights_id"] == weights_id(local.state_dict())   # the tokens' local stage, recorded

    pair = np.random.default_rng(0).random((2, 41, 41, 3)).astype(np.float32)
    notes = []
    for size in (41, 21):                  # the full 16×16 grid, then blocks of the 6×6 training crop
        pipe = build_pipeline(local_weights=tmp_path / "local.pth", global_weights=out["weights"], R=11, stride=2,
                              img_size=(size, size), margin=1, device="cpu", log=notes.append)
        layout = pipe.layout(41, 41)
        assert (layout is None) == (size == 41)
        res = pipe.run(pair)
        assert res["depth_raw"].shape == (41, 41) and torch.isfinite(res["depth_raw"]).all()
    assert not [n for n in notes if "warning" in n]          # the weights belong together: no pairing warning
    torch.manual_seed(1)
    save_weights(LocalStage(11), tmp_path / "other_local.pth")
    build_pipeline(local_weights=tmp_path / "other_local.pth", global_weights=out["weights"], R=11, stride=2,
                   img_size=(41, 41), device="cpu", log=notes.append)
    warned = [n for n in notes if n.startswith("warning")]
    assert len(warned) == 1 and "other_local.pth" in warned[0] and meta["local_weights_id"] in warned[0]


# ----------------------------------------------------------------------------- schedules
def test_compressed_schedule_reaches_the_final_weights_at_the_last_step():
    paper = GlobalSchedule()
    sched = paper.compressed(10)
    assert sched.continuous and sched.dynamic_epoch == pytest.approx((30 / 35, 100 / 35, 200 / 35))
    steps = 7
    weights = [sched.at(e + s / steps) for e in range(10) for s in range(steps)]
    assert weights[0] == paper.at(0)                                   # starts where the paper starts
    assert weights[-1] == paper.final() == sched.final()               # ends on the final weights
    first_final = next(i for i, w in enumerate(weights) if w == paper.final())
    assert first_final / len(weights) == pytest.approx(200 / 350, abs=1.5 / len(weights))
    depth = [w.depth for w in weights]
    assert all(b >= a for a, b in zip(depth, depth[1:]))               # the depth weight only grows
    assert depth[steps] > 100 * depth[0]                               # … and carries weight in epoch 2


def test_per_epoch_schedule_is_unchanged():
    s = GlobalSchedule()
    assert not s.continuous
    assert s.at(29).color == pytest.approx(0.1) and s.at(0).color == 1.0 and s.at(199) == s.final()


# ----------------------------------------------------------------------------- bf16
def test_bf16_auto_follows_the_cpu(monkeypatch):
    import blurry_edges.features as stages

    monkeypatch.setattr(stages, "native_bf16", lambda: False)
    assert resolve_bf16("auto", torch.device("cpu")) is False
    monkeypatch.setattr(stages, "native_bf16", lambda: True)
    assert resolve_bf16("auto", torch.device("cpu")) is True
    assert resolve_bf16("auto", torch.device("cuda")) is False        # GPUs keep the paper's float32
    assert resolve_bf16("off", torch.device("cpu")) is False and resolve_bf16("on", torch.device("cpu")) is True
    with pytest.raises(ValueError, match="auto, on, off"):
        resolve_bf16("maybe", torch.device("cpu"))


def test_global_output_projection_stays_float32_under_autocast():
    net = GlobalStage(4, 4, 2).eval()
    x = torch.rand(1, 16, 38)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    assert out.dtype == torch.float32


# ----------------------------------------------------------------------------- memory
def test_memory_estimate_matches_the_measured_full_size_step():
    # one 147×147 pair (4096 tokens) with attention dropout was measured at ~15 GB on a CPU
    assert 13 * memory.GB < memory.global_step_bytes(1, 4096, 0.1) < 18 * memory.GB
    assert memory.global_step_bytes(1, 4096, 0.0) < 3 * memory.GB
    assert memory.global_step_bytes(8, 576, 0.0) < memory.global_step_bytes(1, 4096, 0.1)


def test_memory_plan_accumulates_or_refuses():
    est = lambda n: n * memory.GB                                           # noqa: E731
    assert memory.plan_batch(8, est, "x", "y", available=100 * memory.GB).micro_batch == 8
    plan = memory.plan_batch(8, est, "x", "y", available=6 * memory.GB)
    assert plan.micro_batch == 4 and plan.accumulation == 2
    with pytest.raises(MemoryError, match="needs about 8.0 GB.*do this"):
        memory.plan_batch(8, est, "x", "do this", available=1 * memory.GB)


def test_global_training_refuses_before_any_step(tmp_path, monkeypatch):
    import global_data_pre_cal
    import global_training
    from blurry_edges.models import LocalStage, save_weights
    from test_training_scripts import write_train_val

    data = write_train_val(tmp_path / "data", 11, 31, 31, n_train=2, n_val=2)
    save_weights(LocalStage(11), tmp_path / "local.pth")
    global_data_pre_cal.main(["--data_path", str(data), "--local_weights", str(tmp_path / "local.pth"),
                              "--cuda", "cpu", "--no_progress"])
    monkeypatch.setattr(memory, "available_bytes", lambda: 100 * memory.MB)
    steps = []
    monkeypatch.setattr(global_training.GlobalTask, "loss", lambda *a, **k: steps.append(1))
    with pytest.raises(MemoryError, match="crop_tokens"):
        global_training.main(["--data_path", str(data), "--epoch_num", "1", "--batch_size", "2", "--cuda", "cpu",
                              "--model_path", str(tmp_path / "w"), "--checkpoint_dir", str(tmp_path / "ck"),
                              "--log_path", str(tmp_path / "logs"), "--no_progress"])
    assert steps == []


class _MeanSquares:
    """A task whose loss is a mean over samples: micro-batches must give the whole batch's gradient."""

    def __new__(cls):
        from blurry_edges.train import Task

        class Linear(Task):
            name = "exp_linear"
            weights_file = "best_run_exp_linear.pth"

            def __init__(self):
                torch.manual_seed(0)
                self.model = torch.nn.Linear(3, 1).double()

            def loss(self, model, batch, weights, train):
                x, y = batch
                return (model(x).squeeze(-1) - y).square().mean()

            def step_bytes(self, samples):
                return samples * memory.GB

        return Linear()


def test_gradient_accumulation_matches_the_whole_batch(tmp_path, monkeypatch):
    from torch.utils.data import TensorDataset

    from blurry_edges.train import DistContext, LoopConfig, fit

    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.rand(8, 3, generator=g, dtype=torch.float64), torch.rand(8, generator=g, dtype=torch.float64))
    results = {}
    for name, free in (("whole", 100), ("split", 3)):         # 3 GB free, 80 % usable: micro-batches of 2
        monkeypatch.setattr(memory, "available_bytes", lambda free=free: free * memory.GB)
        task = _MeanSquares()
        cfg = LoopConfig(epochs=2, batch_size=4, learning_rate=1e-2, seed=0, progress=False,
                         log_path=str(tmp_path / name), model_path=str(tmp_path / name),
                         checkpoint_dir=str(tmp_path / name))
        out = fit(task, data, data, cfg, DistContext(torch.device("cpu")))
        results[name] = (torch.cat([p.detach().flatten() for p in task.model.parameters()]), out["loss_curve"])
    torch.testing.assert_close(results["split"][0], results["whole"][0], rtol=1e-12, atol=1e-12)
    assert results["split"][1] == pytest.approx(results["whole"][1], rel=1e-12)


def test_cosine_learning_rate_warms_up_then_decays_to_its_floor():
    from blurry_edges.train import cosine_lr_factor

    total = 200
    f = [cosine_lr_factor(i, total, 0.05, 0.05) for i in range(total)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)      # 10 warm-up steps
    assert max(f) == pytest.approx(1.0) and f[-1] == pytest.approx(0.05)
    assert all(b <= a + 1e-12 for a, b in zip(f[10:], f[11:]))             # then only decays
