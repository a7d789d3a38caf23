"""Stage export_voc_test: VOC 2012 test predictions in the evaluation server's layout.

Reads `<logits>/test/<id>.npy` or `.npz` (default data/logits/<method>/) for the ids of `data.voc12.test_list` (no GT needed),
writes `results/VOC2012/Segmentation/comp6_test_cls/<id>.png` (palette PNGs of class ids) and
`results/voc2012_test_<method>.tar.gz` holding `results/VOC2012/...` for upload. DenseCRF
(params `crf`, as the val stage) is applied unless `--no-crf`.
"""
import argparse
from pathlib import Path

from wsss_core.cli import run_stage
from wsss_core.config import load_params
from wsss_core.crf import export_voc_test
from wsss_core.data.datasets import resolve_split
from wsss_core.errors import ConfigError
from wsss_core.parallel import Workers
from wsss_core.pipeline.paths import add_path_arguments, paths_from_args
from wsss_core.pipeline.resolve import resolve_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-crf", action="store_true", help="export the plain argmax")
    parser.add_argument("--out", default=".", help="folder that receives results/ (default: .)")
    add_path_arguments(parser, "logits")
    args = parser.parse_args()
    params = load_params()
    paths = paths_from_args(params, args)
    if params.dataset != "voc12":
        raise ConfigError(f"params.yaml: dataset: export_voc_test needs 'voc12', got "
                          f"'{params.dataset}'")
    split = resolve_split(params, "test")
    settings = None if args.no_crf else resolve_run(params).crf
    out_root = Path(args.out)
    archive = out_root / "results" / f"voc2012_test_{params.method}.tar.gz"
    png_dir, result = export_voc_test(split, paths.logits_dir("test"), out_root, archive,
                                      settings, wrapped_mean=params.crf.wrapped_mean_image,
                                      num_classes=params.num_classes,
                                      workers=Workers.of(params.crf, "crf"))
    crf = "without CRF" if settings is None else "with CRF"
    print(f"export: {result.images} test predictions {crf} in {png_dir}; upload {archive}")


if __name__ == "__main__":
    run_stage(main)
