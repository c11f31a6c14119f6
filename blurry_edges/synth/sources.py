"""Textures for the realistic test scenes: MS-COCO objects over paintings, or built-in images.

``coco``    — the authors' sources: a segmented MS-COCO val2017 object (the authors' filter: a
              uniformly drawn category, image and annotation, kept when its annotation area is at
              least 40000 px and its mask is one 4-connected component) over a painting; both
              scaled so the short side covers the image, then centre-cropped.
``builtin`` — needs no download: textures are the colour photographs that ship inside
              scikit-image (``skimage.data``), randomly cropped and flipped; the object mask is a
              smooth, single-component random blob (a star-shaped contour with a few random Fourier
              harmonics) of an area comparable to the COCO objects that pass the filter.

Every ``draw(rng)`` returns ``(obj, mask, background, info)``: ``obj`` [H, W, 3] uint8 RGB, the
object texture masked before scaling (so zero away from ``mask``, [H, W] bool), ``background``
[H, W, 3] uint8 RGB, and a JSON-able dict saying where they came from. Images are RGB in memory (OpenCV reads BGR; we convert on reading).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

COCO_MIN_AREA = 40000
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

COCO_LAYOUT = """expected MS-COCO val2017 in the authors' layout:
  {root}/instances_val2017.json   (from annotations_trainval2017.zip, https://cocodataset.org)
  {root}/val2017/<image files>     (from val2017.zip)"""
PAINTING_LAYOUT = """expected a folder of painting images (the authors' ./data/Painting/):
  {root}/<image files: {ext}>"""


# ---------------------------------------------------------------------------------- utilities
def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8 [H, W, 3].

    Like the authors' ``cv2.imread`` (default colour mode), a grayscale file comes back as three
    equal channels: their "colour image" check therefore never rejects a file, and neither do we.
    """
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise OSError(f"cannot read image file {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def resize_cover_crop(img: np.ndarray, size, interpolation=cv2.INTER_LINEAR) -> np.ndarray:
    """Scale so the short side becomes ``max(H, W)`` and centre-crop to ``size = (H, W)`` (the authors')."""
    H, W = size
    scale = max(H, W) / min(img.shape[:2])
    new_w, new_h = int(round(img.shape[1] * scale)), int(round(img.shape[0] * scale))
    out = cv2.resize(img, (new_w, new_h), interpolation=interpolation)
    top, left = out.shape[0] // 2 - H // 2, out.shape[1] // 2 - W // 2
    return out[top:top + H, left:left + W]


def is_single_component(mask: np.ndarray) -> bool:
    """True when the mask's foreground is exactly one 4-connected component (SciPy's default)."""
    _, n = ndimage.label(mask)
    return n == 1


def list_images(folder: str | Path) -> list[str]:
    """Image files of a folder, sorted by name (the authors use ``os.listdir`` order)."""
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS)
                  and os.path.isfile(os.path.join(folder, f)))


def coco_available(frgd_path) -> bool:
    root = Path(frgd_path)
    return (root / "instances_val2017.json").is_file() and (root / "val2017").is_dir()


def paintings_available(bkgd_path) -> bool:
    root = Path(bkgd_path)
    return root.is_dir() and len(list_images(root)) > 0


def check_coco_layout(frgd_path, bkgd_path) -> None:
    """Raise ``FileNotFoundError`` naming the expected layout when COCO or the paintings are missing."""
    if not coco_available(frgd_path):
        raise FileNotFoundError(f"MS-COCO not found at {frgd_path!s}: " + COCO_LAYOUT.format(root=Path(frgd_path))
                                + "\n(or use --source builtin, which needs no download)")
    if not paintings_available(bkgd_path):
        raise FileNotFoundError(f"no paintings found at {bkgd_path!s}: "
                                + PAINTING_LAYOUT.format(root=Path(bkgd_path), ext=", ".join(IMAGE_EXTENSIONS))
                                + "\n(or use --source builtin, which needs no download)")


# ----------------------------------------------------------------------------------- sources
class PaintingSource:
    """Backgrounds: a uniformly drawn painting, scaled to cover and centre-cropped."""

    def __init__(self, bkgd_path, img_size):
        self.root = Path(bkgd_path)
        self.files = list_images(self.root)
        if not self.files:
            raise FileNotFoundError(PAINTING_LAYOUT.format(root=self.root, ext=", ".join(IMAGE_EXTENSIONS)))
        self.img_size = tuple(img_size)

    def draw(self, rng: np.random.Generator):
        name = self.files[int(rng.integers(len(self.files)))]
        return resize_cover_crop(read_rgb(self.root / name), self.img_size), {"painting": name}


class CocoSource:
    """Foreground objects from MS-COCO val2017 with the authors' filter (module docstring)."""

    def __init__(self, frgd_path, img_size, min_area: float = COCO_MIN_AREA, max_tries: int = 200000):
        from pycocotools.coco import COCO   # imported here: only this source needs it

        self.root = Path(frgd_path)
        self.coco = COCO(str(self.root / "instances_val2017.json"))
        self.cat_ids = sorted(self.coco.getCatIds())
        self.img_size = tuple(img_size)
        self.min_area = min_area
        self.max_tries = max_tries

    def candidate(self, rng: np.random.Generator):
        """One draw of the authors' loop: (annotation, image id) or None when it must be redrawn."""
        cat = self.cat_ids[int(rng.integers(len(self.cat_ids)))]
        img_ids = sorted(self.coco.getImgIds(catIds=[cat]))
        if not img_ids:
            return None
        img_id = img_ids[int(rng.integers(len(img_ids)))]
        ann_ids = sorted(self.coco.getAnnIds(imgIds=[img_id], catIds=[cat]))
        if not ann_ids:
            return None
        ann = self.coco.loadAnns([ann_ids[int(rng.integers(len(ann_ids)))]])[0]
        if ann["area"] < self.min_area:
            return None
        return ann, img_id

    def draw(self, rng: np.random.Generator):
        for _ in range(self.max_tries):
            cand = self.candidate(rng)
            if cand is None:
                continue
            ann, img_id = cand
            mask = self.coco.annToMask(ann)
            if not is_single_component(mask):
                continue
            info = self.coco.loadImgs([img_id])[0]
            img = read_rgb(self.root / "val2017" / info["file_name"])
            if img.shape[:2] != mask.shape:
                raise ValueError(f"COCO image {info['file_name']} is {img.shape[:2]} but its annotation "
                                 f"mask is {mask.shape}: the annotation file does not match the images")
            obj = img * mask[:, :, None]                          # masked first, then resized (authors)
            mask_s = resize_cover_crop(mask, self.img_size) > 0   # uint8 0/1, bilinear, as the authors
            # kept as resized, like the authors: the bilinear fringe just outside the resized mask
            # stays in the object layer
            obj_s = resize_cover_crop(obj, self.img_size)
            return obj_s, mask_s, {"coco_image": info["file_name"], "coco_annotation": int(ann["id"]),
                                   "category_id": int(ann["category_id"])}
        raise RuntimeError(f"no MS-COCO annotation passed the filter (area ≥ {self.min_area} px, one "
                           f"connected component) in {self.max_tries} draws: check {self.root}")


# scikit-image sample photographs in colour that ship inside the package (no download):
# name → file in skimage/data
BUILTIN_TEXTURES = {
    "astronaut": "astronaut.png", "chelsea": "chelsea.png", "coffee": "coffee.png", "rocket": "rocket.jpg",
    "hubble_deep_field": "hubble_deep_field.jpg", "immunohistochemistry": "ihc.png", "retina": "retina.jpg",
    "motorcycle_left": "motorcycle_left.png",
}
_TEXTURE_CACHE: dict[str, np.ndarray] = {}


def builtin_texture(name: str) -> np.ndarray:
    """A colour sample image of scikit-image, RGB uint8 (cached per process).

    Read from the package's own data folder with OpenCV (fast; the same pixels as ``skimage.data``
    for the PNG files); ``skimage.data`` is the fallback when a file is not shipped.
    """
    if name not in _TEXTURE_CACHE:
        import skimage.data as skd

        path = Path(skd.__file__).parent / BUILTIN_TEXTURES[name]
        if path.is_file():
            img = read_rgb(path)
        else:   # pragma: no cover - depends on the scikit-image build
            img = skd.stereo_motorcycle()[0] if name == "motorcycle_left" else getattr(skd, name)()
        _TEXTURE_CACHE[name] = np.ascontiguousarray(img[..., :3]).astype(np.uint8)
    return _TEXTURE_CACHE[name]


def random_view(rng: np.random.Generator, img: np.ndarray, size, min_frac: float = 0.5) -> np.ndarray:
    """A random square-ish window (side ≥ ``min_frac`` of the short side), maybe mirrored, scaled to cover ``size``."""
    h, w = img.shape[:2]
    side = int(round(rng.uniform(min_frac, 1.0) * min(h, w)))
    top = int(rng.integers(0, h - side + 1))
    left = int(rng.integers(0, w - side + 1))
    view = img[top:top + side, left:left + side]
    if rng.random() < 0.5:
        view = view[:, ::-1]
    return resize_cover_crop(np.ascontiguousarray(view), size)


def smooth_blob_mask(rng: np.random.Generator, size, area_frac=(0.17, 0.5), n_harmonics: int = 5,
                     max_tries: int = 100) -> np.ndarray:
    """A smooth, single-component random object mask [H, W] bool.

    The contour is star-shaped around a point near the image centre:
    ``r(θ) = r0 (1 + Σ_k a_k cos(kθ + φ_k))``, k = 2…n+1, with amplitudes decaying as 1/k and summing
    to at most 0.6 (so ``r > 0.4 r0``). ``r0`` gives an area of ``area_frac`` of the image — about
    what a COCO object of ≥ 40000 px covers after the 640×480 image is scaled and cropped.
    """
    H, W = size
    theta = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    for _ in range(max_tries):
        cx = W / 2 + rng.uniform(-0.15, 0.15) * W
        cy = H / 2 + rng.uniform(-0.15, 0.15) * H
        r0 = math.sqrt(rng.uniform(*area_frac) * H * W / math.pi)
        k = np.arange(2, n_harmonics + 2)
        amp = rng.uniform(0, 1, size=len(k)) / k
        amp *= min(1.0, 0.6 / max(amp.sum(), 1e-12))
        phase = rng.uniform(0, 2 * np.pi, size=len(k))
        r = r0 * (1 + (amp[:, None] * np.cos(k[:, None] * theta[None] + phase[:, None])).sum(0))
        pts = np.stack([cx + r * np.cos(theta), cy + r * np.sin(theta)], 1)
        mask = np.zeros((H, W), np.uint8)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
        if mask.any() and is_single_component(mask):
            return mask.astype(bool)
    raise RuntimeError("could not draw a single-component blob mask")


class BuiltinSource:
    """Object and background textures from scikit-image's sample photographs (no download)."""

    def __init__(self, img_size, textures=tuple(BUILTIN_TEXTURES)):
        self.img_size = tuple(img_size)
        self.textures = tuple(textures)
        for name in self.textures:        # load once now (fails early, and forked workers share it)
            builtin_texture(name)

    def draw(self, rng: np.random.Generator):
        n = len(self.textures)
        i_bg = int(rng.integers(n))
        i_fg = (i_bg + 1 + int(rng.integers(n - 1))) % n if n > 1 else i_bg
        background = random_view(rng, builtin_texture(self.textures[i_bg]), self.img_size)
        texture = random_view(rng, builtin_texture(self.textures[i_fg]), self.img_size)
        mask = smooth_blob_mask(rng, self.img_size)
        obj = texture * mask[..., None].astype(np.uint8)
        return obj, mask, background, {"background": self.textures[i_bg], "object": self.textures[i_fg]}


class CocoPaintingSource:
    """The authors' pairing: a COCO object over a painting."""

    def __init__(self, frgd_path, bkgd_path, img_size):
        check_coco_layout(frgd_path, bkgd_path)
        self.objects = CocoSource(frgd_path, img_size)
        self.paintings = PaintingSource(bkgd_path, img_size)

    def draw(self, rng: np.random.Generator):
        obj, mask, info = self.objects.draw(rng)
        background, info_bg = self.paintings.draw(rng)
        return obj, mask, background, {**info, **info_bg}


def make_source(kind: str, frgd_path, bkgd_path, img_size):
    """``coco``, ``builtin`` or ``auto`` (COCO when both folders are present, else builtin).

    Returns ``(source, resolved_kind)``.
    """
    if kind == "auto":
        kind = "coco" if coco_available(frgd_path) and paintings_available(bkgd_path) else "builtin"
    if kind == "coco":
        return CocoPaintingSource(frgd_path, bkgd_path, img_size), "coco"
    if kind == "builtin":
        return BuiltinSource(img_size), "builtin"
    raise ValueError(f"--source {kind!r}: choose coco, builtin or auto")
