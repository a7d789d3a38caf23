"""Stage infer: multi-scale inference of the trained model on the val split (run under torchrun).

Writes <logits>/val/<id>.npy ((C, h, w) logits, float16 unless infer.dtype says float32; with
infer.logits: compact <id>.npz, each cell's infer.compact_top_k most probable classes) and
<metrics>/scores.json (no-CRF headline scores; for DuPL both students, the better one's logits go
on to the CRF stage) + a per-class CSV. `--split test` (outside the DAG, for the VOC test server)
writes <logits>/test/ with the model and predictor chosen on val.
"""
import argparse

from wsss_core.cli import run_stage
from wsss_core.config import load_params
from wsss_core.pipeline.infer import run_inference, run_inference_splits
from wsss_core.pipeline.paths import add_path_arguments, paths_from_args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--split", choices=["val", "test"], default=None,
                        help="only this split (test: logits of the VOC test list for "
                             "stages/export_voc_test.py); default: every scored split")
    add_path_arguments(parser, "prepared", "model_dir", "logits", "metrics")
    params = load_params()
    args = parser.parse_args()
    paths = paths_from_args(params, args)
    if args.split:
        run_inference(params, paths, args.split)
    else:
        run_inference_splits(params, paths)


if __name__ == "__main__":
    run_stage(main)
