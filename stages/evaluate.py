"""Stage evaluate: score label maps against ground truth with the project's one metric.

`python stages/evaluate.py pseudo_labels` scores the train split's pseudo labels
→ <metrics>/pseudo_labels.json (headline numbers) + a per-class CSV for `dvc plots`.
"""
import argparse

from wsss_core.cli import run_stage
from wsss_core.config import load_params
from wsss_core.pipeline.evaluate import score_pseudo_labels
from wsss_core.pipeline.paths import add_path_arguments, paths_from_args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=["pseudo_labels"])
    add_path_arguments(parser, "prepared", "pseudo_labels", "metrics")
    params = load_params()
    score_pseudo_labels(params, paths_from_args(params, parser.parse_args()))


if __name__ == "__main__":
    run_stage(main)
