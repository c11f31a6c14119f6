"""Glue between the networks and the renderer, shared by pre-calculation, evaluation and inference.

* ``local_features``: noisy patches → local-stage parameters → ridge colors → the 19 global-stage
  input features per patch (the pre-calculation of SPEC §6 and the first half of inference).
* ``pair_tokens``: the features of both images side by side, one 38-value token per patch position.
"""
from __future__ import annotations

import contextlib

import torch

from .wedges import WedgeRenderer, decode_local, encode_global_input, eta_from_logit


BF16_CHOICES = ("auto", "on", "off")


def native_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512_BF16 or AMX, as oneDNN reports it).

    Without it PyTorch emulates bf16 on the CPU, which is slower than float32.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_bf16(spec: "str | bool | None", device: torch.device) -> bool:
    """``--bf16 {auto,on,off}`` → whether the networks run under bf16 autocast on ``device``.

    ``auto`` (the default) turns bf16 on only on a CPU with native bf16 (:func:`native_bf16`): there
    it is 2–3× faster than float32; on an emulating CPU it is slower, and on a GPU the paper's float32
    is kept. ``on``/``off`` (also ``True``/``False``) force it.
    """
    if isinstance(spec, bool):
        return spec
    spec = "auto" if spec is None else str(spec).lower()
    if spec not in BF16_CHOICES:
        raise ValueError(f"--bf16 {spec!r}: use one of {', '.join(BF16_CHOICES)}")
    if spec == "auto":
        return torch.device(device).type == "cpu" and native_bf16()
    return spec == "on"


def autocast_context(device: torch.device, bf16: bool):
    """bf16 autocast on ``device`` when asked, else a no-op context."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def uses_channels_last(model: torch.nn.Module) -> bool:
    """True when the model's convolutions hold channels_last weights (then feed it channels_last
    inputs: on the CPU oneDNN runs them 1.4–2× faster, README "Training on a CPU")."""
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1:
            w = m.weight
            return w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    return False


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
    memory_format = torch.channels_last if uses_channels_last(model) else torch.contiguous_format
    for start in range(0, patches.shape[0], chunk):
        x = patches[start:start + chunk].float().contiguous(memory_format=memory_format)
        with autocast_context(x.device, bf16):
            raw = model(x)
        geom, e = decode_local(raw.float())
        _, colors, _, _ = renderer.render_single(geom, eta_from_logit(e), x)
        out.append(encode_global_input(geom, e, colors))
    return torch.cat(out, dim=0)


def pair_tokens(feat1: torch.Tensor, feat2: torch.Tensor) -> torch.Tensor:
    """Tokens of the global stage: ``[..., P, 19]`` twice → ``[..., P, 38]`` (image 1 first)."""
    return torch.cat([feat1, feat2], dim=-1)
