"""The local stage's supervised blur term (``--beta_blur``, ours) and ``--init_from``.

The term compares the η of the wedge that owns each true boundary pixel (sparse ownership mask,
Eq. 19) with the blur of that pixel's true depth in the patch's image (Eq. 3 over ``R//2``).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from blurry_edges.camera import CameraParams
from blurry_edges.losses import LocalLoss, LocalSchedule, LocalWeights
from blurry_edges.wedges import WedgeRenderer, eta_from_logit

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))


def _logit(eta: float) -> float:
    """Inverse of η = 10^(2·erf(e) − 2)."""
    return float(torch.special.erfinv(torch.tensor((math.log10(eta) + 2.0) / 2.0, dtype=torch.float64)))


def _edge_patch(R: int, eta1: float, eta2: float = 0.05):
    """Raw output of one patch whose wedge 1 is the half-plane right of the centre column and whose
    wedge 2 lies outside the patch; the true boundary is the centre column at 0.9 m."""
    raw = torch.tensor([[0.0, 0.0, 5.0, 5.0, -math.pi / 2, math.pi, 0.0, 0.1, _logit(eta1), _logit(eta2)]],
                       dtype=torch.float64)
    bdepth = torch.zeros(1, R, R, dtype=torch.float64)
    bdepth[0, :, R // 2] = 0.9
    return raw, bdepth


@pytest.mark.parametrize("image", [0, 1])
def test_blur_term_is_the_squared_eta_error_of_the_owning_wedge(image):
    R = 11
    cam = CameraParams()
    loss = LocalLoss(WedgeRenderer(R, cam))
    rho = cam.rho_1 if image == 0 else cam.rho_2
    true = cam.sigma_px(0.9, rho) / (R // 2)
    clean = torch.rand(1, 3, R, R, dtype=torch.float64)
    dist = torch.zeros(1, R, R, dtype=torch.float64)
    deri = torch.zeros(1, 3, R - 2, R - 2, dtype=torch.float64)
    img = torch.tensor([image])
    for eta in (true, 0.5, 0.02):
        raw, bdepth = _edge_patch(R, eta)
        t = loss.terms(raw, clean, clean, dist, deri, bdepth, img)
        got_eta = eta_from_logit(raw[0, 8]).item()               # = eta up to erfinv's rounding
        assert got_eta == pytest.approx(eta, rel=1e-5)
        assert t["blur"].item() == pytest.approx((got_eta - true) ** 2, rel=1e-9, abs=1e-15)
    # wedge 2's η does not matter: it owns no boundary pixel
    raw_a, bdepth = _edge_patch(R, 0.3, eta2=0.02)
    raw_b, _ = _edge_patch(R, 0.3, eta2=0.9)
    ta = loss.terms(raw_a, clean, clean, dist, deri, bdepth, img)["blur"]
    tb = loss.terms(raw_b, clean, clean, dist, deri, bdepth, img)["blur"]
    assert ta.item() == pytest.approx(tb.item(), rel=1e-12)


def test_blur_term_gradient_reaches_eta_only_and_guards_empty_targets():
    R = 11
    loss = LocalLoss(WedgeRenderer(R))
    raw, bdepth = _edge_patch(R, 0.4)
    raw.requires_grad_(True)
    clean = torch.rand(1, 3, R, R, dtype=torch.float64)
    args = (clean, clean, torch.zeros(1, R, R, dtype=torch.float64),
            torch.zeros(1, 3, R - 2, R - 2, dtype=torch.float64))
    loss.terms(raw, *args, bdepth, torch.tensor([0]))["blur"].backward()
    assert raw.grad[0, :8].abs().max() == 0 and raw.grad[0, 8] != 0 and raw.grad[0, 9] == 0
    empty = loss.terms(raw.detach(), *args, torch.zeros_like(bdepth), torch.tensor([0]))["blur"]
    assert empty.item() == 0.0 and math.isfinite(empty.item())


def test_blur_weight_is_constant_and_needs_targets():
    s = LocalSchedule(beta_blur=3.0)
    assert s.at(0).blur == s.at(150).blur == s.final().blur == 3.0
    assert LocalSchedule().at(0).blur == 0.0                       # the paper's objective by default
    with pytest.raises(ValueError, match="beta_blur"):
        LocalSchedule(beta_blur=-1.0)
    R = 11
    raw, _ = _edge_patch(R, 0.2)
    z = torch.zeros(1, R, R, dtype=torch.float64)
    with pytest.raises(ValueError, match="with_blur=True"):
        LocalLoss(WedgeRenderer(R))(raw, torch.rand(1, 3, R, R, dtype=torch.float64), torch.rand(1, 3, R, R, dtype=torch.float64),
                                   z, torch.zeros(1, 3, R - 2, R - 2, dtype=torch.float64),
                                   LocalWeights(bndry_loc=0.0, smthns=0.0, blur=1.0))


def _add_blur_arrays(root: Path, R: int) -> None:
    for split in ("train", "val"):
        n = np.load(root / "patches" / f"patches_ny_{split}.npy", mmap_mode="r").shape[0]
        bd = np.zeros((n, R, R), np.float32)
        bd[:, :, R // 2] = np.linspace(0.8, 1.1, n, dtype=np.float32)[:, None]
        np.save(root / "patches" / f"boundary_depths_{split}.npy", bd)
        idx = np.zeros((n, 4), np.int32)
        idx[:, 1] = np.arange(n) % 2
        np.save(root / "patches" / f"patch_index_{split}.npy", idx)


def test_dataset_with_blur_items_and_refusals(tmp_path):
    from blurry_edges.data import LocalPatchDataset
    from test_training_scripts import write_train_val

    R = 11
    data = write_train_val(tmp_path / "data", R, 31, 31)
    with pytest.raises(FileNotFoundError, match="boundary_depths_train"):
        LocalPatchDataset(data, "train", with_blur=True)
    _add_blur_arrays(data, R)
    ds = LocalPatchDataset(data, "train", with_blur=True)
    item = ds[1]
    assert len(item) == 6 and item[4].shape == (R, R) and item[5].item() == 1 and item[4][0, R // 2] > 0
    assert len(LocalPatchDataset(data, "train")[1]) == 4
    (data / "manifest.json").unlink()                         # the authors' layout: no depth per patch
    with pytest.raises(ValueError, match="--beta_blur 0"):
        LocalPatchDataset(data, "train", with_blur=True)


def test_local_training_with_blur_term_and_init_from(tmp_path):
    import local_training
    from blurry_edges.models import LocalStage, load_weights
    from test_training_scripts import _common, write_train_val

    R = 11
    torch.set_num_threads(1)
    data = write_train_val(tmp_path / "data", R, 31, 31)
    _add_blur_arrays(data, R)
    first = local_training.main(["--data_path", str(data), "--epoch_num", "1", "--batch_size", "4"] + _common(tmp_path / "a"))
    init = LocalStage(R)
    assert "beta_blur" not in load_weights(init, first["weights"])  # the paper's objective keeps its record
    out = local_training.main(["--data_path", str(data), "--epoch_num", "1", "--batch_size", "4", "--beta_blur", "2",
                               "--learning_rate", "0", "--init_from", first["weights"]] + _common(tmp_path / "b"))
    tuned = LocalStage(R)
    meta = load_weights(tuned, out["weights"])
    assert meta["beta_blur"] == 2.0
    # learning rate 0: the weights are exactly those it started from (BN running statistics aside)
    for (name, a), b in zip(init.named_parameters(), tuned.parameters()):
        assert torch.equal(a, b), name
    log = (tmp_path / "b" / "logs" / "exp_local_stage_training.txt").read_text()
    assert "beta_blur" in log and "init_from" in log
    with pytest.raises(SystemExit):
        local_training.main(["--data_path", str(data), "--beta_blur", "-1"] + _common(tmp_path / "c"))


def test_global_blur_term_matches_a_direct_computation():
    """The global stage's blur term (ours): both images' owning-wedge η against the true blur, on the
    pixels where the boundary depth and the sparse ownership mask are non-zero; the total adds it."""
    import torch.nn.functional as F

    from blurry_edges.losses import GlobalLoss, GlobalSchedule
    from blurry_edges.patches import PatchGrid
    from blurry_edges.wedges import decode_global, ownership_mask, wedge_distances
    from test_losses import _scene_batch

    R, S, H, W = 11, 2, 21, 23
    cam = CameraParams()
    raw, noisy, clean, dist, deri, bdepth, _ = _scene_batch(2, H, W, R, S)
    grid = PatchGrid(H, W, R, S)
    plain = GlobalLoss(WedgeRenderer(R, cam), grid)
    loss = GlobalLoss(WedgeRenderer(R, cam), grid, beta_blur=3.0)
    t = loss.terms(raw, clean, clean, dist, deri, bdepth)

    geom, eta = decode_global(raw)                                   # [B, P, 8], [B, P, 2, 2]
    mask = ownership_mask(wedge_distances(geom, R))                  # [B, P, R, R]
    target = F.unfold(bdepth[:, None], R, stride=S).transpose(1, 2).reshape(mask.shape)
    valid = (target > 0) & (mask > 0)
    err, n = 0.0, int(valid.sum())
    for k, rho in enumerate((cam.rho_1, cam.rho_2)):
        true = cam.sigma_px(target[valid], rho) / (R // 2)
        own = torch.where(mask == 2, eta[..., k, 1, None, None], eta[..., k, 0, None, None])[valid]
        err += float(((own - true) ** 2).sum())
    assert n > 0 and t["blur"].item() == pytest.approx(err / (2 * n), rel=1e-9)
    w = GlobalSchedule().at(150)
    assert loss(raw, clean, clean, dist, deri, bdepth, w).item() == pytest.approx(
        plain(raw, clean, clean, dist, deri, bdepth, w).item() + 3.0 * t["blur"].item(), rel=1e-9)
    assert "blur" not in plain.terms(raw, clean, clean, dist, deri, bdepth)
    with pytest.raises(ValueError, match="sparse"):
        GlobalLoss(WedgeRenderer(R, cam), grid, mask_variant="w", beta_blur=1.0)


def test_global_training_with_blur_term(tmp_path):
    import global_data_pre_cal
    import global_training
    import local_training
    from blurry_edges.models import GlobalStage, load_weights
    from test_training_scripts import _common, write_train_val

    R, size = 11, 31
    torch.set_num_threads(1)
    data = write_train_val(tmp_path / "data", R, size, size)
    c = _common(tmp_path)
    local_w = local_training.main(["--data_path", str(data), "--epoch_num", "1", "--batch_size", "4"] + c)["weights"]
    global_data_pre_cal.main(["--data_path", str(data), "--local_weights", str(local_w), "--no_progress"] + c[:2])
    out = global_training.main(["--data_path", str(data), "--epoch_num", "1", "--batch_size", "2", "--beta_blur", "2"] + c)
    side = (size - R) // 2 + 1
    assert load_weights(GlobalStage(side, side, 2), out["weights"])["beta_blur"] == 2.0
    with pytest.raises(SystemExit, match="beta_blur"):
        global_training.main(["--data_path", str(data), "--densify", "w", "--beta_blur", "1"] + c)


def test_pass_through_targets_decode_to_the_local_estimates():
    from blurry_edges.train.recipe import pass_through_targets
    from blurry_edges.wedges import decode_global, eta_from_logit

    g = torch.Generator().manual_seed(0)
    t1 = torch.rand(5, 19, generator=g) * 2 - 1
    t2 = t1.clone()
    t2[:, 8:10] = torch.rand(5, 2, generator=g) - 0.5           # other η, same wedges
    t2[3, 0:4] = t1[3, [2, 3, 0, 1]]                              # patch 3: image 2 numbers its wedges the other way
    t2[3, 8:10] = t2[3, [9, 8]]
    geom, eta = decode_global(pass_through_targets(torch.cat([t1, t2], -1)))
    assert torch.allclose(geom[:, :4], t1[:, :4] * 3)
    assert torch.allclose(eta[:, 0], eta_from_logit(t1[:, 8:10] + 0.5))              # image 1
    want2 = eta_from_logit(t2[:, 8:10] + 0.5)
    want2[3] = want2[3].flip(0)
    assert torch.allclose(eta[:, 1], want2)                                           # image 2, paired


def test_pass_through_targets_clamp_saturated_eta_logits():
    """η logits beyond erf's saturation all decode to the same η: the targets stop at ETA_LOGIT_RANGE,
    so that a local stage's −7 (seen in practice) does not dominate the squared error."""
    from blurry_edges.train.recipe import pass_through_targets
    from blurry_edges.wedges import ETA_LOGIT_RANGE, eta_from_logit

    t = torch.zeros(3, 38)
    t[:, 8:10] = torch.tensor([[-7.5, 0.2], [4.0, -0.3], [0.1, 0.0]])      # tokens carry e − 0.5
    t[:, 27:29] = torch.tensor([[0.0, -9.0], [0.3, 6.0], [-0.1, 0.4]])
    out = pass_through_targets(t)
    lo, hi = ETA_LOGIT_RANGE
    assert out[0, 8] == lo - 0.5 and out[1, 8] == hi - 0.5 and out[0, 11] == lo - 0.5 and out[1, 11] == hi - 0.5
    assert torch.equal(out[2, 8:12], t[2, [8, 9, 27, 28]])                   # in range: unchanged
    assert torch.equal(out[0, 9:11], t[0, [9, 27]])
    # what the clamp drops is invisible after decoding (η within 0.2 % of its saturated value)
    assert torch.allclose(eta_from_logit(torch.tensor([lo, hi])), eta_from_logit(torch.tensor([-7.0, 4.5])), rtol=3e-3)


def test_pass_through_loss_weights_and_robustness():
    from blurry_edges.train.recipe import pass_through_warm_start

    class Probe(torch.nn.Module):                     # output = bias: the loss is a known function of it
        def __init__(self):
            super().__init__()
            self.b = torch.nn.Parameter(torch.zeros(12))

        def forward(self, tokens, origin=None):
            return self.b.expand(*tokens.shape[:-1], 12)

    data = [(torch.zeros(2, 4, 19),)] * 3
    with torch.no_grad():
        probe = Probe()
        probe.b[0], probe.b[8] = 1.0, 1.0                 # error 1 on one geometry and one η output
    first = {}
    for w in (1.0, 3.0):
        m = Probe()
        m.load_state_dict(probe.state_dict())
        first[w] = pass_through_warm_start(m, data, 1, batch_size=1, lr=0.0, eta_weight=w, log=lambda *a: None)[0]
    assert first[1.0] == pytest.approx(0.5 * 2 / 12)                      # Huber: half the squared error of 1
    assert first[3.0] == pytest.approx(0.5 * (1 + 3) / 12 * 12 / (8 + 4 * 3))
    with torch.no_grad():
        probe.b[0] = 11.0                                  # far outside the threshold: linear, not squared
    far = pass_through_warm_start(probe, data, 1, batch_size=1, lr=0.0, log=lambda *a: None)[0]
    assert far == pytest.approx((10.5 + 0.5) / 12)
    with pytest.raises(ValueError, match="eta_weight"):
        pass_through_warm_start(Probe(), data, 1, eta_weight=0.0, log=lambda *a: None)


def test_pass_through_warm_start_learns_to_repeat_its_input(tmp_path):
    import global_data_pre_cal
    import global_training
    import local_training
    from blurry_edges.data import SceneDataset
    from blurry_edges.models import GlobalStage, load_weights
    from blurry_edges.train.recipe import pass_through_targets, pass_through_warm_start
    from test_training_scripts import _common, write_train_val

    R, size = 11, 31
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = write_train_val(tmp_path / "data", R, size, size)
    c = _common(tmp_path)
    local_w = local_training.main(["--data_path", str(data), "--epoch_num", "1", "--batch_size", "4"] + c)["weights"]
    global_data_pre_cal.main(["--data_path", str(data), "--local_weights", str(local_w), "--no_progress"] + c[:2])
    ds = SceneDataset(str(data), "train", with_params=True)
    side = (size - R) // 2 + 1
    model = GlobalStage(side, side, 2)
    model.set_attention_dropout(0.0)
    losses = pass_through_warm_start(model, ds, 60, batch_size=2, lr=3e-3, log=lambda *a: None)
    assert len(losses) == 60 and sum(losses[-5:]) / 5 < 0.3 * sum(losses[:5]) / 5
    out = global_training.main(["--data_path", str(data), "--epoch_num", "1", "--batch_size", "2",
                                "--pass_through_steps", "3"] + _common(tmp_path / "b"))
    assert out["finished"]
    with pytest.raises(SystemExit, match="pass_through_steps"):
        global_training.main(["--data_path", str(data), "--pass_through_steps", "-1"] + _common(tmp_path / "c"))
    with pytest.raises(SystemExit, match="pass_through_eta_weight"):
        global_training.main(["--data_path", str(data), "--pass_through_steps", "2", "--pass_through_eta_weight", "0"]
                             + _common(tmp_path / "c"))

    # --epoch_num 0: the warm start alone is the training; its weights are the run's best weights,
    # validated with the objective's final weights, and they repeat the input as the warm start left it
    only = global_training.main(["--data_path", str(data), "--epoch_num", "0", "--batch_size", "2",
                                 "--pass_through_steps", "4"] + _common(tmp_path / "d"))
    warm, best = GlobalStage(side, side, 2), GlobalStage(side, side, 2)
    load_weights(warm, tmp_path / "d" / "w" / "pass_through_start.pth")
    meta = load_weights(best, only["weights"])
    assert only["epochs_done"] == 0 and meta["steps"] == 4 and meta["samples_seen"] == 8
    assert meta["what"] == "pass-through warm start only" and math.isfinite(meta["val_loss"])
    assert meta["val_loss"] == pytest.approx(only["best_loss"])
    assert all(torch.equal(a, b) for a, b in zip(warm.state_dict().values(), best.state_dict().values()))
    # --token_xy_bound: recorded in the weights, set again when they are loaded; the pass-through targets are
    # the clamped tokens the network sees
    bound = global_training.main(["--data_path", str(data), "--epoch_num", "0", "--batch_size", "2",
                                  "--pass_through_steps", "2", "--token_xy_bound", "0.05"] + _common(tmp_path / "f"))
    meta = load_weights(best, bound["weights"])
    assert meta["token_xy_bound"] == 0.05 and best.token_xy_bound == 0.05
    tokens = torch.cat([ds[0][0][0], ds[0][0][1]], -1)[None]
    assert pass_through_targets(best.bound_tokens(tokens))[..., :4].abs().max() <= 0.05
    load_weights(best, only["weights"])
    assert best.token_xy_bound is None
    with pytest.raises(SystemExit, match="token_xy_bound"):
        global_training.main(["--data_path", str(data), "--epoch_num", "0", "--pass_through_steps", "2",
                              "--token_xy_bound", "-1"] + _common(tmp_path / "g"))
    for bad in (["--epoch_num", "0"], ["--epoch_num", "0", "--pass_through_steps", "2", "--resume"]):
        with pytest.raises(SystemExit, match="epoch_num 0"):
            global_training.main(["--data_path", str(data), "--batch_size", "2"] + bad + _common(tmp_path / "e"))


def _pass_through_rank(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """One process of test_pass_through_warm_start_averages_over_processes."""
    import torch.distributed as dist

    from blurry_edges.models import GlobalStage
    from blurry_edges.train.recipe import pass_through_warm_start

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(rank)                          # different initial weights: the warm start must align them
        model = GlobalStage(3, 3, 2)
        model.set_attention_dropout(0.0)
        g = torch.Generator().manual_seed(7)
        data = [((torch.rand(2, 9, 19, generator=g) * 2 - 1),) for _ in range(6)]
        start = [p.detach().clone() for p in model.parameters()]
        losses = pass_through_warm_start(model, data, 4, batch_size=2, seed=rank, log=lambda *a: None)
        torch.save({"params": [p.detach() for p in model.parameters()], "losses": losses,
                    "start": start}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_pass_through_warm_start_averages_over_processes(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_pass_through_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert all(torch.equal(a, b) for a, b in zip(r0["params"], r1["params"]))        # one model on both ranks
    assert any(not torch.equal(a, b) for a, b in zip(r0["params"], r0["start"]))     # and it was trained
    assert r0["losses"] == r1["losses"]                                               # the loss is the mean over ranks
