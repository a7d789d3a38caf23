"""Stage cams: multi-scale (+ flip) CAMs (pseudo_labels.cam) of every train image's present
classes from the classifier in `--classifier`, stored as float16 `<id>.npz` at a stride with a
manifest in `--cams` (dvc.yaml: data/cams/<name>/), so that `pseudo_labels.refine` can be swept
without running the classifier again. Sources other than cams/dupl: only the manifest.
"""
import argparse

from wsss_core.cli import run_stage
from wsss_core.config import load_params
from wsss_core.pipeline.cams import compute_cams
from wsss_core.pipeline.paths import add_path_arguments, paths_from_args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_path_arguments(parser, "prepared", "classifier", "cams")
    params = load_params()
    compute_cams(params, paths_from_args(params, parser.parse_args()))


if __name__ == "__main__":
    run_stage(main)
