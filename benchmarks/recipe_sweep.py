"""Choose the global stage's learning rate and batch by accuracy per CPU-minute (README "Training on a CPU").

Each arm trains a fresh global stage for ``--minutes`` on pre-calculated crops (``global_data_pre_cal.py
--crop_tokens``), with the recipe's compressed γ schedule and cosine learning rate squeezed into the
steps that fit, then reports on the validation crops the loss (final γ weights), the depth term alone
(m², boundary pixels the ownership mask keeps) and the per-crop correlation of the wedge depths with
the true boundary depth (a network that collapsed to one depth scores about 0). Run one arm per
process, side by side on a 2-core machine:

    OMP_NUM_THREADS=1 python benchmarks/recipe_sweep.py --data_path data/train_a --lr 1e-4 --minutes 5 &
    OMP_NUM_THREADS=1 python benchmarks/recipe_sweep.py --data_path data/train_a --lr 5e-4 --minutes 5
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from blurry_edges.data import SceneDataset  # noqa: E402
from blurry_edges.losses import GlobalSchedule  # noqa: E402
from blurry_edges.models import GlobalStage  # noqa: E402
from blurry_edges.patches import CropLayout, PatchGrid  # noqa: E402
from blurry_edges.train import GlobalTask, cosine_lr_factor  # noqa: E402
from blurry_edges.wedges import decode_global, depth_patch, ownership_mask  # noqa: E402


@torch.no_grad()
def validate(task: GlobalTask, model, loader) -> dict:
    model.eval()
    losses, depth_terms, corrs = [], [], []
    for batch in loader:
        origin, rest = batch[-1], batch[:-1]
        losses.append(float(task.loss(model, batch, task.final_schedule(), train=False)))
        params, noisy, clean, dist, deri, bdepth = rest[:6]
        tokens = torch.cat([params[:, 0], params[:, 1]], dim=-1)
        geom, eta = decode_global(model(tokens, origin).float())
        r = task.criterion.renderer
        mask = ownership_mask(r.distances(geom), "sparse", r.delta)
        wd = r.camera.depth_from_etas(eta[..., 0, :], eta[..., 1, :], r.R)
        depth, _ = task.grid.fold_depth(depth_patch(mask, wd), mask)          # [B, H, W]
        terms = task.criterion.terms(model(tokens, origin).float(), noisy.permute(0, 1, 4, 2, 3),
                                     clean.permute(0, 1, 4, 2, 3), dist, deri.permute(0, 1, 4, 2, 3), bdepth)
        depth_terms.append(float(terms["depth"]))
        for d, g in zip(depth, bdepth):
            m = (g > 0) & (d > 0)
            if int(m.sum()) > 10:
                a, b = d[m].double(), g[m].double()
                a, b = a - a.mean(), b - b.mean()
                den = float((a.square().sum() * b.square().sum()).sqrt())
                if den > 0:
                    corrs.append(float((a * b).sum()) / den)
    model.train()
    return {"val_loss": float(np.mean(losses)), "val_depth_term": float(np.mean(depth_terms)),
            "depth_corr": float(np.mean(corrs)) if corrs else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data_path", required=True)
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--step_seconds", type=float, default=None,
                    help="expected seconds per step (default: timed on the first 3 steps)")
    ap.add_argument("--val_items", type=int, default=48)
    ap.add_argument("--attention_dropout", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=1898)
    ap.add_argument("--out", type=str, default=None, help="append the result as a JSON line to this file")
    args = ap.parse_args()
    torch.manual_seed(args.seed)

    train = SceneDataset(args.data_path, "train")
    val = SceneDataset(args.data_path, "val")
    if train.crop_origins is None:
        raise SystemExit("error: pre-calculate crops first (global_data_pre_cal.py --crop_tokens 24)")
    R, S = train.R, int(train.precal_info.get("stride", 2))
    grid = PatchGrid(*train.img_size, R, S)
    crops = CropLayout(grid, (train.crop_size - R) // S + 1)
    model = GlobalStage(crops.tokens, crops.tokens, S)
    model.set_attention_dropout(args.attention_dropout)
    sched = GlobalSchedule()
    task = GlobalTask(grid, train.camera, sched, model=model, crops=crops)
    task.device = torch.device("cpu")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(args.seed))
    val_loader = DataLoader(Subset(val, range(min(args.val_items, len(val)))), batch_size=8)

    t0 = time.time()
    step, total, compressed = 0, None, None
    it = iter(loader)
    model.train()
    while True:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        if total is None and step == 3:                       # plan the run from the measured step time
            per_step = args.step_seconds or (time.time() - t0) / 3
            total = max(10, int(args.minutes * 60 / per_step))
            compressed = sched.compressed(total / len(loader))
        progress = (compressed.at(step / len(loader)) if compressed is not None else sched.at(0))
        factor = cosine_lr_factor(step, total or 10 ** 9)
        for g in opt.param_groups:
            g["lr"] = args.lr * factor
        loss = task.loss(model, batch, progress, train=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if total is not None and step >= total:
            break
    minutes = (time.time() - t0) / 60
    res = {"lr": args.lr, "batch_size": args.batch_size, "steps": step, "minutes": round(minutes, 2),
           "crops_seen": step * args.batch_size, **validate(task, model, val_loader)}
    print(json.dumps(res))
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
