"""Training: the loop, its processes, its tasks.

* :mod:`~blurry_edges.train.loop` – :func:`fit` and :class:`LoopConfig` (the epoch, the step,
  validation, the checkpoint, in one place).
* :mod:`~blurry_edges.train.tasks` – :class:`Task` and the four trainings (local, global sparse/W,
  depth completion).
* :mod:`~blurry_edges.train.dist` – devices, several processes (DDP), seeds and RNG states.
* :mod:`~blurry_edges.train.records` – the text log, the loss curve, the checkpoint file.
* :mod:`~blurry_edges.train.recipe` – the CPU recipe's cosine learning-rate schedule.

The network-output ↔ token glue and the pre-calculation live in :mod:`blurry_edges.features`,
the scripts' options in :mod:`blurry_edges.cli`.
"""
from .dist import (DistContext, capture_rng, cleanup_distributed, parse_device, restore_rng, set_seed,
                   setup_distributed, to_device, unwrap)
from .loop import LoopConfig, evaluate, fit
from .recipe import cosine_lr_factor
from .records import EpochLog, plain, print_outputs, save_loss_curve
from .tasks import DepthCompletionTask, GlobalTask, LocalTask, Task

__all__ = ["DistContext", "capture_rng", "cleanup_distributed", "parse_device", "restore_rng", "set_seed",
           "setup_distributed", "to_device", "unwrap", "LoopConfig", "evaluate", "fit", "cosine_lr_factor",
           "EpochLog", "plain", "print_outputs", "save_loss_curve", "DepthCompletionTask", "GlobalTask",
           "LocalTask", "Task"]
