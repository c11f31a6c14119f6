"""Ship trained weights: a best-validation file → ``pretrained_weights/`` under the authors' name, fp16.

    python -m blurry_edges.release local  checkpoints/run/best_run_exp_local_stage.pth  --recipe "README 'Training on a CPU', stage 1"
    python -m blurry_edges.release global checkpoints/run/best_run_exp_global_stage.pth --recipe "..."
    python -m blurry_edges.release curves pretrained_weights/curves/stage3.png \
        "local stage=logs/local_stage3/loss_curve_exp_local_stage" "global stage=logs/global_stage3/loss_curve_exp_global_stage"
    python -m blurry_edges.release progress pretrained_weights/curves/progress.csv pretrained_weights/curves/progress.png

The file keeps the training's meta (R, stride, image size, epoch, validation loss, samples and
steps seen, minutes and processes, the commit that trained it) and adds ``recipe``,
``cpu_minutes`` (minutes × processes, unless given) and ``shipped_from``; tensors are stored as
float16 (loading casts them back). Every script finds the shipped files by default
(``--model_path pretrained_weights``).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from .models import WEIGHT_FILES, GlobalStage, LocalStage, UNet, load_weights, save_weights, weights_id
from .models.weights import WEIGHT_DIR

STAGES = {"local": "local", "global": "global", "global_w": "global_w", "pp": "pp"}


def _model_for(stage: str, meta: dict[str, Any]) -> torch.nn.Module:
    if stage == "local":
        return LocalStage(int(meta.get("R", 21)))
    if stage in ("global", "global_w"):
        return GlobalStage(stride=int(meta.get("stride", 2)))
    return UNet()


def _load(stage: str, path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The network of ``stage`` with the weights of ``path`` (strict) and their meta."""
    probe = torch.load(path, map_location="cpu", weights_only=True)
    meta = dict(probe.get("meta", {})) if isinstance(probe, dict) else {}
    model = _model_for(stage, meta)
    return model, load_weights(model, path, what=stage)


def trained_on_record(stage: str, source: str | Path) -> dict[str, str]:
    """``{meta key: weights_id}`` saying which weights ``stage`` was trained on the outputs of
    (:data:`blurry_edges.runs.TRAINED_ON`), for trainings older than that record; ``source`` is
    loaded strictly as the network it must be (the local stage for a global stage, the global stage
    for the U-Net)."""
    from .runs import TRAINED_ON

    if stage not in TRAINED_ON:
        raise ValueError(f"--trained_on: the {stage} stage is not trained on another network's outputs")
    source_stage, key = TRAINED_ON[stage]
    model, _ = _load(source_stage, source)
    return {key: weights_id(model.state_dict())}


def ship(stage: str, src: str | Path, recipe: str, out_dir: str | Path = WEIGHT_DIR,
         cpu_minutes: Optional[float] = None, extra: Optional[dict[str, Any]] = None,
         trained_on: str | Path | None = None) -> Path:
    """Copy ``src`` (weights written by a training script) to ``out_dir/<authors' name>`` in fp16.

    ``trained_on``: the weights whose outputs ``src`` was trained on, recorded by their
    :func:`~blurry_edges.models.weights_id` (:func:`trained_on_record`) where the training did not
    record it; a training that did must agree.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; use one of {', '.join(STAGES)}")
    src = Path(src)
    model, meta = _load(stage, src)
    meta = {k: v for k, v in meta.items() if k not in ("arch", "dtype")}
    if trained_on is not None:
        for key, value in trained_on_record(stage, trained_on).items():
            if meta.get(key, value) != value:
                raise ValueError(f"--trained_on {trained_on} is {value}, but {src} records that it was trained on "
                                 f"{meta[key]} ({key}); give the weights it was trained on, or leave --trained_on out")
            meta[key] = value
    if cpu_minutes is None and "train_minutes" in meta:
        cpu_minutes = float(meta["train_minutes"]) * int(meta.get("processes", 1))
    meta.update(recipe=recipe, cpu_minutes=cpu_minutes, shipped_from=src.name, **(extra or {}))
    dst = Path(out_dir) / WEIGHT_FILES[STAGES[stage]]
    dst.parent.mkdir(parents=True, exist_ok=True)
    return save_weights(model, dst, meta=meta, half=True)


def _save_figure(fig, out: str | Path, dpi: int) -> Path:
    """Write ``fig`` (a ``matplotlib.figure.Figure``) to the PNG ``out``, its folder made."""
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    return out


def plot_curves(runs: Sequence[tuple[str, str | Path]], out: str | Path, dpi: int = 120) -> Path:
    """One figure of a training stage's loss curves, a panel per run, for ``TRAINING.md``.

    Args:
        runs: ``(label, stem)`` pairs; ``stem`` is a training's ``<log_path>/loss_curve_<name>``, whose
            ``.npy`` (validation loss per epoch) and ``_train.npy`` (mean training loss per epoch) the
            training scripts write.
        out: the PNG to write.
    Epochs are numbered from 1, as in the text logs; log scale where every value is positive.
    """
    import matplotlib.ticker
    import numpy as np
    from matplotlib.figure import Figure

    if not runs:
        raise ValueError("no run given: pass LABEL=LOG_PATH/loss_curve_<name> for each training")
    fig = Figure(figsize=(4.5 * len(runs), 3.4))
    axes = fig.subplots(1, len(runs), squeeze=False)
    for ax, (label, stem) in zip(axes[0], runs):
        stem = Path(str(stem).removesuffix(".npy"))
        val_file = stem.with_name(stem.name + ".npy")
        if not val_file.is_file():
            raise FileNotFoundError(f"{val_file} does not exist; give the stem LOG_PATH/loss_curve_<name> of a "
                                    f"training's log folder")
        curves = {"validation": np.load(val_file)}
        train_file = stem.with_name(stem.name + "_train.npy")
        if train_file.is_file():
            curves["training (mean of the epoch)"] = np.load(train_file)
        positive = all((c > 0).all() for c in curves.values() if c.size)
        for name, c in curves.items():
            ax.plot(np.arange(1, c.size + 1), c, marker="o", label=name)
        if positive:
            ax.set_yscale("log")
        ax.set_title(label)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))   # epochs as the log numbers them
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return _save_figure(fig, out, dpi)


PROGRESS_COLUMNS = ("panel", "series", "local_samples_M", "value")


def plot_progress(table: str | Path, out: str | Path, dpi: int = 120) -> Path:
    """One figure of the training's progress across stages, for the README and ``TRAINING.md``.

    Args:
        table: a CSV with the columns ``panel,series,local_samples_M,value``: one row per point;
            a panel per distinct ``panel`` (in order of appearance), a line per ``series`` in it,
            x = the local-stage samples (millions) behind the point. Series whose name starts with
            "paper" are drawn dashed (the paper's Table 3 as a reference level).
        out: the PNG to write.
    """
    import csv

    from matplotlib.figure import Figure

    table = Path(table)
    if not table.is_file():
        raise FileNotFoundError(f"{table} does not exist; give a CSV with the columns {','.join(PROGRESS_COLUMNS)}")
    panels: dict[str, dict[str, list[tuple[float, float]]]] = {}
    with table.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in PROGRESS_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{table} lacks the column(s) {', '.join(missing)}; its header must be "
                             f"{','.join(PROGRESS_COLUMNS)}")
        for line, row in enumerate(reader, start=2):
            try:
                point = (float(row["local_samples_M"]), float(row["value"]))
            except (TypeError, ValueError):
                raise ValueError(f"{table} line {line}: local_samples_M and value must be numbers, "
                                 f"got {row['local_samples_M']!r} and {row['value']!r}") from None
            panels.setdefault(row["panel"], {}).setdefault(row["series"], []).append(point)
    if not panels:
        raise ValueError(f"{table} has no rows")
    fig = Figure(figsize=(5.2 * len(panels), 3.8))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (panel, series) in zip(axes[0], panels.items()):
        for name, points in series.items():
            xs, ys = zip(*sorted(points))
            style = dict(linestyle="--", color="grey") if name.lower().startswith("paper") else dict(marker="o")
            ax.plot(xs, ys, label=name, **style)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("local-stage samples seen (millions)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return _save_figure(fig, out, dpi)


def _progress_main(argv: Sequence[str]) -> Path:
    p = argparse.ArgumentParser(prog="python -m blurry_edges.release progress",
                                description="One figure of the training's progress across stages.")
    p.add_argument("table", help=f"CSV with the columns {','.join(PROGRESS_COLUMNS)}, "
                                 "e.g. pretrained_weights/curves/progress.csv")
    p.add_argument("out", help="the PNG to write, e.g. pretrained_weights/curves/progress.png")
    args = p.parse_args(argv)
    try:
        out = plot_progress(args.table, args.out)
    except (FileNotFoundError, ValueError) as e:
        p.exit(2, f"error: {e}\n")
    print(f"wrote {out}")
    return out


def _curves_main(argv: Sequence[str]) -> Path:
    p = argparse.ArgumentParser(prog="python -m blurry_edges.release curves",
                                description="One figure of a stage's loss curves for pretrained_weights/TRAINING.md.")
    p.add_argument("out", help="the PNG to write, e.g. pretrained_weights/curves/stage3.png")
    p.add_argument("runs", nargs="+", metavar="LABEL=STEM",
                   help="a panel per training: its label and LOG_PATH/loss_curve_<name>")
    args = p.parse_args(argv)
    runs = []
    for item in args.runs:
        label, sep, stem = item.partition("=")
        if not sep or not label or not stem:
            p.exit(2, f"error: {item!r} is not LABEL=LOG_PATH/loss_curve_<name>\n")
        runs.append((label, stem))
    try:
        out = plot_curves(runs, args.out)
    except FileNotFoundError as e:
        p.exit(2, f"error: {e}\n")
    print(f"wrote {out}")
    return out


def main(argv: Optional[Sequence[str]] = None) -> Path:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["curves"]:
        return _curves_main(argv[1:])
    if argv[:1] == ["progress"]:
        return _progress_main(argv[1:])
    p = argparse.ArgumentParser(description="Ship trained weights to pretrained_weights/ (fp16, with their recipe).")
    p.add_argument("stage", choices=sorted(STAGES))
    p.add_argument("weights", help="the best_run_exp_*.pth file a training wrote")
    p.add_argument("--recipe", required=True, help="how they were trained (a README section and the stage)")
    p.add_argument("--out_dir", default=str(WEIGHT_DIR))
    p.add_argument("--cpu_minutes", type=float, default=None,
                   help="CPU minutes spent (default: the training's minutes × processes from its meta)")
    p.add_argument("--samples_seen", type=int, default=None, help="override the samples seen (default: from the meta)")
    p.add_argument("--steps", type=int, default=None, help="override the optimizer steps (default: from the meta)")
    p.add_argument("--commit", type=str, default=None,
                   help="the commit that trained them (default: from the meta; older trainings did not record it)")
    p.add_argument("--trained_on", default=None, metavar="WEIGHTS",
                   help="global / global_w: the local-stage weights whose tokens it was trained on; pp: the global "
                        "stage whose maps it was trained on (recorded by content, so that loading the file beside "
                        "other weights warns; trainings since the record do it themselves)")
    args = p.parse_args(argv)
    extra = {k: getattr(args, k) for k in ("samples_seen", "steps", "commit") if getattr(args, k) is not None} or None
    try:
        dst = ship(args.stage, args.weights, args.recipe, args.out_dir, args.cpu_minutes, extra, args.trained_on)
    except (FileNotFoundError, ValueError) as e:
        p.exit(2, f"error: {e}\n")
    print(f"wrote {dst}")
    return dst


if __name__ == "__main__":
    main()
