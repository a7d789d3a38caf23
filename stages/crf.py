"""Stage crf: DenseCRF refinement and scoring of the val logits and, where it has GT (the
synthetic data), of the held-out test logits.

Reads <logits>/<split>/<id>.npy (or compact .npz), writes palette PNGs of class ids to <predictions>/<split>/<id>.png,
the scores with CRF (and, from the same pass, the no-CRF mIoU) to <metrics>/scores_crf.json and
scores_crf_test.json + per-class CSVs; for val also the confusion matrix for `dvc plots`
(<metrics>/confusion_crf.json) and a few image | GT | no CRF | CRF panels to
<metrics>/plots/overlays/. Rerunning after an interruption reuses the predictions already written.
"""
import argparse

from wsss_core.cli import run_stage
from wsss_core.config import load_params
from wsss_core.pipeline.crf import run_crf_splits
from wsss_core.pipeline.paths import add_path_arguments, paths_from_args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_path_arguments(parser, "prepared", "logits", "predictions", "metrics")
    params = load_params()
    run_crf_splits(params, paths_from_args(params, parser.parse_args()))


if __name__ == "__main__":
    run_stage(main)
