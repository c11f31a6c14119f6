"""The four trainings as :class:`Task` s: what :func:`~blurry_edges.train.loop.fit` trains and how.

A task owns its model, its objective (``loss``), its loss-weight schedule and its learning-rate
policy; ``fit`` owns everything common (optimizer, batches, validation, checkpoints).

* :class:`LocalTask` – the local stage (paper Sec. 3.4, Eq. 21; Sec. 4.1).
* :class:`GlobalTask` – the global stage (paper Sec. 3.4, Eq. 22), sparse (the paper's) or the W
  variant (our design, README "The W variant").
* :class:`DepthCompletionTask` – the depth-completion U-Net of "Ours-PP" (paper Sec. 4.4,
  Table 3; our design, README "Depth completion").
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ..features import autocast_context, pair_tokens
from .records import plain


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

        With ``channels_last`` (a convolutional model on the CPU, see :func:`~blurry_edges.train.loop.fit`) 4-D inputs are
        passed in that memory format, which oneDNN's convolutions run 1.4–2× faster.
        """
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_context(self.device, self.bf16):
            out = model(x)
        return out.float()

    def schedule(self, epoch: float) -> Any:
        """Loss weights for training during ``epoch`` (0-based; fractional when
        ``schedule_per_step``)."""
        return None

    @property
    def schedule_per_step(self) -> bool:
        """Whether ``fit`` asks for the weights every step (``epoch + step / steps``)."""
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


class LocalTask(Task):
    """Local stage (paper Sec. 3.4, Eq. 21): batches ``(noisy [B,R,R,3], clean [B,R,R,3], dist [B,R,R], deri [B,R−2,R−2,3])``.

    Colors are fitted to the clean patch in training and to the noisy one in validation (as the
    authors do). LR policy: ReduceLROnPlateau(min, factor 0.9, min_lr 0.1·lr) stepped on every
    validation loss, its patience then reset to ``2 + 3·⌊log2(epoch + 1)⌋``.
    """

    name = "exp_local_stage"
    weights_file = "best_run_exp_local_stage.pth"

    def __init__(self, R: int, camera=None, schedule=None, model: Optional[nn.Module] = None) -> None:
        from ..losses import LocalLoss, LocalSchedule
        from ..models import LocalStage
        from ..wedges import WedgeRenderer

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
        bndry_depth, image = batch[4:6] if len(batch) >= 6 else (None, None)
        noisy = noisy.permute(0, 3, 1, 2)
        clean = clean.permute(0, 3, 1, 2)
        raw = self.forward(model, noisy)
        return self.criterion(raw, clean if train else noisy, clean, bndry_dist, deri.permute(0, 3, 1, 2), weights,
                              bndry_depth, image)

    def make_scheduler(self, optimizer):
        lr = optimizer.param_groups[0]["lr"]
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, "min", factor=0.9, patience=2, min_lr=0.1 * lr)

    def step_scheduler(self, epoch, val_loss, scheduler, optimizer):
        scheduler.step(val_loss)
        scheduler.patience = 2 + 3 * ((epoch + 1).bit_length() - 1)   # 2 + 3·⌊log2(epoch + 1)⌋
        return scheduler.patience, optimizer.param_groups[0]["lr"]

    def meta(self):
        meta = {"stage": "local", "R": self.R}
        if self.sched.beta_blur > 0:            # the paper's objective keeps the paper's record
            meta["beta_blur"] = self.sched.beta_blur
        return meta


class GlobalTask(Task):
    """Global stage (paper Sec. 3.4, Eq. 22), sparse (``variant="sparse"``, the paper's) or W (``"w"``, our design).

    Batches: ``(params [B,2,P,19], noisy [B,2,H,W,3], clean [B,2,H,W,3], dist [B,H,W],
    deri [B,2,H−2,W−2,3], bndry_depth [B,H,W][, depth [B,H,W]])`` — the W variant needs the dense
    depth (``SceneDataset(..., with_depth=True)``). Shared colors are fitted to the clean pair in
    training and to the noisy pair in validation. LR policy: ReduceLROnPlateau(min, factor 0.975,
    patience 5, min_lr 0.5·lr) stepped only from epoch ``dynamic_epoch[1]`` on; the log shows the
    patience and learning rate of the epoch just trained (the authors log before stepping).
    ``local_weights_id``: :func:`~blurry_edges.models.weights_id` of the local stage that made the
    tokens (``global_data_pre_cal.py`` records it), kept in the weights' meta so that loading them
    beside other local weights says so (:func:`blurry_edges.runs.pairing_notes`).
    """

    def __init__(self, grid, camera=None, schedule=None, variant: str = "sparse",
                 model: Optional[nn.Module] = None, crops=None, beta_blur: float = 0.0,
                 local_weights_id: Optional[str] = None) -> None:
        from ..losses import GlobalLoss, GlobalSchedule
        from ..models import GlobalStage
        from ..wedges import WedgeRenderer

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
        self.local_weights_id = local_weights_id   # models.weights_id of the local stage behind the tokens
        self.name = "exp_global_stage" if variant == "sparse" else "exp_global_stage_w"
        self.weights_file = f"best_run_{self.name}.pth"
        self.model = model if model is not None else GlobalStage(grid.Hp, grid.Wp, grid.stride)
        if (self.model.rows, self.model.cols, self.model.stride) != (grid.Hp, grid.Wp, grid.stride):
            raise ValueError(f"global stage built for a {self.model.rows}×{self.model.cols} grid, stride "
                             f"{self.model.stride}; the data needs {grid.Hp}×{grid.Wp}, stride {grid.stride}")
        self.sched = schedule or GlobalSchedule()
        self.criterion = GlobalLoss(WedgeRenderer(grid.R, camera), grid, mask_variant=variant, beta_blur=beta_blur)

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
        with autocast_context(self.device, self.bf16):
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
        from ..memory import global_step_bytes
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
        if self.criterion.beta_blur > 0:        # the paper's objective keeps the paper's record
            meta["beta_blur"] = self.criterion.beta_blur
        if self.local_weights_id:               # checked when both are loaded (runs.pairing_notes)
            meta["local_weights_id"] = self.local_weights_id
        if getattr(self.model, "token_xy_bound", None) is not None:     # load_weights sets it back
            meta["token_xy_bound"] = self.model.token_xy_bound
        return meta


class DepthCompletionTask(Task):
    """Depth-completion U-Net of "Ours-PP" (paper Table 3; our design, README "Depth completion").

    Batches ``(sparse [B,h,w], dense [B,h,w])`` in metres: the global stage's depth map (0 where no
    patch owns the pixel, the map the authors' test script feeds the U-Net) and the ground truth,
    either whole images or crops of them (``h = w = CropLayout.size``, README "Training on a
    CPU"); the convolutional U-Net trained on crops runs on whole images at test time.
    Loss :func:`~blurry_edges.losses.depth_completion_loss` over the pixels with ground truth;
    training batches are randomly flipped (horizontally and vertically, input and target alike).
    LR policy: ReduceLROnPlateau(min, factor 0.5, patience 5, min_lr 0.01·lr) on every epoch.

    Args:
        source: how its input maps were made (R, stride, image size, ``crop_tokens``, …), recorded
            in the weights' meta and checked when resuming.
        map_size: ``(h, w)`` of the training maps, for the memory estimate (:meth:`step_bytes`).
    """

    name = "exp_depth_completion_pp"
    weights_file = "best_run_exp_depth_completion_pp.pth"

    def __init__(self, loss_kind: str = "l1", augment: bool = True, model: Optional[nn.Module] = None,
                 source: Optional[dict[str, Any]] = None, map_size: tuple[int, int] = (147, 147)) -> None:
        from ..models import UNet

        self.model = model if model is not None else UNet(1, 1)
        self.loss_kind = loss_kind
        self.augment = augment
        self.source = dict(source or {})
        self.map_size = (int(map_size[0]), int(map_size[1]))

    def loss(self, model, batch, weights, train):
        from ..losses import depth_completion_loss

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
        from ..memory import unet_step_bytes
        return unet_step_bytes(samples, *self.map_size)

    def meta(self):
        return dict(self.source, stage="depth_completion", loss=self.loss_kind)

