"""Stage pseudo_labels: publish the train split's pseudo labels to `--pseudo-labels`
(dvc.yaml: data/pseudo_labels/<name>/), by `pseudo_labels.source`:

- simulate: CAM-like pseudo labels, the synthetic GT in `pseudo_labels.path` corrupted with
  `data.noise`;
- files: a folder or archive of `<id>.png` in `pseudo_labels.path`, validated and copied;
- cams / dupl: the CAMs of stage cams (`--cams`) refined with `pseudo_labels.refine`.

The output folder is a DVC output: `dvc push` stores it, `dvc pull` restores it.
"""
import argparse

from wsss_core.cli import run_stage
from wsss_core.config import load_params
from wsss_core.pipeline.paths import add_path_arguments, paths_from_args
from wsss_core.pipeline.pseudo_labels import publish_pseudo_labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_path_arguments(parser, "prepared", "pseudo_labels", "cams")
    params = load_params()
    publish_pseudo_labels(params, paths_from_args(params, parser.parse_args()))


if __name__ == "__main__":
    run_stage(main)
