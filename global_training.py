"""Train the global stage of Blurry-Edges (paper Sec. 3.4), or its dense "W" variant (our design).

    python global_data_pre_cal.py ...                     # first: the local stage's tokens
    python global_training.py [--data_path ./data/data_train_val] [--cuda cuda:0]
    python global_training.py --densify w --init_from ./pretrained_weights/best_run_exp_global_stage.pth \\
                              --dynamic_epoch 0 0 0 --epoch_num 100           # W variant (the README section Training)
    torchrun --nproc_per_node 4 global_training.py ...    # several GPUs (DDP)

Sparse (the paper's): AdamW (lr 1e-4), global batch 8, 350 epochs, gradient-norm clip 1, seed
1898, deterministic algorithms; seven loss terms weighted by the three-phase γ schedule; shared
colors fitted to the clean pair in training and the noisy pair in validation; ReduceLROnPlateau
stepped from epoch ``dynamic_epoch[1]`` on. Best weights: ``<model_path>/best_run_exp_global_stage.pth``.

CPU recipe (README "Training on a CPU"): ``--pass_through_steps N`` first teaches the network to
repeat the local stage's estimates; ``--epoch_num 0`` stops there and saves those weights as the best.

W (``--densify w``): the same, with the dense ownership mask and a depth term against the
per-pixel ground-truth depth; best weights ``best_run_exp_global_stage_w.pth``.

The model and its loss: ``blurry_edges.train.tasks.GlobalTask``; the loop (epoch, step, validation,
checkpoint): ``blurry_edges.train.loop.fit``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from blurry_edges.losses import GAMMA_NAMES, GlobalSchedule
from blurry_edges.models import GlobalStage, load_weights
from blurry_edges.patches import PatchGrid
from blurry_edges.cli import (TRAINING_INTERRUPTED, add_basic_args, add_runtime_args, add_training_args, fit_and_report,
                              loop_config, resolve_camera, resolve_setting, training_session)
from blurry_edges.runs import check_training_outputs, data_fingerprint, positive_int, run_script, settings_from_weights
from blurry_edges.train import GlobalTask

#: What each γ weights (the defaults come from ``losses.GlobalSchedule``).
GAMMA_TERMS = {"color": "color error", "color_cons": "color consistency error",
               "bndry_cons": "boundary consistency error", "smthns": "smoothness error",
               "smthns_cons": "smoothness consistency error", "bndry_loc": "boundary localization error",
               "depth": "depth error"}


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train the Blurry-Edges global stage (paper Sec. 3.4).")
    add_basic_args(p)
    p.add_argument("--stride", type=positive_int, default=None, help="patch stride (default: the pre-calculation's, else 2)")
    add_training_args(p, data_path="./data/data_train_val", epochs=350, learning_rate=1e-4, batch_size=8)
    paper = GlobalSchedule()
    for name in GAMMA_NAMES:
        p.add_argument(f"--gamma_{name}", type=float, nargs=3, default=list(getattr(paper, f"gamma_{name}")),
                       help=f"weights for the {GAMMA_TERMS[name]} (start, after the first ramp, final)")
    p.add_argument("--dynamic_epoch", type=float, nargs=3, default=list(paper.dynamic_epoch),
                   help="key epochs of the γ schedule")
    p.add_argument("--compress_schedule", action="store_true",
                   help="CPU recipe: scale the key epochs by epoch_num/350 and advance the γ weights every step, "
                        "so the paper's three phases fit a short run (README 'Training on a CPU')")
    p.add_argument("--attention_dropout", type=float, default=0.1,
                   help="dropout on the attention weights (paper: 0.1); 0 lets PyTorch use memory-efficient "
                        "attention (CPU recipe: ~1.6× faster per step, no T×T maps kept for backward)")
    p.add_argument("--densify", type=str, default=None, choices=["w"],
                   help="'w': train the dense W variant (our design) instead of the sparse global stage")
    p.add_argument("--beta_blur", type=float, default=0.0,
                   help="weight of our supervised blur term (not the paper's; 0 = the paper's objective): the "
                        "squared error of each boundary's η in both images against the blur of its true depth; "
                        "sparse objective only (README: Training on a CPU)")
    p.add_argument("--pass_through_steps", type=int, default=0,
                   help="CPU recipe: first teach the global stage to repeat the local stage's estimates for this "
                        "many steps (mean squared error on its raw output, no rendering), then train as usual; with "
                        "--epoch_num 0 the warm start alone is the training and is saved as the best weights "
                        "(README: Training on a CPU)")
    p.add_argument("--pass_through_eta_weight", type=float, default=1.0,
                   help="weight of the four η outputs (the depth, Eq. 7) in the pass-through loss; 1 = the plain "
                        "mean over all twelve outputs")
    p.add_argument("--token_xy_bound", type=float, default=None,
                   help="ours: clamp the input tokens' vertex coordinates (xy/3) to ±B, for local stages that place "
                        "vertices far outside their patches; recorded in the weights (README: Training on a CPU). "
                        "Default: off (the paper), or what --init_from's weights record")
    p.add_argument("--init_from", type=str, default=None,
                   help="start from these global-stage weights (e.g. the sparse ones, to fine-tune the W variant)")
    add_runtime_args(p, seed=1898, deterministic=True)
    args = p.parse_args(argv)
    check_training_outputs(p, args, ("exp_global_stage_w",) if args.densify == "w" else ("exp_global_stage",))
    return args


def precal_info(root: Path) -> dict:
    """The settings recorded by global_data_pre_cal.py (empty for the authors' files)."""
    info_file = root / "params_src_train.json"
    return json.loads(info_file.read_text()) if info_file.is_file() else {}


def main(argv=None) -> dict:
    from blurry_edges.data import SceneDataset, precal_crops, require_tokens

    args = get_args(argv)
    with training_session(args, ("init_from", "pass_through_steps")) as ctx:
        if args.bf16 == "auto":
            # measured: bf16 speeds a 576-token step up by only ~10 % (the renderer dominates), while
            # the bf16 residual stream rounds the η codes that Eq. 7 turns into depth
            args.bf16 = "off"
        variant = "w" if args.densify == "w" else "sparse"
        root = Path(args.data_path)
        require_tokens(root)
        train_set = SceneDataset(str(root), "train", with_params=True, with_depth=variant == "w")
        val_set = SceneDataset(str(root), "val", with_params=True, with_depth=variant == "w")
        info = precal_info(root)
        src = f"{root} (params_src_train.json)"
        args.R = resolve_setting("R", args.R, info.get("R", train_set.R), 21, src)
        args.stride = resolve_setting("stride", args.stride, info.get("stride"), 2, src)
        args.img_size = resolve_setting("img_size", args.img_size, train_set.img_size, None, root)
        grid = PatchGrid(int(args.img_size[0]), int(args.img_size[1]), args.R, args.stride)
        crops = precal_crops(train_set, val_set, grid)
        if ctx.is_main and crops is not None:
            print(f"training on {crops.tokens}×{crops.tokens}-token crops ({crops.size}×{crops.size} px) of the "
                  f"{grid.Hp}×{grid.Wp} grid: {len(train_set)} training, {len(val_set)} validation crops")

        camera = resolve_camera(args, train_set)
        args.camera_params = camera.to_dict()
        args.data_id = data_fingerprint(args.data_path)
        schedule = GlobalSchedule.from_args(args)
        task_grid = crops.grid if crops is not None else grid
        model = GlobalStage(task_grid.Hp, task_grid.Wp, grid.stride)
        model.set_attention_dropout(args.attention_dropout)
        if args.init_from:
            meta = load_weights(model, args.init_from, what="global stage")
            settings_from_weights({"weights": (args.init_from, meta)}, R=args.R, stride=args.stride)
        if args.token_xy_bound is not None:
            try:                                  # the model's setter owns the check
                model.token_xy_bound = args.token_xy_bound
            except ValueError as e:
                raise SystemExit(f"--token_xy_bound {args.token_xy_bound}: {e}") from e
        if args.beta_blur < 0 or (args.beta_blur > 0 and variant != "sparse"):
            raise SystemExit(f"--beta_blur {args.beta_blur}: must be ≥ 0, and 0 with --densify w")
        if args.pass_through_steps < 0:
            raise SystemExit(f"--pass_through_steps {args.pass_through_steps}: must be ≥ 0")
        if not args.pass_through_eta_weight > 0:
            raise SystemExit(f"--pass_through_eta_weight {args.pass_through_eta_weight}: must be > 0")
        if args.epoch_num < 0 or (args.epoch_num == 0 and not args.pass_through_steps):
            raise SystemExit(f"--epoch_num {args.epoch_num}: must be ≥ 1, or 0 with --pass_through_steps N "
                             "(the warm start alone, README 'Training on a CPU')")
        if args.epoch_num == 0 and args.resume:
            raise SystemExit("--epoch_num 0 trains only the pass-through warm start, which does not resume; "
                             "drop --resume")
        task = GlobalTask(grid, camera, schedule, variant=variant, model=model, crops=crops, beta_blur=args.beta_blur,
                          local_weights_id=info.get("local_weights_id"))
        if args.pass_through_steps and not args.resume:
            from blurry_edges.train.recipe import pass_through_warm_start
            t_warm = time.time()
            losses = pass_through_warm_start(model, train_set, args.pass_through_steps,
                                             batch_size=max(1, args.batch_size // ctx.world_size),
                                             seed=args.seed + ctx.rank, eta_weight=args.pass_through_eta_weight,
                                             log=print if ctx.is_main else (lambda *a, **k: None))
            if ctx.is_main:                      # the warm start alone, for comparison with what follows
                from blurry_edges.models import save_weights
                from blurry_edges.runs import git_commit
                warm_file = Path(args.model_path) / "pass_through_start.pth"
                save_weights(model, warm_file, meta={**task.meta(), "what": "pass-through warm start only", "steps": args.pass_through_steps,
                                                     "eta_weight": args.pass_through_eta_weight,
                                                     "batch_size": args.batch_size, "final_loss": losses[-1],
                                                     "commit": git_commit(short=True)})
                print(f"pass-through warm start: weights saved to {warm_file}")
            if args.epoch_num == 0:                  # the warm start is the whole training
                from blurry_edges.train.loop import save_as_trained
                out = save_as_trained(task, val_set, loop_config(args), ctx, steps=args.pass_through_steps,
                                      samples_seen=args.pass_through_steps * args.batch_size,
                                      seconds=time.time() - t_warm, what="pass-through warm start only")
                if ctx.is_main:
                    print(f"pass-through warm start only (--epoch_num 0): validation loss {out['best_loss']:.6g} "
                          f"(the objective's final weights)\n  best weights : {out['weights']}")
                return out
        return fit_and_report(task, train_set, val_set, args, ctx)


if __name__ == "__main__":
    sys.exit(run_script(main, TRAINING_INTERRUPTED))
