"""Evaluation of test sets: every scene through a pipeline, metrics, figures, maps and summaries.

* :func:`evaluate_test_set` – per scene: the pipeline's maps (``scene_XXXX.npz``), a figure
  (``scene_XXXX.png``), the depth metrics of paper Table 3 (``metrics.eval_depth``); then
  ``summary.csv`` and ``summary.json`` (averages, timing, provenance).
* :func:`run_eval_script` – the entry point of ``blurry_edges_test.py`` and
  ``blurry_edges_test_big.py``: options (``cli.add_eval_arguments``), the test set (or the builtin
  default one, :func:`default_test_set`), the pipeline (Blurry-Edges or Focal Track), the run folder.

The pipeline itself (image pair → maps) is :mod:`blurry_edges.pipeline`; ``--compare`` is
:mod:`blurry_edges.compare`.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from .camera import CameraParams
from .cli import add_eval_arguments, camera_from_args, camera_given, device_from_args, focal_track_from_args
from .densify import DTParams
from .features import precision_record
from .metrics import METRIC_NAMES, average_metrics, eval_depth
from .pipeline import DepthPipeline, build_pipeline
from .wedges import WedgeRenderer

__all__ = ["evaluate_test_set", "save_scene_npz", "default_test_set", "run_eval_script"]


def _to_hwc(t: torch.Tensor) -> np.ndarray:
    return t.movedim(-3, -1).numpy()


def save_scene_npz(path: Path, noisy: np.ndarray, out: dict[str, Any], gt: Optional[np.ndarray]) -> None:
    """Every map of one scene (images channel-last, float32)."""
    arrays = {
        "noisy": np.asarray(noisy, dtype=np.float32),
        "restored": _to_hwc(out["color"]),
        "sharpened": _to_hwc(out["sharpened"]),
        "refocused": _to_hwc(out["refocused"]),
        "boundary": out["boundary"].numpy(),
        "confidence": out["confidence"].numpy(),
        "depth_raw": out["depth_raw"].numpy(),
        "depth_sparse": out["depth_sparse"].numpy(),
        "depth": out["depth"].numpy(),
    }
    if "support" in out:
        arrays["support"] = out["support"].numpy()
    if gt is not None:
        arrays["gt_depth"] = np.asarray(gt, dtype=np.float32)
    np.savez_compressed(path, **arrays)


def _fmt(v: float) -> str:
    return "nan" if not math.isfinite(v) else f"{v:.4f}"


def evaluate_test_set(pipeline: DepthPipeline, dataset, out_dir: str | Path, *, crop: int = 10,
                      max_scenes: Optional[int] = None, figures: bool = True, blocks: Optional[bool] = None,
                      run_args: Optional[dict] = None, display_bgr: bool = False,
                      progress: bool = True, pair_progress: Optional[bool] = None) -> dict:
    """Run the pipeline on every scene of ``dataset`` (items ``(noisy [2, H, W, 3], depth [H, W])``).

    Writes ``scene_XXXX.npz`` (every map), ``scene_XXXX.png`` (figure, unless ``figures=False``),
    ``summary.csv`` and ``summary.json`` under ``out_dir``; returns the summary dict. Running time
    per scene is the pipeline's (network input to final depth), as the authors time it.

    ``progress``: the bar over the scenes (else one printed line per scene). ``pair_progress``: the
    bars of each pair's stages, nested under it (``DepthPipeline.run(progress=...)``): ``None`` shows
    them only for an image cut into several blocks, ``False`` never; pass ``False`` to both for no bars.
    ``summary.json`` records the precision the networks ran in (``precision``: ``--bf16`` asked, resolved).
    """
    from tqdm import tqdm

    from .visualize import save_scene_figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cam = pipeline.camera
    n = len(dataset) if max_scenes is None else min(len(dataset), max_scenes)
    rows: list[dict] = []
    metrics = []
    it = tqdm(range(n), desc="scenes", disable=not progress, file=sys.stdout)
    for i in it:
        noisy, gt = dataset[i]
        noisy_np = np.asarray(noisy, dtype=np.float32)
        gt_np = np.asarray(gt, dtype=np.float32)
        out = pipeline.run(noisy_np, blocks=blocks, progress=pair_progress)
        m = eval_depth(out["depth"].numpy(), gt_np, crop=crop, z_min=cam.z_min, z_max=cam.z_max)
        metrics.append(m)
        t = out["timing"]
        row = {"scene": i, **{k: getattr(m, k) for k in METRIC_NAMES}, "n_pixels": m.n_pixels,
               "time_s": t["total"], **{f"time_{k}_s": v for k, v in t.items() if k != "total"}}
        rows.append(row)
        msg = (f"scene {i:04d}: delta1={_fmt(m.delta1)} delta2={_fmt(m.delta2)} delta3={_fmt(m.delta3)} "
               f"RMSE={_fmt(m.rmse_cm)} cm AbsRel={_fmt(m.absrel)} time={t['total']:.2f} s")
        it.write(msg) if progress else print(msg)
        stem = out_dir / f"scene_{i:04d}"
        save_scene_npz(stem.with_suffix(".npz"), noisy_np, out, gt_np)
        if figures:
            save_scene_figure(stem.with_suffix(".png"), noisy_np, out, gt_np, z_min=cam.z_min, z_max=cam.z_max,
                              rho_prime=pipeline.config.rho_prime, bgr=display_bgr,
                              title=f"scene {i:04d}  ({getattr(pipeline, 'name', pipeline.config.densify)})",
                              labels=getattr(pipeline, "figure_labels", None))
    avg = average_metrics(metrics)
    times = [r["time_s"] for r in rows]
    from .runs import provenance

    summary = {
        "args": run_args or {},
        "provenance": provenance(getattr(pipeline, "weight_files", {})),
        "camera": cam.to_dict(),
        "config": asdict(pipeline.config),
        "precision": precision_record((run_args or {}).get("bf16", getattr(pipeline.config, "bf16", False)),
                                      getattr(pipeline.config, "bf16", False)),
        "device": str(pipeline.device),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "n_scenes": n,
        "per_scene": rows,
        "average": avg,
        "mean_time_s": float(np.mean(times)) if times else float("nan"),
        "median_time_s": float(np.median(times)) if times else float("nan"),
        "mean_time_after_first_s": float(np.mean(times[1:])) if len(times) > 1 else None,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    with open(out_dir / "summary.csv", "w", newline="") as fh:
        fields = list(rows[0].keys()) if rows else ["scene", *METRIC_NAMES, "n_pixels", "time_s"]
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow(r)
        w.writerow({"scene": "mean", **{k: avg[k] for k in METRIC_NAMES}, "time_s": summary["mean_time_s"]})
    return summary


#: The test set ``blurry_edges_test.py`` makes when run with no test set at the default location.
DEFAULT_TEST_SET = {False: ("./data/data_test_builtin", 5, (147, 147)), True: ("./data/data_test_big_builtin", 2, (587, 587))}
DEFAULT_TEST_SEED = 1869


def default_test_set(big: bool = False, log=print) -> Path:
    """The out-of-the-box test set: a few realistic scenes from the builtin textures (no download).

    Made on first use (``test_data_generator.py --source builtin`` with a fixed seed: 5 scenes of
    147×147, or 2 of 587×587 for ``big``, a few seconds), reused afterwards; the paper's test set
    (MS-COCO objects on paintings) is made with ``test_data_generator.py --source coco``.
    """
    from .synth.generate import generate_test
    from .synth.realistic import RealisticConfig

    path, n, size = DEFAULT_TEST_SET[bool(big)]
    path = Path(path)
    if (path / "manifest.json").is_file():
        log(f"no test set at the default location; using the builtin one at {path} ({n} scenes)")
        return path
    log(f"no test set at the default location: making a small one from the builtin textures at {path} "
        f"({n} scenes of {size[0]}×{size[1]}, seed {DEFAULT_TEST_SEED}; the paper's set: "
        f"`python test_data_generator.py --source coco`)")
    generate_test(RealisticConfig(img_size=size), path, n, source="builtin", seed=DEFAULT_TEST_SEED,
                  progress=False, log=lambda *a, **k: None)
    return path


def default_run_name(args: argparse.Namespace, big: bool, bf16: bool) -> str:
    """``test[_big]_{sparse,w,pp,dt}[_bf16]`` for Blurry-Edges (``_bf16`` when ``--bf16`` resolved to
    bf16 on this machine), ``test[_big]_focal_track`` for Focal Track."""
    if getattr(args, "method", "blurry_edges") == "focal_track":
        return f"test{'_big' if big else ''}_focal_track"
    return f"test{'_big' if big else ''}_{'sparse' if args.densify == 'none' else args.densify}" \
           f"{'_bf16' if bf16 else ''}"


def run_eval_script(argv: Optional[Sequence[str]] = None, big: bool = False) -> int:
    """Entry point of ``blurry_edges_test.py`` / ``blurry_edges_test_big.py``; returns an exit code."""
    from .data import TestSceneDataset
    from .runs import add_version_argument, check_output_dir, fresh_run_dir

    parser = argparse.ArgumentParser(
        description=("Blurry-Edges evaluation on large images through 147×147 blocks with margins" if big else
                     "Blurry-Edges evaluation on a test set: per-scene depth metrics, figures and maps"))
    add_eval_arguments(parser, big=big)
    add_version_argument(parser)
    args = parser.parse_args(argv)
    try:
        args.cuda = str(device_from_args(args.cuda))
        check_output_dir(args.log_path, "--log_path")
    except ValueError as e:                         # an unknown device or an unusable output location
        parser.error(str(e))
    try:
        dataset = TestSceneDataset(args.data_path)
    except FileNotFoundError as e:
        if args.data_path != parser.get_default("data_path"):
            print(f"error: no test set: {e}\nA quick one: `python test_data_generator.py{' --big' if big else ''} "
                  f"--data_path {args.data_path} --source builtin --num_sample_test 5` (the builtin sources need no "
                  "download; the paper's set uses MS-COCO objects on paintings)", file=sys.stderr)
            return 2
        try:                   # out of the box: a small set from the builtin textures, made once
            dataset = TestSceneDataset(default_test_set(big))
        except (OSError, ValueError) as err:
            print(f"error: no test set at {args.data_path}, and the default one could not be made: {err}",
                  file=sys.stderr)
            return 2
        args.data_path = str(default_test_set(big))
    except ValueError as e:
        print(f"error: cannot read the test set at {args.data_path}: {e}", file=sys.stderr)
        return 2
    H, W = dataset.img_size
    if big and args.big_img_size is not None and tuple(args.big_img_size) != (H, W):
        print(f"error: --big_img_size {args.big_img_size[0]} {args.big_img_size[1]} but the test set at "
              f"{args.data_path} holds {H}×{W} images; drop the option or pass the matching size", file=sys.stderr)
        return 2
    ft_only = args.method == "focal_track" and not args.compare      # any size: no global stage
    if not big and not ft_only and args.img_size is not None and (H, W) != tuple(args.img_size):
        print(f"error: the test set at {args.data_path} holds {H}×{W} images but --img_size is "
              f"{args.img_size[0]} {args.img_size[1]}; pass --img_size {H} {W} or use blurry_edges_test_big.py "
              "for large images", file=sys.stderr)
        return 2
    dataset_camera = getattr(dataset, "camera", None)
    focal = args.method == "focal_track"
    if focal or args.compare:                          # no weights to take a camera from
        try:
            camera = camera_from_args(args, fallback=dataset_camera)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if dataset_camera is not None and camera_given(args) and dataset_camera != camera:
            print(f"note: the test set was made with camera {dataset_camera.to_dict()}, evaluating with {camera.to_dict()}")
        if args.compare:
            from .compare import run_comparison
            return run_comparison(args, dataset, camera, big=big)
    dt = DTParams(confidence_weighted=args.dt_confidence_weighted)
    try:
        # --method: the Blurry-Edges networks (weights needed) or the training-free Focal Track
        if focal:
            pipeline = focal_track_from_args(args, camera, args.cuda)
            if args.feature_cache is not None:
                print("note: --feature_cache is not used by --method focal_track (it has no local stage)")
        else:
            pipeline = build_pipeline(
                model_path=args.model_path, densify=args.densify, R=args.R, stride=args.stride,
                img_size=args.img_size if (big or args.img_size is not None) else (H, W), camera=None,
                device=args.cuda, bf16=args.bf16, rho_prime=args.rho_prime,
                margin=getattr(args, "n_margin_patch", 10), local_weights=args.local_weights,
                global_weights=args.global_weights, pp_weights=args.pp_weights,
                tile_batch=getattr(args, "batch_size", 1), dt_params=dt, dt_guide=args.dt_guide, log=print)
            gkey = "global_w" if args.densify == "w" else "global"
            trained = pipeline.weights_meta.get(gkey, {}).get("img_size")
            if not big and args.img_size is None and trained is not None and list(trained) != [H, W]:
                raise ValueError(f"the test images are {H}×{W}, but the global stage in {pipeline.weight_files[gkey]} "
                                 f"was trained on {trained[0]}×{trained[1]} images; evaluate a test set of that size, use "
                                 f"blurry_edges_test_big.py (blocks of the trained size), or pass --img_size {H} {W} to "
                                 "run it on these images anyway")
            weights_camera = pipeline.weights_meta.get(gkey, {}).get("args", {}).get("camera_params")
            weights_camera = CameraParams.from_dict(weights_camera) if weights_camera else None
            if (not camera_given(args) and dataset_camera is not None and weights_camera is not None
                    and dataset_camera != weights_camera):
                raise ValueError(f"the test set at {args.data_path} was made with camera {dataset_camera.to_dict()}, the "
                                 f"weights in {pipeline.weight_files[gkey]} were trained with {weights_camera.to_dict()}; "
                                 "say which one to evaluate with: --camera FILE or the per-field flags (--rho_1 …)")
            camera = camera_from_args(args, fallback=dataset_camera or weights_camera)
            pipeline.camera = camera
            pipeline.renderer = WedgeRenderer(pipeline.config.R, camera)
            if args.feature_cache is not None:
                from .pipeline import FeatureCache
                pipeline.feature_cache = FeatureCache(args.feature_cache)
        if big or focal:
            pipeline.layout(H, W, blocks=True)        # size checks before the first scene
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not focal:
        if dataset_camera is not None and camera_given(args) and dataset_camera != camera:
            print(f"note: the test set was made with camera {dataset_camera.to_dict()}, evaluating with {camera.to_dict()}")
        args.R, args.stride = pipeline.config.R, pipeline.config.stride
    bf16 = bool(getattr(pipeline.config, "bf16", False))          # resolved (Focal Track: no networks)
    run_name = args.run_name or default_run_name(args, big, bf16)
    out_dir = fresh_run_dir(args.log_path, run_name, args.overwrite)
    layout = pipeline.layout(H, W, blocks=True) if big else None
    print(f"{len(dataset)} scenes of {H}×{W} ({dataset.format} format) from {args.data_path}; device {args.cuda}, "
          + (f"method=focal_track {pipeline.describe()}" if focal else
             f"densify={args.densify}, {'bf16 autocast' if bf16 else 'float32'} (--bf16 {args.bf16}), "
             f"R={args.R}, stride={args.stride}")
          + (f", {len(layout.origins())} blocks per image" if layout is not None else ""))
    summary = evaluate_test_set(
        pipeline, dataset, out_dir, crop=args.crop, max_scenes=args.max_scenes, figures=not args.no_figures,
        blocks=True if big else None, run_args=vars(args),
        display_bgr=getattr(dataset, "channel_order", "RGB") == "BGR",
        progress=args.progress, pair_progress=None if args.progress else False)
    avg = summary["average"]
    print(f"\nAverage over {summary['n_scenes']} scenes: delta1={_fmt(avg['delta1'])} delta2={_fmt(avg['delta2'])} "
          f"delta3={_fmt(avg['delta3'])} RMSE={_fmt(avg['rmse_cm'])} cm AbsRel={_fmt(avg['absrel'])}")
    print(f"Average running time: {summary['mean_time_s']:.3f} s per scene"
          + (" (the local stage's time as when its tokens were computed)" if getattr(pipeline, "feature_cache", None)
             is not None and pipeline.feature_cache.hits else ""))
    if getattr(pipeline, "feature_cache", None) is not None:
        print(pipeline.feature_cache.describe())
    print(f"Outputs written to {out_dir}/ (scene_XXXX.npz{'' if args.no_figures else ', scene_XXXX.png'}, "
          "summary.csv, summary.json)")
    return 0
