"""benchmarks/local_finetune_probe.py: the held-out loss it prints, in both BatchNorm modes."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))

from test_training import _batch, make_patches  # noqa: E402

from blurry_edges.losses import LocalSchedule  # noqa: E402
from blurry_edges.train import LocalTask  # noqa: E402


def _probe():
    spec = importlib.util.spec_from_file_location("local_finetune_probe", REPO / "benchmarks" / "local_finetune_probe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_held_out_loss_in_evaluation_and_training_mode_leaves_the_model_alone():
    probe = _probe()
    torch.manual_seed(0)
    task = LocalTask(11, schedule=LocalSchedule(dynamic_epoch=1))
    model = task.model
    model.train()
    for _ in range(3):                          # running statistics that differ from any one batch's
        with torch.no_grad():
            model(torch.rand(16, 3, 11, 11) * 2)
    batch = list(_batch(make_patches(8), 8))
    state = {k: v.clone() for k, v in model.state_dict().items()}

    evaluation = probe.held_out_loss(task, model, batch, chunk=4)
    assert not model.training                    # evaluation mode is left on, as before
    by_batch = probe.held_out_loss(task, model, batch, chunk=4, batchnorm="train")
    for k, v in model.state_dict().items():      # the training-mode pass ran on a copy
        assert torch.equal(v, state[k]), k

    with torch.no_grad():                        # the same figures computed directly
        model.eval()
        direct_eval = sum(float(task.loss(model, [b[i:i + 4] for b in batch], task.final_schedule(), True)) * 4
                          for i in (0, 4)) / 8
    assert abs(evaluation - direct_eval) < 1e-6
    assert abs(by_batch - evaluation) > 1e-6     # batch statistics are not the running ones
