"""Shared training machinery for the four trainings (local, global, W, depth completion).

What is here, and why:

* **Devices** – ``--cuda`` takes ``cuda``, ``cuda:N`` or ``cpu`` and defaults to CUDA when
  present (:func:`parse_device`). Datasets live on the CPU; a batch moves to the device when it
  is used (pinned memory and non-blocking copies on CUDA).
* **Several processes** – under ``torchrun --nproc_per_node N`` the same scripts run with
  DistributedDataParallel (NCCL on GPUs, gloo on the CPU, :func:`setup_distributed`). ``--batch_size``
  stays the *global* batch (the authors' 64 / 8), split evenly over the processes, so the loss
  curve means the same thing with any number of GPUs.
* **Reproducibility** – :func:`set_seed` (the authors' seeds, optional deterministic algorithms);
  the shuffling order of every epoch is a function of (seed, epoch) (``DistributedSampler``), so a
  resumed run sees the same batches as an uninterrupted one.
* **Checkpoints** – after every epoch a full checkpoint (weights, optimizer, scheduler, epoch,
  schedule position, best loss, loss curve, the RNG states of every process) is written atomically
  to ``<checkpoint_dir>/<name>_last.pt``; ``--resume`` continues from it, ``--max_minutes`` stops
  cleanly after the epoch that would otherwise be the last to fit in the budget.
* **Outputs** – best-validation weights under the authors' file name in ``--model_path`` (with a
  ``meta`` record of R, stride, epoch and validation loss, see ``models.save_weights``), a text log
  of every epoch in the authors' layout, and the loss curve as ``.npy`` and ``.png`` in ``--log_path``.

A training is described by a :class:`Task` (model, loss, schedules, scheduler policy) and run by
:func:`fit`.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from .models import save_weights
from .models.weights import atomic_torch_save
from .stages import pair_tokens, resolve_bf16

CHECKPOINT_FORMAT = "blurry_edges.training/1"


# ============================================================================ devices
def parse_device(spec: Optional[str]) -> torch.device:
    """``--cuda`` value → device. ``None``/``""``/``"auto"``: CUDA if available, else the CPU.

    Raises a ValueError that says what to pass instead when CUDA is asked for but missing.
    """
    if spec is None or spec == "" or spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise ValueError(f"--cuda {spec!r} is not a device; use 'cuda', 'cuda:N' or 'cpu'") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--cuda {spec} asked for a GPU but CUDA is not available here; pass --cuda cpu")
        index = 0 if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise ValueError(f"--cuda {spec}: only {torch.cuda.device_count()} CUDA device(s) visible")
        device = torch.device("cuda", index)
    elif device.type != "cpu":
        raise ValueError(f"--cuda {spec!r}: only CUDA devices and the CPU are supported")
    return device


# ============================================================================ distributed
@dataclass
class DistContext:
    """Where this process stands: rank, world size and its device."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def sum(self, values: Iterable[float]) -> list[float]:
        """All-reduce a few floats (float64) by summation; returned as Python floats."""
        t = torch.tensor(list(values), dtype=torch.float64, device=self._comm_device())
        if self.distributed:
            dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on some rank."""
        return self.sum([1.0 if flag else 0.0])[0] > 0

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def _comm_device(self) -> torch.device:
        return self.device if (self.distributed and self.device.type == "cuda") else torch.device("cpu")


def setup_distributed(device_spec: Optional[str]) -> DistContext:
    """Initialize the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1).

    GPUs: each process takes ``cuda:LOCAL_RANK`` and NCCL. CPU (``--cuda cpu`` or no GPU): gloo.
    A single process needs no process group.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = parse_device(device_spec)
    if world <= 1:
        return DistContext(device=device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s); "
                             "use --nproc_per_node ≤ the number of GPUs")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return DistContext(device=device, rank=rank, world_size=world, local_rank=local_rank)


def cleanup_distributed(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ============================================================================ seeds and RNG states
def set_seed(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices); cuDNN deterministic as the authors set it.

    With ``deterministic`` (the authors' choice for the global stage) deterministic algorithms are
    requested wherever PyTorch has them (``warn_only``: an op without one warns instead of stopping
    a long run) and cuBLAS gets the workspace setting that makes it reproducible.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def capture_rng(device: torch.device) -> dict[str, Any]:
    """The RNG states of this process in a form ``torch.load(weights_only=True)`` accepts."""
    kind, key, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": str(kind), "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


# ============================================================================ files


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
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

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
    fig, ax = plt.subplots(figsize=(8, 6))
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
    plt.close(fig)
    return npy, png


class EpochLog:
    """Text log in the authors' layout: the arguments, then one line per epoch
    (epoch, validation loss, scheduler patience, learning rate), then the best epoch."""

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
        self.write(f'{"Epoch":<10} {"Loss":<20} {"Scheduler patience":<20} {"Learning rate"}')

    def write(self, line: str) -> None:
        if self.fh is not None:
            print(line, file=self.fh, flush=True)

    def epoch(self, epoch: int, loss: float, patience: Any, lr: float) -> None:
        self.write(f"{epoch + 1:<10} {loss:<20.10f} {str(patience):<20} {lr:.4e}")

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


# ============================================================================ data movement
def to_device(batch: Any, device: torch.device) -> Any:
    """Move a (nested tuple/list of) tensor batch to ``device`` (non-blocking from pinned memory)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast for the networks' forward passes (losses are computed in float32)."""
    from .stages import autocast_context
    return autocast_context(device, enabled)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ============================================================================ the task and the loop
class Task:
    """One training: its model, objective, weight schedule and learning-rate policy.

    Subclasses set ``name`` (e.g. ``"exp_local_stage"``: the log is ``<name>_training.txt``, the
    curve ``loss_curve_<name>``) and ``weights_file`` (``best_run_<name>.pth``), build ``model``,
    and implement :meth:`loss`. The defaults implement nothing epoch-dependent.
    """

    name: str = "exp"
    weights_file: str = "best_run_exp.pth"
    model: nn.Module
    device: torch.device = torch.device("cpu")   # set by fit()
    bf16: bool = False                           # set by fit()
    channels_last: bool = False                  # set by fit(): convolutional models on the CPU

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The network's forward pass (under bf16 autocast when asked), output cast to float32.

        With ``channels_last`` (a convolutional model on the CPU, see :func:`fit`) 4-D inputs are
        passed in that memory format, which oneDNN's convolutions run 1.4–2× faster.
        """
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.bf16):
            out = model(x)
        return out.float()

    def schedule(self, epoch: float) -> Any:
        """Loss weights for training during ``epoch`` (0-based; fractional when
        ``schedule_per_step``)."""
        return None

    @property
    def schedule_per_step(self) -> bool:
        """Whether :func:`fit` asks for the weights every step (``epoch + step / steps``)."""
        return bool(getattr(getattr(self, "sched", None), "continuous", False))

    def final_schedule(self) -> Any:
        """Loss weights for validation."""
        return None

    def describe_schedule(self, weights: Any) -> dict[str, Any]:
        return {} if weights is None else plain(getattr(weights, "__dict__", weights))

    def loss(self, model: nn.Module, batch: Any, weights: Any, train: bool) -> torch.Tensor:
        raise NotImplementedError

    def make_scheduler(self, optimizer: torch.optim.Optimizer):
        return None

    def step_bytes(self, samples: int) -> Optional[int]:
        """Estimated peak memory of a training step over ``samples`` samples in one process
        (``blurry_edges.memory``); ``None``: no estimate, nothing is checked."""
        return None

    memory_advice: str = "lower --batch_size"

    def step_scheduler(self, epoch: int, val_loss: float, scheduler, optimizer) -> tuple[Any, float]:
        """Advance the LR scheduler after validation; return (patience, lr) for the log line."""
        return "-", optimizer.param_groups[0]["lr"]

    def meta(self) -> dict[str, Any]:
        """Recorded with the best weights and checked when resuming (R, stride, image size …)."""
        return {}


@dataclass
class LoopConfig:
    """Options of :func:`fit` (the scripts map their command line onto it)."""

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


def _loader(dataset: Dataset, batch: int, shuffle: bool, cfg: LoopConfig, ctx: DistContext) -> tuple[DataLoader, DistributedSampler]:
    sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle,
                                 seed=cfg.seed, drop_last=True)
    workers = cfg.num_workers if cfg.num_workers is not None else (4 if ctx.device.type == "cuda" else 0)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, drop_last=True,
                        num_workers=workers, pin_memory=ctx.device.type == "cuda",
                        persistent_workers=workers > 0)
    return loader, sampler


def _plan_memory(task: Task, local_batch: int, cfg: LoopConfig, ctx: DistContext):
    """Check the task's memory estimate before the first step; split the batch if needed.

    Processes on one machine share its memory, so each plans with its share of what is free.
    Returns ``None`` when the task has no estimate (or runs on a GPU, where the CPU's free memory
    says nothing). Raises ``MemoryError`` (with the estimate and what to change) when not even
    one sample per step fits.
    """
    from . import memory

    if ctx.device.type != "cpu" or task.step_bytes(1) is None:
        return None
    share = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size)))
    avail = memory.available_bytes() // share
    plan = memory.plan_batch(local_batch, task.step_bytes, task.name, task.memory_advice,
                             available=avail, allow_accumulation=cfg.allow_accumulation)
    if ctx.is_main:
        if plan.micro_batch < local_batch:
            print(f"memory: a step over {local_batch} sample(s) per process would need about "
                  f"{memory.fmt(task.step_bytes(local_batch))} of {memory.fmt(avail)} free per process; "
                  f"accumulating gradients over {plan.accumulation} micro-batches of {plan.micro_batch} "
                  f"(about {memory.fmt(plan.estimate)}; same global batch)")
        else:
            print(f"memory: about {memory.fmt(plan.estimate)} per process at peak "
                  f"({memory.fmt(avail)} free per process)")
    return plan


def _git_commit() -> Optional[str]:
    """The commit of the code that runs (``None`` outside a git checkout), for the weights' meta."""
    import subprocess
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def cosine_lr_factor(step: int, total: int, warmup_frac: float = 0.02, min_frac: float = 0.05) -> float:
    """Learning-rate factor of a compressed run (README "Training on a CPU"): a linear warm-up over the
    first ``warmup_frac`` of the ``total`` steps, then a cosine decay from 1 to ``min_frac`` at the
    last step. A short run ends on a small learning rate instead of the plateau policy's noisy
    full-size steps, which only start to shrink after many epochs."""
    total = max(1, int(total))
    warm = max(1, int(round(warmup_frac * total)))
    if step < warm:
        return (step + 1) / warm
    t = min(1.0, (step - warm) / max(1, total - 1 - warm))
    return min_frac + (1.0 - min_frac) * 0.5 * (1.0 + math.cos(math.pi * t))


def checkpoint_path(cfg: LoopConfig, task: Task) -> Path:
    return Path(cfg.checkpoint_dir) / f"{task.name}_last.pt"


def fit(task: Task, train_set: Dataset, val_set: Dataset, cfg: LoopConfig, ctx: DistContext) -> dict[str, Any]:
    """Train ``task.model`` with AdamW, gradient clipping and the task's schedules.

    Per epoch: set the epoch's loss weights, one pass over the shuffled training set (full global
    batches only), validation with the final weights (mean over full batches, all processes),
    the task's scheduler policy, best weights, log line, checkpoint, time check.

    Returns a dict with ``loss_curve``, ``best_loss``, ``best_epoch`` (0-based), ``epochs_done``,
    ``finished`` (False when ``max_minutes`` stopped it) and the output paths.
    """
    t_start = time.time()
    seconds_before = 0.0                # wall time of the earlier sessions of a resumed run
    device = ctx.device
    if cfg.batch_size % ctx.world_size:
        raise ValueError(f"--batch_size {cfg.batch_size} is the global batch and must be divisible by the "
                         f"number of processes ({ctx.world_size})")
    local_batch = cfg.batch_size // ctx.world_size
    for what, ds in (("training", train_set), ("validation", val_set)):
        if len(ds) // ctx.world_size < local_batch:
            raise ValueError(f"the {what} set has {len(ds)} samples, fewer than one batch of {cfg.batch_size}"
                             + (f" over {ctx.world_size} processes" if ctx.distributed else "")
                             + "; only full batches are used (as the authors do)")

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
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = task.make_scheduler(optimizer)

    if ctx.is_main:
        threads = torch.get_num_threads()
        print(f"{task.name}: {ctx.world_size} process(es) × {threads} thread(s) on {device}, "
              f"{'bf16 autocast' if cfg.bf16 else 'float32'}{', channels_last' if task.channels_last else ''}")
    ckpt_file = checkpoint_path(cfg, task)
    start_epoch, best_loss, best_epoch, curve = 0, math.inf, -1, []
    train_curve: list[float] = []       # mean training loss per epoch (the figure shows both curves)
    resumed = False
    if cfg.resume:
        if ckpt_file.is_file():
            ckpt = torch.load(ckpt_file, map_location="cpu", weights_only=True)
            _check_checkpoint(ckpt, ckpt_file, task, cfg)
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
        elif ctx.is_main:
            print(f"--resume: no checkpoint at {ckpt_file}; starting from scratch")

    plan = _plan_memory(task, local_batch, cfg, ctx)
    micro = plan.micro_batch if plan is not None else local_batch
    train_loader, train_sampler = _loader(train_set, local_batch, True, cfg, ctx)
    steps_per_epoch = len(train_loader)
    samples_per_epoch = steps_per_epoch * cfg.batch_size
    val_loader, _ = _loader(val_set, local_batch, False, cfg, ctx)

    log = EpochLog(Path(cfg.log_path) / f"{task.name}_training.txt", cfg.args,
                   start_epoch if resumed else None, enabled=ctx.is_main)
    weights_path = Path(cfg.model_path) / task.weights_file
    show = cfg.progress and ctx.is_main
    finished = start_epoch >= cfg.epochs
    if resumed and finished and best_epoch >= 0 and not weights_path.is_file():
        raise ValueError(f"--resume: {ckpt_file} records a finished run whose best weights should be {weights_path}, "
                         "but that file does not exist; nothing was trained. Start the run afresh (without --resume) "
                         "or pass the --model_path the run wrote to")
    last_epoch_seconds = 0.0

    epochs = tqdm(range(start_epoch, cfg.epochs), initial=start_epoch, total=cfg.epochs, disable=not show,
                  desc=task.name, unit="epoch", dynamic_ncols=True)
    for epoch in epochs:
        t_epoch = time.time()
        weights = task.schedule(epoch)
        train_sampler.set_epoch(epoch)
        model.train()
        steps = tqdm(train_loader, leave=False, disable=not show, desc=f"epoch {epoch + 1}", dynamic_ncols=True)
        n_steps = len(train_loader)
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
        log.epoch(epoch, val_loss, patience, lr)
        if val_loss < best_loss:
            best_loss, best_epoch = val_loss, epoch
            if ctx.is_main:
                meta = dict(task.meta(), epoch=epoch + 1, val_loss=float(val_loss), args=plain(cfg.args),
                            samples_seen=samples_per_epoch * (epoch + 1),
                            steps=steps_per_epoch * (epoch + 1), processes=ctx.world_size,
                            train_minutes=round((seconds_before + time.time() - t_start) / 60.0, 2),
                            commit=_git_commit())
                save_weights(unwrap(model), weights_path, meta=plain(meta))

        rng = ctx.gather(capture_rng(device))
        if ctx.is_main:
            atomic_torch_save({
                "format": CHECKPOINT_FORMAT,
                "name": task.name,
                "epoch": epoch + 1,                       # epochs finished = next epoch to run
                "model": unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "schedule": {"epoch": epoch, "weights": task.describe_schedule(weights)},
                "best_loss": float(best_loss),
                "best_epoch": int(best_epoch),
                "loss_curve": [float(v) for v in curve],
                "train_curve": [float(v) for v in train_curve],
                "rng": rng,
                "world_size": ctx.world_size,
                "batch_size": cfg.batch_size,
                "train_seconds": seconds_before + time.time() - t_start,
                "meta": plain(task.meta()),
                "args": plain(cfg.args),
            }, ckpt_file)
            Path(cfg.log_path).mkdir(parents=True, exist_ok=True)   # the curve so far (the PNG comes at the end)
            np.save(Path(cfg.log_path) / f"loss_curve_{task.name}.npy", np.asarray(curve, dtype=np.float64))
            np.save(Path(cfg.log_path) / f"loss_curve_{task.name}_train.npy", np.asarray(train_curve, dtype=np.float64))
        if show:
            epochs.set_postfix(val=f"{val_loss:.5g}", best=f"{best_loss:.5g}", refresh=False)

        last_epoch_seconds = time.time() - t_epoch
        if epoch + 1 >= cfg.epochs:
            finished = True
            break
        if cfg.max_minutes is not None:
            elapsed = time.time() - t_start
            over = elapsed + last_epoch_seconds > cfg.max_minutes * 60.0
            if ctx.any(over):
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


def _check_checkpoint(ckpt: dict, path: Path, task: Task, cfg: LoopConfig) -> None:
    if ckpt.get("format") != CHECKPOINT_FORMAT or ckpt.get("name") != task.name:
        raise ValueError(f"{path} is not a checkpoint of this training ({task.name}); "
                         f"remove it or pass another --checkpoint_dir")
    old, new = ckpt.get("meta", {}), plain(task.meta())
    for key in sorted(set(old) & set(new)):
        if old[key] != new[key]:
            raise ValueError(f"{path} was written with {key}={old[key]} but this run has {key}={new[key]}; "
                             "resume with the same settings, or pass another --checkpoint_dir")
    if ckpt.get("batch_size") != cfg.batch_size:
        raise ValueError(f"{path} was written with --batch_size {ckpt.get('batch_size')}, this run has "
                         f"{cfg.batch_size}; resume with the same batch size")
    from .runs import check_resume
    check_resume(ckpt.get("args", {}), cfg.args, path)


# ============================================================================ command line
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


def print_outputs(outputs: dict[str, Any], ctx: DistContext) -> None:
    """End-of-script summary: where everything went."""
    if not ctx.is_main:
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


# ============================================================================ the four trainings
class LocalTask(Task):
    """Local stage (SPEC §6): batches ``(noisy [B,R,R,3], clean [B,R,R,3], dist [B,R,R], deri [B,R−2,R−2,3])``.

    Colors are fitted to the clean patch in training and to the noisy one in validation (as the
    authors do). LR policy: ReduceLROnPlateau(min, factor 0.9, min_lr 0.1·lr) stepped on every
    validation loss, its patience then reset to ``2 + 3·⌊log2(epoch + 1)⌋``.
    """

    name = "exp_local_stage"
    weights_file = "best_run_exp_local_stage.pth"

    def __init__(self, R: int, camera=None, schedule=None, model: Optional[nn.Module] = None) -> None:
        from .losses import LocalLoss, LocalSchedule
        from .models import LocalStage
        from .wedges import WedgeRenderer

        self.R = R
        self.model = model if model is not None else LocalStage(R)
        if getattr(self.model, "R", R) != R:
            raise ValueError(f"local stage built for R={self.model.R}, task for R={R}")
        self.sched = schedule or LocalSchedule()
        self.criterion = LocalLoss(WedgeRenderer(R, camera))

    def schedule(self, epoch: int):
        return self.sched.at(epoch)

    def final_schedule(self):
        return self.sched.final()

    def loss(self, model, batch, weights, train):
        noisy, clean, bndry_dist, deri = batch[:4]
        noisy = noisy.permute(0, 3, 1, 2)
        clean = clean.permute(0, 3, 1, 2)
        raw = self.forward(model, noisy)
        return self.criterion(raw, clean if train else noisy, clean, bndry_dist, deri.permute(0, 3, 1, 2), weights)

    def make_scheduler(self, optimizer):
        lr = optimizer.param_groups[0]["lr"]
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, "min", factor=0.9, patience=2, min_lr=0.1 * lr)

    def step_scheduler(self, epoch, val_loss, scheduler, optimizer):
        scheduler.step(val_loss)
        scheduler.patience = 2 + 3 * ((epoch + 1).bit_length() - 1)   # 2 + 3·⌊log2(epoch + 1)⌋
        return scheduler.patience, optimizer.param_groups[0]["lr"]

    def meta(self):
        return {"stage": "local", "R": self.R}


class GlobalTask(Task):
    """Global stage (SPEC §6), sparse (``variant="sparse"``, the paper's) or W (``"w"``, our design).

    Batches: ``(params [B,2,P,19], noisy [B,2,H,W,3], clean [B,2,H,W,3], dist [B,H,W],
    deri [B,2,H−2,W−2,3], bndry_depth [B,H,W][, depth [B,H,W]])`` — the W variant needs the dense
    depth (``SceneDataset(..., with_depth=True)``). Shared colors are fitted to the clean pair in
    training and to the noisy pair in validation. LR policy: ReduceLROnPlateau(min, factor 0.975,
    patience 5, min_lr 0.5·lr) stepped only from epoch ``dynamic_epoch[1]`` on; the log shows the
    patience and learning rate of the epoch just trained (the authors log before stepping).
    """

    def __init__(self, grid, camera=None, schedule=None, variant: str = "sparse",
                 model: Optional[nn.Module] = None, crops=None) -> None:
        from .losses import GlobalLoss, GlobalSchedule
        from .models import GlobalStage
        from .wedges import WedgeRenderer

        if variant not in ("sparse", "w"):
            raise ValueError(f"unknown global-stage variant {variant!r}; use 'sparse' or 'w'")
        self.crops = crops            # a patches.CropLayout: train on crops of ``grid`` (CPU recipe)
        if crops is not None:
            if (crops.full.H, crops.full.W, crops.full.R, crops.full.stride) != (grid.H, grid.W, grid.R, grid.stride):
                raise ValueError(f"crops of {crops.full} do not belong to {grid}")
            self.full_grid, grid = grid, crops.grid
        else:
            self.full_grid = grid
        self.grid = grid
        self.variant = variant
        self.name = "exp_global_stage" if variant == "sparse" else "exp_global_stage_w"
        self.weights_file = f"best_run_{self.name}.pth"
        self.model = model if model is not None else GlobalStage(grid.Hp, grid.Wp, grid.stride)
        if (self.model.rows, self.model.cols, self.model.stride) != (grid.Hp, grid.Wp, grid.stride):
            raise ValueError(f"global stage built for a {self.model.rows}×{self.model.cols} grid, stride "
                             f"{self.model.stride}; the data needs {grid.Hp}×{grid.Wp}, stride {grid.stride}")
        self.sched = schedule or GlobalSchedule()
        self.criterion = GlobalLoss(WedgeRenderer(grid.R, camera), grid, mask_variant=variant)

    def schedule(self, epoch: int):
        return self.sched.at(epoch)

    def final_schedule(self):
        return self.sched.final()

    def loss(self, model, batch, weights, train):
        origin = None
        if self.crops is not None:                 # crop items end with their origin in the full grid
            if batch[-1].dim() != 2 or batch[-1].shape[-1] != 2:
                raise ValueError("training on crops needs the crop origins: pre-calculate with --crop_tokens")
            origin, batch = batch[-1], batch[:-1]
        params, noisy, clean, bndry_dist, deri, bndry_depth = batch[:6]
        if self.variant == "w":
            if len(batch) < 7:
                raise ValueError("the W variant needs dense depth maps: SceneDataset(..., with_depth=True)")
            target = batch[6]
        else:
            target = bndry_depth
        tokens = pair_tokens(params[:, 0], params[:, 1])                   # [B, P, 38] (image 1 first)
        with autocast(self.device, self.bf16):
            raw = model(tokens, origin).float()
        noisy = noisy.permute(0, 1, 4, 2, 3)
        clean = clean.permute(0, 1, 4, 2, 3)
        return self.criterion(raw, clean if train else noisy, clean, bndry_dist,
                              deri.permute(0, 1, 4, 2, 3), target, weights)

    def make_scheduler(self, optimizer):
        lr = optimizer.param_groups[0]["lr"]
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, "min", factor=0.975, patience=5, min_lr=0.5 * lr)

    def step_scheduler(self, epoch, val_loss, scheduler, optimizer):
        shown = (scheduler.patience, optimizer.param_groups[0]["lr"])
        if epoch >= self.sched.dynamic_epoch[1]:
            scheduler.step(val_loss)
        return shown

    def step_bytes(self, samples: int):
        from .memory import global_step_bytes
        attn = getattr(self.model, "attention_dropout", 0.1)
        return global_step_bytes(samples, self.grid.num_patches, attn)

    @property
    def memory_advice(self) -> str:
        return ("train on crops of the patch grid (global_data_pre_cal.py --crop_tokens 24, README 'Training "
                "on a CPU'), pass --attention_dropout 0 (memory-efficient attention), or lower --batch_size")

    def meta(self):
        g = self.full_grid
        meta = {"stage": "global" if self.variant == "sparse" else "global_w", "R": g.R, "stride": g.stride,
                "img_size": [g.H, g.W]}
        if self.crops is not None:
            meta["crop_tokens"] = self.crops.tokens
        return meta


class DepthCompletionTask(Task):
    """Depth-completion U-Net of "Ours-PP" (our design, ``the README section Training``).

    Batches ``(sparse [B,H,W], dense [B,H,W])`` in metres: the global stage's depth map (0 where no
    patch owns the pixel, the map the authors' test script feeds the U-Net) and the ground truth.
    Loss :func:`~blurry_edges.losses.depth_completion_loss` over the pixels with ground truth;
    training batches are randomly flipped (horizontally and vertically, input and target alike).
    LR policy: ReduceLROnPlateau(min, factor 0.5, patience 5, min_lr 0.01·lr) on every epoch.
    """

    name = "exp_depth_completion_pp"
    weights_file = "best_run_exp_depth_completion_pp.pth"

    def __init__(self, loss_kind: str = "l1", augment: bool = True, model: Optional[nn.Module] = None,
                 source: Optional[dict[str, Any]] = None) -> None:
        from .models import UNet

        self.model = model if model is not None else UNet(1, 1)
        self.loss_kind = loss_kind
        self.augment = augment
        self.source = dict(source or {})      # how its input maps were made (R, stride, global weights)

    def loss(self, model, batch, weights, train):
        from .losses import depth_completion_loss

        sparse, dense = batch[:2]
        x, y = sparse.unsqueeze(1), dense.unsqueeze(1)
        if train and self.augment:
            flips = torch.rand(2, x.shape[0]) < 0.5                      # drawn on the CPU: same on every device
            for dim, flip in ((-1, flips[0]), (-2, flips[1])):
                sel = flip.to(x.device)[:, None, None, None]
                x = torch.where(sel, x.flip(dim), x)
                y = torch.where(sel, y.flip(dim), y)
        pred = self.forward(model, x)
        return depth_completion_loss(pred, y, self.loss_kind)

    def make_scheduler(self, optimizer):
        lr = optimizer.param_groups[0]["lr"]
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, "min", factor=0.5, patience=5, min_lr=0.01 * lr)

    def step_scheduler(self, epoch, val_loss, scheduler, optimizer):
        scheduler.step(val_loss)
        return scheduler.patience, optimizer.param_groups[0]["lr"]

    def step_bytes(self, samples: int):
        from .memory import unet_step_bytes
        H, W = self.source.get("img_size", (147, 147))
        return unet_step_bytes(samples, int(H), int(W))

    def meta(self):
        return dict(self.source, stage="depth_completion", loss=self.loss_kind)


# ============================================================================ pre-calculations
@torch.no_grad()
def local_params_for_images(model: nn.Module, renderer, grid, images: torch.Tensor, *, chunk: int = 8192,
                            bf16: bool = False) -> torch.Tensor:
    """Global-stage input tokens of image pairs (SPEC §6, pre-calculation).

    Args:
        model: the local stage (eval mode) on the device of ``images``.
        images: ``[n, 2, H, W, 3]`` noisy pairs (counts / α), channel-last as stored.
    Returns:
        ``[n, 2, P, 19]`` float32: all patches of both images through the local stage, colors
        ridge-fitted on the noisy patches (``stages.local_features``).
    """
    from .stages import local_features

    n = images.shape[0]
    patches = grid.unfold(images.flatten(0, 1).permute(0, 3, 1, 2).float())      # [2n, P, 3, R, R]
    feats = local_features(model, renderer, patches.flatten(0, 1), chunk=chunk, bf16=bf16)
    return feats.view(n, 2, grid.num_patches, feats.shape[-1])


@torch.no_grad()
def global_depth_for_params(model: nn.Module, renderer, grid, params: torch.Tensor, *, bf16: bool = False,
                            mask_variant: str = "sparse") -> tuple[torch.Tensor, torch.Tensor]:
    """Depth and confidence maps of the global stage from pre-calculated tokens.

    Args:
        model: the global stage (eval mode) for ``grid``.
        params: ``[n, 2, P, 19]`` pre-calculated local-stage tokens.
    Returns:
        ``(depth [n, H, W], confidence [n, H, W])`` (Eqs. 19–20), not thresholded. Depth and
        ownership depend on geometry and η only, so no colors are fitted here.
    """
    from .wedges import decode_global, depth_patch, ownership_mask

    tokens = torch.cat([params[:, 0], params[:, 1]], dim=-1).float()
    with autocast(params.device, bf16):
        raw = model(tokens)
    geom, eta = decode_global(raw.float())
    mask = ownership_mask(renderer.distances(geom), mask_variant, renderer.delta)
    wedge_depth = renderer.camera.depth_from_etas(eta[..., 0, :], eta[..., 1, :], renderer.R)
    return grid.fold_depth(depth_patch(mask, wedge_depth), mask)


def check_weights_meta(meta: dict[str, Any], path: Any, **expected: Any) -> None:
    """Explained error when weights record another R / stride / image size than this run uses.

    (``models.load_weights`` checks the attributes a model has; the global stage has no ``R``, so
    the patch size its weights were trained with is checked here.)
    """
    for key, want in expected.items():
        have = meta.get(key)
        if have is None or want is None:
            continue
        if plain(have) != plain(want):
            raise ValueError(f"{path}: these weights were trained with {key}={have}, but this run uses "
                             f"{key}={want}; pass --{key} {have if not isinstance(have, list) else ' '.join(map(str, have))} "
                             "or weights trained for this setting")


# ============================================================================ settings shared with the data
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
