"""How the scripts hang together: command-line value checks, output locations checked before any
work, which weight file a step uses, and the provenance every result records.

* :func:`positive_int` / :func:`non_negative_int` – argparse types: a bad ``--stride 0`` is a
  usage error (exit status 2) before any work, not a ``ZeroDivisionError`` later.
* :func:`check_output_dir` – an output folder that is a file, or lies where nothing can be written,
  is reported before the computation starts.
* :func:`choose_weights` – the one rule by which every script picks its weight files (README,
  "Which weights a step uses").
* :func:`provenance` – package version, git commit and the weight files (sha256 and meta) of a result.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any, Optional

__all__ = ["positive_int", "non_negative_int", "check_output_dir", "OutputLocationError", "TRAINED_FILES",
           "choose_weights", "weights_meta", "settings_from_weights", "provenance", "version_string",
           "add_version_argument", "fresh_run_dir"]


# ============================================================================ argument types
def _int_at_least(text: str, lowest: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < lowest:
        raise argparse.ArgumentTypeError(f"{value} must be a {what} (≥ {lowest})")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    return _int_at_least(text, 1, "positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an integer ≥ 0."""
    return _int_at_least(text, 0, "non-negative integer")


# ============================================================================ output locations
class OutputLocationError(ValueError):
    """An output location that cannot be used; the message names it and what to do."""


def check_output_dir(path: str | os.PathLike, option: str) -> Path:
    """Make sure ``path`` is, or can become, a writable folder — before any work is done.

    Nothing is created: the nearest existing ancestor must be a writable folder, and ``path``
    itself, if it exists, a writable folder. Raises :class:`OutputLocationError` naming ``option``.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputLocationError(f"{option} {path}: exists and is not a folder; choose a folder path "
                                  "(the outputs are several files)")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputLocationError(f"{option} {path}: {probe} is a file, so no folder can be made under it; "
                                  "choose another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputLocationError(f"{option} {path}: {probe} is not writable for this user; choose a "
                                  "writable location or fix its permissions")
    return path


# ============================================================================ which weights a step uses
#: What training writes into ``--model_path`` for each network (``best_run_<task name>.pth``).
TRAINED_FILES: dict[str, str] = {
    "local": "best_run_exp_local_stage.pth",
    "global": "best_run_exp_global_stage.pth",
    "global_w": "best_run_exp_global_stage_w.pth",
    "pp": "best_run_exp_depth_completion_pp.pth",
}
_NAMES = {"local": "local stage", "global": "global stage", "global_w": "global stage (W variant)",
          "pp": "depth-completion U-Net"}
_OPTIONS = {"local": "--local_weights", "global": "--global_weights", "global_w": "--global_weights",
            "pp": "--pp_weights"}
_TRAINED_BY = {"local": "python local_training.py", "global": "python global_training.py",
               "global_w": "python global_training.py --densify w",
               "pp": "python depth_completion_training.py"}


def choose_weights(stage: str, model_path: str | os.PathLike, explicit: str | os.PathLike | None = None,
                   log=print) -> Path:
    """The weight file of ``stage`` (``local``, ``global``, ``global_w``, ``pp``) a step uses.

    One rule for every script (README, "Which weights a step uses"):

    1. a file given explicitly (``--local_weights`` / ``--global_weights`` / ``--pp_weights``);
    2. else, in ``--model_path``, the freshly trained ``best_run_exp_<stage>.pth``;
    3. else, in ``--model_path``, the shipped file under the authors' name (``pretrained_<stage>.pth``).

    The choice is printed (with ``log``). Raises ``FileNotFoundError`` naming both file names, the
    script that trains the network and the option that points elsewhere.
    """
    from .models.weights import WEIGHT_FILES

    if stage not in TRAINED_FILES:
        raise KeyError(f"unknown network {stage!r}; choose one of {sorted(TRAINED_FILES)}")
    name = _NAMES[stage]
    if explicit is not None:
        path, why = Path(explicit), f"given with {_OPTIONS[stage]}"
        if path.is_dir():
            raise FileNotFoundError(f"{_OPTIONS[stage]} {path} is a folder; give the weight file itself, or "
                                    f"pass the folder as --model_path")
        if not path.is_file():
            raise FileNotFoundError(f"{_OPTIONS[stage]} {path}: no such file")
    else:
        folder = Path(model_path)
        trained, shipped = folder / TRAINED_FILES[stage], folder / WEIGHT_FILES[stage]
        if trained.is_file():
            path, why = trained, "trained into --model_path; it wins over a shipped file"
        elif shipped.is_file():
            path, why = shipped, "the shipped weights in --model_path"
        else:
            hint = ""
            sparse = [f for f in (folder / TRAINED_FILES["global"], folder / WEIGHT_FILES["global"]) if f.is_file()]
            if stage == "global_w" and sparse:          # README "Weights": the sparse weights in W mode
                hint = (f"; or run the sparse global stage in W mode (W mask, τ = 0): --global_weights {sparse[0]} "
                        "(README, \"Weights\")")
            raise FileNotFoundError(
                f"no weights for the {name} in --model_path {folder}: neither {TRAINED_FILES[stage]} (what "
                f"`{_TRAINED_BY[stage]} --model_path {folder}` writes) nor {WEIGHT_FILES[stage]} (the authors' "
                f"published file, placed there by hand). Pass the --model_path that training wrote to, or "
                f"{_OPTIONS[stage]} FILE{hint}")
    if log is not None:
        log(f"{name} weights: {path} ({why})")
    return path


def weights_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The ``meta`` record of a weight file (empty for the authors' raw state dicts)."""
    import torch

    try:
        obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception:           # load_weights reports unreadable files; here only the record is wanted
        return {}
    return dict(obj.get("meta") or {}) if isinstance(obj, dict) and isinstance(obj.get("model"), dict) else {}


def settings_from_weights(metas: dict[str, tuple[Path, dict]], **given: Any) -> dict[str, Any]:
    """R, stride and image size from the weights' meta, checked against each other and ``given``.

    Args:
        metas: ``{stage: (file, meta)}`` of the weights a step loads.
        given: the command-line values (``None`` = not given): ``R``, ``stride``, ``img_size``.
    Returns:
        ``{key: value}`` for every key some weight file records or the user gave.
    Raises:
        ValueError: two weight files record different values (local and global weights of different
            R, say), or the user's value contradicts them; the message names files and the option.
    """
    out: dict[str, Any] = {}
    source: dict[str, str] = {}
    for stage, (path, meta) in metas.items():
        for key in ("R", "stride", "img_size"):
            value = meta.get(key)
            if value is None:
                continue
            value = list(value) if isinstance(value, (list, tuple)) else value
            if key in out and out[key] != value:
                raise ValueError(f"the weights do not belong together: {source[key]} was trained with {key}={out[key]}, "
                                 f"{path} with {key}={value}; use local and global weights of one training run "
                                 "(the same R and stride)")
            out.setdefault(key, value)
            source.setdefault(key, str(path))
    for key, value in given.items():
        if value is None:
            continue
        value = list(value) if isinstance(value, (list, tuple)) else value
        if key in out and out[key] != value:
            shown = " ".join(map(str, out[key])) if isinstance(out[key], list) else out[key]
            raise ValueError(f"--{key} {' '.join(map(str, value)) if isinstance(value, list) else value} contradicts "
                             f"{source[key]}, trained with {key}={out[key]}; pass --{key} {shown} (or leave it out), "
                             "or weights trained for this setting")
        out[key] = value
    return out


#: Which stage is trained on which one's outputs, and the meta key that records the source's
#: ``models.weights_id``: the global stage (sparse or W) on the local stage's tokens, the U-Net on
#: the sparse global stage's depth maps.
TRAINED_ON = {"global": ("local", "local_weights_id"), "global_w": ("local", "local_weights_id"),
              "pp": ("global", "global_weights_id")}


def pairing_notes(files: dict[str, Any], metas: dict[str, dict], ids: dict[str, str]) -> list[str]:
    """Warnings for weights loaded beside another source than the one they were trained on.

    The shipped global stage was trained to repeat its own local stage's estimates (README
    "Training on a CPU", pass-through warm start), so other local weights feed it tokens it never
    saw; likewise the U-Net and its global stage. Weights without the record (the authors', older
    trainings) are not checked.

    Args:
        files: ``{stage: weight file}`` of the pipeline (``local``, ``global`` / ``global_w``, ``pp``).
        metas: ``{stage: meta}`` of those files.
        ids: ``{stage: models.weights_id}`` of the loaded sources (``local``; ``global`` with ``pp``).
    Returns:
        One sentence per mismatched pair (empty when every recorded source matches).
    """
    notes = []
    for stage, (source, key) in TRAINED_ON.items():
        recorded = (metas.get(stage) or {}).get(key)
        if stage not in files or source not in ids or not recorded or recorded == ids[source]:
            continue
        notes.append(f"warning: {files[stage]} was trained on the outputs of {source}-stage weights {recorded}, but "
                     f"the {source} stage loaded from {files[source]} is {ids[source]}; it follows the {source} stage "
                     f"it was trained with, and beside other weights its depth can be much worse (README 'Weights', "
                     f"weights that belong together). Use the {source}-stage weights it was trained with, or "
                     f"train it again on the new {source} stage's outputs.")
    return notes


# ============================================================================ provenance
def sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def git_commit(short: bool = False) -> Optional[str]:
    """The commit of the code that runs, with ``-dirty`` when it has uncommitted changes
    (``None`` outside a git checkout). ``short``: the abbreviated hash alone (the weights' meta)."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", *(["--short"] if short else []), "HEAD"], cwd=here,
                              capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        if short:
            return head.stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def version_string() -> str:
    from . import __version__

    commit = git_commit()
    return f"blurry-edges {__version__}" + (f" (git {commit})" if commit else "")


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    """``--version``: the package version and the git commit of the code."""
    parser.add_argument("--version", action="version", version=version_string())


def weights_record(files: dict[str, Any]) -> dict[str, Any]:
    """``{stage: path}`` → ``{stage: {"path", "sha256", "meta"}}`` (``None`` entries are skipped)."""
    out = {}
    for stage, path in files.items():
        if path is None:
            continue
        path = Path(path)
        meta = weights_meta(path)
        out[stage] = {"path": str(path.resolve()), "sha256": sha256(path), "meta": meta}
    return out


def provenance(weight_files: dict[str, Any]) -> dict[str, Any]:
    """What a result was made with: package version, git commit, torch version, weight files."""
    import platform

    import torch

    from . import __version__

    return {"blurry_edges": __version__, "git_commit": git_commit(), "torch": torch.__version__,
            "python": platform.python_version(), "weights": weights_record(weight_files)}


# ============================================================================ result folders
def fresh_run_dir(parent: str | os.PathLike, name: str, overwrite: bool, log=print) -> Path:
    """``parent/name``, or — when that already holds results and ``overwrite`` is false — the first
    free ``parent/name_2``, ``name_3`` … (printed), so an earlier run is never replaced silently.

    With ``overwrite`` the folder is reused and the files of the earlier run that this run writes
    (``scene_*.npz``/``.png``, ``summary.*``) are removed first, so no stale scene survives.
    """
    parent = Path(parent)
    base = parent / name
    if overwrite:
        if base.is_dir():
            for f in list(base.glob("scene_*.npz")) + list(base.glob("scene_*.png")) + list(base.glob("summary.*")):
                f.unlink()
        return base
    if not base.exists() or (base.is_dir() and not any(base.iterdir())):
        return base
    k = 2
    while (parent / f"{name}_{k}").exists():
        k += 1
    out = parent / f"{name}_{k}"
    if log is not None:
        log(f"note: {base} holds an earlier run; writing to {out} (pass --overwrite to replace it)")
    return out


# ============================================================================ training runs
#: Options that may change between the sessions of one training run (where and how it runs, not
#: what it trains); every other recorded option must match for ``--resume`` to continue a run.
RESUME_MAY_CHANGE = frozenset({"resume", "max_minutes", "num_workers", "progress", "cuda", "log_path",
                               "checkpoint_dir", "epoch_num", "no_progress"})


def data_fingerprint(data_path: str | os.PathLike) -> dict[str, Any]:
    """Identity of a data set for resuming: its absolute path and the sha256 of the records that
    describe it (``manifest.json``; the pre-calculation's ``params_src_*.json`` and crop origins)."""
    root = Path(data_path).resolve()
    record: dict[str, Any] = {"path": str(root)}
    for parent in (root, root.parent):
        if (parent / "manifest.json").is_file():
            record["manifest_sha256"] = sha256(parent / "manifest.json")
            break
    for name in ("params_src_train.json", "params_src_val.json", "crop_origins_train.npy", "crop_origins_val.npy"):
        if (root / name).is_file():
            record[name] = sha256(root / name)
    return record


def check_resume(recorded: dict[str, Any], current: dict[str, Any], checkpoint: str | os.PathLike) -> None:
    """Refuse to continue a checkpoint that belongs to another run (``ValueError`` naming every
    difference: data, R, stride, image size, camera, schedule options …)."""
    from .train.records import plain

    recorded, current = plain(recorded), plain(current)
    # options only one side knows (added in a later version) cannot be compared
    keys = (set(recorded) & set(current)) - RESUME_MAY_CHANGE
    diffs = []
    for key in sorted(keys):
        a, b = recorded.get(key), current.get(key)
        if key in ("model_path", "data_path") and a is not None and b is not None:
            a, b = str(Path(a).resolve()), str(Path(b).resolve())
        if a != b:
            diffs.append(f"{key}: checkpoint {a!r}, this run {b!r}")
    if diffs:
        raise ValueError(f"--resume: {checkpoint} belongs to another run ({'; '.join(diffs)}). Resume with the "
                         "options and data it was started with, or start this run afresh (without --resume, or "
                         "with another --model_path / --checkpoint_dir)")


#: Where checkpoints went before they moved into ``--model_path`` (one folder for every run).
LEGACY_CHECKPOINT_DIR = Path("checkpoints")


def default_checkpoint_dir(args: argparse.Namespace, names: tuple[str, ...] = ()) -> None:
    """Checkpoints live with the run's weights: ``<model_path>/checkpoints`` unless given.

    A ``--resume`` that finds nothing there while the former shared default ``./checkpoints``
    holds one of ``names`` (``<name>_last.pt``) is an error: silently starting afresh would
    replace that run's weights.
    """
    if getattr(args, "checkpoint_dir", None) is not None:
        return
    args.checkpoint_dir = str(Path(args.model_path) / "checkpoints")
    if getattr(args, "resume", False):
        here = [Path(args.checkpoint_dir) / f"{n}_last.pt" for n in names]
        legacy = [LEGACY_CHECKPOINT_DIR / f"{n}_last.pt" for n in names]
        found = [f for f in legacy if f.is_file()]
        if found and not any(f.is_file() for f in here) and LEGACY_CHECKPOINT_DIR.resolve() != Path(args.checkpoint_dir).resolve():
            raise OutputLocationError(
                f"--resume: no checkpoint in {args.checkpoint_dir} (where checkpoints now go), but {found[0]} is in the "
                f"former default folder; pass --checkpoint_dir {LEGACY_CHECKPOINT_DIR} to continue that run, or leave "
                "out --resume to start this one afresh")


def check_training_outputs(parser: argparse.ArgumentParser, args: argparse.Namespace,
                           names: tuple[str, ...] = ()) -> None:
    """Every output location of a training script, checked before any work (usage error, rc 2);
    ``names``: the checkpoint names the script writes (see :func:`default_checkpoint_dir`)."""
    try:
        default_checkpoint_dir(args, names)
        for option in ("model_path", "log_path", "checkpoint_dir", "cache_path"):
            value = getattr(args, option, None)
            if value is not None:
                check_output_dir(value, f"--{option}")
    except OutputLocationError as e:
        parser.error(str(e))


def run_script(main, interrupted: str = "interrupted") -> int:
    """Run a script's ``main()``; set-up errors (missing or inconsistent inputs) end with one
    explained line and exit status 2 instead of a traceback."""
    import sys

    try:
        main()
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
    return 0


def agree(name: str, given: Any, sources: list[tuple[Any, str]], default: Any) -> Any:
    """One setting (``R``, ``stride``, ``img_size``) from the command line, else from what the data
    and the weights record (``sources``: ``(value or None, where)``), else ``default``.

    Two records that differ, or a given value that contradicts a record, is a ``ValueError``
    naming both and the option to pass.
    """
    from .train.records import plain

    def shown(v):
        return " ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)

    known = [(plain(v), where) for v, where in sources if v is not None]
    for (a, wa), (b, wb) in zip(known, known[1:]):
        if a != b:
            raise ValueError(f"{wa} records {name}={a} but {wb} records {name}={b}; they do not belong together: "
                             f"use data and weights made with the same --{name}")
    if given is not None:
        if known and plain(given) != known[0][0]:
            raise ValueError(f"--{name} {shown(given)} was given, but {known[0][1]} records {name}={known[0][0]}; "
                             f"pass --{name} {shown(known[0][0])} (or leave it out)")
        return given
    return known[0][0] if known else default
