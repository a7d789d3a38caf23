"""What the stages do, given validated params and the run's paths (the scripts only call these).

Every function takes a `RunPaths` (the roots dvc.yaml passes the stage, or a benchmark cell's
own), looks the method up in the registry, and validates the whole configuration (preset, method
options) before it reads any data.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from .cam.extract import split_class_labels, write_split_cams
from .cam.store import read_manifest, write_manifest
from .cli import is_main_process
from .config import Params
from .crf import crf_settings, refine_split, write_overlays
from .data.classes import read_class_labels
from .data.datasets import class_names, resolve_split
from .data.prepare import prepare_dataset
from .data.pseudo_labels import (
    STAGE_MANIFEST,
    ingest_pseudo_labels,
    mark_stage_unused,
    refine_cam_labels,
    synthesize_pseudo_labels,
)
from .data.train_set import TrainSet
from .distributed import barrier, distributed
from .errors import DataError
from .evaluate import score_folder
from .infer import file_digest, infer_logits, prepare_output, score_split, single_scale
from .io import atomic_dir, read_json, write_json, write_text
from .methods import create_method
from .metrics import confusion_plot_rows, headline, per_class_csv, scores_report
from .models.checkpoints import load_trained_weights
from .paths import RunPaths
from .presets import effective_train_config
from .registry import get_method
from .training import BEST_MODEL, folder_digest, images_stamp, train


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
    """The train split's pseudo labels in `paths.pseudo_labels`, by `pseudo_labels.source`:
    simulate (the synthetic GT in `pseudo_labels.path` corrupted with `data.noise`), files
    (validated and copied from `path`), cams/dupl (the CAMs in `paths.cams` refined with
    `pseudo_labels.refine`)."""
    check_configuration(params)
    group = params.pseudo_labels
    split = resolve_split(params, "train", paths.prepared)
    out_dir = paths.pseudo_labels
    if group.simulated:
        info = synthesize_pseudo_labels(params, split, group.path, out_dir)
    elif group.source == "files":
        info = ingest_pseudo_labels(group.path, split, params.num_classes, out_dir)
    else:
        read_manifest(paths.cams, group.source)
        labels = split_class_labels(paths.class_labels, split, params.num_classes)
        info = refine_cam_labels(paths.cams, split, labels, params.num_classes, group.refine,
                                 out_dir)
    print(f"pseudo labels: {info['labels']} files in {out_dir}", flush=True)
    return info


# ------------------------------------------------------------- CAM classifier → CAMs
def classifier_params(params: Params) -> Params:
    """The configuration that trains the CAM classifier of `pseudo_labels.source` cams/dupl:
    method cam resp. dupl with `pseudo_labels.classifier` as its `train` group."""
    group = params.pseudo_labels
    return dataclasses.replace(params, method=group.classifier_method, train=group.classifier)


def classifier_paths(paths: RunPaths) -> RunPaths:
    """The classifier's run writes into `paths.classifier` only: model, config, checkpoints and
    its training metrics (metrics/), apart from the segmentation model's."""
    return dataclasses.replace(paths, model_dir=paths.classifier,
                               metrics=paths.classifier / "metrics")


def train_cam_classifier(params: Params, paths: RunPaths) -> dict:
    """Stage cam_classifier: with source cams/dupl, `run_training` of `classifier_params` into
    `paths.classifier` (resumes its checkpoints); otherwise only a manifest saying it is unused
    (the model and metrics of an earlier run are removed, its checkpoints kept for a resume)."""
    folder = paths.classifier
    if not params.pseudo_labels.from_cams:
        return mark_stage_unused(folder, params.pseudo_labels.source, whole_folder=False,
                                 keep=("checkpoints",))
    cparams, cpaths = classifier_params(params), classifier_paths(paths)
    check_configuration(cparams)
    split_class_labels(paths.class_labels, resolve_split(params, "train", paths.prepared),
                       params.num_classes)
    summary = run_training(cparams, cpaths)
    if is_main_process():
        write_json(folder / STAGE_MANIFEST, {"used": True, "source": params.pseudo_labels.source,
                                           "method": cparams.method,
                                           "iterations": summary["iterations"]})
    return summary


def compute_cams(params: Params, paths: RunPaths) -> dict:
    """Stage cams: multi-scale (+ flip) CAMs of every train image's present classes from the
    classifier in `paths.classifier`, stored compactly in `paths.cams` (wsss_core.cam.store)."""
    group = params.pseudo_labels
    if not group.from_cams:
        return mark_stage_unused(paths.cams, group.source, whole_folder=True)
    cparams = classifier_params(params)
    config = check_configuration(cparams)
    record = get_method(cparams.method)
    weights, trained = paths.classifier / "model.pth", paths.classifier / "config.json"
    if not weights.is_file() or not trained.is_file():
        raise DataError(weights, "CAM classifier not found (run the cam_classifier stage)")
    read_manifest(paths.classifier, group.source)  # trained for this source (cam vs dupl)
    trained_classes = read_json(trained).get("num_classes")
    if trained_classes != params.num_classes:
        raise DataError(trained, f"the classifier was trained for {trained_classes} classes, "
                                 f"dataset '{params.dataset}' has {params.num_classes}")
    split = resolve_split(params, "train", paths.prepared)
    labels = split_class_labels(paths.class_labels, split, params.num_classes)
    model = create_method(cparams.method, params.num_classes,
                          {**config, "init_weights": ""}).build_model()
    load_trained_weights(model, weights)
    cam_model = record.cam_model(model) if record.cam_model is not None else model
    with distributed(group.classifier.device) as ctx:
        model.to(ctx.device).eval()
        with atomic_dir(paths.cams) as tmp:
            count = write_split_cams(cam_model, record.normalize, split, labels,
                                     params.num_classes, group.cam.scales, group.cam.flip,
                                     group.cam.stride, tmp, ctx.device, weights)
            manifest = {"used": True, "source": group.source, "method": cparams.method,
                        "classifier_sha256": file_digest(weights), "scales": group.cam.scales,
                        "flip": group.cam.flip, "stride": group.cam.stride, "images": count}
            write_manifest(tmp, manifest)
    print(f"cams: {count} train images ({cparams.method} classifier) in {paths.cams}", flush=True)
    return manifest


def score_pseudo_labels(params: Params, paths: RunPaths, out: Path | None = None) -> dict:
    """mIoU of the pseudo labels in `paths.pseudo_labels` against the train GT → `out`
    (default `paths.pseudo_label_scores`, metrics/pseudo_labels.json), a per-class CSV, and
    where their errors lie on the synthetic data's context → `<stem>_context.json` (a plain
    file: its keys would widen `dvc metrics show`; `{}` without context maps)."""
    check_configuration(params)
    split = resolve_split(params, "train", paths.prepared)
    matrix = score_folder(paths.pseudo_labels, split, params.num_classes, "labels",
                          n_jobs=params.evaluate.n_jobs)
    report = scores_report(matrix, class_names(params), what="pseudo_labels", split="train",
                           dataset=params.dataset, pseudo_labels=params.pseudo_labels.name,
                           noise=params.data.noise if params.pseudo_labels.simulated else None)
    from .data.synthetic import CONTEXT_FOLDER
    from .data.synthetic.context import context_statistics

    context_dir = split.image_dir.parent / CONTEXT_FOLDER
    if params.dataset == "synthetic" and context_dir.is_dir():
        # how much of the synthetic data's class-specific background the labels call foreground
        report["context"] = context_statistics(paths.pseudo_labels, split.gt_dir, context_dir,
                                               split.ids, params.num_classes)
    out = out or paths.pseudo_label_scores
    write_report(out, report)
    write_json(out.with_name(out.stem + "_context.json"), report.get("context", {}))
    print(f"pseudo_labels: mIoU {report['miou']:.4f} on {len(split.ids)} train images", flush=True)
    return report


def run_training(params: Params, paths: RunPaths) -> dict:
    """Train the configured method; writes the model, its effective configuration beside it,
    the checkpoints, DVCLive curves and the training summary."""
    config = check_configuration(params)
    # precision and validation enter the configuration only when on, so runs (and the
    # checkpoints they resume) without them stay as they were
    if params.train.precision != "fp32":
        config["precision"] = params.train.precision
    if params.train.val_every:
        config.update(val_every=params.train.val_every, val_scales=params.train.val_scales)
    method = create_method(params.method, params.num_classes, config)
    record = get_method(params.method)
    split = resolve_split(params, "train", paths.prepared)
    val_split = resolve_split(params, "val", paths.prepared) if params.train.val_every else None
    if val_split is not None and val_split.gt_dir is None:
        raise DataError(paths.prepared, "train.val_every: the val split has no ground truth")
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
    # a checkpoint is resumed only by a run of the same configuration on the same labels and
    # images (image-level labels stay the same when the images are redrawn)
    identity = {**config, "method": params.method, "dataset": params.dataset,
                "labels_digest": folder_digest(inputs) if inputs.is_dir() else file_digest(inputs),
                "images_stamp": images_stamp([split.image_path(i) for i in split.ids])}
    run_config = {"method": params.method, "dataset": params.dataset,
                  "num_classes": params.num_classes, **config}
    with distributed(params.train.device) as ctx:
        validate = None
        if val_split is not None:
            predictors = record.predictors(config)

            def validate(model, iteration: int) -> dict | None:
                """val mIoU without CRF (the better predictor's, as inference picks it)."""
                with single_scale(model, params.train.val_scales == "single"):
                    matrices = score_split(model, predictors, record.normalize, val_split,
                                           params.num_classes, ctx, params.infer.dtype,
                                           params.train.precision)
                if matrices is None:
                    return None
                mious = {name: m.scores()["miou"] for name, m in matrices.items()}
                each = {f"miou_{name}": v for name, v in mious.items()} if len(mious) > 1 else {}
                return {"miou": max(mious.values(), key=lambda v: -1.0 if v is None else v),
                        **each}
        summary = train(method, dataset, ctx, identity, paths.model_dir, paths.live_dir,
                        validate)
        if ctx.is_main:
            write_json(paths.run_config, run_config)
            write_train_summary(paths, summary, run_config)
            print(f"trained {params.method}: {summary['iterations']} iterations, effective batch "
                  f"{summary['effective_batch']}, {summary['wall_time_s']} s", flush=True)
    return summary


def scored_splits(params: Params) -> list[str]:
    """The splits the infer and crf stages score: val (where presets, thresholds and DuPL's
    student are chosen) and, where it has GT, the held-out test split the results are reported
    on (the synthetic data's; VOC's test GT is on the evaluation server, COCO has none)."""
    held_out = params.dataset == "synthetic" and params.data.synthetic.num_test > 0
    return ["val", "test"] if held_out else ["val"]


def write_unscored(path: Path, split: str) -> None:
    """The metric file of a split without GT (DVC declares it for every dataset)."""
    write_report(path, {"split": split, "miou": None, "per_class_iou": {}})


def run_inference(params: Params, paths: RunPaths, split_name: str = "val") -> dict | None:
    """Logits of the split and, where it has GT, its no-CRF scores. With several predictors
    (DuPL's students) val scores each and keeps the better one; every other split reuses the
    one chosen on val, so nothing is chosen on the split a result is reported on."""
    config = check_configuration(params)
    method = create_method(params.method, params.num_classes, {**config, "init_weights": ""})
    record = get_method(params.method)
    # a released checkpoint (infer.weights) or the train stage's own last or best model
    if params.infer.weights:
        weights = Path(params.infer.weights)
    else:
        weights = paths.model_dir / BEST_MODEL if params.infer.checkpoint == "best" \
            else paths.model_file
    split = resolve_split(params, split_name, paths.prepared)
    final_dir = paths.logits_dir(split_name)
    predictors = record.predictors(config)
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
    with distributed(params.infer.device) as ctx:
        model = method.build_model()
        load_trained_weights(model, weights)
        model.to(ctx.device)
        digest = file_digest(weights)
        for folder in out_dirs.values():
            prepare_output(folder, digest, ctx)
        infer_logits(model, predictors, record.normalize, split, out_dirs, params.num_classes,
                     ctx, params.infer.dtype, params.infer.precision)
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
        report = {"method": params.method, "split": split_name, "crf": False, **reports[best]}
        if len(reports) > 1:
            report["predictor"] = best
            if split_name == "val":
                report["predictors_miou"] = {name: r["miou"] for name, r in reports.items()}
        if record.val_extras is not None and split_name == "val":  # e.g. DuPL's CAM mIoU
            report.update(record.val_extras(model, split, read_class_labels(
                paths.class_labels, params.num_classes), ctx.device, method))
        write_report(paths.scores_of(split_name), report)
        print(f"{params.method} {split_name} mIoU (no CRF): {report['miou']:.4f}", flush=True)
        return report


def run_inference_splits(params: Params, paths: RunPaths) -> None:
    """The infer stage: every scored split in one process group (val first: the test split
    reuses what val chose); a split without GT gets a metric file saying so."""
    splits = scored_splits(params)
    with distributed(params.infer.device) as ctx:
        for split_name in splits:
            run_inference(params, paths, split_name)
            barrier()  # val's scores (and choice of predictor) are written before test reads them
        if ctx.is_main and "test" not in splits:
            write_unscored(paths.scores_of("test"), "test")


def run_crf_splits(params: Params, paths: RunPaths) -> None:
    """The crf stage: every scored split; a split without GT gets a metric file saying so."""
    splits = scored_splits(params)
    for split_name in splits:
        run_crf(params, paths, split_name)
    if "test" not in splits:
        write_unscored(paths.scores_of("test", crf=True), "test")
        paths.predictions_dir("test").mkdir(parents=True, exist_ok=True)  # a declared output


def run_crf(params: Params, paths: RunPaths, split_name: str = "val") -> dict:
    """DenseCRF over a split's logits: palette PNGs, its scores with CRF (with the no-CRF
    mIoU of the same pass; metrics/scores_crf[_<split>].json) + per-class CSV; on val also the
    confusion matrix for `dvc plots` and a few overlays."""
    check_configuration(params)
    split = resolve_split(params, split_name, paths.prepared)
    settings = crf_settings(params.crf, params.method)
    source, out_dir = paths.logits_dir(split_name), paths.predictions_dir(split_name)
    result = refine_split(split, source, out_dir, params.num_classes, settings, ids=split.ids,
                          wrapped_mean=params.crf.wrapped_mean_image, n_jobs=params.crf.n_jobs)
    no_crf = result.no_crf.scores()
    report = scores_report(
        result.crf, class_names(params), split=split_name, method=params.method, crf=True,
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
    print(f"crf: mIoU {_fmt(report['miou'])} (no CRF {_fmt(no_crf['miou'])}) on "
          f"{result.images} {split_name} images{reused}", flush=True)
    return report


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
