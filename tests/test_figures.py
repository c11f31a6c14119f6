"""Figure writers draw on their own ``matplotlib.figure.Figure``: they write PNG files and leave the
caller's matplotlib backend and pyplot state alone (a notebook keeps its inline backend)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_figure_writers_keep_the_callers_backend(tmp_path: Path):
    script = textwrap.dedent(f"""
        import matplotlib
        matplotlib.use("pdf")                       # the caller's choice, not Agg
        import matplotlib.pyplot as plt
        import numpy as np
        from blurry_edges.visualize import depth_to_color_png
        from blurry_edges.train.records import save_loss_curve
        from blurry_edges.release import plot_progress

        depth = np.full((12, 16), 0.9, dtype=np.float32)
        depth[:4] = 0.0                             # no estimate: drawn black
        depth_to_color_png(depth, 0.75, 1.18, {str(tmp_path / 'depth.png')!r})
        save_loss_curve([0.3, 0.2, 0.1], {str(tmp_path)!r}, "loss_curve_x", dpi=50, train=[0.4, 0.25, 0.15])
        table = {str(tmp_path / 'progress.csv')!r}
        open(table, "w").write("panel,series,local_samples_M,value\\nloss,val,1,0.3\\nloss,val,2,0.2\\n")
        plot_progress(table, {str(tmp_path / 'progress.png')!r}, dpi=50)
        print(matplotlib.get_backend(), len(plt.get_fignums()))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["pdf", "0"]       # backend unchanged, no figure left open in pyplot
    for name in ("depth.png", "loss_curve_x.png", "progress.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 1000, name
