"""How much depth the local stage's smoothness estimates carry, before any global stage.

The global stage can only refine what the local stage gives it. This script takes the
pre-calculated tokens of validation scenes (``global_data_pre_cal.py``; full grid or crops), pairs
each patch's two wedges across the two images (by the nearer vertices), turns their η pairs into
depth with Eq. 7, and compares that with the true boundary depth near the patch centre (median of
the non-zero boundary-depth pixels in its central 9×9). Printed: the correlation and RMSE of either
wedge's depth, and the RMSE of the constant (the standard deviation of the true depths).

    python benchmarks/local_eta_depth.py --data_path data/train_a [--scenes 60]
    python benchmarks/local_eta_depth.py --data_path data/train_a --global_weights checkpoints/.../best_run_exp_global_stage.pth

With ``--global_weights`` it scores the global stage's wedge depths on the same patches instead (its
two images share the wedges, so no pairing), and prints the mean and spread of its η per image: a
global stage that saturates η or ignores its input shows here before any evaluation.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blurry_edges.camera import CameraParams  # noqa: E402
from blurry_edges.data import SceneDataset  # noqa: E402
from blurry_edges.features import pair_tokens  # noqa: E402
from blurry_edges.models import GlobalStage, load_weights  # noqa: E402
from blurry_edges.train.recipe import pass_through_targets  # noqa: E402
from blurry_edges.wedges import decode_global  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data_path", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--scenes", type=int, default=60)
    ap.add_argument("--global_weights", default=None, help="score this global stage's output instead of the tokens")
    args = ap.parse_args()
    ds = SceneDataset(args.data_path, args.split)
    cam = ds.camera or CameraParams()
    R, S = ds.R, int(ds.precal_info.get("stride", 2))
    rows, etas = [], []
    glob = None
    for i in range(min(args.scenes, len(ds))):
        item = ds[i]
        params, bdepth = item[0], item[5]
        side = int(round(params.shape[1] ** 0.5))
        tokens = pair_tokens(params[0], params[1])                                   # [P, 38]
        if args.global_weights:
            if glob is None:
                glob = GlobalStage(side, side, S)
                load_weights(glob, args.global_weights, what="global stage")
                glob.eval()
            origin = item[-1][None] if item[-1].dim() == 1 and item[-1].numel() == 2 else None
            with torch.no_grad():
                raw = glob(tokens[None], origin)[0]
        else:                      # the local estimates, image 2's wedges paired with image 1's
            raw = pass_through_targets(tokens)
        _, eta = decode_global(raw)                                                 # [P, 2 (image), 2 (wedge)]
        eta = eta.double()
        if glob is not None:
            etas.append(eta)
        eta = eta.view(side, side, 2, 2)
        c0, c1 = R // 2 - 4, R // 2 + 5                                             # central 9×9
        for r in range(side):
            for c in range(side):
                win = bdepth[r * S + c0:r * S + c1, c * S + c0:c * S + c1]
                g = win[win > 0]
                if g.numel() < 5:
                    continue
                z = cam.depth_from_etas(eta[r, c, 0], eta[r, c, 1], R).clamp(cam.z_min, cam.z_max)
                rows.append((float(g.median()), float(z[0]), float(z[1])))
    if not rows:
        raise SystemExit("no patch with boundary depth near its centre; is this a scene set with tokens?")
    a = np.array(rows)
    gt = a[:, 0]
    print(f"{len(a)} patches of {min(args.scenes, len(ds))} {args.split} scenes; constant (std of the true depth): "
          f"RMSE {gt.std() * 100:.2f} cm")
    if etas:
        e = torch.cat(etas)
        print(f"global stage η (wedge 1): image 1 {e[:, 0, 0].mean():.3f} ± {e[:, 0, 0].std():.3f}, "
              f"image 2 {e[:, 1, 0].mean():.3f} ± {e[:, 1, 0].std():.3f}")
    for k in (1, 2):
        print(f"wedge {k}: correlation {np.corrcoef(gt, a[:, k])[0, 1]:+.3f}, "
              f"RMSE {np.sqrt(np.mean((a[:, k] - gt) ** 2)) * 100:.2f} cm")


if __name__ == "__main__":
    main()
