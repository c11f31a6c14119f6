"""Evaluate Blurry-Edges on large images (587×587 in the paper; any 147 + 2k) through 147×147
blocks with margins (README "Evaluate on a test set").

    python blurry_edges_test_big.py [--data_path ./data/data_test_big] [--n_margin_patch 10] [--densify ...]

Same outputs as blurry_edges_test.py. All work happens in blurry_edges.pipeline.
"""
import sys

from blurry_edges.evaluate import run_eval_script

if __name__ == "__main__":
    sys.exit(run_eval_script(big=True))
