"""The training loop: :func:`fit` trains a :class:`~blurry_edges.train.tasks.Task`.

Read top to bottom: set-up (model, optimizer, resume), then per epoch the steps (loss weights,
learning rate, forward/backward, optional gradient accumulation, clipping, AdamW), validation with
the final loss weights, the scheduler, the best weights, the log line, the checkpoint and the time
check. The paper trains with AdamW and ReduceLROnPlateau (Sec. 4.1); ``--lr_schedule cosine``
(README "Training on a CPU") replaces the latter for compressed runs.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from ..models import save_weights
from ..runs import git_commit
from .dist import DistContext, capture_rng, restore_rng, to_device, unwrap
from .recipe import cosine_lr_factor
from .records import (EpochLog, checkpoint_path, plain, read_checkpoint, read_restart_checkpoint, save_curves_so_far,
                      save_loss_curve, write_checkpoint)
from .tasks import Task


@dataclass
class LoopConfig:
    """Options of :func:`fit` (the scripts map their command line onto it, ``cli.loop_config``)."""

    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    log_path: str = "./logs"
    model_path: str = "./pretrained_weights"
    checkpoint_dir: str = "./checkpoints"
    resume: bool = False
    max_minutes: Optional[float] = None
    bf16: bool = False
    num_workers: Optional[int] = None   # None: 4 on CUDA, 0 on the CPU
    clip_norm: float = 1.0
    weight_decay: float = 0.01          # torch.optim.AdamW's default, as the authors use it
    args: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    curve_dpi: int = 200
    allow_accumulation: bool = True     # split a batch that would not fit in memory (blurry_edges.memory)
    lr_schedule: str = "plateau"        # "plateau": the task's (the authors'); "cosine": warm-up + cosine decay
    warmup_frac: float = 0.02           # cosine: fraction of the steps with a linear warm-up
    min_lr_frac: float = 0.05           # cosine: the learning rate ends at this fraction of the initial one
    freeze_batchnorm: bool = False      # BatchNorm layers stay in evaluation mode while training (fine-tunes)
    restart_from: Optional[str] = None  # a training checkpoint: its weights and AdamW moments start a new run


def _loader(dataset: Dataset, batch: int, shuffle: bool, cfg: LoopConfig, ctx: DistContext) -> tuple[DataLoader, DistributedSampler]:
    """Full batches only (as the authors); the order of every epoch is a function of (seed, epoch)."""
    sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle,
                                 seed=cfg.seed, drop_last=True)
    workers = cfg.num_workers if cfg.num_workers is not None else (4 if ctx.device.type == "cuda" else 0)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, drop_last=True,
                        num_workers=workers, pin_memory=ctx.device.type == "cuda",
                        persistent_workers=workers > 0)
    return loader, sampler


def _prepare_model(task: Task, cfg: LoopConfig, ctx: DistContext) -> nn.Module:
    """The task's model on the device: channels_last for convolutions on the CPU, DDP over processes."""
    device = ctx.device
    model = task.model.to(device)
    task.device, task.bf16 = device, cfg.bf16
    task.channels_last = device.type == "cpu" and any(isinstance(m, nn.Conv2d) for m in model.modules())
    if task.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if ctx.distributed:
        if device.type == "cuda" and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            # one BatchNorm over the whole global batch, as on the authors' single GPU
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


def _require_one_batch(what: str, dataset: Dataset, cfg: LoopConfig, ctx: DistContext) -> None:
    """Only full batches are used (as the authors do): a split smaller than one global batch is an error."""
    if len(dataset) // ctx.world_size < cfg.batch_size // ctx.world_size:
        raise ValueError(f"the {what} set has {len(dataset)} samples, fewer than one batch of {cfg.batch_size}"
                         + (f" over {ctx.world_size} processes" if ctx.distributed else "")
                         + "; only full batches are used (as the authors do)")


def _best_meta(task: Task, cfg: LoopConfig, ctx: DistContext, *, epoch: int, val_loss: float, samples_seen: int,
               steps: int, seconds: float, **extra: Any) -> dict[str, Any]:
    """What the best weights record: the task's settings, the epoch (1-based; 0: none of :func:`fit`'s),
    its validation loss, the run's arguments, samples and steps seen, processes, minutes and commit."""
    return plain(dict(task.meta(), epoch=int(epoch), val_loss=float(val_loss), args=plain(cfg.args), **extra,
                      samples_seen=int(samples_seen), steps=int(steps), processes=ctx.world_size,
                      train_minutes=round(seconds / 60.0, 2), commit=git_commit(short=True)))


def _restart(task: Task, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, cfg: LoopConfig,
             ckpt_file: Path, ctx: DistContext) -> None:
    """Start this run from the weights and the AdamW moments (running averages and step counts) of the
    training checkpoint ``cfg.restart_from``, with this run's learning rate, weight decay, epochs and
    schedule. Unlike a fresh optimizer (``--init_from``), whose first Adam steps move every weight by
    about the learning rate, the kept moments continue the finished run smoothly (a warm restart of
    the cosine schedule; README "Training on a CPU")."""
    src = Path(cfg.restart_from)
    if src.resolve() == ckpt_file.resolve():
        raise ValueError(f"--restart_from {src} is this run's own checkpoint file, which the run would overwrite; "
                         "give the new run another --checkpoint_dir (or --model_path), or use --resume to continue it")
    ckpt = read_restart_checkpoint(src, task.name, task.meta())
    unwrap(model).load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    for group in optimizer.param_groups:
        group["lr"], group["initial_lr"], group["weight_decay"] = cfg.learning_rate, cfg.learning_rate, cfg.weight_decay
    if scheduler is not None:                          # the plateau policy starts afresh from this run's rate
        scheduler.load_state_dict(task.make_scheduler(optimizer).state_dict())
    if ctx.is_main:
        print(f"warm restart from {src} (after its epoch {ckpt['epoch']}, validation loss "
              f"{ckpt['loss_curve'][-1] if ckpt.get('loss_curve') else float('nan'):.6g}): its weights and "
              f"AdamW moments, this run's learning rate {cfg.learning_rate:g} and schedule")


def fit(task: Task, train_set: Dataset, val_set: Dataset, cfg: LoopConfig, ctx: DistContext) -> dict[str, Any]:
    """Train ``task.model`` with AdamW, gradient clipping and the task's schedules.

    Per epoch: set the epoch's loss weights, one pass over the shuffled training set (full global
    batches only), validation with the final weights (mean over full batches, all processes),
    the task's scheduler policy, best weights, log line, checkpoint, time check.

    Returns a dict with ``loss_curve``, ``best_loss``, ``best_epoch`` (0-based), ``epochs_done``,
    ``finished`` (False when ``max_minutes`` stopped it) and the output paths.
    """
    t_start, seconds_before, device = time.time(), 0.0, ctx.device    # seconds_before: earlier sessions
    if cfg.batch_size % ctx.world_size:
        raise ValueError(f"--batch_size {cfg.batch_size} is the global batch and must be divisible by the "
                         f"number of processes ({ctx.world_size})")
    local_batch = cfg.batch_size // ctx.world_size
    for what, ds in (("training", train_set), ("validation", val_set)):
        _require_one_batch(what, ds, cfg, ctx)
    model = _prepare_model(task, cfg, ctx)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = task.make_scheduler(optimizer)
    if ctx.is_main:
        print(f"{task.name}: {ctx.world_size} process(es) × {torch.get_num_threads()} thread(s) on {device}, "
              f"{'bf16 autocast' if cfg.bf16 else 'float32'}{', channels_last' if task.channels_last else ''}")

    # ---------------------------------------------------------------- resume
    ckpt_file = checkpoint_path(cfg.checkpoint_dir, task.name)
    start_epoch, best_loss, best_epoch, curve, train_curve, resumed = 0, math.inf, -1, [], [], False
    if cfg.resume and ckpt_file.is_file():
        ckpt = read_checkpoint(ckpt_file, task.name, task.meta(), cfg.batch_size, cfg.args)
        unwrap(model).load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler") is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, best_loss, best_epoch = ckpt["epoch"], ckpt["best_loss"], ckpt["best_epoch"]
        seconds_before = float(ckpt.get("train_seconds", 0.0))
        curve = list(ckpt["loss_curve"])
        train_curve = list(ckpt.get("train_curve", [float("nan")] * len(curve)))
        states = ckpt["rng"]
        restore_rng(states[ctx.rank] if len(states) == ctx.world_size else states[0], device)
        resumed = True
        if ctx.is_main:
            print(f"resumed from {ckpt_file} after epoch {start_epoch} (best loss {best_loss:.6g})")
    elif cfg.resume and ctx.is_main and not cfg.restart_from:
        print(f"--resume: no checkpoint at {ckpt_file}; starting from scratch")
    if cfg.restart_from and not resumed:             # warm restart: weights + moments, a new schedule
        _restart(task, model, optimizer, scheduler, cfg, ckpt_file, ctx)

    # ---------------------------------------------------------------- data, memory, outputs
    from ..memory import plan_for_process
    plan = plan_for_process(task, local_batch, cfg.allow_accumulation, device, ctx.world_size, ctx.is_main)
    micro = plan.micro_batch if plan is not None else local_batch
    train_loader, train_sampler = _loader(train_set, local_batch, True, cfg, ctx)
    val_loader, _ = _loader(val_set, local_batch, False, cfg, ctx)
    n_steps = len(train_loader)
    log = EpochLog(Path(cfg.log_path) / f"{task.name}_training.txt", cfg.args,
                   start_epoch if resumed else None, enabled=ctx.is_main)
    weights_path = Path(cfg.model_path) / task.weights_file
    show = cfg.progress and ctx.is_main
    finished = start_epoch >= cfg.epochs
    if resumed and finished and best_epoch >= 0 and not weights_path.is_file():
        raise ValueError(f"--resume: {ckpt_file} records a finished run whose best weights should be {weights_path}, "
                         "but that file does not exist; nothing was trained. Start the run afresh (without --resume) "
                         "or pass the --model_path the run wrote to")

    epochs = tqdm(range(start_epoch, cfg.epochs), initial=start_epoch, total=cfg.epochs, disable=not show,
                  desc=task.name, unit="epoch", dynamic_ncols=True)
    for epoch in epochs:
        # ------------------------------------------------------------ the epoch's steps
        t_epoch = time.time()
        weights = task.schedule(epoch)
        train_sampler.set_epoch(epoch)
        model.train()
        if cfg.freeze_batchnorm:                        # fine-tune: keep the running statistics and use them
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        steps = tqdm(train_loader, leave=False, disable=not show, desc=f"epoch {epoch + 1}", dynamic_ncols=True)
        train_total = torch.zeros((), dtype=torch.float64, device=device)
        for step, batch in enumerate(steps):
            if task.schedule_per_step:                 # compressed schedules move every step
                weights = task.schedule(epoch + step / n_steps)
            if cfg.lr_schedule == "cosine":
                factor = cosine_lr_factor(epoch * n_steps + step, cfg.epochs * n_steps, cfg.warmup_frac, cfg.min_lr_frac)
                for group in optimizer.param_groups:
                    group["lr"] = cfg.learning_rate * factor
            batch = to_device(batch, device)
            optimizer.zero_grad(set_to_none=True)
            if micro == local_batch:
                loss = task.loss(model, batch, weights, train=True)
                loss.backward()
            else:                                      # gradient accumulation, same global batch
                parts = list(zip(*(t.split(micro) for t in batch)))
                loss = 0.0
                for i, part in enumerate(parts):
                    sync = contextlib.nullcontext() if (i == len(parts) - 1 or not ctx.distributed) else model.no_sync()
                    with sync:
                        part_loss = task.loss(model, part, weights, train=True) / len(parts)
                        part_loss.backward()
                    loss = loss + part_loss.detach()
            if cfg.clip_norm:
                nn.utils.clip_grad_norm_(model.parameters(), max_norm=cfg.clip_norm, norm_type=2)
            optimizer.step()
            train_total += loss.detach().double()
            if show and steps.n % 10 == 0:
                steps.set_postfix(loss=f"{loss.item():.4g}", refresh=False)

        # ------------------------------------------------------------ validation, scheduler, best weights
        if ctx.distributed:           # one model everywhere: BatchNorm statistics of process 0
            for buf in unwrap(model).buffers():
                dist.broadcast(buf, src=0)
        val_loss = evaluate(task, model, val_loader, ctx)
        curve.append(val_loss)
        total, count = ctx.sum([train_total.item(), float(n_steps)])
        train_curve.append(total / max(count, 1.0))
        if cfg.lr_schedule == "cosine":
            patience, lr = "-", optimizer.param_groups[0]["lr"]
        else:
            patience, lr = task.step_scheduler(epoch, val_loss, scheduler, optimizer)
        log.epoch(epoch, val_loss, patience, lr, (time.time() - t_epoch) / 60.0)
        if val_loss < best_loss:
            best_loss, best_epoch = val_loss, epoch
            if ctx.is_main:
                meta = _best_meta(task, cfg, ctx, epoch=epoch + 1, val_loss=val_loss,
                                  samples_seen=n_steps * cfg.batch_size * (epoch + 1), steps=n_steps * (epoch + 1),
                                  seconds=seconds_before + time.time() - t_start)
                save_weights(unwrap(model), weights_path, meta=meta)

        # ------------------------------------------------------------ the checkpoint
        rng = ctx.gather(capture_rng(device))
        if ctx.is_main:
            write_checkpoint(ckpt_file, name=task.name, epoch=epoch, model=unwrap(model), optimizer=optimizer,
                             scheduler=scheduler, weights=task.describe_schedule(weights), best_loss=best_loss,
                             best_epoch=best_epoch, curve=curve, train_curve=train_curve, rng=rng,
                             world_size=ctx.world_size, batch_size=cfg.batch_size,
                             train_seconds=seconds_before + time.time() - t_start, meta=task.meta(), args=cfg.args)
            save_curves_so_far(cfg.log_path, task.name, curve, train_curve)
        if show:
            epochs.set_postfix(val=f"{val_loss:.5g}", best=f"{best_loss:.5g}", refresh=False)

        # ------------------------------------------------------------ the end, or the time budget
        last_epoch_seconds = time.time() - t_epoch
        if epoch + 1 >= cfg.epochs:
            finished = True
            break
        if cfg.max_minutes is not None:
            elapsed = time.time() - t_start
            if ctx.any(elapsed + last_epoch_seconds > cfg.max_minutes * 60.0):
                if ctx.is_main:
                    print(f"--max_minutes {cfg.max_minutes}: stopping after epoch {epoch + 1} "
                          f"({elapsed / 60:.1f} min used, an epoch takes {last_epoch_seconds / 60:.1f} min); "
                          f"continue with --resume (checkpoint {ckpt_file})")
                break
    epochs.close()

    outputs: dict[str, Any] = {"model": unwrap(model), "loss_curve": curve, "train_curve": train_curve,
                               "best_loss": best_loss, "best_epoch": best_epoch,
                               "epochs_done": len(curve), "finished": finished, "weights": str(weights_path),
                               "checkpoint": str(ckpt_file), "log": str(log.path)}
    if ctx.is_main:
        npy, png = save_loss_curve(curve, cfg.log_path, f"loss_curve_{task.name}", dpi=cfg.curve_dpi,
                                   train=train_curve)
        outputs.update(curve_npy=str(npy), curve_png=str(png))
        if finished and best_epoch >= 0 and len(curve) > start_epoch:
            log.write(f"\n-- Best epoch is the {best_epoch + 1:d}th, with average loss of {best_loss:.10f}")
    log.close()
    ctx.barrier()
    return outputs


def save_as_trained(task: Task, val_set: Dataset, cfg: LoopConfig, ctx: DistContext, *, steps: int,
                     samples_seen: int, seconds: float, what: str) -> dict[str, Any]:
    """Validate ``task.model`` as it stands (trained outside :func:`fit`, e.g. by the pass-through warm
    start alone) and save it as the run's best weights, with the meta :func:`fit` records.

    The validation loss is :func:`fit`'s (the task's final loss weights, full batches over all
    processes), so it compares with the epochs of a run that goes on training. Returns the keys of
    :func:`fit`'s result that apply (``epochs_done`` 0, ``best_epoch`` −1, ``best_loss`` the loss).
    """
    device = ctx.device
    model = task.model.to(device)
    task.device, task.bf16 = device, cfg.bf16
    _require_one_batch("validation", val_set, cfg, ctx)
    val_loader, _ = _loader(val_set, max(1, cfg.batch_size // ctx.world_size), False, cfg, ctx)
    val_loss = evaluate(task, model, val_loader, ctx)
    weights_path = Path(cfg.model_path) / task.weights_file
    if ctx.is_main:
        meta = _best_meta(task, cfg, ctx, epoch=0, val_loss=val_loss, samples_seen=samples_seen, steps=steps,
                          seconds=seconds, what=what)
        save_weights(model, weights_path, meta=meta)
    ctx.barrier()
    return {"model": model, "best_loss": float(val_loss), "best_epoch": -1, "epochs_done": 0, "finished": True,
            "weights": str(weights_path)}


@torch.no_grad()
def evaluate(task: Task, model: nn.Module, loader: DataLoader, ctx: DistContext) -> float:
    """Validation loss with the final schedule: mean of the per-batch losses over full batches
    (summed over all processes)."""
    net = unwrap(model)
    net.eval()
    weights = task.final_schedule()
    total = torch.zeros((), dtype=torch.float64, device=ctx.device)
    n = 0
    for batch in loader:
        batch = to_device(batch, ctx.device)
        total += task.loss(net, batch, weights, train=False).double()
        n += 1
    s, count = ctx.sum([total.item(), float(n)])
    return s / max(count, 1.0)
