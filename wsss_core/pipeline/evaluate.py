"""Stage evaluate_pseudo_labels: the pseudo labels' mIoU against the train GT, and where their
errors lie on the synthetic data's class-specific context."""
from __future__ import annotations

from pathlib import Path

from ..config import Params
from ..data.datasets import class_names, resolve_split
from ..evaluate import score_folder
from ..io import write_json
from ..metrics import scores_report
from ..synthetic import CONTEXT_FOLDER
from ..synthetic.context import context_statistics
from .paths import RunPaths
from .reports import write_report
from .resolve import resolve_run


def score_pseudo_labels(params: Params, paths: RunPaths, out: Path | None = None) -> dict:
    """mIoU of the pseudo labels in `paths.pseudo_labels` against the train GT → `out`
    (default `paths.pseudo_label_scores`, metrics/pseudo_labels.json), a per-class CSV, and
    where their errors lie on the synthetic data's context → `<stem>_context.json` (a plain
    file: its keys would widen `dvc metrics show`; `{}` without context maps)."""
    resolve_run(params)
    split = resolve_split(params, "train", paths.prepared)
    matrix = score_folder(paths.pseudo_labels, split, params.num_classes, "labels",
                          n_jobs=params.evaluate.n_jobs)
    report = scores_report(matrix, class_names(params), what="pseudo_labels", split="train",
                           dataset=params.dataset, pseudo_labels=params.pseudo_labels.name,
                           noise=params.data.noise if params.pseudo_labels.simulated else None)
    context_dir = split.image_dir.parent / CONTEXT_FOLDER
    if context_dir.is_dir():  # the synthetic data's maps (VOC and COCO have none)
        # how much of the class-specific background the labels call foreground
        report["context"] = context_statistics(paths.pseudo_labels, split.gt_dir, context_dir,
                                               split.ids, params.num_classes)
    out = out or paths.pseudo_label_scores
    write_report(out, report)
    write_json(out.with_name(out.stem + "_context.json"), report.get("context", {}))
    print(f"pseudo_labels: mIoU {report['miou']:.4f} on {len(split.ids)} train images", flush=True)
    return report
