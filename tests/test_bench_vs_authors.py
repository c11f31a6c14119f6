"""The parts of ``benchmarks/bench_vs_authors.py`` that are ours (no checkout of the authors' code needed):
the test-set conversion to the authors' layout, the float32 weight export, the key check and the
parsing of the authors' printed summary."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from blurry_edges.data import TestSceneDataset
from blurry_edges.models import WEIGHT_FILES, GlobalStage, LocalStage, save_weights
from blurry_edges.synth import generate
from blurry_edges.synth.realistic import RealisticConfig

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_vs_authors.py"
_spec = importlib.util.spec_from_file_location("bench_vs_authors", _PATH)
bva = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bva)


@pytest.fixture(scope="module")
def our_test_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("bva") / "data_test"
    return generate.generate_test(RealisticConfig(img_size=(40, 40)), root, 2, source="builtin", workers=1,
                                  progress=False)


def test_authors_layout_round_trips_through_our_reader(our_test_set, tmp_path):
    info = bva.to_authors_layout(our_test_set, tmp_path / "authors", 1)
    assert info["source_format"] == "ours" and info["scenes"] == 1 and info["channel_order"] == "RGB"
    for name in ("images_ny", "depth_maps", "alphas", "images_gt"):
        assert np.load(tmp_path / "authors" / f"{name}.npy").dtype == np.float64     # as the authors store them
    ours, theirs = TestSceneDataset(our_test_set), TestSceneDataset(tmp_path / "authors")
    assert theirs.format == "authors" and len(theirs) == 1 and theirs.img_size == ours.img_size
    for a, b in zip(ours[0], theirs[0]):            # noisy counts / α and depth: the very same float32 numbers
        assert a.dtype == b.dtype == torch.float32
        assert torch.equal(a, b)
    alpha = np.load(our_test_set / "alphas.npy")[0]
    np.testing.assert_allclose(np.load(tmp_path / "authors" / "images_gt.npy")[0],
                               np.load(our_test_set / "images_gt.npy")[0] / 255.0 * float(alpha), rtol=1e-12)
    with pytest.raises(ValueError, match="--scenes 3"):
        bva.to_authors_layout(our_test_set, tmp_path / "too_many", 3)


def _our_weight_files(folder: Path, R: int = 21) -> Path:
    torch.manual_seed(0)
    save_weights(LocalStage(R), folder / WEIGHT_FILES["local"], half=True)
    save_weights(GlobalStage(stride=2), folder / WEIGHT_FILES["global"], meta={"img_size": [147, 147]}, half=True)
    return folder


def test_weight_export_writes_raw_float32_state_dicts(tmp_path):
    src = _our_weight_files(tmp_path / "ours")
    exported = bva.export_authors_weights(src, tmp_path / "theirs")
    for stage, model in (("local", LocalStage(21)), ("global", GlobalStage(stride=2))):
        state = torch.load(exported[stage], map_location="cpu", weights_only=True)
        assert "model" not in state and set(state) == set(model.state_dict())      # a raw state dict
        assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
        model.load_state_dict(state, strict=True)              # the authors' bare load_state_dict(torch.load(...))
        fp16 = torch.load(src / WEIGHT_FILES[stage], weights_only=True)["model"]
        for k, v in state.items():
            assert torch.equal(v, fp16[k].to(v.dtype)), k      # fp16 → float32 is exact
    # the key check: our own networks' shapes stand in for the authors' (same names, README "Weights")
    shapes = {s: {k: list(v.shape) for k, v in m.state_dict().items()}
              for s, m in (("local", LocalStage(21)), ("global", GlobalStage(stride=2)))}
    bva.check_against_authors_models(exported, shapes)
    shapes["local"]["renamed.weight"] = shapes["local"].pop("fc.1.weight")
    with pytest.raises(ValueError, match=r"local stage, missing: renamed\.weight.*unexpected: fc\.1\.weight"):
        bva.check_against_authors_models(exported, shapes)


def test_weight_export_rejects_weights_the_authors_script_cannot_run(tmp_path):
    src = _our_weight_files(tmp_path / "ours", R=11)
    with pytest.raises(ValueError, match="R=11"):
        bva.export_authors_weights(src, tmp_path / "theirs")
    with pytest.raises(FileNotFoundError, match="pretrained_local_stage.pth"):
        bva.export_authors_weights(tmp_path / "nowhere", tmp_path / "theirs")


def test_parses_the_printed_summaries():
    printed = ("Image pair #0:\n--- Running time: 12.500 s\nImage pair #1:\n--- Running time: 11.250 s\n\n"
               "Average running time: 11.875 s\n"
               "Average metrics for whole dataset: delta1 = 0.812, delta2 = 0.9, delta3 = 0.95, "
               "RMSE = 4.321 cm, AbsRel = nan cm\n")
    got = bva.parse_authors_output(printed)
    assert got["scene_times_s"] == [12.5, 11.25] and got["mean_time_s"] == 11.875
    assert got["delta1"] == 0.812 and got["rmse_cm"] == 4.321 and np.isnan(got["metrics"]["absrel"])
    assert bva.parse_authors_output("Traceback ...")["delta1"] is None
    assert "'pycocotools'" in bva.dependency_hint("ModuleNotFoundError: No module named 'pycocotools'")
    env = bva.thread_env(3, drop_pythonpath=True)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3" and "PYTHONPATH" not in env


def _launcher():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "authors_launcher.py"
    spec = importlib.util.spec_from_file_location("authors_launcher", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_launcher_put_text_on_a_float_canvas_draws_the_8bit_pixels():
    put_text = _launcher().compat_put_text(cv2.putText, cv2.getTextSize)
    rng = np.random.default_rng(0)
    canvas8 = rng.integers(0, 256, (120, 300, 3), dtype=np.uint8)
    canvas64 = canvas8.astype(np.float64)
    for text, org in (("118 cm", (10, 60)), ("Noisy input 1", (0, 14)), ("75", (280, 119))):   # incl. clipped
        cv2.putText(canvas8, text, org, cv2.FONT_HERSHEY_SIMPLEX, 1.2, (0, 0, 0), 3)
        assert put_text(canvas64, text, org, cv2.FONT_HERSHEY_SIMPLEX, 1.2, (0, 0, 0), 3) is canvas64
    assert canvas64.dtype == np.float64 and np.array_equal(canvas64, canvas8.astype(np.float64))
    u8 = np.zeros((20, 40, 3), np.uint8)                       # 8-bit images go straight to OpenCV
    assert put_text(u8, "x", (5, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1).any()


def test_authors_command_and_opencv5_choice(tmp_path):
    plain = bva.authors_command(tmp_path, "py", tmp_path / "d", tmp_path / "w", tmp_path / "l")
    assert plain[:2] == ["py", str(tmp_path / "blurry_edges_test.py")] and plain[plain.index("--cuda") + 1] == "cpu"
    compat = bva.authors_command(tmp_path, "py", tmp_path / "d", tmp_path / "w", tmp_path / "l", opencv5_compat=True)
    assert compat[1].endswith("authors_launcher.py") and compat[2:] == plain[1:]
    assert bva.use_opencv5_compat("auto", "5.1.0") and not bva.use_opencv5_compat("auto", "4.10.0")
    assert bva.use_opencv5_compat("on", "4.10.0") and not bva.use_opencv5_compat("off", "5.1.0")
    assert "opencv5_compat" in bva.dependency_hint("cv2.error: ... (-215:Assertion failed) img.depth() == CV_8U")


def test_launcher_runs_a_script_as_python_would(tmp_path):
    script = tmp_path / "their_script.py"
    (tmp_path / "helper_mod.py").write_text("VALUE = 7\n")
    script.write_text("import sys, cv2, numpy as np\nimport helper_mod\n"
                      "c = np.full((40, 120, 3), 255.0)\n"
                      "cv2.putText(c, 'cm', (5, 30), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (0, 0, 0), 2)\n"
                      "print(sys.argv[1:], helper_mod.VALUE, int((c == 0).any()), __name__)\n")
    launcher = Path(__file__).resolve().parents[1] / "benchmarks" / "authors_launcher.py"
    r = subprocess.run([sys.executable, str(launcher), str(script), "--cuda", "cpu"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "['--cuda', 'cpu'] 7 1 __main__"
