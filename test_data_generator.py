"""Generate the realistic test set (MS-COCO objects over paintings, or built-in textures).

    python test_data_generator.py [--source coco|builtin|auto] [--big] [--data_path ./data/data_test]

See ``python test_data_generator.py --help`` and ``blurry_edges/synth/generate.py`` for the layout.
"""
from blurry_edges.synth.cli import run_test

if __name__ == "__main__":
    run_test()
