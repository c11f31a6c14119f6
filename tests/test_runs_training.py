"""The documented steps chain with one --model_path; checkpoints belong to their run; output
locations and bad sizes are usage errors before any work; the loss-curve figure; --version."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from blurry_edges import __version__
from blurry_edges.runs import TRAINED_FILES, run_script

from test_training_scripts import _quiet_global_state, write_train_val  # noqa: F401  (autouse fixture)
from test_eval_scripts import write_authors_set

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

R, SIZE = 11, 25


def _local(data: Path, model: Path, tmp: Path, *extra: str) -> dict:
    import local_training

    return local_training.main(["--data_path", str(data / "patches"), "--epoch_num", "1", "--batch_size", "4",
                                "--cuda", "cpu", "--model_path", str(model), "--log_path", str(tmp / "logs"),
                                "--no_progress", *extra])


def test_documented_steps_chain_with_one_model_path(tmp_path, capsys):
    import global_data_pre_cal
    import global_training
    from blurry_edges.evaluate import run_eval_script

    data = write_train_val(tmp_path / "data", R, SIZE, SIZE)
    model = tmp_path / "run1"
    _local(data, model, tmp_path)
    assert (model / TRAINED_FILES["local"]).is_file()
    # no --local_weights: the pre-calculation finds what local training wrote, and says so
    global_data_pre_cal.main(["--data_path", str(data), "--model_path", str(model), "--cuda", "cpu", "--no_progress"])
    assert f"local stage weights: {model / TRAINED_FILES['local']}" in capsys.readouterr().out
    global_training.main(["--data_path", str(data), "--epoch_num", "1", "--batch_size", "2", "--cuda", "cpu",
                          "--model_path", str(model), "--log_path", str(tmp_path / "logs"), "--no_progress"])
    # the test script: no --R, --img_size or weight options; everything from the weights and the data
    test = write_authors_set(tmp_path / "test", 1, SIZE)
    assert run_eval_script(["--model_path", str(model), "--data_path", str(test), "--log_path",
                            str(tmp_path / "logs"), "--cuda", "cpu", "--no_figures"]) == 0
    out = capsys.readouterr().out
    assert f"global stage weights: {model / TRAINED_FILES['global']}" in out and "R=11" in out


def test_precal_without_weights_is_one_explained_line(tmp_path, capsys):
    import global_data_pre_cal

    data = write_train_val(tmp_path / "data", R, SIZE, SIZE)
    rc = run_script(lambda: global_data_pre_cal.main(["--data_path", str(data), "--model_path",
                                                      str(tmp_path / "empty"), "--cuda", "cpu"]))
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "best_run_exp_local_stage.pth" in err and "python local_training.py" in err


def test_checkpoints_belong_to_their_run(tmp_path, capsys):
    a = write_train_val(tmp_path / "a", R, SIZE, SIZE)
    b = write_train_val(tmp_path / "b", R, SIZE, SIZE, n_train=6)
    first = _local(a, tmp_path / "exp_a", tmp_path)
    assert Path(first["checkpoint"]).parent == tmp_path / "exp_a" / "checkpoints"
    # a second experiment elsewhere starts fresh: it does not see the first one's checkpoint
    second = _local(b, tmp_path / "exp_b", tmp_path, "--resume")
    assert "starting from scratch" in capsys.readouterr().out
    assert Path(second["checkpoint"]).parent == tmp_path / "exp_b" / "checkpoints"
    # pointed at the first one's checkpoint, with other data or another schedule: an explained error
    ck = ["--checkpoint_dir", str(tmp_path / "exp_a" / "checkpoints"), "--resume"]
    with pytest.raises(ValueError, match=r"belongs to another run \(data_id.*Resume with the options"):
        _local(b, tmp_path / "exp_a", tmp_path, *ck)
    with pytest.raises(ValueError, match=r"belongs to another run \(dynamic_epoch: checkpoint 200, this run 50"):
        _local(a, tmp_path / "exp_a", tmp_path, *ck, "--dynamic_epoch", "50")
    with pytest.raises(ValueError, match=r"model_path"):
        _local(a, tmp_path / "exp_c", tmp_path, *ck)
    # the same run resumes (finished: nothing to do) …
    again = _local(a, tmp_path / "exp_a", tmp_path, "--resume")
    assert again["finished"] and again["epochs_done"] == 1
    # … but not when the weights it claims are gone
    (tmp_path / "exp_a" / TRAINED_FILES["local"]).unlink()
    with pytest.raises(ValueError, match="does not exist; nothing was trained"):
        _local(a, tmp_path / "exp_a", tmp_path, "--resume")


@pytest.mark.parametrize("option", ["--model_path", "--log_path", "--checkpoint_dir"])
def test_unusable_training_outputs_are_usage_errors_before_any_work(tmp_path, option, capsys):
    import local_training

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as ex:                 # no data at all: the check comes first
        local_training.main(["--data_path", str(tmp_path / "no_data"), option, str(blocker / "sub")])
    assert ex.value.code == 2
    assert f"{option} {blocker / 'sub'}: {blocker} is a file" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["global_training", "global_data_pre_cal", "depth_completion_training"])
def test_training_stride_zero_is_a_usage_error(script, capsys):
    mod = __import__(script)
    with pytest.raises(SystemExit) as ex:
        mod.main(["--stride", "0"])
    assert ex.value.code == 2 and "--stride: 0 must be a positive integer" in capsys.readouterr().err


def test_loss_curve_shows_training_and_validation_from_epoch_one(tmp_path, monkeypatch):
    import matplotlib.axes
    import matplotlib.figure

    from blurry_edges.train import save_loss_curve

    drawn = []
    real = matplotlib.axes.Axes.plot

    def spy(self, x, y, *a, **kw):
        drawn.append((list(x), list(y), kw.get("label"), kw.get("marker")))
        return real(self, x, y, *a, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    npy, png = save_loss_curve([0.5], tmp_path, "loss_curve_x", dpi=30, train=[0.7])
    assert png.is_file() and np.load(tmp_path / "loss_curve_x_train.npy").tolist() == [0.7]
    labels = {d[2]: d for d in drawn}
    assert set(labels) == {"training", "validation"}
    assert labels["validation"][0] == [1] and labels["validation"][1] == [0.5]     # epoch 1, as the log says
    assert all(d[3] for d in drawn)                                                # one epoch is a visible point
    ticks = []
    real_savefig = matplotlib.figure.Figure.savefig

    def grab(fig, *a, **kw):
        ticks.append([float(t) for t in fig.axes[0].get_xticks()])
        return real_savefig(fig, *a, **kw)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", grab)
    save_loss_curve([0.5], tmp_path, "loss_curve_y", dpi=30, train=[0.7])
    assert ticks == [[1.0]]                                                        # no "epoch 0.6"


def test_fit_records_the_training_loss(tmp_path):
    data = write_train_val(tmp_path / "data", R, SIZE, SIZE)
    out = _local(data, tmp_path / "m", tmp_path)
    assert len(out["train_curve"]) == 1 and np.isfinite(out["train_curve"][0])
    ckpt = torch.load(out["checkpoint"], weights_only=True)
    assert ckpt["train_curve"] == out["train_curve"]
    log = (tmp_path / "logs" / "exp_local_stage_training.txt").read_text()
    assert "\n1 " in log                                     # the log numbers the first epoch 1, like the figure


@pytest.mark.parametrize("script", ["local_training", "global_training", "global_data_pre_cal",
                                    "depth_completion_training"])
def test_training_scripts_have_version(script, capsys):
    mod = __import__(script)
    with pytest.raises(SystemExit) as ex:
        mod.main(["--version"])
    assert ex.value.code == 0 and capsys.readouterr().out.startswith(f"blurry-edges {__version__}")


def test_generators_have_version(capsys):
    from blurry_edges.synth.cli import run_test, run_train_val

    for run in (run_train_val, run_test):
        with pytest.raises(SystemExit) as ex:
            run(["--version"])
        assert ex.value.code == 0 and capsys.readouterr().out.startswith(f"blurry-edges {__version__}")


def test_resume_finds_a_checkpoint_in_the_former_default_folder(tmp_path, monkeypatch, capsys):
    """Checkpoints used to go to ./checkpoints for every run; a --resume that would silently start
    afresh next to such a checkpoint says where it is instead."""
    import local_training
    import blurry_edges.runs as runs

    legacy = tmp_path / "checkpoints"
    legacy.mkdir()
    (legacy / "exp_local_stage_last.pt").write_bytes(b"x")
    monkeypatch.setattr(runs, "LEGACY_CHECKPOINT_DIR", legacy)
    with pytest.raises(SystemExit) as ex:
        local_training.main(["--data_path", str(tmp_path / "no_data"), "--model_path", str(tmp_path / "m"), "--resume"])
    assert ex.value.code == 2
    assert f"pass --checkpoint_dir {legacy} to continue that run" in capsys.readouterr().err


def test_options_unknown_to_an_older_checkpoint_do_not_block_resume():
    from blurry_edges.runs import check_resume

    old = {"R": 11, "learning_rate": 1e-3, "data_path": "d"}
    check_resume(old, dict(old, lr_schedule="plateau", data_id={"path": "/x"}, max_minutes=5), "ck.pt")
    with pytest.raises(ValueError, match="learning_rate: checkpoint 0.001, this run 0.002"):
        check_resume(old, dict(old, learning_rate=2e-3), "ck.pt")
