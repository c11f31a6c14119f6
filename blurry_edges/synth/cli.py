"""Command lines of ``train_val_data_generator.py`` and ``test_data_generator.py``
(README "The pipeline, script by script").

The authors' option names and defaults, plus ``--seed``, ``--workers``, ``--save_png N``,
``--overwrite`` (and ``--source``, ``--big``, ``--n_interval`` for the test set). The authors'
``--cam_params`` was a Python dict option that could not be given on a command line; here it takes a
JSON object (or the path of a JSON file) with any of the keys ``s, rho_1, rho_2, sigma_cam,
pixel_pitch``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import signal
import time
from pathlib import Path

from ..camera import CameraParams
from ..runs import add_version_argument
from .realistic import RealisticConfig
from .shapes import ShapeSceneConfig

_DEFAULT_CAM = CameraParams()
_SHAPE = ShapeSceneConfig()
_REAL = RealisticConfig()


def _common(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("the authors' common options")
    g.add_argument("--img_size", type=int, nargs=2, default=list(_SHAPE.img_size), metavar=("H", "W"), help="image size")
    g.add_argument("--big_img_size", type=int, nargs=2, default=[587, 587], metavar=("H", "W"), help="big image size (with --big)")
    g.add_argument("--R", type=int, default=_SHAPE.R, help="patch size")
    g.add_argument("--cam_params", "--camera", dest="cam_params", type=str, default=None,
                   help="camera as a JSON object or JSON file (--camera: the other scripts' name), keys s, rho_1, "
                        "rho_2, sigma_cam, pixel_pitch "
                        f"(default {json.dumps({k: v for k, v in _DEFAULT_CAM.to_dict().items() if k not in ('mag', 'z_min', 'z_max')})})")
    g.add_argument("--mag", type=float, default=_DEFAULT_CAM.mag, help="magnification (down-sampling) factor")
    g.add_argument("--Z_range", type=float, nargs=2, default=[_DEFAULT_CAM.z_min, _DEFAULT_CAM.z_max],
                   metavar=("LO", "HI"), help="distance between the objects and the camera (m)")
    g.add_argument("--z_min", type=float, default=None, help="nearest distance (m): the other scripts' spelling of LO")
    g.add_argument("--z_max", type=float, default=None, help="farthest distance (m): the other scripts' spelling of HI")
    for name in ("s", "rho_1", "rho_2", "sigma_cam", "pixel_pitch"):
        g.add_argument(f"--{name}", type=float, default=None,
                       help=f"camera field {name}, as in the other scripts (overrides --cam_params)")
    g.add_argument("--alpha", type=float, nargs=2, default=list(_SHAPE.alpha), metavar=("LO", "HI"),
                   help="range of the photon level α (mean photon count of a white pixel)")
    g.add_argument("--sigma", type=float, default=_SHAPE.sigma, help="read noise (photons)")
    o = parser.add_argument_group("options of this implementation")
    o.add_argument("--seed", type=int, default=1869, help="random seed; a set depends only on its options and seed")
    o.add_argument("--workers", type=int, default=0, help="worker processes (0: all cores); the output does not depend on it")
    o.add_argument("--save_png", type=int, default=0, metavar="N", help="write preview PNGs of the first N scenes per split")
    o.add_argument("--overwrite", action="store_true", help="replace an existing data set at --data_path")
    o.add_argument("--quiet", action="store_true", help="no progress bars")
    add_version_argument(parser)


def build_camera(args) -> CameraParams:
    """Camera from ``--cam_params``/``--camera``, the per-field flags, ``--mag`` and ``--Z_range`` (or
    ``--z_min``/``--z_max``); raises ``ValueError`` naming the option."""
    lo, hi = args.Z_range
    lo = lo if getattr(args, "z_min", None) is None else args.z_min
    hi = hi if getattr(args, "z_max", None) is None else args.z_max
    if not (0 < lo < hi):
        raise ValueError(f"--Z_range {lo} {hi}: need 0 < lo < hi (nearest, then farthest distance in metres)")
    values = _DEFAULT_CAM.to_dict()
    if args.cam_params:
        text = args.cam_params
        if Path(text).is_file():
            text = Path(text).read_text()
        try:
            given = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"--cam_params: not a JSON object or JSON file ({e})") from e
        if not isinstance(given, dict):
            raise ValueError("--cam_params: give a JSON object such as {\"s\": 0.1104, \"rho_1\": 10.0}")
        values.update(given)
    for name in ("s", "rho_1", "rho_2", "sigma_cam", "pixel_pitch"):
        if getattr(args, name, None) is not None:
            values[name] = float(getattr(args, name))
    values.update(mag=args.mag, z_min=lo, z_max=hi)
    return CameraParams.from_dict(values)


def train_val_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train_val_data_generator.py",
                                description="Generate the basic-shape training and validation sets and their "
                                            "local-stage patches (Blurry-Edges, paper Sec. 4.2).")
    _common(p)
    g = p.add_argument_group("data set")
    g.add_argument("--data_path", type=str, default="./data/data_train_val", help="output folder (patches in <data_path>/patches)")
    g.add_argument("--num_sample_train", type=int, default=8000, help="number of training scenes")
    g.add_argument("--num_sample_val", type=int, default=2000, help="number of validation scenes")
    g.add_argument("--patches_per_scene", type=int, default=2,
                   help="local-stage patches cut per scene (the authors: 2; more samples per scene for the CPU recipe)")
    g.add_argument("--num_shape", type=int, nargs=2, default=list(_SHAPE.num_shape), metavar=("LO", "HI"),
                   help="shapes per scene, drawn from LO … HI−1 (upper bound exclusive, like the authors)")
    return p


def test_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="test_data_generator.py",
                                description="Generate the realistic test set: a textured object over a background "
                                            "on tilted planes (Blurry-Edges, paper Sec. 4.2).")
    _common(p)
    g = p.add_argument_group("data set")
    g.add_argument("--data_path", type=str, default=None,
                   help="output folder (default ./data/data_test, or ./data/data_test_big with --big)")
    g.add_argument("--frgd_path", type=str, default="./data/MS_COCO_annotations/",
                   help="MS-COCO folder holding instances_val2017.json and val2017/")
    g.add_argument("--bkgd_path", type=str, default="./data/Painting/", help="folder of painting images")
    g.add_argument("--num_sample_test", type=int, default=200, help="number of test scenes")
    g.add_argument("--source", choices=("coco", "builtin", "auto"), default="auto",
                   help="coco: MS-COCO objects over paintings (the paper's); builtin: scikit-image sample "
                        "photographs and random smooth masks (no download); auto: coco when present")
    g.add_argument("--big", action="store_true", help="use --big_img_size (587×587) and ./data/data_test_big")
    g.add_argument("--n_interval", type=int, default=_REAL.n_interval, help="depth key points per layer minus one (authors: 150)")
    return p


@contextlib.contextmanager
def _interrupt_on_sigterm():
    """Inside: ``kill PID`` (SIGTERM) stops a run as Ctrl-C does, so the temporary folder is removed."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:                   # not the main thread: leave the handler alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fail(parser: argparse.ArgumentParser, e: BaseException) -> None:
    parser.exit(2, f"{parser.prog}: error: {e}\n")


def run_train_val(argv=None) -> Path | None:
    from .generate import generate_train_val

    parser = train_val_parser()
    args = parser.parse_args(argv)
    try:
        cfg = ShapeSceneConfig(img_size=tuple(args.img_size), R=args.R, num_shape=tuple(args.num_shape),
                               alpha=tuple(args.alpha), sigma=args.sigma, camera=build_camera(args)).validate()
        t0 = time.perf_counter()
        with _interrupt_on_sigterm():
            out = generate_train_val(cfg, args.data_path, args.num_sample_train, args.num_sample_val,
                                     seed=args.seed, workers=args.workers, save_png=args.save_png,
                                     overwrite=args.overwrite, cli_args=vars(args), progress=not args.quiet,
                                     patches_per_scene=args.patches_per_scene)
    except (ValueError, FileNotFoundError, FileExistsError, OSError) as e:
        _fail(parser, e)
        return None
    except KeyboardInterrupt:
        parser.exit(130, "interrupted: nothing was written (the temporary folder was removed)\n")
        return None
    print(f"Wrote {args.num_sample_train} training and {args.num_sample_val} validation scenes "
          f"({args.patches_per_scene * args.num_sample_train} + {args.patches_per_scene * args.num_sample_val} "
          f"local-stage patches) in "
          f"{time.perf_counter() - t0:.1f} s to:\n  {out}\n  {out / 'patches'}\n  manifest: {out / 'manifest.json'}")
    if args.save_png:
        print(f"  previews: {out / 'png'}")
    return out


def run_test(argv=None) -> Path | None:
    from .generate import generate_test

    parser = test_parser()
    args = parser.parse_args(argv)
    size = tuple(args.big_img_size if args.big else args.img_size)
    if args.data_path is None:
        args.data_path = "./data/data_test_big" if args.big else "./data/data_test"
    try:
        cfg = RealisticConfig(img_size=size, alpha=tuple(args.alpha), sigma=args.sigma, camera=build_camera(args),
                              n_interval=args.n_interval)
        t0 = time.perf_counter()
        with _interrupt_on_sigterm():
            out = generate_test(cfg, args.data_path, args.num_sample_test, source=args.source,
                                frgd_path=args.frgd_path, bkgd_path=args.bkgd_path, R=args.R, seed=args.seed,
                                workers=args.workers, save_png=args.save_png, overwrite=args.overwrite,
                                cli_args=vars(args), progress=not args.quiet)
    except (ValueError, FileNotFoundError, FileExistsError, OSError, RuntimeError) as e:
        _fail(parser, e)
        return None
    except KeyboardInterrupt:
        parser.exit(130, "interrupted: nothing was written (the temporary folder was removed)\n")
        return None
    print(f"Wrote {args.num_sample_test} test scenes of {size[0]}×{size[1]} in {time.perf_counter() - t0:.1f} s to:\n"
          f"  {out}\n  manifest: {out / 'manifest.json'}")
    if args.save_png:
        print(f"  previews: {out / 'png'}")
    return out

