"""blurry_edges_test.py / blurry_edges_test_big.py end to end on tiny test sets with random weights.

Geometry for speed: R = 11 and 25×25 images (an 8×8 patch grid; ``--img_size 25 25``); large images
are 37×37 = 2×2 blocks of 25 with one margin patch. Weights are written under the authors' file
names (raw state dicts, as they publish them; the local stage as our checkpoint format).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from blurry_edges.models import WEIGHT_FILES, GlobalStage, LocalStage, UNet, save_weights
from blurry_edges.evaluate import run_eval_script

ROOT = Path(__file__).resolve().parents[1]
R, H, GRID = 11, 25, 8
SMALL = ["--R", "11", "--img_size", "25", "25", "--cuda", "cpu"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    save_weights(LocalStage(R), d / WEIGHT_FILES["local"])
    torch.save(GlobalStage(GRID, GRID).state_dict(), d / WEIGHT_FILES["global"])
    torch.save(GlobalStage(GRID, GRID).state_dict(), d / WEIGHT_FILES["global_w"])
    torch.save(UNet().state_dict(), d / WEIGHT_FILES["pp"])
    return d


def write_authors_set(d: Path, n: int, size: int, seed: int = 0) -> Path:
    """The authors' format: float64 photon counts [N, 2, H, W, 3], depth [N, H, W], α [N]."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    alphas = rng.uniform(180, 200, n)
    clean = np.full((n, 2, size, size, 3), 0.25)
    clean[:, :, :, size // 2:] = 0.75
    counts = np.clip(np.round(rng.poisson(clean * alphas[:, None, None, None, None])), 0, None)
    depth = np.broadcast_to(np.linspace(0.8, 1.1, size)[None, None, :], (n, size, size))
    np.save(d / "images_ny.npy", counts.astype(np.float64))
    np.save(d / "depth_maps.npy", np.ascontiguousarray(depth, dtype=np.float64))
    np.save(d / "alphas.npy", alphas.astype(np.float64))
    return d


@pytest.fixture(scope="module")
def authors_set(tmp_path_factory) -> Path:
    return write_authors_set(tmp_path_factory.mktemp("data") / "data_test", 2, H)


def _check_run(out_dir: Path, n: int, figures: bool, size: int = H) -> dict:
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["n_scenes"] == n and len(summary["per_scene"]) == n
    for i in range(n):
        assert (out_dir / f"scene_{i:04d}.npz").is_file()
        assert (out_dir / f"scene_{i:04d}.png").is_file() == figures
        maps = np.load(out_dir / f"scene_{i:04d}.npz")
        assert maps["depth"].shape == (size, size) and maps["restored"].shape == (2, size, size, 3)
        assert maps["noisy"].shape == (2, size, size, 3) and maps["gt_depth"].shape == (size, size)
        for k in ("sharpened", "refocused", "boundary", "confidence", "depth_raw", "depth_sparse"):
            assert k in maps.files
    for row in summary["per_scene"]:
        for k in ("delta1", "delta2", "delta3"):
            assert np.isnan(row[k]) or 0.0 <= row[k] <= 1.0
        assert np.isnan(row["rmse_cm"]) or 0.0 <= row["rmse_cm"] <= 100 * (1.18 - 0.75)
        assert row["time_s"] > 0
    assert set(summary["average"]) >= {"delta1", "delta2", "delta3", "rmse_cm", "absrel"}
    assert summary["mean_time_s"] > 0
    lines = (out_dir / "summary.csv").read_text().strip().splitlines()
    assert lines[0].startswith("scene,delta1") and lines[-1].startswith("mean,") and len(lines) == n + 2
    return summary


@pytest.mark.parametrize("mode", ["none", "w", "pp", "dt"])
def test_regular_script_every_mode(weights, authors_set, tmp_path, mode):
    n = 2 if mode == "none" else 1
    figures = mode in ("none", "pp")
    argv = [*SMALL, "--model_path", str(weights), "--data_path", str(authors_set), "--log_path", str(tmp_path),
            "--densify", mode, "--max_scenes", str(n)] + ([] if figures else ["--no_figures"])
    assert run_eval_script(argv) == 0
    run = tmp_path / f"test_{'sparse' if mode == 'none' else mode}"
    summary = _check_run(run, n, figures)
    assert summary["args"]["densify"] == mode
    assert summary["config"]["densify"] == mode
    if mode == "none":                     # sparse output: no depth where the confidence is ≤ 0.05
        m = np.load(run / "scene_0000.npz")
        assert np.all(m["depth"][m["confidence"] <= 0.05] == 0)


def test_one_block_scenes_show_no_stage_bars(weights, authors_set, tmp_path, capsys):
    """The evaluation of one-block scenes (147×147 at the paper's size) keeps only its scene bar."""
    argv = [*SMALL, "--model_path", str(weights), "--data_path", str(authors_set), "--log_path", str(tmp_path),
            "--max_scenes", "1", "--no_figures"]
    assert run_eval_script(argv) == 0
    out = capsys.readouterr().out
    assert "scenes:" in out and "local stage:" not in out and "global stage:" not in out


@pytest.mark.parametrize("flag, native, bf16", [([], False, False), ([], True, True), (["--bf16"], False, True),
                                                (["--bf16", "off"], True, False),
                                                (["--bf16", "auto"], False, False), (["--bf16", "auto"], True, True)])
def test_bf16_option_of_the_test_scripts(weights, authors_set, tmp_path, monkeypatch, flag, native, bf16):
    """--bf16 {auto,on,off}: default auto = on only where the CPU has native bf16, bare = on, off = float32;
    the resolved precision names the run folder and is recorded in summary.json."""
    import blurry_edges.features as features

    monkeypatch.setattr(features, "native_bf16", lambda: native)
    argv = [*SMALL, "--model_path", str(weights), "--data_path", str(authors_set), "--log_path", str(tmp_path),
            "--max_scenes", "1", "--no_figures", "--no_progress", *flag]
    assert run_eval_script(argv) == 0
    summary = json.loads((tmp_path / ("test_sparse_bf16" if bf16 else "test_sparse") / "summary.json").read_text())
    assert summary["config"]["bf16"] is bf16 and summary["precision"]["bf16"] is bf16
    assert summary["precision"]["bf16_requested"] == summary["args"]["bf16"] == (flag[1] if len(flag) == 2 else
                                                                                 "on" if flag else "auto")


def test_densify_flag_without_value_means_sparse(weights, authors_set, tmp_path):
    argv = [*SMALL, "--model_path", str(weights), "--data_path", str(authors_set), "--log_path", str(tmp_path),
            "--max_scenes", "1", "--no_figures", "--run_name", "r", "--densify"]
    assert run_eval_script(argv) == 0
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["args"]["densify"] == "none"


def test_our_format_from_the_generator(weights, tmp_path):
    data = tmp_path / "ours"
    try:
        from blurry_edges.synth.cli import run_test
        run_test(["--source", "builtin", "--num_sample_test", "1", "--img_size", "25", "25",
                  "--data_path", str(data), "--quiet", "--workers", "1"])
    except (ImportError, SystemExit, Exception) as e:           # the generator belongs to another module
        pytest.skip(f"the test-set generator could not make a tiny set here: {e!r}")
    assert (data / "manifest.json").is_file()
    argv = [*SMALL, "--model_path", str(weights), "--data_path", str(data), "--log_path", str(tmp_path),
            "--no_figures", "--run_name", "ours_eval"]
    assert run_eval_script(argv) == 0
    _check_run(tmp_path / "ours_eval", 1, False)


def test_big_script_on_one_block_equals_regular(weights, authors_set, tmp_path):
    common = ["--model_path", str(weights), "--data_path", str(authors_set), "--log_path", str(tmp_path),
              "--max_scenes", "1", "--no_figures"]
    assert run_eval_script([*SMALL, *common, "--run_name", "regular"]) == 0
    assert run_eval_script([*SMALL, *common, "--run_name", "big", "--n_margin_patch", "1"], big=True) == 0
    a, b = np.load(tmp_path / "regular" / "scene_0000.npz"), np.load(tmp_path / "big" / "scene_0000.npz")
    for k in ("restored", "sharpened", "refocused", "boundary", "confidence", "depth_raw", "depth"):
        np.testing.assert_allclose(a[k], b[k], atol=1e-5, err_msg=k)


def test_big_script_on_several_blocks(weights, tmp_path, capsys):
    data = write_authors_set(tmp_path / "big", 1, 37, seed=5)       # 25 + 12: 2×2 blocks
    argv = [*SMALL, "--model_path", str(weights), "--data_path", str(data), "--log_path", str(tmp_path),
            "--n_margin_patch", "1", "--big_img_size", "37", "37"]
    assert run_eval_script(argv, big=True) == 0
    _check_run(tmp_path / "test_big_sparse", 1, True, size=37)
    shown = capsys.readouterr().out                 # the stage bars of each pair, under the scene bar
    for stage in ("scenes:", "local stage:", "global stage:", "render:", "densify (none):"):
        assert stage in shown, stage
    assert run_eval_script([*argv, "--no_progress", "--no_figures", "--run_name", "quiet"], big=True) == 0
    hidden = capsys.readouterr().out
    assert "%|" not in hidden and "scene 0000: delta1=" in hidden       # no bar; the per-scene line stays
    # a wrong --big_img_size is a clear error
    assert run_eval_script([*argv, "--big_img_size", "41", "41"], big=True) == 2


def test_no_test_set_says_how_to_make_one(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "blurry_edges_test.py"), "--data_path",
                          str(tmp_path / "missing"), "--cuda", "cpu"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2
    assert "test_data_generator.py" in res.stderr


def test_missing_and_overridden_weights(weights, authors_set, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    base = [*SMALL, "--data_path", str(authors_set), "--log_path", str(tmp_path), "--max_scenes", "1", "--no_figures"]
    assert run_eval_script([*base, "--model_path", str(empty)]) == 2
    assert "pretrained_local_stage.pth" in capsys.readouterr().err
    # weight files under other names, passed one by one
    for key in ("local", "global"):
        shutil.copy(weights / WEIGHT_FILES[key], empty / f"mine_{key}.pth")
    assert run_eval_script([*base, "--model_path", str(empty), "--local_weights", str(empty / "mine_local.pth"),
                            "--global_weights", str(empty / "mine_global.pth"), "--run_name", "mine"]) == 0
    # pp without its U-Net file names the missing file
    assert run_eval_script([*base, "--model_path", str(empty), "--local_weights", str(empty / "mine_local.pth"),
                            "--global_weights", str(empty / "mine_global.pth"), "--densify", "pp"]) == 2
    assert "pretrained_depth_completion_pp.pth" in capsys.readouterr().err


def test_size_mismatch_is_a_clear_error(weights, authors_set, tmp_path, capsys):
    argv = ["--R", "11", "--img_size", "147", "147", "--cuda", "cpu", "--model_path", str(weights),
            "--data_path", str(authors_set), "--log_path", str(tmp_path)]
    assert run_eval_script(argv) == 2
    assert "--img_size 25 25" in capsys.readouterr().err


def test_out_of_the_box_makes_and_evaluates_a_default_test_set(tmp_path, monkeypatch, weights, capsys):
    """No test set at the default location: a small builtin one is made (and said), then evaluated;
    a second run reuses it."""
    import blurry_edges.evaluate as evaluate

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(evaluate.DEFAULT_TEST_SET, False, ("./data/data_test_builtin", 2, (25, 25)))
    args = ["--model_path", str(weights), "--max_scenes", "1", "--no_figures"] + SMALL
    assert run_eval_script(args) == 0
    out = capsys.readouterr().out
    assert "making a small one from the builtin textures" in out
    made = tmp_path / "data" / "data_test_builtin"
    assert (made / "manifest.json").is_file()
    summary = json.loads(next((tmp_path / "logs").rglob("summary.json")).read_text())
    assert summary["n_scenes"] == 1 and "rmse_cm" in summary["per_scene"][0]     # random weights: may be NaN
    assert run_eval_script(args + ["--overwrite"]) == 0
    assert "using the builtin one" in capsys.readouterr().out
    assert not (tmp_path / "data" / "data_test").exists()          # the paper's location stays free


def test_feature_cache_lets_a_later_run_skip_the_local_stage(weights, authors_set, tmp_path, capsys):
    """--feature_cache DIR: the first run stores one token file per pair; a later run with a copy of the
    same local weights (another folder) and other global weights (W) reuses them all; the sparse
    results of both runs with the cache equal a run without it."""
    copy = tmp_path / "copy"
    shutil.copytree(weights, copy)
    cache = tmp_path / "tokens"
    common = [*SMALL, "--data_path", str(authors_set), "--log_path", str(tmp_path), "--no_figures"]
    assert run_eval_script([*common, "--model_path", str(weights), "--run_name", "plain"]) == 0
    assert run_eval_script([*common, "--model_path", str(weights), "--feature_cache", str(cache),
                            "--run_name", "first"]) == 0
    assert "0 pair(s) reused (0 from disk), 2 computed" in capsys.readouterr().out
    assert len(list(cache.glob("*.pt"))) == 2
    assert run_eval_script([*common, "--model_path", str(copy), "--feature_cache", str(cache), "--densify", "w",
                            "--run_name", "later"]) == 0
    assert "2 pair(s) reused (2 from disk), 0 computed" in capsys.readouterr().out
    assert run_eval_script([*common, "--model_path", str(copy), "--feature_cache", str(cache),
                            "--run_name", "again"]) == 0
    plain, again = (json.loads((tmp_path / n / "summary.json").read_text()) for n in ("plain", "again"))
    keys = ("delta1", "delta2", "delta3", "rmse_cm", "absrel", "n_pixels")
    assert [[s[k] for k in keys] for s in plain["per_scene"]] == [[s[k] for k in keys] for s in again["per_scene"]]
    (tmp_path / "not_a_folder").write_text("x")
    assert run_eval_script([*common, "--model_path", str(weights), "--feature_cache", str(tmp_path / "not_a_folder"),
                            "--run_name", "bad"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
