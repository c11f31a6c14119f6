"""Yardsticks that need no training, scored on exactly the pixels a method predicted.

A sparse depth map is evaluated only where it has values (paper §4, Table 3), so its δ1 and RMSE
depend on which pixels it kept as much as on its depths. To tell a network that learned depth
from one that learned where to abstain, every evaluation folder (the ``scene_XXXX.npz`` files of
``blurry_edges_test.py``) can be scored against

* a **constant depth**, the median ground-truth depth of the whole test set, put on the same
  pixels as the prediction (so it has the same coverage), and
* the **per-scene correlation** (Pearson) of predicted and true depth on those pixels: a
  collapsed network, one that returns nearly one depth everywhere, scores about 0 whatever its δ1,
* the **slope** of predicted on true depth, a least-squares line over the kept pixels of all
  scenes together: 1 when the prediction spans the true depth range, 0 for a constant; below 1 the
  estimate is compressed towards the middle of the range (near surfaces read too far, far ones
  too near), which correlation alone does not show,
* optionally a **reference method on the same pixels** (``--reference``): another result folder of
  the same scenes, typically the training-free Focal Track (``--method focal_track``), whose dense
  estimate before thresholding (``depth_raw``) is read on the pixels the method kept.

Two sparse results of the same scenes (say two trainings) keep different pixels, so their own
figures compare different pixel sets; ``--common`` scores every folder only on the pixels that all
the given folders kept (:func:`common_pixels`).

    python -m blurry_edges.yardsticks logs/test_none            # one or more result folders
    python -m blurry_edges.yardsticks logs/test_none --reference logs/test_focal_track
    python -m blurry_edges.yardsticks logs/run_a logs/run_b --common
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .metrics import METRIC_NAMES, average_metrics, eval_depth


@dataclass
class YardstickReport:
    """Averages over the scenes of one result folder."""

    folder: str
    n_scenes: int
    constant: float                 # the constant depth (m)
    method: dict                    # METRIC_NAMES → mean, plus n_images
    constant_same_pixels: dict      # the constant on the method's pixels
    correlation: float              # mean per-scene Pearson r (scenes with a defined r)
    depth_spread_cm: float          # mean per-scene standard deviation of the prediction (cm)
    coverage: float                 # mean fraction of evaluated pixels (after the crop)
    slope: float = float("nan")     # least-squares slope of prediction on truth, all kept pixels pooled
    reference: Optional[str] = None          # the reference folder, if one was given
    reference_same_pixels: Optional[dict] = None  # its depth_raw on the method's pixels

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _scenes(folder: Path) -> list[Path]:
    files = sorted(folder.glob("scene_*.npz"))
    if not files:
        raise FileNotFoundError(f"{folder} holds no scene_XXXX.npz files; run blurry_edges_test.py "
                                f"(its --log_path/--run_name folder) first")
    return files


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two 1-D samples; NaN when either is constant or has < 3 values."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.size < 3:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def slope(pred: np.ndarray, true: np.ndarray) -> float:
    """Least-squares slope of ``pred`` on ``true`` (1-D samples); NaN when ``true`` is constant or has < 3 values."""
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    if true.size < 3:
        return float("nan")
    t = true - true.mean()
    den = (t * t).sum()
    return float((t * (pred - pred.mean())).sum() / den) if den > 0 else float("nan")


def _reference_maps(reference: Path, files: list[Path], key: str, gts: list[np.ndarray]) -> list[np.ndarray]:
    """The reference folder's ``key`` map for every scene of ``files``, checked against the same ground truth."""
    maps = []
    for f, g in zip(files, gts):
        r = reference / f.name
        if not r.is_file():
            raise FileNotFoundError(f"the reference folder {reference} has no {f.name}; evaluate the reference "
                                    f"method on the same test set (same --data_path and --max_scenes)")
        with np.load(r) as z:
            if key not in z or "gt_depth" not in z:
                raise ValueError(f"{r} lacks '{key}' or 'gt_depth'; it is not an evaluation output")
            if z["gt_depth"].shape != g.shape or not np.allclose(z["gt_depth"], g, atol=1e-3):
                raise ValueError(f"{r} has another ground truth than {f}: the reference folder holds other scenes")
            maps.append(z[key].astype(np.float64))
    return maps


def _load_folder(folder: Path, key: str) -> tuple[list[Path], list[np.ndarray], list[np.ndarray]]:
    """The scene files of a result folder, their ``key`` maps and ground truth (float64 ``[H, W]``)."""
    files = _scenes(folder)
    preds, gts = [], []
    for f in files:
        with np.load(f) as z:
            if key not in z or "gt_depth" not in z:
                raise ValueError(f"{f} lacks '{key}' or 'gt_depth'; it is not an evaluation output")
            preds.append(z[key].astype(np.float64))
            gts.append(z["gt_depth"].astype(np.float64))
    return files, preds, gts


def common_pixels(folders: Sequence[str | Path], key: str = "depth") -> list[np.ndarray]:
    """The pixels every folder predicted: per scene, bool ``[H, W]`` = AND over folders of ``key > 0``.

    The folders must hold the same scenes (the same ``scene_XXXX.npz`` names and ground truth);
    otherwise a ``ValueError`` (or ``FileNotFoundError``) names the folder that differs.
    """
    if len(folders) < 2:
        raise ValueError("--common compares two or more result folders; give at least two")
    first = Path(folders[0])
    files, preds, gts = _load_folder(first, key)
    masks = [p > 0 for p in preds]
    for other in map(Path, folders[1:]):
        n_other = len(_scenes(other))
        if n_other != len(files):
            raise ValueError(f"{other} holds {n_other} scenes, {first} {len(files)}: "
                             f"evaluate both on the same test set (same --data_path and --max_scenes)")
        for i, p in enumerate(_reference_maps(other, files, key, gts)):
            masks[i] &= p > 0
    return masks


def score_folder(folder: str | Path, *, constant: Optional[float] = None, crop: int = 10,
                 z_min: float = 0.75, z_max: float = 1.18, key: str = "depth",
                 reference: str | Path | None = None, reference_key: str = "depth_raw",
                 within: Optional[Sequence[np.ndarray]] = None) -> YardstickReport:
    """Score the predictions in ``folder`` against the constant depth on the same pixels.

    Args:
        constant: the constant depth; default the median of every ground-truth pixel (after the
            crop) over the folder's scenes, the test set's median.
        key: which map of the ``.npz`` files is the prediction (``depth``: the method's output).
        reference: another result folder of the same scenes (e.g. Focal Track's); its
            ``reference_key`` map (default the dense ``depth_raw``) is scored on the pixels where
            the prediction is > 0, so both are judged on exactly the same pixels.
        within: per scene a bool ``[H, W]`` map (e.g. :func:`common_pixels`); the prediction is
            scored only where it is True (and > 0), the yardsticks on the same pixels.
    """
    folder = Path(folder)
    files, preds, gts = _load_folder(folder, key)
    if within is not None:
        if len(within) != len(preds) or any(w.shape != p.shape for w, p in zip(within, preds)):
            raise ValueError(f"within: {len(within)} maps for the {len(preds)} scenes of {folder} (one per scene, "
                             "of the scene's shape)")
        preds = [np.where(w, p, 0.0) for w, p in zip(within, preds)]
    sl = (slice(crop, -crop), slice(crop, -crop)) if crop > 0 else (slice(None), slice(None))
    if constant is None:
        constant = float(np.median(np.concatenate([g[sl].ravel() for g in gts])))
    refs = _reference_maps(Path(reference), files, reference_key, gts) if reference is not None else None
    method, const, ref, corr, spread, cover = [], [], [], [], [], []
    kept_pred, kept_true = [], []
    for i, (p, g) in enumerate(zip(preds, gts)):
        mask = p > 0
        method.append(eval_depth(p, g, crop=crop, z_min=z_min, z_max=z_max))
        const.append(eval_depth(np.where(mask, constant, 0.0), g, crop=crop, z_min=z_min, z_max=z_max))
        if refs is not None:        # clipped into the range first, so every kept pixel stays > 0
            ref.append(eval_depth(np.where(mask, np.clip(refs[i], z_min, z_max), 0.0), g, crop=crop,
                                  z_min=z_min, z_max=z_max))
        m = mask[sl]
        pc, gc = np.clip(p[sl][m], z_min, z_max), g[sl][m]
        corr.append(pearson(pc, gc))
        kept_pred.append(pc)
        kept_true.append(gc)
        spread.append(float(pc.std() * 100.0) if pc.size else float("nan"))
        cover.append(float(m.mean()))
    corr_arr = np.array(corr)
    return YardstickReport(
        folder=str(folder), n_scenes=len(files), constant=float(constant),
        method=average_metrics(method), constant_same_pixels=average_metrics(const),
        correlation=float(np.nanmean(corr_arr)) if np.isfinite(corr_arr).any() else float("nan"),
        depth_spread_cm=float(np.nanmean(spread)) if np.isfinite(spread).any() else float("nan"),
        coverage=float(np.mean(cover)),
        slope=slope(np.concatenate(kept_pred), np.concatenate(kept_true)),
        reference=str(reference) if reference is not None else None,
        reference_same_pixels=average_metrics(ref) if refs is not None else None)


def format_report(r: YardstickReport) -> str:
    head = f"{'':<28}" + "".join(f"{n:>10}" for n in METRIC_NAMES)
    line = lambda name, d: f"{name:<28}" + "".join(f"{d[n]:>10.4f}" for n in METRIC_NAMES)  # noqa: E731
    rows = [line("method", r.method), line(f"constant {r.constant:.3f} m, same pixels", r.constant_same_pixels)]
    if r.reference_same_pixels is not None:
        rows.append(line("reference, same pixels", r.reference_same_pixels))
    return "\n".join([
        f"{r.folder}: {r.n_scenes} scenes, {100 * r.coverage:.1f} % of the pixels evaluated",
        head, *rows,
        *([f"reference: depth_raw of {r.reference}"] if r.reference is not None else []),
        f"per-scene correlation of predicted and true depth: {r.correlation:.3f}; "
        f"spread of the prediction within a scene: {r.depth_spread_cm:.2f} cm; "
        f"slope of predicted on true depth (all kept pixels): {r.slope:.3f}",
    ])


def main(argv: Optional[Sequence[str]] = None) -> list[YardstickReport]:
    p = argparse.ArgumentParser(description="Score evaluation outputs against a constant depth on the same "
                                            "pixels, with the per-scene depth correlation.")
    p.add_argument("folders", nargs="+", help="result folders of blurry_edges_test.py (scene_XXXX.npz)")
    p.add_argument("--constant", type=float, default=None, help="the constant depth (default: the test set's median)")
    p.add_argument("--crop", type=int, default=10, help="pixels cropped on every side (as the evaluation)")
    p.add_argument("--reference", type=str, default=None,
                   help="a result folder of the same scenes (e.g. --method focal_track) whose dense depth_raw is "
                        "scored on each method's pixels")
    p.add_argument("--common", action="store_true",
                   help="score every folder only on the pixels that all the given folders kept (two or more "
                        "sparse results of the same scenes compared on the same pixels)")
    p.add_argument("--json", type=str, default=None, help="also write the reports to this JSON file")
    args = p.parse_args(argv)
    reports = []
    try:
        within = common_pixels(args.folders) if args.common else None
    except (FileNotFoundError, ValueError) as e:
        p.exit(2, f"error: {e}\n")
    if within is not None:
        print(f"on the pixels all {len(args.folders)} folders kept (--common)")
    for folder in args.folders:
        try:
            reports.append(score_folder(folder, constant=args.constant, crop=args.crop, reference=args.reference,
                                        within=within))
        except (FileNotFoundError, ValueError) as e:
            p.exit(2, f"error: {e}\n")
        print(format_report(reports[-1]))
    if args.json:
        Path(args.json).write_text(json.dumps([r.as_dict() for r in reports], indent=2))
        print(f"wrote {args.json}")
    sys.stdout.flush()
    return reports


if __name__ == "__main__":
    main()
