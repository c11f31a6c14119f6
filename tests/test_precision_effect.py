"""``benchmarks/precision_effect.py``: the bf16-versus-float32 accuracy rule on two result folders."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "precision_effect.py"
_spec = importlib.util.spec_from_file_location("precision_effect", _PATH)
pe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pe)


def _run(folder: Path, bf16: bool, depths: list[np.ndarray], gts: list[np.ndarray], d1: list[float],
         rmse: list[float]) -> Path:
    folder.mkdir(parents=True)
    for i, (d, g) in enumerate(zip(depths, gts)):
        np.savez(folder / f"scene_{i:04d}.npz", depth=d.astype(np.float32), gt_depth=g.astype(np.float32))
    per_scene = [{"scene": i, "delta1": a, "rmse_cm": b} for i, (a, b) in enumerate(zip(d1, rmse))]
    (folder / "summary.json").write_text(json.dumps({
        "precision": {"bf16": bf16}, "n_scenes": len(depths), "per_scene": per_scene,
        "average": {"delta1": float(np.mean(d1)), "rmse_cm": float(np.mean(rmse))}}))
    return folder


@pytest.fixture
def scenes():
    rng = np.random.default_rng(0)
    gts = [rng.uniform(0.8, 1.1, (6, 6)) for _ in range(2)]
    fp32 = [g + 0.01 for g in gts]
    for d in fp32:
        d[0, :3] = 0                                     # 3 pixels without an estimate per scene
    return gts, fp32


def test_deltas_pixels_and_verdict(tmp_path, scenes, capsys):
    gts, fp32 = scenes
    bf16 = [d.copy() for d in fp32]
    bf16[0][1, 1] += 0.002                               # 0.2 cm on one pixel
    bf16[1][5, 5] = 0                                    # one estimate vanished
    a = _run(tmp_path / "fp32" / "sparse", False, fp32, gts, [0.70, 0.60], [5.0, 6.0])
    b = _run(tmp_path / "bf16" / "sparse", True, bf16, gts, [0.702, 0.60], [5.0, 6.04])
    row = pe.compare_run(a, b)
    assert row["d_delta1"] == pytest.approx(0.001)
    assert row["d_rmse_cm"] == pytest.approx(0.02)
    assert row["max_scene_d_delta1"] == pytest.approx(0.002)
    assert row["max_scene_d_rmse_cm"] == pytest.approx(0.04)
    assert row["support_changed"] == pytest.approx(1 / 72)
    assert row["pixels_compared"] == 2 * 33 - 1
    assert row["mean_abs_change_cm"] == pytest.approx(0.2 / 65, rel=1e-3)
    assert pe.within_rule(row) and not pe.within_rule(row, max_rmse_cm=0.01)

    assert pe.main([str(tmp_path / "fp32"), str(tmp_path / "bf16"), "--modes", "sparse"]) == 0
    assert "verdict: bf16 is within the rule for sparse" in capsys.readouterr().out
    assert pe.main([str(tmp_path / "fp32"), str(tmp_path / "bf16")]) == 0          # pp is missing
    assert "verdict: undecided, no result for pp" in capsys.readouterr().out


def test_beyond_the_rule_stays_opt_in(tmp_path, scenes, capsys):
    gts, fp32 = scenes
    _run(tmp_path / "a", False, fp32, gts, [0.70, 0.60], [5.0, 6.0])
    _run(tmp_path / "b", True, fp32, gts, [0.70, 0.60], [5.2, 6.0])
    out = tmp_path / "effect.json"
    assert pe.main([str(tmp_path / "a"), str(tmp_path / "b"), "--modes", "run", "--out", str(out)]) == 0
    assert "verdict: bf16 stays opt-in (run moved beyond the rule)" in capsys.readouterr().out
    assert json.loads(out.read_text())["beyond_rule"] == ["run"]


def test_refuses_swapped_precisions_and_other_scenes(tmp_path, scenes, capsys):
    gts, fp32 = scenes
    a = _run(tmp_path / "a", False, fp32, gts, [0.7, 0.6], [5.0, 6.0])
    b = _run(tmp_path / "b", True, fp32, [g + 0.1 for g in gts], [0.7, 0.6], [5.0, 6.0])
    with pytest.raises(ValueError, match="give the float32 folder first"):
        pe.compare_run(b, a)
    with pytest.raises(ValueError, match="not the same scenes"):
        pe.compare_run(a, b)
    assert pe.main([str(tmp_path / "a"), str(tmp_path / "nowhere")]) == 2
    assert "holds no summary.json" in capsys.readouterr().err
