"""Stages of the noise-robustness benchmark (robustness/dvc.yaml); see wsss_core.robustness.

    python stages/robustness.py pseudo-labels --noise 0.5        # simulate + score one level
    python stages/robustness.py run --method cdl_b --noise 0.5   # every seed, side by side
    python stages/robustness.py run --method cdl_b --noise 0.5 --seed 1
    python stages/robustness.py run --method dupl                # no pseudo labels, no noise
    python stages/robustness.py report                           # benchmark.json, .csv, plot
"""
import argparse

from wsss_core import robustness
from wsss_core.cli import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("pseudo-labels").add_argument("--noise", type=float, required=True)
    run = commands.add_parser("run")
    run.add_argument("--method", required=True)
    run.add_argument("--noise", type=float, default=None)
    run.add_argument("--seed", type=int, default=None,
                     help="one seed (default: every benchmark.seeds, benchmark.jobs at a time)")
    commands.add_parser("report")
    args = parser.parse_args()
    if args.command == "pseudo-labels":
        robustness.make_pseudo_labels(args.noise)
    elif args.command == "run":
        results = ([robustness.run_cell(args.method, args.noise, args.seed)] if args.seed is not None
                   else robustness.run_cells(args.method, args.noise))
        for result in results:
            print(f"{robustness.cell_name(args.method, args.noise, result['seed'])}: mIoU "
                  f"{result['miou']:.4f}, with CRF {result['miou_crf']:.4f} ({result['wall_time_s']} s)")
    else:
        summary = robustness.write_report()
        times = summary["wall_time_s"]
        print(f"benchmark: {times['cells']} cells ({times['cells_sum']} s of cell time) in "
              f"{times['stages']} s of run stages → {robustness.BENCHMARK_JSON}")


if __name__ == "__main__":
    run_stage(main)
