"""Stage cam_classifier: with pseudo_labels.source cams (dupl), train the CAM classifier (method
cam, resp. DuPL) on the train split's image-level labels into `--classifier` (dvc.yaml:
models/cam_classifier/), resuming its checkpoints; `pseudo_labels.classifier` is its training
configuration (as `train` is the segmentation model's). Other sources: a manifest saying the
stage is unused. Run it through `python -m wsss_core.launch` for several processes.
"""
import argparse

from wsss_core.cli import run_stage
from wsss_core.config import load_params
from wsss_core.pipeline.cam_classifier import train_cam_classifier
from wsss_core.pipeline.paths import add_path_arguments, paths_from_args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_path_arguments(parser, "prepared", "classifier")
    params = load_params()
    train_cam_classifier(params, paths_from_args(params, parser.parse_args()))


if __name__ == "__main__":
    run_stage(main)
