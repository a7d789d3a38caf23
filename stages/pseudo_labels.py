"""Stage pseudo_labels: publish the train split's pseudo labels to `--pseudo-labels`
(dvc.yaml: data/pseudo_labels/<name>/).

`pseudo_labels.simulate: true` simulates CAM-like pseudo labels by corrupting the synthetic GT in
`pseudo_labels.source` with `data.noise`; otherwise the source is a folder or archive of `<id>.png`
that is validated and copied. The output folder is a DVC output: `dvc push` stores it, `dvc pull` restores it.
"""
import argparse

from wsss_core.cli import run_stage
from wsss_core.config import load_params
from wsss_core.paths import add_path_arguments, paths_from_args
from wsss_core.pipeline import publish_pseudo_labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_path_arguments(parser, "prepared", "pseudo_labels")
    params = load_params()
    publish_pseudo_labels(params, paths_from_args(params, parser.parse_args()))


if __name__ == "__main__":
    run_stage(main)
