"""Stage crf: DenseCRF refinement and scoring of the val logits.

Reads `data/logits/<method>/val/<id>.npy`, writes palette PNGs of class ids to
`data/predictions/<method>/val/<id>.png`, the scores with CRF (and, from the same pass, the
no-CRF mIoU) to metrics/scores_crf.json + metrics/scores_crf_per_class.csv, and a few
image | GT | no CRF | CRF panels to metrics/plots/overlays/. Rerunning after an interruption
reuses the predictions already written.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wsss_core.cli import run_stage  # noqa: E402
from wsss_core.config import load_params  # noqa: E402
from wsss_core.crf import crf_settings, refine_split, write_overlays  # noqa: E402
from wsss_core.data.datasets import (class_names, logits_dir, predictions_dir,  # noqa: E402
                                     resolve_split)
from wsss_core.io import write_json, write_text  # noqa: E402
from wsss_core.metrics import per_class_csv, scores_report  # noqa: E402

METRICS_DIR = Path("metrics")


def main() -> None:
    params = load_params()
    split = resolve_split(params, "val")
    ids = split.ids
    settings = crf_settings(params.crf, params.method)
    source, out_dir = logits_dir(params, "val"), predictions_dir(params, "val")
    result = refine_split(split, source, out_dir, params.num_classes, settings, ids=ids,
                          wrapped_mean=params.crf.wrapped_mean_image, n_jobs=params.crf.n_jobs)
    no_crf = result.no_crf.scores()
    report = scores_report(
        result.crf, class_names(params), split="val", method=params.method, crf=True,
        dataset=params.dataset, images=result.images,
        miou_no_crf=no_crf["miou"], pixel_acc_no_crf=no_crf["pixel_acc"],
    )
    write_json(METRICS_DIR / "scores_crf.json", report)
    write_text(METRICS_DIR / "scores_crf_per_class.csv", per_class_csv(report))
    write_overlays(split, source, out_dir, sorted(ids)[:params.crf.overlays],
                   METRICS_DIR / "plots" / "overlays", params.num_classes)
    reused = f" ({result.reused} reused)" if result.reused else ""
    print(f"crf: mIoU {_fmt(report['miou'])} (no CRF {_fmt(no_crf['miou'])}) on "
          f"{result.images} val images{reused}")


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    run_stage(main)
