"""Train the depth-completion U-Net of "Ours-PP" (our design; the authors publish only weights).

    python global_data_pre_cal.py ...                         # the local stage's tokens
    python depth_completion_training.py [--data_path ./data/data_train_val]
                                        [--global_weights ./pretrained_weights/pretrained_global_stage.pth]
    torchrun --nproc_per_node 4 depth_completion_training.py ...

1. Once per split, the pre-calculated tokens go through the trained global stage; the depth map of
   Eqs. 19–20 (before the τ threshold, the map the authors' test script gives the U-Net) is cached
   as ``<cache_path>/sparse_depth_{train,val}.npy`` (float32 ``[N, H, W]``, metres, 0 = no estimate),
   with a ``.json`` recording the weights, tokens and layout it came from; later runs reuse it.
   Tokens pre-calculated for crops of the patch grid (``global_data_pre_cal.py --crop_tokens T``,
   README "Training on a CPU") give one map per crop, folded over the crop's pixels only
   (``[N, s, s]``, ``s = (T − 1)·stride + R``: 67 for T = 24), the global stage seeing each crop's
   place in the full grid.
2. The U-Net learns sparse → dense ground-truth depth (for crops, the same pixel window of it):
   L1 loss over all pixels (``--loss l2`` for MSE), random flips, AdamW (lr 1e-4), global batch 16,
   100 epochs, gradient clip 1, ReduceLROnPlateau(0.5, patience 5); from random weights, or from trained
   ones with ``--init_from`` (README "Depth completion": a new global stage). Best weights:
   ``<model_path>/best_run_exp_depth_completion_pp.pth`` (load it as ``pretrained_depth_completion_pp.pth``);
   their meta records ``crop_tokens`` (``None``: whole images). Trained on crops, the U-Net runs on
   whole images at test time (it is convolutional).

The model and its loss: ``blurry_edges.train.tasks.DepthCompletionTask``; the loop (epoch, step,
validation, checkpoint): ``blurry_edges.train.loop.fit``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from blurry_edges.models import WEIGHT_FILES, GlobalStage, UNet, load_weights, weights_id
from blurry_edges.patches import CropLayout, PatchGrid
from blurry_edges.runs import (TRAINED_FILES, check_training_outputs, choose_weights, data_fingerprint, positive_int,
                               run_script, settings_from_weights)
from blurry_edges.cli import (TRAINING_INTERRUPTED, add_basic_args, add_runtime_args, add_training_args, fit_and_report,
                              resolve_camera, resolve_setting, training_session)
from blurry_edges.features import global_depth_maps, resolve_bf16
from blurry_edges.train import DepthCompletionTask, set_seed
from blurry_edges.wedges import WedgeRenderer


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train the depth-completion U-Net of Ours-PP (our design).")
    add_basic_args(p)
    p.add_argument("--stride", type=positive_int, default=None, help="patch stride (default: the pre-calculation's, else 2)")
    add_training_args(p, data_path="./data/data_train_val", epochs=100, learning_rate=1e-4, batch_size=16)
    p.add_argument("--loss", type=str, default="l1", choices=["l1", "l2"], help="per-pixel loss")
    p.add_argument("--no_augment", dest="augment", action="store_false", help="no random flips")
    p.add_argument("--global_weights", type=str, default=None,
                   help=f"global-stage weights for the sparse maps (default: <model_path>/{TRAINED_FILES['global']} "
                        f"as global_training.py writes it, else <model_path>/{WEIGHT_FILES['global']})")
    p.add_argument("--cache_path", type=str, default=None, help="where sparse_depth_*.npy go (default: --data_path)")
    p.add_argument("--recompute_cache", action="store_true", help="rebuild the sparse depth maps even if cached")
    p.add_argument("--precal_batch", type=int, default=8, help="scenes per global-stage pass when building the cache")
    p.add_argument("--init_from", type=str, default=None,
                   help="start from these U-Net weights (e.g. the shipped ones, to adapt them to a new global "
                        "stage's maps) with a fresh optimizer and schedule; --resume continues a checkpoint and "
                        "--restart_from also keeps its optimizer's moments")
    add_runtime_args(p, seed=2025, deterministic=False)
    args = p.parse_args(argv)
    check_training_outputs(p, args, ("exp_depth_completion_pp",))
    return args


def _file_id(path: str | Path) -> dict:
    """Path, size and modification time of a file: a cache built from it is stale when they change."""
    path = Path(path)
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_key(args, scenes: "SceneDataset", crops: Optional[CropLayout]) -> dict:
    """What the cached maps of one split depend on, recorded in ``sparse_depth_{split}.json``: the
    global-stage weights and precision, the tokens (``scenes.params_file``), R, stride, the data folder and the
    layout (``crop_tokens``, ``None`` for whole images, and a digest of the crop origins)."""
    wid = _file_id(args.global_weights)
    key = {"global_weights": wid["path"], "size": wid["size"], "mtime_ns": wid["mtime_ns"], "bf16": args.global_bf16,
           "R": args.R, "stride": args.stride, "data": str(Path(args.data_path).resolve()),
           "tokens": _file_id(scenes.params_file), "crop_tokens": crops.tokens if crops is not None else None}
    if crops is not None:
        origins = np.ascontiguousarray(scenes.crop_origins.numpy(), dtype=np.int64)
        key["crop_origins_sha256"] = hashlib.sha256(origins.tobytes()).hexdigest()
    return key


@torch.no_grad()
def build_sparse_depth(args, split: str, model, renderer, grid: PatchGrid, ctx, scenes: "SceneDataset",
                       crops: Optional[CropLayout] = None) -> Path:
    """Cache the global stage's depth maps of one split (reused while :func:`cache_key` is unchanged).

    Args:
        model: the global stage (eval mode) for ``grid``.
        grid: the patch grid of the whole image, or with ``crops`` that of one crop (``crops.grid``).
        scenes: the split's ``SceneDataset`` with its tokens (``with_params=True``); with crops its
            items end with the crop's origin, which the global stage receives.
    Returns:
        ``<cache_path>/sparse_depth_{split}.npy``: float32 ``[N, grid.H, grid.W]`` (Eqs. 19–20).
    """
    from blurry_edges.data import PartialRows

    cache = Path(args.cache_path)
    final, info_file = cache / f"sparse_depth_{split}.npy", cache / f"sparse_depth_{split}.json"
    want = cache_key(args, scenes, crops)
    if (not args.recompute_cache and final.is_file() and info_file.is_file()
            and json.loads(info_file.read_text()) == want):
        if ctx.is_main:
            print(f"using the cached {final}")
        return final
    rows = PartialRows(final, (len(scenes), grid.H, grid.W), np.float32, ctx, identity=want)
    mine = list(range(ctx.rank, len(scenes), ctx.world_size))
    loader = DataLoader(Subset(scenes, mine), batch_size=args.precal_batch, shuffle=False,
                        num_workers=args.num_workers or 0, pin_memory=ctx.device.type == "cuda")
    pos = 0
    for batch in tqdm(loader, desc=f"sparse depth, {split}", disable=not (args.progress and ctx.is_main),
                      dynamic_ncols=True):
        params = batch[0].to(ctx.device, non_blocking=True)
        origin = batch[-1] if crops is not None else None          # crop items end with their origin
        depth, _ = global_depth_maps(model, renderer, grid, params, bf16=args.global_bf16, origin=origin)
        idx = mine[pos:pos + params.shape[0]]
        rows.array[idx[0]:idx[-1] + 1:ctx.world_size] = depth.cpu().numpy()
        rows.commit(idx)
        pos += params.shape[0]
    if not rows.finish():
        raise RuntimeError(f"{final}: not every row was written (a process stopped early?); run again")
    if ctx.is_main:
        info_file.write_text(json.dumps(want, indent=2))
    ctx.barrier()
    return final


def main(argv=None) -> dict:
    from blurry_edges.data import SceneDataset, SparseDensePairs, precal_crops, require_tokens

    args = get_args(argv)
    with training_session(args) as ctx:
        root = Path(args.data_path)
        require_tokens(root)                              # whole-image or crop tokens, else the command
        args.cache_path = args.cache_path or str(root)
        args.global_weights = str(choose_weights("global", args.model_path, args.global_weights,
                                                 log=print if ctx.is_main else None))
        scenes = {s: SceneDataset(str(root), s, with_params=True, with_depth=True) for s in ("train", "val")}
        info = scenes["train"].precal_info
        args.R = resolve_setting("R", args.R, info.get("R", scenes["train"].R), 21, root)
        args.stride = resolve_setting("stride", args.stride, info.get("stride"), 2, root)
        args.img_size = resolve_setting("img_size", args.img_size, scenes["train"].img_size, None, root)
        grid = PatchGrid(int(args.img_size[0]), int(args.img_size[1]), args.R, args.stride)
        crops = precal_crops(scenes["train"], scenes["val"], grid)
        args.crop_tokens = crops.tokens if crops is not None else None
        work = crops.grid if crops is not None else grid                 # the maps the U-Net trains on
        if ctx.is_main and crops is not None:
            print(f"training the U-Net on {crops.tokens}×{crops.tokens}-token crops ({crops.size}×{crops.size} px) "
                  f"of the {grid.H}×{grid.W} images: {len(scenes['train'])} training, {len(scenes['val'])} "
                  f"validation crops")

        global_model = GlobalStage(work.Hp, work.Wp, grid.stride)
        meta = load_weights(global_model, args.global_weights, what="global stage")
        settings_from_weights({"weights": (args.global_weights, meta)}, R=args.R, stride=args.stride)
        global_id = weights_id(global_model.state_dict())   # recorded in the U-Net's meta (runs.pairing_notes)
        global_model.to(ctx.device).eval()
        camera = resolve_camera(args, scenes["train"])
        args.camera_params = camera.to_dict()
        args.data_id = data_fingerprint(args.data_path)
        renderer = WedgeRenderer(args.R, camera)
        # the global stage keeps float32 unless --bf16 on (its η difference, Eq. 7, needs the
        # precision; global_training.py and the pipeline decide alike); --bf16 auto is for the U-Net
        args.global_bf16 = resolve_bf16("off" if args.bf16 == "auto" else args.bf16, ctx.device)
        files = {s: build_sparse_depth(args, s, global_model, renderer, work, ctx, scenes[s], crops)
                 for s in ("train", "val")}
        del global_model

        set_seed(args.seed, args.deterministic)          # the U-Net's start does not depend on the cache
        source = {"R": args.R, "stride": args.stride, "img_size": [grid.H, grid.W], "crop_tokens": args.crop_tokens,
                  "global_weights_id": global_id}
        unet = None
        if args.init_from:
            unet = UNet(1, 1)
            unet_meta = load_weights(unet, args.init_from, what="depth-completion U-Net")
            before = unet_meta.get("global_weights_id")
            if ctx.is_main:
                print(f"U-Net starts from {args.init_from}"
                      + (f" (trained on the maps of global stage {before}; these maps: {global_id})"
                         if before and before != global_id else ""))
        task = DepthCompletionTask(args.loss, args.augment, model=unet, source=source, map_size=(work.H, work.W))
        train_set, val_set = (SparseDensePairs(files[s], root, s, crops, scenes[s].crop_origins)
                              for s in ("train", "val"))
        return fit_and_report(task, train_set, val_set, args, ctx)


if __name__ == "__main__":
    sys.exit(run_script(main, TRAINING_INTERRUPTED))
