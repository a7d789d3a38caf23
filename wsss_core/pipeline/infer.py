"""Stage infer: multi-scale inference of the val and test splits to logits files (`.npy`, or
compact `.npz` with `infer.logits: compact`) and their no-CRF scores (under torchrun: the images
are sharded over the ranks)."""
from __future__ import annotations

import shutil
from pathlib import Path

from ..config import Params
from ..data.classes import read_class_labels
from ..data.datasets import class_names, resolve_split, scored_splits, subset_label
from ..distributed import barrier, distributed
from ..errors import DataError
from ..evaluate import score_folder
from ..infer import file_digest, infer_logits, prepare_output
from ..io import atomic_dir, read_json
from ..metrics import scores_report
from ..models.checkpoints import load_trained_weights
from ..training import BEST_MODEL
from .paths import RunPaths
from .reports import write_report, write_unscored
from .resolve import ResolvedRun, resolve_run


def trained_weights(params: Params, paths: RunPaths) -> Path:
    """A released checkpoint (`infer.weights`) or the train stage's own last or best model."""
    if params.infer.weights:
        return Path(params.infer.weights)
    return paths.model_dir / BEST_MODEL if params.infer.checkpoint == "best" else paths.model_file


def run_inference(params: Params, paths: RunPaths, split_name: str = "val",
                  threads: int | None = None) -> dict | None:
    """Logits of the split and, where it has GT, its no-CRF scores. With several predictors
    (DuPL's students) val scores each and keeps the better one; every other split reuses the
    one chosen on val, so nothing is chosen on the split a result is reported on."""
    return infer_split(resolve_run(params), paths, split_name, threads)


def infer_split(run: ResolvedRun, paths: RunPaths, split_name: str,
                threads: int | None = None) -> dict | None:
    """`run_inference` of a run already resolved."""
    params, record = run.params, run.record
    weights = trained_weights(params, paths)
    split = resolve_split(params, split_name, paths.prepared)
    final_dir = paths.logits_dir(split_name)
    predictors = record.predictors(run.config)
    if split_name != "val" and len(predictors) > 1:
        chosen = read_json(paths.scores).get("predictor") if paths.scores.is_file() else None
        if chosen not in predictors:
            raise DataError(paths.scores, "no predictor chosen on val yet (run the infer stage "
                                          "on val first)")
        predictors = {chosen: predictors[chosen]}
    if len(predictors) == 1:
        out_dirs = {name: final_dir for name in predictors}
    else:  # one folder per predictor (DuPL student); the better one is copied to final_dir
        out_dirs = {name: final_dir.parent / f"{final_dir.name}_{name}" for name in predictors}
    with distributed(params.infer.device, threads) as ctx:
        model = run.method.build_model()
        load_trained_weights(model, weights)
        model.to(ctx.device)
        digest = file_digest(weights)
        for folder in out_dirs.values():
            prepare_output(folder, digest, ctx)
        infer_logits(model, predictors, record.normalize, split, out_dirs, params.num_classes,
                     ctx, params.infer.dtype, params.infer.precision,
                     compact_top_k=params.infer.stored_top_k)
        if not ctx.is_main or split.gt_dir is None:
            return None
        names = class_names(params)
        reports = {name: scores_report(score_folder(folder, split, params.num_classes, "logits",
                                                    n_jobs=params.evaluate.n_jobs), names)
                   for name, folder in out_dirs.items()}
        best = max(reports, key=lambda n: reports[n]["miou"] or 0.0)
        if out_dirs[best] != final_dir:
            with atomic_dir(final_dir) as tmp:
                for path in out_dirs[best].iterdir():
                    shutil.copy2(path, tmp / path.name)
        subset = subset_label(params, split_name)   # a part of the split is never read as all of it
        report = {"method": params.method, "split": split_name,
                  **({"subset": subset} if subset else {}), "crf": False, **reports[best]}
        if len(reports) > 1:
            report["predictor"] = best
            if split_name == "val":
                report["predictors_miou"] = {name: r["miou"] for name, r in reports.items()}
        if record.val_extras is not None and split_name == "val":  # e.g. DuPL's CAM mIoU
            report.update(record.val_extras(model, split, read_class_labels(
                paths.class_labels, params.num_classes), ctx.device, run.method))
        write_report(paths.scores_of(split_name), report)
        part = f" ({subset})" if subset else ""
        print(f"{params.method} {split_name} mIoU (no CRF): {report['miou']:.4f}{part}", flush=True)
        return report


def run_inference_splits(params: Params, paths: RunPaths, threads: int | None = None) -> None:
    """The infer stage: every scored split in one process group (val first: the test split
    reuses what val chose); a split without GT gets a metric file saying so."""
    splits, run = scored_splits(params), resolve_run(params)
    with distributed(params.infer.device, threads) as ctx:
        for split_name in splits:
            infer_split(run, paths, split_name, threads)
            barrier()  # val's scores (and choice of predictor) are written before test reads them
        if ctx.is_main and "test" not in splits:
            write_unscored(paths.scores_of("test"), "test")
