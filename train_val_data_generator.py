"""Generate the basic-shape training and validation sets and their local-stage patches.

    python train_val_data_generator.py [--data_path ./data/data_train_val] [--seed 1869] [--workers 0]

See ``python train_val_data_generator.py --help`` and ``blurry_edges/synth/generate.py`` for the layout.
"""
from blurry_edges.synth.cli import run_train_val

if __name__ == "__main__":
    run_train_val()
