import json
import math

import numpy as np
import pytest
import torch

from blurry_edges.camera import CameraParams

OTHER = CameraParams(s=0.05, rho_1=21.0, rho_2=21.5, sigma_cam=0.0015, pixel_pitch=3.45e-6, mag=2.0,
                     z_min=0.4, z_max=0.9)


def test_defaults_and_sigma_range():
    c = CameraParams()
    z = np.linspace(0.75, 1.18, 200)
    sig = np.concatenate([c.sigma_px(z, c.rho_1), c.sigma_px(z, c.rho_2)])
    assert 0.0 <= sig.min() < 0.2 and 5.0 < sig.max() < 6.0   # "about 0.1–5.5 px"
    assert c.focus_distance(c.rho_1) == pytest.approx(1.0615, abs=1e-3)
    assert c.focus_distance(c.rho_2) == pytest.approx(0.8756, abs=1e-3)
    assert c.sigma_px(c.focus_distance(c.rho_1), c.rho_1) == pytest.approx(0.0, abs=1e-9)
    assert c.feasible_intercept(21) == pytest.approx(0.2826, abs=1e-4)


@pytest.mark.parametrize("R", [11, 21, 31])
@pytest.mark.parametrize("cam", [CameraParams(), OTHER], ids=["paper", "other"])
@pytest.mark.parametrize("xi", [0.0, 0.03])
def test_eq7_round_trip(R, cam, xi):
    z = torch.linspace(cam.z_min, cam.z_max, 101, dtype=torch.float64)
    eta1 = cam.eta_from_depth(z, cam.rho_1, R, xi)
    eta2 = cam.eta_from_depth(z, cam.rho_2, R, xi)
    # a true pair is feasible, so the projection leaves it alone and Eq. 7 inverts exactly
    p1, p2 = cam.project_feasible(eta1, eta2, R)
    assert torch.allclose(p1, eta1) and torch.allclose(p2, eta2)
    assert torch.allclose(cam.depth_from_etas(eta1, eta2, R), z, atol=1e-10, rtol=0)


def _on_feasible_edges(cam, R, e1, e2):
    c = cam.feasible_intercept(R)
    return bool(abs(e1 - e2) <= c + 1e-12 and e1 + e2 >= c - 1e-12)


@pytest.mark.parametrize("case, e1, e2, target", [
    ("above band", 0.1, 0.8, "upper"),      # η2 > η1 + c
    ("below anti-diagonal", 0.05, 0.02, "low"),   # η1 + η2 < c
    ("right of band", 0.9, 0.2, "right"),   # η2 < η1 − c
    ("feasible", 0.3, 0.35, "none"),
])
def test_projection_cases(case, e1, e2, target):
    cam, R = CameraParams(), 21
    c = cam.feasible_intercept(R)
    t1, t2 = torch.tensor(e1, dtype=torch.float64), torch.tensor(e2, dtype=torch.float64)
    p1, p2 = (float(v) for v in cam.project_feasible(t1, t2, R))
    assert _on_feasible_edges(cam, R, p1, p2)
    if target == "upper":
        assert p2 - p1 == pytest.approx(c)
    elif target == "low":
        assert p1 + p2 == pytest.approx(c)
    elif target == "right":
        assert p1 - p2 == pytest.approx(c)
    else:
        assert (p1, p2) == (e1, e2)
    if target != "none":
        # orthogonal projection: the move is perpendicular to the edge it lands on
        d = np.array([p1 - e1, p2 - e2])
        edge = {"upper": [1, 1], "low": [1, -1], "right": [1, 1]}[target]
        assert abs(d @ np.array(edge)) < 1e-12


def test_depth_from_projected_pair_is_finite_and_in_a_sane_range():
    cam, R = CameraParams(), 21
    g = torch.Generator().manual_seed(0)
    e1, e2 = torch.rand(1000, generator=g, dtype=torch.float64), torch.rand(1000, generator=g, dtype=torch.float64)
    z = cam.depth_from_etas(0.01 + e1, 0.01 + e2, R)
    assert torch.isfinite(z).all()


def test_refocus_eta_matches_sigma():
    cam, R = CameraParams(), 21
    z = np.array([0.8, 1.0, 1.1])
    assert np.allclose(cam.refocus_eta(z, 10.39, R), cam.sigma_px(z, 10.39) / (R // 2))


def test_camera_json_round_trip_and_errors(tmp_path):
    p = tmp_path / "cam.json"
    p.write_text(json.dumps(OTHER.to_dict()))
    assert CameraParams.from_json(p) == OTHER
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CameraParams.from_json(tmp_path / "missing.json")
    p.write_text(json.dumps({"s": 0.1, "focal": 3}))
    with pytest.raises(ValueError, match="unknown camera keys"):
        CameraParams.from_json(p)
    with pytest.raises(ValueError, match="sigma_cam"):
        CameraParams(sigma_cam=-1.0)
    with pytest.raises(ValueError, match="must differ"):
        CameraParams(rho_1=10.0, rho_2=10.0)
    with pytest.raises(ValueError, match="units"):
        CameraParams(s=110.4)
    with pytest.raises(ValueError, match="z_min"):
        CameraParams(z_min=1.2, z_max=0.8)
    assert math.isfinite(CameraParams().sigma_px(1.0, 10.0))
