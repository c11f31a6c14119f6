"""Glue between the networks and the renderer, shared by pre-calculation, evaluation and inference.

* ``local_features``: noisy patches → local-stage parameters → ridge colors → the 19 global-stage
  input features per patch (the pre-calculation of SPEC §6 and the first half of inference).
* ``pair_tokens``: the features of both images side by side, one 38-value token per patch position.
"""
from __future__ import annotations

import contextlib

import torch

from .wedges import WedgeRenderer, decode_local, encode_global_input, eta_from_logit


def autocast_context(device: torch.device, bf16: bool):
    """bf16 autocast on ``device`` when asked, else a no-op context."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


@torch.no_grad()
def local_features(model: torch.nn.Module, renderer: WedgeRenderer, patches: torch.Tensor, *,
                   chunk: int = 8192, bf16: bool = False) -> torch.Tensor:
    """Run the local stage on patches and encode its estimates for the global stage.

    Args:
        model: a ``LocalStage`` in eval mode.
        patches: ``[M, 3, R, R]`` noisy patches (photon counts / α).
        chunk: patches per forward pass (bounds memory).
        bf16: run the network under bf16 autocast (the color fit stays in float32).
    Returns:
        ``[M, 19]`` float32 features (see ``encode_global_input``); colors are fitted on the noisy patches.
    """
    out = []
    for start in range(0, patches.shape[0], chunk):
        x = patches[start:start + chunk].float()
        with autocast_context(x.device, bf16):
            raw = model(x)
        geom, e = decode_local(raw.float())
        _, colors, _, _ = renderer.render_single(geom, eta_from_logit(e), x)
        out.append(encode_global_input(geom, e, colors))
    return torch.cat(out, dim=0)


def pair_tokens(feat1: torch.Tensor, feat2: torch.Tensor) -> torch.Tensor:
    """Tokens of the global stage: ``[..., P, 19]`` twice → ``[..., P, 38]`` (image 1 first)."""
    return torch.cat([feat1, feat2], dim=-1)
