"""Library speed figures (printed, never asserted).

* the renderer, forward + backward, for the 8192 patches of one 147×147 pair (global-stage shape);
* local-stage inference for one 147×147 pair (8192 patches of 21×21) in fp32 and bf16 autocast.

    python benchmarks/bench_library.py [--device cpu|cuda] [--repeats 3] [--chunk 256]
"""
from __future__ import annotations

import argparse
import math

import torch

from blurry_edges.models import LocalStage
from blurry_edges.wedges import WedgeRenderer

# the same best-of timer as the inference benchmark (this folder is on sys.path when run as a script)
from bench_inference import best_of as timeit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--R", type=int, default=21)
    ap.add_argument("--chunk", type=int, default=256, help="patches per local-stage forward (the pipeline's default)")
    args = ap.parse_args()
    device = torch.device(args.device)
    R, P = args.R, 64 * 64
    g = torch.Generator().manual_seed(0)
    print(f"device={device}, threads={torch.get_num_threads()}, torch {torch.__version__}")

    renderer = WedgeRenderer(R)
    geom0 = torch.cat([torch.rand(P, 4, generator=g) * 2 - 1, torch.rand(P, 4, generator=g) * 2 * math.pi], -1)
    eta0 = 0.02 + 0.3 * torch.rand(P, 2, 2, generator=g)
    fit = torch.rand(P, 2, 3, R, R, generator=g)
    geom0, eta0, fit = geom0.to(device), eta0.to(device), fit.to(device)

    def render_fwd_bwd():
        geom = geom0.clone().requires_grad_()
        eta = eta0.clone().requires_grad_()
        out = renderer.render_pair(geom, eta, fit)
        (out.patches.square().mean() + out.boundary.mean() + out.depth.mean()).backward()

    t = timeit(render_fwd_bwd, device, args.repeats)
    print(f"renderer fwd+bwd, {2 * P} patches (one pair, R={R}): {t:.3f} s")

    model = LocalStage(R).to(device).eval()
    x = torch.rand(2 * P, 3, R, R, generator=g).to(device)

    def local(bf16: bool, chunk: int = args.chunk):
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            for i in range(0, x.shape[0], chunk):
                model(x[i:i + chunk])

    for bf16 in (False, True):
        t = timeit(lambda: local(bf16), device, args.repeats)
        print(f"local stage inference, {2 * P} patches in chunks of {args.chunk}, "
              f"{'bf16 autocast' if bf16 else 'fp32'}: {t:.2f} s")


if __name__ == "__main__":
    main()
