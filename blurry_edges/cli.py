"""The command-line vocabulary of every script, and settings shared with the data.

* Camera: :func:`add_camera_arguments` (``--camera JSON`` plus one flag per field),
  :func:`camera_from_args`, :func:`camera_given`.
* Training scripts: :func:`add_basic_args` – the authors' basic options (device, weights folder,
  image size, patch size, camera); :func:`add_runtime_args` – what we add (seed, checkpoints,
  resume, time budget, bf16, learning-rate schedule, workers); :func:`loop_config` – the parsed
  options → :class:`~blurry_edges.train.loop.LoopConfig`.
* Evaluation scripts and ``infer``: :func:`add_eval_arguments`, :func:`add_method_arguments`,
  :func:`densify_arg`, :func:`focal_track_from_args`, :func:`add_inference_bf16_argument`.
* Every script: :func:`add_bf16_argument` – the one ``--bf16 [{auto,on,off}]`` option (resolved by
  ``features.resolve_bf16``).
* :func:`resolve_setting`, :func:`resolve_camera` – a size or camera from the command line, the
  data, or the default, with an explained error when they disagree.
"""
from __future__ import annotations

import argparse
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from .camera import CameraParams
from .features import BF16_CHOICES, resolve_bf16
from .pipeline import RHO_PRIME, normalize_densify
from .runs import non_negative_int, positive_int
from .train.dist import DistContext, cleanup_distributed, parse_device, set_seed, setup_distributed
from .train.loop import LoopConfig, fit
from .train.records import plain, print_outputs


#: What a training script says when Ctrl-C stops it.
TRAINING_INTERRUPTED = "interrupted: the checkpoint of the last finished epoch is kept; continue with --resume"


def add_training_args(parser: argparse.ArgumentParser, *, data_path: str, epochs: int, learning_rate: float,
                      batch_size: int, data_help: str = "path of the scene dataset") -> None:
    """The authors' options of every training script, with that script's defaults (paper Sec. 4.1)."""
    parser.add_argument("--data_path", type=str, default=data_path, help=data_help)
    parser.add_argument("--log_path", type=str, default="./logs", help="path of logs")
    parser.add_argument("--epoch_num", type=int, default=epochs, help="number of epochs")
    parser.add_argument("--learning_rate", type=float, default=learning_rate, help="initial learning rate")
    parser.add_argument("--batch_size", type=int, default=batch_size, help="batch size (global, over all processes)")


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
    g.add_argument("--restart_from", type=str, default=None,
                   help="warm restart: start this run from the weights and AdamW moments of a training checkpoint "
                        "(<checkpoint_dir>/<name>_last.pt, e.g. of a finished run) with this run's learning rate, "
                        "epochs and schedule; give the new run its own --model_path (README: Training on a CPU)")
    g.add_argument("--max_minutes", type=float, default=None,
                   help="stop cleanly after the last epoch that fits in this many minutes (then --resume)")
    add_bf16_argument(g, default="auto",
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


def refuse_restart_beside(args: argparse.Namespace, *options: str) -> None:
    """Refuse ``--restart_from`` beside any of ``options`` (attribute names such as ``"init_from"``) that
    also decide where training starts: a warm restart takes the weights and the AdamW moments from its
    checkpoint, so the run would silently ignore one of the two."""
    if not getattr(args, "restart_from", None):
        return
    given = [f"--{name}" for name in options if getattr(args, name, None)]
    if given:
        raise SystemExit("--restart_from gives the starting weights (and the optimizer's moments); drop "
                         + " and ".join(given) + " or --restart_from (--init_from takes the weights only, with a "
                         "fresh optimizer)")


def bf16_spec(value: str) -> str:
    """An ``--bf16`` value: ``auto``, ``on`` or ``off`` (any case); anything else an explained error."""
    v = str(value).strip().lower()
    if v not in BF16_CHOICES:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not one of {', '.join(BF16_CHOICES)} (a bare --bf16 means 'on'; right before a "
            "positional argument such as an image path write '--bf16 on' or put --bf16 after it)")
    return v


def add_bf16_argument(parser, *, default: str, help: str) -> None:
    """The one ``--bf16 [{auto,on,off}]`` option of every script (a bare ``--bf16`` means ``on``);
    the value is resolved for the device by :func:`blurry_edges.features.resolve_bf16`."""
    if default not in BF16_CHOICES:
        raise ValueError(f"--bf16 default {default!r}: use one of {', '.join(BF16_CHOICES)}")
    parser.add_argument("--bf16", nargs="?", const="on", default=default, type=bf16_spec,
                        metavar="{" + ",".join(BF16_CHOICES) + "}", help=help)


#: Inference runs bf16 where the CPU computes it natively: with the shipped weights it moved the
#: sparse and PP δ1 by under 0.001 and the RMSE by under 0.01 cm against float32 on 200 test scenes,
#: inside the rule of 0.005 / 0.05 cm (README section "Speed").
INFERENCE_BF16_DEFAULT = "auto"


def add_inference_bf16_argument(parser) -> None:
    """``--bf16`` of the test scripts and ``python -m blurry_edges.infer`` (default ``auto``)."""
    add_bf16_argument(
        parser, default=INFERENCE_BF16_DEFAULT,
        help="bf16 autocast for the networks (renderer, color fit, U-Net and depth formula stay float32): "
             "'auto' (default) = on only where the CPU computes bf16 natively (AVX512_BF16/AMX), float32 on "
             "GPUs and other CPUs (with the shipped weights bf16 moved δ1 by < 0.001 and the RMSE by < 0.01 "
             "cm on 200 test scenes); 'on'; 'off' = float32 everywhere; a bare --bf16 means 'on'. "
             "The resolved precision is recorded in summary.json / settings.json")


DEVICE_HELP = "device: 'cuda', 'cuda:N' or 'cpu' (default: CUDA when available, else the CPU)"


def add_device_argument(parser, *names: str, dest: str = "cuda") -> None:
    """The one device option: ``--cuda`` (the authors' name; ``names`` add aliases such as
    ``--device``). Its default ``None`` means "CUDA when available"; :func:`device_from_args`
    (``train.parse_device``) turns the value into a ``torch.device`` with an explained error."""
    parser.add_argument(*(names or ("--cuda",)), dest=dest, type=str, default=None, help=DEVICE_HELP)


def device_from_args(value: "str | None") -> torch.device:
    """``--cuda``/``--device`` → ``torch.device`` (``None``: CUDA when available, else the CPU)."""
    return parse_device(value)


def add_basic_args(parser: argparse.ArgumentParser) -> None:
    """The authors' basic options shared by every script (device, weights folder, sizes, camera)."""
    add_device_argument(parser)
    parser.add_argument("--model_path", type=str, default="./pretrained_weights", help="path of model weights")
    from .runs import add_version_argument
    parser.add_argument("--img_size", type=positive_int, nargs=2, default=None,
                        help="image size H W (default: the data's, else 147 147)")
    parser.add_argument("--R", type=positive_int, default=None, help="patch size (default: the data's, else 21)")
    add_version_argument(parser)
    add_camera_arguments(parser)


def loop_config(args: argparse.Namespace) -> LoopConfig:
    return LoopConfig(epochs=args.epoch_num, batch_size=args.batch_size, learning_rate=args.learning_rate,
                      seed=args.seed, log_path=args.log_path, model_path=args.model_path,
                      checkpoint_dir=args.checkpoint_dir, resume=args.resume, max_minutes=args.max_minutes,
                      bf16=resolve_bf16(args.bf16, parse_device(args.cuda)), num_workers=args.num_workers,
                      args=plain(args), progress=args.progress, lr_schedule=getattr(args, "lr_schedule", "plateau"),
                      freeze_batchnorm=getattr(args, "freeze_batchnorm", False),
                      restart_from=getattr(args, "restart_from", None))


@contextmanager
def training_session(args: argparse.Namespace, starts: tuple[str, ...] = ("init_from",)) -> Iterator[DistContext]:
    """The frame of every training script: its processes (``--cuda``, torchrun), its seed, and the
    refusal of ``--restart_from`` beside the options in ``starts`` (:func:`refuse_restart_beside`),
    before any work; the processes are cleaned up however the body ends."""
    ctx = setup_distributed(args.cuda)
    try:
        set_seed(args.seed, args.deterministic)
        refuse_restart_beside(args, *starts)
        yield ctx
    finally:
        cleanup_distributed(ctx)


def fit_and_report(task, train_set, val_set, args: argparse.Namespace, ctx: DistContext) -> dict:
    """Train ``task`` with the loop the command line configures (:func:`loop_config`) and print where the
    weights, log, curve and checkpoints went; returns :func:`blurry_edges.train.fit`'s summary."""
    out = fit(task, train_set, val_set, loop_config(args), ctx)
    print_outputs(out, ctx.is_main)
    return out


def resolve_setting(name: str, given: Any, from_data: Any, default: Any, source: Any) -> Any:
    """A size option (``R``, ``stride``, ``img_size``) from the command line, the data, or the default.

    Omitted on the command line (``None``): the data's value, else ``default``. Given and different
    from what the data was made with: an explained error. (One source of :func:`runs.agree`, which
    also weighs the weights' records.)
    """
    from .runs import agree

    return agree(name, given, [(from_data, f"the data in {source}")], default)


def resolve_camera(args: argparse.Namespace, *datasets: Any):
    """Camera from ``--camera``/per-field flags, else the one recorded with the data, else the paper's."""
    fallback = None
    for ds in datasets:
        cam = getattr(ds, "camera", None)
        if cam is not None:
            fallback = cam if isinstance(cam, CameraParams) else CameraParams.from_dict(dict(cam))
            break
    return camera_from_args(args, fallback)


CAMERA_FIELDS = ("s", "rho_1", "rho_2", "sigma_cam", "pixel_pitch", "mag", "z_min", "z_max")


def add_camera_arguments(parser: argparse.ArgumentParser) -> None:
    """``--camera JSON`` plus one flag per :class:`CameraParams` field (flags override the file)."""
    g = parser.add_argument_group("camera (defaults: the paper's; a flag overrides --camera)")
    g.add_argument("--camera", type=str, default=None, help="JSON file with camera parameters")
    d = CameraParams()
    units = {"s": "m", "rho_1": "1/m", "rho_2": "1/m", "sigma_cam": "m", "pixel_pitch": "m", "mag": "",
             "z_min": "m", "z_max": "m"}
    for name in CAMERA_FIELDS:
        g.add_argument(f"--{name}", type=float, default=None,
                       help=f"{name} ({units[name] or 'factor'}; default {getattr(d, name)})")


def camera_given(args: argparse.Namespace) -> bool:
    return getattr(args, "camera", None) is not None or any(getattr(args, n, None) is not None for n in CAMERA_FIELDS)


def camera_from_args(args: argparse.Namespace, fallback: CameraParams | None = None) -> CameraParams:
    """Camera from ``--camera`` (else ``fallback``, else the defaults) with individual flags on top."""
    base = CameraParams.from_json(args.camera) if getattr(args, "camera", None) else (fallback or CameraParams())
    values = base.to_dict()
    for name in CAMERA_FIELDS:
        v = getattr(args, name, None)
        if v is not None:
            values[name] = float(v)
    return CameraParams.from_dict(values)


def densify_arg(value: str) -> str:
    try:
        return normalize_densify(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def add_eval_arguments(parser: argparse.ArgumentParser, big: bool = False) -> None:
    """The options of ``blurry_edges_test.py`` (``big=False``) and ``blurry_edges_test_big.py``."""
    p = parser
    add_device_argument(p)
    p.add_argument("--model_path", type=str, default="./pretrained_weights",
                   help="folder with the weight files: freshly trained best_run_exp_*.pth, else the authors' names")
    p.add_argument("--img_size", type=positive_int, nargs=2, default=None, metavar=("H", "W"),
                   help="image size the global stage works on" + (" (the block size; default: what the global "
                        "weights were trained on, else 147 147)" if big else " (default: the test set's)"))
    if big:
        p.add_argument("--big_img_size", type=positive_int, nargs=2, default=None, metavar=("H", "W"),
                       help="expected size of the large images (default: whatever the test set holds; "
                            "any 147 + 2k with stride 2, the paper recommends 147 + 4x)")
        p.add_argument("--n_margin_patch", type=non_negative_int, default=10,
                       help="margin patches dropped on every inner block border")
    p.add_argument("--R", type=positive_int, default=None, help="patch size (default: the weights', else 21)")
    p.add_argument("--stride", type=positive_int, default=None,
                   help="patch stride (default: the global weights', else 2)")
    p.add_argument("--data_path", type=str, default="./data/data_test_big" if big else "./data/data_test",
                   help="test set (ours or the authors' images_ny.npy / depth_maps.npy / alphas.npy)")
    p.add_argument("--log_path", type=str, default="./logs", help="outputs go to LOG_PATH/RUN_NAME/")
    p.add_argument("--run_name", type=str, default=None,
                   help="sub-folder of --log_path (default: test[_big]_<densify>[_bf16]); when it holds an "
                        "earlier run, RUN_NAME_2, _3 … is used instead")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of an earlier run in LOG_PATH/RUN_NAME instead of a new folder")
    if big:
        p.add_argument("--batch_size", type=positive_int, default=1,
                       help="scenes are processed one at a time; this many 147×147 blocks share a "
                            "global-stage forward pass")
    p.add_argument("--crop", type=non_negative_int, default=10, help="pixels cropped on every side before the metrics")
    p.add_argument("--rho_prime", type=float, default=RHO_PRIME, help="optical power (1/m) of the refocused view")
    p.add_argument("--densify", type=densify_arg, default="none", nargs="?", const="none",
                   help="none (sparse, default), w (dense-mask global weights), pp (U-Net completion) "
                        "or dt (domain-transform densifier)")
    add_inference_bf16_argument(p)
    p.add_argument("--no_progress", dest="progress", action="store_false",
                   help="hide the progress bars (scenes; the stages of an image cut into several blocks)")
    p.add_argument("--max_scenes", type=positive_int, default=None, help="evaluate only the first N scenes")
    p.add_argument("--no_figures", action="store_true", help="skip the per-scene PNG figures")
    p.add_argument("--feature_cache", type=str, default=None, metavar="DIR",
                   help="keep the local-stage tokens of every pair in DIR and reuse them in later runs with the "
                        "same local weights, settings and pairs: the local stage is most of a pair's time, so other "
                        "global-stage, W or U-Net weights are then evaluated in a fraction of it (README "
                        "'Evaluate on a test set')")
    p.add_argument("--local_weights", type=str, default=None,
                   help="local-stage weights (default: MODEL_PATH/best_run_exp_local_stage.pth, "
                        "else MODEL_PATH/pretrained_local_stage.pth)")
    p.add_argument("--global_weights", type=str, default=None,
                   help="global-stage weights (default: MODEL_PATH/best_run_exp_global_stage.pth, else "
                        "MODEL_PATH/pretrained_global_stage.pth; …_w.pth for --densify w)")
    p.add_argument("--pp_weights", type=str, default=None,
                   help="U-Net weights (default: MODEL_PATH/best_run_exp_depth_completion_pp.pth, "
                        "else MODEL_PATH/pretrained_depth_completion_pp.pth)")
    p.add_argument("--dt_guide", choices=("mean", "image1"), default="mean",
                   help="guide of --densify dt: mean of both restored color maps, or image 1's")
    p.add_argument("--dt_confidence_weighted", action="store_true",
                   help="--densify dt: weight samples by the confidence map")
    add_method_arguments(p)
    add_camera_arguments(p)


#: Depth methods of the test scripts and of ``python -m blurry_edges.infer``.
METHODS = ("blurry_edges", "focal_track")


def add_method_arguments(parser: argparse.ArgumentParser, compare: bool = True) -> None:
    """``--method`` (Blurry-Edges or the training-free Focal Track baseline), its settings and ``--compare``."""
    from .focal_track import FocalTrackConfig

    d = FocalTrackConfig()
    g = parser.add_argument_group("method (README: Training-free baseline: Focal Track)")
    g.add_argument("--method", choices=METHODS, default="blurry_edges",
                   help="blurry_edges (default; needs the weight files) or focal_track (training-free, "
                        "Guo et al. ICCV 2017)")
    g.add_argument("--ft_window", type=int, default=d.window, help="focal_track: least-squares window (odd, px)")
    g.add_argument("--ft_prefilter", type=float, default=d.prefilter_sigma,
                   help="focal_track: σ (px) of the Gaussian pre-filter on both images (0 = off)")
    g.add_argument("--ft_threshold", type=float, default=d.threshold,
                   help="focal_track: keep depth where the confidence exceeds this")
    if compare:
        g.add_argument("--compare", action="store_true",
                       help="evaluate Focal Track and every Blurry-Edges mode whose weights exist on the same "
                            "test set and print a paper-Table-3-style comparison")


def focal_track_from_args(args: argparse.Namespace, camera: CameraParams, device: torch.device | str):
    """A :class:`~blurry_edges.focal_track.FocalTrackPipeline` from the ``--ft_*`` options (``ValueError`` if bad)."""
    from .focal_track import FocalTrackConfig, FocalTrackPipeline

    cfg = FocalTrackConfig(window=args.ft_window, prefilter_sigma=args.ft_prefilter, threshold=args.ft_threshold,
                           rho_prime=args.rho_prime)
    return FocalTrackPipeline(camera, cfg, device=device)
