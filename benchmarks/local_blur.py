"""How well the local stage estimates blur, image by image, on stored validation patches.

Depth comes only from the blur η of a boundary in the two images (paper Eq. 7), so a local stage
whose η does not follow the true blur gives the global stage nothing to refine. For each
validation patch with true boundary pixels near its centre, this script runs the local stage on
the noisy patch, takes the η of the wedge that owns those pixels (sparse ownership mask, Eq. 19)
and compares it with the true blur ``σ_px(z, ρ_image) / (R//2)`` (Eq. 3) of their median depth.
Printed: correlation, RMSE and least-squares slope (1: η spans the true range; below 1: shrunk
towards the mean) of that η, the same for the better of the two wedges (an upper
bound), the mean of the local loss terms (colors fitted to the noisy patch, as in validation,
with the supervised blur term of ``--beta_blur``), and how long it took.

    python benchmarks/local_blur.py --data_path data/train_a --weights checkpoints/.../best_run_exp_local_stage.pth
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blurry_edges.data import LocalPatchDataset  # noqa: E402
from blurry_edges.cli import add_bf16_argument  # noqa: E402
from blurry_edges.features import local_outputs, resolve_bf16  # noqa: E402
from blurry_edges.losses import LocalLoss, true_blur  # noqa: E402
from blurry_edges.models import LocalStage, load_weights  # noqa: E402
from blurry_edges.yardsticks import slope  # noqa: E402
from blurry_edges.wedges import WedgeRenderer, decode_local, eta_from_logit, ownership_mask  # noqa: E402


def blur_accuracy(model: torch.nn.Module, ds: LocalPatchDataset, n: int, bf16: bool, centre: int = 7) -> dict:
    """Blur accuracy of ``model`` on the first ``n`` patches of ``ds`` (a ``with_blur=True`` set)."""
    R = ds.R
    n = min(n, len(ds))
    items = [ds[i] for i in range(n)]
    noisy, clean, dist, deri, bdepth, image = (torch.stack([it[k] for it in items]) for k in range(6))
    noisy, clean, deri = noisy.permute(0, 3, 1, 2), clean.permute(0, 3, 1, 2), deri.permute(0, 3, 1, 2)
    renderer = WedgeRenderer(R, ds.camera)
    loss = LocalLoss(renderer)
    with torch.no_grad():
        raw = local_outputs(model, noisy, bf16=bf16)
        terms = {k: float(v) for k, v in loss.terms(raw, noisy, clean, dist, deri, bdepth, image).items()}
        geom, e = decode_local(raw)
        eta = eta_from_logit(e)                                          # [n, 2]
        owner = ownership_mask(renderer.distances(geom), "sparse", renderer.delta)
        rho = torch.tensor(renderer.camera.rhos)[image][:, None, None]
        target = true_blur(renderer.camera, bdepth, rho, R)                # [n, R, R]
    lo, hi = R // 2 - centre // 2, R // 2 + centre // 2 + 1
    rows = []
    for i in range(n):
        t = target[i, lo:hi, lo:hi]
        on = t > 0
        if on.sum() < 3:
            continue
        true = float(t[on].median())
        o = owner[i, lo:hi, lo:hi][on]
        o = o[o > 0]
        k = int(torch.mode(o).values) - 1 if o.numel() else int((eta[i] - true).abs().argmin())
        best = float(eta[i][(eta[i] - true).abs().argmin()])
        rows.append((true, float(eta[i, k]), best))
    if not rows:
        raise SystemExit("no validation patch has true boundary pixels near its centre")
    a = np.array(rows)

    def score(col):
        return float(np.corrcoef(a[:, 0], a[:, col])[0, 1]), float(np.sqrt(np.mean((a[:, col] - a[:, 0]) ** 2)))

    return {"patches": len(a), "true_mean": float(a[:, 0].mean()), "true_std": float(a[:, 0].std()),
            "owner": score(1), "best_wedge": score(2), "pred_mean": float(a[:, 1].mean()),
            "owner_slope": slope(a[:, 1], a[:, 0]), "terms": terms}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data_path", required=True, help="a train/val set made by train_val_data_generator.py")
    ap.add_argument("--weights", nargs="+", required=True, help="local-stage weight files to compare")
    ap.add_argument("--patches", type=int, default=2000, help="validation patches to use (the first N)")
    add_bf16_argument(ap, default="auto", help="bf16 autocast for the local stage ('auto': where the CPU has it natively)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bf16 = resolve_bf16(args.bf16, torch.device("cpu"))
    ds = LocalPatchDataset(args.data_path, "val", with_blur=True)
    print(f"{args.data_path} val, first {args.patches} patches, R={ds.R}, bf16={bf16}, {args.threads} thread(s)")
    for w in args.weights:
        model = LocalStage(ds.R)
        load_weights(model, w, what="local stage")
        model.eval()
        t0 = time.perf_counter()
        r = blur_accuracy(model, ds, args.patches, bf16)
        terms = ", ".join(f"{k} {v:.5f}" for k, v in r["terms"].items())
        print(f"{w}\n  {r['patches']} patches, true η {r['true_mean']:.3f} ± {r['true_std']:.3f}; "
              f"owning wedge: correlation {r['owner'][0]:+.3f}, RMSE {r['owner'][1]:.3f} (mean η {r['pred_mean']:.3f}, "
              f"slope on true η {r['owner_slope']:.3f}); "
              f"better wedge: {r['best_wedge'][0]:+.3f}, {r['best_wedge'][1]:.3f}\n  terms: {terms} "
              f"({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
