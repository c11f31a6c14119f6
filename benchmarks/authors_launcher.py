"""Run one of the authors' scripts as ``python SCRIPT ARGS…`` would, with OpenCV ≥ 5 able to draw text on
their float64 figure canvas (``benchmarks/bench_vs_authors.py --opencv5_compat``).

    python benchmarks/authors_launcher.py /path/to/Blurry-Edges/blurry_edges_test.py --cuda cpu …

The authors' figure code writes its labels with ``cv2.putText`` onto a float64 canvas of whole
numbers 0–255; OpenCV 4 drew on any depth, OpenCV 5 asserts 8-bit images (``img.depth() == CV_8U``)
and their evaluation stops before its first scene. Nothing of their checkout is changed: this
launcher wraps ``cv2.putText`` in the child process only, so that a non-8-bit image gets the text
drawn on an 8-bit copy of the small window around it and the drawn pixels written back — the same
pixels OpenCV 4 gives for such a canvas (8-connected lines, no anti-aliasing). Every other call,
and all of the depth estimation, is theirs as published.
"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np


def compat_put_text(put_text: Callable[..., Any], text_size: Callable[..., Any]) -> Callable[..., Any]:
    """A ``cv2.putText`` that also draws on float images holding whole numbers 0–255 (in place)."""

    def putText(img, text, org, fontFace, fontScale, color, thickness=1, *rest, **kwargs):  # noqa: N802,N803
        if not isinstance(img, np.ndarray) or img.dtype == np.uint8 or rest or kwargs:
            return put_text(img, text, org, fontFace, fontScale, color, thickness, *rest, **kwargs)
        (w, h), base = text_size(text, fontFace, fontScale, max(int(thickness), 1))
        m = 2 * abs(int(thickness)) + h // 2 + 4              # room for strokes and glyphs beyond the box
        x, y = int(org[0]), int(org[1])
        x0, y0 = max(x - m, 0), max(y - h - m, 0)
        x1, y1 = min(x + w + m, img.shape[1]), min(y + base + m, img.shape[0])
        if x1 <= x0 or y1 <= y0:
            return img
        window = img[y0:y1, x0:x1]
        before = np.clip(window, 0, 255).astype(np.uint8)
        drawn = put_text(before.copy(), text, (x - x0, y - y0), fontFace, fontScale, color, thickness)
        hit = np.any(drawn != before, axis=-1) if drawn.ndim == 3 else drawn != before
        window[hit] = drawn[hit]
        return img

    return putText


def main(argv: list[str]) -> None:
    """``argv``: the script's path, then its arguments."""
    if not argv:
        raise SystemExit("usage: authors_launcher.py SCRIPT [ARGS…]")
    import cv2

    cv2.putText = compat_put_text(cv2.putText, cv2.getTextSize)
    script = Path(argv[0]).resolve()
    sys.argv = [str(script), *argv[1:]]
    sys.path[0] = str(script.parent)          # as `python SCRIPT`: its folder first (their data/models/utils)
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
