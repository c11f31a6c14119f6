"""``python -m blurry_edges.infer``: one's own image pair → every output file; input readers; errors.

Small geometry for speed: R = 11 and 25-pixel blocks (``--R 11 --block 25``) with random weights
saved under the authors' file names.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from blurry_edges.camera import CameraParams
from blurry_edges.imageio import ImageInputError, normalize_pair, read_image
from blurry_edges.infer import check_camera, main, valid_size
from blurry_edges.models import WEIGHT_FILES, GlobalStage, LocalStage, save_weights

R, BLOCK, GRID = 11, 25, 8
OUTPUTS = ["depth.npy", "depth.png", "confidence.npy", "confidence.png", "boundary.npy", "boundary.png",
           "restored_1.png", "restored_2.png", "sharpened.png", "refocused.png", "maps.npz", "settings.json"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    torch.save(LocalStage(R).state_dict(), d / WEIGHT_FILES["local"])          # the authors' raw format
    save_weights(GlobalStage(GRID, GRID), d / WEIGHT_FILES["global"])          # our checkpoint format
    return d


def scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 60.0)
    img[:, w // 2:] = [200.0, 120.0, 40.0]
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255)


def args(weights: Path, out: Path, *files) -> list[str]:
    return [*map(str, files), "--out", str(out), "--model_path", str(weights), "--R", str(R),
            "--block", str(BLOCK), "--n_margin_patch", "1", "--device", "cpu"]


def test_two_pngs_write_every_output(weights, tmp_path, capsys):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    cv2.imwrite(str(a), scene(25, 25).astype(np.uint8))
    cv2.imwrite(str(b), scene(25, 25, 1).astype(np.uint8)[..., 0])                # gray second image
    out = tmp_path / "out"
    assert main(args(weights, out, a, b)) == 0
    for f in OUTPUTS:
        assert (out / f).is_file(), f
    depth = np.load(out / "depth.npy")
    assert depth.shape == (25, 25) and depth.dtype == np.float32 and np.all(depth >= 0)
    assert np.load(out / "confidence.npy").shape == (25, 25)
    assert cv2.imread(str(out / "restored_1.png")).shape == (25, 25, 3)
    settings = json.loads((out / "settings.json").read_text())
    assert settings["inputs"]["gray"] == [False, True] and settings["blocks"] == 1
    assert settings["camera"] == CameraParams().to_dict()
    assert "outputs written" in capsys.readouterr().out


def test_16bit_tiff_npy_blocks_crop_and_camera_json(weights, tmp_path, capsys):
    img = scene(37, 38)
    a, b = tmp_path / "a.tif", tmp_path / "b.npy"
    cv2.imwrite(str(a), (img * 16).astype(np.uint16)[..., ::-1])                    # 16-bit, BGR on disk
    np.save(b, (img * 16).astype(np.uint16))                                        # RGB counts, same dtype
    cam = tmp_path / "camera.json"
    cam.write_text(json.dumps({"rho_1": 10.0, "rho_2": 10.25}))
    out = tmp_path / "out"
    assert main([*args(weights, out, a, b), "--alpha", "3000", "--camera", str(cam), "--z_max", "1.15"]) == 0
    printed = capsys.readouterr().out
    assert "cropping 37×38 to 37×37" in printed
    settings = json.loads((out / "settings.json").read_text())
    assert settings["inputs"]["size"] == [37, 37] and settings["blocks"] == 4
    assert settings["camera"]["rho_2"] == 10.25 and settings["camera"]["z_max"] == 1.15
    assert "alpha" in settings["inputs"]["normalization"]
    assert np.load(out / "depth.npy").shape == (37, 37)


def test_readers(tmp_path):
    rgb = np.zeros((30, 31, 3), np.uint8)
    rgb[..., 0] = 200                                                   # red in RGB
    cv2.imwrite(str(tmp_path / "r.png"), rgb[..., ::-1])
    cv2.imwrite(str(tmp_path / "r.jpg"), rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 100])
    for name in ("r.png", "r.jpg"):
        im = read_image(tmp_path / name)
        assert im.data.shape == (30, 31, 3) and im.bit_depth == 8
        assert im.data[..., 0].mean() > 190 and im.data[..., 2].mean() < 10, name   # R, G, B order
    g16 = (np.arange(30 * 31).reshape(30, 31) * 50).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "g.png"), g16)
    im = read_image(tmp_path / "g.png")
    assert im.gray and im.bit_depth == 16 and im.data[..., 1].max() == g16.max()
    np.save(tmp_path / "c.npy", np.ones((3, 30, 31), np.float32) * 0.5)          # channel-first
    assert read_image(tmp_path / "c.npy").data.shape == (30, 31, 3)
    a, b, scale, _ = normalize_pair(im, im, mode="bitdepth")
    assert scale == 65535 and a.max() <= 1
    a, b, scale, _ = normalize_pair(im, im, mode="max")
    assert a.max() == 1.0
    assert valid_size(147, 147, 2) == 147 and valid_size(236, 147, 2) == 235 and valid_size(587, 147, 2) == 587


def test_camera_checks():
    assert check_camera(CameraParams()) == []
    with pytest.raises(ValueError, match="focal length"):
        check_camera(CameraParams(z_min=0.05, z_max=1.0))
    assert any("blur" in w for w in check_camera(CameraParams(sigma_cam=0.01)))


def _err(capsys) -> str:
    return capsys.readouterr().err


def test_error_cases(weights, tmp_path, capsys):
    ok = tmp_path / "ok.png"
    cv2.imwrite(str(ok), scene(25, 25).astype(np.uint8))
    out = tmp_path / "out"

    cv2.imwrite(str(tmp_path / "wide.png"), scene(25, 27).astype(np.uint8))
    assert main(args(weights, out, ok, tmp_path / "wide.png")) == 2
    assert "differ in size" in _err(capsys)

    cv2.imwrite(str(tmp_path / "small.png"), scene(20, 20).astype(np.uint8))
    assert main(args(weights, out, tmp_path / "small.png", tmp_path / "small.png")) == 2
    assert "at least 25×25" in _err(capsys)

    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    assert main(args(weights, out, ok, tmp_path / "broken.png")) == 2
    assert "could not decode" in _err(capsys)

    (tmp_path / "x.gif").write_bytes(b"GIF89a")
    assert main(args(weights, out, ok, tmp_path / "x.gif")) == 2
    assert "unsupported format" in _err(capsys)

    assert main(args(weights, out, ok, tmp_path / "nope.png")) == 2
    assert "does not exist" in _err(capsys)

    nan = scene(25, 25).astype(np.float32)
    nan[3, 4, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    assert main(args(weights, out, ok, tmp_path / "nan.npy")) == 2
    assert "NaN" in _err(capsys)

    assert main([*args(weights, out, ok, ok), "--sigma_cam", "-0.003"]) == 2
    assert "sigma_cam" in _err(capsys)
    assert main([*args(weights, out, ok, ok), "--rho_2", "10.0"]) == 2
    assert "differ" in _err(capsys)
    assert main([*args(weights, out, ok, ok), "--z_min", "1.3"]) == 2
    assert "z_min" in _err(capsys)
    assert main([*args(weights, out, ok, ok), "--rho_1", "1.0", "--rho_2", "1.2"]) == 2
    assert "focal length" in _err(capsys)

    assert main([*args(tmp_path / "no_weights", out, ok, ok)]) == 2
    assert "pretrained_local_stage.pth" in _err(capsys)
    assert not out.exists()                                        # nothing written on errors
    with pytest.raises(ImageInputError):
        read_image(tmp_path / "x.gif")


# ----------------------------------------------------------------------------- --bf16, progress
@pytest.mark.parametrize("flag, native, bf16", [
    ([], True, True),                        # default auto: bf16 where the CPU computes it natively …
    ([], False, False),                      # … float32 where it emulates it
    (["--bf16"], False, True),               # a bare --bf16 means on (the former store_true flag)
    (["--bf16", "auto"], False, False),      # auto: float32 where the CPU emulates bf16 …
    (["--bf16", "auto"], True, True),        # … bf16 where it computes it natively
    (["--bf16", "OFF"], True, False),
])
def test_bf16_option_resolves_and_is_recorded(weights, tmp_path, capsys, monkeypatch, flag, native, bf16):
    import blurry_edges.features as features

    monkeypatch.setattr(features, "native_bf16", lambda: native)
    a = tmp_path / "a.png"
    cv2.imwrite(str(a), scene(25, 25).astype(np.uint8))
    out = tmp_path / "out"
    assert main([*args(weights, out, a, a), *flag, "--no_progress"]) == 0
    settings = json.loads((out / "settings.json").read_text())
    requested = flag[1].lower() if len(flag) == 2 else ("on" if flag else "auto")
    assert settings["bf16"] is bf16
    assert settings["precision"] == {"bf16_requested": requested, "bf16": bf16, "cpu_native_bf16": native,
                                     "networks": "bf16 autocast" if bf16 else "float32"}
    assert ("bf16 autocast" if bf16 else "float32") in capsys.readouterr().out


def test_bf16_option_rejects_other_values(weights, tmp_path, capsys):
    a = tmp_path / "a.png"
    cv2.imwrite(str(a), scene(25, 25).astype(np.uint8))
    with pytest.raises(SystemExit) as e:
        main([*args(weights, tmp_path / "out", a, a), "--bf16", "fast"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "'fast' is not one of auto, on, off" in err
    with pytest.raises(SystemExit):                   # a bare --bf16 right before the image paths
        main(["--bf16", str(a), str(a), "--out", str(tmp_path / "out")])
    assert "write '--bf16 on'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_progress_of_an_own_pair(weights, tmp_path, capsys):
    """infer shows the stage bars for any pair (here 37×37 = 2×2 blocks); --no_progress hides them."""
    a = tmp_path / "a.png"
    cv2.imwrite(str(a), scene(37, 37).astype(np.uint8))
    assert main(args(weights, tmp_path / "o1", a, a)) == 0
    shown = capsys.readouterr().out
    for stage in ("local stage:", "global stage:", "render:", "densify (none):"):     # the bars' labels
        assert stage in shown, stage
    assert "0/4 [" in shown                                       # the global stage counts the 4 blocks
    assert main([*args(weights, tmp_path / "o2", a, a), "--no_progress"]) == 0
    hidden = capsys.readouterr().out
    assert "local stage:" not in hidden and "%|" not in hidden and "outputs written" in hidden
    np.testing.assert_array_equal(np.load(tmp_path / "o1" / "depth.npy"), np.load(tmp_path / "o2" / "depth.npy"))
