"""Depth from one's own image pair::

    python -m blurry_edges.infer IMAGE1 IMAGE2 --camera camera.json --out DIR [--alpha A | --normalize max]

IMAGE1 is the capture taken with optical power ρ1 and IMAGE2 the one with ρ2, registered (same
view, same size). PNG/TIFF/JPEG/NPY, 8- or 16-bit or float, gray or RGB. An image of exactly
147×147 is processed whole; a larger one through 147×147 blocks with margins (README "Evaluate on a test set"), after
cropping (from the bottom/right, with a message) to the nearest size the patch grid fits.

Progress bars (local stage, global stage over the blocks, render, densify) go to stdout unless
``--no_progress``. ``--bf16 {auto,on,off}`` (default ``auto``: bf16 autocast where the CPU computes
bf16 natively, else float32) is recorded, resolved, in ``settings.json`` under ``precision``.

Written to ``--out``: ``depth.npy`` (metres, 0 = no estimate), ``depth.png`` (colored, scale bar in
cm), ``confidence.npy`` / ``.png``, ``boundary.npy`` / ``.png``, ``restored_1.png``, ``restored_2.png``,
``sharpened.png``, ``refocused.png``, ``maps.npz`` (every map, float32) and ``settings.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .camera import CameraParams
from .densify import DTParams
from .imageio import NORMALIZATIONS, ImageInputError, normalize_pair, read_image
from .runs import (OutputLocationError, add_version_argument, check_output_dir, non_negative_int, positive_int,
                   provenance)
from .cli import (add_camera_arguments, add_device_argument, add_inference_bf16_argument, add_method_arguments,
                  camera_from_args, densify_arg, device_from_args, focal_track_from_args)
from .features import precision_record
from .pipeline import RHO_PRIME, DepthPipeline, build_pipeline

__all__ = ["check_camera", "valid_size", "prepare_pair", "out_of_range_mask", "write_outputs", "main"]

_MODE_NAMES = {"none": "sparse", "w": "W, dense mask", "pp": "PP, U-Net completion", "dt": "domain-transform densified",
               "focal_track": "Focal Track, sparse"}

#: Blur range (pixels) the released networks were trained on: the paper's camera over 0.75–1.18 m.
_TRAINED = CameraParams()


def _blur_range(camera: CameraParams) -> tuple[float, float]:
    """Smallest and largest defocus blur (px) over the working range, for both powers."""
    z = np.linspace(camera.z_min, camera.z_max, 201)
    s = np.concatenate([camera.sigma_px(z, camera.rho_1), camera.sigma_px(z, camera.rho_2)])
    return float(s.min()), float(s.max())


def check_camera(camera: CameraParams, R: int = 21) -> list[str]:
    """Physical checks beyond :class:`CameraParams`' own; raises ``ValueError``, returns warnings.

    Errors: the working range starts at or inside a focal length ``1/ρ`` (no real image forms);
    the two powers give the same blur everywhere in the range (no depth cue). Warnings: blur that
    leaves the range the networks can represent (η < 1, i.e. σ < R//2 px) or the one they were trained on.
    """
    warnings: list[str] = []
    f_max = 1.0 / min(camera.rho_1, camera.rho_2)
    if camera.z_min <= f_max:
        raise ValueError(f"camera: the working range starts at z_min={camera.z_min} m, within the focal length "
                         f"1/rho = {f_max:.4f} m of the lens; objects that close form no real image. Check rho_1, "
                         "rho_2 (optical powers in 1/m) and z_min/z_max (metres)")
    lo, hi = _blur_range(camera)
    unit = R // 2
    if hi >= unit:
        warnings.append(f"the defocus blur reaches {hi:.1f} px over {camera.z_min}–{camera.z_max} m, beyond what "
                        f"a {R}-pixel patch can represent (< {unit} px): depths there will be unreliable; "
                        "down-sample the images (raise --mag accordingly) or narrow the working range")
    tlo, thi = _blur_range(_TRAINED)
    if camera != _TRAINED and (lo < 0.5 * tlo or hi > 1.5 * thi):
        warnings.append(f"this camera gives {lo:.2f}–{hi:.2f} px of blur; the released networks were trained on "
                        f"{tlo:.2f}–{thi:.2f} px (the paper's camera): expect degraded accuracy")
    return warnings


def valid_size(size: int, block: int, stride: int) -> int:
    """Largest size ≤ ``size`` that a ``block`` layout accepts: ``block + stride·k``."""
    if size < block:
        raise ValueError(f"size {size} is smaller than one block ({block})")
    return block + stride * ((size - block) // stride)


def prepare_pair(path1: str | Path, path2: str | Path, *, alpha: Optional[float] = None,
                 normalize: str = "max", block: int = 147, stride: int = 2) -> tuple[np.ndarray, dict]:
    """Read, check, crop and normalize a pair: returns ``[2, H, W, 3]`` float32 and a description."""
    im1, im2 = read_image(path1), read_image(path2)
    if im1.size != im2.size:
        raise ImageInputError(f"the two images differ in size: {im1.path} is {im1.size[0]}×{im1.size[1]}, "
                              f"{im2.path} is {im2.size[0]}×{im2.size[1]}; they must be registered captures "
                              "of the same view (crop or resample one to match)")
    H, W = im1.size
    if H < block or W < block:
        raise ImageInputError(f"the images are {H}×{W} but at least {block}×{block} pixels are needed "
                              "(one block of the global stage; for --method focal_track one window); "
                              "use larger images")
    Hc, Wc = valid_size(H, block, stride), valid_size(W, block, stride)
    a, b, scale, how = normalize_pair(im1, im2, alpha=alpha, mode=normalize)
    info = {
        "image1": str(im1.path), "image2": str(im2.path), "input_size": [H, W],
        "dtype": [im1.dtype, im2.dtype], "gray": [im1.gray, im2.gray],
        "normalization": how, "scale": scale, "size": [Hc, Wc], "cropped": (Hc, Wc) != (H, W),
    }
    if (Hc, Wc) != (H, W):
        print(f"note: cropping {H}×{W} to {Hc}×{Wc} (keeping the top-left corner): sizes must be "
              f"{block} + a multiple of the stride {stride}; output pixel (i, j) is input pixel (i, j)")
    pair = np.stack([a[:Hc, :Wc], b[:Hc, :Wc]]).astype(np.float32)
    peak = float(pair.max())
    if peak > 2.0:
        print(f"warning: after normalization the images reach {peak:.2f}; the networks expect about [0, 1] "
              "(is --alpha right?)")
    return pair, info


def out_of_range_mask(depth: np.ndarray, camera: CameraParams) -> np.ndarray:
    """Pixels with an estimate (> 0) outside the camera's working range [z_min, z_max]: values the
    networks were not built to give (e.g. a densifier extrapolating), flagged, not silently kept."""
    return (depth > 0) & ((depth < camera.z_min) | (depth > camera.z_max))


def write_outputs(out: dict, out_dir: str | Path, camera: CameraParams, settings: dict) -> list[str]:
    """Write every output map of :meth:`DepthPipeline.run` to ``out_dir``; returns the file names."""
    from .visualize import depth_to_color_png, save_gray_png, save_rgb_png

    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    depth = out["depth"].numpy().astype(np.float32)
    np.save(d / "depth.npy", depth)
    depth_to_color_png(depth, camera.z_min, camera.z_max, d / "depth.png",
                       title=f"estimated depth ({_MODE_NAMES.get(settings.get('densify', 'none'), '')})")
    np.save(d / "confidence.npy", out["confidence"].numpy().astype(np.float32))
    save_gray_png(out["confidence"], d / "confidence.png")
    np.save(d / "boundary.npy", out["boundary"].numpy().astype(np.float32))
    save_gray_png(out["boundary"], d / "boundary.png")
    save_rgb_png(out["color"][0], d / "restored_1.png")
    save_rgb_png(out["color"][1], d / "restored_2.png")
    save_rgb_png(out["sharpened"], d / "sharpened.png")
    save_rgb_png(out["refocused"], d / "refocused.png")
    maps = {k: v.numpy().astype(np.float32) for k, v in out.items() if isinstance(v, torch.Tensor)}
    outside = out_of_range_mask(depth, camera)
    maps["out_of_range"] = outside.astype(np.uint8)
    np.savez_compressed(d / "maps.npz", **maps)
    files = ["depth.npy", "depth.png", "confidence.npy", "confidence.png", "boundary.npy", "boundary.png",
             "restored_1.png", "restored_2.png", "sharpened.png", "refocused.png", "maps.npz", "settings.json"]
    valid = depth > 0
    settings = dict(settings, outputs=files, depth_stats={
        "fraction_with_estimate": float(valid.mean()),
        "min_m": float(depth[valid].min()) if valid.any() else None,
        "max_m": float(depth[valid].max()) if valid.any() else None,
        "working_range_m": [camera.z_min, camera.z_max],
        "pixels_outside_working_range": int(outside.sum()),
        "fraction_outside_working_range": float(outside.sum() / max(int(valid.sum()), 1)),
    })
    (d / "settings.json").write_text(json.dumps(settings, indent=2, default=str))
    return files


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m blurry_edges.infer",
        description="Blurry-Edges depth from two registered images taken with optical powers rho_1 and rho_2.")
    p.add_argument("image1", help="capture with optical power rho_1 (PNG/TIFF/JPEG/NPY)")
    p.add_argument("image2", help="capture with optical power rho_2, same view and size")
    p.add_argument("--out", required=True, help="output folder (checked before any work)")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out")
    p.add_argument("--no_progress", dest="progress", action="store_false",
                   help="hide the progress bars of the stages (local stage, global stage per block, render, densify)")
    add_version_argument(p)
    norm = p.add_argument_group("normalization (networks expect photon counts / alpha, about [0, 1])")
    norm.add_argument("--alpha", type=float, default=None,
                      help="photon level: the images hold photon counts and are divided by ALPHA")
    norm.add_argument("--normalize", choices=NORMALIZATIONS, default="max",
                      help="without --alpha: divide by the pair's maximum (default) or by the bit depth's "
                           "full scale (255 / 65535; float images as they are)")
    m = p.add_argument_group("model")
    m.add_argument("--model_path", default="./pretrained_weights",
                   help="folder with the weight files: freshly trained best_run_exp_*.pth, else the authors' names")
    m.add_argument("--local_weights", default=None,
                   help="local-stage weights (default: MODEL_PATH/best_run_exp_local_stage.pth, "
                        "else MODEL_PATH/pretrained_local_stage.pth)")
    m.add_argument("--global_weights", default=None,
                   help="global-stage weights (default: MODEL_PATH/best_run_exp_global_stage.pth, else "
                        "MODEL_PATH/pretrained_global_stage.pth; …_w.pth for --densify w)")
    m.add_argument("--pp_weights", default=None,
                   help="U-Net weights (default: MODEL_PATH/best_run_exp_depth_completion_pp.pth, "
                        "else MODEL_PATH/pretrained_depth_completion_pp.pth)")
    m.add_argument("--densify", type=densify_arg, default="none",
                   help="none (sparse depth near boundaries, default), w, pp or dt (dense)")
    m.add_argument("--R", type=positive_int, default=None, help="patch size (default: the weights', else 21)")
    m.add_argument("--stride", type=positive_int, default=None, help="patch stride (default: the weights', else 2)")
    m.add_argument("--block", type=positive_int, default=None,
                   help="block size the global stage works on (default: the global weights' image size, else 147)")
    m.add_argument("--n_margin_patch", type=non_negative_int, default=10, help="margin patches dropped at inner block borders")
    m.add_argument("--rho_prime", type=float, default=RHO_PRIME, help="optical power (1/m) of the refocused view")
    add_device_argument(m, "--device", "--cuda", dest="device")
    add_inference_bf16_argument(m)
    m.add_argument("--tile_batch", type=positive_int, default=1, help="blocks per global-stage forward pass (raise on a GPU)")
    add_method_arguments(p, compare=False)
    add_camera_arguments(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.device = str(device_from_args(args.device))
    except ValueError as e:
        parser.error(str(e))
    try:                                           # every output location, before any work
        out_dir = check_output_dir(args.out, "--out")
        if (out_dir / "settings.json").is_file() and not args.overwrite:
            raise OutputLocationError(f"--out {out_dir} holds the results of an earlier run; choose another folder "
                                      "or pass --overwrite to replace them")
    except OutputLocationError as e:
        parser.error(str(e))
    try:
        focal = args.method == "focal_track"          # training-free: any size of at least one window
        if focal:
            camera = camera_from_args(args)
            pipeline: DepthPipeline = focal_track_from_args(args, camera, args.device)
        else:
            pipeline = build_pipeline(
                model_path=args.model_path, densify=args.densify, R=args.R, stride=args.stride,
                img_size=None if args.block is None else (args.block, args.block), camera=camera_from_args(args),
                device=args.device, bf16=args.bf16, rho_prime=args.rho_prime, margin=args.n_margin_patch,
                local_weights=args.local_weights, global_weights=args.global_weights, pp_weights=args.pp_weights,
                tile_batch=args.tile_batch, dt_params=DTParams(), log=print)
            camera = pipeline.camera
            args.R, args.stride = pipeline.config.R, pipeline.config.stride
            args.block = pipeline.tile_size[0]
        for w in check_camera(camera, args.R or 21):
            print(f"warning: {w}")
        pair, info = prepare_pair(args.image1, args.image2, alpha=args.alpha, normalize=args.normalize,
                                  block=args.ft_window if focal else args.block, stride=1 if focal else args.stride)
        out = pipeline.run(pair, progress=args.progress)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    settings = {
        "inputs": info, "camera": camera.to_dict(), "method": args.method,
        "densify": "focal_track" if args.method == "focal_track" else args.densify,
        "bf16": getattr(pipeline.config, "bf16", False),          # resolved; Focal Track has no networks
        "precision": precision_record(args.bf16, getattr(pipeline.config, "bf16", False)),
        "device": str(pipeline.device), "R": args.R, "stride": args.stride, "block": args.block,
        "n_margin_patch": args.n_margin_patch, "rho_prime": args.rho_prime, "tau": pipeline.config.threshold,
        "blocks": out["tiles"], "timing_s": out["timing"],
        "args": {k: v for k, v in vars(args).items()},
        "weights": {"model_path": args.model_path, **pipeline.weight_files},
        "provenance": provenance(pipeline.weight_files),
    }
    files = write_outputs(out, args.out, camera, settings)
    stats = json.loads((Path(args.out) / "settings.json").read_text())["depth_stats"]
    if stats["pixels_outside_working_range"]:
        print(f"warning: {stats['pixels_outside_working_range']} pixels "
              f"({100 * stats['fraction_outside_working_range']:.1f} % of the estimates) lie outside the working "
              f"range {camera.z_min}–{camera.z_max} m; they are kept in depth.npy and flagged in maps.npz "
              "(out_of_range) and settings.json: treat them as unreliable")
    t = out["timing"]
    print(f"depth for {info['size'][0]}×{info['size'][1]} pixels ({out['tiles']} block"
          f"{'s' if out['tiles'] != 1 else ''}) in {t['total']:.2f} s on {pipeline.device}"
          f" ({settings['precision']['networks']})")
    print(f"outputs written to {args.out}/: {', '.join(files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
