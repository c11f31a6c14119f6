"""Choose Focal Track's window, pre-filter and confidence threshold on *validation* scenes (never test scenes).

The basic-shape validation split of ``train_val_data_generator.py`` (noisy pairs, α ≈ 180–200, with
the per-pixel depth of the front-most surface) is run through :func:`blurry_edges.focal_track.focal_track`
for every window × pre-filter setting; each confidence threshold τ is then scored with the paper's
metrics (Table 3 definitions, :func:`blurry_edges.metrics.eval_depth`). Printed: the best settings
by RMSE among those keeping at least ``--min_coverage`` of the evaluated pixels, and the chosen one.

    python train_val_data_generator.py --num_sample_train 8 --num_sample_val 20 --data_path /tmp/ft_val
    python benchmarks/tune_focal_track.py --data_path /tmp/ft_val [--scenes 20]
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout without install
from blurry_edges.camera import CameraParams
from blurry_edges.data import SceneDataset, read_manifest
from blurry_edges.focal_track import FocalTrackConfig, focal_track
from blurry_edges.metrics import METRIC_NAMES, average_metrics, eval_depth


def load_val(root: str, n: int) -> tuple[torch.Tensor, np.ndarray, CameraParams]:
    """``[N, 2, 3, H, W]`` noisy pairs (counts / α), ``[N, H, W]`` depth and the set's camera."""
    ds = SceneDataset(root, "val", with_params=False, with_depth=True)
    n = min(n, len(ds))
    pairs, depths = [], []
    for i in range(n):
        item = ds[i]
        pairs.append(item[1].permute(0, 3, 1, 2))
        depths.append(item[6].numpy())
    man = read_manifest(root) or {}
    cam = man.get("camera")
    camera = CameraParams.from_dict(cam) if isinstance(cam, dict) else CameraParams()
    return torch.stack(pairs), np.stack(depths), camera


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data_path", required=True, help="a train/val set of basic-shape scenes")
    ap.add_argument("--scenes", type=int, default=20, help="validation scenes used")
    ap.add_argument("--windows", type=int, nargs="+", default=[9, 15, 21, 31])
    ap.add_argument("--prefilters", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0])
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95])
    ap.add_argument("--min_coverage", type=float, default=0.05,
                    help="fraction of the evaluated (cropped) pixels a setting must keep")
    ap.add_argument("--crop", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)
    pairs, gt, camera = load_val(args.data_path, args.scenes)
    print(f"{pairs.shape[0]} validation scenes of {pairs.shape[-2]}×{pairs.shape[-1]} from {args.data_path}")
    rows = []
    t0 = time.perf_counter()
    for window, pf in itertools.product(args.windows, args.prefilters):
        m = focal_track(pairs, camera, FocalTrackConfig(window=window, prefilter_sigma=pf, threshold=0.0))
        z, conf = m["depth_raw"].numpy(), m["confidence"].numpy()
        for tau in args.thresholds:
            ms = [eval_depth(np.where(conf[i] > tau, z[i], 0.0), gt[i], crop=args.crop,
                             z_min=camera.z_min, z_max=camera.z_max) for i in range(len(gt))]
            area = (gt.shape[1] - 2 * args.crop) * (gt.shape[2] - 2 * args.crop)
            coverage = float(np.mean([x.n_pixels / area for x in ms]))
            rows.append(({"window": window, "prefilter_sigma": pf, "threshold": tau}, average_metrics(ms), coverage))
    print(f"{len(rows)} settings in {time.perf_counter() - t0:.0f} s")
    ok = [r for r in rows if r[2] >= args.min_coverage and np.isfinite(r[1]["rmse_cm"])]
    ok.sort(key=lambda r: r[1]["rmse_cm"])
    print(f"{'window':>6} {'σ_f':>5} {'τ':>5} | {'δ1':>6} {'δ2':>6} {'δ3':>6} {'RMSE cm':>8} {'AbsRel':>7} coverage")
    for kw, a, cov in ok[:12]:
        print(f"{kw['window']:>6} {kw['prefilter_sigma']:>5} {kw['threshold']:>5} | "
              + " ".join(f"{a[k]:>{8 if k == 'rmse_cm' else 7 if k == 'absrel' else 6}.3f}" for k in METRIC_NAMES)
              + f" {cov:.3f}")
    if ok:
        print("chosen (lowest RMSE with enough coverage):", ok[0][0])
    d = FocalTrackConfig()
    for kw, a, cov in rows:
        if (kw["window"], kw["prefilter_sigma"], kw["threshold"]) == (d.window, d.prefilter_sigma, d.threshold):
            print(f"current defaults {kw}: δ1 {a['delta1']:.3f} RMSE {a['rmse_cm']:.3f} cm, coverage {cov:.3f}")


if __name__ == "__main__":
    main()
