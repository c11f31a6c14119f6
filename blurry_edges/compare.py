"""One test set, every depth method, a paper-Table-3-style table (``blurry_edges_test.py --compare``).

Evaluates the training-free Focal Track baseline (Guo et al., ICCV 2017; :mod:`blurry_edges.focal_track`)
and, where their weight files exist, the Blurry-Edges modes sparse ("Ours"), W ("Ours-W"), PP
("Ours-PP") and the domain-transform densifier (dt) on the same scenes with the same metrics
(:func:`blurry_edges.metrics.eval_depth`) and the same per-scene outputs as a single-method run
(:func:`blurry_edges.evaluate.evaluate_test_set`), then prints each measured row beside the paper's
Table 3 row. A mode whose weights are missing is listed with the file it needs.

Each measured Blurry-Edges row is also judged on exactly its own pixels against two yardsticks
that need no training (:mod:`blurry_edges.yardsticks`): a constant depth (the test set's median)
and Focal Track's dense estimate, with the per-scene correlation of predicted and true depth. A
sparse method picks its pixels, so only these same-pixel figures tell learned depth from abstention.

Outputs under ``--log_path/<run name>/`` (default run name ``compare`` / ``compare_big``): one
sub-folder per method (``focal_track/``, ``sparse/``, ``w/``, ``pp/``, ``dt/``) holding the usual
``scene_XXXX.npz`` / ``.png``, ``summary.csv`` and ``summary.json``, plus ``comparison.csv``,
``comparison.json`` and ``comparison.md`` (a Markdown table for a README) with the table.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Optional

from .camera import CameraParams
from .densify import DTParams
from .metrics import METRIC_NAMES

__all__ = ["PAPER_TABLE3", "ROWS", "format_markdown", "format_table", "run_comparison"]

#: Paper Table 3 (synthetic test set, 147×147, two images): δ1, δ2, δ3, RMSE (cm), AbsRel.
PAPER_TABLE3: dict[str, tuple[float, float, float, float, float]] = {
    "Focal Track": (0.588, 0.784, 0.874, 6.308, 4.640),
    "Tang et al.": (0.663, 0.790, 0.878, 6.737, 4.346),
    "Ours (sparse)": (0.720, 0.840, 0.895, 5.281, 3.295),
    "Ours-W": (0.628, 0.812, 0.885, 6.297, 4.525),
    "Ours-PP": (0.806, 0.906, 0.945, 3.992, 2.691),
}

#: (key, table name, method, densify mode); the key names the output sub-folder.
ROWS = (
    ("focal_track", "Focal Track", "focal_track", None),
    ("tang", "Tang et al.", None, None),                   # not implemented: paper row only
    ("sparse", "Ours (sparse)", "blurry_edges", "none"),
    ("w", "Ours-W", "blurry_edges", "w"),
    ("pp", "Ours-PP", "blurry_edges", "pp"),
    ("dt", "Ours-DT (densify dt)", "blurry_edges", "dt"),
)


def _num(v: Optional[float], digits: int = 3) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _same_pixel_rows(r: dict, with_pixels: bool = True) -> list[tuple[str, dict, str]]:
    """(name, metrics, note) of the yardstick lines under a measured row, if it was scored; the note
    names the shared pixels unless ``with_pixels`` is False (a table with a pixels column)."""
    y = r.get("yardsticks")
    if not y:
        return []
    pixels = f"same pixels ({100 * y['coverage']:.0f} %); " if with_pixels else ""
    rows = [(f"  constant {y['constant']:.3f} m", y["constant_same_pixels"],
             f"{pixels}depth correlation per scene {_num(y['correlation'], 2)}"
             + (f"; slope on true depth {_num(y['slope'], 2)}" if "slope" in y else ""))]
    if y.get("focal_track_same_pixels"):
        rows.append(("  Focal Track", y["focal_track_same_pixels"],
                     "same pixels (its dense estimate)" if with_pixels else "its dense estimate"))
    return rows


def _paper_row(r: dict) -> Optional[tuple[float, float, float, float, float]]:
    """The paper's Table 3 figures for a result row (``Ours-DT (densify dt)`` has none)."""
    return PAPER_TABLE3.get(r["name"].split(" (densify")[0])


def format_table(results: list[dict]) -> str:
    """The comparison as text: per method a ``measured`` line (or why not), for Blurry-Edges rows the
    yardsticks on the same pixels, and the ``paper`` line."""
    head = f"{'method':<22} {'source':<9} {'δ1':>6} {'δ2':>6} {'δ3':>6} {'RMSE cm':>8} {'AbsRel':>7}  note"
    lines = [head, "-" * len(head)]
    for r in results:
        if r["status"] == "measured":
            a = r["average"]
            lines.append(f"{r['name']:<22} {'measured':<9} {_num(a['delta1']):>6} {_num(a['delta2']):>6} "
                         f"{_num(a['delta3']):>6} {_num(a['rmse_cm']):>8} {_num(a['absrel']):>7}  "
                         f"{r['n_scenes']} scenes, {r['mean_time_s']:.3f} s/scene")
            for name, m, note in _same_pixel_rows(r):
                lines.append(f"{name:<22} {'yardstick':<9} {_num(m['delta1']):>6} {_num(m['delta2']):>6} "
                             f"{_num(m['delta3']):>6} {_num(m['rmse_cm']):>8} {_num(m['absrel']):>7}  {note}")
        else:
            lines.append(f"{r['name']:<22} {'measured':<9} {'':>6} {'':>6} {'':>6} {'':>8} {'':>7}  {r['note']}")
        paper = _paper_row(r)
        if paper is not None:
            d1, d2, d3, rmse, absrel = paper
            lines.append(f"{'':<22} {'paper':<9} {d1:>6.3f} {d2:>6.3f} {d3:>6.3f} {rmse:>8.3f} {absrel:>7.3f}  "
                         "Table 3, 200 scenes")
    return "\n".join(lines)


def format_markdown(results: list[dict]) -> str:
    """The comparison as a Markdown table (``comparison.md``), ready for a README: per method its
    measured row with the share of pixels it kept, the yardsticks on exactly those pixels (Blurry-Edges
    rows) and the paper's Table 3 row. Rows that were not measured say why."""
    lines = ["| method | source | δ1 | δ2 | δ3 | RMSE (cm) | AbsRel | pixels | note |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]

    def cells(m: dict) -> str:
        return " | ".join(_num(m.get(k)) for k in METRIC_NAMES)

    for r in results:
        if r["status"] == "measured":
            y = r.get("yardsticks") or {}
            pixels = f"{100 * y['coverage']:.0f} %" if "coverage" in y else ""
            n = r["n_scenes"]
            lines.append(f"| {r['name']} | measured | {cells(r['average'])} | {pixels} | {n} scene{'s' * (n != 1)} |")
            for name, m, note in _same_pixel_rows(r, with_pixels=False):
                lines.append(f"| {name.strip()} | same pixels | {cells(m)} | {pixels} | {note} |")
        else:
            lines.append(f"| {r['name']} | measured | | | | | | | {r['note']} |")
        paper = _paper_row(r)
        if paper is not None:
            lines.append(f"| {r['name']} | paper | " + " | ".join(f"{v:.3f}" for v in paper)
                         + " | | Table 3, 200 scenes of its own test set |")
    return "\n".join(lines) + "\n"


def _add_yardsticks(results: list[dict], crop: int, camera: CameraParams) -> None:
    """Score every measured Blurry-Edges row on its own pixels: the constant depth and, when Focal
    Track was measured, its dense estimate (``results`` rows gain ``yardsticks``)."""
    from .yardsticks import score_folder

    ft = next((r for r in results if r["key"] == "focal_track" and r["status"] == "measured"), None)
    for r in results:
        if r["status"] != "measured" or r["method"] != "blurry_edges":
            continue
        rep = score_folder(r["outputs"], crop=crop, z_min=camera.z_min, z_max=camera.z_max,
                           reference=ft["outputs"] if ft else None)
        r["yardsticks"] = {"constant": rep.constant, "constant_same_pixels": rep.constant_same_pixels,
                           "focal_track_same_pixels": rep.reference_same_pixels, "correlation": rep.correlation,
                           "depth_spread_cm": rep.depth_spread_cm, "coverage": rep.coverage, "slope": rep.slope}


def run_comparison(args: argparse.Namespace, dataset, camera: CameraParams, big: bool = False) -> int:
    """Evaluate every available method on ``dataset`` and print the table; returns an exit code.

    ``args`` are those of :func:`blurry_edges.cli.add_eval_arguments`. Focal Track always runs;
    a Blurry-Edges row runs when its weight files load (else it says which file is missing).
    """
    from .cli import focal_track_from_args
    from .evaluate import evaluate_test_set
    from .pipeline import FeatureCache, build_pipeline

    root = Path(args.log_path) / (args.run_name or ("compare_big" if big else "compare"))
    results: list[dict] = []
    display_bgr = getattr(dataset, "channel_order", "RGB") == "BGR"
    dt = DTParams(confidence_weighted=args.dt_confidence_weighted)
    try:                           # the modes share one local stage: it runs once per pair, not per mode
        shared = FeatureCache(getattr(args, "feature_cache", None))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for key, name, method, mode in ROWS:
        row = {"key": key, "name": name, "method": method, "densify": mode}
        if method is None:
            results.append({**row, "status": "not implemented", "note": "not implemented here (paper row only)"})
            continue
        try:
            if method == "focal_track":
                pipeline = focal_track_from_args(args, camera, args.cuda)
            else:
                pipeline = build_pipeline(
                    model_path=args.model_path, densify=mode, R=args.R, stride=args.stride, img_size=args.img_size,
                    camera=camera, device=args.cuda, bf16=args.bf16, rho_prime=args.rho_prime,
                    margin=getattr(args, "n_margin_patch", 10), local_weights=args.local_weights,
                    global_weights=args.global_weights if mode != "w" else None, pp_weights=args.pp_weights,
                    tile_batch=getattr(args, "batch_size", 1), dt_params=dt, dt_guide=args.dt_guide)
                pipeline.feature_cache = shared
            pipeline.layout(*dataset.img_size, blocks=True if big else None)
        except FileNotFoundError as e:
            missing = str(e).split("\n")[0].split(". ")[0]
            results.append({**row, "status": "needs weights", "note": f"needs trained weights: {missing}"})
            continue
        except ValueError as e:
            print(f"error: {name}: {e}", file=sys.stderr)
            return 2
        print(f"\n== {name} ==")
        summary = evaluate_test_set(pipeline, dataset, root / key, crop=args.crop, max_scenes=args.max_scenes,
                                    figures=not args.no_figures, blocks=True if big else None,
                                    run_args={**vars(args), "compare_row": key}, display_bgr=display_bgr,
                                    progress=False, pair_progress=None if getattr(args, "progress", True) else False)
        results.append({**row, "status": "measured", "average": summary["average"], "n_scenes": summary["n_scenes"],
                        "mean_time_s": summary["mean_time_s"], "outputs": str(root / key)})
    _add_yardsticks(results, args.crop, camera)
    if shared.directory is not None:
        print(f"\n{shared.describe()}; each mode's time counts the local stage as if it had run")
    elif shared.hits:
        print(f"\nThe local stage ran once per pair and was reused {shared.hits} times by the other modes; each "
              "mode's time counts it as if it had run (README: Training-free baseline: Focal Track, Comparison).")
    table = format_table(results)
    print(f"\nComparison on {args.data_path} ({len(dataset)} scenes of {dataset.img_size[0]}×{dataset.img_size[1]}"
          f"{', first ' + str(args.max_scenes) if args.max_scenes else ''}); paper rows: Table 3, 200 scenes of "
          "its own test set\n")
    print(table)
    if any(r["status"] == "needs weights" for r in results):
        print("\nThe Blurry-Edges rows need trained weights in --model_path (README: Weights, Training).")
    root.mkdir(parents=True, exist_ok=True)
    (root / "comparison.json").write_text(json.dumps(
        {"data_path": args.data_path, "camera": camera.to_dict(), "rows": results,
         "paper_table3": {k: dict(zip(METRIC_NAMES, v)) for k, v in PAPER_TABLE3.items()}}, indent=2, default=str))
    with open(root / "comparison.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", "source", *METRIC_NAMES, "n_scenes", "note"])
        for r in results:
            if r["status"] == "measured":
                w.writerow([r["name"], "measured", *(r["average"][k] for k in METRIC_NAMES), r["n_scenes"], ""])
                for name, m, note in _same_pixel_rows(r):
                    w.writerow([f"{r['name']}: {name.strip()}", "yardstick", *(m[k] for k in METRIC_NAMES),
                                r["n_scenes"], note])
            else:
                w.writerow([r["name"], "measured", *([""] * len(METRIC_NAMES)), 0, r["note"]])
            paper = _paper_row(r)
            if paper is not None:
                w.writerow([r["name"], "paper", *paper, 200, "Table 3"])
    (root / "comparison.md").write_text(format_markdown(results))
    print(f"\nOutputs written to {root}/ (one folder per method, comparison.csv, comparison.json, comparison.md)")
    return 0
