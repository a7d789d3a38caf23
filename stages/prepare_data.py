"""Stage prepare_data: generate (synthetic) or check/convert (voc12, coco14) the dataset.

Reads params `dataset`, `data.synthetic|voc12|coco14`; writes the folder given as `--prepared`
(dvc.yaml: data/prepared/<dataset>/): cls_labels.json, summary.json and, for the synthetic
dataset, the generated images and masks in VOC layout.
"""
import argparse

from wsss_core.cli import run_stage
from wsss_core.config import load_params
from wsss_core.pipeline.paths import add_path_arguments, paths_from_args
from wsss_core.pipeline.prepare import prepare_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_path_arguments(parser, "prepared")
    params = load_params()
    paths = paths_from_args(params, parser.parse_args())
    summary = prepare_data(params, paths)
    counts = ", ".join(f"{name}: {s['images']} images" for name, s in summary["splits"].items())
    print(f"prepared {summary['dataset']} ({counts})")


if __name__ == "__main__":
    run_stage(main)
