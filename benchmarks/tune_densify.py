"""Tune the domain-transform densifier (`--densify dt`) on *validation* scenes, never on test scenes.

The basic-shape validation split (seeded as `train_val_data_generator.py` seeds it) gives a proxy
of Blurry-Edges' sparse output: the ground-truth boundary depth with Gaussian depth noise of the
size of the method's sparse error (paper Table 3: RMSE ≈ 5 cm), the clean image as the restored
color guide, and the boundary locations as the boundary map. A small grid over (σs, σr, ψ, tol)
is scored with the paper's metrics against the dense ground truth; the best setting is printed.

    python benchmarks/tune_densify.py [--scenes 12] [--noise_cm 3]
"""
from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch

from blurry_edges.densify import DTParams, domain_transform_densify
from blurry_edges.metrics import average_metrics, eval_depth
from blurry_edges.synth.generate import scene_rng
from blurry_edges.synth.shapes import ShapeSceneConfig, make_scene


def validation_proxies(n: int, seed: int, noise_cm: float):
    cfg = ShapeSceneConfig().validate()
    out = []
    for i in range(n):
        s = make_scene(scene_rng(seed, "val", i), cfg)
        bd = s["boundary_depth"].astype(np.float64)
        rng = np.random.default_rng([seed, 99, i])
        sparse = np.where(bd > 0, bd + rng.normal(0, noise_cm / 100, bd.shape), 0.0)
        guide = s["images_gt"][0].astype(np.float64).transpose(2, 0, 1) / 255.0
        boundary = (s["boundary_location"] > 0).astype(np.float64)
        out.append((torch.from_numpy(sparse), torch.from_numpy(guide), torch.from_numpy(boundary),
                    s["image_depth"].astype(np.float64)))
    return out


def score(scenes, params: DTParams) -> dict:
    ms = []
    for sparse, guide, boundary, gt in scenes:
        dense, _ = domain_transform_densify(sparse, guide, boundary=boundary, params=params)
        ms.append(eval_depth(dense.numpy(), gt, crop=10))
    return average_metrics(ms)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0, help="seed of the validation split (the generator's default)")
    ap.add_argument("--noise_cm", type=float, default=3.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    scenes = validation_proxies(args.scenes, args.seed, args.noise_cm)
    grid = {"sigma_s": [None, 30.0, 50.0], "sigma_r": [0.1, 0.25, 0.5, 3.75], "psi": [0.0, 30.0, 100.0],
            "depth_edge_tol": [0.02, 0.05]}
    rows = []
    t0 = time.perf_counter()
    for values in itertools.product(*grid.values()):
        kw = dict(zip(grid, values))
        m = score(scenes, DTParams(**kw))
        rows.append((m["rmse_cm"], kw, m))
    rows.sort(key=lambda r: r[0])
    print(f"{len(rows)} settings × {args.scenes} validation scenes in {time.perf_counter() - t0:.0f} s")
    print(f"{'sigma_s':>8} {'sigma_r':>8} {'psi':>6} {'tol':>5} | delta1 delta2 delta3 RMSE(cm) AbsRel")
    for rmse, kw, m in rows[:8] + [r for r in rows if r[1] == {"sigma_s": None, "sigma_r": 3.75, "psi": 100.0,
                                                                 "depth_edge_tol": 0.05}]:
        print(f"{str(kw['sigma_s']):>8} {kw['sigma_r']:>8} {kw['psi']:>6} {kw['depth_edge_tol']:>5} | "
              f"{m['delta1']:.3f}  {m['delta2']:.3f}  {m['delta3']:.3f}  {m['rmse_cm']:.3f}   {m['absrel']:.3f}")
    print("best:", rows[0][1])


if __name__ == "__main__":
    main()
