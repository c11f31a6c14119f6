"""How the scripts hang together: command-line value checks, output locations checked before any
work, which weight file a step uses, and the provenance every result records.

* :func:`positive_int` / :func:`non_negative_int` – argparse types: a bad ``--stride 0`` is a
  usage error (exit status 2) before any work, not a ``ZeroDivisionError`` later.
* :func:`check_output_dir` – an output folder that is a file, or lies where nothing can be written,
  is reported before the computation starts.
* :func:`choose_weights` – the one rule by which every script picks its weight files (README,
  "Which weights a step uses").
* :func:`provenance` – package version, git commit and the weight files (sha256 and meta) of a result.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any, Optional

__all__ = ["positive_int", "non_negative_int", "check_output_dir", "OutputLocationError"]


# ============================================================================ argument types
def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer (≥ 1)")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer ≥ 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be a non-negative integer (≥ 0)")
    return value


# ============================================================================ output locations
class OutputLocationError(ValueError):
    """An output location that cannot be used; the message names it and what to do."""


def check_output_dir(path: str | os.PathLike, option: str) -> Path:
    """Make sure ``path`` is, or can become, a writable folder — before any work is done.

    Nothing is created: the nearest existing ancestor must be a writable folder, and ``path``
    itself, if it exists, a writable folder. Raises :class:`OutputLocationError` naming ``option``.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputLocationError(f"{option} {path}: exists and is not a folder; choose a folder path "
                                  "(the outputs are several files)")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputLocationError(f"{option} {path}: {probe} is a file, so no folder can be made under it; "
                                  "choose another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputLocationError(f"{option} {path}: {probe} is not writable for this user; choose a "
                                  "writable location or fix its permissions")
    return path
