"""Evaluation and own-pair inference as a researcher chains them: which weights are used (one rule,
printed), settings taken from the weights, output locations checked before any work, earlier
results kept, and the provenance of every result."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from blurry_edges import __version__
from blurry_edges.infer import main as infer_main
from blurry_edges.models import WEIGHT_FILES, GlobalStage, LocalStage, save_weights
from blurry_edges.evaluate import run_eval_script
from blurry_edges.runs import TRAINED_FILES, choose_weights

from test_eval_scripts import write_authors_set

R, H, GRID = 11, 25, 8


def _trained(d: Path, R: int = R, stride: int = 2, seed: int = 0, names=TRAINED_FILES) -> Path:
    """What local_training.py and global_training.py leave in --model_path (weights with meta)."""
    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    save_weights(LocalStage(R), d / names["local"], meta={"stage": "local", "R": R})
    grid = (H - R) // stride + 1
    save_weights(GlobalStage(grid, grid, stride), d / names["global"],
                 meta={"stage": "global", "R": R, "stride": stride, "img_size": [H, H]})
    return d


@pytest.fixture(scope="module")
def test_set(tmp_path_factory) -> Path:
    return write_authors_set(tmp_path_factory.mktemp("data") / "data_test", 1, H)


def test_one_rule_for_choosing_weights(tmp_path, capsys):
    d = tmp_path / "w"
    _trained(d, names=WEIGHT_FILES)                                    # shipped names only
    assert choose_weights("local", d) == d / WEIGHT_FILES["local"]
    _trained(d)                                                        # then trained into the same folder
    assert choose_weights("local", d) == d / TRAINED_FILES["local"]   # freshly trained wins
    explicit = tmp_path / "mine.pth"
    explicit.write_bytes((d / WEIGHT_FILES["local"]).read_bytes())
    assert choose_weights("local", d, explicit) == explicit           # explicit wins over both
    printed = capsys.readouterr().out
    assert f"local stage weights: {d / TRAINED_FILES['local']} (trained into --model_path" in printed
    with pytest.raises(FileNotFoundError) as err:
        choose_weights("global", tmp_path / "empty")
    msg = str(err.value)
    assert "best_run_exp_global_stage.pth" in msg and "pretrained_global_stage.pth" in msg
    assert "python global_training.py" in msg and "--global_weights" in msg
    assert "W mode" not in msg                                         # no sparse file there to suggest


def test_missing_w_weights_suggest_the_sparse_ones_in_w_mode(tmp_path):
    d = tmp_path / "w"
    _trained(d, names=WEIGHT_FILES)
    (d / WEIGHT_FILES["global_w"]).unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError) as err:
        choose_weights("global_w", d)
    msg = str(err.value)
    assert "pretrained_global_stage_w.pth" in msg
    assert f"--global_weights {d / WEIGHT_FILES['global']}" in msg and "W mode" in msg


def test_eval_takes_R_stride_and_size_from_trained_weights(tmp_path, test_set, capsys):
    d = _trained(tmp_path / "w")
    argv = ["--model_path", str(d), "--data_path", str(test_set), "--log_path", str(tmp_path / "logs"),
            "--cuda", "cpu", "--no_figures"]
    assert run_eval_script(argv) == 0                                  # no --R, --img_size, --local_weights
    out = capsys.readouterr().out
    assert f"local stage weights: {d / TRAINED_FILES['local']}" in out
    assert f"global stage weights: {d / TRAINED_FILES['global']}" in out
    summary = json.loads((tmp_path / "logs" / "test_sparse" / "summary.json").read_text())
    assert summary["config"]["R"] == R and summary["config"]["stride"] == 2
    # a contradiction is an explained error, before any scene
    assert run_eval_script([*argv, "--R", "21"]) == 2
    err = capsys.readouterr().err
    assert "--R 21 contradicts" in err and "R=11" in err and "pass --R 11" in err


def test_local_and_global_weights_of_different_R_are_refused(tmp_path, test_set, capsys):
    a, b = _trained(tmp_path / "a", R=11), _trained(tmp_path / "b", R=13)
    argv = ["--model_path", str(a), "--global_weights", str(b / TRAINED_FILES["global"]), "--data_path",
            str(test_set), "--log_path", str(tmp_path / "logs"), "--cuda", "cpu", "--no_figures"]
    assert run_eval_script(argv) == 2
    err = capsys.readouterr().err
    assert "do not belong together" in err and "R=11" in err and "R=13" in err
    assert not (tmp_path / "logs").exists()


def test_results_of_an_earlier_run_are_kept(tmp_path, test_set, capsys):
    d = _trained(tmp_path / "w")
    argv = ["--model_path", str(d), "--data_path", str(test_set), "--log_path", str(tmp_path / "logs"),
            "--cuda", "cpu", "--no_figures"]
    assert run_eval_script(argv) == 0
    first = tmp_path / "logs" / "test_sparse" / "summary.json"
    before = first.read_text()
    assert run_eval_script(argv) == 0
    assert first.read_text() == before
    assert (tmp_path / "logs" / "test_sparse_2" / "summary.json").is_file()
    assert "holds an earlier run; writing to" in capsys.readouterr().out
    assert run_eval_script([*argv, "--overwrite"]) == 0
    assert not (tmp_path / "logs" / "test_sparse_3").exists()
    assert first.read_text() != before                                 # timings differ: it was rewritten


def test_summary_records_provenance(tmp_path, test_set, capsys):
    d = _trained(tmp_path / "w")
    argv = ["--model_path", str(d), "--data_path", str(test_set), "--log_path", str(tmp_path / "logs"),
            "--cuda", "cpu", "--no_figures"]
    assert run_eval_script(argv) == 0
    prov = json.loads((tmp_path / "logs" / "test_sparse" / "summary.json").read_text())["provenance"]
    assert prov["blurry_edges"] == __version__ and "git_commit" in prov
    local = prov["weights"]["local"]
    assert local["path"] == str((d / TRAINED_FILES["local"]).resolve())
    assert local["sha256"] == hashlib.sha256((d / TRAINED_FILES["local"]).read_bytes()).hexdigest()
    assert local["meta"]["R"] == R and prov["weights"]["global"]["meta"]["stride"] == 2


@pytest.mark.parametrize("script", ["test", "infer"])
def test_version(script, capsys):
    with pytest.raises(SystemExit) as ex:
        run_eval_script(["--version"]) if script == "test" else infer_main(["a", "b", "--out", "o", "--version"])
    assert ex.value.code == 0
    assert capsys.readouterr().out.startswith(f"blurry-edges {__version__}")


def _pair(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    img = np.full((H, H, 3), 60.0)
    img[:, H // 2:] = 200
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    cv2.imwrite(str(a), np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8))
    cv2.imwrite(str(b), np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8))
    return a, b


def test_infer_output_location_checked_before_any_work(tmp_path, capsys):
    a, b = _pair(tmp_path)
    blocker = tmp_path / "results"
    blocker.write_text("a file")
    no_weights = ["--model_path", str(tmp_path / "nothing_here"), "--device", "cpu"]
    for out in (blocker, blocker / "sub"):
        with pytest.raises(SystemExit) as ex:                           # before the weights are even looked at
            infer_main([str(a), str(b), "--out", str(out), *no_weights])
        assert ex.value.code == 2
        assert "--out" in capsys.readouterr().err


def test_infer_unwritable_out(tmp_path, capsys, monkeypatch):
    import blurry_edges.runs as runs

    a, b = _pair(tmp_path)
    monkeypatch.setattr(runs.os, "access", lambda path, mode: False)      # as a non-root user in /usr
    with pytest.raises(SystemExit) as ex:
        infer_main([str(a), str(b), "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert ex.value.code == 2 and "not writable" in capsys.readouterr().err


def test_infer_keeps_earlier_results_and_records_provenance(tmp_path, capsys):
    d = _trained(tmp_path / "w")
    a, b = _pair(tmp_path)
    out = tmp_path / "o"
    argv = [str(a), str(b), "--out", str(out), "--model_path", str(d), "--device", "cpu", "--n_margin_patch", "1"]
    assert infer_main(argv) == 0                                       # R, stride and block from the weights
    settings = json.loads((out / "settings.json").read_text())
    assert settings["R"] == R and settings["block"] == H
    assert settings["provenance"]["weights"]["global"]["sha256"] == hashlib.sha256(
        (d / TRAINED_FILES["global"]).read_bytes()).hexdigest()
    assert settings["provenance"]["blurry_edges"] == __version__
    with pytest.raises(SystemExit) as ex:
        infer_main(argv)
    assert ex.value.code == 2 and "earlier run" in capsys.readouterr().err
    assert infer_main([*argv, "--overwrite"]) == 0


def test_eval_log_path_checked_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "logs"
    blocker.write_text("a file")
    with pytest.raises(SystemExit) as ex:
        run_eval_script(["--log_path", str(blocker), "--data_path", str(tmp_path / "no_data")])
    assert ex.value.code == 2 and "--log_path" in capsys.readouterr().err
