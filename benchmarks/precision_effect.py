"""What bf16 does to the accuracy: two evaluations of the same scenes, one float32, one bf16.

bf16 autocast is the inference default (``--bf16 auto``, where the CPU computes bf16 natively)
because, with the shipped weights, it moved the sparse and PP δ1 by at most 0.005 and the RMSE by at
most 0.05 cm against float32 on the 200-scene test set (README "Speed"). This script applies that
rule, per pixel, to two result folders of ``blurry_edges_test.py`` (``--compare`` roots with one
sub-folder per mode, or single runs), e.g. to check it again for other weights:

    python test_data_generator.py --source builtin --num_sample_test 200 --seed 200 --data_path data/test200
    python blurry_edges_test.py --compare --data_path data/test200 --bf16 off --no_figures --run_name compare_fp32
    python blurry_edges_test.py --compare --data_path data/test200 --bf16 on --no_figures --run_name compare_bf16
    python benchmarks/precision_effect.py logs/compare_fp32 logs/compare_bf16

Printed per mode found in both folders: δ1 and RMSE (paper Table 3 metrics, the averages the test
script printed) in each precision and their differences, the largest per-scene change of δ1 and
RMSE, and per pixel: how many pixels changed whether they hold an estimate, and the mean and 99th
percentile of the depth change where both kept one. Then the verdict over ``--modes`` (default:
sparse and pp, the two the rule names). It refuses folders that are not of the same scenes (the
ground-truth depth maps must be identical) or whose recorded precision is not the one claimed.
Accuracy only: nothing here is timed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

#: The rule of README "Speed": largest allowed |Δδ1| and |ΔRMSE| (cm), bf16 against float32.
MAX_DELTA1 = 0.005
MAX_RMSE_CM = 0.05


def find_runs(folder: Path) -> dict[str, Path]:
    """Result folders under ``folder``: ``{mode: path}`` for a ``--compare`` root (its sub-folders
    holding a ``summary.json``), ``{"run": folder}`` for a single run."""
    folder = Path(folder)
    if (folder / "summary.json").is_file():
        return {"run": folder}
    runs = {p.name: p for p in sorted(folder.iterdir()) if (p / "summary.json").is_file()} if folder.is_dir() else {}
    if not runs:
        raise FileNotFoundError(f"{folder} holds no summary.json (nor sub-folders with one): pass a result folder "
                                "of blurry_edges_test.py (a --compare root or a single run)")
    return runs


def _summary(run: Path, bf16: bool) -> dict:
    s = json.loads((run / "summary.json").read_text())
    got = (s.get("precision") or {}).get("bf16")
    if got is not None and bool(got) != bf16:
        want = "bf16" if bf16 else "float32"
        raise ValueError(f"{run} was evaluated with bf16={got}, but it is passed as the {want} run: "
                         "give the float32 folder first, the bf16 folder second")
    return s


def _scene_files(run: Path) -> list[Path]:
    return sorted(run.glob("scene_*.npz"))


def compare_run(fp32: Path, bf16: Path) -> dict:
    """δ1/RMSE of one mode in both precisions, their differences, and the per-pixel depth change.

    Returns a dict with ``fp32`` and ``bf16`` (``delta1``, ``rmse_cm``, ``n_scenes``), ``d_delta1``,
    ``d_rmse_cm`` (bf16 − float32), ``max_scene_d_delta1``, ``max_scene_d_rmse_cm``, and, when both
    folders hold per-scene ``.npz`` files, ``pixels_compared``, ``support_changed`` (fraction of the
    pixels with ground truth whose estimate appeared or vanished), ``mean_abs_change_cm`` and
    ``p99_abs_change_cm`` (where both kept an estimate).
    """
    a, b = _summary(fp32, False), _summary(bf16, True)
    if a["n_scenes"] != b["n_scenes"]:
        raise ValueError(f"{fp32} holds {a['n_scenes']} scenes, {bf16} {b['n_scenes']}: evaluate the same scenes "
                         "(same --data_path and --max_scenes) in both precisions")
    out: dict = {name: {"delta1": s["average"]["delta1"], "rmse_cm": s["average"]["rmse_cm"],
                        "n_scenes": s["n_scenes"]} for name, s in (("fp32", a), ("bf16", b))}
    out["d_delta1"] = out["bf16"]["delta1"] - out["fp32"]["delta1"]
    out["d_rmse_cm"] = out["bf16"]["rmse_cm"] - out["fp32"]["rmse_cm"]
    pa = {r["scene"]: r for r in a["per_scene"]}
    pb = {r["scene"]: r for r in b["per_scene"]}
    common = sorted(set(pa) & set(pb))
    diffs = [(abs(pb[k]["delta1"] - pa[k]["delta1"]), abs(pb[k]["rmse_cm"] - pa[k]["rmse_cm"])) for k in common
             if all(np.isfinite([pa[k]["delta1"], pb[k]["delta1"], pa[k]["rmse_cm"], pb[k]["rmse_cm"]]))]
    out["max_scene_d_delta1"] = max((d[0] for d in diffs), default=float("nan"))
    out["max_scene_d_rmse_cm"] = max((d[1] for d in diffs), default=float("nan"))

    fa, fb = _scene_files(fp32), _scene_files(bf16)
    if fa and [p.name for p in fa] == [p.name for p in fb]:
        changes, flipped, with_gt = [], 0, 0
        for pa_, pb_ in zip(fa, fb):
            za, zb = np.load(pa_), np.load(pb_)
            if not np.array_equal(za["gt_depth"], zb["gt_depth"]):
                raise ValueError(f"{pa_.name}: the ground truth differs between {fp32} and {bf16}: these are not "
                                 "the same scenes; evaluate one test set in both precisions")
            gt = za["gt_depth"] > 0
            da, db = za["depth"], zb["depth"]
            ka, kb = (da > 0) & gt, (db > 0) & gt
            with_gt += int(gt.sum())
            flipped += int((ka ^ kb).sum())
            both = ka & kb
            changes.append(np.abs(db[both].astype(np.float64) - da[both]) * 100.0)
        ch = np.concatenate(changes) if changes else np.zeros(0)
        out["pixels_compared"] = int(ch.size)
        out["support_changed"] = flipped / max(with_gt, 1)
        out["mean_abs_change_cm"] = float(ch.mean()) if ch.size else float("nan")
        out["p99_abs_change_cm"] = float(np.percentile(ch, 99)) if ch.size else float("nan")
    return out


def within_rule(row: dict, max_delta1: float = MAX_DELTA1, max_rmse_cm: float = MAX_RMSE_CM) -> bool:
    """Whether bf16 moved this mode's δ1 and RMSE by no more than the rule allows."""
    return abs(row["d_delta1"]) <= max_delta1 and abs(row["d_rmse_cm"]) <= max_rmse_cm


def format_rows(rows: dict[str, dict]) -> str:
    head = ("| mode | δ1 fp32 | δ1 bf16 | Δδ1 | RMSE fp32 (cm) | RMSE bf16 (cm) | ΔRMSE (cm) | max per-scene |Δδ1| / "
            "|ΔRMSE| | pixels whose estimate appeared/vanished | depth change where both kept one: mean / p99 (cm) |")
    lines = [head, "|" + " --- |" * 10]
    for mode, r in rows.items():
        px = (f"{100 * r['support_changed']:.2f} %", f"{r['mean_abs_change_cm']:.4f} / {r['p99_abs_change_cm']:.4f}") \
            if "support_changed" in r else ("–", "–")
        lines.append(f"| {mode} | {r['fp32']['delta1']:.4f} | {r['bf16']['delta1']:.4f} | {r['d_delta1']:+.4f} | "
                     f"{r['fp32']['rmse_cm']:.3f} | {r['bf16']['rmse_cm']:.3f} | {r['d_rmse_cm']:+.3f} | "
                     f"{r['max_scene_d_delta1']:.4f} / {r['max_scene_d_rmse_cm']:.3f} | {px[0]} | {px[1]} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("fp32", type=Path, help="result folder evaluated with --bf16 off")
    p.add_argument("bf16", type=Path, help="result folder of the same scenes evaluated with --bf16 on")
    p.add_argument("--modes", nargs="+", default=["sparse", "pp"],
                   help="modes the verdict needs (sub-folder names of a --compare root; 'run' for single runs)")
    p.add_argument("--max_delta1", type=float, default=MAX_DELTA1)
    p.add_argument("--max_rmse_cm", type=float, default=MAX_RMSE_CM)
    p.add_argument("--out", type=Path, default=None, help="also write the figures here as JSON")
    args = p.parse_args(argv)
    try:
        ra, rb = find_runs(args.fp32), find_runs(args.bf16)
        rows = {m: compare_run(ra[m], rb[m]) for m in ra if m in rb and m != "focal_track"}
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not rows:
        print(f"error: no mode is in both {args.fp32} ({', '.join(ra)}) and {args.bf16} ({', '.join(rb)})",
              file=sys.stderr)
        return 2
    n = next(iter(rows.values()))["fp32"]["n_scenes"]
    print(f"bf16 against float32 on {n} scenes ({args.fp32} vs {args.bf16}):\n")
    print(format_rows(rows))
    missing = [m for m in args.modes if m not in rows]
    ok = [m for m in args.modes if m in rows and within_rule(rows[m], args.max_delta1, args.max_rmse_cm)]
    bad = [m for m in args.modes if m in rows and m not in ok]
    print(f"\nrule: |Δδ1| ≤ {args.max_delta1} and |ΔRMSE| ≤ {args.max_rmse_cm} cm for {', '.join(args.modes)}")
    if missing:
        print(f"verdict: undecided, no result for {', '.join(missing)} in both folders")
    elif bad:
        print(f"verdict: bf16 stays opt-in ({', '.join(bad)} moved beyond the rule)")
    else:
        print(f"verdict: bf16 is within the rule for {', '.join(ok)}" + (f" on {n} scenes" if n else ""))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": rows, "modes": args.modes, "within_rule": ok, "beyond_rule": bad,
                                        "missing": missing}, indent=2))
        print(f"figures written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
