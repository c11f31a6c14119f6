"""Train the depth-completion U-Net of "Ours-PP" (our design; the authors publish only weights).

    python global_data_pre_cal.py ...                         # the local stage's tokens
    python depth_completion_training.py [--data_path ./data/data_train_val]
                                        [--global_weights ./pretrained_weights/pretrained_global_stage.pth]
    torchrun --nproc_per_node 4 depth_completion_training.py ...

1. Once per split, the pre-calculated tokens go through the trained global stage; the depth map of
   Eqs. 19–20 (before the τ threshold, the map the authors' test script gives the U-Net) is cached
   as ``<cache_path>/sparse_depth_{train,val}.npy`` (float32 ``[N, H, W]``, metres, 0 = no estimate),
   with a ``.json`` recording the weights it came from; later runs reuse it.
2. The U-Net learns sparse → dense ground-truth depth: L1 loss over all pixels (``--loss l2`` for
   MSE), random flips, AdamW (lr 1e-4), global batch 16, 100 epochs, gradient clip 1,
   ReduceLROnPlateau(0.5, patience 5). Best weights: ``<model_path>/best_run_exp_depth_completion_pp.pth``
   (load it as ``pretrained_depth_completion_pp.pth``).

The model and its loss: ``blurry_edges.train.tasks.DepthCompletionTask``; the loop (epoch, step,
validation, checkpoint): ``blurry_edges.train.loop.fit``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from blurry_edges.models import WEIGHT_FILES, GlobalStage, load_weights
from blurry_edges.patches import PatchGrid
from blurry_edges.runs import (TRAINED_FILES, check_training_outputs, choose_weights, data_fingerprint, positive_int,
                               run_script, settings_from_weights)
from blurry_edges.cli import (TRAINING_INTERRUPTED, add_basic_args, add_runtime_args, add_training_args, loop_config,
                              resolve_camera, resolve_setting)
from blurry_edges.features import global_depth_maps, resolve_bf16
from blurry_edges.train import DepthCompletionTask, cleanup_distributed, fit, print_outputs, set_seed, setup_distributed
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
    add_runtime_args(p, seed=2025, deterministic=False)
    args = p.parse_args(argv)
    check_training_outputs(p, args, ("exp_depth_completion_pp",))
    return args


def _weights_id(path: Path) -> dict:
    st = path.stat()
    return {"global_weights": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


@torch.no_grad()
def build_sparse_depth(args, split: str, model, renderer, grid, ctx) -> Path:
    """Cache the global stage's depth maps of one split (reused when the weights are unchanged)."""
    from blurry_edges.data import SceneDataset, staged_rows

    cache = Path(args.cache_path)
    final, info_file = cache / f"sparse_depth_{split}.npy", cache / f"sparse_depth_{split}.json"
    want = dict(_weights_id(Path(args.global_weights)), bf16=args.global_bf16, R=args.R, stride=args.stride,
                data=str(Path(args.data_path).resolve()))
    if (not args.recompute_cache and final.is_file() and info_file.is_file()
            and json.loads(info_file.read_text()) == want):
        if ctx.is_main:
            print(f"using the cached {final}")
        return final
    scenes = SceneDataset(args.data_path, split, with_params=True)
    with staged_rows(final, (len(scenes), grid.H, grid.W), np.float32, ctx) as out:
        mine = list(range(ctx.rank, len(scenes), ctx.world_size))
        loader = DataLoader(Subset(scenes, mine), batch_size=args.precal_batch, shuffle=False,
                            num_workers=args.num_workers or 0, pin_memory=ctx.device.type == "cuda")
        pos = 0
        for batch in tqdm(loader, desc=f"sparse depth, {split}", disable=not (args.progress and ctx.is_main),
                          dynamic_ncols=True):
            params = batch[0].to(ctx.device, non_blocking=True)
            depth, _ = global_depth_maps(model, renderer, grid, params, bf16=args.global_bf16)
            idx = mine[pos:pos + params.shape[0]]
            out[idx[0]:idx[-1] + 1:ctx.world_size] = depth.cpu().numpy()
            pos += params.shape[0]
    if ctx.is_main:
        info_file.write_text(json.dumps(want, indent=2))
    ctx.barrier()
    return final


def main(argv=None) -> dict:
    from blurry_edges.data import SceneDataset, SparseDensePairs

    args = get_args(argv)
    ctx = setup_distributed(args.cuda)
    try:
        set_seed(args.seed, args.deterministic)
        root = Path(args.data_path)
        args.cache_path = args.cache_path or str(root)
        args.global_weights = str(choose_weights("global", args.model_path, args.global_weights,
                                                 log=print if ctx.is_main else None))
        info_file = root / "params_src_train.json"
        info = json.loads(info_file.read_text()) if info_file.is_file() else {}
        scenes_train = SceneDataset(str(root), "train", with_params=False, with_depth=True)
        args.R = resolve_setting("R", args.R, info.get("R", scenes_train.R), 21, root)
        args.stride = resolve_setting("stride", args.stride, info.get("stride"), 2, root)
        args.img_size = resolve_setting("img_size", args.img_size, scenes_train.img_size, None, root)
        grid = PatchGrid(int(args.img_size[0]), int(args.img_size[1]), args.R, args.stride)

        global_model = GlobalStage(grid.Hp, grid.Wp, grid.stride)
        meta = load_weights(global_model, args.global_weights, what="global stage")
        settings_from_weights({"weights": (args.global_weights, meta)}, R=args.R, stride=args.stride)
        global_model.to(ctx.device).eval()
        camera = resolve_camera(args, scenes_train)
        args.camera_params = camera.to_dict()
        args.data_id = data_fingerprint(args.data_path)
        renderer = WedgeRenderer(args.R, camera)
        # the global stage keeps float32 unless --bf16 on (its η difference, Eq. 7, needs the
        # precision; global_training.py and the pipeline decide alike); --bf16 auto is for the U-Net
        args.global_bf16 = resolve_bf16("off" if args.bf16 == "auto" else args.bf16, ctx.device)
        files = {s: build_sparse_depth(args, s, global_model, renderer, grid, ctx) for s in ("train", "val")}
        del global_model

        set_seed(args.seed, args.deterministic)          # the U-Net's start does not depend on the cache
        task = DepthCompletionTask(args.loss, args.augment, source={"R": args.R, "stride": args.stride})
        train_set = SparseDensePairs(files["train"], root, "train")
        val_set = SparseDensePairs(files["val"], root, "val")
        out = fit(task, train_set, val_set, loop_config(args), ctx)
        print_outputs(out, ctx.is_main)
        return out
    finally:
        cleanup_distributed(ctx)


if __name__ == "__main__":
    sys.exit(run_script(main, TRAINING_INTERRUPTED))
