"""Speed, memory and storage of the data generators (printed, never asserted).

    python benchmarks/bench_synth.py                       # shapes, realistic 147, memory/storage
    python benchmarks/bench_synth.py --big                 # + realistic 587×587
    python benchmarks/bench_synth.py --authors /path/to/Blurry-Edges   # + the authors' code, same machine
    python benchmarks/bench_synth.py --full                # + the whole default set (8000 + 2000 scenes)

Reference points: the authors' basic-shape synthesis takes ≈ 0.32 s per scene pair on one core of the
development machine; their realistic renderer convolves the whole image in 2-D for every key point and
optical power (~600 blurs per scene). ``--authors`` times their own code (a checkout of
github.com/guo-research-group/Blurry-Edges) on this machine instead of quoting that figure; without it
the realistic baseline is a direct full-image 2-D convolution per key point written here (the authors' method taken
literally), timed on the same scene.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from blurry_edges.camera import CameraParams  # noqa: E402
from blurry_edges.synth import generate, realistic, shapes, sources  # noqa: E402
from timing import best_of  # noqa: E402  (benchmarks/timing.py)

AUTHORS_SHAPES_S = 0.32   # s per scene pair, one core (the figure)


def _idle_ticks() -> dict[int, int]:
    ticks = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *vals = line.split()
            if name.startswith("cpu") and name != "cpu":
                ticks[int(name[3:])] = int(vals[3]) + int(vals[4])      # idle + iowait
    return ticks


def one_core() -> None:
    """Run on one core — the idlest over half a second (the machine may be shared) — and keep
    OpenCV single-threaded."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
        a = _idle_ticks()
        time.sleep(0.5)
        b = _idle_ticks()
        core = max(allowed, key=lambda c: b.get(c, 0) - a.get(c, 0))
        os.sched_setaffinity(0, {core})
    except (AttributeError, OSError, ValueError):
        pass
    cv2.setNumThreads(1)


# ------------------------------------------------------------------------------------ shapes
def bench_shapes(n: int) -> dict:
    cfg = shapes.ShapeSceneConfig()
    shapes.make_scene(np.random.default_rng(0), cfg)        # warm-up
    full = best_of(lambda: [shapes.make_scene(generate.scene_rng(1, "train", i), cfg) for i in range(n)], warmup=False) / n
    clean = best_of(lambda: [shapes.make_clean_scene(generate.scene_rng(1, "train", i), cfg) for i in range(n)], warmup=False) / n
    return {"shapes_s_per_scene": full, "shapes_clean_s_per_scene": clean}


def load_authors(path: Path, module_file: str):
    sys.path.insert(0, str(path))
    argv, sys.argv = sys.argv, [module_file]
    try:
        spec = importlib.util.spec_from_file_location(Path(module_file).stem + "_authors", path / module_file)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        from utils import get_args   # the authors' package, from their checkout
        return mod, get_args
    finally:
        sys.argv = argv


def bench_authors_shapes(path: Path, n: int) -> float:
    mod, get_args = load_authors(path, "train_val_data_generator.py")
    argv, sys.argv = sys.argv, ["x"]
    try:
        gen = mod.SyntheticShapeDataGenerator(get_args("data_gen_train_val"))
    finally:
        sys.argv = argv
    np.random.seed(0)
    counts = np.random.randint(15, 26, size=n)
    return best_of(lambda: [gen.generate_synthetic_image(c) for c in counts], repeats=2, warmup=False) / n


# --------------------------------------------------------------------------------- realistic
def textures(size, seed=0):
    src = sources.BuiltinSource(size)
    obj, mask, bg, _ = src.draw(np.random.default_rng(seed))
    return obj, mask, bg


def bench_realistic(size, n: int) -> dict:
    cfg = realistic.RealisticConfig(img_size=size)
    items = [textures(size, i) for i in range(n)]
    t = best_of(lambda: [realistic.make_test_scene(generate.scene_rng(1, "test", i), *items[i], cfg)
                         for i in range(n)], repeats=2 if n > 1 else 1, warmup=False) / n
    # how many key-point blurs the scene needs (non-zero weights only) vs the authors' 2 × 2 × 151
    cam = cfg.camera
    rel, ang = realistic.draw_planes(generate.scene_rng(1, "test", 0))
    dbg, dfg = realistic.plane_depth_maps(rel, ang, size, cfg.z_range)
    mask = items[0][1]
    used = 0
    for depth, kp in ((dbg, realistic.key_points(dbg, 150)), (dfg, realistic.key_points(dfg, 150, mask))):
        used += len(np.unique(realistic.interpolation_weights(depth, kp)[0])) * 2
    return {"realistic_s_per_scene": t, "blurs_used": used, "blurs_authors": 2 * 2 * 151}


def direct_layer(layer, depth, kp, cam, limit=None):
    """Full-image 2-D convolution per key point and power, then the interpolation weight (baseline)."""
    keys, pix, w = realistic.interpolation_weights(depth, kp)
    out = np.zeros((2,) + layer.shape)
    done = 0
    for j in range(len(kp)):
        sel = keys == j
        weight = np.zeros(depth.size)
        weight[pix[sel]] = w[sel]
        weight = weight.reshape(depth.shape)
        for ii, rho in enumerate(cam.rhos):
            g = realistic.gaussian_kernel_1d(float(cam.sigma_px(kp[j], rho)))
            out[ii] += ndimage.convolve(layer, np.outer(g, g)[:, :, None], mode="reflect") * weight[:, :, None]
            done += 1
            if limit is not None and done >= limit:
                return out, done
    return out, done


def bench_direct(size, sample: int | None = None) -> float:
    """Seconds per scene of the direct baseline (``sample``: time that many blurs and scale up)."""
    cam = CameraParams()
    obj, mask, bg = textures(size)
    rel, ang = realistic.draw_planes(generate.scene_rng(1, "test", 0))
    dbg, dfg = realistic.plane_depth_maps(rel, ang, size, (cam.z_min, cam.z_max))
    layers = [(bg.astype(np.float64), dbg, realistic.key_points(dbg, 150)),
              (np.concatenate([obj, mask[..., None]], 2).astype(np.float64), dfg, realistic.key_points(dfg, 150, mask))]
    total = 0.0
    for layer, depth, kp in layers:
        t = time.perf_counter()
        _, done = direct_layer(layer, depth, kp, cam, limit=sample)
        total += (time.perf_counter() - t) * (2 * len(kp) / done)
    return total


def bench_authors_realistic(path: Path, size) -> float:
    mod, get_args = load_authors(path, "test_data_generator.py")
    argv, sys.argv = sys.argv, ["x"]
    try:
        args = get_args("data_gen_test")
    finally:
        sys.argv = argv
    args.num_sample_test = 1
    args.img_size = list(size)
    gen = mod.SyntheticRealisticDataGenerator(args, big=False)
    obj, mask, bg = textures(size)
    gen.frgd_masks, gen.frgd_objs, gen.bkgd_objs = mask[None], obj[None].astype(np.float64), bg[None].astype(np.float64)
    t = time.perf_counter()
    gen.generate_synthetic_image(0)
    return time.perf_counter() - t


# ---------------------------------------------------------------------------- memory/storage
def run_generator(out: Path, n_train: int, n_val: int, workers: int) -> dict:
    code = ("import resource, runpy, sys; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__'); "
            "r = resource.getrusage; print('RSS', r(resource.RUSAGE_SELF).ru_maxrss, r(resource.RUSAGE_CHILDREN).ru_maxrss)")
    cmd = [sys.executable, "-c", code, str(REPO / "train_val_data_generator.py"), "--data_path", str(out),
           "--num_sample_train", str(n_train), "--num_sample_val", str(n_val), "--workers", str(workers), "--quiet"]
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t
    rss_self, rss_child = (int(v) for v in r.stdout.split("RSS")[-1].split())
    stored = sum(p.stat().st_size for p in out.rglob("*.npy"))
    return {"wall_s": wall, "parent_peak_mb": rss_self / 1024, "worker_peak_mb": rss_child / 1024,
            "stored_bytes": stored, "scenes": n_train + n_val}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", type=int, default=100, help="basic-shape scenes timed on one core")
    p.add_argument("--realistic", type=int, default=3, help="realistic 147×147 scenes timed")
    p.add_argument("--big", action="store_true", help="also time a 587×587 realistic scene")
    p.add_argument("--rss_scenes", type=int, default=200, help="training scenes of the memory/storage run")
    p.add_argument("--authors", type=Path, default=None, help="checkout of the authors' repository to time")
    p.add_argument("--no_direct", action="store_true", help="skip the direct-convolution baseline (≈15 s)")
    p.add_argument("--full", action="store_true", help="generate the whole default set (8000 + 2000 scenes)")
    args = p.parse_args()

    res = {}
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    one_core()
    print("== basic-shape scenes (147×147, 15–25 shapes, one core) ==")
    r = bench_shapes(args.scenes)
    res.update(r)
    print(f"ours: {r['shapes_s_per_scene'] * 1e3:.1f} ms per scene pair with noise and every map "
          f"({r['shapes_clean_s_per_scene'] * 1e3:.1f} ms without the noise)")
    base = AUTHORS_SHAPES_S
    if args.authors:
        base = bench_authors_shapes(args.authors, max(10, args.scenes // 5))
        res["authors_shapes_s_per_scene"] = base
        print(f"authors' generate_synthetic_image, same machine: {base * 1e3:.0f} ms per scene pair (noise not included)")
    else:
        print(f"authors (issue figure): {base * 1e3:.0f} ms per scene pair")
    print(f"speed-up: {base / r['shapes_s_per_scene']:.1f}× (with our noise), "
          f"{base / r['shapes_clean_s_per_scene']:.1f}× (clean only)")

    print("\n== realistic scenes (147×147, 151 key points per layer, one core) ==")
    r = bench_realistic((147, 147), args.realistic)
    res.update(r)
    print(f"ours: {r['realistic_s_per_scene']:.3f} s per scene ({r['blurs_used']} of {r['blurs_authors']} "
          f"key-point blurs have non-zero weight; separable, band-limited)")
    if not args.no_direct:
        d = bench_direct((147, 147))
        res["direct_s_per_scene"] = d
        print(f"direct full-image 2-D convolution per key point (baseline): {d:.2f} s per scene "
              f"→ {d / r['realistic_s_per_scene']:.0f}×")
    if args.authors:
        a = bench_authors_realistic(args.authors, (147, 147))
        res["authors_realistic_s_per_scene"] = a
        print(f"authors' renderer, same machine: {a:.2f} s per scene → {a / r['realistic_s_per_scene']:.0f}×")
    if args.big:
        rb = bench_realistic((587, 587), 1)
        res["realistic_587_s_per_scene"] = rb["realistic_s_per_scene"]
        db = bench_direct((587, 587), sample=12)
        res["direct_587_s_per_scene_estimated"] = db
        print(f"587×587: ours {rb['realistic_s_per_scene']:.2f} s per scene; direct baseline ≈ {db:.0f} s "
              f"(12 blurs timed, scaled to {2 * 2 * 151}) → {db / rb['realistic_s_per_scene']:.0f}×")

    if cores is not None:
        os.sched_setaffinity(0, cores)
    print("\n== worker scaling, memory and storage (147×147, default options) ==")
    cfg = shapes.ShapeSceneConfig()
    with tempfile.TemporaryDirectory(dir=REPO / "benchmarks") as tmp:
        tmp = Path(tmp)
        n_tr, n_va = args.rss_scenes, max(1, args.rss_scenes // 4)
        runs = {}
        n_cores = len(cores) if cores else (os.cpu_count() or 1)
        for w in sorted({1, n_cores}):
            runs[w] = run_generator(tmp / f"w{w}", n_tr, n_va, w)
            print(f"workers={w}: {runs[w]['wall_s']:.1f} s for {n_tr}+{n_va} scenes "
                  f"({runs[w]['scenes'] / runs[w]['wall_s']:.1f} scenes/s incl. start-up), peak RSS parent "
                  f"{runs[w]['parent_peak_mb']:.0f} MB, largest worker {runs[w]['worker_peak_mb']:.0f} MB")
        ws = sorted(runs)
        same = all(subprocess.run(["cmp", "-s", str(a), str(tmp / f"w{ws[-1]}" / a.relative_to(tmp / f"w{ws[0]}"))]).returncode == 0
                   for a in (tmp / f"w{ws[0]}").rglob("*.npy"))
        print(f"identical .npy bytes for workers {ws}: {same}")
        r1 = runs[ws[0]]
        per_scene = r1["stored_bytes"] / r1["scenes"]
        f64 = generate.train_val_float64_bytes(cfg, 1)
        print(f"stored: {per_scene / 1e3:.0f} kB per scene (with its 2 patches) vs {f64 / 1e3:.0f} kB in float64 "
              f"= {per_scene / f64:.3f} of the authors' size")
        print(f"default set (8000 + 2000): ≈ {per_scene * 10000 / 1e9:.2f} GB on disk (float64: {f64 * 10000 / 1e9:.1f} GB)")
        per_patch = sum(int(np.prod(shape(cfg.R))) * np.dtype(dt(cfg)).itemsize
                        for shape, dt in generate.PATCH_FILES.values()) + 16
        est = (r1["parent_peak_mb"] + 2 * (8000 - n_tr) * per_patch / 2**20
               + max(r["worker_peak_mb"] for r in runs.values()) * ws[-1])
        print(f"peak RAM extrapolated to 8000 + 2000: ≈ {est:.0f} MB (parent peak + the in-memory patch arrays "
              f"growing with N + {ws[-1]} workers)")
        res["memory"] = {str(k): v for k, v in runs.items()}
        res["stored_fraction_of_float64"] = per_scene / f64
    if args.full:
        with tempfile.TemporaryDirectory(dir=REPO / "benchmarks") as tmp:
            r = run_generator(Path(tmp) / "full", 8000, 2000, 0)
            print(f"\nfull default set: {r['wall_s'] / 60:.1f} min, peak RSS parent {r['parent_peak_mb']:.0f} MB, "
                  f"largest worker {r['worker_peak_mb']:.0f} MB, {r['stored_bytes'] / 1e9:.2f} GB stored")
            res["full"] = r
    print("\n" + json.dumps(res, default=float))


if __name__ == "__main__":
    main()
