"""End-to-end inference speed for one 147×147 pair, per stage, fp32 and bf16 (printed, never asserted);
and the effect of bf16 autocast on the depth maps.

    python benchmarks/bench_inference.py [--device cpu|cuda] [--repeats 2] [--scenes 3]
                                         [--model_path ./pretrained_weights] [--data_path ./data/data_test]

Stages: ``local`` = local-stage network on the 8192 patches, ``colors`` = decoding + ridge colors +
global-stage features, ``global`` = Transformer over the 4096 tokens, ``render_fold`` = pair render,
sharpened/refocused views and the fold into the global maps; ``total`` is one ``DepthPipeline.run``.
With no weight files the networks are randomly initialized (fine for timing; for the bf16 effect
on the metrics use trained weights and a test set).

Peak memory of one large pair (``--peak_memory``; no timings)::

    python benchmarks/bench_inference.py --peak_memory                     # 587×587 (6×6 blocks), fp32 and bf16
    python benchmarks/bench_inference.py --peak_memory --size 147 --precisions fp32   # one block
    python benchmarks/bench_inference.py --peak_memory --size 61 --R 11 --block 41 --margin 2   # a check in seconds

Each precision runs in a fresh child process (randomly initialized networks of the paper's
geometry, R = 21 and 147×147 blocks unless ``--R`` / ``--block``; memory does not depend on the
weights' values), which builds the networks, makes a synthetic ``SIZE×SIZE`` pair and runs
``DepthPipeline.run`` once; its peak resident set size (``getrusage(RUSAGE_SELF).ru_maxrss``) is
reported before the run (interpreter, torch, networks, pair) and after it (the peak of the whole
process). On CUDA the peak of ``torch.cuda.max_memory_allocated`` is reported too. One child per
setting keeps one setting's peak from hiding the next one's.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout without install

from blurry_edges.camera import CameraParams
from blurry_edges.features import encode_local, local_outputs, pair_tokens
from blurry_edges.metrics import eval_depth
from blurry_edges.models import WEIGHT_FILES, GlobalStage, LocalStage, load_weights
from blurry_edges.patches import PatchGrid
from blurry_edges.pipeline import DepthPipeline, PipelineConfig, as_pair_tensor
from timing import best_of  # benchmarks/timing.py


def synthetic_pair(camera: CameraParams, R: int, size: int = 147, seed: int = 0):
    """A disk in front of a tilted background, each blurred per its depth for ρ1 and ρ2, Poisson noise."""
    import cv2

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    z_bg, z_fg = rng.uniform(1.0, 1.15), rng.uniform(0.78, 0.95)
    c_bg, c_fg = rng.uniform(0.1, 0.9, 3), rng.uniform(0.1, 0.9, 3)
    (cy, cx), rad = rng.uniform(0.35, 0.65, 2) * size, rng.uniform(0.2, 0.35) * size
    disk = ((yy - cy) ** 2 + (xx - cx) ** 2 < rad ** 2).astype(np.float64)
    alpha = rng.uniform(180, 200)
    imgs = []
    for rho in camera.rhos:
        def blur(a, z):
            s = float(camera.sigma_px(z, rho))
            return cv2.GaussianBlur(a, (0, 0), s) if s > 0.05 else a
        m = blur(disk, z_fg)
        img = blur(np.ones((size, size, 1)) * c_bg, z_bg).reshape(size, size, 3) * (1 - m[..., None]) \
            + c_fg * m[..., None]
        imgs.append(rng.poisson(np.clip(img, 0, 1) * alpha) / alpha)
    depth = np.where(disk > 0, z_fg, z_bg)
    return np.stack(imgs).astype(np.float32), depth.astype(np.float32)


def load_or_random(model, path: Path, what: str) -> bool:
    if path.is_file():
        load_weights(model, path, what=what)
        return True
    return False


def max_rss_mb() -> float:
    """Peak resident set size of this process so far, MB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 2 ** 10


def peak_memory_child(args: argparse.Namespace) -> dict:
    """One ``DepthPipeline.run`` of a synthetic ``args.size``² pair in ``args.precision``, in this
    (fresh) process; returns the peak RSS before and after the run (MB) and the run's seconds."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    R, block, stride = args.R, args.block, 2
    if (block - R) % stride or (args.size - block) % stride or args.size < block:
        raise SystemExit(f"--size {args.size} and --block {block} must be R + 2k ({R} + 2k) and size ≥ block")
    grid = (block - R) // stride + 1
    torch.manual_seed(0)
    local, glob = LocalStage(R), GlobalStage(grid, grid, stride)
    pipe = DepthPipeline(local, glob, CameraParams(),
                         PipelineConfig(R=R, stride=stride, bf16=args.precision == "bf16", local_chunk=args.local_chunk,
                                        margin=args.margin),
                         device=device)
    pair, _ = synthetic_pair(CameraParams(), R, size=args.size)
    before = max_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    out = pipe.run(pair, progress=False)
    seconds = time.perf_counter() - t0
    rec = {"precision": args.precision, "size": args.size, "blocks": out["tiles"], "device": str(device),
           "rss_before_run_mb": before, "peak_rss_mb": max_rss_mb(), "seconds": seconds}
    if device.type == "cuda":
        rec["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return rec


def peak_memory(args: argparse.Namespace) -> None:
    """Run :func:`peak_memory_child` in a fresh process per precision and print the table."""
    print(f"peak memory of one {args.size}×{args.size} pair (R={args.R}, blocks of {args.block}), device {args.device}, "
          f"random weights, one fresh process per precision, torch {torch.__version__}")
    rows = []
    for precision in args.precisions:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", precision, "--size", str(args.size),
               "--R", str(args.R), "--block", str(args.block), "--margin", str(args.margin), "--device", args.device,
               "--local_chunk", str(args.local_chunk)] + (["--threads", str(args.threads)] if args.threads else [])
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"the {precision} child failed ({res.returncode}):\n{res.stderr[-3000:]}")
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    cuda = any("cuda_peak_allocated_mb" in r for r in rows)
    print(f"{'':6s}{'blocks':>8s}{'RSS before run':>16s}{'peak RSS':>11s}{'run adds':>10s}"
          + (f"{'CUDA peak':>11s}" if cuda else "") + f"{'time':>9s}")
    for r in rows:
        print(f"{r['precision']:6s}{r['blocks']:8d}{r['rss_before_run_mb']:13.0f} MB{r['peak_rss_mb']:8.0f} MB"
              f"{r['peak_rss_mb'] - r['rss_before_run_mb']:7.0f} MB"
              + (f"{r.get('cuda_peak_allocated_mb', float('nan')):8.0f} MB" if cuda else "")
              + f"{r['seconds']:8.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--scenes", type=int, default=3, help="scenes for the fp32-vs-bf16 depth comparison")
    ap.add_argument("--model_path", default="./pretrained_weights")
    ap.add_argument("--data_path", default="./data/data_test", help="test set for the bf16 comparison (optional)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--local_chunk", type=int, default=256)
    ap.add_argument("--skip_stages", action="store_true", help="only the end-to-end timings")
    mem = ap.add_argument_group("peak memory (--peak_memory)")
    mem.add_argument("--peak_memory", action="store_true",
                     help="measure the peak RSS of one SIZE×SIZE pair per precision (fresh process each); no timings")
    mem.add_argument("--size", type=int, default=587, help="pair size for --peak_memory (default 587: 6×6 blocks)")
    mem.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    mem.add_argument("--R", type=int, default=21, help="patch size of the random networks (--peak_memory)")
    mem.add_argument("--block", type=int, default=147, help="block size of the global stage (--peak_memory)")
    mem.add_argument("--margin", type=int, default=10, help="margin patches at inner block borders (--peak_memory)")
    ap.add_argument("--_child", dest="precision", choices=("fp32", "bf16"), default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.precision is not None:                        # a --peak_memory child: one run, one JSON line
        print(json.dumps(peak_memory_child(args)))
        return
    if args.peak_memory:
        peak_memory(args)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    R, size = 21, 147
    torch.manual_seed(0)
    local, glob = LocalStage(R), GlobalStage()
    trained = load_or_random(local, Path(args.model_path) / WEIGHT_FILES["local"], "local stage")
    trained &= load_or_random(glob, Path(args.model_path) / WEIGHT_FILES["global"], "global stage")
    cpu = platform.processor() or platform.machine()
    print(f"device={device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else cpu}), "
          f"threads={torch.get_num_threads()}, torch {torch.__version__}, "
          f"weights: {'trained' if trained else 'random (no files in ' + args.model_path + ')'}")
    camera = CameraParams()
    pair, _ = synthetic_pair(camera, R)
    x = as_pair_tensor(pair, device)
    grid = PatchGrid(size, size, R, 2)
    pipes = {name: DepthPipeline(local, glob, camera, PipelineConfig(R=R, bf16=bf, local_chunk=args.local_chunk),
                                 device=device) for name, bf in (("fp32", False), ("bf16", True))}

    rows = []
    for name, p in pipes.items():
        stages = {}
        if not args.skip_stages:
            with torch.no_grad():
                patches = grid.unfold(x).flatten(0, 1)                             # [8192, 3, R, R]

                def local_net():
                    return local_outputs(p.local, patches, chunk=args.local_chunk, bf16=p.config.bf16)

                stages["local"] = best_of(local_net, args.repeats, device)
                raw_local = local_net()

                def colors():
                    return encode_local(p.renderer, raw_local, patches)

                stages["colors"] = best_of(colors, args.repeats, device)
                tokens = colors().view(2, -1, 19)
                tokens = pair_tokens(tokens[0], tokens[1])[None]
                stages["global"] = best_of(lambda: p._global_forward(tokens), args.repeats, device)
                raw = p._global_forward(tokens)[0]
                stages["render_fold"] = best_of(lambda: p.render_maps(raw, x), args.repeats, device)
        stages["total"] = best_of(lambda: p.run(x), args.repeats, device)
        rows.append((name, stages))
    print(f"\none {size}×{size} pair end to end (best of {args.repeats}; s):")
    keys = ["local", "colors", "global", "render_fold", "total"]
    print(f"{'':6s}" + "".join(f"{k:>13s}" for k in keys))
    for name, st in rows:
        print(f"{name:6s}" + "".join(f"{st[k]:13.3f}" if k in st else f"{'-':>13s}" for k in keys))

    # ---------------------------------------------------------------- effect of bf16 on the depth maps
    scenes = []
    try:
        from blurry_edges.data import TestSceneDataset
        ds = TestSceneDataset(args.data_path)
        if ds.img_size == (size, size):
            scenes = [tuple(np.asarray(t) for t in ds[i]) for i in range(min(args.scenes, len(ds)))]
            src = f"test set {args.data_path}"
    except (FileNotFoundError, ValueError, ImportError):
        pass
    if not scenes:
        scenes = [synthetic_pair(camera, R, seed=s) for s in range(args.scenes)]
        src = "synthetic disk-over-background scenes"
    print(f"\nfp32 vs bf16 on {len(scenes)} {src}:")
    for i, (noisy, gt) in enumerate(scenes):
        a, b = pipes["fp32"].run(noisy), pipes["bf16"].run(noisy)
        da, db = a["depth"].numpy(), b["depth"].numpy()
        both = (da > 0) & (db > 0)
        flips = float(((da > 0) != (db > 0)).mean())
        diff = float(np.abs(da - db)[both].mean() * 100) if both.any() else float("nan")
        ma, mb = eval_depth(da, gt), eval_depth(db, gt)
        print(f"  scene {i}: mean |Δdepth| {diff:.3f} cm on {int(both.sum())} px, validity changed on "
              f"{100 * flips:.2f}% of px, max |Δcolor| {float((a['color'] - b['color']).abs().max()):.4f}; "
              f"δ1 {ma.delta1:.3f}→{mb.delta1:.3f}, RMSE {ma.rmse_cm:.3f}→{mb.rmse_cm:.3f} cm, "
              f"AbsRel {ma.absrel:.3f}→{mb.absrel:.3f}")


if __name__ == "__main__":
    main()
