"""Training speed and memory figures (printed, never asserted).

For each training — local stage, global stage, W variant, depth-completion U-Net — one training
step at the paper's sizes (R = 21, stride 2, 147×147 images, 64 × 64 tokens) on a synthetic batch:
forward (optionally bf16 autocast), loss, backward, gradient clipping, AdamW. Reported:

* seconds per training step and per 1000 training samples, and per 1000 validation samples;
* peak memory: ``torch.cuda.max_memory_allocated`` on a GPU; on the CPU the peak resident set of a
  fresh process running only that stage (each stage runs in its own subprocess);
* the projected time of the full schedule (paper: local 1000 epochs × 16000 + 4000 samples,
  global 350 × 8000 + 2000; ours: W 100 × 8000 + 2000, U-Net 100 × 8000 + 2000) plus the
  pre-calculation (local stage on 2 × 4096 patches of each of 10000 scenes).

``--gpu_like_memory`` (CPU): the global stage's memory at the authors' batch 8 as a GPU would see it.
On a GPU attention runs fused (memory linear in the 4096 tokens, dropout inside the kernel); the
CPU's fused kernel has no dropout, so in training mode the CPU falls back to 8 heads × 4096² score
matrices per layer. The probe runs the step with dropout off (fused attention, as on a GPU) at two
small batches and extrapolates linearly to ``--target_batch``.

CPU recipe (README "Training on a CPU"): ``--crop_tokens 24`` times the global stage and the
pre-calculation on one 24 × 24-token crop (67 × 67 pixels) instead of the 147 × 147 image, and
``--attention_dropout 0`` the global stage with PyTorch's memory-efficient attention. On the CPU the
convolutional stages run channels_last (as ``fit`` runs them).

    python benchmarks/bench_training.py [--device cpu|cuda:0] [--stages local global w unet precal]
                                        [--steps 2] [--bf16] [--threads N] [--gpu_like_memory]
                                        [--crop_tokens 24] [--attention_dropout 0]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from blurry_edges.features import local_params_for_images  # noqa: E402
from blurry_edges.patches import PatchGrid  # noqa: E402
from blurry_edges.train import DepthCompletionTask, GlobalTask, LocalTask  # noqa: E402
from timing import best_of, sync  # noqa: E402  (benchmarks/timing.py)

# (train samples, val samples, epochs) of each schedule
SCHEDULES = {"local": (16000, 4000, 1000), "global": (8000, 2000, 350), "w": (8000, 2000, 100),
             "unet": (8000, 2000, 100)}
DEFAULT_BATCH = {"local": 64, "global": 8, "w": 8, "unet": 16}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0    # Linux: kB


def make_batch(stage: str, B: int, R: int, H: int, S: int, g: torch.Generator):
    """A synthetic batch in the datasets' layout (channel-last images, CPU float32)."""
    if stage == "local":
        return (torch.rand(B, R, R, 3, generator=g), torch.rand(B, R, R, 3, generator=g),
                torch.rand(B, R, R, generator=g) * 10, torch.rand(B, R - 2, R - 2, 3, generator=g))
    if stage in ("global", "w"):
        P = ((H - R) // S + 1) ** 2
        bd = torch.where(torch.rand(B, H, H, generator=g) > 0.8, 0.75 + 0.43 * torch.rand(B, H, H, generator=g), 0.0)
        return (torch.rand(B, 2, P, 19, generator=g) * 2 - 1, torch.rand(B, 2, H, H, 3, generator=g),
                torch.rand(B, 2, H, H, 3, generator=g), torch.rand(B, H, H, generator=g) * 10,
                torch.rand(B, 2, H - 2, H - 2, 3, generator=g), bd, 0.75 + 0.43 * torch.rand(B, H, H, generator=g))
    if stage == "unet":
        dense = 0.75 + 0.43 * torch.rand(B, H, H, generator=g)
        return (torch.where(torch.rand(B, H, H, generator=g) > 0.8, dense, 0.0), dense)
    raise ValueError(stage)


def make_task(stage: str, R: int, H: int, S: int, dropout: bool = True, attention_dropout: float = 0.1):
    if stage == "local":
        return LocalTask(R)
    if stage in ("global", "w"):
        from blurry_edges.models import GlobalStage
        grid = PatchGrid(H, H, R, S)
        model = GlobalStage(grid.Hp, grid.Wp, S, dropout=0.1 if dropout else 0.0)
        if dropout:
            model.set_attention_dropout(attention_dropout)
        return GlobalTask(grid, variant="w" if stage == "w" else "sparse", model=model)
    if stage == "unet":
        return DepthCompletionTask()
    raise ValueError(stage)


def run_stage(stage: str, args) -> dict:
    """Time ``args.steps`` training steps (after one warm-up) and one validation batch."""
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    if stage == "precal":
        return run_precal(args, device, g)
    B = args.batch or DEFAULT_BATCH[stage]
    size = crop_pixels(args) if stage in ("global", "w") else (args.R if stage == "local" else args.img)
    task = make_task(stage, args.R, size, args.stride, dropout=not args.no_dropout,
                     attention_dropout=args.attention_dropout)
    task.device, task.bf16 = device, args.bf16
    model = task.model.to(device)
    if device.type == "cpu" and stage in ("local", "unet"):            # as fit() runs them on the CPU
        task.channels_last = True
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = tuple(t.to(device) for t in make_batch(stage, B, args.R, size, args.stride, g))
    weights = task.schedule(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss0 = _rss_mb()

    def step():
        model.train()
        loss = task.loss(model, batch, weights, train=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    t_step = best_of(step, args.steps, device)        # after a warm-up step (allocations, kernels)
    model.eval()
    with torch.no_grad():
        t0 = time.perf_counter()
        task.loss(model, batch, task.final_schedule(), train=False)
        sync(device)
        t_val = time.perf_counter() - t0
    out = {"stage": stage, "batch": B, "s_per_step": t_step, "s_per_1000_train": t_step * 1000 / B,
           "s_per_1000_val": t_val * 1000 / B, "device": str(device), "bf16": args.bf16,
           "dropout": not args.no_dropout, "size": size}
    if device.type == "cuda":
        out["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
        out["peak_kind"] = "cuda max_memory_allocated"
    else:
        out["peak_mb"] = _rss_mb()
        out["step_mb"] = _rss_mb() - rss0
        out["peak_kind"] = "CPU peak RSS of the process"
    return out


@torch.no_grad()
def run_precal(args, device, g) -> dict:
    from blurry_edges.models import LocalStage
    from blurry_edges.wedges import WedgeRenderer
    model = LocalStage(args.R).to(device).eval()
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    renderer = WedgeRenderer(args.R)
    size = crop_pixels(args)
    grid = PatchGrid(size, size, args.R, args.stride)
    images = torch.rand(1, 2, size, size, 3, generator=g).to(device)
    local_params_for_images(model, renderer, grid, images, bf16=args.bf16, chunk=256)
    sync(device)
    t0 = time.perf_counter()
    local_params_for_images(model, renderer, grid, images, bf16=args.bf16, chunk=256)
    sync(device)
    t = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else _rss_mb()
    return {"stage": "precal", "batch": 1, "s_per_step": t, "s_per_1000_train": t * 1000, "s_per_1000_val": 0.0,
            "device": str(device), "bf16": args.bf16, "peak_mb": peak, "size": size}


def crop_pixels(args) -> int:
    """Image side of the global stage and the pre-calculation: the crop's, else ``--img``."""
    if not args.crop_tokens:
        return args.img
    return (args.crop_tokens - 1) * args.stride + args.R


def projected_hours(r: dict) -> float:
    if r["stage"] == "precal":
        return r["s_per_1000_train"] * 10.0 / 3600.0          # 10000 scenes
    n_train, n_val, epochs = SCHEDULES[r["stage"]]
    return epochs * (n_train * r["s_per_1000_train"] + n_val * r["s_per_1000_val"]) / 1000.0 / 3600.0


def gpu_like_memory(args) -> None:
    """Global-stage memory at the target batch with fused attention (dropout off), extrapolated."""
    rows = []
    for B in args.probe_batches:
        r = _subprocess(args, "global", ["--batch", str(B), "--no_dropout", "--steps", "1"])
        rows.append((B, r["peak_mb"]))
        print(f"  probe: global stage, batch {B}, dropout off: peak RSS {r['peak_mb']:.0f} MB")
    (b1, m1), (b2, m2) = rows[0], rows[-1]
    slope = (m2 - m1) / (b2 - b1)
    est = m1 + slope * (args.target_batch - b1)
    print(f"  → about {slope:.0f} MB per sample; batch {args.target_batch}: ≈ {est / 1024:.1f} GiB "
          f"(process RSS, includes ~{m1 - slope * b1:.0f} MB of interpreter, libraries and model)")


def _subprocess(args, stage: str, extra: list[str]) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_single", stage, "--device", args.device,
           "--R", str(args.R), "--img", str(args.img), "--stride", str(args.stride), "--steps", str(args.steps)]
    if args.bf16:
        cmd.append("--bf16")
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.crop_tokens:
        cmd += ["--crop_tokens", str(args.crop_tokens)]
    cmd += ["--attention_dropout", str(args.attention_dropout)]
    if args.batch and "--batch" not in extra:
        cmd += ["--batch", str(args.batch)]
    cmd += extra
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{stage} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--stages", nargs="+", default=["local", "global", "w", "unet", "precal"],
                    choices=["local", "global", "w", "unet", "precal"])
    ap.add_argument("--steps", type=int, default=2, help="timed steps per stage (after one warm-up)")
    ap.add_argument("--batch", type=int, default=None, help="override every stage's batch (default: the authors')")
    ap.add_argument("--R", type=int, default=21)
    ap.add_argument("--img", type=int, default=147)
    ap.add_argument("--stride", type=int, default=2)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--no_dropout", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--crop_tokens", type=int, default=None,
                    help="global stage and pre-calculation on one crop of T×T tokens (CPU recipe)")
    ap.add_argument("--attention_dropout", type=float, default=0.1,
                    help="global stage: dropout on the attention weights (0: memory-efficient attention)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--gpu_like_memory", action="store_true",
                    help="probe the global stage's memory with fused attention and extrapolate to --target_batch")
    ap.add_argument("--probe_batches", type=int, nargs=2, default=[1, 2])
    ap.add_argument("--target_batch", type=int, default=8)
    ap.add_argument("--_single", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args._single:                     # child process: one stage, one JSON line
        print(json.dumps(run_stage(args._single, args)))
        return

    print(f"device={args.device}, threads={args.threads or torch.get_num_threads()}, torch {torch.__version__}, "
          f"R={args.R}, {args.img}×{args.img}, stride {args.stride}, bf16={args.bf16}, load avg {os.getloadavg()[0]:.1f}")
    print(f"crop_tokens={args.crop_tokens}, attention dropout {args.attention_dropout}")
    print(f"{'stage':<8} {'batch':>5} {'size':>5} {'s/step':>9} {'s/1000 train':>13} {'s/1000 val':>11} {'peak MB':>9} "
          f"{'full schedule':>14}")
    for stage in args.stages:
        r = _subprocess(args, stage, [])
        hours = projected_hours(r)
        print(f"{stage:<8} {r['batch']:>5} {r.get('size', args.img):>5} {r['s_per_step']:>9.3f} {r['s_per_1000_train']:>13.1f} "
              f"{r['s_per_1000_val']:>11.1f} {r['peak_mb']:>9.0f} {hours:>12.1f} h", flush=True)
    if args.gpu_like_memory:
        gpu_like_memory(args)
    print("peak: " + ("torch.cuda.max_memory_allocated" if args.device.startswith("cuda")
                      else "peak resident set of a process running only that stage (includes libraries)"))
    print("full schedule: local 1000 × (16000 + 4000), global 350 × (8000 + 2000), W 100 × (8000 + 2000), "
          "U-Net 100 × (8000 + 2000) samples; precal: 10000 scenes")


if __name__ == "__main__":
    main()
