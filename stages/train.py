"""Stage train: train the configured method on the train split (run under torchrun).

Reads params `method`, `dataset`, `seed`, `train` (+ the preset it names), the prepared data and,
for methods that learn from them, the pseudo labels; writes <model-dir>/model.pth, its effective
configuration <model-dir>/config.json, <model-dir>/checkpoints/ (kept for resuming), DVCLive
curves in <metrics>/train/, <metrics>/train.json (the run's figures and configuration) and
<metrics>/train_metrics.json (its headline numbers).
"""
import argparse

from wsss_core.cli import run_stage
from wsss_core.config import load_params
from wsss_core.pipeline.paths import add_path_arguments, paths_from_args
from wsss_core.pipeline.train import run_training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_path_arguments(parser, "prepared", "pseudo_labels", "model_dir", "metrics")
    params = load_params()
    run_training(params, paths_from_args(params, parser.parse_args()))


if __name__ == "__main__":
    run_stage(main)
