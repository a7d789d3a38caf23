"""Does the scale of the stored logits matter to the CRF? Refine the current run's val logits
(`dvc repro` first) multiplied by each factor and print the mIoU with and without CRF.

    python benchmarks/crf_logit_scale.py 1 2 0.5

CDL divides its test logits by 2 (as the original does) and the baseline does not; factor 2 on a
CDL run undoes that division, factor 0.5 on a baseline run applies it. The unary of the CRF is
the softmax of the logits, so the factor is a temperature: the no-CRF mIoU stays the same.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from wsss_core.config import load_params
from wsss_core.crf import refine_split
from wsss_core.data.datasets import resolve_split
from wsss_core.logits_io import read_logits, write_logits
from wsss_core.pipeline.paths import RunPaths
from wsss_core.pipeline.resolve import resolve_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("factors", nargs="+", type=float)
    args = parser.parse_args()
    params = load_params()
    split = resolve_split(params, "val")
    settings = resolve_run(params).crf
    source = RunPaths.defaults(params).logits_dir("val")
    for factor in args.factors:
        with tempfile.TemporaryDirectory() as tmp:
            scaled = Path(tmp) / "logits"
            for path in sorted(source.glob("*.npy")):
                write_logits(scaled / path.name, read_logits(path) * factor)
            result = refine_split(split, scaled, Path(tmp) / "pred", params.num_classes, settings,
                                  ids=split.ids, n_jobs=params.crf.n_jobs, resume=False)
        print(f"{params.method} logits x {factor:g}: mIoU {result.crf.scores()['miou']:.4f} with CRF, "
              f"{result.no_crf.scores()['miou']:.4f} without", flush=True)


if __name__ == "__main__":
    main()
