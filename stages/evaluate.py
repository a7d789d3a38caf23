"""Stage evaluate: score label maps against ground truth with the project's one metric.

`python stages/evaluate.py pseudo_labels` scores the train split's pseudo labels
→ metrics/pseudo_labels.json (+ a per-class CSV for `dvc plots`).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wsss_core.cli import run_stage  # noqa: E402
from wsss_core.config import load_params  # noqa: E402
from wsss_core.pipeline import score_pseudo_labels  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=["pseudo_labels"])
    parser.parse_args()
    score_pseudo_labels(load_params())


if __name__ == "__main__":
    run_stage(main)
