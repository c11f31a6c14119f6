"""Networks (paper Sec. 3.3): shapes, parameter counts, weight-file compatibility, positional encoding,
and the weight loader's errors. CPU only, small batches."""
from __future__ import annotations

import math

import pytest
import torch

from blurry_edges.models import (
    WEIGHT_FILES,
    GlobalStage,
    LocalStage,
    Smish,
    UNet,
    load_weights,
    save_weights,
)
from blurry_edges.wedges import decode_global, decode_local, eta_from_logit

# --------------------------------------------------------------------------------------------
# Expected state dicts, written out by hand from the architecture of paper Sec. 3.3 and the
# authors' weight files (independent of the model code): name → shape.
# --------------------------------------------------------------------------------------------


def _bn(prefix: str, c: int) -> dict[str, tuple]:
    return {
        f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
        f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": (),
    }


def local_stage_keys(k: int) -> dict[str, tuple]:
    """LocalStage with a k × k feature map before fc (k = 3 at R = 21)."""
    keys = {"conv1.0.weight": (64, 3, 7, 7), "conv1.0.bias": (64,), **_bn("conv1.1", 64)}
    for i, (cin, cout) in enumerate([(64, 96), (96, 256), (256, 384), (384, 256)]):
        p = f"layer{i}.0"
        keys.update({f"{p}.conv1.0.weight": (cout, cin, 3, 3), f"{p}.conv1.0.bias": (cout,)})
        keys.update(_bn(f"{p}.conv1.1", cout))
        keys.update({f"{p}.conv2.0.weight": (cout, cout, 3, 3), f"{p}.conv2.0.bias": (cout,)})
        keys.update(_bn(f"{p}.conv2.1", cout))
        keys.update({f"{p}.downsample.0.weight": (cout, cin, 1, 1), f"{p}.downsample.0.bias": (cout,)})
        keys.update(_bn(f"{p}.downsample.1", cout))
    keys.update({"fc.1.weight": (1024, 256 * k * k), "fc.1.bias": (1024,)})
    keys.update(_bn("fc.2", 1024))
    keys.update({"fc.4.weight": (10, 1024), "fc.4.bias": (10,)})
    return keys


def global_stage_keys(layers: int = 8, d: int = 128, ff: int = 256) -> dict[str, tuple]:
    keys = {"in_src_projection.weight": (d, 38), "in_src_projection.bias": (d,)}
    for i in range(layers):
        p = f"encoder.layers.{i}"
        keys.update({
            f"{p}.self_attn.in_proj_weight": (3 * d, d), f"{p}.self_attn.in_proj_bias": (3 * d,),
            f"{p}.self_attn.out_proj.weight": (d, d), f"{p}.self_attn.out_proj.bias": (d,),
            f"{p}.linear1.weight": (ff, d), f"{p}.linear1.bias": (ff,),
            f"{p}.linear2.weight": (d, ff), f"{p}.linear2.bias": (d,),
            f"{p}.norm1.weight": (d,), f"{p}.norm1.bias": (d,),
            f"{p}.norm2.weight": (d,), f"{p}.norm2.bias": (d,),
        })
    keys.update({"encoder.norm.weight": (d,), "encoder.norm.bias": (d,)})
    keys.update({"generator.weight": (12, d), "generator.bias": (12,)})
    return keys


def unet_keys() -> dict[str, tuple]:
    def double_conv(prefix: str, cin: int, cout: int) -> dict[str, tuple]:
        return {
            f"{prefix}.double_conv.0.weight": (cout, cin, 3, 3), **_bn(f"{prefix}.double_conv.1", cout),
            f"{prefix}.double_conv.3.weight": (cout, cout, 3, 3), **_bn(f"{prefix}.double_conv.4", cout),
        }

    widths = [64, 128, 256, 512, 1024]
    keys = double_conv("inc", 1, 64)
    for i in range(4):
        keys.update(double_conv(f"down{i + 1}.maxpool_conv.1", widths[i], widths[i + 1]))
    for i in range(4):
        cin, cout = widths[4 - i], widths[3 - i]
        keys.update({f"up{i + 1}.up.weight": (cin, cin // 2, 2, 2), f"up{i + 1}.up.bias": (cin // 2,)})
        keys.update(double_conv(f"up{i + 1}.conv", cin, cout))
    keys.update({"outc.conv.weight": (1, 64, 1, 1), "outc.conv.bias": (1,)})
    return keys


def n_params(keys: dict[str, tuple]) -> int:
    """Learnable parameters in a key list (BatchNorm statistics are buffers, not parameters)."""
    return sum(math.prod(s) for k, s in keys.items() if "running_" not in k and "num_batches" not in k)


def random_state(keys: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in keys.items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            state[k] = torch.rand(shape, generator=g) + 0.5
        else:
            state[k] = torch.randn(shape, generator=g) * 0.05
    return state


def n_model_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def local21() -> LocalStage:
    return LocalStage(21)


@pytest.fixture(scope="module")
def local11() -> LocalStage:
    return LocalStage(11)


@pytest.fixture(scope="module")
def global64() -> GlobalStage:
    return GlobalStage()


@pytest.fixture(scope="module")
def unet() -> UNet:
    return UNet()


# --------------------------------------------------------------------------------------------
# Shapes and sizes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("R,k", [(11, 1), (21, 3), (31, 4)])
def test_local_stage_shapes(R, k, local11, local21):
    model = {11: local11, 21: local21}.get(R) or LocalStage(R)
    model.eval()
    assert model.R == R and LocalStage.feature_size(R) == k
    assert model.fc[1].in_features == 256 * k * k
    with torch.no_grad():
        out = model(torch.rand(2, 3, R, R))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_local_stage_rejects_bad_inputs(local21):
    for R in (20, 5, 21.0):
        with pytest.raises(ValueError):
            LocalStage(R)
    with pytest.raises(ValueError, match="21"):
        local21(torch.rand(1, 3, 11, 11))


def test_local_stage_param_count(local21):
    expected = n_params(local_stage_keys(3))
    count = n_model_params(local21)
    print(f"LocalStage(R=21): {count:,} parameters")
    assert count == expected
    assert abs(count - 7.25e6) / 7.25e6 < 0.01


def test_local_stage_init_is_xavier_normal(local21):
    w = local21.layer1[0].conv2[0].weight  # [256, 256, 3, 3]
    std = math.sqrt(2.0 / (256 * 9 + 256 * 9))
    assert abs(w.std().item() - std) / std < 0.05
    assert abs(w.mean().item()) < 0.1 * std


def test_smish_and_decode():
    x = torch.linspace(-6, 6, 101, dtype=torch.float64)
    assert torch.allclose(Smish()(x), x * torch.tanh(torch.log(1 + torch.sigmoid(x))))
    raw = torch.tensor([[0.1, -0.2, 0.3, 0.4, -1.0, 7.0, 2.0, 3.0, -5.0, 5.0]])
    geom, e = decode_local(raw)                 # the one decoder of network outputs (wedges.py)
    assert geom.shape == (1, 8) and geom[0, 2:4].tolist() == pytest.approx([0.3, 0.4])
    assert geom[0, 4:6].tolist() == pytest.approx([2 * math.pi - 1.0, 7.0 - 2 * math.pi])
    # erf saturates at ±1, so η spans (1e-4, 1)
    assert eta_from_logit(e)[0].tolist() == pytest.approx([1e-4, 1.0], rel=1e-4)


@pytest.mark.parametrize("rows,cols", [(5, 7), (64, 64)])
def test_global_stage_shapes(rows, cols):
    # Two layers instead of eight: 4096 tokens through all eight take seconds on a small CPU, and
    # the depth does not change any shape (the full model's size is checked below).
    model = GlobalStage(rows, cols, num_layers=2).eval()
    assert (model.rows, model.cols, model.stride) == (rows, cols, 2)
    with torch.no_grad():
        out = model(torch.randn(1, rows * cols, 38))
    assert out.shape == (1, rows * cols, 12) and torch.isfinite(out).all()


def test_global_stage_token_count_checked():
    model = GlobalStage(5, 7, num_layers=1)
    with pytest.raises(ValueError, match="5 × 7"):
        model(torch.randn(1, 36, 38))
    model.set_grid(3, 4)
    assert model(torch.randn(2, 12, 38)).shape == (2, 12, 12)


def test_global_stage_param_count(global64):
    expected = n_params(global_stage_keys())
    count = n_model_params(global64)
    print(f"GlobalStage: {count:,} parameters")
    assert count == expected
    assert abs(count - 1.07e6) / 1.07e6 < 0.01


def test_global_decode():
    raw = torch.zeros(3, 12)
    raw[:, 8] = 10.0
    geom, eta = decode_global(raw)
    assert geom.shape == (3, 8) and eta.shape == (3, 2, 2)
    assert torch.allclose(geom[:, 4:], torch.full((3, 4), math.pi))
    assert eta[0, 0, 0].item() == pytest.approx(1.0)  # (image 1, wedge 1)
    assert eta[0, 1, 1].item() == pytest.approx(10 ** (2 * math.erf(0.5) - 2))


@pytest.mark.parametrize("size", [(147, 147), (32, 48)])
def test_unet_shapes(size, unet):
    with torch.no_grad():
        out = unet.eval()(torch.rand(1, 1, *size))
    assert out.shape == (1, 1, *size)


# --------------------------------------------------------------------------------------------
# Positional encoding
# --------------------------------------------------------------------------------------------


def _pe_closed_form(r: int, c: int, dim: int, d: int = 128, stride: int = 2) -> float:
    half = d // 2
    pos, j = (r * stride, dim) if dim < half else (c * stride, dim - half)
    k = j - j % 2
    omega = math.exp(-k * 2 * math.log(1e4) / d)
    return math.sin(pos * omega) if j % 2 == 0 else math.cos(pos * omega)


def test_positional_encoding_values(global64):
    pe = global64.pos_encoding  # [1, 4096, 128]
    assert pe.shape == (1, 64 * 64, 128)
    assert not any("pos" in k for k in global64.state_dict())
    for r, c, dim in [(0, 0, 0), (0, 0, 1), (3, 5, 2), (3, 5, 65), (63, 10, 62), (10, 63, 127), (17, 41, 96)]:
        assert pe[0, r * 64 + c, dim].item() == pytest.approx(_pe_closed_form(r, c, dim), abs=2e-5)


def test_positional_encoding_rectangular_is_block_of_square(global64):
    small = GlobalStage(5, 7).pos_encoding.view(5, 7, 128)
    assert torch.equal(small, global64.pos_encoding.view(64, 64, 128)[:5, :7])


# --------------------------------------------------------------------------------------------
# Weight files
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["local", "global", "unet"])
def test_load_hand_built_state_dict(which, tmp_path, local21, global64, unet):
    model, keys = {
        "local": (local21, local_stage_keys(3)),
        "global": (global64, global_stage_keys()),
        "unet": (unet, unet_keys()),
    }[which]
    state = random_state(keys)
    path = tmp_path / f"{which}.pth"
    torch.save(state, path)  # the authors' raw layout
    assert load_weights(model, path) == {}
    loaded = model.state_dict()
    assert set(loaded) == set(keys)
    for k in keys:
        assert torch.equal(loaded[k], state[k]), k


def test_authors_file_names():
    assert WEIGHT_FILES == {
        "local": "pretrained_local_stage.pth",
        "global": "pretrained_global_stage.pth",
        "global_w": "pretrained_global_stage_w.pth",
        "pp": "pretrained_depth_completion_pp.pth",
    }


def test_missing_file(tmp_path, local21):
    with pytest.raises(FileNotFoundError, match="pretrained_weights") as err:
        load_weights(local21, tmp_path / "pretrained_local_stage.pth")
    assert "pretrained_local_stage.pth" in str(err.value)


def test_unreadable_file(tmp_path, local21):
    path = tmp_path / "junk.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        load_weights(local21, path)


def test_wrong_patch_size(tmp_path, local11, local21):
    path = tmp_path / "r11.pth"
    torch.save(local11.state_dict(), path)
    with pytest.raises(ValueError, match="fc.1.weight") as err:
        load_weights(local21, path)
    msg = str(err.value)
    assert "R" in msg and "--R" in msg and str(path) in msg and "(1024, 256)" in msg and "(1024, 2304)" in msg


def test_meta_mismatch(tmp_path, local11, local21):
    path = tmp_path / "ckpt.pth"
    save_weights(local11, path)
    with pytest.raises(ValueError, match="R=11") as err:
        load_weights(local21, path)
    assert "R=21" in str(err.value) and str(path) in str(err.value)

    g_path = tmp_path / "g.pth"
    save_weights(GlobalStage(3, 3), g_path, meta={"stride": 3})
    with pytest.raises(ValueError, match="stride=3"):
        load_weights(GlobalStage(3, 3, stride=2), g_path)


def test_wrong_network(tmp_path, local21):
    path = tmp_path / "g.pth"
    torch.save(GlobalStage(2, 2, num_layers=1).state_dict(), path)
    with pytest.raises(ValueError, match="missing tensors") as err:
        load_weights(local21, path, what="local stage")
    assert "global stage" in str(err.value)


def test_save_load_round_trip_and_wrapper_prefix(tmp_path):
    src, dst = GlobalStage(2, 3, num_layers=2), GlobalStage(2, 3, num_layers=2)
    meta = load_weights(dst, save_weights(src, tmp_path / "a" / "g.pth", meta={"epoch": 4}))
    assert meta["epoch"] == 4 and meta["stride"] == 2 and meta["arch"] == "GlobalStage"
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["g.pth"]  # no temp file left behind

    wrapped = {f"module.{k}": v for k, v in src.state_dict().items()}  # as saved from DDP
    torch.save(wrapped, tmp_path / "ddp.pth")
    load_weights(GlobalStage(2, 3, num_layers=2), tmp_path / "ddp.pth")


def test_half_round_trip(tmp_path, local11):
    src = local11
    path = save_weights(src, tmp_path / "half.pth", half=True)
    raw = torch.load(path, weights_only=True)
    assert raw["model"]["fc.1.weight"].dtype == torch.float16
    assert raw["model"]["conv1.1.num_batches_tracked"].dtype == torch.int64
    dst = LocalStage(11)
    load_weights(dst, path)
    want, got = src.state_dict(), dst.state_dict()
    assert all(got[k].dtype == v.dtype for k, v in want.items())
    flat = [torch.cat([d[k].flatten() for k in want if want[k].is_floating_point()]) for d in (want, got)]
    assert torch.allclose(flat[1], flat[0], rtol=1e-3, atol=1e-4)  # fp16 keeps ~3 significant digits
    assert not torch.equal(flat[1], flat[0])  # it really went through float16


def test_half_overflow_is_refused(tmp_path):
    model = GlobalStage(2, 2, num_layers=1)
    with torch.no_grad():
        model.generator.bias[0] = 1e6
    with pytest.raises(ValueError, match="generator.bias"):
        save_weights(model, tmp_path / "x.pth", half=True)


def test_global_stage_token_xy_bound_clamps_vertices_and_travels_with_the_weights(tmp_path):
    """Ours (README "Training on a CPU"): far vertices are clamped before the projection, only
    there, and the setting belongs to the weights: saved in their meta, set again when loading,
    off for files without it (the authors' raw state dicts)."""
    from blurry_edges.models import GlobalStage, load_weights, save_weights
    from blurry_edges.wedges import ETA_LOGIT_RANGE

    torch.manual_seed(0)
    m = GlobalStage(2, 2, 2, num_layers=1)
    m.eval()
    tok = torch.rand(1, 4, 38) * 2 - 1
    far = tok.clone()
    far[0, 1, 0], far[0, 2, 21] = 40.0, -25.0                          # vertices far outside the patch
    far[0, 3, 9], far[0, 0, 27] = -80.0, 6.0                             # η logits far beyond erf's saturation
    assert m.bound_tokens(far) is far                                   # off by default: the paper's model
    m.token_xy_bound = 1.5
    bounded = m.bound_tokens(far)
    lo, hi = ETA_LOGIT_RANGE
    assert bounded[0, 1, 0] == 1.5 and bounded[0, 2, 21] == -1.5
    assert bounded[0, 3, 9] == lo - 0.5 and bounded[0, 0, 27] == hi - 0.5    # tokens carry e − 0.5
    keep = torch.ones(38, dtype=torch.bool)
    keep[[0, 21, 9, 27]] = False
    assert torch.equal(bounded[..., keep], far[..., keep])              # angles, colors, the rest untouched
    assert torch.equal(bounded[0, 0, [0, 21, 9]], far[0, 0, [0, 21, 9]])
    clipped = far.clone()
    clipped[0, 1, 0], clipped[0, 2, 21], clipped[0, 3, 9], clipped[0, 0, 27] = 1.5, -1.5, lo - 0.5, hi - 0.5
    with torch.no_grad():
        assert torch.equal(m(far), m(clipped))                          # the network sees the clamped tokens
    assert torch.equal(m.bound_tokens(tok), tok)                         # tokens inside the bounds pass unchanged

    save_weights(m, tmp_path / "b.pth", meta={"token_xy_bound": m.token_xy_bound})
    fresh = GlobalStage(2, 2, 2, num_layers=1)
    assert load_weights(fresh, tmp_path / "b.pth")["token_xy_bound"] == 1.5 and fresh.token_xy_bound == 1.5
    torch.save(m.state_dict(), tmp_path / "raw.pth")                      # an authors'-style file: no meta
    load_weights(fresh, tmp_path / "raw.pth")
    assert fresh.token_xy_bound is None
    for bad in (0.0, -1.0, float("nan"), "2"):
        with pytest.raises(ValueError, match="token_xy_bound"):
            fresh.token_xy_bound = bad
