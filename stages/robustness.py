"""Stages of the benchmark (robustness/dvc.yaml); see wsss_core.robustness.

    python stages/robustness.py pseudo-labels --noise 0.5         # simulate + score one level
    python stages/robustness.py pseudo-labels --labels cams       # CAM classifier → CAMs → labels
    python stages/robustness.py pseudo-labels --labels dupl_cams  # DuPL → its CAMs → labels
    python stages/robustness.py run --method cdl_b --noise 0.5    # every seed, side by side
    python stages/robustness.py run --method cdl_b --labels cams --seed 1
    python stages/robustness.py run --labels dupl_cams            # benchmark.two_stage_method
    python stages/robustness.py run --method dupl                 # image-level labels only
    python stages/robustness.py report                            # benchmark.json, CSVs, plot
"""
import argparse

from wsss_core import robustness
from wsss_core.cli import run_stage
from wsss_core.errors import ConfigError


def label_set(args: argparse.Namespace) -> str | None:
    if args.noise is not None and args.labels is not None:
        raise ConfigError("robustness: --noise and --labels: give one of them")
    return robustness.noise_labels(args.noise) if args.noise is not None else args.labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("pseudo-labels", "run"):
        command = commands.add_parser(name)
        command.add_argument("--noise", type=float, default=None, help="a simulated noise level")
        command.add_argument("--labels", choices=sorted(robustness.IMAGE_LABEL_SETS), default=None,
                             help="a label set made from image-level labels")
    run = commands.choices["run"]
    run.add_argument("--method", default=None)
    run.add_argument("--seed", type=int, default=None,
                     help="one seed (default: every benchmark.seeds, benchmark.jobs at a time)")
    commands.add_parser("report")
    args = parser.parse_args()
    if args.command == "pseudo-labels":
        labels = label_set(args)
        if labels is None:
            raise ConfigError("robustness: pseudo-labels needs --noise or --labels")
        report = robustness.make_pseudo_labels(labels)
        print(f"{labels}: train mIoU {report['miou']:.4f} ({report['wall_time_s']} s)")
    elif args.command == "run":
        labels = label_set(args)
        if args.seed is not None:
            method = robustness.resolve_method(args.method, labels)
            results = [robustness.run_cell(method, labels, args.seed)]
            robustness.remove_workspaces(method, labels, [args.seed])
        else:
            results = robustness.run_cells(args.method, labels)
        for r in results:
            print(f"{robustness.cell_name(r['method'], r['labels'], r['seed'])}: test mIoU "
                  f"{r['miou']:.4f}, with CRF {r['miou_crf']:.4f}; val with CRF "
                  f"{r['val_miou_crf']:.4f} ({r['wall_time_s']} s)")
    else:
        from wsss_core.robustness_report import BENCHMARK_JSON, write_report

        summary = write_report()
        times = summary["wall_time_s"]
        print(f"benchmark: {times['cells']} cells ({times['cells_sum']} s of cell time) in "
              f"{times['run_stages']} s of run stages, {times['pseudo_label_stages']} s making "
              f"pseudo labels → {BENCHMARK_JSON}")


if __name__ == "__main__":
    run_stage(main)
