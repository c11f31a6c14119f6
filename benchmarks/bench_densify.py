"""Time the domain-transform densifier per image at 147×147 and 587×587 (CPU by default).

Prints seconds per image and the time ratio next to the pixel-count ratio. The work is linear in
the pixel count; the sequential Python steps (one per row/column, 2·N·(H+W) per filter) are linear
in the side length, so at small sizes the ratio stays below the pixel ratio (per-step overhead).

    python benchmarks/bench_densify.py [--device cpu] [--repeats 5] [--threads N]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout without install
from blurry_edges.densify import DTParams, domain_transform_densify  # noqa: E402
from timing import best_of  # noqa: E402  (benchmarks/timing.py)


def make_scene(size: int, device: torch.device, seed: int = 0):
    """A disk at 0.8 m over a plane at 1.1 m; sparse samples on the disk outline and on a few
    background pattern edges; a two-color guide. Returns (sparse, guide, boundary, confidence)."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32),
                            torch.arange(size, dtype=torch.float32), indexing="ij")
    r = torch.hypot(yy - size / 2, xx - size / 2)
    dist_disk = (r - size / 4).abs()
    dist_stripes = ((xx % (size / 6)) - size / 12).abs()
    boundary = torch.exp(-torch.minimum(dist_disk, dist_stripes) ** 2 / 0.7 ** 2)
    near = r < size / 4
    depth = torch.where(near, 0.8, 1.1)
    sparse = torch.where(boundary > 0.5, depth + 0.01 * torch.randn(size, size, generator=gen),
                         torch.zeros(()))
    guide = torch.stack([torch.where(near, 0.8, 0.2 + 0.3 * (dist_stripes < 1).float())] * 3)
    conf = torch.where(sparse > 0, torch.rand(size, size, generator=gen), torch.zeros(()))
    return [t.to(device) for t in (sparse, guide, boundary, conf)]


def time_one(size: int, device: torch.device, repeats: int, params: DTParams) -> float:
    sparse, guide, boundary, conf = make_scene(size, device)
    return best_of(lambda: domain_transform_densify(sparse, guide, weight=conf, boundary=boundary, params=params),
                   repeats, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[147, 587])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"best of {args.repeats}")
    for confidence_weighted in (False, True):
        params = DTParams(confidence_weighted=confidence_weighted)
        times = {s: time_one(s, device, args.repeats, params) for s in args.sizes}
        label = "confidence-weighted" if confidence_weighted else "validity-weighted"
        for s in args.sizes:
            print(f"  {label:20s} {s}x{s}: {times[s] * 1e3:8.1f} ms/image")
        s0 = args.sizes[0]
        for s in args.sizes[1:]:
            print(f"  {label:20s} {s}/{s0}: time ratio {times[s] / times[s0]:.2f}, "
                  f"pixel ratio {(s * s) / (s0 * s0):.2f}, side ratio {s / s0:.2f}")


if __name__ == "__main__":
    main()
