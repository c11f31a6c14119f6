"""The command-line vocabulary of the training scripts, and settings shared with the data.

* :func:`add_basic_args` – the authors' basic options of every script (device, weights folder,
  image size, patch size, camera); :func:`add_runtime_args` – what we add (seed, checkpoints,
  resume, time budget, bf16, learning-rate schedule, workers).
* :func:`loop_config` – the parsed options → :class:`~blurry_edges.train.loop.LoopConfig`.
* :func:`resolve_setting`, :func:`resolve_camera` – a size or camera from the command line, the
  data, or the default, with an explained error when they disagree.

The evaluation scripts' options live beside the pipeline (``pipeline.add_eval_arguments``).
"""
from __future__ import annotations

import argparse
from typing import Any

from .features import resolve_bf16
from .train.dist import parse_device
from .train.loop import LoopConfig
from .train.records import plain


def add_runtime_args(parser: argparse.ArgumentParser, *, seed: int, deterministic: bool) -> None:
    """Options shared by the training scripts beyond the authors' (device, resume, time, bf16 …)."""
    g = parser.add_argument_group("runtime (beyond the authors' options)")
    g.add_argument("--seed", type=int, default=seed, help=f"random seed (authors: {seed})")
    g.add_argument("--checkpoint_dir", type=str, default=None,
                   help="where the full per-epoch checkpoint <name>_last.pt is written "
                        "(default: MODEL_PATH/checkpoints, so a checkpoint belongs to its run)")
    g.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint in --checkpoint_dir (starts fresh if there is none); "
                        "a checkpoint of another run (data, R, stride, size, camera, schedule) is an error")
    g.add_argument("--max_minutes", type=float, default=None,
                   help="stop cleanly after the last epoch that fits in this many minutes (then --resume)")
    g.add_argument("--bf16", nargs="?", const="on", default="auto", choices=["auto", "on", "off"],
                   help="bf16 autocast for the network (losses stay float32): 'auto' (default) = on where the "
                        "CPU computes bf16 natively (AVX512_BF16/AMX), off on GPUs and other CPUs; "
                        "a bare --bf16 means 'on'")
    g.add_argument("--lr_schedule", type=str, default="plateau", choices=["plateau", "cosine"],
                   help="'plateau': the authors' ReduceLROnPlateau policy; 'cosine': linear warm-up, then cosine "
                        "decay to 5 %% of the learning rate at the last step of --epoch_num (CPU recipe)")
    g.add_argument("--num_workers", type=int, default=None,
                   help="DataLoader worker processes (default: 4 on CUDA, 0 on the CPU)")
    if deterministic:
        g.add_argument("--no_deterministic", dest="deterministic", action="store_false",
                       help="allow non-deterministic (faster) algorithms; the authors use deterministic ones")
    else:
        g.add_argument("--deterministic", dest="deterministic", action="store_true",
                       help="request deterministic algorithms (slower)")
    g.add_argument("--no_progress", dest="progress", action="store_false", help="hide the tqdm bars")


def add_basic_args(parser: argparse.ArgumentParser) -> None:
    """The authors' basic options shared by every script (device, weights folder, sizes, camera)."""
    parser.add_argument("--cuda", type=str, default=None,
                        help="device: 'cuda', 'cuda:N' or 'cpu' (default: CUDA when available)")
    parser.add_argument("--model_path", type=str, default="./pretrained_weights", help="path of model weights")
    from .runs import add_version_argument, positive_int
    parser.add_argument("--img_size", type=positive_int, nargs=2, default=None,
                        help="image size H W (default: the data's, else 147 147)")
    parser.add_argument("--R", type=positive_int, default=None, help="patch size (default: the data's, else 21)")
    add_version_argument(parser)
    from .pipeline import add_camera_arguments
    add_camera_arguments(parser)


def loop_config(args: argparse.Namespace) -> LoopConfig:
    return LoopConfig(epochs=args.epoch_num, batch_size=args.batch_size, learning_rate=args.learning_rate,
                      seed=args.seed, log_path=args.log_path, model_path=args.model_path,
                      checkpoint_dir=args.checkpoint_dir, resume=args.resume, max_minutes=args.max_minutes,
                      bf16=resolve_bf16(args.bf16, parse_device(args.cuda)), num_workers=args.num_workers,
                      args=plain(args), progress=args.progress, lr_schedule=getattr(args, "lr_schedule", "plateau"))



def resolve_setting(name: str, given: Any, from_data: Any, default: Any, source: Any) -> Any:
    """A size option (``R``, ``img_size``) from the command line, the data, or the default.

    Omitted on the command line (``None``): the data's value, else ``default``. Given and different
    from what the data was made with: an explained error.
    """
    if from_data is None:
        return default if given is None else given
    if given is None:
        return from_data
    if plain(given) != plain(from_data):
        shown = " ".join(map(str, from_data)) if isinstance(from_data, (list, tuple)) else from_data
        raise ValueError(f"--{name} {given} was given, but the data in {source} was made with {name}={plain(from_data)}; "
                         f"pass --{name} {shown} (or leave it out)")
    return given


def resolve_camera(args: argparse.Namespace, *datasets: Any):
    """Camera from ``--camera``/per-field flags, else the one recorded with the data, else the paper's."""
    from .camera import CameraParams
    from .pipeline import camera_from_args

    fallback = None
    for ds in datasets:
        cam = getattr(ds, "camera", None)
        if cam is not None:
            fallback = cam if isinstance(cam, CameraParams) else CameraParams.from_dict(dict(cam))
            break
    return camera_from_args(args, fallback)
