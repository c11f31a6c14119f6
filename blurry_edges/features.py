"""Network outputs ↔ tokens: the glue between the networks and the renderer.

Shared by the pre-calculation of the global stage's training data, evaluation and inference:

* :func:`local_features`: noisy patches → local-stage outputs → ridge colors (Eq. 14) → the 19
  global-stage input features per patch (paper Sec. 3.3, the local stage's output Ψ±).
* :func:`pair_tokens`: the features of both images side by side, one 38-value token per patch
  position (the global stage's input, Sec. 3.3).
* :func:`local_params_for_images`: every patch of stored image pairs through :func:`local_features`
  (the pre-calculation of ``global_data_pre_cal.py``, README "Training").
* :func:`global_depth_maps`: pre-calculated tokens (of whole images or of crops of their patch
  grid) → the global stage → depth and confidence maps (Eqs. 19–20), the depth-completion U-Net's
  training inputs; the same derivation as the pipeline's ``depth_raw`` (``WedgeRenderer.pair_depth``).
* :func:`resolve_bf16`, :func:`autocast_context`: the one bf16 policy of every forward pass;
  :func:`precision_record`: what it resolved to, for the summaries of evaluation and inference.
* :func:`uses_channels_last`, :func:`channels_last_copy`: the memory format of convolutional networks.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Callable, Optional

import torch

from .wedges import WedgeRenderer, decode_global, decode_local, encode_global_input, eta_from_logit


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


def precision_record(requested: "str | bool | None", bf16: bool) -> dict:
    """What a run's networks computed in, for ``summary.json`` / ``settings.json``: the ``--bf16``
    value asked for (``auto``/``on``/``off``), what it resolved to on this machine (:func:`resolve_bf16`)
    and whether this CPU has native bf16 (what ``auto`` decides by on a CPU)."""
    if isinstance(requested, bool):
        requested = "on" if requested else "off"
    elif requested is None:
        requested = "auto"
    return {"bf16_requested": requested, "bf16": bool(bf16),
            "networks": "bf16 autocast" if bf16 else "float32", "cpu_native_bf16": native_bf16()}


def autocast_context(device: torch.device, bf16: bool):
    """bf16 autocast on ``device`` when asked, else a no-op context."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def uses_channels_last(model: torch.nn.Module) -> bool:
    """True when the model's convolutions hold channels_last weights (then feed it channels_last
    inputs: on the CPU oneDNN runs them 1.4–2× faster, README "Training on a CPU"). Decided by the
    first spatial convolution whose weight's format is unambiguous (one with a single input channel,
    like the U-Net's first, is contiguous in both formats)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1:
            w = m.weight
            channels_last, contiguous = w.is_contiguous(memory_format=torch.channels_last), w.is_contiguous()
            if channels_last != contiguous:
                return channels_last
    return False


def channels_last_copy(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with channels_last convolution weights: ``model`` itself when it already has them
    or has no spatial convolution, else a converted deep copy (the caller's module is left as it is,
    so a float32 pipeline sharing it keeps its numbers)."""
    spatial = any(isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1 for m in model.modules())
    if not spatial or uses_channels_last(model):
        return model
    return copy.deepcopy(model).to(memory_format=torch.channels_last)


@torch.no_grad()
def local_outputs(model: torch.nn.Module, patches: torch.Tensor, *, chunk: int = 8192,
                  bf16: bool = False) -> torch.Tensor:
    """The local stage's raw outputs: ``[M, 3, R, R]`` patches → ``[M, 10]`` float32, ``chunk``
    patches per forward pass (bounds memory), in the model's memory format, under bf16 autocast
    when asked."""
    out = []
    memory_format = torch.channels_last if uses_channels_last(model) else torch.contiguous_format
    for start in range(0, patches.shape[0], chunk):
        x = patches[start:start + chunk].float().contiguous(memory_format=memory_format)
        with autocast_context(x.device, bf16):
            out.append(model(x).float())
    return torch.cat(out, dim=0)


def encode_local(renderer: WedgeRenderer, raw: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """Raw local-stage outputs ``[M, 10]`` → the global stage's ``[M, 19]`` input features, colors
    ridge-fitted (Eq. 14, float32) on ``patches`` ``[M, 3, R, R]`` (see ``encode_global_input``)."""
    geom, e = decode_local(raw)
    _, colors, _, _ = renderer.render_single(geom, eta_from_logit(e), patches.float())
    return encode_global_input(geom, e, colors)


@torch.no_grad()
def local_features(model: torch.nn.Module, renderer: WedgeRenderer, patches: torch.Tensor, *,
                   chunk: int = 8192, bf16: bool = False,
                   progress: Optional[Callable[[int], object]] = None) -> torch.Tensor:
    """Run the local stage on patches and encode its estimates for the global stage.

    Args:
        model: a ``LocalStage`` in eval mode.
        patches: ``[M, 3, R, R]`` noisy patches (photon counts / α).
        chunk: patches per forward pass (bounds memory).
        bf16: run the network under bf16 autocast (the color fit stays in float32).
        progress: called with the number of patches of each finished chunk (e.g. ``tqdm.update``).
    Returns:
        ``[M, 19]`` float32 features (:func:`local_outputs`, then :func:`encode_local`); colors are
        fitted on the noisy patches, chunk by chunk.
    """
    out = []
    memory_format = torch.channels_last if uses_channels_last(model) else torch.contiguous_format
    for start in range(0, patches.shape[0], chunk):
        x = patches[start:start + chunk].float().contiguous(memory_format=memory_format)
        out.append(encode_local(renderer, local_outputs(model, x, chunk=chunk, bf16=bf16), x))
        if progress is not None:
            progress(x.shape[0])
    return torch.cat(out, dim=0)


def pair_tokens(feat1: torch.Tensor, feat2: torch.Tensor) -> torch.Tensor:
    """Tokens of the global stage: ``[..., P, 19]`` twice → ``[..., P, 38]`` (image 1 first)."""
    return torch.cat([feat1, feat2], dim=-1)


@torch.no_grad()
def local_params_for_images(model: torch.nn.Module, renderer: WedgeRenderer, grid, images: torch.Tensor, *,
                            chunk: int = 8192, bf16: bool = False) -> torch.Tensor:
    """Global-stage input features of stored image pairs (the pre-calculation, README "Training").

    Args:
        model: the local stage (eval mode) on the device of ``images``.
        grid: the ``PatchGrid`` of the images.
        images: ``[n, 2, H, W, 3]`` noisy pairs (counts / α), channel-last as stored.
    Returns:
        ``[n, 2, P, 19]`` float32: all patches of both images through the local stage, colors
        ridge-fitted on the noisy patches (:func:`local_features`).
    """
    n = images.shape[0]
    patches = grid.unfold(images.flatten(0, 1).permute(0, 3, 1, 2).float())      # [2n, P, 3, R, R]
    feats = local_features(model, renderer, patches.flatten(0, 1), chunk=chunk, bf16=bf16)
    return feats.view(n, 2, grid.num_patches, feats.shape[-1])


@torch.no_grad()
def global_depth_maps(model: torch.nn.Module, renderer: WedgeRenderer, grid, params: torch.Tensor, *,
                      bf16: bool = False, mask_variant: str = "sparse",
                      origin: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth and confidence maps of the global stage from pre-calculated features.

    Args:
        model: the global stage (eval mode) for ``grid``.
        grid: the ``PatchGrid`` the tokens were cut from: the whole image's, or one crop's
            (``CropLayout.grid``, the CPU recipe of README "Training on a CPU").
        params: ``[n, 2, P, 19]`` pre-calculated local-stage features (:func:`local_params_for_images`).
        origin: for crops, ``[n, 2]`` (token row, column) of each crop's first token in the full
            grid: the global stage gives the tokens the positional codes of that place
            (``GlobalStage.forward``). ``None``: the tokens are ``grid``'s own.
    Returns:
        ``(depth [n, H, W], confidence [n, H, W])`` over ``grid``'s pixels (Eqs. 19–20), not
        thresholded: the pipeline's ``depth_raw`` and ``confidence``. Depth and ownership depend on
        geometry and η only, so no colors are fitted here (``WedgeRenderer.pair_depth``). A crop's
        maps fold only the crop's patches.
    """
    tokens = pair_tokens(params[:, 0], params[:, 1]).float()                   # [n, P, 38]
    with autocast_context(params.device, bf16):
        raw = model(tokens) if origin is None else model(tokens, origin.to(params.device))
    geom, eta = decode_global(raw.float())
    mask, _, depth = renderer.pair_depth(renderer.distances(geom), eta, mask_variant)
    return grid.fold_depth(depth, mask)
