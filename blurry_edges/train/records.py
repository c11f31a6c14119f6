"""What a training run leaves behind: its text log, its loss curve, its checkpoint.

* **Log** – :class:`EpochLog`, the authors' layout: the arguments, one line per epoch (epoch,
  validation loss, scheduler patience, learning rate), then the best epoch.
* **Loss curve** – :func:`save_loss_curve`: ``.npy`` (validation and training loss per epoch) and a
  ``.png`` with both curves.
* **Checkpoint** – after every epoch a full checkpoint (weights, optimizer, scheduler, epoch,
  schedule position, best loss, loss curves, the RNG states of every process) is written
  atomically to ``<checkpoint_dir>/<name>_last.pt`` (:func:`write_checkpoint`);
  :func:`read_checkpoint` loads one for ``--resume`` and refuses one of another run.
* **Summary** – :func:`print_outputs`: where everything went.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..models.weights import atomic_torch_save

CHECKPOINT_FORMAT = "blurry_edges.training/1"      # the name of the format, kept so that earlier checkpoints resume


def plain(value: Any) -> Any:
    """Arguments/meta → plain Python values (paths to str, tuples to lists) for logs and weights."""
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return str(value)


def save_loss_curve(curve: list[float], log_path: str | os.PathLike, name: str, dpi: int = 200,
                    train: Optional[list[float]] = None) -> tuple[Path, Path]:
    """Write ``<name>.npy`` (validation loss, float64, one value per finished epoch), with ``train``
    also ``<name>_train.npy`` (mean training loss per epoch), and ``<name>.png``: both curves over
    epochs numbered from 1 as in the text log, with markers (one epoch is a visible point), log
    scale when every value is positive."""
    from matplotlib.figure import Figure

    log_path = Path(log_path)
    log_path.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(curve, dtype=np.float64)
    npy = log_path / f"{name}.npy"
    np.save(npy, arr)
    series = [("validation", arr, "tab:blue", "o")]
    if train is not None:
        tr = np.asarray(train, dtype=np.float64)
        np.save(log_path / f"{name}_train.npy", tr)
        series.insert(0, ("training", tr, "tab:orange", "s"))
    png = log_path / f"{name}.png"
    fig = Figure(figsize=(8, 6))
    ax = fig.subplots()
    ax.set_xlabel("Epoch")
    ax.set_ylabel("Average loss")
    shown = np.concatenate([s[np.isfinite(s)] for _, s, _, _ in series]) if series else arr
    if shown.size and np.all(shown > 0):
        ax.set_yscale("log")
    for label, values, color, marker in series:
        epochs = np.arange(1, values.size + 1)
        ax.plot(epochs, values, linestyle="-", color=color, linewidth=2, marker=marker, markersize=5, label=label)
    n = max((s.size for _, s, _, _ in series), default=0)
    ax.set_xlim(0.5, max(n, 1) + 0.5)
    from matplotlib.ticker import MaxNLocator                 # epochs 1, 2, … as the log numbers them
    if n <= 20:
        ax.set_xticks(np.arange(1, max(n, 1) + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.savefig(png, format="png", bbox_inches="tight", dpi=dpi)
    return npy, png


class EpochLog:
    """Text log in the authors' layout: the arguments, then one line per epoch
    (epoch, validation loss, scheduler patience, learning rate, and, added here, the epoch's wall
    minutes: steps plus validation), then the best epoch."""

    def __init__(self, path: Path, args: dict[str, Any], resume_epoch: Optional[int], enabled: bool) -> None:
        self.enabled = enabled
        self.path = path
        self.fh = None
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_epoch is not None and path.is_file():
            self.fh = open(path, "at")
            self.write(f"# resumed after epoch {resume_epoch} ({time.strftime('%Y-%m-%d %H:%M:%S')})")
            return
        self.fh = open(path, "wt")
        self.write("Arguments:")
        for key, value in args.items():
            self.write(f"{key:<20}: {value}")
        self.write("\nTraining:")
        self.write(f'{"Epoch":<10} {"Loss":<20} {"Scheduler patience":<20} {"Learning rate":<16} {"Minutes"}')

    def write(self, line: str) -> None:
        if self.fh is not None:
            print(line, file=self.fh, flush=True)

    def epoch(self, epoch: int, loss: float, patience: Any, lr: float, minutes: float) -> None:
        """One row: ``epoch`` 0-based (written 1-based), ``minutes`` the epoch's wall time."""
        self.write(f"{epoch + 1:<10} {loss:<20.10f} {str(patience):<20} {lr:<16.4e} {minutes:.1f}")

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


def checkpoint_path(checkpoint_dir: str | os.PathLike, name: str) -> Path:
    """``<checkpoint_dir>/<name>_last.pt``: the one checkpoint of a training."""
    return Path(checkpoint_dir) / f"{name}_last.pt"


def write_checkpoint(path: Path, *, name: str, epoch: int, model: torch.nn.Module, optimizer, scheduler,
                     weights: dict[str, Any], best_loss: float, best_epoch: int, curve: list[float],
                     train_curve: list[float], rng: list[dict[str, Any]], world_size: int, batch_size: int,
                     train_seconds: float, meta: dict[str, Any], args: dict[str, Any]) -> None:
    """Write the checkpoint after ``epoch`` (0-based) atomically; ``weights`` describes the loss
    weights of that epoch. ``curve``/``train_curve``: the validation / mean training loss so far."""
    atomic_torch_save({
        "format": CHECKPOINT_FORMAT,
        "name": name,
        "epoch": epoch + 1,                       # epochs finished = next epoch to run
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "schedule": {"epoch": epoch, "weights": weights},
        "best_loss": float(best_loss),
        "best_epoch": int(best_epoch),
        "loss_curve": [float(v) for v in curve],
        "train_curve": [float(v) for v in train_curve],
        "rng": rng,
        "world_size": world_size,
        "batch_size": batch_size,
        "train_seconds": train_seconds,
        "meta": plain(meta),
        "args": plain(args),
    }, path)


def read_checkpoint(path: Path, name: str, meta: dict[str, Any], batch_size: int,
                    args: dict[str, Any]) -> dict[str, Any]:
    """Load the checkpoint at ``path`` for resuming training ``name``; an explained error when it
    belongs to another training or another setting (meta, batch size, options, see
    ``runs.check_resume``)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("format") != CHECKPOINT_FORMAT or ckpt.get("name") != name:
        raise ValueError(f"{path} is not a checkpoint of this training ({name}); "
                         f"remove it or pass another --checkpoint_dir")
    old, new = ckpt.get("meta", {}), plain(meta)
    for key in sorted(set(old) & set(new)):
        if old[key] != new[key]:
            raise ValueError(f"{path} was written with {key}={old[key]} but this run has {key}={new[key]}; "
                             "resume with the same settings, or pass another --checkpoint_dir")
    if ckpt.get("batch_size") != batch_size:
        raise ValueError(f"{path} was written with --batch_size {ckpt.get('batch_size')}, this run has "
                         f"{batch_size}; resume with the same batch size")
    from ..runs import check_resume
    check_resume(ckpt.get("args", {}), args, path)
    return ckpt


def read_restart_checkpoint(path: Path, name: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Load the checkpoint at ``path`` of training ``name`` as the start of a *new* run (a warm
    restart, ``--restart_from``): the model's weights and the AdamW moments carry over, so the data,
    batch size, epochs and schedule may change; the task's settings (``meta``: R, camera …) may not.
    An explained error when the file is missing or belongs to another training or setting."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"--restart_from {path}: no such file; pass a training checkpoint "
                                f"<checkpoint_dir>/{name}_last.pt (written after every epoch)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or ckpt.get("name") != name:
        raise ValueError(f"--restart_from {path} is not a checkpoint of this training ({name}); pass its "
                         f"{name}_last.pt (weights files such as best_run_*.pth carry no optimizer state: "
                         "start from those with --init_from)")
    old, new = ckpt.get("meta", {}), plain(meta)
    for key in sorted(set(old) & set(new)):
        if old[key] != new[key]:
            raise ValueError(f"--restart_from {path} was written with {key}={old[key]} but this run has "
                             f"{key}={new[key]}; a restart keeps the network's settings")
    return ckpt


def save_curves_so_far(log_path: str | os.PathLike, name: str, curve: list[float], train_curve: list[float]) -> None:
    """The loss curves after every epoch as ``.npy`` (the figure comes at the end)."""
    Path(log_path).mkdir(parents=True, exist_ok=True)
    np.save(Path(log_path) / f"loss_curve_{name}.npy", np.asarray(curve, dtype=np.float64))
    np.save(Path(log_path) / f"loss_curve_{name}_train.npy", np.asarray(train_curve, dtype=np.float64))


def print_outputs(outputs: dict[str, Any], is_main: bool) -> None:
    """End-of-script summary: where everything went."""
    if not is_main:
        return
    state = "finished" if outputs["finished"] else "stopped early (resume with --resume)"
    best = f"{outputs['best_loss']:.6g} at epoch {outputs['best_epoch'] + 1}" if outputs["best_epoch"] >= 0 else "n/a"
    print(f"training {state}: {outputs['epochs_done']} epoch(s), best validation loss {best}")
    print(f"  best weights : {outputs['weights']}")
    print(f"  checkpoint   : {outputs['checkpoint']}")
    print(f"  log          : {outputs['log']}")
    if "curve_png" in outputs:
        print(f"  loss curve   : {outputs['curve_npy']}, {outputs['curve_png']}")
    sys.stdout.flush()

