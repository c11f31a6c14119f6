"""Evaluate Blurry-Edges on a test set of 147×147 image pairs (paper Table 3).

    python blurry_edges_test.py [--densify none|w|pp|dt] [--data_path ./data/data_test] [--bf16]

Per scene: δ1/δ2/δ3/RMSE/AbsRel and the running time, a figure and an .npz with every map; then
averages, summary.csv and summary.json under --log_path/<run name>/. Reads our test sets and the
authors' (images_ny.npy, depth_maps.npy, alphas.npy). All work happens in blurry_edges.pipeline.
"""
import sys

from blurry_edges.evaluate import run_eval_script

if __name__ == "__main__":
    sys.exit(run_eval_script(big=False))
