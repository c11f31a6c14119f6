"""Datasets over the stored arrays: this implementation's format and the authors' (paper Sec. 4.2).

Two on-disk formats are read, detected automatically:

* **ours** (``blurry_edges_v1``, written by ``train_val_data_generator.py`` / ``test_data_generator.py``):
  a ``manifest.json`` lists every file's shape and dtype; photon counts and clean images are 8-bit,
  depths float32, derivative maps float16 (see ``blurry_edges/synth/generate.py``).
* **the authors'** (downloaded from https://blurry-edges.qiguo.org/data): the same file names, every
  array float64, no manifest. Their clean images are stored as ``clean · α / 255``.

Every item is made of CPU float32 tensors in the units the networks train with (noisy ``counts/α``,
clean in [0, 1], derivative maps ``Sobel/255`` cropped by one pixel, distances in pixels, depths in
metres); nothing is moved to a device here. Arrays are memory-mapped, never loaded whole.

Channel order: our sets are RGB. The authors' sets are BGR (OpenCV); for the random colours of the
training scenes that is immaterial and nothing is converted. ``TestSceneDataset(channel_order=...)``
can convert the realistic test images either way (default: as stored, so the authors' pretrained
networks see exactly what they saw in the paper).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from .camera import CameraParams
from .patches import CropLayout, PatchGrid

FORMAT_NAME = "blurry_edges_v1"
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val")

_TRAIN_HINT = ("create it with `python train_val_data_generator.py --data_path {root}` or download the "
               "authors' data from https://blurry-edges.qiguo.org/data")
_TEST_HINT = ("create it with `python test_data_generator.py --data_path {root}` (add --big for 587×587) "
              "or download the authors' data from https://blurry-edges.qiguo.org/data")


def read_manifest(root: str | os.PathLike) -> dict | None:
    """The manifest of a data set of ours, or ``None`` for the authors' format (no manifest).

    ``root`` may be the data folder or its ``patches`` sub-folder (the manifest is in the parent).
    Raises ``ValueError`` for a manifest of an unknown format.
    """
    root = Path(root)
    for folder in (root, root.parent) if root.name == "patches" else (root,):
        path = folder / MANIFEST_NAME
        if path.is_file():
            try:
                manifest = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} is not valid JSON ({e}); regenerate the data set") from e
            if manifest.get("format") != FORMAT_NAME:
                raise ValueError(f"{path}: unknown data format {manifest.get('format')!r} (expected {FORMAT_NAME!r})")
            manifest["_root"] = str(folder)
            return manifest
    return None


class _StoredArrays(Dataset):
    """Memory-mapped arrays of one data set, validated against its manifest, reopened per process."""

    kind = ""
    hint = _TRAIN_HINT

    def __init__(self, root, files: dict[str, str], manifest: dict | None, base: Path):
        self.root = Path(root)
        self._files = files                # name → path
        self._base = base                  # folder the manifest's relative paths start from
        self.manifest = manifest
        self.format = "ours" if manifest is not None else "authors"
        self._arrays: dict[str, np.ndarray] | None = None
        self._pid = None
        if manifest is not None and manifest.get("kind") != self.kind:
            raise ValueError(f"{self.root} holds a {manifest.get('kind')!r} set, not a {self.kind!r} set")
        arrays = self._open()
        lengths = {k: a.shape[0] for k, a in arrays.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"{self.root}: the arrays disagree on the number of items: {lengths}")
        self._len = next(iter(lengths.values()))
        self._arrays, self._pid = arrays, os.getpid()
        self.camera = CameraParams.from_dict(manifest["camera"]) if manifest is not None else None

    def _open(self) -> dict[str, np.ndarray]:
        arrays = {}
        for name, path in self._files.items():
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing; " + self.hint.format(root=self.root))
            arr = np.load(path, mmap_mode="r")
            if self.manifest is not None:
                rel = path.relative_to(self._base).as_posix()
                entry = self.manifest.get("files", {}).get(rel)
                if entry is not None and (list(arr.shape) != entry["shape"] or arr.dtype.name != entry["dtype"]):
                    raise ValueError(f"{path} is {list(arr.shape)} {arr.dtype.name} but the manifest says "
                                     f"{entry['shape']} {entry['dtype']}: the set was modified or is incomplete; "
                                     f"regenerate it")
            arrays[name] = arr
        return arrays

    def _get(self) -> dict[str, np.ndarray]:
        if self._arrays is None or self._pid != os.getpid():   # e.g. inside a DataLoader worker
            self._arrays, self._pid = self._open(), os.getpid()
        return self._arrays

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_arrays"] = None
        return state

    def __len__(self) -> int:
        return self._len

    @staticmethod
    def _f32(a) -> torch.Tensor:
        return torch.from_numpy(np.array(a, dtype=np.float32))


def _resolve_root(root, hint: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} not found; " + hint.format(root=root))
    return root


def _check_requested(name: str, requested, stored, root) -> None:
    if requested is None or stored is None:
        return
    if isinstance(stored, (list, tuple)):
        requested, stored = list(requested), list(stored)
    if requested != stored:
        raise ValueError(f"{root} was made with {name}={stored}, but {name}={requested} was requested; "
                         f"regenerate the data with --{name} {' '.join(map(str, np.atleast_1d(requested)))} "
                         f"or use the matching option")


def _check_8bit_without_manifest(arr: np.ndarray, path: Path) -> None:
    if np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{path} holds integers but its folder has no {MANIFEST_NAME}: an incomplete "
                         f"set of this implementation (the manifest is written last)? Regenerate it")


class LocalPatchDataset(_StoredArrays):
    """Local-stage training patches of one split.

    Item: ``(noisy [R, R, 3] = counts/α, clean [R, R, 3] in [0, 1], bndry_dist [R, R] (pixels),
    deri [R−2, R−2, 3] = Sobel/255 cropped [1:-1, 1:-1])``, all float32.

    With ``with_blur=True`` (our sets only) two more: ``bndry_depth [R, R]`` (m, 0 off boundaries)
    and ``image`` (int64 scalar: 0 for the ρ1 image, 1 for ρ2), from which the local stage's
    supervised blur term (``losses.LocalLoss``, ``--beta_blur``) derives the true smoothness.

    Args:
        root: the data folder (``./data/data_train_val``) or its ``patches`` sub-folder.
        split: ``"train"`` or ``"val"``.
        R: expected patch size; ``ValueError`` when the data were made with another.
        with_blur: also return each patch's boundary depth and image index.
    """

    kind = "train_val"

    def __init__(self, root, split: str, R: int | None = None, with_blur: bool = False):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        root = _resolve_root(root, _TRAIN_HINT)
        folder = root / "patches" if (root / "patches").is_dir() else root
        manifest = read_manifest(folder)
        base = Path(manifest["_root"]) if manifest is not None else folder
        names = ("patches_ny", "patches_gt", "alphas", "boundary_distances", "derivative_maps")
        if with_blur:
            if manifest is None:
                raise ValueError(f"{folder}: the supervised blur term needs the boundary depth and image index of "
                                 f"every patch, which only sets made by our train_val_data_generator.py store; "
                                 f"regenerate the data or train with --beta_blur 0")
            names += ("boundary_depths", "patch_index")
        self.with_blur = with_blur
        super().__init__(root, {n: folder / f"{n}_{split}.npy" for n in names}, manifest, base)
        arrays = self._get()
        if manifest is None:
            _check_8bit_without_manifest(arrays["patches_ny"], folder / f"patches_ny_{split}.npy")
        self.split = split
        self.R = int(manifest["R"]) if manifest is not None else int(arrays["patches_ny"].shape[1])
        self.img_size = tuple(manifest["img_size"]) if manifest is not None else None
        _check_requested("R", R, self.R, root)

    def __getitem__(self, idx: int):
        a = self._get()
        alpha = np.float32(a["alphas"][idx])
        noisy = self._f32(a["patches_ny"][idx]) / float(alpha)
        if self.format == "ours":
            clean = self._f32(a["patches_gt"][idx]) / 255.0
        else:                                   # the authors store clean · α / 255
            clean = self._f32(a["patches_gt"][idx]) / float(alpha)
        bndry_dist = self._f32(a["boundary_distances"][idx])
        deri = self._f32(a["derivative_maps"][idx][1:-1, 1:-1])
        if not self.with_blur:
            return noisy, clean, bndry_dist, deri
        bndry_depth = self._f32(a["boundary_depths"][idx])
        image = torch.tensor(int(a["patch_index"][idx][1]), dtype=torch.int64)
        return noisy, clean, bndry_dist, deri, bndry_depth, image


class SceneDataset(_StoredArrays):
    """Global-stage scenes of one split.

    Item: ``(params [2, P, 19] | empty, noisy [2, H, W, 3] = counts/α, clean [2, H, W, 3] in [0, 1],
    bndry_dist [H, W], deri [2, H−2, W−2, 3], bndry_depth [H, W])`` and, with ``with_depth``, a 7th
    element ``depth [H, W]`` (depth of the front-most surface), all float32.

    ``params`` are the local stage's feature tokens from ``params_src_{split}.npy``, which the
    pre-calculation script (``global_data_pre_cal.py``) writes into the same folder; with
    ``with_params=False`` an empty tensor stands in its place.

    Crops (the CPU recipe, README "Training on a CPU"): when the pre-calculation was made with
    ``--crop_tokens T`` (``crop_origins_{split}.npy`` beside the tokens), the set has one item per
    pre-calculated scene, every map is cut to that scene's ``size × size`` pixel window
    (``size = (T − 1)·S + R``, see :class:`~blurry_edges.patches.CropLayout`), and the item ends
    with the window's ``origin`` (``[2]`` int64 token row and column in the full grid).
    """

    kind = "train_val"

    def __init__(self, root, split: str, with_params: bool = True, with_depth: bool = False,
                 R: int | None = None, img_size=None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        root = _resolve_root(root, _TRAIN_HINT)
        manifest = read_manifest(root)
        names = ["images_ny", "images_gt", "alphas", "boundary_distances", "derivative_maps", "boundary_depths"]
        if with_depth:
            names.append("image_depths")
        files = {n: root / f"{n}_{split}.npy" for n in names}
        self._params_file = None
        if with_params:
            params = root / f"params_src_{split}.npy"
            if not params.is_file():
                raise FileNotFoundError(f"{params} is missing: run `python global_data_pre_cal.py --data_path {root}` "
                                        f"first, or use with_params=False")
            self._params_file = params
        super().__init__(root, files, manifest, root)
        arrays = self._get()
        if manifest is None:
            _check_8bit_without_manifest(arrays["images_ny"], files["images_ny"])
        self.split = split
        self.with_params, self.with_depth = with_params, with_depth
        self.img_size = tuple(arrays["images_ny"].shape[2:4])
        if manifest is not None:
            self.R = int(manifest["R"])
        else:
            patches = root / "patches" / f"patches_ny_{split}.npy"
            self.R = int(np.load(patches, mmap_mode="r").shape[1]) if patches.is_file() else None
        _check_requested("R", R, self.R, root)
        _check_requested("img_size", None if img_size is None else tuple(img_size), self.img_size, root)
        self.crop_origins = None          # [N, 2] int64 token origins of the pre-calculated crops
        self.crop_size = None             # pixel side of a crop
        self.precal_info = {}
        if with_params:
            p = self._params()
            if p.ndim != 4 or p.shape[1] != 2 or p.shape[3] != 19:
                raise ValueError(f"{self._params_file} is {list(p.shape)}; expected [N, 2, P, 19] feature tokens")
            if p.shape[0] > self._len:
                raise ValueError(f"{self._params_file} has {p.shape[0]} items but the split has {self._len} scenes: "
                                 f"re-run global_data_pre_cal.py on this data set")
            info_file = root / f"params_src_{split}.json"
            self.precal_info = json.loads(info_file.read_text()) if info_file.is_file() else {}
            crop_file = root / f"crop_origins_{split}.npy"
            if crop_file.is_file():
                origins = np.load(crop_file).astype(np.int64)
                tokens = int(round(p.shape[2] ** 0.5))
                stride = int(self.precal_info.get("stride", 2))
                if origins.shape != (p.shape[0], 2) or tokens * tokens != p.shape[2] or self.R is None:
                    raise ValueError(f"{crop_file} ({list(origins.shape)}) does not match {self._params_file} "
                                     f"({list(p.shape)}): re-run global_data_pre_cal.py")
                self.crop_origins = torch.from_numpy(origins)
                self.crop_size = (tokens - 1) * stride + self.R
                self.crop_stride = stride
            self._len = p.shape[0]         # only the pre-calculated scenes are items

    @property
    def params_file(self) -> Optional[Path]:
        """``params_src_{split}.npy`` (``None`` with ``with_params=False``)."""
        return self._params_file

    @property
    def num_tokens(self) -> Optional[int]:
        """Pre-calculated tokens per image (``P`` of the ``[N, 2, P, 19]`` features), ``None`` without them."""
        return int(self._params().shape[2]) if self.with_params else None

    def _params(self) -> np.ndarray:
        arrays = self._get()
        if "params" not in arrays:
            arrays["params"] = np.load(self._params_file, mmap_mode="r")
        return arrays["params"]

    def __getitem__(self, idx: int):
        if not 0 <= idx < self._len:
            raise IndexError(f"index {idx} out of range for {self._len} items")
        a = self._get()
        rows = cols = slice(None)
        if self.crop_origins is not None:
            r0, c0 = (int(v) * self.crop_stride for v in self.crop_origins[idx])
            rows, cols = slice(r0, r0 + self.crop_size), slice(c0, c0 + self.crop_size)
        inner_rows = slice(rows.start + 1, rows.stop - 1) if rows.start is not None else slice(1, -1)
        inner_cols = slice(cols.start + 1, cols.stop - 1) if cols.start is not None else slice(1, -1)
        alpha = float(np.float32(a["alphas"][idx]))
        params = self._f32(self._params()[idx]) if self.with_params else torch.empty(0)
        noisy = self._f32(a["images_ny"][idx][:, rows, cols]) / alpha
        scale = 255.0 if self.format == "ours" else alpha    # the authors store clean · α / 255
        clean = self._f32(a["images_gt"][idx][:, rows, cols]) / scale
        bndry_dist = self._f32(a["boundary_distances"][idx][rows, cols])
        # the derivative maps are stored full size; the Sobel of a window is their interior there
        deri = self._f32(a["derivative_maps"][idx][:, inner_rows, inner_cols])
        bndry_depth = self._f32(a["boundary_depths"][idx][rows, cols])
        item = (params, noisy, clean, bndry_dist, deri, bndry_depth)
        if self.with_depth:
            item = item + (self._f32(a["image_depths"][idx][rows, cols]),)
        if self.crop_origins is not None:
            item = item + (self.crop_origins[idx].clone(),)
        return item


class TestSceneDataset(_StoredArrays):
    """Realistic test scenes. Item: ``(noisy [2, H, W, 3] = counts/α, depth [H, W] in metres)``, float32.

    Args:
        root: ``./data/data_test`` or ``./data/data_test_big`` (ours or the authors').
        img_size: expected (H, W); ``ValueError`` when the data have another size.
        channel_order: ``None`` returns the images as stored (``.stored_channel_order``: ``"RGB"`` for
            ours, ``"BGR"`` for the authors'); ``"RGB"`` or ``"BGR"`` converts when needed.
    """

    kind = "test"
    hint = _TEST_HINT
    __test__ = False        # not a pytest test class despite its name

    def __init__(self, root, img_size=None, channel_order: str | None = None):
        root = _resolve_root(root, _TEST_HINT)
        manifest = read_manifest(root)
        files = {n: root / f"{n}.npy" for n in ("images_ny", "depth_maps", "alphas")}
        super().__init__(root, files, manifest, root)
        arrays = self._get()
        if manifest is None:
            _check_8bit_without_manifest(arrays["images_ny"], files["images_ny"])
        self.img_size = tuple(arrays["images_ny"].shape[2:4])
        self.R = None
        _check_requested("img_size", None if img_size is None else tuple(img_size), self.img_size, root)
        self.stored_channel_order = manifest.get("channel_order", "RGB") if manifest is not None else "BGR"
        if channel_order not in (None, "RGB", "BGR"):
            raise ValueError(f"channel_order must be None, 'RGB' or 'BGR', got {channel_order!r}")
        self.channel_order = channel_order or self.stored_channel_order
        self._flip = self.channel_order != self.stored_channel_order

    def __getitem__(self, idx: int):
        a = self._get()
        alpha = float(np.float32(a["alphas"][idx]))
        noisy = np.array(a["images_ny"][idx], dtype=np.float32)
        if self._flip:
            noisy = np.ascontiguousarray(noisy[..., ::-1])
        return torch.from_numpy(noisy) / alpha, self._f32(a["depth_maps"][idx])


class SparseDensePairs(_StoredArrays):
    """Training pairs of the depth-completion U-Net: ``(sparse [h, w], dense [h, w])`` float32, a
    cached global-stage depth map (``depth_completion_training.py``, README "Depth completion") and
    the ground-truth depth of the same pixels (``image_depths_{split}.npy``), both memory-mapped.

    Map ``i`` belongs to scene ``i``; the cache may cover only the first scenes of the split (as the
    pre-calculation's ``--max_scenes_{train,val}`` do). Full grid: ``h × w`` is the image's
    ``H × W``. Crops (the CPU recipe, README "Training on a CPU"): with ``crops`` and ``origins``
    (``[N, 2]`` token row and column, ``SceneDataset.crop_origins``) map ``i`` covers the pixel
    window :meth:`CropLayout.pixel_window` of ``origins[i]`` (``h = w = crops.size``), and its
    target is that window of the ground truth.
    """

    def __init__(self, sparse_file: str | os.PathLike, root: str | os.PathLike, split: str,
                 crops: Optional[CropLayout] = None, origins: Optional[torch.Tensor] = None) -> None:
        self.sparse_file, self.dense_file = Path(sparse_file), Path(root) / f"image_depths_{split}.npy"
        if not self.dense_file.is_file():
            raise FileNotFoundError(f"{self.dense_file} is missing: the scene data set is incomplete")
        if (crops is None) != (origins is None):
            raise ValueError("crops and origins go together: give both (crop pre-calculation) or neither")
        sparse, dense = (np.load(f, mmap_mode="r") for f in (self.sparse_file, self.dense_file))
        want = (crops.size, crops.size) if crops is not None else tuple(dense.shape[1:])
        if sparse.ndim != 3 or tuple(sparse.shape[1:]) != want or len(sparse) > len(dense):
            raise ValueError(f"{sparse_file} holds {list(sparse.shape)} maps, but {len(dense)} scenes "
                             f"{'cut to ' if crops is not None else 'of '}{want[0]}×{want[1]} pixels need at most "
                             f"[{len(dense)}, {want[0]}, {want[1]}]; rebuild it with --recompute_cache")
        if origins is not None and len(origins) != len(sparse):
            raise ValueError(f"{sparse_file} holds {len(sparse)} crops but {len(origins)} crop origins were given; "
                             "rebuild it with --recompute_cache")
        self.crops, self.origins = crops, origins
        super().__init__(root, {"sparse": self.sparse_file}, None, Path(root))   # its length is the set's

    def _dense(self) -> np.ndarray:
        arrays = self._get()
        if "dense" not in arrays:           # opened beside the maps: it may hold more scenes than they
            arrays["dense"] = np.load(self.dense_file, mmap_mode="r")
        return arrays["dense"]

    def __getitem__(self, i: int):
        if not 0 <= i < self._len:
            raise IndexError(f"index {i} out of range for {self._len} items")
        rows = cols = slice(None)
        if self.crops is not None:
            rows, cols = self.crops.pixel_window(self.origins[i])
        return self._f32(self._get()["sparse"][i]), self._f32(self._dense()[i][rows, cols])


def require_tokens(root: str | os.PathLike) -> None:
    """Both splits' pre-calculated tokens (``params_src_{train,val}.npy``) exist in ``root``, or a
    ``FileNotFoundError`` naming the command that makes them (README "Training" and "Training on a CPU")."""
    root = _resolve_root(root, _TRAIN_HINT)
    for split in SPLITS:
        tokens = root / f"params_src_{split}.npy"
        if not tokens.is_file():
            raise FileNotFoundError(f"{tokens} is missing: run `python global_data_pre_cal.py --data_path {root}` "
                                    f"first (every patch; add --crop_tokens 24 for the CPU recipe's crops, README "
                                    f"'Training on a CPU')")


def precal_crops(train: SceneDataset, val: SceneDataset, grid: PatchGrid) -> Optional[CropLayout]:
    """How both splits' tokens were pre-calculated for ``grid`` (the full image's patch grid).

    Returns:
        ``None`` for every patch of ``grid`` (``[N, 2, Hp·Wp, 19]`` tokens), else the
        :class:`~blurry_edges.patches.CropLayout` of their ``--crop_tokens T`` windows
        (``[N, 2, T², 19]``, origins in ``SceneDataset.crop_origins``; README "Training on a CPU").
    Raises:
        ValueError: one split has crops and the other not, the crops differ in size, or the number
        of tokens per scene is not what ``grid``'s R and stride give (the fix is named).
    """
    root = train.root
    crops = None
    if train.crop_origins is not None or val.crop_origins is not None:
        sizes = {train.crop_size, val.crop_size}
        if None in sizes or len(sizes) != 1:
            raise ValueError(f"{root}: the training and validation tokens must both be crops of one size "
                             f"(pre-calculated with the same --crop_tokens); got crop sizes {sorted(map(str, sizes))}")
        crops = CropLayout(grid, (train.crop_size - grid.R) // grid.stride + 1)
    n_tokens = train.num_tokens
    want = crops.grid.num_patches if crops is not None else grid.num_patches
    if n_tokens != want:
        raise ValueError(f"params_src has {n_tokens} tokens per image but R={grid.R}, stride={grid.stride} on "
                         f"{grid.H}×{grid.W} images give {want}"
                         + (f" per {crops.tokens}×{crops.tokens} crop" if crops is not None else "")
                         + "; re-run global_data_pre_cal.py with the same --R and --stride")
    return crops


class PartialRows:
    """A ``.npy`` array that every process fills with its rows over one or more runs (resumable).

    Every process writes its rows to a hidden ``.<name>.partial`` file (``numpy.memmap``) that is renamed
    to ``final`` only when every row is written, so an interrupted run never leaves a file that looks
    complete. Beside it ``.<name>.partial.json`` records the array's shape, dtype and ``identity``
    (what the rows are computed from: weights, settings …), and ``.<name>.partial.rank<r>.npy``
    the rows each process has written and flushed in this run (:meth:`commit`; the rows of earlier
    runs are merged into ``.<name>.partial.before.npy`` when a run starts). A later run with ``resume=True``
    and the same identity keeps the rows already written (:attr:`done`) and fills only the others,
    with any number of processes; another identity is an error that names the difference. Without
    ``resume`` an earlier partial file is started afresh.

    Use: ``rows = PartialRows(...)``, write ``rows.array[i]``, ``rows.commit([i, …])``, then
    ``rows.finish(before_publish)`` on every process (a barrier), which publishes when complete.

    Args:
        ctx: the run's ``train.DistContext`` (``is_main``, ``rank``, ``barrier``).
    """

    def __init__(self, final: str | os.PathLike, shape: tuple[int, ...], dtype, ctx, identity: dict,
                 resume: bool = False) -> None:
        self.final, self.ctx, self.shape = Path(final), ctx, tuple(int(n) for n in shape)
        self.tmp = self.final.parent / f".{self.final.name}.partial"
        self.record = self.final.parent / f".{self.final.name}.partial.json"
        want = {"shape": list(self.shape), "dtype": np.dtype(dtype).str, "identity": json.loads(json.dumps(identity))}
        if ctx.is_main:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            done = self._resumable(want) if resume else None
            if done is None:                                # fresh: a new file, no rows written
                for f in self._row_files():
                    f.unlink()
                np.lib.format.open_memmap(self.tmp, mode="w+", dtype=dtype, shape=self.shape).flush()
                self.record.write_text(json.dumps(want, indent=1))
                done = np.zeros(self.shape[0], dtype=bool)
            for f in self._row_files():                     # the earlier runs' records, merged into one
                f.unlink()
            _atomic_npy(self._merged_file(), done)
        ctx.barrier()
        self.done = np.load(self._merged_file()).astype(bool)           # rows written before this run
        self.array = np.lib.format.open_memmap(self.tmp, mode="r+")
        self._mine: list[int] = []                                      # rows this process wrote in this run

    def _row_files(self) -> list[Path]:
        return sorted(self.final.parent.glob(f".{self.final.name}.partial.rank*.npy"))

    def _merged_file(self) -> Path:
        return self.final.parent / f".{self.final.name}.partial.before.npy"

    def _resumable(self, want: dict) -> "np.ndarray | None":
        """The rows an earlier run wrote, or None (nothing to resume; said on the console)."""
        if not (self.tmp.is_file() and self.record.is_file()):
            print(f"--resume: no unfinished {self.final.name} here; starting it afresh")
            return None
        have = json.loads(self.record.read_text())
        if have != want:
            diffs = [f"{k}: earlier {have.get(k)!r}, now {want.get(k)!r}" for k in ("shape", "dtype") if have.get(k) != want.get(k)]
            old, new = have.get("identity", {}), want["identity"]
            diffs += [f"{k}: earlier {old.get(k)!r}, now {new.get(k)!r}" for k in sorted(set(old) | set(new))
                      if old.get(k) != new.get(k)]
            raise ValueError(f"--resume: the unfinished {self.tmp} was started with other settings "
                             f"({'; '.join(diffs)}); resume with the same ones, or start afresh without --resume")
        done = np.zeros(self.shape[0], dtype=bool)
        if self._merged_file().is_file():                   # rows written before the last run
            before = np.load(self._merged_file())
            if before.shape == done.shape:
                done |= before.astype(bool)
        for f in self._row_files():
            rows = np.load(f)
            if rows.size and (rows.min() < 0 or rows.max() >= self.shape[0]):
                raise ValueError(f"{f} lists rows outside 0…{self.shape[0] - 1}; start afresh without --resume")
            done[rows] = True
        print(f"--resume: {int(done.sum())} of {self.shape[0]} rows of {self.final.name} were written earlier; "
              f"computing the other {self.shape[0] - int(done.sum())}")
        return done

    def commit(self, rows: "list[int]") -> None:
        """Flush the array and record ``rows`` as written by this process."""
        self.array.flush()
        self._mine.extend(int(r) for r in rows)
        _atomic_npy(self.final.parent / f".{self.final.name}.partial.rank{self.ctx.rank}.npy",
                    np.asarray(self._mine, dtype=np.int64))    # the earlier runs' rows stay in the merged record

    def finish(self, before_publish=None) -> bool:
        """On every process: wait for all, then publish ``final`` if every row is written (True); else
        keep the partial file and the records for a later ``resume`` (False)."""
        self.array.flush()
        del self.array
        self.ctx.barrier()
        done = self.done.copy()
        for f in self._row_files():
            done[np.load(f)] = True
        # all processes agree before the main one removes the records: a process still reading them
        # would otherwise find some gone, call the split unfinished and leave the others waiting
        complete = not self.ctx.any(not done.all())
        if self.ctx.is_main and complete:
            if before_publish is not None:
                before_publish()
            os.replace(self.tmp, self.final)
            for f in self._row_files() + [self._merged_file(), self.record]:
                f.unlink(missing_ok=True)
        self.ctx.barrier()
        return complete


def _atomic_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.parent / (path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)
