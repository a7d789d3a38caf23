"""Stage crf: DenseCRF over the val and test logits (joblib workers or a dask cluster,
`crf.backend`), palette-PNG predictions and the scores with CRF."""
from __future__ import annotations

from ..config import Params
from ..crf import refine_split, write_overlays
from ..data.datasets import class_names, resolve_split, scored_splits, subset_label
from ..io import write_json
from ..metrics import confusion_plot_rows, scores_report
from ..parallel import Workers
from .paths import RunPaths
from .reports import fmt_miou, write_report, write_unscored
from .resolve import ResolvedRun, resolve_run


def run_crf_splits(params: Params, paths: RunPaths) -> None:
    """The crf stage: every scored split; a split without GT gets a metric file saying so."""
    splits, run = scored_splits(params), resolve_run(params)
    for split_name in splits:
        crf_split(run, paths, split_name)
    if "test" not in splits:
        write_unscored(paths.scores_of("test", crf=True), "test")
        paths.predictions_dir("test").mkdir(parents=True, exist_ok=True)  # a declared output


def run_crf(params: Params, paths: RunPaths, split_name: str = "val") -> dict:
    """DenseCRF over a split's logits: palette PNGs, its scores with CRF (with the no-CRF
    mIoU of the same pass; metrics/scores_crf[_<split>].json) + per-class CSV; on val also the
    confusion matrix for `dvc plots` and a few overlays."""
    return crf_split(resolve_run(params), paths, split_name)


def crf_split(run: ResolvedRun, paths: RunPaths, split_name: str) -> dict:
    """`run_crf` of a run already resolved."""
    params, settings = run.params, run.crf
    split = resolve_split(params, split_name, paths.prepared)
    source, out_dir = paths.logits_dir(split_name), paths.predictions_dir(split_name)
    result = refine_split(split, source, out_dir, params.num_classes, settings, ids=split.ids,
                          wrapped_mean=params.crf.wrapped_mean_image,
                          workers=Workers.of(params.crf, "crf"))
    no_crf = result.no_crf.scores()
    subset = subset_label(params, split_name)   # a part of the split is never read as all of it
    report = scores_report(
        result.crf, class_names(params), split=split_name,
        **({"subset": subset} if subset else {}), method=params.method, crf=True,
        dataset=params.dataset, images=result.images,
        miou_no_crf=no_crf["miou"], pixel_acc_no_crf=no_crf["pixel_acc"],
    )
    write_report(paths.scores_of(split_name, crf=True), report)
    if split_name == "val":
        write_json(paths.metrics / "confusion_crf.json",
                   confusion_plot_rows(result.crf, class_names(params)))
        if params.crf.overlays:
            write_overlays(split, source, out_dir, sorted(split.ids)[:params.crf.overlays],
                           paths.overlays, params.num_classes)
    reused = f" ({result.reused} reused)" if result.reused else ""
    part = f" ({subset})" if subset else ""
    print(f"crf: mIoU {fmt_miou(report['miou'])} (no CRF {fmt_miou(no_crf['miou'])}) on "
          f"{result.images} {split_name} images{part}{reused}", flush=True)
    return report
