"""What the stages do, given validated params and the run's paths (the scripts only call these).

Every function takes a `RunPaths` (the roots dvc.yaml passes the stage, or a benchmark cell's
own), looks the method up in the registry, and validates the whole configuration (preset, method
options) before it reads any data.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from .config import Params
from .crf import crf_settings, refine_split, write_overlays
from .data.classes import read_class_labels
from .data.datasets import class_names, resolve_split
from .data.prepare import prepare_dataset
from .data.pseudo_labels import ingest_pseudo_labels, synthesize_pseudo_labels
from .data.train_set import TrainSet
from .distributed import distributed
from .errors import DataError
from .evaluate import score_folder
from .infer import file_digest, infer_logits, prepare_output
from .io import atomic_dir, read_json, write_json, write_text
from .methods import create_method
from .metrics import confusion_plot_rows, headline, per_class_csv, scores_report
from .models.checkpoints import load_trained_weights
from .paths import RunPaths
from .presets import effective_train_config
from .registry import get_method
from .train import folder_digest, train


def write_report(path: Path, report: dict) -> None:
    """A scores report as a metric file of headline numbers (`dvc metrics show`) and its
    per-class IoU as `<stem>_per_class.csv` beside it (`dvc plots`)."""
    write_json(path, headline(report))
    write_text(path.with_name(path.stem + "_per_class.csv"), per_class_csv(report))


def check_configuration(params: Params) -> dict:
    """Validate everything the stages build from `params` beyond the loader's checks (the
    method's preset and typed options, the CRF kernel) before a stage touches any data;
    returns the effective training configuration."""
    config = effective_train_config(params)
    create_method(params.method, params.num_classes, {**config, "init_weights": ""})  # DuPL's checks
    crf_settings(params.crf, params.method)
    return config


def prepare_data(params: Params, paths: RunPaths) -> dict:
    """The prepare stage: the dataset in `paths.prepared` (see wsss_core.data.prepare)."""
    check_configuration(params)
    return prepare_dataset(params, paths.prepared)


def write_train_summary(paths: RunPaths, summary: dict, run_config: dict) -> None:
    """The training run's record, `metrics/train.json` (figures + the effective configuration,
    so the run can be reproduced from its outputs), and its headline numbers for `dvc metrics
    show`, `metrics/train_metrics.json`."""
    write_json(paths.train_summary, {**summary, "preset": run_config["preset"], "config": run_config})
    losses = summary.get("final_losses", {})
    write_json(paths.train_metrics, {
        "method": summary["method"], "effective_batch": summary["effective_batch"], "wall_time_s": summary["wall_time_s"],
        **({"loss": losses["loss"]} if "loss" in losses else {})})


def publish_pseudo_labels(params: Params, paths: RunPaths) -> dict:
    """The train split's pseudo labels in `paths.pseudo_labels`: simulated from the synthetic
    GT in `pseudo_labels.source` with `data.noise` (`pseudo_labels.simulate`), or validated and
    copied from `pseudo_labels.source`."""
    check_configuration(params)
    split = resolve_split(params, "train", paths.prepared)
    out_dir = paths.pseudo_labels
    if params.pseudo_labels.simulate:
        info = synthesize_pseudo_labels(params, split, params.pseudo_labels.source, out_dir)
    else:
        info = ingest_pseudo_labels(params.pseudo_labels.source, split, params.num_classes, out_dir)
    print(f"pseudo labels: {info['labels']} files in {out_dir}", flush=True)
    return info


def score_pseudo_labels(params: Params, paths: RunPaths, out: Path | None = None) -> dict:
    """mIoU of the pseudo labels in `paths.pseudo_labels` against the train GT → `out`
    (default `paths.pseudo_label_scores`, metrics/pseudo_labels.json) and a per-class CSV."""
    check_configuration(params)
    split = resolve_split(params, "train", paths.prepared)
    matrix = score_folder(paths.pseudo_labels, split, params.num_classes, "labels",
                          n_jobs=params.evaluate.n_jobs)
    report = scores_report(matrix, class_names(params), what="pseudo_labels", split="train",
                           dataset=params.dataset, pseudo_labels=params.pseudo_labels.name,
                           noise=params.data.noise if params.pseudo_labels.simulate else None)
    write_report(out or paths.pseudo_label_scores, report)
    print(f"pseudo_labels: mIoU {report['miou']:.4f} on {len(split.ids)} train images", flush=True)
    return report


def run_training(params: Params, paths: RunPaths) -> dict:
    """Train the configured method; writes the model, its effective configuration beside it,
    the checkpoints, DVCLive curves and the training summary."""
    config = check_configuration(params)
    method = create_method(params.method, params.num_classes, config)
    record = get_method(params.method)
    split = resolve_split(params, "train", paths.prepared)
    if record.uses_pseudo_labels:
        inputs = paths.pseudo_labels
        if not inputs.is_dir():
            raise DataError(inputs, "pseudo labels not found (run the pseudo_labels stage)")
    else:
        inputs = paths.class_labels
        if not inputs.is_file():
            raise DataError(inputs, "image-level labels not found (run the prepare_data stage)")
    dataset = TrainSet(split, record, params.num_classes, config, params.seed, inputs,
                       strong_view=method.needs_strong_view)
    # a checkpoint is resumed only by a run of the same configuration on the same labels
    identity = {**config, "method": params.method, "dataset": params.dataset,
                "labels_digest": folder_digest(inputs) if inputs.is_dir() else file_digest(inputs)}
    run_config = {"method": params.method, "dataset": params.dataset,
                  "num_classes": params.num_classes, **config}
    with distributed(params.train.device) as ctx:
        summary = train(method, dataset, ctx, identity, paths.model_dir, paths.live_dir)
        if ctx.is_main:
            write_json(paths.run_config, run_config)
            write_train_summary(paths, summary, run_config)
            print(f"trained {params.method}: {summary['iterations']} iterations, effective batch "
                  f"{summary['effective_batch']}, {summary['wall_time_s']} s", flush=True)
    return summary


def run_inference(params: Params, paths: RunPaths, split_name: str = "val") -> dict | None:
    """Logits of the split; on val also the no-CRF scores (and, with several predictors such as
    DuPL's students, the choice of the better one). The test split has no GT: it reuses the
    predictor chosen on val."""
    config = check_configuration(params)
    method = create_method(params.method, params.num_classes, {**config, "init_weights": ""})
    record = get_method(params.method)
    # a released checkpoint (infer.weights) or the train stage's own model
    weights = Path(params.infer.weights) if params.infer.weights else paths.model_file
    split = resolve_split(params, split_name, paths.prepared)
    final_dir = paths.logits_dir(split_name)
    predictors = record.predictors(config)
    if split.gt_dir is None and len(predictors) > 1:
        chosen = read_json(paths.scores).get("predictor") if paths.scores.is_file() else None
        if chosen not in predictors:
            raise DataError(paths.scores, "no predictor chosen on val yet (run the infer stage "
                                          "on val first)")
        predictors = {chosen: predictors[chosen]}
    if len(predictors) == 1:
        out_dirs = {name: final_dir for name in predictors}
    else:  # one folder per predictor (DuPL student); the better one is copied to final_dir
        out_dirs = {name: final_dir.parent / f"{final_dir.name}_{name}" for name in predictors}
    with distributed(params.infer.device) as ctx:
        model = method.build_model()
        load_trained_weights(model, weights)
        model.to(ctx.device)
        digest = file_digest(weights)
        for folder in out_dirs.values():
            prepare_output(folder, digest, ctx)
        infer_logits(model, predictors, record.normalize, split, out_dirs, params.num_classes,
                     ctx, params.infer.dtype)
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
        report = {"method": params.method, "split": "val", "crf": False, **reports[best]}
        if len(reports) > 1:
            report["predictor"] = best
            report["predictors_miou"] = {name: r["miou"] for name, r in reports.items()}
        if record.val_extras is not None:  # e.g. DuPL: CAM quality of each student
            report.update(record.val_extras(model, split, read_class_labels(
                paths.class_labels, params.num_classes), ctx.device, method))
        write_report(paths.scores, report)
        print(f"{params.method} val mIoU (no CRF): {report['miou']:.4f}", flush=True)
        return report


def run_crf(params: Params, paths: RunPaths) -> dict:
    """DenseCRF over the val logits: palette PNGs, metrics/scores_crf.json (with the no-CRF
    mIoU of the same pass) + per-class CSV, the confusion matrix for `dvc plots`, and a few
    overlays."""
    check_configuration(params)
    split = resolve_split(params, "val", paths.prepared)
    settings = crf_settings(params.crf, params.method)
    source, out_dir = paths.logits_dir("val"), paths.predictions_dir("val")
    result = refine_split(split, source, out_dir, params.num_classes, settings, ids=split.ids,
                          wrapped_mean=params.crf.wrapped_mean_image, n_jobs=params.crf.n_jobs)
    no_crf = result.no_crf.scores()
    report = scores_report(
        result.crf, class_names(params), split="val", method=params.method, crf=True,
        dataset=params.dataset, images=result.images,
        miou_no_crf=no_crf["miou"], pixel_acc_no_crf=no_crf["pixel_acc"],
    )
    write_report(paths.scores_crf, report)
    write_json(paths.metrics / "confusion_crf.json",
               confusion_plot_rows(result.crf, class_names(params)))
    if params.crf.overlays:
        write_overlays(split, source, out_dir, sorted(split.ids)[:params.crf.overlays],
                       paths.overlays, params.num_classes)
    reused = f" ({result.reused} reused)" if result.reused else ""
    print(f"crf: mIoU {_fmt(report['miou'])} (no CRF {_fmt(no_crf['miou'])}) on "
          f"{result.images} val images{reused}", flush=True)
    return report


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
