"""The training-free yardsticks scored on a method's own pixels (blurry_edges.yardsticks)."""
from __future__ import annotations

import numpy as np
import pytest

from blurry_edges.yardsticks import main, pearson, score_folder, slope


def _write(folder, preds, gts):
    folder.mkdir(parents=True, exist_ok=True)
    for i, (p, g) in enumerate(zip(preds, gts)):
        np.savez_compressed(folder / f"scene_{i:04d}.npz", depth=p.astype(np.float32), gt_depth=g.astype(np.float32))


def test_perfect_sparse_prediction_beats_the_constant_on_its_pixels(tmp_path):
    rng = np.random.default_rng(0)
    gts = [np.tile(np.linspace(0.8, 1.15, 40), (40, 1)) for _ in range(3)]
    preds = []
    for g in gts:
        keep = rng.random(g.shape) < 0.3
        preds.append(np.where(keep, g, 0.0))
    _write(tmp_path / "run", preds, gts)
    r = score_folder(tmp_path / "run", crop=2)
    assert r.method["delta1"] == pytest.approx(1.0) and r.method["rmse_cm"] == pytest.approx(0.0, abs=1e-4)
    assert r.constant_same_pixels["rmse_cm"] > 5.0             # a ramp over 35 cm is far from its median
    assert r.correlation == pytest.approx(1.0, abs=1e-6)
    assert 0.2 < r.coverage < 0.4
    assert r.constant == pytest.approx(np.median(np.concatenate([g[2:-2, 2:-2].ravel() for g in gts])))


def test_a_collapsed_prediction_scores_no_correlation(tmp_path):
    gts = [np.tile(np.linspace(0.8, 1.15, 30), (30, 1)) for _ in range(2)]
    preds = [np.full_like(g, 0.95) for g in gts]
    _write(tmp_path / "run", preds, gts)
    r = score_folder(tmp_path / "run", crop=1)
    assert np.isnan(r.correlation) and r.depth_spread_cm == pytest.approx(0.0, abs=1e-4)
    assert pearson(np.arange(5.0), -np.arange(5.0)) == pytest.approx(-1.0)


def test_cli_refuses_a_folder_without_results(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path)])
    assert e.value.code == 2 and "scene_XXXX.npz" in capsys.readouterr().err


def _write_full(folder, preds, gts, raws):
    folder.mkdir(parents=True, exist_ok=True)
    for i, (p, g, r) in enumerate(zip(preds, gts, raws)):
        np.savez_compressed(folder / f"scene_{i:04d}.npz", depth=p.astype(np.float32), gt_depth=g.astype(np.float32),
                            depth_raw=r.astype(np.float32))


def test_a_reference_method_is_scored_on_the_methods_pixels(tmp_path):
    gts = [np.tile(np.linspace(0.8, 1.15, 30), (30, 1)) for _ in range(2)]
    half = np.zeros((30, 30), bool)
    half[:, :15] = True                                          # the method keeps the left half only
    method = [np.where(half, g, 0.0) for g in gts]
    # the reference is exact on the left half and 5 cm off on the right: on the method's pixels it is exact
    ref_raw = [np.where(half, g, g - 0.05) for g in gts]
    _write(tmp_path / "run", method, gts)
    _write_full(tmp_path / "ref", [np.where(half, 0.0, r) for r in ref_raw], gts, ref_raw)
    r = score_folder(tmp_path / "run", crop=1, reference=tmp_path / "ref")
    assert r.reference_same_pixels["rmse_cm"] == pytest.approx(0.0, abs=1e-4)
    assert r.reference_same_pixels["delta1"] == pytest.approx(1.0)
    # its own pixels (right half) score 5 cm: the comparison is on the method's pixels
    assert score_folder(tmp_path / "ref", crop=1).method["rmse_cm"] == pytest.approx(5.0, abs=1e-3)


def test_a_reference_of_other_scenes_is_refused(tmp_path):
    gts = [np.full((20, 20), 0.9), np.full((20, 20), 1.0)]
    _write(tmp_path / "run", gts, gts)
    _write_full(tmp_path / "other", gts[:1], [gts[0] + 0.05], [gts[0]])
    with pytest.raises(ValueError, match="other scenes"):
        score_folder(tmp_path / "run", crop=1, reference=tmp_path / "other")
    with pytest.raises(FileNotFoundError, match="scene_0001"):
        _write_full(tmp_path / "first", gts[:1], gts[:1], gts[:1])
        score_folder(tmp_path / "run", crop=1, reference=tmp_path / "first")


def test_slope_tells_a_compressed_prediction_from_a_faithful_one(tmp_path):
    rng = np.random.default_rng(1)
    gts = [np.tile(np.linspace(0.78, 1.15, 36), (36, 1)).T + rng.uniform(-0.02, 0.02) for _ in range(3)]
    mid = 0.96
    _write(tmp_path / "faithful", gts, gts)
    _write(tmp_path / "half", [mid + 0.5 * (g - mid) for g in gts], gts)
    full, half = score_folder(tmp_path / "faithful", crop=1), score_folder(tmp_path / "half", crop=1)
    assert full.slope == pytest.approx(1.0, abs=1e-6)
    assert half.slope == pytest.approx(0.5, abs=1e-6)
    assert half.correlation == pytest.approx(1.0, abs=1e-6)     # correlation alone cannot tell them apart
    assert np.isnan(slope(np.ones(5), np.full(5, 0.9))) and np.isnan(slope(np.ones(2), np.arange(2.0)))


def test_common_scores_two_sparse_results_on_the_pixels_both_kept(tmp_path, capsys):
    gts = [np.tile(np.linspace(0.8, 1.15, 30), (30, 1)) for _ in range(2)]
    cols = np.arange(30)[None, :].repeat(30, 0)
    a_keeps, b_keeps = cols < 20, cols >= 10                     # both keep columns 10..19
    # A is exact everywhere it keeps; B is exact on its own columns 20..29 and 5 cm off on 10..19
    _write(tmp_path / "a", [np.where(a_keeps, g, 0.0) for g in gts], gts)
    _write(tmp_path / "b", [np.where(b_keeps, np.where(cols < 20, g - 0.05, g), 0.0) for g in gts], gts)
    own_b = score_folder(tmp_path / "b", crop=0)
    assert own_b.method["rmse_cm"] < 4.0                         # half of its own pixels are exact
    reports = main([str(tmp_path / "a"), str(tmp_path / "b"), "--common", "--crop", "0"])
    a, b = reports
    assert a.method["rmse_cm"] == pytest.approx(0.0, abs=1e-4)
    assert b.method["rmse_cm"] == pytest.approx(5.0, abs=1e-3)
    assert a.coverage == pytest.approx(1 / 3) and b.coverage == pytest.approx(1 / 3)
    assert a.constant_same_pixels == b.constant_same_pixels      # the yardstick on the same pixels
    assert "--common" in capsys.readouterr().out


def test_common_refuses_one_folder_and_other_scenes(tmp_path, capsys):
    gts = [np.full((20, 20), 0.9), np.full((20, 20), 1.0)]
    _write(tmp_path / "run", gts, gts)
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "run"), "--common"])
    assert e.value.code == 2 and "at least two" in capsys.readouterr().err
    _write(tmp_path / "fewer", gts[:1], gts[:1])
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "run"), str(tmp_path / "fewer"), "--common"])
    assert e.value.code == 2 and "same test set" in capsys.readouterr().err
    _write(tmp_path / "other", gts, [g + 0.1 for g in gts])
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "run"), str(tmp_path / "other"), "--common"])
    assert e.value.code == 2 and "other scenes" in capsys.readouterr().err
