"""Shipped weights: the release tool and the files in pretrained_weights/ (strict loading, recipe meta)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from blurry_edges.models import WEIGHT_FILES, GlobalStage, LocalStage, UNet, load_weights, save_weights
from blurry_edges.release import main

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "pretrained_weights"
META_KEYS = ("recipe", "samples_seen", "steps", "cpu_minutes", "commit", "val_loss", "R")


def test_release_writes_fp16_weights_with_their_recipe(tmp_path):
    torch.manual_seed(0)
    net = LocalStage(11)
    src = save_weights(net, tmp_path / "best_run_exp_local_stage.pth",
                       meta={"stage": "local", "samples_seen": 640, "steps": 10, "train_minutes": 2.5, "processes": 2,
                             "commit": "abc1234", "val_loss": 0.03})
    dst = main(["local", str(src), "--recipe", "README 'Training on a CPU', stage 1", "--out_dir", str(tmp_path / "out")])
    assert dst.name == WEIGHT_FILES["local"]
    raw = torch.load(dst, weights_only=True)
    assert all(t.dtype == torch.float16 for t in raw["model"].values() if t.is_floating_point())
    back = LocalStage(11)
    meta = load_weights(back, dst)
    assert meta["recipe"].startswith("README") and meta["cpu_minutes"] == pytest.approx(5.0)
    assert meta["samples_seen"] == 640 and meta["commit"] == "abc1234"
    for a, b in zip(net.state_dict().values(), back.state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(b, a.half().float())


def test_release_refuses_a_file_of_another_stage(tmp_path):
    src = save_weights(GlobalStage(4, 4, 2), tmp_path / "g.pth")
    with pytest.raises(SystemExit) as e:
        main(["local", str(src), "--recipe", "x", "--out_dir", str(tmp_path)])
    assert e.value.code == 2


@pytest.mark.parametrize("key, model", [("local", lambda m: LocalStage(int(m.get("R", 21)))),
                                        ("global", lambda m: GlobalStage(stride=int(m.get("stride", 2)))),
                                        ("global_w", lambda m: GlobalStage(stride=int(m.get("stride", 2)))),
                                        ("pp", lambda m: UNet())])
def test_shipped_weights_load_strictly_and_carry_their_recipe(key, model):
    path = SHIPPED / WEIGHT_FILES[key]
    if not path.is_file():
        pytest.skip(f"{path.name} is not shipped in this checkout")
    meta = torch.load(path, map_location="cpu", weights_only=True)["meta"]
    load_weights(model(meta), path)                                    # strict: every name and shape
    missing = [k for k in META_KEYS if meta.get(k) is None]
    assert not missing, f"{path.name} lacks {missing} in its meta"


def test_release_curves_figure(tmp_path, capsys):
    import numpy as np

    logs = tmp_path / "logs"
    logs.mkdir()
    np.save(logs / "loss_curve_exp_local_stage.npy", np.array([0.1, 0.08, 0.075]))
    np.save(logs / "loss_curve_exp_local_stage_train.npy", np.array([0.12, 0.09, 0.08]))
    out = main(["curves", str(tmp_path / "fig" / "stage.png"), f"local={logs / 'loss_curve_exp_local_stage'}"])
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {out}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:                     # a stem that does not exist
        main(["curves", str(tmp_path / "x.png"), f"global={logs / 'loss_curve_exp_global_stage'}"])
    assert e.value.code == 2 and "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:                     # no label
        main(["curves", str(tmp_path / "x.png"), str(logs / "loss_curve_exp_local_stage")])
    assert e.value.code == 2 and "LABEL=" in capsys.readouterr().err


def test_release_progress_figure(tmp_path, capsys):
    table = tmp_path / "progress.csv"
    table.write_text("panel,series,local_samples_M,value\n"
                     "validation loss,local stage,0.4,0.09\nvalidation loss,local stage,0.8,0.07\n"
                     "sparse delta1,check set,0.8,0.61\nsparse delta1,paper Table 3,0,0.72\n"
                     "sparse delta1,paper Table 3,0.8,0.72\n")
    out = main(["progress", str(table), str(tmp_path / "fig" / "progress.png")])
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {out}" in capsys.readouterr().out
    bad = tmp_path / "bad.csv"
    bad.write_text("panel,series,value\nloss,local,0.1\n")             # no x column
    with pytest.raises(SystemExit) as e:
        main(["progress", str(bad), str(tmp_path / "x.png")])
    assert e.value.code == 2 and "local_samples_M" in capsys.readouterr().err
    bad.write_text("panel,series,local_samples_M,value\nloss,local,0.4,n/a\n")
    with pytest.raises(SystemExit) as e:
        main(["progress", str(bad), str(tmp_path / "x.png")])
    assert e.value.code == 2 and "line 2" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_shipped_progress_table_plots(tmp_path):
    """The table behind the README's progress figure stays readable by the command that draws it."""
    table = SHIPPED / "curves" / "progress.csv"
    if not table.is_file():
        pytest.skip("no progress table in this checkout")
    assert main(["progress", str(table), str(tmp_path / "progress.png")]).is_file()


@pytest.mark.parametrize("path", sorted((SHIPPED / "candidates").glob("*.pth")), ids=lambda p: p.name)
def test_candidate_weights_load_strictly_and_carry_their_recipe(path):
    """Weights kept between sessions before they ship (pretrained_weights/TRAINING.md) are release files too."""
    meta = torch.load(path, map_location="cpu", weights_only=True)["meta"]
    model = {"local": lambda: LocalStage(int(meta["R"])), "global": lambda: GlobalStage(stride=int(meta["stride"]))}
    load_weights(model[meta["stage"]](), path)
    missing = [k for k in META_KEYS if meta.get(k) is None]
    assert not missing, f"{path.name} lacks {missing} in its meta"
