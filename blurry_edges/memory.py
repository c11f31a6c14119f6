"""Peak-memory estimates of the training steps, checked before the first step (README "Training on a CPU").

A training that the out-of-memory killer stops loses everything since its last checkpoint and says
nothing useful. So every training estimates its peak from the sizes it is about to use, compares it
with the memory this machine has free, and then either runs as asked, lowers the peak without
changing what is computed (gradient accumulation over micro-batches that keep the global batch),
or refuses up front with the estimate and the options that would fit.

The models are linear in what they count and calibrated on a CPU (torch 2.13, float32, one
process; ``python benchmarks/bench_recipe.py --memory`` re-measures them):

* global stage, per image pair: ``T`` tokens cost ≈ 0.6 MB each (renderer, loss maps, encoder
  activations), and with dropout on the attention weights PyTorch's math attention keeps
  ≈ 100 bytes per layer for every one of the ``T²`` token pairs (no memory-efficient kernel
  supports that dropout on the CPU): 15.8 GB for one 147×147 pair (T = 4096), 0.35 GB for a
  24×24-token crop without attention dropout;
* U-Net, per image: ≈ 11 kB per pixel (activations of the 64…1024-channel levels and their
  gradients);
* pre-calculation: the local stage in inference on ``chunk`` patches plus the patches and tokens
  of the scenes in flight (small).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

GB = 1024 ** 3
MB = 1024 ** 2

#: Fixed cost of a training process (PyTorch, oneDNN buffers, the model and optimizer state).
BASE_BYTES = 400 * MB
#: Global stage: bytes per token of one pair, and per token pair per layer with attention dropout.
GLOBAL_BYTES_PER_TOKEN = 0.6 * MB
GLOBAL_ATTN_BYTES_PER_PAIR_PER_LAYER = 100.0
#: U-Net: bytes per pixel of one training image (forward activations kept for backward + gradients).
UNET_BYTES_PER_PIXEL = 11 * 1024
#: Fraction of the available memory a run may plan to use (the rest: page cache, other processes).
SAFETY = 0.8


def available_bytes() -> int:
    """Memory this process can still use: ``MemAvailable`` (Linux), else the physical total."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def global_step_bytes(pairs: int, tokens: int, attention_dropout: float, layers: int = 8) -> int:
    """Estimated peak of one global-stage training step over ``pairs`` image pairs of ``tokens``
    tokens each (one process)."""
    per_pair = tokens * GLOBAL_BYTES_PER_TOKEN
    if attention_dropout > 0:
        per_pair += layers * tokens * tokens * GLOBAL_ATTN_BYTES_PER_PAIR_PER_LAYER
    return int(BASE_BYTES + pairs * per_pair)


def unet_step_bytes(images: int, H: int, W: int) -> int:
    """Estimated peak of one U-Net training step over ``images`` maps of ``H×W`` pixels."""
    return int(BASE_BYTES + images * H * W * UNET_BYTES_PER_PIXEL)


def precal_bytes(chunk: int, R: int, scenes: int, patches_per_image: int) -> int:
    """Estimated peak of the pre-calculation: the local stage on ``chunk`` patches (its widest
    activation is 384 channels at a quarter of ``R×R``) and the scenes' patches and tokens."""
    network = chunk * 4 * (64 * R * R * 3 + 384 * ((R + 3) // 4) ** 2 * 4)
    data = scenes * 2 * patches_per_image * 4 * (3 * R * R + 19)
    return int(BASE_BYTES + network + data)


@dataclass(frozen=True)
class MemoryPlan:
    """How a step will run: ``micro_batch`` samples at a time (= the batch when it fits)."""

    batch: int
    micro_batch: int
    estimate: int          # bytes at micro_batch
    available: int

    @property
    def accumulation(self) -> int:
        return self.batch // self.micro_batch


def fmt(n: float) -> str:
    return f"{n / GB:.1f} GB"


def plan_batch(batch: int, estimate, what: str, advice: str, available: Optional[int] = None,
               allow_accumulation: bool = True) -> MemoryPlan:
    """Choose how to run a (per-process) ``batch`` within the free memory.

    Args:
        estimate: ``estimate(n)`` → bytes of a step over ``n`` samples.
        what: the run, for messages (e.g. ``"global stage, 64×64 tokens"``).
        advice: what the user can change when even one sample does not fit.
        available: bytes free (default: :func:`available_bytes`); 0 or less skips the check.
        allow_accumulation: whether the batch may be split into micro-batches.
    Returns:
        the plan: the whole batch when it fits, else the largest divisor of ``batch`` that does
        (gradients accumulated over ``batch / micro_batch`` micro-batches).
    Raises:
        MemoryError: with the estimate and ``advice`` when no split fits.
    """
    avail = available_bytes() if available is None else int(available)
    full = estimate(batch)
    if avail <= 0 or full <= SAFETY * avail:
        return MemoryPlan(batch, batch, full, avail)
    if allow_accumulation:
        for micro in sorted((d for d in range(1, batch) if batch % d == 0), reverse=True):
            if estimate(micro) <= SAFETY * avail:
                return MemoryPlan(batch, micro, estimate(micro), avail)
    smallest = estimate(1)
    raise MemoryError(
        f"{what}: a training step over {batch} sample(s) per process needs about {fmt(full)} "
        f"(one sample: {fmt(smallest)}), but only {fmt(avail)} is free (a run plans with "
        f"{int(SAFETY * 100)} % of it); {advice}")


def plan_for_process(task, local_batch: int, allow_accumulation: bool, device, world_size: int,
                     is_main: bool) -> Optional[MemoryPlan]:
    """Check a training task's memory estimate before the first step; split the batch if needed.

    Processes on one machine share its memory, so each plans with its share of what is free.
    Returns ``None`` when the task has no estimate (or runs on a GPU, where the CPU's free memory
    says nothing). Raises ``MemoryError`` (with the estimate and what to change) when not even
    one sample per step fits.
    """
    if device.type != "cpu" or task.step_bytes(1) is None:
        return None
    share = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
    avail = available_bytes() // share
    plan = plan_batch(local_batch, task.step_bytes, task.name, task.memory_advice,
                      available=avail, allow_accumulation=allow_accumulation)
    if is_main:
        if plan.micro_batch < local_batch:
            print(f"memory: a step over {local_batch} sample(s) per process would need about "
                  f"{fmt(task.step_bytes(local_batch))} of {fmt(avail)} free per process; "
                  f"accumulating gradients over {plan.accumulation} micro-batches of {plan.micro_batch} "
                  f"(about {fmt(plan.estimate)}; same global batch)")
        else:
            print(f"memory: about {fmt(plan.estimate)} per process at peak "
                  f"({fmt(avail)} free per process)")
    return plan
