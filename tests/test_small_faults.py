"""Small faults a new user meets: foreign weight files, nonsensical sizes, folders given as
files, depths outside the working range, disk-space figures on unusual file systems."""
from __future__ import annotations

import argparse
import json
from collections import namedtuple

import numpy as np
import pytest
import torch

from blurry_edges.camera import CameraParams
from blurry_edges.models import LocalStage, load_weights


def test_pickled_file_is_not_a_weight_file(tmp_path):
    f = tmp_path / "weights.pth"
    torch.save({"model": argparse.Namespace(lr=1)}, f)                 # pickled Python objects
    with pytest.raises(ValueError) as err:
        load_weights(LocalStage(11), f)
    msg = str(err.value)
    assert "is not a weight file" in msg and "argparse.Namespace" in msg
    assert "weights_only=False" not in msg and "weights_only" not in msg
    t = tmp_path / "notes.pth"
    t.write_text("these are my notes")
    with pytest.raises(ValueError, match="is not a PyTorch weight file") as err:
        load_weights(LocalStage(11), t)
    assert "weights_only" not in str(err.value)


@pytest.mark.parametrize("script", ["infer", "test", "test_big"])
def test_stride_zero_is_a_usage_error(script, tmp_path, capsys):
    from blurry_edges.infer import main
    from blurry_edges.evaluate import run_eval_script

    with pytest.raises(SystemExit) as ex:
        if script == "infer":
            main(["a.png", "b.png", "--out", str(tmp_path / "o"), "--stride", "0"])
        else:
            run_eval_script(["--stride", "0"], big=script == "test_big")
    assert ex.value.code == 2
    assert "--stride: 0 must be a positive integer" in capsys.readouterr().err


def test_depths_outside_the_working_range_are_flagged(tmp_path):
    from blurry_edges.infer import write_outputs

    H = 6
    depth = torch.full((H, H), 0.9)
    depth[0, :3] = 1.5                      # beyond z_max (1.18 m)
    depth[1, 0] = 0.3                       # before z_min
    depth[2, 0] = 0.0                       # no estimate: not flagged
    out = {"depth": depth, "confidence": torch.ones(H, H), "boundary": torch.zeros(H, H),
           "color": torch.rand(2, 3, H, H), "sharpened": torch.rand(3, H, H), "refocused": torch.rand(3, H, H)}
    write_outputs(out, tmp_path, CameraParams(), {"densify": "dt"})
    stats = json.loads((tmp_path / "settings.json").read_text())["depth_stats"]
    assert stats["pixels_outside_working_range"] == 4
    assert stats["working_range_m"] == [CameraParams().z_min, CameraParams().z_max]
    flag = np.load(tmp_path / "maps.npz")["out_of_range"]
    assert flag.sum() == 4 and flag[0, :3].all() and flag[1, 0] and not flag[2, 0]


def test_disk_space_check_on_special_file_systems(tmp_path, monkeypatch):
    from blurry_edges.synth import writer

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(writer.shutil, "disk_usage", lambda p: usage(0, 0, 0))      # reports no size
    writer.check_free_space(tmp_path / "set", 12_345_678)                            # cannot tell: no error
    monkeypatch.setattr(writer.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 5_000, 5_000))
    with pytest.raises(OSError, match=r"needs 12\.35 MB, 5\.00 kB are free"):
        writer.check_free_space(tmp_path / "set", 12_345_678)
