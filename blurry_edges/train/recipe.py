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


PASS_THROUGH_HUBER_DELTA = 1.0
"""Error of a raw output above which the pass-through loss grows linearly, not quadratically."""

def pass_through_targets(tokens: "torch.Tensor") -> "torch.Tensor":
    """The global-stage output that would repeat the local stage's estimates: ``[..., 38]`` tokens →
    ``[..., 12]`` raw outputs (README "Training on a CPU", pass-through warm start).

    Geometry is image 1's; η logits are image 1's and image 2's (``decode_global`` adds 0.5 to the
    raw η, the tokens carry ``e − 0.5``). The local stage runs on each image alone, so its wedge 1 in
    image 2 may be wedge 2 in image 1: image 2's η are swapped where its vertices lie nearer to image
    1's swapped than unswapped.

    The η logits are clamped to ``wedges.ETA_LOGIT_RANGE``, where ``η = 10^(2·erf(e) − 2)`` still
    changes: beyond it every logit decodes to the same η (1e-4 or 1 to within 0.2 %), yet a local
    stage may emit logits of −7 there (the stage-10 local stage did for 0.8 % of its wedges), whose
    error would count for more than that of the depth-bearing η of a batch.
    """
    import torch

    from ..wedges import ETA_LOGIT_RANGE

    t1, t2 = tokens[..., :19], tokens[..., 19:]
    v1, v2 = t1[..., 0:4].unflatten(-1, (2, 2)), t2[..., 0:4].unflatten(-1, (2, 2))
    straight = (v1 - v2).norm(dim=-1).sum(-1)
    crossed = (v1 - v2.flip(-2)).norm(dim=-1).sum(-1)
    e2 = torch.where((crossed < straight)[..., None], t2[..., 8:10].flip(-1), t2[..., 8:10])
    lo, hi = ETA_LOGIT_RANGE
    eta = torch.cat([t1[..., 8:10], e2], dim=-1).clamp(lo - 0.5, hi - 0.5)     # raw outputs carry e − 0.5
    return torch.cat([t1[..., 0:4], t1[..., 4:8], eta], dim=-1)


def pass_through_warm_start(model: "torch.nn.Module", dataset, steps: int, *, batch_size: int = 8,
                            lr: float = 1e-3, seed: int = 0, eta_weight: float = 1.0, log=print) -> list[float]:
    """Teach the global stage to repeat its input before the real objective starts: ``steps`` AdamW
    steps of the Huber loss (:data:`PASS_THROUGH_HUBER_DELTA`) between its raw output and
    :func:`pass_through_targets`, the four η outputs (the only ones that carry depth, Eq. 7)
    weighted by ``eta_weight``.

    Huber, not the squared error: a local stage trained from scratch places the vertex of 1–4 % of
    its patches far outside them (``xy/3`` up to ~40), and the squared error of those few outputs
    would pull harder than all other patches together; below the threshold the loss is half the
    squared error, so tokens without such outliers train as before. (On its own this did not make
    the stage-10 tokens trainable: see ``GlobalStage.token_xy_bound``.)

    No rendering: a step costs a forward and backward pass of the encoder only. Returns the loss of
    every step (the mean over processes). ``dataset`` items start with the ``[2, P, 19]`` tokens and,
    for crops, end with the ``[2]`` origin (``SceneDataset``).

    Under ``torch.distributed`` every process draws its own ``batch_size`` samples (give each a
    different ``seed``), gradients are averaged over processes and process 0's initial weights are
    broadcast first, so all processes end with the same weights and the effective batch is
    ``batch_size × world size``.
    """
    import torch
    import torch.distributed as dist

    if steps <= 0:
        return []
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world > 1:
        for prm in model.parameters():
            dist.broadcast(prm.data, 0)
    if not eta_weight > 0:
        raise ValueError(f"eta_weight {eta_weight}: must be > 0 (1 weighs the η outputs like the geometry)")
    g = torch.Generator().manual_seed(seed)
    weight = torch.ones(12)
    weight[8:12] = eta_weight
    weight *= 12 / weight.sum()                                          # eta_weight 1: the plain mean
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for step in range(steps):
        idx = torch.randint(len(dataset), (batch_size,), generator=g).tolist()
        items = [dataset[i] for i in idx]
        params = torch.stack([it[0] for it in items])                        # [B, 2, P, 19]
        last = items[0][-1]
        origin = torch.stack([it[-1] for it in items]) if last.dim() == 1 and last.numel() == 2 else None
        tokens = torch.cat([params[:, 0], params[:, 1]], dim=-1)             # [B, P, 38]
        if hasattr(model, "bound_tokens"):           # repeat what the network sees (GlobalStage.token_xy_bound)
            tokens = model.bound_tokens(tokens)
        err = torch.nn.functional.huber_loss(model(tokens, origin), pass_through_targets(tokens), reduction="none",
                                            delta=PASS_THROUGH_HUBER_DELTA)
        loss = (err * weight).mean()
        opt.zero_grad()
        loss.backward()
        if world > 1:
            flat = torch.cat([p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel())
                              for p in model.parameters()] + [loss.detach().reshape(1)])
            dist.all_reduce(flat)
            flat /= world
            offset = 0
            for p in model.parameters():
                n = p.numel()
                if p.grad is not None:
                    p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
                offset += n
            loss = flat[-1]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in opt.param_groups:
            group["lr"] = lr * cosine_lr_factor(step, steps)
        opt.step()
        losses.append(float(loss.detach()))
        if step == 0 or (step + 1) % max(1, steps // 10) == 0:
            log(f"pass-through warm start: step {step + 1}/{steps}, loss {losses[-1]:.5f}")
    return losses
