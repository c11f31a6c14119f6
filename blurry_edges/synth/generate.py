"""Whole data sets: the training/validation set (scenes + local-stage patches) and the test set.

Reproducibility: scene ``i`` of split ``s`` draws everything from
``np.random.default_rng([seed, stream, split_id, i])`` (stream 0: the scene itself, 1: the patch
selection of a split, 2: the texture choice of a test scene; split ids train 0, val 1, test 2), so
a set depends only on its options and seed — never on the number of worker processes. Workers
produce scenes; the parent writes them in index order (``writer.StagingDir``).

On-disk layout (ours, ``blurry_edges_v1``; ``manifest.json`` lists every file's shape and dtype)::

    <data_path>/                       train/val, per split s ∈ {train, val}, N scenes
      images_ny_s.npy        uint8   [N, 2, H, W, 3]  photon counts (uint16 when α > 255)
      images_gt_s.npy        uint8   [N, 2, H, W, 3]  clean 8-bit images (not scaled by α)
      alphas_s.npy           float32 [N]              photon level α
      images_aif_s.npy       uint8   [N, H, W, 3]     all-in-focus image
      image_depths_s.npy     float32 [N, H, W]        depth (m)
      boundary_depths_s.npy  float32 [N, H, W]        boundary depth (m), 0 off boundaries
      boundary_locations_s.npy uint8 [N, H, W]        0 / 255
      boundary_distances_s.npy uint16 [N, H, W]       city-block distance (uint8 when H+W−2 ≤ 255)
      derivative_maps_s.npy  float16 [N, 2, H, W, 3]  Sobel magnitude / 255 (uncropped)
      patches/               2N local-stage patches in the authors' names:
        patches_ny_s, patches_gt_s, patches_aif_s (uint8 [2N, R, R, 3]), alphas_s (float32 [2N]),
        boundary_locations_s (uint8), image_depths_s, boundary_depths_s (float32),
        boundary_distances_s (uint8) [2N, R, R], derivative_maps_s (float16 [2N, R, R, 3]);
        and ours only: patch_index_s (int32 [2N, 4]: scene, image, centre row, centre column)
    <data_path>/                       test (realistic), N scenes
      images_ny.npy uint8 [N, 2, H, W, 3], images_gt.npy uint8, depth_maps.npy float32 [N, H, W],
      alphas.npy float32 [N], sources.json (where each texture came from)
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import json
import multiprocessing as mp
import os
import platform
import signal
import threading
from pathlib import Path
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np
from tqdm import tqdm

from .. import __version__
from .realistic import RealisticConfig, make_test_scene
from .shapes import (N_IMAGES, ShapeSceneConfig, cut_patch, distance_dtype, make_scene, sample_patches,
                     validate_common)
from .writer import FORMAT_NAME, NpyItemReader, StagingDir, check_destination, check_free_space

SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
STREAM_SCENE, STREAM_PATCHES, STREAM_SOURCE = 0, 1, 2
PATCHES_PER_SCENE = 2          # the authors cut 2·N patches per split
#: options that change how a set is made, never what it holds (kept apart in the manifest)
RUNTIME_OPTIONS = ("workers", "save_png", "overwrite", "cuda", "quiet")
RNG_NOTE = ("numpy PCG64 default_rng([seed, stream, split_id, index]); streams: 0 scene, "
            "1 patch selection (index 0), 2 test texture choice; split ids: train 0, val 1, test 2")


def scene_rng(seed: int, split: str, index: int, stream: int = STREAM_SCENE) -> np.random.Generator:
    """The generator of one scene (or of a split's patch selection): independent of worker count."""
    return np.random.default_rng([int(seed), int(stream), SPLIT_IDS[split], int(index)])


# ------------------------------------------------------------------------------- parallelism
def _init_worker() -> None:
    # Ctrl-C reaches every process of the terminal's group: the parent stops the pool and cleans up;
    # workers ignore it instead of printing a KeyboardInterrupt traceback each.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)


def _start_forkserver_ignoring_sigint() -> None:
    """Start the fork server (and multiprocessing's resource tracker) deaf to Ctrl-C, without losing one.

    Ctrl-C goes to every process of the terminal's group. The server is started from this thread
    with SIGINT blocked: a signal mask is inherited through fork and exec, so during its seconds of
    imports the server holds a Ctrl-C pending until its main loop sets SIGINT to ignored (which
    discards it), and the workers it forks ignore it too (``_init_worker``): no KeyboardInterrupt
    tracebacks from them. This process keeps a Python handler meanwhile (never SIG_IGN, which would
    drop a Ctrl-C that another of its threads, e.g. a progress bar's monitor, happens to receive);
    the handler only records it, and the Ctrl-C is raised once the server is up. The resource
    tracker starts first, on its own: starting it unblocks SIGINT.
    """
    from multiprocessing import forkserver, resource_tracker

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        forkserver.ensure_running()
        return
    resource_tracker.ensure_running()       # blocks and then unblocks SIGINT itself: not inside our block
    with _deferred_sigint():
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            forkserver.ensure_running()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)   # a Ctrl-C held back meanwhile arrives now


@contextlib.contextmanager
def _deferred_sigint():
    """Hold a Ctrl-C back until the block has finished, then raise it (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def resolve_workers(workers: int) -> int:
    if workers < 0:
        raise ValueError(f"--workers {workers}: give 0 (all cores) or a positive number")
    if workers == 0:
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:   # not on Linux
            return max(1, os.cpu_count() or 1)
    return workers


def parallel_imap(fn: Callable, items: Iterable, workers: int, chunksize: int = 8,
                  window: int | None = None) -> Iterator:
    """``map(fn, items)`` in order, over ``workers`` processes (in-process when 1).

    ``window`` bounds how many items are handed to the pool at once (items may be large arrays).
    OpenCV runs single-threaded inside (no over-subscription; same numbers either way).
    """
    if workers <= 1:
        previous = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            for item in items:
                yield fn(item)
        finally:
            cv2.setNumThreads(previous)
        return
    # not "fork": forking a parent whose OpenMP/OpenCV thread pools are already running can
    # deadlock the children (seen here: a pool hung in futex_wait); a fork server is fork-safe.
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    if method == "forkserver":
        # the server imports the synthesis code once; every worker forks from it ready to go
        ctx.set_forkserver_preload([__name__, getattr(fn, "__module__", None) or __name__])
        _start_forkserver_ignoring_sigint()
    pool = None
    try:
        with _deferred_sigint():      # a worker interrupted mid-start would print a traceback
            pool = ctx.Pool(workers, initializer=_init_worker)
    except KeyboardInterrupt:
        if pool is not None:
            pool.terminate()
        raise
    with pool:
        if window is None:
            yield from pool.imap(fn, items, chunksize)
        else:
            it = iter(items)
            while batch := list(itertools.islice(it, window)):
                yield from pool.imap(fn, batch, chunksize)


# ------------------------------------------------------------------------------------ helpers
def _versions() -> dict:
    import scipy
    import skimage

    return {"blurry_edges": __version__, "numpy": np.__version__, "opencv": cv2.__version__,
            "scipy": scipy.__version__, "scikit-image": skimage.__version__,
            "python": platform.python_version()}


def _check_count(name: str, value) -> int:
    if int(value) != value or value < 0:
        raise ValueError(f"--{name} {value}: must be a non-negative integer")
    return int(value)


def _to_bgr(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img[..., ::-1])


def _png(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)


def _norm_u8(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (np.clip((np.asarray(x, np.float64) - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


# ------------------------------------------------------------------------ train / validation
SCENE_FILES = {   # our file stem → (key in the scene dict, per-scene shape builder, dtype builder)
    "images_ny": ("images_ny", lambda H, W: (N_IMAGES, H, W, 3), lambda cfg: cfg.counts_dtype),
    "images_gt": ("images_gt", lambda H, W: (N_IMAGES, H, W, 3), lambda cfg: np.uint8),
    "images_aif": ("image_aif", lambda H, W: (H, W, 3), lambda cfg: np.uint8),
    "image_depths": ("image_depth", lambda H, W: (H, W), lambda cfg: np.float32),
    "boundary_depths": ("boundary_depth", lambda H, W: (H, W), lambda cfg: np.float32),
    "boundary_locations": ("boundary_location", lambda H, W: (H, W), lambda cfg: np.uint8),
    "boundary_distances": ("boundary_distance", lambda H, W: (H, W), lambda cfg: distance_dtype(cfg.img_size)),
    "derivative_maps": ("derivative_map", lambda H, W: (N_IMAGES, H, W, 3), lambda cfg: np.float16),
}
PATCH_FILES = {   # the authors' patch file stems → (per-patch shape builder, dtype builder)
    "patches_ny": (lambda R: (R, R, 3), lambda cfg: cfg.counts_dtype),
    "patches_gt": (lambda R: (R, R, 3), lambda cfg: np.uint8),
    "patches_aif": (lambda R: (R, R, 3), lambda cfg: np.uint8),
    "boundary_locations": (lambda R: (R, R), lambda cfg: np.uint8),
    "image_depths": (lambda R: (R, R), lambda cfg: np.float32),
    "boundary_depths": (lambda R: (R, R), lambda cfg: np.float32),
    "boundary_distances": (lambda R: (R, R), lambda cfg: distance_dtype((cfg.R, cfg.R))),
    "derivative_maps": (lambda R: (R, R, 3), lambda cfg: np.float16),
    "alphas": (lambda R: (), lambda cfg: np.float32),
}


def train_val_bytes(cfg: ShapeSceneConfig, n_scenes: int, patches_per_scene: int = PATCHES_PER_SCENE) -> int:
    """Bytes our format needs for ``n_scenes`` scenes (and their patches)."""
    H, W = cfg.img_size
    per_scene = sum(int(np.prod(shape(H, W))) * np.dtype(dt(cfg)).itemsize for _, shape, dt in SCENE_FILES.values())
    per_scene += 4   # α
    per_patch = sum(int(np.prod(shape(cfg.R))) * np.dtype(dt(cfg)).itemsize for shape, dt in PATCH_FILES.values())
    per_patch += 16  # patch_index
    return n_scenes * (per_scene + patches_per_scene * per_patch)


def train_val_float64_bytes(cfg: ShapeSceneConfig, n_scenes: int) -> int:
    """Bytes of the same set in the authors' format (every array float64)."""
    H, W = cfg.img_size
    per_scene = 8 * (sum(int(np.prod(shape(H, W))) for _, shape, _ in SCENE_FILES.values()) + 1)
    per_patch = 8 * sum(int(np.prod(shape(cfg.R))) for shape, _ in PATCH_FILES.values())
    return n_scenes * (per_scene + PATCHES_PER_SCENE * per_patch)


def _shape_scene_task(cfg: ShapeSceneConfig, seed: int, split: str, index: int) -> dict:
    return make_scene(scene_rng(seed, split, index), cfg)


def _preview_train(root: Path, split: str, i: int, s: dict, cfg: ShapeSceneConfig) -> None:
    z0, z1 = cfg.z_range
    lo, hi = 1.25 * z0 - 0.25 * z1, 1.25 * z1 - 0.25 * z0     # the authors' display range
    d = root / "png" / split
    _png(d / f"aif_{i}.png", _to_bgr(s["image_aif"]))
    _png(d / f"image_depth_{i}.png", _norm_u8(s["image_depth"], lo, hi))
    _png(d / f"boundary_depth_{i}.png", _norm_u8(s["boundary_depth"], lo, hi))
    _png(d / f"boundary_location_{i}.png", s["boundary_location"])
    bd = s["boundary_distance"].astype(np.float64)
    _png(d / f"boundary_distance_{i}.png", _norm_u8(bd, 0, max(bd.max(), 1)))
    for ii in range(N_IMAGES):
        _png(d / f"clean_{i}_{ii}.png", _to_bgr(s["images_gt"][ii]))
        noisy = s["images_ny"][ii].astype(np.float64) / float(s["alpha"]) * 255
        _png(d / f"noisy_{i}_{ii}.png", _to_bgr(np.clip(noisy, 0, 255).astype(np.uint8)))
        der = s["derivative_map"][ii].astype(np.float64)
        _png(d / f"derivative_{i}_{ii}.png", _to_bgr(_norm_u8(der, 0, max(der.max(), 1e-12))))


def _write_train_val_split(stage: StagingDir, cfg: ShapeSceneConfig, split: str, n: int, seed: int,
                           workers: int, save_png: int, progress: bool) -> np.ndarray:
    """Generate and write the scenes of one split; return each scene's number of patch candidates."""
    H, W = cfg.img_size
    writers = {stem: stage.writer(f"{stem}_{split}.npy", (n,) + shape(H, W), dt(cfg))
               for stem, (_, shape, dt) in SCENE_FILES.items()}
    alphas = np.zeros(n, np.float32)
    n_candidates = np.zeros(n, np.int64)
    task = functools.partial(_shape_scene_task, cfg, seed, split)
    results = parallel_imap(task, range(n), workers, chunksize=8)
    for i, scene in enumerate(tqdm(results, total=n, desc=f"{split} scenes", disable=not progress)):
        for stem, (key, _, _) in SCENE_FILES.items():
            writers[stem].write(i, scene[key])
        alphas[i] = scene["alpha"]
        n_candidates[i] = scene["n_candidates"]
        if i < save_png:
            _preview_train(stage.path, split, i, scene, cfg)
    for w in writers.values():
        w.close()
    stage.save(f"alphas_{split}.npy", alphas)
    return n_candidates


def _write_train_val_patches(stage: StagingDir, cfg: ShapeSceneConfig, split: str, n_candidates: np.ndarray,
                             seed: int, progress: bool, patches_per_scene: int = PATCHES_PER_SCENE) -> int:
    """Draw the split's k·N local-stage patches (the authors' k = 2) among all candidate centres and write them."""
    R = cfg.R
    n_patch = patches_per_scene * len(n_candidates)
    out = {stem: np.zeros((n_patch,) + shape(R), dt(cfg)) for stem, (shape, dt) in PATCH_FILES.items()}
    where = np.zeros((n_patch, 4), np.int32)
    if n_patch:
        # plain reads of the chosen scenes, not memory maps (which would count in resident memory)
        arrays = {key: NpyItemReader(stage.path / f"{stem}_{split}.npy") for stem, (key, _, _) in SCENE_FILES.items()}
        alphas = np.load(stage.path / f"alphas_{split}.npy")
        where = sample_patches(scene_rng(seed, split, 0, STREAM_PATCHES), arrays["boundary_location"], R,
                               n_patch, n_candidates)
        order = np.argsort(where[:, 0], kind="stable")
        groups = np.split(order, np.flatnonzero(np.diff(where[order, 0])) + 1)
        for group in tqdm(groups, desc=f"{split} patches", disable=not progress):
            sc = int(where[group[0], 0])
            scene = {key: arr[sc] for key, arr in arrays.items()}
            scene["alpha"] = alphas[sc]
            for p in group:
                _, image, h, w = (int(v) for v in where[p])
                for stem, value in cut_patch(scene, h, w, image, R).items():
                    out[stem][p] = value
    for stem, arr in out.items():
        stage.save(f"patches/{stem}_{split}.npy", arr)
    stage.save(f"patches/patch_index_{split}.npy", where)
    return n_patch


def generate_train_val(cfg: ShapeSceneConfig, data_path, num_sample_train: int, num_sample_val: int,
                       seed: int = 1869, workers: int = 1, save_png: int = 0, overwrite: bool = False,
                       cli_args: dict | None = None, progress: bool = True,
                       patches_per_scene: int = PATCHES_PER_SCENE) -> Path:
    """Generate the basic-shape training and validation sets with their local-stage patches.

    ``patches_per_scene`` (the authors': 2) sets how many local-stage patches are cut per scene; more
    give the local stage more distinct samples for the price of one scene (README "Training on a CPU").

    Every check happens before any work (``ValueError``/``FileExistsError``/``OSError``). Returns the
    folder written. See the module docstring for the layout.
    """
    cfg.validate()
    n_train = _check_count("num_sample_train", num_sample_train)
    n_val = _check_count("num_sample_val", num_sample_val)
    seed = _check_count("seed", seed)
    save_png = _check_count("save_png", save_png)
    workers = resolve_workers(workers)
    data_path = Path(data_path)
    check_destination(data_path, overwrite)
    if int(patches_per_scene) != patches_per_scene or patches_per_scene < 1:
        raise ValueError(f"--patches_per_scene {patches_per_scene}: must be a positive integer (the authors use 2)")
    check_free_space(data_path, train_val_bytes(cfg, n_train + n_val, int(patches_per_scene)))
    with StagingDir(data_path, overwrite) as stage:
        counts = {}
        for split, n in (("train", n_train), ("val", n_val)):
            cand = _write_train_val_split(stage, cfg, split, n, seed, min(workers, max(n, 1)), save_png, progress)
            counts[split] = n
            counts[f"patches_{split}"] = _write_train_val_patches(stage, cfg, split, cand, seed, progress,
                                                                  int(patches_per_scene))
        manifest = {
            "format": FORMAT_NAME,
            "kind": "train_val",
            "seed": seed,
            "R": cfg.R,
            "img_size": list(cfg.img_size),
            "channel_order": "RGB",
            "camera": cfg.camera.to_dict(),
            "scene_config": cfg.to_dict(),
            "counts": counts,
            "params": {k: v for k, v in (cli_args or {}).items() if k not in RUNTIME_OPTIONS},
            "runtime": {**{k: v for k, v in (cli_args or {}).items() if k in RUNTIME_OPTIONS},
                        "workers": workers, "save_png": save_png},
            "rng": RNG_NOTE,
            "units": {
                "images_ny": "photon counts, clip(Poisson(alpha*clean/255) + N(0, sigma^2), 0, alpha) rounded",
                "images_gt": "clean 8-bit image (the authors store clean*alpha/255)",
                "derivative_maps": "Sobel magnitude of the clean image in [0,255], divided by 255, uncropped",
                "image_depths": "metres", "boundary_depths": "metres, 0 off boundaries",
                "boundary_locations": "0/255", "boundary_distances": "pixels (city block)",
            },
            "versions": _versions(),
        }
        return stage.commit(manifest)


# ------------------------------------------------------------------------------------- test


def test_set_bytes(cfg: RealisticConfig, n: int) -> int:
    H, W = cfg.img_size
    return n * (N_IMAGES * H * W * 3 * (np.dtype(cfg.counts_dtype).itemsize + 1) + 4 * H * W + 4)


def _test_scene_task(cfg: RealisticConfig, seed: int, item) -> dict:
    index, obj, mask, background = item
    return make_test_scene(scene_rng(seed, "test", index), obj, mask, background, cfg)


def _test_items(source, n: int, seed: int, infos: list) -> Iterator:
    for i in range(n):
        obj, mask, background, info = source.draw(scene_rng(seed, "test", i, STREAM_SOURCE))
        infos.append({"index": i, **info})
        yield i, obj, mask, background


def generate_test(cfg: RealisticConfig, data_path, num_sample_test: int, source: str = "auto",
                  frgd_path="./data/MS_COCO_annotations/", bkgd_path="./data/Painting/", R: int = 21,
                  seed: int = 1869, workers: int = 1, save_png: int = 0, overwrite: bool = False,
                  cli_args: dict | None = None, progress: bool = True, log: Callable = print) -> Path:
    """Generate the realistic test set (``--source coco|builtin|auto``). Returns the folder written."""
    from .sources import make_source

    validate_common(cfg.img_size, R, cfg.alpha, cfg.sigma)
    if int(cfg.n_interval) != cfg.n_interval or cfg.n_interval < 1:
        raise ValueError(f"--n_interval {cfg.n_interval}: must be a positive integer (the authors use 150)")
    n = _check_count("num_sample_test", num_sample_test)
    seed = _check_count("seed", seed)
    save_png = _check_count("save_png", save_png)
    workers = resolve_workers(workers)
    data_path = Path(data_path)
    check_destination(data_path, overwrite)
    check_free_space(data_path, test_set_bytes(cfg, n))
    src, resolved = make_source(source, frgd_path, bkgd_path, cfg.img_size)
    if source == "auto":
        log(f"--source auto: using {'MS-COCO objects over paintings' if resolved == 'coco' else 'the built-in scikit-image textures (no MS-COCO / paintings found at ' + str(frgd_path) + ', ' + str(bkgd_path) + ')'}")
    H, W = cfg.img_size
    with StagingDir(data_path, overwrite) as stage:
        w_ny = stage.writer("images_ny.npy", (n, N_IMAGES, H, W, 3), cfg.counts_dtype)
        w_gt = stage.writer("images_gt.npy", (n, N_IMAGES, H, W, 3), np.uint8)
        w_depth = stage.writer("depth_maps.npy", (n, H, W), np.float32)
        alphas = np.zeros(n, np.float32)
        infos: list = []
        task = functools.partial(_test_scene_task, cfg, seed)
        workers = min(workers, max(n, 1))
        results = parallel_imap(task, _test_items(src, n, seed, infos), workers, chunksize=1,
                                window=4 * workers)
        z0, z1 = cfg.z_range
        for i, scene in enumerate(tqdm(results, total=n, desc="test scenes", disable=not progress)):
            w_ny.write(i, scene["images_ny"])
            w_gt.write(i, scene["images_gt"])
            w_depth.write(i, scene["depth_map"])
            alphas[i] = scene["alpha"]
            if i < save_png:
                d = stage.path / "png"
                _png(d / f"depth_{i}.png", _norm_u8(scene["depth_map"], z0, z1))
                for ii in range(N_IMAGES):
                    _png(d / f"clean_{i}_{ii}.png", _to_bgr(scene["images_gt"][ii]))
                    noisy = scene["images_ny"][ii].astype(np.float64) / float(scene["alpha"]) * 255
                    _png(d / f"noisy_{i}_{ii}.png", _to_bgr(np.clip(noisy, 0, 255).astype(np.uint8)))
        stage.save("alphas.npy", alphas)
        with open(stage.path / "sources.json", "w") as f:
            json.dump(infos, f, indent=1)
        manifest = {
            "format": FORMAT_NAME,
            "kind": "test",
            "seed": seed,
            "img_size": [H, W],
            "channel_order": "RGB",
            "source": resolved,
            "camera": cfg.camera.to_dict(),
            "scene_config": cfg.to_dict(),
            "counts": {"test": n},
            "params": {k: v for k, v in (cli_args or {}).items() if k not in RUNTIME_OPTIONS},
            "runtime": {**{k: v for k, v in (cli_args or {}).items() if k in RUNTIME_OPTIONS},
                        "workers": workers, "save_png": save_png},
            "rng": RNG_NOTE,
            "units": {"images_ny": "photon counts", "images_gt": "clean render rounded to 8 bits "
                      "(the noise was drawn from the unrounded render)", "depth_maps": "metres"},
            "versions": _versions(),
        }
        return stage.commit(manifest)
