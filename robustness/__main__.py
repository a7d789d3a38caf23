"""Stages of the benchmark (robustness/dvc.yaml); see robustness.cells and robustness.report.

    python -m robustness pseudo-labels --noise 0.5         # simulate + score one level
    python -m robustness pseudo-labels --labels cams       # CAM classifier → CAMs → labels
    python -m robustness pseudo-labels --labels dupl_cams  # DuPL → its CAMs → labels
    python -m robustness run --method cdl_b --noise 0.5    # every seed, side by side
    python -m robustness run --method cdl_b --labels cams --seed 1
    python -m robustness run --labels dupl_cams            # benchmark.two_stage_method
    python -m robustness run --method dupl                 # image-level labels only
    python -m robustness report                            # benchmark.json, CSVs, plot

Params: `benchmark` of robustness/params.yaml, everything else from params.yaml (run from the
repository root, as the stages' `wdir: ..` does).
"""
import argparse

from robustness import cells
from robustness.report import DEFAULT_FILES, write_report
from wsss_core.cli import run_stage
from wsss_core.errors import ConfigError


def label_set(args: argparse.Namespace) -> str | None:
    if args.noise is not None and args.labels is not None:
        raise ConfigError("robustness: --noise and --labels: give one of them")
    return cells.noise_labels(args.noise) if args.noise is not None else args.labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("pseudo-labels", "run"):
        command = commands.add_parser(name)
        command.add_argument("--noise", type=float, default=None, help="a simulated noise level")
        command.add_argument("--labels", choices=sorted(cells.IMAGE_LABEL_SETS), default=None,
                             help="a label set made from image-level labels")
    run = commands.choices["run"]
    run.add_argument("--method", default=None)
    run.add_argument("--seed", type=int, default=None,
                     help="one seed (default: every benchmark.seeds, benchmark.jobs at a time)")
    commands.add_parser("report")
    args = parser.parse_args()
    grid = cells.load_grid()
    if args.command == "pseudo-labels":
        labels = label_set(args)
        if labels is None:
            raise ConfigError("robustness: pseudo-labels needs --noise or --labels")
        report = cells.make_pseudo_labels(labels, grid)
        print(f"{labels}: train mIoU {report['miou']:.4f} ({report['wall_time_s']} s)")
    elif args.command == "run":
        labels = label_set(args)
        if args.seed is not None:
            method = cells.resolve_method(args.method, labels, grid)
            results = [cells.run_cell(method, labels, args.seed, grid)]
            cells.remove_workspaces(method, labels, [args.seed])
        else:
            results = cells.run_cells(args.method, labels, grid)
        for r in results:
            print(f"{cells.cell_name(r['method'], r['labels'], r['seed'])}: test mIoU "
                  f"{r['miou']:.4f}, with CRF {r['miou_crf']:.4f}; val with CRF "
                  f"{r['val_miou_crf']:.4f} ({r['wall_time_s']} s)")
    else:
        summary = write_report(grid)
        times = summary["wall_time_s"]
        print(f"benchmark: {times['cells']} cells ({times['cells_sum']} s of cell time) in "
              f"{times['run_stages']} s of run stages, {times['pseudo_label_stages']} s making "
              f"pseudo labels → {DEFAULT_FILES.json}")


if __name__ == "__main__":
    run_stage(main)
