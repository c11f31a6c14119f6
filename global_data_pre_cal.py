"""Pre-calculate the global stage's inputs (paper Sec. 3.4): run the trained local stage on every patch
of both noisy images of every training and validation scene, fit the colors on the noisy
patches, and store the 19 features per patch as ``<data_path>/params_src_{train,val}.npy``
(float32 ``[N, 2, H'·W', 19]``, written in batches through a memory map and renamed into place
when complete; a ``.json`` beside it records R, stride and the weights used).

CPU recipe (README "Training on a CPU"): ``--crop_tokens T`` pre-calculates only the patches of one
``T × T`` window of the patch grid per scene (origin drawn from ``--seed``, stored as
``crop_origins_{split}.npy``), and ``--max_scenes_train/--max_scenes_val`` bound how many scenes are
used; the global stage then trains on those crops.

Resumable (README "Training on a CPU"): ``--max_minutes M`` stops cleanly once the next scene would
end after M minutes, keeping the rows written so far in the hidden partial file; the same command
with ``--resume`` computes only the other scenes (any number of processes) and publishes the file
when every scene is in.

    python global_data_pre_cal.py [--data_path ./data/data_train_val] [--model_path ./pretrained_weights]
                                  [--local_weights PATH] [--R 21] [--stride 2] [--cuda cuda:0]
    torchrun --nproc_per_node 4 global_data_pre_cal.py ...      # scenes split over the processes
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from blurry_edges import memory
from blurry_edges.models import WEIGHT_FILES, LocalStage, load_weights, weights_id
from blurry_edges.patches import CropLayout, PatchGrid
from blurry_edges.runs import (TRAINED_FILES, OutputLocationError, agree, check_output_dir, choose_weights,
                               positive_int, run_script, settings_from_weights, weights_meta)
from blurry_edges.cli import add_basic_args, add_bf16_argument, resolve_camera, resolve_setting
from blurry_edges.features import local_params_for_images, resolve_bf16
from blurry_edges.train import cleanup_distributed, plain, setup_distributed
from blurry_edges.wedges import WedgeRenderer


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Pre-calculate the global stage's input tokens (paper Sec. 3.4).")
    add_basic_args(p)
    p.add_argument("--stride", type=positive_int, default=2, help="patch stride")
    p.add_argument("--data_path", type=str, default="./data/data_train_val", help="path of the scene dataset")
    p.add_argument("--batch_size", type=int, default=1, help="scenes per batch")
    p.add_argument("--local_weights", type=str, default=None,
                   help=f"local-stage weights (default: <model_path>/{TRAINED_FILES['local']} as local_training.py "
                        f"writes it, else <model_path>/{WEIGHT_FILES['local']})")
    p.add_argument("--splits", type=str, nargs="+", default=["train", "val"], help="which splits to process")
    p.add_argument("--chunk", type=int, default=256, help="patches per local-stage forward pass (256 is fastest on a CPU)")
    add_bf16_argument(p, default="auto",
                      help="bf16 autocast for the local stage: 'auto' (default) = on where the CPU computes bf16 "
                           "natively, off on GPUs and other CPUs; a bare --bf16 means 'on'")
    p.add_argument("--crop_tokens", type=int, default=None,
                   help="CPU recipe: pre-calculate one crop of T×T patch positions per scene (default: all patches)")
    p.add_argument("--max_scenes_train", type=int, default=None, help="use only the first N training scenes")
    p.add_argument("--max_scenes_val", type=int, default=None, help="use only the first N validation scenes")
    p.add_argument("--seed", type=int, default=1898, help="seed of the crop origins")
    p.add_argument("--num_workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--max_minutes", type=float, default=None,
                   help="stop cleanly once the next scene would end after this many minutes, keeping the scenes "
                        "done so far (then the same command with --resume)")
    p.add_argument("--resume", action="store_true",
                   help="continue an unfinished pre-calculation of the same weights and settings (starts afresh, "
                        "saying so, when there is none)")
    p.add_argument("--no_progress", dest="progress", action="store_false", help="hide the tqdm bars")
    args = p.parse_args(argv)
    if args.max_minutes is not None and not args.max_minutes > 0:
        p.error(f"--max_minutes {args.max_minutes}: must be > 0")
    try:                                   # the outputs go next to the data: checked before any work
        check_output_dir(args.data_path, "--data_path")
    except OutputLocationError as e:
        p.error(str(e))
    return args


#: Crop origins of the two splits come from different streams of the same seed.
SPLIT_SEED_OFFSET = {"train": 0, "val": 1}


class Deadline:
    """``--max_minutes``: a run computes at least one batch, then stops once the next one, taking as long
    as the last, would end after ``at`` (a ``time.time()`` value)."""

    def __init__(self, minutes: Optional[float]) -> None:
        self.at = time.time() + 60.0 * minutes if minutes is not None else None
        self.last: Optional[float] = None          # seconds of the run's last batch; None before the first

    def batch_done(self, seconds: float) -> None:
        self.last = seconds

    def passed(self) -> bool:
        return self.at is not None and self.last is not None and time.time() + self.last > self.at


def precalculate_split(args, split: str, model, renderer, ctx, deadline: Optional[Deadline] = None) -> Optional[Path]:
    """Pre-calculate one split; ``None`` when ``deadline`` stopped it before it was complete."""
    from blurry_edges.data import PartialRows, SceneDataset
    from blurry_edges.runs import sha256

    root = Path(args.data_path)
    ds = SceneDataset(str(root), split, with_params=False)
    img_size = resolve_setting("img_size", args.img_size, ds.img_size, None, root)
    full_grid = PatchGrid(int(img_size[0]), int(img_size[1]), args.R, args.stride)
    limit = getattr(args, f"max_scenes_{split}", None)
    n_scenes = len(ds) if limit is None else min(int(limit), len(ds))
    if n_scenes < 1:
        raise ValueError(f"--max_scenes_{split} {limit}: need at least one scene")
    crops = CropLayout(full_grid, args.crop_tokens) if args.crop_tokens else None
    grid = crops.grid if crops is not None else full_grid
    origins = crops.draw_origins(n_scenes, args.seed + SPLIT_SEED_OFFSET[split]) if crops is not None else None
    shape = (n_scenes, 2, grid.num_patches, 19)
    if ctx.device.type == "cpu":                      # before any work: would it fit in memory?
        need = memory.precal_bytes(args.chunk, args.R, args.batch_size, grid.num_patches)
        share = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size)))
        memory.plan_batch(1, lambda n: need, f"pre-calculation of {split}", "lower --chunk or --batch_size",
                          available=memory.available_bytes() // share, allow_accumulation=False)
    final = root / f"params_src_{split}.npy"
    crop_file = root / f"crop_origins_{split}.npy"

    def crop_origins() -> None:                   # beside the tokens, before they are published
        if crops is not None:
            np.save(crop_file, origins.numpy().astype(np.int16))
        elif crop_file.exists():
            crop_file.unlink()                     # a full-grid pre-calculation replaces an earlier crop one

    manifest = root / "manifest.json"
    identity = {"local_weights_id": args.local_weights_id, "R": args.R, "stride": args.stride,
                "img_size": [full_grid.H, full_grid.W], "crop_tokens": args.crop_tokens,
                "crop_seed": args.seed if crops is not None else None, "bf16": bool(args.bf16),
                "camera": args.camera_params, "manifest_sha256": sha256(manifest) if manifest.is_file() else None}
    info_file = root / f"params_src_{split}.json"
    done_info = json.loads(info_file.read_text()) if args.resume and final.is_file() and info_file.is_file() else {}
    if done_info.get("identity") == json.loads(json.dumps(identity)) and done_info.get("shape") == list(shape):
        if ctx.is_main:
            print(f"--resume: {final} is complete with these weights and settings; kept")
        return final
    if deadline is not None and ctx.any(deadline.passed()):
        return None                                                      # no time left to start this split (all agree)
    rows = PartialRows(final, shape, np.float32, ctx, identity, resume=args.resume)
    mine = [i for i in range(ctx.rank, n_scenes, ctx.world_size) if not rows.done[i]]
    loader = DataLoader(Subset(ds, mine), batch_size=args.batch_size, shuffle=False,
                        num_workers=args.num_workers, pin_memory=ctx.device.type == "cuda")
    what = f"{n_scenes} scenes" + (f", {args.crop_tokens}×{args.crop_tokens}-token crops" if crops else "")
    bar = tqdm(loader, desc=f"{split} ({what})", disable=not (args.progress and ctx.is_main), dynamic_ncols=True,
               initial=int(rows.done.sum()) // ctx.world_size, total=(n_scenes + ctx.world_size - 1) // ctx.world_size)
    pos = 0
    for batch in bar:
        t0 = time.time()
        noisy = batch[1].to(ctx.device, non_blocking=True)              # [n, 2, H, W, 3] (item 0: no params yet)
        idx = mine[pos:pos + noisy.shape[0]]
        if crops is not None:                                            # [n, 2, size, size, 3]
            noisy = torch.stack([noisy[k][:, r, c] for k, (r, c) in
                                 enumerate(crops.pixel_window(origins[i]) for i in idx)])
        feats = local_params_for_images(model, renderer, grid, noisy, chunk=args.chunk, bf16=args.bf16).cpu().numpy()
        for k, i in enumerate(idx):
            rows.array[i] = feats[k]
        rows.commit(idx)
        pos += noisy.shape[0]
        if deadline is not None:
            deadline.batch_done(time.time() - t0)
            if deadline.passed() and pos < len(mine):
                break                                                    # the next batch would end too late
    bar.close()
    if not rows.finish(before_publish=crop_origins):
        if ctx.is_main:
            print(f"--max_minutes: stopped with {split} unfinished; the same command with --resume computes the "
                  f"rest (rows written so far are kept in {rows.tmp})")
        return None
    if ctx.is_main:
        info = {"R": args.R, "stride": args.stride, "img_size": [full_grid.H, full_grid.W], "shape": list(shape),
                "local_weights": str(args.local_weights), "local_weights_id": args.local_weights_id,
                "bf16": bool(args.bf16), "num_scenes": n_scenes,
                "crop_tokens": args.crop_tokens, "crop_seed": args.seed if crops is not None else None,
                "identity": identity}
        info_file.write_text(json.dumps(info, indent=2))
    ctx.barrier()
    return final


def main(argv=None) -> list[Path]:
    from blurry_edges.data import SceneDataset

    args = get_args(argv)
    ctx = setup_distributed(args.cuda)
    try:
        scenes = SceneDataset(args.data_path, args.splits[0], with_params=False)
        args.local_weights = str(choose_weights("local", args.model_path, args.local_weights,
                                                log=print if ctx.is_main else None))
        args.R = agree("R", args.R, [(scenes.R, f"the data in {args.data_path}"),
                                     (weights_meta(args.local_weights).get("R"), args.local_weights)], 21)
        model = LocalStage(args.R)
        meta = load_weights(model, args.local_weights, what="local stage")
        settings_from_weights({"weights": (args.local_weights, meta)}, R=args.R)
        args.local_weights_id = weights_id(model.state_dict())     # the global stage trained on these tokens records it
        args.bf16 = resolve_bf16(args.bf16, ctx.device)
        model.to(ctx.device).eval()
        if ctx.device.type == "cpu":
            model.to(memory_format=torch.channels_last)
        if ctx.is_main:
            print(f"local stage: {ctx.world_size} process(es) × {torch.get_num_threads()} thread(s) on {ctx.device}, "
                  f"{'bf16 autocast' if args.bf16 else 'float32'}")
        camera = resolve_camera(args, scenes)
        renderer = WedgeRenderer(args.R, camera)
        args.camera_params = camera.to_dict()
        deadline = Deadline(args.max_minutes)
        written = []
        for split in args.splits:
            if ctx.is_main:
                print(f"Processing the {split} set ...")
            path = precalculate_split(args, split, model, renderer, ctx, deadline)
            if path is None:
                break
            written.append(path)
        if ctx.is_main:
            for path in written:
                print(f"wrote {path}")
            if len(written) < len(args.splits):
                print(f"stopped by --max_minutes {args.max_minutes:g} before {' and '.join(args.splits[len(written):])} "
                      f"{'was' if len(args.splits) - len(written) == 1 else 'were'} complete: run the same command with --resume")
            print(f"settings: {plain({'R': args.R, 'stride': args.stride, 'local_weights': args.local_weights})}")
        return written
    finally:
        cleanup_distributed(ctx)


if __name__ == "__main__":
    sys.exit(run_script(main))
