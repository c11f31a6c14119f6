"""The README's set-up commands: an install elsewhere must not pull CUDA by accident."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _setup_section() -> str:
    text = README.read_text()
    start = text.index("## Set-up and tests")
    return text[start:text.index("\n## ", start + 1)]


def test_setup_gives_the_cpu_wheel_index():
    section = _setup_section()
    assert "pip install torch==2.13.0 && pip install -r requirements.txt && pip install -e ." in section
    cpu = re.search(r"pip install torch==2\.13\.0 --index-url https://download\.pytorch\.org/whl/cpu", section)
    assert cpu, "the CPU-only install (PyTorch's CPU wheel index) is missing from the README"
    assert "never pulls CUDA" not in section
