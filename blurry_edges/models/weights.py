"""Loading and saving network weights, compatible with the authors' released ``.pth`` files.

Two on-disk layouts are read:

* a raw state dict (what the authors publish: ``torch.save(model.state_dict(), path)``);
* our checkpoint ``{"model": state_dict, "meta": {...}}`` written by :func:`save_weights`, where
  ``meta`` records e.g. the patch size ``R`` or the patch ``stride`` the weights were trained with.

Loading is strict and explains itself: a missing file, a file for another network, or weights
trained with another patch size each raise an error naming the file and what to do about it.
Files are read with ``torch.load(..., weights_only=True)``, so no pickled code is ever executed.
"""
from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

__all__ = ["WEIGHT_DIR", "WEIGHT_FILES", "load_weights", "save_weights", "weights_id"]

PathLike = Union[str, os.PathLike]

#: Default folder for pretrained weights, relative to the repository root / working directory.
WEIGHT_DIR = Path("pretrained_weights")

#: The authors' file names: local stage, global stage (sparse and "W" dense-mask variant), and the
#: depth-completion U-Net of "Ours-PP".
WEIGHT_FILES: dict[str, str] = {
    "local": "pretrained_local_stage.pth",
    "global": "pretrained_global_stage.pth",
    "global_w": "pretrained_global_stage_w.pth",
    "pp": "pretrained_depth_completion_pp.pth",
}

# Model attributes that change what the weights mean; checked against a checkpoint's "meta".
_CHECKED_META = ("R", "stride")
# Settings that belong to the weights: the model takes them from the file's meta (absent: None).
_ADOPTED_META = ("token_xy_bound",)
# Prefixes added by wrappers (DistributedDataParallel, torch.compile); stripped when loading.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# A parameter that identifies which network a state dict belongs to.
_SIGNATURES = {
    "layer0.0.conv1.0.weight": f"the local stage ({WEIGHT_FILES['local']})",
    "in_src_projection.weight": f"the global stage ({WEIGHT_FILES['global']} / {WEIGHT_FILES['global_w']})",
    "inc.double_conv.0.weight": f"the depth-completion U-Net ({WEIGHT_FILES['pp']})",
}


def _describe(model: nn.Module, what: str) -> str:
    return what or type(model).__name__


def _strip_wrapper_prefix(state: dict[str, Any]) -> dict[str, Any]:
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _not_weights_message(path: Path, err: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused ``path``, without PyTorch's advice to retry
    with ``weights_only=False`` (which would run whatever code the file carries)."""
    text = str(err)
    if "Weights only load failed" in text or "Unsupported global" in text:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        what = f" ({found.group(1)})" if found else ""
        return (f"{path} is not a weight file: it holds pickled Python objects{what} besides tensors, which "
                "neither this project nor the authors write. It is not loaded (unpickling would run code from "
                "the file); give the .pth file of the network's weights instead")
    return (f"{path} is not a PyTorch weight file (torch.load could not read it: "
            f"{type(err).__name__}); give the .pth file of the network's weights, or download it again "
            "if it is truncated")


def _read(path: Path, map_location: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read ``path`` and return (state dict, meta); meta is empty for a raw state dict."""
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch.load reports corrupt/foreign files with assorted error types
        raise ValueError(_not_weights_message(path, err)) from None
    meta: dict[str, Any] = {}
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        meta = dict(obj.get("meta") or {})
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise ValueError(
            f"{path} holds neither a state dict nor a {{'model': state_dict, 'meta': ...}} checkpoint"
        )
    return _strip_wrapper_prefix(dict(obj)), meta


def _whose(keys) -> str:
    for key, owner in _SIGNATURES.items():
        if key in keys:
            return f" The file looks like weights for {owner}."
    return ""


def _shape_hint(model: nn.Module, key: str, found: tuple[int, ...]) -> str:
    """Explain a shape mismatch where we can; LocalStage's fc input size depends on R."""
    feature_size = getattr(type(model), "feature_size", None)
    if key == "fc.1.weight" and hasattr(model, "R") and callable(feature_size) and len(found) == 2:
        k = math.isqrt(found[1] // 256)
        candidates = [r for r in range(7, 200, 2) if k * k * 256 == found[1] and feature_size(r) == k]
        which = f" (a {k}×{k} feature map: R between {candidates[0]} and {candidates[-1]})" if candidates else ""
        return (
            f"these weights were trained with another patch size R{which}, but this model has "
            f"R={model.R}; pass --R matching the weights"
        )
    return "the file was made for a differently configured network; check the model's options"


def load_weights(
    model: nn.Module, path: PathLike, *, map_location: Any = "cpu", what: str = ""
) -> dict[str, Any]:
    """Load weights from ``path`` into ``model`` strictly, with errors that say what went wrong.

    Args:
        model: the network to fill (LocalStage, GlobalStage, UNet, ...).
        path: a raw state dict (the authors' files) or a :func:`save_weights` checkpoint.
        map_location: passed to ``torch.load``.
        what: a human name for the model used in messages (e.g. ``"local stage"``).

    Returns:
        The checkpoint's ``meta`` dict (empty for a raw state dict). Settings that belong to the
        weights (``token_xy_bound`` of a global stage) are set on ``model`` from it.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message says where weights belong).
        ValueError: unreadable file; ``meta`` R/stride differ from the model's; missing or
            unexpected tensors; or a tensor whose shape differs (naming tensor, both shapes and a hint).
    """
    path = Path(path)
    name = _describe(model, what)
    if not path.is_file():
        raise FileNotFoundError(
            f"weights for the {name} not found: {path}. Download the authors' pretrained weights "
            f"(see README) into {WEIGHT_DIR}/ (files: {', '.join(WEIGHT_FILES.values())}), or pass "
            "the path to your own trained weights."
        )
    state, meta = _read(path, map_location)

    for attr in _CHECKED_META:
        if attr in meta and hasattr(model, attr) and meta[attr] != getattr(model, attr):
            raise ValueError(
                f"{path}: these weights were saved for {attr}={meta[attr]} but the {name} was built "
                f"with {attr}={getattr(model, attr)}; pass --{attr} {meta[attr]} to use them"
            )

    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        def listing(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "")

        parts = []
        if missing:
            parts.append(f"missing tensors: {listing(missing)}")
        if unexpected:
            parts.append(f"unexpected tensors: {listing(unexpected)}")
        raise ValueError(
            f"{path} does not fit the {name}: {'; '.join(parts)}.{_whose(state)} "
            "Check that the file belongs to this network (see WEIGHT_FILES)."
        )

    for key, target in expected.items():
        found = tuple(state[key].shape)
        if found != tuple(target.shape):
            raise ValueError(
                f"{path}: tensor {key!r} has shape {found} in the file but the {name} expects "
                f"{tuple(target.shape)}; {_shape_hint(model, key, found)}"
            )

    # fp16 files are cast back to the model's dtype (load_state_dict would copy-cast anyway;
    # doing it here keeps the intent explicit and avoids fp16 arithmetic on the CPU).
    state = {
        k: v.to(expected[k].dtype) if v.is_floating_point() and expected[k].is_floating_point() else v
        for k, v in state.items()
    }
    model.load_state_dict(state, strict=True)
    for attr in _ADOPTED_META:
        if hasattr(model, attr):
            setattr(model, attr, meta.get(attr))
    return meta


def _check_meta(value: Any, where: str = "meta") -> None:
    """Meta must survive ``torch.load(weights_only=True)``: plain Python values only."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_meta(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where} keys must be strings, got {k!r}")
            _check_meta(item, f"{where}[{k!r}]")
        return
    raise TypeError(f"{where} holds a {type(value).__name__}; use plain numbers, strings, lists and dicts")



def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, flushed, then renamed over ``path``.

    A crash never leaves a half-written file under ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; weight files are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path

def weights_id(state: Mapping[str, torch.Tensor]) -> str:
    """Content identity of a network's weights, the same for a float32 training file and its float16
    release (:func:`save_weights` with ``half=True``): SHA-256 over the sorted tensor names and the
    bytes of each tensor, floating ones rounded to float16 first. Recorded by the stage trained on
    another's outputs (the global stage on the local stage's tokens, the U-Net on the global stage's
    maps) and compared when they are loaded together.

    Args:
        state: a state dict (``model.state_dict()``; any device, dtype or memory format).
    Returns:
        ``"w16:"`` followed by 16 hexadecimal digits.
    """
    import hashlib

    h = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.to(torch.float16)
        h.update(key.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.contiguous().numpy().tobytes())
    return "w16:" + h.hexdigest()[:16]


def save_weights(
    model: nn.Module, path: PathLike, meta: dict[str, Any] | None = None, half: bool = False
) -> Path:
    """Write ``{"model": state_dict, "meta": meta}`` to ``path`` atomically (temp file + rename).

    ``meta`` is filled with the model's class name and, where the model has them, ``R`` and
    ``stride`` (entries in ``meta`` take precedence); :func:`load_weights` checks those on loading.
    With ``half=True`` floating tensors are stored as float16 (half the size); loading casts them
    back to the model's dtype. ``torch.load(path)["model"]`` is a plain state dict.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    info: dict[str, Any] = {"arch": type(model).__name__}
    for attr in _CHECKED_META:
        if hasattr(model, attr):
            info[attr] = getattr(model, attr)
    info["dtype"] = "float16" if half else "native"
    info.update(meta or {})
    _check_meta(info)

    state: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        if half and tensor.is_floating_point():
            small = tensor.to(torch.float16)
            if bool(torch.isinf(small).any()) and bool((torch.isinf(small) & ~torch.isinf(tensor)).any()):
                raise ValueError(f"tensor {key!r} overflows float16 (|x| > 65504); save with half=False")
            tensor = small
        state[key] = tensor.clone()

    return atomic_torch_save({"model": state, "meta": info}, path)
