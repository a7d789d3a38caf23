"""Stage evaluate: score label maps against ground truth with the project's one metric.

`python stages/evaluate.py pseudo_labels` scores the train split's pseudo labels
→ metrics/pseudo_labels.json (+ a per-class CSV for `dvc plots`).
"""
import argparse

from wsss_core.cli import run_stage
from wsss_core.config import load_params
from wsss_core.pipeline import score_pseudo_labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=["pseudo_labels"])
    parser.parse_args()
    score_pseudo_labels(load_params())


if __name__ == "__main__":
    run_stage(main)
