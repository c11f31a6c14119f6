"""Train the global stage of Blurry-Edges (SPEC §6), or its dense "W" variant (our design).

    python global_data_pre_cal.py ...                     # first: the local stage's tokens
    python global_training.py [--data_path ./data/data_train_val] [--cuda cuda:0]
    python global_training.py --densify w --init_from ./pretrained_weights/best_run_exp_global_stage.pth \\
                              --dynamic_epoch 0 0 0 --epoch_num 100           # W variant (the README section Training)
    torchrun --nproc_per_node 4 global_training.py ...    # several GPUs (DDP)

Sparse (the paper's): AdamW (lr 1e-4), global batch 8, 350 epochs, gradient-norm clip 1, seed
1898, deterministic algorithms; seven loss terms weighted by the three-phase γ schedule; shared
colors fitted to the clean pair in training and the noisy pair in validation; ReduceLROnPlateau
stepped from epoch ``dynamic_epoch[1]`` on. Best weights: ``<model_path>/best_run_exp_global_stage.pth``.

W (``--densify w``): the same, with the dense ownership mask and a depth term against the
per-pixel ground-truth depth; best weights ``best_run_exp_global_stage_w.pth``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from blurry_edges.losses import GAMMA_NAMES, GlobalSchedule
from blurry_edges.models import GlobalStage, load_weights
from blurry_edges.patches import PatchGrid
from blurry_edges.stages import resolve_bf16
from blurry_edges.training import (GlobalTask, add_basic_args, add_runtime_args, check_weights_meta,
                                   cleanup_distributed, fit, loop_config, print_outputs, resolve_camera,
                                   resolve_setting, set_seed, setup_distributed)

GAMMA_DEFAULTS = {
    "color": ([1.0, 0.1, 0.1], "color error"),
    "color_cons": ([0.2, 0.1, 0.05], "color consistency error"),
    "bndry_cons": ([0.05, 0.05, 0.02], "boundary consistency error"),
    "smthns": ([0.005, 0.1, 0.002], "smoothness error"),
    "smthns_cons": ([0.005, 0.1, 0.002], "smoothness consistency error"),
    "bndry_loc": ([0.0001, 0.05, 0.0001], "boundary localization error"),
    "depth": ([0.0001, 0.05, 0.5], "depth error"),
}


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train the Blurry-Edges global stage (SPEC §6).")
    add_basic_args(p)
    p.add_argument("--stride", type=int, default=None, help="patch stride (default: the pre-calculation's, else 2)")
    p.add_argument("--data_path", type=str, default="./data/data_train_val", help="path of the scene dataset")
    p.add_argument("--log_path", type=str, default="./logs", help="path of logs")
    p.add_argument("--epoch_num", type=int, default=350, help="number of epochs")
    p.add_argument("--learning_rate", type=float, default=1e-4, help="initial learning rate")
    p.add_argument("--batch_size", type=int, default=8, help="batch size (global, over all processes)")
    for name in GAMMA_NAMES:
        default, what = GAMMA_DEFAULTS[name]
        p.add_argument(f"--gamma_{name}", type=float, nargs=3, default=default,
                       help=f"weights for the {what} (start, after the first ramp, final)")
    p.add_argument("--dynamic_epoch", type=int, nargs=3, default=[30, 100, 200], help="key epochs of the γ schedule")
    p.add_argument("--input_size", type=int, default=38, help="input features per token (fixed: 2 × 19)")
    p.add_argument("--output_size", type=int, default=12, help="outputs per token (fixed: 12)")
    p.add_argument("--densify", type=str, default=None, choices=["w"],
                   help="'w': train the dense W variant (our design) instead of the sparse global stage")
    p.add_argument("--init_from", type=str, default=None,
                   help="start from these global-stage weights (e.g. the sparse ones, to fine-tune the W variant)")
    add_runtime_args(p, seed=1898, deterministic=True)
    args = p.parse_args(argv)
    if (args.input_size, args.output_size) != (38, 12):
        p.error("--input_size must be 38 and --output_size 12 (the token layout of SPEC §3)")
    return args


def precal_info(root: Path) -> dict:
    """The settings recorded by global_data_pre_cal.py (empty for the authors' files)."""
    info_file = root / "params_src_train.json"
    return json.loads(info_file.read_text()) if info_file.is_file() else {}


def main(argv=None) -> dict:
    from blurry_edges.data import SceneDataset

    args = get_args(argv)
    ctx = setup_distributed(args.cuda)
    try:
        set_seed(args.seed, args.deterministic)
        if resolve_bf16(args.bf16, ctx.device) and ctx.is_main:
            print("warning: --bf16 is not recommended for the global stage: depth comes from η1² − η2², a "
                  "difference of nearly equal numbers, and bf16 outputs moved the loss by up to ~7 % in our "
                  "measurements (the README section Training); the local stage and the U-Net stay within 1 %", file=sys.stderr)
        variant = "w" if args.densify == "w" else "sparse"
        root = Path(args.data_path)
        for split in ("train", "val"):
            if not (root / f"params_src_{split}.npy").is_file():
                raise FileNotFoundError(f"{root / f'params_src_{split}.npy'} is missing: run "
                                        f"`python global_data_pre_cal.py --data_path {root}` first")
        train_set = SceneDataset(str(root), "train", with_params=True, with_depth=variant == "w")
        val_set = SceneDataset(str(root), "val", with_params=True, with_depth=variant == "w")
        info = precal_info(root)
        src = f"{root} (params_src_train.json)"
        args.R = resolve_setting("R", args.R, info.get("R", train_set.R), 21, src)
        args.stride = resolve_setting("stride", args.stride, info.get("stride"), 2, src)
        args.img_size = resolve_setting("img_size", args.img_size, train_set.img_size, None, root)
        grid = PatchGrid(int(args.img_size[0]), int(args.img_size[1]), args.R, args.stride)
        n_tokens = train_set[0][0].shape[1]
        if n_tokens != grid.num_patches:
            raise ValueError(f"params_src has {n_tokens} tokens per image but R={args.R}, stride={args.stride} on "
                             f"{grid.H}×{grid.W} images give {grid.num_patches}; re-run global_data_pre_cal.py "
                             "with the same --R and --stride")

        camera = resolve_camera(args, train_set)
        args.camera_params = camera.to_dict()
        schedule = GlobalSchedule.from_args(args)
        model = GlobalStage(grid.Hp, grid.Wp, grid.stride)
        if args.init_from:
            meta = load_weights(model, args.init_from, what="global stage")
            check_weights_meta(meta, args.init_from, R=args.R, stride=args.stride)
        task = GlobalTask(grid, camera, schedule, variant=variant, model=model)
        out = fit(task, train_set, val_set, loop_config(args), ctx)
        print_outputs(out, ctx)
        return out
    finally:
        cleanup_distributed(ctx)


if __name__ == "__main__":
    main()
