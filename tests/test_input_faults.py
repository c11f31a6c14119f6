"""Damaged or inconsistent input images are refused with a message that names the fix (never
decoded with the missing part filled in, never normalized into a pair of unequal brightness)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from blurry_edges.imageio import ImageInputError, normalize_pair, read_image


def _image(h: int = 64, w: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random((h, w, 3)) * 255).astype(np.uint8)


def test_truncated_jpeg_is_refused(tmp_path):
    whole = tmp_path / "whole.jpg"
    cv2.imwrite(str(whole), _image())
    cut = tmp_path / "cut.jpg"
    data = whole.read_bytes()
    cut.write_bytes(data[:len(data) // 2])
    assert cv2.imread(str(cut)) is not None            # OpenCV alone fills in the missing half
    assert read_image(whole).size == (64, 64)
    with pytest.raises(ImageInputError, match="damaged.*Premature end of JPEG"):
        read_image(cut)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_truncated_png_and_tiff_are_refused(tmp_path, suffix):
    whole = tmp_path / f"whole{suffix}"
    cv2.imwrite(str(whole), _image())
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[:200])
    with pytest.raises(ImageInputError, match="damaged|could not decode"):
        read_image(cut)


def test_pair_of_different_bit_depths_is_refused(tmp_path):
    img = _image()
    cv2.imwrite(str(tmp_path / "a.png"), img)
    cv2.imwrite(str(tmp_path / "b.tif"), img.astype(np.uint16) * 257)         # the same scene, 16-bit
    a, b = read_image(tmp_path / "a.png"), read_image(tmp_path / "b.tif")
    for kw in ({"mode": "max"}, {"mode": "bitdepth"}, {"alpha": 100.0}):
        with pytest.raises(ImageInputError, match="uint8.*uint16.*same bit depth"):
            normalize_pair(a, b, **kw)
    np.save(tmp_path / "c.npy", img.astype(np.float32))
    with pytest.raises(ImageInputError, match="float32"):
        normalize_pair(a, read_image(tmp_path / "c.npy"))


def test_folder_given_as_image(tmp_path):
    with pytest.raises(ImageInputError, match="is a folder, not an image file"):
        read_image(tmp_path)
