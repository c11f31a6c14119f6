"""Ship trained weights: a best-validation file → ``pretrained_weights/`` under the authors' name, fp16.

    python -m blurry_edges.release local  checkpoints/run/best_run_exp_local_stage.pth  --recipe "README 'Training on a CPU', stage 1"
    python -m blurry_edges.release global checkpoints/run/best_run_exp_global_stage.pth --recipe "..."

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

from .models import WEIGHT_FILES, GlobalStage, LocalStage, UNet, load_weights, save_weights
from .models.weights import WEIGHT_DIR

STAGES = {"local": "local", "global": "global", "global_w": "global_w", "pp": "pp"}


def _model_for(stage: str, meta: dict[str, Any]) -> torch.nn.Module:
    if stage == "local":
        return LocalStage(int(meta.get("R", 21)))
    if stage in ("global", "global_w"):
        return GlobalStage(stride=int(meta.get("stride", 2)))
    return UNet()


def ship(stage: str, src: str | Path, recipe: str, out_dir: str | Path = WEIGHT_DIR,
         cpu_minutes: Optional[float] = None, extra: Optional[dict[str, Any]] = None) -> Path:
    """Copy ``src`` (weights written by a training script) to ``out_dir/<authors' name>`` in fp16."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; use one of {', '.join(STAGES)}")
    src = Path(src)
    probe = torch.load(src, map_location="cpu", weights_only=True)
    meta = dict(probe.get("meta", {})) if isinstance(probe, dict) else {}
    model = _model_for(stage, meta)
    meta = load_weights(model, src, what=stage)
    meta = {k: v for k, v in meta.items() if k not in ("arch", "dtype")}
    if cpu_minutes is None and "train_minutes" in meta:
        cpu_minutes = float(meta["train_minutes"]) * int(meta.get("processes", 1))
    meta.update(recipe=recipe, cpu_minutes=cpu_minutes, shipped_from=src.name, **(extra or {}))
    dst = Path(out_dir) / WEIGHT_FILES[STAGES[stage]]
    dst.parent.mkdir(parents=True, exist_ok=True)
    return save_weights(model, dst, meta=meta, half=True)


def main(argv: Optional[Sequence[str]] = None) -> Path:
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
    args = p.parse_args(argv)
    extra = {k: getattr(args, k) for k in ("samples_seen", "steps", "commit") if getattr(args, k) is not None} or None
    try:
        dst = ship(args.stage, args.weights, args.recipe, args.out_dir, args.cpu_minutes, extra)
    except (FileNotFoundError, ValueError) as e:
        p.exit(2, f"error: {e}\n")
    print(f"wrote {dst}")
    return dst


if __name__ == "__main__":
    main()
