"""Train the local stage of Blurry-Edges (paper Sec. 3.4).

    python local_training.py [--data_path ./data/data_train_val/patches] [--R 21] [--cuda cuda:0]
    torchrun --nproc_per_node 4 local_training.py ...            # several GPUs (DDP)

AdamW (lr 6e-5), global batch 64, 1000 epochs, gradient-norm clip 1, seed 1869; β weights ramped
in over ``--dynamic_epoch`` epochs; colors fitted to the clean patch in training and the noisy one
in validation; ReduceLROnPlateau with a growing patience. Writes the best-validation weights to
``<model_path>/best_run_exp_local_stage.pth``, the log ``<log_path>/exp_local_stage_training.txt``,
the curve ``<log_path>/loss_curve_exp_local_stage.{npy,png}`` and a resumable checkpoint per epoch.

The model and its loss: ``blurry_edges.train.tasks.LocalTask``; the loop (epoch, step, validation,
checkpoint): ``blurry_edges.train.loop.fit``.
"""
from __future__ import annotations

import argparse
import sys

from blurry_edges.losses import LocalSchedule
from blurry_edges.runs import check_training_outputs, data_fingerprint, run_script, settings_from_weights
from blurry_edges.cli import (TRAINING_INTERRUPTED, add_basic_args, add_runtime_args, add_training_args, fit_and_report,
                              resolve_camera, resolve_setting, training_session)
from blurry_edges.train import LocalTask


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train the Blurry-Edges local stage (paper Sec. 3.4).")
    add_basic_args(p)
    add_training_args(p, data_path="./data/data_train_val/patches", epochs=1000, learning_rate=6e-5, batch_size=64,
                      data_help="path of the patch dataset")
    paper = LocalSchedule()                                   # the defaults: the authors' β schedule
    p.add_argument("--beta_bndry_loc", type=float, default=paper.beta_bndry_loc,
                   help="final weight of the boundary localization term")
    p.add_argument("--beta_smthns", type=float, default=paper.beta_smthns, help="final weight of the smoothness term")
    p.add_argument("--dynamic_epoch", type=int, default=paper.dynamic_epoch, help="epochs over which the β weights ramp up")
    p.add_argument("--beta_blur", type=float, default=paper.beta_blur,
                   help="weight of our supervised blur term (not the paper's; 0 = the paper's objective): the "
                        "squared error of each boundary's η against the blur of its true depth; the CPU recipe "
                        "uses it to teach the local stage depth-carrying η in hours (README: Training on a CPU)")
    p.add_argument("--init_from", type=str, default=None,
                   help="start from these local-stage weights (e.g. the shipped ones) with a fresh optimizer and "
                        "schedule; --resume continues a checkpoint instead")
    p.add_argument("--freeze_batchnorm", action="store_true",
                   help="keep every BatchNorm layer in evaluation mode (its running statistics fixed and used) while "
                        "training: for fine-tuning trained weights, whose statistics a training-mode step would "
                        "refresh (README: Training on a CPU, fine-tuning)")
    add_runtime_args(p, seed=1869, deterministic=False)
    args = p.parse_args(argv)
    check_training_outputs(p, args, ("exp_local_stage",))
    return args


def main(argv=None) -> dict:
    from blurry_edges.data import LocalPatchDataset
    from blurry_edges.models import LocalStage, load_weights

    args = get_args(argv)
    with training_session(args) as ctx:
        if args.beta_blur < 0:
            raise SystemExit(f"--beta_blur {args.beta_blur}: must be ≥ 0")
        with_blur = args.beta_blur > 0
        train_set = LocalPatchDataset(args.data_path, "train", with_blur=with_blur)
        val_set = LocalPatchDataset(args.data_path, "val", with_blur=with_blur)
        args.R = resolve_setting("R", args.R, getattr(train_set, "R", None), 21, args.data_path)
        args.img_size = resolve_setting("img_size", args.img_size, train_set.img_size, [147, 147], args.data_path)
        camera = resolve_camera(args, train_set)
        args.camera_params = camera.to_dict()
        args.data_id = data_fingerprint(args.data_path)
        schedule = LocalSchedule(args.beta_bndry_loc, args.beta_smthns, args.dynamic_epoch, args.beta_blur)
        model = None
        if args.init_from:
            model = LocalStage(args.R)
            meta = load_weights(model, args.init_from, what="local stage")
            settings_from_weights({"weights": (args.init_from, meta)}, R=args.R)
        task = LocalTask(args.R, camera, schedule, model=model)
        return fit_and_report(task, train_set, val_set, args, ctx)


if __name__ == "__main__":
    sys.exit(run_script(main, TRAINING_INTERRUPTED))
