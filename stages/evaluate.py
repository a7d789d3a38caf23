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
from wsss_core.data.datasets import class_names, pseudo_label_dir, resolve_split  # noqa: E402
from wsss_core.evaluate import score_folder  # noqa: E402
from wsss_core.io import write_json, write_text  # noqa: E402
from wsss_core.metrics import per_class_csv, scores_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=["pseudo_labels"])
    args = parser.parse_args()
    params = load_params()
    split = resolve_split(params, "train")
    folder = pseudo_label_dir(params)
    matrix = score_folder(folder, split, params.num_classes, "labels", n_jobs=params.evaluate.n_jobs)
    report = scores_report(matrix, class_names(params), what="pseudo_labels", split="train",
                           dataset=params.dataset, pseudo_labels=params.pseudo_labels.name)
    write_json(f"metrics/{args.what}.json", report)
    write_text(f"metrics/{args.what}_per_class.csv", per_class_csv(report))
    print(f"{args.what}: mIoU {report['miou']:.4f} on {len(split.ids)} train images")


if __name__ == "__main__":
    run_stage(main)
