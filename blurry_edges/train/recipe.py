"""The CPU recipe's learning-rate schedule (README "Training on a CPU").

The recipe's other parts live where they act: crops of the patch grid (``patches.CropLayout``,
``GlobalTask(crops=...)``), compressed loss-weight schedules (``losses.GlobalSchedule.compressed``)
and gradient accumulation (``memory.plan_batch``).
"""
from __future__ import annotations

import math


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
