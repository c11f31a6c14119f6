"""Whole-process time per 147×147 pair: the authors' evaluation script against ours, same scenes and
weights (printed, never asserted; README "Evaluation and inference" → "Speed").

    python benchmarks/bench_vs_authors.py --authors /path/to/Blurry-Edges --data_path ./data/data_test \\
        [--scenes 2] [--weights ./pretrained_weights] [--threads 2] [--precisions off on] [--repeats 1]

``--authors`` is a checkout of github.com/guo-research-group/Blurry-Edges; nothing of it is copied
here, its ``blurry_edges_test.py`` is only *run*, from its own folder, with ``--cuda cpu``. For it
this script prepares, in a temporary folder:

* the first ``--scenes`` scenes of ``--data_path`` (a test set in our format, or the authors') in the
  authors' test-set layout — ``images_ny.npy`` (photon counts), ``depth_maps.npy`` (metres),
  ``alphas.npy`` and ``images_gt.npy`` (clean · α / 255), all float64 — the inverse of how
  ``blurry_edges.data.TestSceneDataset`` reads that layout (:func:`to_authors_layout`);
* float32 raw state-dict copies of our ``pretrained_local_stage.pth`` / ``pretrained_global_stage.pth``
  (fp16 ``{"model", "meta"}`` checkpoints), which the authors' script loads with a bare
  ``load_state_dict(torch.load(...))`` (:func:`export_authors_weights`); their key names and shapes
  are checked against the authors' own model classes first (:func:`check_against_authors_models`).

Both scripts then run as child processes with the same ``OMP_NUM_THREADS`` (``--threads``), and the
wall clock of the whole process (interpreter start, imports, weight loading, every scene, figures,
exit) is taken around each. The table shows, per setting, the best whole-process time of
``--repeats`` runs, that time per pair, each script's own per-scene running time (network input to
depth map, as both scripts time it), the speed-up against the authors' script, and the δ1 / RMSE
each script printed — for float32 the two should agree, since both networks see the same numbers
(paper Table 3 metrics; the authors print three decimals). Results go to ``--out`` as JSON.

Like for like: the authors' script always draws a figure per scene (it has no switch), ours runs
with ``--no_figures`` unless ``--figures``; each script's own running time excludes figures.

OpenCV >= 5 stops the authors' script before its first scene (its figure code writes text on a
float64 canvas, which OpenCV 4 allowed). ``--opencv5_compat auto`` (default) then starts it through
``benchmarks/authors_launcher.py``, which only lets ``cv2.putText`` draw on such a canvas (same
pixels as OpenCV 4; their files are not changed) and says so; ``off`` runs it as is and reports
the failure, or use ``--authors_python`` with an interpreter that has OpenCV 4.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))   # run from a checkout without install

from blurry_edges.data import TestSceneDataset  # noqa: E402
from blurry_edges.features import native_bf16  # noqa: E402
from blurry_edges.models import WEIGHT_FILES, GlobalStage, LocalStage, load_weights  # noqa: E402

#: The geometry the authors' evaluation script is hard-wired to (its argument defaults; the local
#: stage's fully connected layer fixes R = 21). Paper Sec. 4.1.
AUTHORS_R, AUTHORS_STRIDE, AUTHORS_IMG_SIZE = 21, 2, (147, 147)
#: The stages the authors' script loads without ``--densify`` (sparse depth, paper Table 3 "Ours").
STAGES = ("local", "global")
AUTHORS_SCRIPT = "blurry_edges_test.py"
AUTHORS_ROW = "authors (fp32)"    # the table's baseline row


# ------------------------------------------------------------------------------------ the data
def to_authors_layout(src: str | os.PathLike, dst: str | os.PathLike, n: int) -> dict[str, Any]:
    """Write the first ``n`` scenes of the test set at ``src`` to ``dst`` in the authors' layout.

    The inverse of ``TestSceneDataset`` on that layout (README "Data"; ``blurry_edges/data.py``):
    ``images_ny`` [n, 2, H, W, 3] photon counts, ``depth_maps`` [n, H, W] metres, ``alphas`` [n],
    and, when ``src`` has it, ``images_gt`` [n, 2, H, W, 3] as clean · α / 255 — every array
    float64, no manifest. Our 8-bit counts, float32 depths and float32 α convert exactly, so both
    scripts divide the same counts by the same α.

    Channels stay in the order they are stored in (ours: RGB). The authors' own files are BGR, but
    their network sees whatever order is stored, so keeping ours hands their script the very numbers
    our script feeds the same weights; ``TestSceneDataset`` on ``dst`` (default ``channel_order``)
    returns exactly the items it returns on ``src``.

    Returns a description of what was written (for the results JSON). Raises ``ValueError`` when
    ``src`` has fewer than ``n`` scenes.
    """
    src, dst = Path(src), Path(dst)
    dataset = TestSceneDataset(src)            # validates the set (manifest, shapes) with its own hints
    if not 1 <= n <= len(dataset):
        raise ValueError(f"--scenes {n}: the test set at {src} holds {len(dataset)} scenes; pass --scenes 1 to "
                         f"{len(dataset)} or generate more with `python test_data_generator.py --data_path {src} "
                         f"--source builtin --num_sample_test {n} --overwrite`")
    dst.mkdir(parents=True, exist_ok=True)
    load = lambda name: np.load(src / f"{name}.npy", mmap_mode="r")   # noqa: E731
    alphas = np.asarray(load("alphas")[:n], dtype=np.float64)
    np.save(dst / "images_ny.npy", np.asarray(load("images_ny")[:n], dtype=np.float64))
    np.save(dst / "depth_maps.npy", np.asarray(load("depth_maps")[:n], dtype=np.float64))
    np.save(dst / "alphas.npy", alphas)
    written = ["images_ny.npy", "depth_maps.npy", "alphas.npy"]
    if (src / "images_gt.npy").is_file():
        gt = np.asarray(load("images_gt")[:n], dtype=np.float64)
        if dataset.format == "ours":            # ours: clean in 0..255; theirs: clean · α / 255
            gt = gt / 255.0 * alphas[:, None, None, None, None]
        np.save(dst / "images_gt.npy", gt)
        written.append("images_gt.npy")
    return {"source": str(src), "source_format": dataset.format, "scenes": n, "img_size": list(dataset.img_size),
            "channel_order": dataset.stored_channel_order, "folder": str(dst), "files": written}


# --------------------------------------------------------------------------------- the weights
def _model_for(stage: str) -> torch.nn.Module:
    return LocalStage(AUTHORS_R) if stage == "local" else GlobalStage(stride=AUTHORS_STRIDE)


def export_authors_weights(weights: str | os.PathLike, dst: str | os.PathLike,
                           stages: Sequence[str] = STAGES) -> dict[str, Path]:
    """Write float32 raw state dicts of our weight files in ``weights`` to ``dst`` under the same names.

    Our files (``blurry_edges.release``: fp16 ``{"model": state_dict, "meta": ...}``) are loaded
    strictly into our networks at the authors' geometry (R = 21, stride 2, 147×147; their script
    has no other), whose state dicts carry the authors' key names (README "Weights"); the result is
    what ``torch.save(model.state_dict(), path)`` would write, floats as float32, integer buffers
    (BatchNorm's ``num_batches_tracked``) unchanged. fp16 → float32 is exact, so both scripts
    compute with the same weights.

    Raises ``FileNotFoundError`` (a weight file is missing) or ``ValueError`` (a file for another
    network, or trained with another R, stride or image size than the authors' script uses).
    """
    weights, dst = Path(weights), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for stage in stages:
        src = weights / WEIGHT_FILES[stage]
        model = _model_for(stage)
        meta = load_weights(model, src, what=f"{stage} stage")      # strict; checks meta R / stride
        size = meta.get("img_size")
        if stage.startswith("global") and size is not None and tuple(size) != AUTHORS_IMG_SIZE:
            raise ValueError(f"{src} was trained on {size[0]}×{size[1]} images, but the authors' script runs "
                             f"{AUTHORS_IMG_SIZE[0]}×{AUTHORS_IMG_SIZE[1]} only; benchmark weights of that size")
        state = {k: (v.detach().to(torch.float32) if v.is_floating_point() else v.detach()).contiguous().clone()
                 for k, v in model.state_dict().items()}
        out[stage] = dst / WEIGHT_FILES[stage]
        torch.save(state, out[stage])
    return out


def state_shapes(path: str | os.PathLike) -> dict[str, list[int]]:
    """Key → shape of a raw state dict on disk."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: list(v.shape) for k, v in state.items()}


_AUTHORS_PROBE = (      # run inside the authors' checkout: their untrained networks' key → shape, OpenCV
    "import json, cv2\n"
    "from models import LocalStage, GlobalStage\n"
    "nets = {'local': LocalStage(), 'global': GlobalStage(in_parameter_size=38, out_parameter_size=12, device='cpu')}\n"
    "print(json.dumps({'opencv': cv2.__version__,\n"
    "                  'shapes': {s: {k: list(v.shape) for k, v in m.state_dict().items()} for s, m in nets.items()}}))\n"
)


def probe_authors(checkout: Path, python: str, env: dict[str, str]) -> dict[str, Any]:
    """``{"shapes": stage → key → shape, "opencv": version}`` of the authors' ``LocalStage`` and
    ``GlobalStage``, built by their own code (a child process in ``checkout``, as their evaluation
    script builds them), and the OpenCV their interpreter imports."""
    r = subprocess.run([python, "-c", _AUTHORS_PROBE], cwd=checkout, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"could not build the authors' networks from {checkout} (exit {r.returncode}):\n"
                           f"{r.stderr.strip()[-2000:]}\n{dependency_hint(r.stderr)}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def check_against_authors_models(exported: dict[str, Path], theirs: dict[str, dict[str, list[int]]]) -> None:
    """Raise ``ValueError`` unless every exported file has exactly the keys and shapes of the authors'
    network (what their strict ``load_state_dict`` needs)."""
    problems = []
    for stage, path in exported.items():
        ours, want = state_shapes(path), theirs[stage]
        missing, extra = sorted(set(want) - set(ours)), sorted(set(ours) - set(want))
        shapes = [f"{k} {ours[k]} vs {want[k]}" for k in want if k in ours and ours[k] != want[k]]
        for label, items in (("missing", missing), ("unexpected", extra), ("shape differs", shapes)):
            if items:
                problems.append(f"{stage} stage, {label}: {', '.join(items[:5])}"
                                + (f" … ({len(items)} in all)" if len(items) > 5 else ""))
    if problems:
        raise ValueError("our weights do not fit the authors' networks in this checkout: " + "; ".join(problems)
                         + ". The checkout may be another version of their code than this project follows "
                           "(README \"Weights\"); use a checkout of their main branch")


# ------------------------------------------------------------------------------- the processes
def dependency_hint(stderr: str) -> str:
    """A sentence on why the authors' script failed where the cause is recognizable, else ''."""
    missing = re.search(r"No module named '([^']+)'", stderr)
    if missing:
        return (f"The authors' code needs the Python package '{missing.group(1)}', which this environment lacks "
                "(their requirements.txt lists their dependencies); install it, or pass --authors_python with "
                "an interpreter that has it.")
    if "img.depth() == CV_8U" in stderr:
        return ("The authors' figure code draws text on a float64 canvas, which OpenCV >= 5 refuses (OpenCV 4 "
                "accepted it); rerun with --opencv5_compat on (benchmarks/authors_launcher.py), or pass "
                "--authors_python with an interpreter that has opencv-python-headless<5.")
    if re.search(r"CUDA|cuda", stderr):
        return ("The authors' code asked for CUDA although it was started with --cuda cpu; it does not run on "
                "this CPU-only machine as published (not patched here).")
    return ""


def thread_env(threads: int, drop_pythonpath: bool = False) -> dict[str, str]:
    """The environment of a child: the same thread count for OpenMP / MKL (hence ``torch``) in both."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    if drop_pythonpath:      # the authors' packages (data, models, utils) must come from their checkout
        env.pop("PYTHONPATH", None)
    return env


def run_timed(cmd: Sequence[str], cwd: Path, env: dict[str, str], log_stem: Path) -> dict[str, Any]:
    """Run ``cmd`` to completion; return its wall-clock seconds (``time.perf_counter`` from start to
    reaped), exit code, CPU seconds, peak resident memory (``wait4``'s ``ru_maxrss``) and output.

    stdout / stderr are written to ``log_stem``.stdout.txt / .stderr.txt (files, not pipes, so a
    chatty child never blocks) and returned as text."""
    out_path, err_path = log_stem.with_suffix(".stdout.txt"), log_stem.with_suffix(".stderr.txt")
    with open(out_path, "w") as fo, open(err_path, "w") as fe:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=fo, stderr=fe)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"cmd": [str(c) for c in cmd], "cwd": str(cwd), "wall_s": wall, "rc": proc.returncode,
            "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024,
            "stdout": out_path.read_text(), "stderr": err_path.read_text(),
            "stdout_file": str(out_path), "stderr_file": str(err_path)}


_NUM = r"(-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|nan|inf)"


def parse_authors_output(stdout: str) -> dict[str, Any]:
    """The per-scene running times, their average and the averaged metrics the authors' script printed
    (three decimals; RMSE in cm, AbsRel ×100)."""
    per_scene = [float(v) for v in re.findall(rf"^--- Running time:\s*{_NUM} s", stdout, re.M)]
    avg = re.search(rf"^Average running time:\s*{_NUM} s", stdout, re.M)
    line = re.search(r"^Average metrics for whole dataset:(.*)$", stdout, re.M)
    metrics = {k.lower(): float(v) for k, v in re.findall(rf"(\w+)\s*=\s*{_NUM}", line.group(1))} if line else {}
    return {"scene_times_s": per_scene, "mean_time_s": float(avg.group(1)) if avg else None,
            "delta1": metrics.get("delta1"), "rmse_cm": metrics.get("rmse"), "metrics": metrics}


def parse_our_summary(summary_json: Path) -> dict[str, Any]:
    """The same quantities from the ``summary.json`` our script writes (README "Evaluate on a test set")."""
    s = json.loads(summary_json.read_text())
    avg = s["average"]
    return {"scene_times_s": [r["time_s"] for r in s["per_scene"]], "mean_time_s": s["mean_time_s"],
            "delta1": avg.get("delta1"), "rmse_cm": avg.get("rmse_cm"), "metrics": avg,
            "precision": s.get("precision")}


def authors_command(checkout: Path, python: str, data: Path, models: Path, logs: Path,
                    opencv5_compat: bool = False) -> list[str]:
    """The authors' evaluation, sparse depth (no ``--densify``), on the CPU; with ``opencv5_compat``
    through ``benchmarks/authors_launcher.py`` (their figure labels on OpenCV >= 5)."""
    launcher = [str(Path(__file__).resolve().parent / "authors_launcher.py")] if opencv5_compat else []
    return [python, *launcher, str(checkout / AUTHORS_SCRIPT), "--cuda", "cpu", "--data_path", str(data),
            "--model_path", str(models), "--log_path", str(logs)]


def use_opencv5_compat(choice: str, opencv_version: str) -> bool:
    """``--opencv5_compat``: ``on``/``off``, or ``auto`` = on where the authors' interpreter has OpenCV >= 5."""
    if choice != "auto":
        return choice == "on"
    try:
        return int(opencv_version.split(".")[0]) >= 5
    except ValueError:
        return False


def our_command(data: Path, scenes: int, weights: Path, bf16: str, logs: Path, run_name: str,
                figures: bool) -> list[str]:
    """Our evaluation of the same scenes and weights (README "Evaluate on a test set")."""
    cmd = [sys.executable, str(REPO / "blurry_edges_test.py"), "--data_path", str(data), "--max_scenes", str(scenes),
           "--model_path", str(weights), "--local_weights", str(weights / WEIGHT_FILES["local"]),
           "--global_weights", str(weights / WEIGHT_FILES["global"]), "--bf16", bf16, "--no_progress",
           "--log_path", str(logs), "--run_name", run_name, "--overwrite", "--cuda", "cpu"]
    return cmd if figures else cmd + ["--no_figures"]


# ---------------------------------------------------------------------------------- reporting
def machine_info(threads: int) -> dict[str, Any]:
    """CPU model, whether oneDNN computes bf16 natively, cores, threads, versions."""
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": model, "mkldnn_bf16_supported": native_bf16(), "cores": cores, "threads": threads,
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def _fmt(v: Optional[float], spec: str) -> str:
    return "–" if v is None else format(v, spec)


def summarize(runs: list[dict[str, Any]], scenes: int) -> dict[str, Any]:
    """Best-of-repeats figures of one setting (the least disturbed run, as ``benchmarks/timing.py``)."""
    ok = [r for r in runs if r["rc"] == 0 and r.get("parsed")]
    if not ok:
        return {"ok": False}
    best = min(ok, key=lambda r: r["wall_s"])
    own = [r["parsed"]["mean_time_s"] for r in ok if r["parsed"]["mean_time_s"] is not None]
    return {"ok": True, "wall_s": best["wall_s"], "wall_s_all": [r["wall_s"] for r in ok],
            "wall_s_median": statistics.median(r["wall_s"] for r in ok), "s_per_pair": best["wall_s"] / scenes,
            "own_s_per_pair": min(own) if own else None, "delta1": ok[0]["parsed"]["delta1"],
            "rmse_cm": ok[0]["parsed"]["rmse_cm"], "peak_rss_mb": max(r["peak_rss_mb"] for r in ok),
            "cpu_s": best["cpu_s"]}


def print_table(results: dict[str, dict[str, Any]], scenes: int) -> None:
    """One row per setting: whole process, per pair, the script's own per-pair time, speed-ups, metrics."""
    base = results.get(AUTHORS_ROW, {}).get("summary", {})
    head = (f"{'setting':<18}{'whole s':>10}{'s/pair':>9}{'own s/pair':>12}{'× whole':>9}{'× own':>8}"
            f"{'δ1':>8}{'RMSE cm':>9}{'peak MB':>9}")
    print(head)
    print("-" * len(head))
    for name, res in results.items():
        s = res["summary"]
        if not s.get("ok"):
            print(f"{name:<18}failed (exit {res['runs'][-1]['rc']}; its stderr is printed above and kept in the JSON)")
            continue
        up = up_own = None
        if base.get("ok"):
            up = base["wall_s"] / s["wall_s"]
            if base.get("own_s_per_pair") and s.get("own_s_per_pair"):
                up_own = base["own_s_per_pair"] / s["own_s_per_pair"]
        print(f"{name:<18}{s['wall_s']:>10.2f}{s['s_per_pair']:>9.2f}{_fmt(s['own_s_per_pair'], '.2f'):>12}"
              f"{_fmt(up, '.2f'):>9}{_fmt(up_own, '.2f'):>8}{_fmt(s['delta1'], '.3f'):>8}"
              f"{_fmt(s['rmse_cm'], '.3f'):>9}{s['peak_rss_mb']:>9.0f}")
    print(f"\nwhole s: best of the repeats, interpreter start to exit, {scenes} pair(s); s/pair = whole / {scenes}; "
          "own s/pair: the script's printed mean running time per pair (network input to depth map); "
          "× = the authors' time / this row's; δ1, RMSE: as each script printed them (sparse depth, crop 10).")


# ------------------------------------------------------------------------------------- driver
def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--authors", type=Path, required=True,
                   help="checkout of github.com/guo-research-group/Blurry-Edges (its blurry_edges_test.py is run)")
    p.add_argument("--data_path", type=Path, default=Path("./data/data_test"),
                   help="test set in our format (test_data_generator.py) or the authors'")
    p.add_argument("--scenes", type=int, default=2, help="the first N scenes of the test set")
    p.add_argument("--weights", type=Path, default=REPO / "pretrained_weights",
                   help="folder with pretrained_local_stage.pth and pretrained_global_stage.pth")
    p.add_argument("--threads", type=int, default=None, help="OMP/MKL threads of both scripts (default: every core)")
    p.add_argument("--precisions", nargs="+", default=["off"], choices=["off", "on", "auto"],
                   help="our --bf16 settings to run (the authors' script is float32 only)")
    p.add_argument("--repeats", type=int, default=1, help="runs of each setting, interleaved; the best is shown")
    p.add_argument("--figures", action="store_true",
                   help="let our script draw its per-scene figures too (the authors' always does)")
    p.add_argument("--authors_python", type=str, default=sys.executable,
                   help="interpreter for the authors' script (default: this one)")
    p.add_argument("--opencv5_compat", choices=["auto", "on", "off"], default="auto",
                   help="run the authors' script through benchmarks/authors_launcher.py, which lets cv2.putText draw "
                        "their figure labels on OpenCV >= 5 (their code unchanged); auto: when their interpreter "
                        "has OpenCV >= 5")
    p.add_argument("--out", type=Path, default=Path("logs/bench_vs_authors.json"), help="results JSON")
    p.add_argument("--keep", action="store_true", help="keep the work folder (converted data, weights, logs)")
    args = p.parse_args(argv)

    checkout = args.authors.resolve()
    if not (checkout / AUTHORS_SCRIPT).is_file():
        p.error(f"--authors {args.authors}: no {AUTHORS_SCRIPT} there; pass a checkout of "
                "https://github.com/guo-research-group/Blurry-Edges")
    if args.scenes < 1 or args.repeats < 1:
        p.error("--scenes and --repeats must be at least 1")
    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    torch.set_num_threads(threads)
    info = machine_info(threads)
    print(f"machine: {info['cpu']}; {info['cores']} cores; mkldnn bf16 supported: {info['mkldnn_bf16_supported']}; "
          f"threads {threads}; torch {info['torch']}; python {info['python']}; load average "
          f"{' '.join(f'{x:.2f}' for x in info['load_average'] or [])}")

    work = Path(tempfile.mkdtemp(prefix="bench_vs_authors_"))
    try:
        try:
            layout = to_authors_layout(args.data_path, work / "data_test", args.scenes)
            if tuple(layout["img_size"]) != AUTHORS_IMG_SIZE:
                raise ValueError(f"the test set at {args.data_path} holds {layout['img_size'][0]}×{layout['img_size'][1]} "
                                 f"images; the authors' blurry_edges_test.py runs {AUTHORS_IMG_SIZE[0]}×"
                                 f"{AUTHORS_IMG_SIZE[1]} only: make one with `python test_data_generator.py "
                                 f"--source builtin --num_sample_test {args.scenes} --data_path ./data/data_test_bench`")
            exported = export_authors_weights(args.weights, work / "weights")
            probe = probe_authors(checkout, args.authors_python, thread_env(threads, drop_pythonpath=True))
            check_against_authors_models(exported, probe["shapes"])
        except (FileNotFoundError, ValueError, RuntimeError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"{args.scenes} scene(s) of {layout['img_size'][0]}×{layout['img_size'][1]} from {args.data_path} "
              f"→ the authors' layout in {layout['folder']}; float32 weights in {work / 'weights'} "
              "(keys and shapes match the authors' networks)")
        compat = use_opencv5_compat(args.opencv5_compat, probe["opencv"])
        if compat:
            print(f"the authors' interpreter has OpenCV {probe['opencv']}: their script runs through "
                  "benchmarks/authors_launcher.py, whose cv2.putText draws their figure labels on the float64 "
                  "canvas OpenCV >= 5 refuses (their files unchanged; nothing else differs)")

        settings: dict[str, list[str]] = {
            AUTHORS_ROW: authors_command(checkout, args.authors_python, work / "data_test", work / "weights",
                                         work / "authors_logs", compat)}
        for prec in args.precisions:
            settings[f"ours --bf16 {prec}"] = our_command(args.data_path.resolve(), args.scenes,
                                                          args.weights.resolve(), prec, work / "our_logs",
                                                          f"bf16_{prec}", args.figures)
        results: dict[str, dict[str, Any]] = {name: {"runs": []} for name in settings}
        for rep in range(args.repeats):
            for name, cmd in settings.items():
                mine = name != AUTHORS_ROW
                print(f"[{rep + 1}/{args.repeats}] {name} …", flush=True)
                run = run_timed(cmd, REPO if mine else checkout, thread_env(threads, drop_pythonpath=not mine),
                                work / f"{re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_')}_{rep}")
                if run["rc"] == 0:
                    try:
                        run["parsed"] = (parse_our_summary(work / "our_logs" / cmd[cmd.index("--run_name") + 1]
                                                           / "summary.json") if mine
                                         else parse_authors_output(run["stdout"]))
                    except (OSError, KeyError, ValueError) as e:     # exit 0 but no results to read
                        run["parsed"] = None
                        print(f"  exit 0 but its results could not be read: {e}", file=sys.stderr)
                else:
                    hint = "" if mine else dependency_hint(run["stderr"])
                    print(f"  failed (exit {run['rc']}):\n{run['stderr'].strip()[-1500:]}\n  {hint}".rstrip(),
                          file=sys.stderr)
                    run["hint"] = hint
                print(f"  {run['wall_s']:.2f} s whole process, exit {run['rc']}", flush=True)
                results[name]["runs"].append(run)
        for res in results.values():
            res["summary"] = summarize(res["runs"], args.scenes)

        print(f"\n== one 147×147 pair, CPU, {threads} thread(s), {args.scenes} scene(s), best of {args.repeats} ==")
        print_table(results, args.scenes)
        for res in results.values():          # the logs live in the work folder; keep only their text
            for run in res["runs"]:
                run.pop("stdout_file"), run.pop("stderr_file")
        record = {"machine": info, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                  "authors_checkout": str(checkout), "authors_opencv": probe["opencv"], "opencv5_compat": compat,
                  "data": layout,
                  "weights": {k: str(v) for k, v in exported.items()}, "results": results}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2, default=str))
        print(f"\nresults (every run's command, times, output): {args.out.resolve()}")
        if args.keep:
            print(f"work folder kept: {work} (data_test/, weights/, authors_logs/, our_logs/, *.stdout.txt)")
        return 0 if all(r["summary"].get("ok") for r in results.values()) else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
