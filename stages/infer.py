"""Stage infer: multi-scale inference of the trained model on the val split (run under torchrun).

Writes data/logits/<method>/val/<id>.npy ((C, h, w) logits, float16 unless infer.dtype says
float32) and metrics/scores.json (no-CRF scores; for DuPL both students, the better one's logits
go on to the CRF stage). `--split test` (outside the DAG, for the VOC test server) writes
data/logits/<method>/test/ with the model and predictor chosen on val.
"""
import argparse

from wsss_core.cli import run_stage
from wsss_core.config import load_params
from wsss_core.pipeline import run_inference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--split", choices=["val", "test"], default="val",
                        help="test: logits of the VOC test list for stages/export_voc_test.py")
    run_inference(load_params(), parser.parse_args().split)


if __name__ == "__main__":
    run_stage(main)
