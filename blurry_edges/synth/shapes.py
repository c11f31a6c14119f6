"""Basic-shape training / validation scenes (paper Sec. 4.2, following the authors' generator).

A scene is a uniform background at ``Z_max`` and ``n ~ U{lo, …, hi−1}`` shapes (circle, rotated
rectangle, triangle) with random 8-bit colors and depths ``U(Z_min, Z_max)``, painted far to near.
Every shape's binary mask is blurred with the Gaussian PSF of its depth under each optical power and
alpha-composited over the image so far; the pair is rounded to 8 bits, then made noisy (Eq. 23).

Ground truth per scene (all [H, W] unless noted):

=====================  ===========================================================================
``image_aif``          all-in-focus image [H, W, 3] (hard masks, no blur), uint8
``image_depth``        depth (m) of the front-most surface; background ``Z_max``
``boundary_location``  1-px contour of every shape inside its filled mask, nearer shapes overwriting
                       farther ones; values 0 / 255 like the authors'
``boundary_depth``     each contour dilated 3×3 with the shape's depth, written over the shape's
                       dilated filled mask (so a nearer shape erases farther boundaries); 0 elsewhere
``boundary_distance``  city-block distance of every pixel to the nearest boundary pixel (all ones
                       when the scene has none, as the authors do)
``derivative_map``     Sobel magnitude of each clean image [2, H, W, 3], image in [0, 255], ÷ 255
=====================  ===========================================================================

Local-stage patches (``sample_patches``) are centred on pixels within ``R//2 + 1`` (Chebyshev) of a
boundary and at least ``R//2`` from the image border, drawn without replacement over the whole split.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from ..camera import CameraParams
from .noise import add_noise, counts_dtype, draw_alpha
from .psf import MIN_SIGMA, blur_reflect, gaussian_kernel_1d

#: Shape kinds, in the authors' index order.
SHAPE_KINDS = ("circle", "rectangle", "triangle")
N_IMAGES = 2


@dataclass(frozen=True)
class ShapeSceneConfig:
    """Everything that defines the distribution of one basic-shape scene.

    ``num_shape`` is ``(lo, hi)`` with ``hi`` exclusive (the authors' default ``(15, 26)`` gives
    15–25 shapes). ``alpha`` is the range of the photon level, ``sigma`` the read noise (photons).
    """

    img_size: tuple[int, int] = (147, 147)
    R: int = 21
    num_shape: tuple[int, int] = (15, 26)
    alpha: tuple[float, float] = (180.0, 200.0)
    sigma: float = 2.0
    camera: CameraParams = field(default_factory=CameraParams)
    max_size_frac: float = 0.8

    @property
    def z_range(self) -> tuple[float, float]:
        return (self.camera.z_min, self.camera.z_max)

    def validate(self) -> "ShapeSceneConfig":
        validate_common(self.img_size, self.R, self.alpha, self.sigma)
        lo, hi = self.num_shape
        if int(lo) != lo or int(hi) != hi or lo < 0:
            raise ValueError(f"--num_shape {lo} {hi}: the numbers of shapes must be non-negative integers")
        if lo >= hi:
            raise ValueError(f"--num_shape {lo} {hi}: the lower bound must be smaller than the upper bound "
                             f"(the upper bound is exclusive, like the authors': 15 26 gives 15–25 shapes)")
        if not 0 < self.max_size_frac:
            raise ValueError("max_size_frac must be positive")
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["camera"] = self.camera.to_dict()
        d["img_size"] = list(self.img_size)
        d["num_shape"] = list(self.num_shape)
        d["alpha"] = list(self.alpha)
        return d

    @property
    def counts_dtype(self) -> np.dtype:
        """Integer type of the stored photon counts (uint8 while α ≤ 255)."""
        return counts_dtype(self.alpha[1])


def validate_common(img_size, R, alpha, sigma) -> None:
    """Checks shared by every generator; raise ``ValueError`` with the option's name."""
    H, W = (int(v) for v in img_size)
    if len(tuple(img_size)) != 2 or H != img_size[0] or W != img_size[1]:
        raise ValueError(f"--img_size {img_size}: give two integers H W")
    if int(R) != R or R < 3 or R % 2 == 0:
        raise ValueError(f"--R {R}: the patch size must be an odd integer ≥ 3 (the authors use 11, 21, 31)")
    if H < R or W < R:
        raise ValueError(f"--img_size {H} {W} is smaller than the patch size R={R}: "
                         f"every image must hold at least one R×R patch")
    lo, hi = float(alpha[0]), float(alpha[1])
    if not (0 < lo <= hi):
        raise ValueError(f"--alpha {alpha[0]} {alpha[1]}: the photon levels must satisfy 0 < lo ≤ hi")
    if round(hi) > 65535:
        raise ValueError(f"--alpha upper bound {hi} is too large (counts are stored as integers ≤ 65535)")
    if not float(sigma) >= 0:
        raise ValueError(f"--sigma {sigma}: the read noise must be ≥ 0")


def distance_dtype(shape_hw) -> np.dtype:
    """Smallest unsigned type holding any city-block distance inside an [H, W] array."""
    H, W = shape_hw
    return np.dtype(np.uint8) if (H - 1) + (W - 1) <= 255 else np.dtype(np.uint16)


# ---------------------------------------------------------------------------------------- maps
def city_block_distance(boundary: np.ndarray, dtype=None) -> np.ndarray:
    """City-block (4-neighbour) distance of every pixel to the nearest ``boundary`` pixel.

    Equals the authors' breadth-first growth with a cross structuring element. When there is no
    boundary pixel at all every distance is 1 (the authors' convention).
    """
    boundary = np.asarray(boundary) > 0
    dtype = dtype or distance_dtype(boundary.shape)
    if not boundary.any():
        return np.ones(boundary.shape, dtype=dtype)
    src = np.where(boundary, 0, 1).astype(np.uint8)
    # DIST_L1 with a 3×3 mask is exact for the city-block metric
    dist = cv2.distanceTransform(src, cv2.DIST_L1, 3)
    return np.rint(dist).astype(dtype)


def derivative_map(images: np.ndarray, dtype=np.float16) -> np.ndarray:
    """The stored color-derivative map (Eq. 13) of 8-bit images: per-channel Sobel magnitude, ÷ 255.

    Same size as the image (reflected border), unlike the renderer's ``wedges.sobel_magnitude``
    ("valid", two pixels smaller, float tensors); the data sets store this map and the datasets crop
    it by one pixel to meet the renderer's.

    ``images``: uint8 [..., H, W, 3] in [0, 255]. Kernels ``[[-1,0,1],[-2,0,2],[-1,0,1]]`` and its
    transpose; borders half-sample symmetric like SciPy's default ``reflect`` (the authors use
    ``scipy.ndimage.convolve``, whose kernel flip only changes the sign). The gradients of integer
    images are exact integers (int16); the magnitude is taken in float64 (NumPy: correctly rounded,
    the same on every machine and memory layout) and rounded once to ``dtype``. No ``1e-8`` is added
    here (only the losses add it). Returns the same shape as ``images``.
    """
    imgs = np.asarray(images)
    if imgs.dtype != np.uint8:
        raise TypeError(f"derivative_map expects uint8 images, got {imgs.dtype}")
    flat = imgs.reshape((-1,) + imgs.shape[-3:])
    out = np.empty(flat.shape, dtype)
    for n in range(flat.shape[0]):
        gx = cv2.Sobel(flat[n], cv2.CV_16S, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT).astype(np.float64)
        gy = cv2.Sobel(flat[n], cv2.CV_16S, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT).astype(np.float64)
        gx *= gx
        gy *= gy
        gx += gy
        np.sqrt(gx, out=gx)
        gx /= 255.0
        out[n] = gx.reshape(flat[n].shape)
    return out.reshape(imgs.shape)


def patch_candidates(boundary_location: np.ndarray, R: int) -> np.ndarray:
    """Pixels that may centre a local-stage patch: within ``R//2 + 1`` (3×3 dilations) of a boundary
    pixel and at least ``R//2`` from the image border. Bool [H, W]."""
    half = R // 2
    reach = half + 1
    kernel = np.ones((2 * reach + 1, 2 * reach + 1), np.uint8)
    near = cv2.dilate((np.asarray(boundary_location) > 0).astype(np.uint8), kernel,
                      borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
    margin = np.zeros_like(near)
    margin[half:near.shape[0] - half, half:near.shape[1] - half] = True
    return near & margin


# --------------------------------------------------------------------------------------- scene
def _bbox(mask: np.ndarray):
    """(y0, y1, x0, x1) of the non-zero pixels (exclusive ends), or None."""
    x, y, w, h = cv2.boundingRect(mask)
    if w == 0 or h == 0:
        return None
    return y, y + h, x, x + w


def _bbox_union(a: np.ndarray, b: np.ndarray):
    ba, bb = _bbox(a), _bbox(b)
    if ba is None or bb is None:
        return ba or bb
    return min(ba[0], bb[0]), max(ba[1], bb[1]), min(ba[2], bb[2]), max(ba[3], bb[3])


def _grow(box, m, H, W):
    y0, y1, x0, x1 = box
    return max(0, y0 - m), min(H, y1 + m), max(0, x0 - m), min(W, x1 + m)


@dataclass(frozen=True)
class ShapeSpec:
    """One shape of a scene. ``size``: circle ``(radius,)``; rectangle ``(width, height, angle_deg)``;
    triangle ``(radius, a1, a2, a3)`` (vertices at that distance from the centre, angles in radians)."""

    kind: int                         # index into SHAPE_KINDS
    color: tuple[int, int, int]
    z: float                          # depth (m), a float32 value
    center: tuple[float, float]       # (x, y) pixels
    size: tuple[float, ...]


@dataclass(frozen=True)
class SceneSpec:
    """Everything random about a clean scene: background color and shapes, far to near."""

    background: tuple[int, int, int]
    shapes: tuple[ShapeSpec, ...]


def draw_scene_spec(rng: np.random.Generator, cfg: ShapeSceneConfig) -> SceneSpec:
    """Draw a scene's shapes (kinds, colors, depths far to near, centres, sizes) in the authors' order."""
    H, W = cfg.img_size
    z_lo, z_hi = cfg.z_range
    n_obj = int(rng.integers(cfg.num_shape[0], cfg.num_shape[1]))
    bg = rng.integers(0, 255, size=3)                         # 0..254, like randint(0, 255)
    kind_color = rng.integers(0, [3, 255, 255, 255], size=(n_obj, 4))
    # depths rounded to float32 first, so the ground truth holds exactly the depth that made the blur
    z = np.sort(rng.uniform(z_lo, z_hi, size=n_obj))[::-1].astype(np.float32)   # far to near
    centers = rng.uniform(0, [W, H], size=(n_obj, 2))
    max_size = float(np.max(np.array([H, W]) * cfg.max_size_frac))
    shapes = []
    for s in range(n_obj):
        kind = int(kind_color[s, 0])
        if kind == 0:     # radius ~ U{0, …, int(max_size/2) − 1} (NumPy's randint truncates a float bound)
            size = (float(rng.integers(0, int(max_size / 2))),)
        elif kind == 1:   # side lengths U(0, max_size), angle U(0, 180) degrees
            size = tuple(float(v) for v in rng.uniform(0, [max_size, max_size, 180.0]))
        else:             # vertex distance U(0, max_size), three angles U(0, 2π)
            size = tuple(float(v) for v in rng.uniform(0, [max_size, 2 * np.pi, 2 * np.pi, 2 * np.pi]))
        shapes.append(ShapeSpec(kind, tuple(int(c) for c in kind_color[s, 1:]), float(z[s]),
                                (float(centers[s, 0]), float(centers[s, 1])), size))
    return SceneSpec(tuple(int(c) for c in bg), tuple(shapes))


def _draw_shape(shape: ShapeSpec, fill: np.ndarray, contour: np.ndarray) -> None:
    """Draw one shape's filled mask and 1-px contour like the authors (cv2, 8-connected lines).

    Drawn with value 1 (the authors draw 255 into float arrays; only "> 0" matters)."""
    cx, cy = shape.center
    if shape.kind == 0:
        c = (int(cx), int(cy))
        cv2.circle(fill, c, int(shape.size[0]), 1, -1)
        cv2.circle(contour, c, int(shape.size[0]), 1, 1)
        return
    if shape.kind == 1:
        w, h, angle = shape.size
        pts = cv2.boxPoints(((cx, cy), (w, h), angle))
    else:
        r, *angles = shape.size
        angles = np.asarray(angles)
        pts = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)
    pts = pts.astype(np.int64).astype(np.int32)      # truncation toward zero, as the authors
    cv2.drawContours(fill, [pts], 0, 1, -1)
    cv2.drawContours(contour, [pts], 0, 1, 1)


def make_clean_scene(rng: np.random.Generator, cfg: ShapeSceneConfig) -> dict:
    """Draw (``draw_scene_spec``) and render (``render_clean_scene``) one clean scene with its ground truth."""
    return render_clean_scene(draw_scene_spec(rng, cfg), cfg)


def render_clean_scene(spec: SceneSpec, cfg: ShapeSceneConfig) -> dict:
    """Render a clean scene and its ground truth (module docstring).

    Returns ``images_gt`` [2, H, W, 3] uint8, ``image_aif`` [H, W, 3] uint8, ``boundary_location``
    uint8 (0/255), ``image_depth`` and ``boundary_depth`` float32, ``boundary_distance`` (uint8/16),
    ``derivative_map`` [2, H, W, 3] float16, and ``n_shapes``.
    """
    H, W = cfg.img_size
    cam = cfg.camera
    bg = np.asarray(spec.background, np.float64)
    n_obj = len(spec.shapes)
    z = np.array([sh.z for sh in spec.shapes], np.float32)
    z_hi = cfg.z_range[1]

    # channel-first working copy: each channel is a contiguous plane (faster per-pixel compositing)
    imgs = np.empty((N_IMAGES, 3, H, W), np.float64)
    imgs[...] = bg[None, :, None, None]
    buf_a = np.empty((H, W), np.float64)
    buf_b = np.empty((H, W), np.float64)
    aif = np.empty((H, W, 3), np.uint8)
    aif[...] = np.asarray(spec.background, np.uint8)
    bloc = np.zeros((H, W), np.uint8)
    depth = np.full((H, W), np.float32(z_hi), np.float32)
    bdepth = np.zeros((H, W), np.float32)
    fill = np.zeros((H, W), np.uint8)
    contour = np.zeros((H, W), np.uint8)
    k3 = np.ones((3, 3), np.uint8)
    zero32 = np.float32(0)
    # blur σ (pixels) of every shape in both images, and the kernel half-widths
    sig = np.stack([np.asarray(cam.sigma_px(z.astype(np.float64), rho), np.float64) for rho in cam.rhos], 1)
    sig = sig.reshape(n_obj, N_IMAGES)
    radii = np.ceil(np.maximum(sig, MIN_SIGMA) * 3).astype(int)

    prev = (0, H, 0, W)
    for s, shape in enumerate(spec.shapes):
        color = np.asarray(shape.color)
        zs = z[s]
        py0, py1, px0, px1 = prev
        fill[py0:py1, px0:px1] = 0
        contour[py0:py1, px0:px1] = 0
        _draw_shape(shape, fill, contour)
        box = _bbox_union(fill, contour)
        if box is None:
            prev = (0, 0, 0, 0)
            continue
        prev = box
        # ground-truth maps, restricted to the shape's box grown by the 3×3 dilation
        y0, y1, x0, x1 = _grow(box, 1, H, W)
        f = fill[y0:y1, x0:x1]
        c = contour[y0:y1, x0:x1]
        inside = f.view(bool)                               # fill holds 0 / 1
        fill_dil = cv2.dilate(f, k3, borderType=cv2.BORDER_CONSTANT, borderValue=0).view(bool)
        cont_dil = cv2.dilate(c, k3, borderType=cv2.BORDER_CONSTANT, borderValue=0).view(bool)
        np.copyto(depth[y0:y1, x0:x1], zs, where=inside)
        np.copyto(bdepth[y0:y1, x0:x1], np.where(cont_dil, zs, zero32), where=fill_dil)
        np.copyto(bloc[y0:y1, x0:x1], c * np.uint8(255), where=inside)
        np.copyto(aif[y0:y1, x0:x1], color.astype(np.uint8), where=inside[..., None])
        # defocus: blur the shape's mask with the PSF of its depth, per optical power, and composite
        # over the image so far (the authors blur the 0/255 mask and divide by 255: same numbers)
        for ii in range(N_IMAGES):
            kern = gaussian_kernel_1d(sig[s, ii])
            yb0, yb1, xb0, xb1 = _grow(box, int(radii[s, ii]), H, W)
            a = blur_reflect(fill[yb0:yb1, xb0:xb1], kern)
            one_minus_a = np.subtract(1.0, a, out=buf_a[:yb1 - yb0, :xb1 - xb0])
            tmp = buf_b[:yb1 - yb0, :xb1 - xb0]
            for j in range(3):
                # the authors' a·color + (1 − a)·image (OpenCV may fuse the multiply-add: last-bit
                # differences only)
                region = imgs[ii, j, yb0:yb1, xb0:xb1]
                cv2.multiply(one_minus_a, region, dst=tmp)
                cv2.scaleAdd(a, float(color[j]), tmp, dst=region)
    clean = np.round(imgs).astype(np.uint8).transpose(0, 2, 3, 1).copy()
    return {
        "images_gt": clean,
        "image_aif": aif,
        "boundary_location": bloc,
        "image_depth": depth,
        "boundary_depth": bdepth,
        "boundary_distance": city_block_distance(bloc),
        "derivative_map": derivative_map(clean),
        "n_shapes": n_obj,
    }


def make_scene(rng: np.random.Generator, cfg: ShapeSceneConfig) -> dict:
    """One complete training scene: clean pair and ground truth (``make_clean_scene``), then noise.

    Returns the arrays as stored on disk: ``images_ny`` [2, H, W, 3] counts (uint8 while α ≤ 255),
    ``images_gt`` [2, H, W, 3] uint8, ``alpha`` float32, ``image_depth``/``boundary_depth`` float32
    [H, W], ``boundary_distance`` uint8/uint16, ``boundary_location`` uint8 (0/255),
    ``derivative_map`` float16 [2, H, W, 3], ``image_aif`` uint8 [H, W, 3], and ``n_candidates``,
    the number of pixels that may centre a local-stage patch.
    """
    scene = make_clean_scene(rng, cfg)
    alpha = draw_alpha(rng, cfg.alpha)
    scene["images_ny"] = add_noise(rng, scene["images_gt"], alpha, cfg.sigma, dtype=cfg.counts_dtype)
    scene["alpha"] = alpha
    scene["n_candidates"] = int(np.count_nonzero(patch_candidates(scene["boundary_location"], cfg.R)))
    return scene


# ------------------------------------------------------------------------------------- patches
def select_patches(rng: np.random.Generator, n_candidates, n_patch: int, n_img: int = N_IMAGES):
    """Choose ``n_patch`` patch centres uniformly without replacement among all candidates of a split.

    ``n_candidates[i]`` is the number of candidate pixels of scene ``i`` (row-major order inside the
    scene, scenes in index order: the authors' ``np.where`` order over the stacked split).

    Returns ``(scene, local, image)`` integer arrays of length ``n_patch`` in patch order: the scene
    index, the rank of the centre among that scene's candidates, and which image of the pair.
    """
    counts = np.asarray(n_candidates, dtype=np.int64)
    total = int(counts.sum())
    if n_patch > total:
        raise ValueError(f"only {total} candidate patch centres for {n_patch} patches: "
                         f"make more scenes, more shapes or a smaller R")
    chosen = rng.choice(total, size=n_patch, replace=False) if n_patch else np.zeros(0, np.int64)
    image = rng.integers(0, n_img, size=n_patch)
    ends = np.cumsum(counts)
    scene = np.searchsorted(ends, chosen, side="right")
    local = chosen - (ends[scene] - counts[scene])
    return scene.astype(np.int64), local.astype(np.int64), image.astype(np.int64)


def sample_patches(rng: np.random.Generator, boundary_locations, R: int, n_patch: int,
                   n_candidates=None) -> np.ndarray:
    """Where the local-stage patches of a split are cut: ``[n_patch, 4]`` int32 rows
    ``(scene, image, centre row, centre column)``, in patch order.

    ``boundary_locations``: the split's [N, H, W] boundary maps (a memory map is fine: only the
    chosen scenes are read twice). ``n_candidates``: the per-scene candidate counts, when known.
    """
    if n_candidates is None:
        n_candidates = [np.count_nonzero(patch_candidates(b, R)) for b in boundary_locations]
    scene, local, image = select_patches(rng, n_candidates, n_patch)
    where = np.zeros((n_patch, 4), np.int32)
    for sc in np.unique(scene):
        bloc = np.asarray(boundary_locations[sc])
        centres = np.flatnonzero(patch_candidates(bloc, R))
        sel = np.flatnonzero(scene == sc)
        h, w = np.divmod(centres[local[sel]], bloc.shape[1])
        where[sel] = np.stack([scene[sel], image[sel], h, w], 1)
    return where


def cut_patch(scene: dict, h: int, w: int, image: int, R: int) -> dict:
    """Cut the R×R local-stage patch centred at (h, w) from image ``image`` of a stored scene.

    ``scene`` maps the scene array names (``images_ny``, ``images_gt``, ``image_aif``,
    ``boundary_location``, ``image_depth``, ``boundary_depth``, ``derivative_map``, ``alpha``) to
    that scene's arrays. The boundary distance is recomputed inside the patch (all ones when the
    patch holds no boundary pixel), as the authors do.
    """
    half = R // 2
    sl = (slice(h - half, h + half + 1), slice(w - half, w + half + 1))
    bloc = np.asarray(scene["boundary_location"][sl])
    return {
        "patches_ny": np.asarray(scene["images_ny"][image][sl]),
        "patches_gt": np.asarray(scene["images_gt"][image][sl]),
        "patches_aif": np.asarray(scene["image_aif"][sl]),
        "boundary_locations": bloc,
        "image_depths": np.asarray(scene["image_depth"][sl]),
        "boundary_depths": np.asarray(scene["boundary_depth"][sl]),
        "boundary_distances": city_block_distance(bloc, dtype=distance_dtype((R, R))),
        "derivative_maps": np.asarray(scene["derivative_map"][image][sl]),
        "alphas": np.float32(scene["alpha"]),
    }
