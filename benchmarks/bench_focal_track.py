"""Time Focal Track (``--method focal_track``) per image pair at 147×147 and 587×587 (printed, never asserted).

One pair is a textured plane rendered with the project's PSF and photon noise (α = 190); the time is
one ``FocalTrackPipeline.run`` (input to final sparse depth, plus the figure views), best of
``--repeats`` after a warm-up, and the core estimator alone (``focal_track``).

    python benchmarks/bench_focal_track.py [--device cpu|cuda] [--repeats 5] [--threads N] [--sizes 147 587]
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout without install
sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import best_of  # benchmarks/timing.py
from blurry_edges.camera import CameraParams
from blurry_edges.focal_track import FocalTrackConfig, FocalTrackPipeline, as_pair_batch, focal_track
from blurry_edges.synth.psf import blur_reflect, gaussian_kernel_1d


def noisy_plane(size: int, camera: CameraParams, z: float = 0.95, alpha: float = 190.0, seed: int = 0) -> np.ndarray:
    """``[2, size, size, 3]`` counts / α of a random texture at depth ``z``."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    tex = ndimage.gaussian_filter(rng.uniform(0, 1, (size, size, 3)), (2, 2, 0))
    tex = 0.1 + 0.8 * (tex - tex.min()) / (tex.max() - tex.min())
    pair = np.stack([blur_reflect(tex, gaussian_kernel_1d(camera.sigma_px(z, r))) for r in camera.rhos])
    return (np.clip(np.round(rng.poisson(pair * alpha)), 0, alpha) / alpha).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[147, 587])
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    camera, cfg = CameraParams(), FocalTrackConfig()
    pipe = FocalTrackPipeline(camera, cfg, device)
    print(f"Focal Track {cfg}; {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}")
    for size in args.sizes:
        pair = noisy_plane(size, camera)
        x = as_pair_batch(pair, device)
        core = best_of(lambda: focal_track(x, camera, cfg), args.repeats, device)
        full = best_of(lambda: pipe.run(pair), args.repeats, device)
        print(f"{size}×{size} pair: {full * 1e3:8.1f} ms per pair end to end (run), "
              f"{core * 1e3:8.1f} ms estimator only (focal_track)")


if __name__ == "__main__":
    main()
