"""Does a fine-tune of trained local-stage weights improve them? A short probe before an epoch.

Fine-tuning the shipped local stage with a fresh AdamW made it worse twice (README "Training on a
CPU" and ``pretrained_weights/TRAINING.md``, stages 6 and 7), at learning rates 2e-4 and 4e-5. This
script runs the first few steps of such a fine-tune in one process and prints, every
``--every`` steps, the loss of the local objective (paper Eq. 21 with ``--beta_blur``; colors
fitted to the clean patch, as in training; final β weights) on a fixed set of held-out training
patches with BatchNorm in evaluation mode, so a recipe can be judged in minutes instead of an
epoch. ``--lr 0`` with ``--bn train`` isolates the BatchNorm running statistics (only they change);
``--bn frozen`` keeps BatchNorm in evaluation mode during the steps (statistics fixed).

    python benchmarks/local_finetune_probe.py --data_path data/train_c \\
        --weights pretrained_weights/pretrained_local_stage.pth --lr 4e-5 --bn frozen --steps 24
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blurry_edges.data import LocalPatchDataset  # noqa: E402
from blurry_edges.losses import LocalSchedule  # noqa: E402
from blurry_edges.models import LocalStage, load_weights  # noqa: E402
from blurry_edges.train.tasks import LocalTask  # noqa: E402


def _batch(ds: LocalPatchDataset, idx: list[int]) -> list[torch.Tensor]:
    items = [ds[i] for i in idx]
    return [torch.stack([it[k] for it in items]) for k in range(len(items[0]))]


def held_out_loss(task: LocalTask, model: torch.nn.Module, batch: list[torch.Tensor], chunk: int = 64,
                  batchnorm: str = "eval") -> float:
    """Mean training objective of ``model`` over ``batch``: BatchNorm in evaluation mode (running
    statistics, as validation and inference use it), or ``batchnorm="train"`` on a copy whose BatchNorm
    normalizes each ``chunk`` by its own statistics, as a training step of that batch size does."""
    if batchnorm == "train":
        model = copy.deepcopy(model).train()
    else:
        model.eval()
    n = batch[0].shape[0]
    with torch.no_grad():
        parts = [float(task.loss(model, [b[i:i + chunk] for b in batch], task.final_schedule(), True)) * min(chunk, n - i)
                 for i in range(0, n, chunk)]
    return sum(parts) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data_path", required=True, help="a train/val set made by train_val_data_generator.py")
    ap.add_argument("--weights", required=True, help="local-stage weights to fine-tune")
    ap.add_argument("--lr", type=float, required=True, help="AdamW learning rate (0: only BatchNorm statistics move)")
    ap.add_argument("--bn", choices=("train", "frozen"), default="train",
                    help="BatchNorm during the steps: batch statistics (as in training) or frozen running statistics")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--every", type=int, default=8, help="print the held-out loss every N steps")
    ap.add_argument("--batch_size", type=int, default=32, help="per step (a process's share of the recipe's 64 on 2)")
    ap.add_argument("--held_out", type=int, default=256, help="fixed training patches the loss is measured on")
    ap.add_argument("--beta_blur", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.lr < 0 or args.steps < 1 or args.every < 1 or args.batch_size < 1 or args.held_out < 1:
        ap.error("--lr must be ≥ 0 and --steps, --every, --batch_size, --held_out ≥ 1")
    torch.set_num_threads(args.threads)
    ds = LocalPatchDataset(args.data_path, "train", with_blur=True)
    if len(ds) < 2 * args.held_out:
        ap.error(f"{args.data_path} has {len(ds)} training patches; --held_out {args.held_out} needs at least twice that")
    start = len(ds) - args.held_out                        # held out: the last patches, never drawn for a step
    fixed = _batch(ds, list(range(start, len(ds))))
    model = LocalStage(ds.R)
    load_weights(model, args.weights, what="local stage")
    task = LocalTask(ds.R, schedule=LocalSchedule(beta_blur=args.beta_blur, dynamic_epoch=1), model=model)
    print(f"{args.weights}: held-out loss {held_out_loss(task, model, fixed):.5f} before "
          f"({held_out_loss(task, model, fixed, chunk=args.batch_size, batchnorm='train'):.5f} with BatchNorm on the "
          f"statistics of batches of {args.batch_size}, as in a training step); AdamW lr {args.lr:g}, "
          f"BatchNorm {args.bn}, batch {args.batch_size}, {args.steps} steps, {args.threads} thread(s)", flush=True)
    m = copy.deepcopy(model).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(m.parameters(), lr=args.lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    for step in range(args.steps):
        m.train(args.bn == "train")
        b = _batch(ds, torch.randint(0, start, (args.batch_size,), generator=g).tolist())
        opt.zero_grad(set_to_none=True)
        loss = task.loss(m, b, task.final_schedule(), True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        if (step + 1) % args.every == 0 or step + 1 == args.steps:
            print(f"  step {step + 1}: batch loss {loss.item():.5f}, held-out loss {held_out_loss(task, m, fixed):.5f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
