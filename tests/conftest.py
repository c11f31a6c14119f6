"""Fixtures shared by every test module.

``--bf16 auto`` (the default of every script) resolves by the CPU: bf16 where it computes bf16
natively (AVX512_BF16/AMX), float32 elsewhere. The suite must give the same results on every x86-64
machine, so in-process tests see a CPU without native bf16 unless they say otherwise: the tests of
``auto`` and of bf16 itself patch :func:`blurry_edges.features.native_bf16` or pass ``--bf16 on``.
"""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _auto_means_float32(monkeypatch):
    import blurry_edges.features as features

    monkeypatch.setattr(features, "native_bf16", lambda: False)
