"""Weights that belong together: the content identity a stage trained on another's outputs records
(``models.weights_id``), the warning when they are loaded apart (``runs.pairing_notes``), the release
tool's ``--trained_on`` and the shipped files' own pairing."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from blurry_edges.models import WEIGHT_FILES, GlobalStage, LocalStage, UNet, load_weights, save_weights, weights_id
from blurry_edges.release import main as release
from blurry_edges.runs import TRAINED_ON, pairing_notes

SHIPPED = Path(__file__).resolve().parents[1] / "pretrained_weights"


def test_weights_id_is_the_same_for_a_float32_file_and_its_float16_release(tmp_path):
    torch.manual_seed(0)
    net = LocalStage(11)
    fp32 = save_weights(net, tmp_path / "a.pth")
    fp16 = save_weights(net, tmp_path / "b.pth", half=True)
    loaded = []
    for path in (fp32, fp16):
        m = LocalStage(11)
        load_weights(m, path)
        loaded.append(weights_id(m.state_dict()))
    assert loaded[0] == loaded[1] == weights_id(net.state_dict())
    assert loaded[0].startswith("w16:") and len(loaded[0]) == 4 + 16
    assert weights_id(net.to(memory_format=torch.channels_last).state_dict()) == loaded[0]   # layout-free
    with torch.no_grad():
        next(net.parameters())[0] += 0.01          # a change that survives float16 rounding
    assert weights_id(net.state_dict()) != loaded[0]


def test_pairing_notes_name_the_files_and_both_identities():
    files = {"local": "mine/local.pth", "global": "ship/global.pth", "pp": "ship/pp.pth"}
    ids = {"local": "w16:aaaa", "global": "w16:gggg"}
    same = {"global": {"local_weights_id": "w16:aaaa"}, "pp": {"global_weights_id": "w16:gggg"}}
    assert pairing_notes(files, same, ids) == []
    assert pairing_notes(files, {"global": {}, "pp": {}}, ids) == []          # no record (the authors' files)
    notes = pairing_notes(files, {"global": {"local_weights_id": "w16:bbbb"}, "pp": {"global_weights_id": "w16:hhhh"}}, ids)
    assert len(notes) == 2
    assert "ship/global.pth" in notes[0] and "w16:bbbb" in notes[0] and "mine/local.pth" in notes[0]
    assert "w16:aaaa" in notes[0] and "ship/pp.pth" in notes[1] and "w16:hhhh" in notes[1]
    assert set(TRAINED_ON) == {"global", "global_w", "pp"}


def test_release_records_the_weights_a_stage_was_trained_on(tmp_path):
    torch.manual_seed(0)
    local = save_weights(LocalStage(11), tmp_path / "local.pth")
    other = save_weights(LocalStage(11), tmp_path / "other.pth")
    glob = save_weights(GlobalStage(4, 4, 2), tmp_path / "best_run_exp_global_stage.pth", meta={"stage": "global"})
    out = release(["global", str(glob), "--recipe", "x", "--out_dir", str(tmp_path / "a"), "--trained_on", str(local)])
    m = LocalStage(11)
    load_weights(m, local)
    assert torch.load(out, weights_only=True)["meta"]["local_weights_id"] == weights_id(m.state_dict())
    # a file that records its source refuses another one
    with pytest.raises(SystemExit) as e:
        release(["global", str(out), "--recipe", "x", "--out_dir", str(tmp_path / "b"), "--trained_on", str(other)])
    assert e.value.code == 2
    # the source must be the network it claims to be, and the local stage has no source
    with pytest.raises(SystemExit):
        release(["global", str(glob), "--recipe", "x", "--out_dir", str(tmp_path / "c"), "--trained_on", str(glob)])
    with pytest.raises(SystemExit):
        release(["local", str(local), "--recipe", "x", "--out_dir", str(tmp_path / "d"), "--trained_on", str(local)])


def _shipped_id(key: str, model) -> str:
    path = SHIPPED / WEIGHT_FILES[key]
    if not path.is_file():
        pytest.skip(f"{path.name} is not shipped in this checkout")
    load_weights(model, path)
    return weights_id(model.state_dict())


@pytest.mark.parametrize("key", ["global", "global_w", "pp"])
def test_shipped_weights_belong_together(key):
    source, record = TRAINED_ON[key]
    model = LocalStage(21) if source == "local" else GlobalStage(stride=2)
    source_id = _shipped_id(source, model)
    path = SHIPPED / WEIGHT_FILES[key]
    if not path.is_file():
        pytest.skip(f"{path.name} is not shipped in this checkout")
    meta = torch.load(path, map_location="cpu", weights_only=True)["meta"]
    if key == "pp" and record not in meta:
        pytest.skip(f"{path.name} predates the record (README 'Weights', weights that belong together)")
    assert meta.get(record) == source_id, f"{path.name} was trained on {meta.get(record)}, ships beside {source_id}"
