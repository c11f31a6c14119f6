"""Processes, devices and randomness of a training run.

* **Devices** – ``--cuda`` takes ``cuda``, ``cuda:N`` or ``cpu`` and defaults to CUDA when
  present (:func:`parse_device`). Datasets live on the CPU; a batch moves to the device when it
  is used (:func:`to_device`: pinned memory and non-blocking copies on CUDA).
* **Several processes** – under ``torchrun --nproc_per_node N`` the training scripts run with
  DistributedDataParallel (NCCL on GPUs, gloo on the CPU, :func:`setup_distributed`).
  ``--batch_size`` stays the *global* batch (the authors' 64 / 8, paper Sec. 4.1), split evenly over
  the processes, so the loss curve means the same thing with any number of GPUs.
* **Reproducibility** – :func:`set_seed` (the authors' seeds, optional deterministic algorithms);
  :func:`capture_rng` / :func:`restore_rng` carry every RNG state through a checkpoint, so a resumed
  run draws what an uninterrupted one would.
"""
from __future__ import annotations

import datetime
import os
import random
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


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



def to_device(batch: Any, device: torch.device) -> Any:
    """Move a (nested tuple/list of) tensor batch to ``device`` (non-blocking from pinned memory)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch



def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model

