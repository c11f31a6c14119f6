"""Focal Track (training-free baseline, Guo et al. ICCV 2017): physics on synthetic planes, the
confidence on textureless regions, and the test scripts / comparison / own-pair inference end to end.

Planes are rendered with the project's PSF (``blurry_edges.synth.psf``: Gaussian of σ_px(z, ρ),
truncated at ⌈3σ⌉, reflect borders) from a smooth random texture.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from blurry_edges.camera import CameraParams
from blurry_edges.focal_track import (FocalTrackConfig, FocalTrackPipeline, as_pair_batch, estimate_noise_gain,
                                      focal_track, sigma_sq_difference_coeffs)
from blurry_edges.infer import main as infer_main
from blurry_edges.models import WEIGHT_FILES, GlobalStage, LocalStage, save_weights
from blurry_edges.evaluate import run_eval_script
from blurry_edges.synth.psf import blur_reflect, gaussian_kernel_1d

CAM = CameraParams()
ALPHA = 190.0


def texture(size: int = 112, smooth: float = 3.0, seed: int = 0) -> np.ndarray:
    """Smooth random RGB texture ``[H, W, 3]`` in [0.1, 0.9]."""
    rng = np.random.default_rng(seed)
    t = ndimage.gaussian_filter(rng.uniform(0, 1, (size, size, 3)), (smooth, smooth, 0))
    return 0.1 + 0.8 * (t - t.min()) / (t.max() - t.min())


def render_plane(tex: np.ndarray, z: float, noise_seed: int | None = None) -> np.ndarray:
    """The pair ``[2, H, W, 3]`` of a fronto-parallel plane at depth ``z`` (counts / α if noisy)."""
    pair = np.stack([blur_reflect(tex, gaussian_kernel_1d(CAM.sigma_px(z, rho))) for rho in CAM.rhos])
    if noise_seed is not None:
        rng = np.random.default_rng(noise_seed)
        pair = np.clip(np.round(rng.poisson(pair * ALPHA) + rng.normal(0, 2, pair.shape)), 0, ALPHA) / ALPHA
    return pair.astype(np.float32)


def test_sigma_sq_difference_is_affine_in_inverse_depth():
    a, b = sigma_sq_difference_coeffs(CAM)
    z = np.linspace(0.5, 2.0, 17)
    np.testing.assert_allclose(CAM.sigma_px(z, CAM.rho_2) ** 2 - CAM.sigma_px(z, CAM.rho_1) ** 2, a / z + b,
                               rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("noisy", [False, True])
def test_plane_depth_recovered_across_the_working_range(noisy):
    """Median depth of the plane's interior within 4 cm everywhere in [0.75, 1.18] m, within 1 cm
    near the middle; the residual error at the range ends is the first-order (heat-equation)
    approximation shrinking large blur differences, not noise."""
    tex = texture()
    for k, z in enumerate(np.linspace(CAM.z_min, CAM.z_max, 6)):
        pair = render_plane(tex, float(z), noise_seed=k if noisy else None)
        m = focal_track(as_pair_batch(pair), CAM, FocalTrackConfig())
        est = float(m["depth_raw"][0, 24:-24, 24:-24].median())
        tol = 0.01 if 0.9 < z < 1.02 else 0.04
        assert abs(est - z) < tol, f"z={z:.3f}: estimated {est:.3f} (noisy={noisy})"


def test_noise_gain_is_estimated_from_the_images():
    pair = render_plane(texture(), 0.95, noise_seed=3)
    kappa = float(estimate_noise_gain(as_pair_batch(pair))[0])
    assert 0.8 / ALPHA < kappa < 1.3 / ALPHA


def test_textureless_regions_get_no_confident_depth():
    tex = texture(128)
    tex[:, 64:] = 0.5                                     # right half: constant gray
    cfg = FocalTrackConfig()
    for seed in (None, 7):                                # noiseless and photon-limited
        pair = render_plane(tex, 0.95, noise_seed=seed)
        m = focal_track(as_pair_batch(pair), CAM, cfg)
        flat = m["confidence"][0, 8:-8, 64 + cfg.window:]
        textured = m["confidence"][0, 20:-20, 20:64 - cfg.window // 2]
        assert float(flat.max()) <= cfg.threshold, f"seed {seed}: flat region confidence {float(flat.max()):.3f}"
        assert bool((m["depth_sparse"][0, 8:-8, 64 + cfg.window:] == 0).all())
        assert float((textured > cfg.threshold).float().mean()) > 0.5
    # exactly constant images: zero confidence everywhere, no depth at all
    const = np.full((2, 40, 40, 3), 0.3, np.float32)
    m = focal_track(as_pair_batch(const), CAM, FocalTrackConfig(window=9))
    assert float(m["confidence"].max()) == 0.0 and float(m["depth_sparse"].max()) == 0.0


def test_layouts_and_batches_agree():
    pair = render_plane(texture(64), 0.9, noise_seed=1)
    cfg = FocalTrackConfig(window=15)
    a = focal_track(as_pair_batch(pair), CAM, cfg)["depth_raw"]
    b = focal_track(as_pair_batch(np.moveaxis(pair, -1, 1)), CAM, cfg)["depth_raw"]
    batch = torch.from_numpy(np.stack([pair, pair[:, ::-1].copy()])).permute(0, 1, 4, 2, 3)
    c = focal_track(as_pair_batch(batch), CAM, cfg)["depth_raw"]
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[0], c[0], rtol=1e-5, atol=1e-5)


def test_pipeline_outputs_match_the_writers():
    out = FocalTrackPipeline(CAM, FocalTrackConfig(window=15)).run(render_plane(texture(48), 1.0, noise_seed=2))
    assert out["color"].shape == (2, 3, 48, 48) and out["sharpened"].shape == (3, 48, 48)
    for k in ("boundary", "confidence", "depth_raw", "depth_sparse", "depth"):
        assert out[k].shape == (48, 48)
    d = out["depth_raw"]
    assert float(d.min()) >= CAM.z_min - 1e-6 and float(d.max()) <= CAM.z_max + 1e-6
    assert torch.equal(out["depth"], torch.where(out["confidence"] > 0.9, d, torch.zeros(())))
    assert out["timing"]["total"] > 0


def test_bad_input_gives_clear_errors():
    with pytest.raises(ValueError, match="odd integer"):
        FocalTrackConfig(window=4)
    with pytest.raises(ValueError, match="prefilter_sigma"):
        FocalTrackConfig(prefilter_sigma=-1.0)
    with pytest.raises(ValueError, match="threshold"):
        FocalTrackConfig(threshold=1.5)
    with pytest.raises(ValueError, match=r"\[2, H, W, C\]"):
        as_pair_batch(np.zeros((3, 20, 20, 3)))
    with pytest.raises(ValueError, match="NaN"):
        as_pair_batch(np.full((2, 20, 20, 3), np.nan))
    with pytest.raises(ValueError, match="smaller than the 31-pixel window"):
        FocalTrackPipeline().run(np.zeros((2, 20, 20, 3), np.float32))


# ---------------------------------------------------------------------------------- end to end
def write_test_set(d: Path, n: int, size: int, seed: int = 0) -> Path:
    """A tiny test set in the authors' format: a textured plane at a per-scene depth, photon counts."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    zs = rng.uniform(0.85, 1.05, n)
    counts = np.stack([np.clip(np.round(rng.poisson(render_plane(texture(size, seed=i), z) * ALPHA)), 0, ALPHA)
                       for i, z in enumerate(zs)])
    np.save(d / "images_ny.npy", counts.astype(np.float64))
    np.save(d / "depth_maps.npy", np.broadcast_to(zs[:, None, None], (n, size, size)).astype(np.float64))
    np.save(d / "alphas.npy", np.full(n, ALPHA))
    return d


SMALL_FT = ["--cuda", "cpu", "--ft_window", "9", "--no_figures"]


def test_test_script_method_focal_track(tmp_path):
    data = write_test_set(tmp_path / "data", 2, 41)
    argv = [*SMALL_FT, "--method", "focal_track", "--data_path", str(data), "--log_path", str(tmp_path)]
    assert run_eval_script(argv) == 0                 # any image size: no --img_size needed
    run = tmp_path / "test_focal_track"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["n_scenes"] == 2 and summary["args"]["method"] == "focal_track"
    maps = np.load(run / "scene_0000.npz")
    for k in ("restored", "sharpened", "refocused", "boundary", "confidence", "depth_raw", "depth_sparse", "depth"):
        assert k in maps.files
    assert np.isfinite(summary["average"]["rmse_cm"]) and summary["average"]["rmse_cm"] < 10.0
    # the big script takes it too (one pass over the whole image)
    assert run_eval_script([*SMALL_FT, "--method", "focal_track", "--data_path", str(data), "--log_path",
                            str(tmp_path), "--max_scenes", "1"], big=True) == 0
    assert (tmp_path / "test_big_focal_track" / "summary.csv").is_file()


def test_compare_without_weights_runs_focal_track_and_says_weights_are_needed(tmp_path, capsys):
    data = write_test_set(tmp_path / "data", 1, 41)
    argv = [*SMALL_FT, "--compare", "--data_path", str(data), "--log_path", str(tmp_path), "--img_size", "41", "41",
            "--model_path", str(tmp_path / "no_weights")]
    assert run_eval_script(argv) == 0
    out = capsys.readouterr().out
    assert "need trained weights" in out and "0.588" in out and "0.806" in out
    rows = {r["key"]: r for r in json.loads((tmp_path / "compare" / "comparison.json").read_text())["rows"]}
    assert rows["focal_track"]["status"] == "measured"
    assert all(rows[k]["status"] == "needs weights" for k in ("sparse", "w", "pp", "dt"))
    assert (tmp_path / "compare" / "focal_track" / "scene_0000.npz").is_file()


def _compare_argv(tmp_path: Path) -> list[str]:
    """--compare over one 25×25 scene with random R = 11 local and global weights (no W, no U-Net)."""
    weights = tmp_path / "weights"
    weights.mkdir()
    torch.manual_seed(0)
    save_weights(LocalStage(11), weights / WEIGHT_FILES["local"])
    torch.save(GlobalStage(8, 8).state_dict(), weights / WEIGHT_FILES["global"])
    data = write_test_set(tmp_path / "data", 1, 25)
    return [*SMALL_FT, "--compare", "--R", "11", "--img_size", "25", "25", "--data_path", str(data),
            "--log_path", str(tmp_path), "--model_path", str(weights)]


def test_compare_with_weights_measures_blurry_edges_rows(tmp_path):
    argv = [*_compare_argv(tmp_path), "--run_name", "cmp"]
    assert run_eval_script(argv) == 0
    rows = {r["key"]: r for r in json.loads((tmp_path / "cmp" / "comparison.json").read_text())["rows"]}
    assert rows["sparse"]["status"] == "measured" and rows["dt"]["status"] == "measured"
    assert rows["w"]["status"] == "needs weights" and "pretrained_global_stage_w.pth" in rows["w"]["note"]
    lines = (tmp_path / "cmp" / "comparison.csv").read_text().splitlines()
    assert lines[0].startswith("method,source,delta1") and any(line.startswith("Ours-PP,paper,0.806") for line in lines)
    # every measured Blurry-Edges row is judged on its own pixels by the constant and by Focal Track
    y = rows["sparse"]["yardsticks"]
    assert 0.75 <= y["constant"] <= 1.18 and 0.0 <= y["coverage"] <= 1.0     # random weights may keep no pixel
    assert set(y["focal_track_same_pixels"]) >= {"delta1", "rmse_cm"} and "slope" in y
    assert any(line.startswith("Ours (sparse): Focal Track,yardstick,") for line in lines)
    # the same table as Markdown: measured rows with their kept pixels, yardsticks, the paper's rows
    md = (tmp_path / "cmp" / "comparison.md").read_text().splitlines()
    assert md[0].startswith("| method | source | δ1 |") and all(line.count("|") == 10 for line in md)
    sparse = next(line for line in md if line.startswith("| Ours (sparse) | measured |"))
    assert f"| {100 * y['coverage']:.0f} % |" in sparse and "| 1 scene |" in sparse
    assert any(line.startswith("| constant ") and "| same pixels |" in line for line in md)
    assert "| Ours-PP | paper | 0.806 | 0.906 | 0.945 | 3.992 | 2.691 |" in "\n".join(md)
    assert any(line.startswith("| Ours-W | measured |") and "needs trained weights" in line for line in md)


def test_bad_script_arguments(tmp_path, capsys):
    data = write_test_set(tmp_path / "data", 1, 41)
    base = ["--cuda", "cpu", "--method", "focal_track", "--data_path", str(data), "--log_path", str(tmp_path)]
    assert run_eval_script([*base, "--ft_window", "4"]) == 2
    assert "odd integer" in capsys.readouterr().err
    assert run_eval_script([*base, "--ft_threshold", "1.5"]) == 2
    assert "threshold" in capsys.readouterr().err
    assert run_eval_script([*base, "--ft_window", "51"]) == 2          # the 41×41 images are smaller
    assert "window" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_eval_script([*base, "--method", "tang"])
    assert "invalid choice" in capsys.readouterr().err


def test_infer_method_focal_track(tmp_path, capsys):
    pair = render_plane(texture(60), 0.95, noise_seed=4)
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(a, pair[0] * ALPHA)
    np.save(b, pair[1] * ALPHA)
    out = tmp_path / "out"
    assert infer_main([str(a), str(b), "--out", str(out), "--alpha", str(ALPHA), "--method", "focal_track",
                       "--ft_window", "15", "--device", "cpu"]) == 0
    depth = np.load(out / "depth.npy")
    assert depth.shape == (60, 60)                                      # no crop to the 147 + 2k grid
    settings = json.loads((out / "settings.json").read_text())
    assert settings["method"] == "focal_track"
    assert np.median(depth[depth > 0]) == pytest.approx(0.95, abs=0.02)
    # too small for the window: a clear error before anything is written
    assert infer_main([str(a), str(b), "--out", str(tmp_path / "o2"), "--method", "focal_track",
                       "--ft_window", "61", "--device", "cpu"]) == 2
    assert "at least 61×61" in capsys.readouterr().err


def test_compare_keeps_the_local_tokens_with_feature_cache(tmp_path, capsys):
    argv = [*_compare_argv(tmp_path), "--feature_cache", str(tmp_path / "tokens")]
    assert run_eval_script([*argv, "--run_name", "a"]) == 0
    assert "1 pair(s) reused (0 from disk), 1 computed" in capsys.readouterr().out     # sparse made it, dt reused it
    assert run_eval_script([*argv, "--run_name", "b"]) == 0
    assert "2 pair(s) reused (1 from disk), 0 computed" in capsys.readouterr().out
    a, b = (json.loads((tmp_path / n / "comparison.json").read_text())["rows"] for n in ("a", "b"))
    assert [r.get("average") for r in a] == [r.get("average") for r in b]
