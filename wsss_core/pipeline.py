"""What the train and infer stages do, given validated params (the scripts only call these)."""
from __future__ import annotations

import shutil
from pathlib import Path

from .config import Params
from .crf import crf_settings, refine_split, write_overlays
from .data.classes import read_class_labels
from .data.datasets import (
    class_labels_path,
    class_names,
    logits_dir,
    predictions_dir,
    pseudo_label_dir,
    resolve_split,
)
from .data.pseudo_labels import ingest_pseudo_labels, synthesize_pseudo_labels
from .data.train_set import TrainSet
from .distributed import distributed
from .errors import DataError
from .evaluate import score_folder
from .infer import file_digest, infer_logits, prepare_output
from .io import atomic_dir, read_json, write_json, write_text
from .methods import create_method
from .metrics import per_class_csv, scores_report
from .models import load_checkpoint
from .presets import effective_train_config
from .train import folder_digest, train, write_train_summary

MODELS_DIR = Path("models")
TRAIN_LIVE_DIR = Path("metrics/train")
TRAIN_SUMMARY = Path("metrics/train.json")
SCORES = Path("metrics/scores.json")
SCORES_CRF = Path("metrics/scores_crf.json")
PSEUDO_LABEL_SCORES = Path("metrics/pseudo_labels.json")
OVERLAYS_DIR = Path("metrics/plots/overlays")


def model_path(params: Params) -> Path:
    return MODELS_DIR / params.method / "model.pth"


def publish_pseudo_labels(params: Params, out_dir: Path | None = None) -> dict:
    """The train split's pseudo labels in `out_dir` (default data/pseudo_labels/<name>/):
    simulated from the synthetic GT with `data.noise`, or validated and copied from
    `pseudo_labels.source`."""
    split = resolve_split(params, "train")
    out_dir = out_dir or pseudo_label_dir(params)
    if params.pseudo_labels.source == "synthetic":
        info = synthesize_pseudo_labels(params, split, out_dir)
    else:
        info = ingest_pseudo_labels(params.pseudo_labels.source, split, params.num_classes, out_dir)
    print(f"pseudo labels: {info['labels']} files in {out_dir}", flush=True)
    return info


def score_pseudo_labels(params: Params, folder: Path | None = None,
                        out: Path = PSEUDO_LABEL_SCORES) -> dict:
    """mIoU of the pseudo labels in `folder` (default data/pseudo_labels/<name>/) against the
    train GT → `out` (metrics/pseudo_labels.json) and a per-class CSV beside it."""
    split = resolve_split(params, "train")
    matrix = score_folder(folder or pseudo_label_dir(params), split, params.num_classes, "labels",
                          n_jobs=params.evaluate.n_jobs)
    report = scores_report(matrix, class_names(params), what="pseudo_labels", split="train",
                           dataset=params.dataset, pseudo_labels=params.pseudo_labels.name,
                           noise=params.data.noise if params.pseudo_labels.source == "synthetic"
                           else None)
    write_json(out, report)
    write_text(out.with_name(out.stem + "_per_class.csv"), per_class_csv(report))
    print(f"pseudo_labels: mIoU {report['miou']:.4f} on {len(split.ids)} train images", flush=True)
    return report


def run_training(params: Params) -> dict:
    config = effective_train_config(params)
    method = create_method(params.method, params.num_classes, config)
    split = resolve_split(params, "train")
    if method.family == "deeplab":
        labels = pseudo_label_dir(params)
        if not labels.is_dir():
            raise DataError(labels, "pseudo labels not found (run the pseudo_labels stage)")
        dataset = TrainSet(split, "deeplab", params.num_classes, config["crop"], params.seed,
                           label_dir=labels, scales=config["train_scales"],
                           strong_view=method.needs_strong_view)
        inputs = labels
    else:
        inputs = class_labels_path(params)
        dataset = TrainSet(split, "dupl", params.num_classes, config["crop"], params.seed,
                           class_labels=inputs, strong_view=method.needs_strong_view)
    # a checkpoint is resumed only by a run of the same configuration on the same labels
    identity = {**config, "method": params.method, "dataset": params.dataset,
                "labels_digest": folder_digest(inputs) if inputs.is_dir() else file_digest(inputs)}
    with distributed(params.train.device) as ctx:
        summary = train(method, dataset, ctx, identity, MODELS_DIR / params.method, TRAIN_LIVE_DIR)
        if ctx.is_main:
            write_train_summary(TRAIN_SUMMARY, summary, config)
            print(f"trained {params.method}: {summary['iterations']} iterations, effective batch "
                  f"{summary['effective_batch']}, {summary['wall_time_s']} s", flush=True)
    return summary


def run_inference(params: Params, split_name: str = "val") -> dict | None:
    """Logits of the split; on val also the no-CRF scores (and, with several predictors such as
    DuPL's students, the choice of the better one). The test split has no GT: it reuses the
    predictor chosen on val."""
    config = effective_train_config(params)
    method = create_method(params.method, params.num_classes, {**config, "init_weights": ""})
    weights = model_path(params)
    split = resolve_split(params, split_name)
    final_dir = logits_dir(params, split_name)
    predictors = method.predictors()
    if split.gt_dir is None and len(predictors) > 1:
        chosen = read_json(SCORES).get("predictor") if SCORES.is_file() else None
        if chosen not in predictors:
            raise DataError(SCORES, "no predictor chosen on val yet (run the infer stage on val first)")
        predictors = {chosen: predictors[chosen]}
    if len(predictors) == 1:
        out_dirs = {name: final_dir for name in predictors}
    else:  # one folder per predictor (DuPL student); the better one is copied to final_dir
        out_dirs = {name: final_dir.parent / f"{final_dir.name}_{name}" for name in predictors}
    with distributed(params.infer.device) as ctx:
        model = method.build_model()
        load_checkpoint(model, weights)
        model.to(ctx.device)
        digest = file_digest(weights)
        for folder in out_dirs.values():
            prepare_output(folder, digest, ctx)
        infer_logits(model, predictors, method.family, split, out_dirs, params.num_classes, ctx,
                     params.infer.dtype)
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
        if hasattr(method, "cam_matrices"):  # DuPL: CAM quality of each student, as its logs report
            cams = method.cam_matrices(model, split, read_class_labels(class_labels_path(params),
                                                                       params.num_classes), ctx.device)
            report["cam_miou"] = {name: m.scores()["miou"] for name, m in cams.items()}
        write_json(SCORES, report)
        write_text(SCORES.with_name("scores_per_class.csv"), per_class_csv(report))
        print(f"{params.method} val mIoU (no CRF): {report['miou']:.4f}", flush=True)
        return report


def run_crf(params: Params) -> dict:
    """DenseCRF over the val logits: palette PNGs, metrics/scores_crf.json (with the no-CRF
    mIoU of the same pass) + per-class CSV, and a few overlays."""
    split = resolve_split(params, "val")
    settings = crf_settings(params.crf, params.method)
    source, out_dir = logits_dir(params, "val"), predictions_dir(params, "val")
    result = refine_split(split, source, out_dir, params.num_classes, settings, ids=split.ids,
                          wrapped_mean=params.crf.wrapped_mean_image, n_jobs=params.crf.n_jobs)
    no_crf = result.no_crf.scores()
    report = scores_report(
        result.crf, class_names(params), split="val", method=params.method, crf=True,
        dataset=params.dataset, images=result.images,
        miou_no_crf=no_crf["miou"], pixel_acc_no_crf=no_crf["pixel_acc"],
    )
    write_json(SCORES_CRF, report)
    write_text(SCORES_CRF.with_name("scores_crf_per_class.csv"), per_class_csv(report))
    if params.crf.overlays:
        write_overlays(split, source, out_dir, sorted(split.ids)[:params.crf.overlays],
                       OVERLAYS_DIR, params.num_classes)
    reused = f" ({result.reused} reused)" if result.reused else ""
    print(f"crf: mIoU {_fmt(report['miou'])} (no CRF {_fmt(no_crf['miou'])}) on "
          f"{result.images} val images{reused}", flush=True)
    return report


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
