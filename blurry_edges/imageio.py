"""Reading one's own images for depth inference: PNG, TIFF, JPEG or NPY; 8-, 16-bit or float; gray or color.

Every reader returns float32 ``[H, W, 3]`` in RGB order and the image's native value range (no
scaling); :func:`normalize_pair` then brings a pair to the networks' units (photon counts / α,
i.e. roughly [0, 1]).

Errors are :class:`ImageInputError` (a ``ValueError``) with a message naming the file, the problem
and what to do about it.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

__all__ = ["ImageInputError", "LoadedImage", "SUPPORTED_SUFFIXES", "NORMALIZATIONS", "read_image",
           "check_same_kind", "normalize_pair"]

SUPPORTED_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".npy")
#: ``max``: divide both images by the largest value of the pair; ``bitdepth``: by 255 (8-bit),
#: 65535 (16-bit) or 1 (float images, assumed in [0, 1]).
NORMALIZATIONS = ("max", "bitdepth")


class ImageInputError(ValueError):
    """An input image that cannot be used, with the reason and the fix in the message."""


@dataclass
class LoadedImage:
    """An image as read: ``data`` float32 ``[H, W, 3]`` RGB in the file's value range.

    Attributes:
        bit_depth: 8 or 16 for integer images of those depths, ``None`` otherwise (float, or
            other integer types in NPY files).
        gray: the file had one channel (replicated to three).
        dtype: the stored dtype's name.
    """

    path: Path
    data: np.ndarray
    bit_depth: Optional[int]
    gray: bool
    dtype: str

    @property
    def size(self) -> tuple[int, int]:
        return int(self.data.shape[0]), int(self.data.shape[1])


def _to_three_channels(a: np.ndarray, path: Path, bgr: bool) -> tuple[np.ndarray, bool]:
    """``[H, W]``, ``[H, W, 1|2|3|4]`` (or ``[1|3, H, W]`` for NPY) → ``[H, W, 3]`` RGB."""
    if a.ndim == 2:
        return np.repeat(a[..., None], 3, axis=-1), True
    if a.ndim == 3 and a.shape[-1] not in (1, 2, 3, 4) and a.shape[0] in (1, 3):
        a = np.moveaxis(a, 0, -1)                                 # channel-first NPY
    if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4):
        raise ImageInputError(f"{path}: expected a gray or color image [H, W] / [H, W, C] with C in 1–4, "
                              f"got an array of shape {list(a.shape)}")
    c = a.shape[-1]
    if c in (1, 2):                                               # gray (+ alpha)
        return np.repeat(a[..., :1], 3, axis=-1), True
    rgb = a[..., :3]                                              # drop an alpha channel
    if bgr:
        rgb = rgb[..., ::-1]
    return rgb, False


#: Decoder messages that say nothing about damage (colour profiles, unknown metadata tags).
_BENIGN_DECODER_MESSAGES = re.compile(r"iCCP|sRGB|known incorrect|unknown field with tag|"
                                      r"ASCII value for tag|nonstandard tag", re.IGNORECASE)


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Collect what C libraries (libjpeg, libpng, libtiff via OpenCV) write to file descriptor 2.

    OpenCV decodes a truncated JPEG with the missing part filled in and only prints "Premature end
    of JPEG file"; the lines caught here let :func:`read_image` refuse such files.
    """
    lines: list[str] = []
    try:
        saved = os.dup(2)
    except OSError:                      # no usable stderr: nothing to capture
        yield lines
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        sys.stderr.flush()
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(ln.strip() for ln in tmp.read().decode("utf-8", "replace").splitlines() if ln.strip())


def _decode(path: Path, suffix: str) -> np.ndarray:
    """OpenCV decode; damage the decoder reports (even when it returns an image) is an error."""
    import cv2

    with _captured_stderr() as messages:
        a = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    damage = [m for m in messages if not _BENIGN_DECODER_MESSAGES.search(m)]
    if damage:
        shown = "; ".join(dict.fromkeys(damage))
        raise ImageInputError(f"{path}: the {suffix[1:].upper()} decoder reports a damaged file ({shown}); "
                              "the file is probably truncated or corrupt (an interrupted copy or download): "
                              "copy or export it again")
    if a is None:
        raise ImageInputError(f"{path}: could not decode the file as a {suffix[1:].upper()} image "
                              "(corrupt, empty, or another format under this name)")
    return a


def read_image(path: str | Path) -> LoadedImage:
    """Read an image file into float32 ``[H, W, 3]`` RGB, keeping its value range.

    PNG/TIFF/JPEG are read with OpenCV (``IMREAD_UNCHANGED``: 16-bit and float TIFFs stay as they
    are; B, G, R is turned into R, G, B); ``.npy`` arrays must be ``[H, W]``, ``[H, W, C]`` or
    ``[C, H, W]`` of a real numeric dtype and are taken as RGB.

    Raises:
        FileNotFoundError: no such file.
        ImageInputError: unsupported suffix, unreadable, damaged or empty file, bad shape or dtype,
            NaN/inf, a folder instead of a file.
    """
    path = Path(path)
    if path.is_dir():
        raise ImageInputError(f"{path} is a folder, not an image file; give the path of an image inside it")
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ImageInputError(f"{path}: unsupported format {suffix or '(no suffix)'!r}; use one of "
                              f"{', '.join(SUPPORTED_SUFFIXES)} (e.g. convert RAW files to 16-bit TIFF first)")
    if suffix == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise ImageInputError(f"{path}: not a readable NumPy array file ({e})") from e
        bgr = False
    else:
        a = _decode(path, suffix)
        bgr = True
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ImageInputError(f"{path}: pixel type {a.dtype} is not supported; use 8/16-bit integers or floats")
    if a.size == 0:
        raise ImageInputError(f"{path}: the image is empty (shape {list(a.shape)})")
    dtype = a.dtype.name
    bit_depth = 8 if a.dtype == np.uint8 else 16 if a.dtype == np.uint16 else None
    rgb, gray = _to_three_channels(a, path, bgr)
    data = np.ascontiguousarray(rgb, dtype=np.float32)
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).any(axis=-1).sum())
        raise ImageInputError(f"{path}: {bad} pixels are NaN or infinite; fix or inpaint them before inference")
    if (data < 0).any():
        raise ImageInputError(f"{path}: negative pixel values (min {data.min():g}); the networks expect "
                              "non-negative intensities (photon counts or linear brightness)")
    return LoadedImage(path=path, data=data, bit_depth=bit_depth, gray=gray, dtype=dtype)


def check_same_kind(img1: LoadedImage, img2: LoadedImage) -> None:
    """Refuse a pair stored with different bit depths or pixel types.

    One scale serves both images; an 8-bit image next to a 16-bit one would come out 256× too dark
    (or the other too bright), which the networks read as a huge brightness difference.
    """
    if img1.dtype != img2.dtype:
        raise ImageInputError(
            f"the two images are stored differently: {img1.path} as {img1.dtype}"
            f"{f' ({img1.bit_depth}-bit)' if img1.bit_depth else ''}, {img2.path} as {img2.dtype}"
            f"{f' ({img2.bit_depth}-bit)' if img2.bit_depth else ''}; a pair must come from the same "
            "capture pipeline: export both with the same bit depth (e.g. both as 16-bit TIFF)")


def normalize_pair(img1: LoadedImage, img2: LoadedImage, *, alpha: Optional[float] = None,
                   mode: str = "max") -> tuple[np.ndarray, np.ndarray, float, str]:
    """Bring both images to the networks' units with one common scale.

    Args:
        alpha: photon level α: the images hold photon counts and are divided by α (the paper's
            ``I / α``). Takes precedence over ``mode``.
        mode: ``"max"`` (divide by the largest value of the pair) or ``"bitdepth"`` (255, 65535, or
            1 for float images).
    Returns:
        ``(image1, image2, scale, description)`` with ``image = data / scale``.
    """
    if img1.size != img2.size:
        raise ImageInputError(f"the two images differ in size: {img1.path} is {img1.size[0]}×{img1.size[1]}, "
                              f"{img2.path} is {img2.size[0]}×{img2.size[1]}; they must be registered "
                              "captures of the same view (crop or resample one to match)")
    check_same_kind(img1, img2)
    if alpha is not None:
        if not (np.isfinite(alpha) and alpha > 0):
            raise ImageInputError(f"--alpha must be a positive photon level, got {alpha}")
        scale, how = float(alpha), f"photon counts / alpha (alpha = {alpha:g})"
    elif mode == "max":
        scale = float(max(img1.data.max(), img2.data.max()))
        if scale <= 0:
            raise ImageInputError(f"both images are entirely black ({img1.path}, {img2.path}); nothing to estimate")
        how = f"divided by the pair's maximum ({scale:g})"
    elif mode == "bitdepth":
        depth = img1.bit_depth
        if depth is None and (img1.dtype.startswith("float") and img2.dtype.startswith("float")):
            scale, how = 1.0, "float images taken as [0, 1]"
        elif depth is None:
            raise ImageInputError(f"cannot tell the bit depth of {img1.dtype} images; use --normalize max or --alpha")
        else:
            scale, how = float(2 ** depth - 1), f"divided by {2 ** depth - 1} ({depth}-bit)"
    else:
        raise ImageInputError(f"unknown normalization {mode!r}; choose one of {', '.join(NORMALIZATIONS)} or give --alpha")
    return img1.data / scale, img2.data / scale, scale, how
