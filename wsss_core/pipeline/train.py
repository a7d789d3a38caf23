"""Stage train: the configured method through the one training loop (under torchrun), with
validation on val when `train.val_every` is set; writes the model, its effective configuration,
checkpoints, DVCLive curves and the run's summary."""
from __future__ import annotations

from pathlib import Path

from ..config import Params
from ..data.classes import read_class_labels
from ..data.datasets import resolve_split
from ..data.train_set import TrainSet
from ..distributed import distributed
from ..errors import DataError
from ..infer import file_digest, score_split, single_scale
from ..io import write_json
from ..training import folder_digest, images_stamp, train
from .paths import RunPaths
from .resolve import ResolvedRun, resolve_run


def write_train_summary(paths: RunPaths, summary: dict, run_config: dict) -> None:
    """The training run's record, `metrics/train.json` (figures + the effective configuration,
    so the run can be reproduced from its outputs), and its headline numbers for `dvc metrics
    show`, `metrics/train_metrics.json`."""
    write_json(paths.train_summary, {**summary, "preset": run_config["preset"], "config": run_config})
    losses = summary.get("final_losses", {})
    write_json(paths.train_metrics, {
        "method": summary["method"], "effective_batch": summary["effective_batch"], "wall_time_s": summary["wall_time_s"],
        **({"loss": losses["loss"]} if "loss" in losses else {})})


def val_scorer(run: ResolvedRun, val_split, ctx, class_labels: Path):
    """`validate(model, iteration)` for the loop: val mIoU without CRF, the better predictor's
    (as inference picks it), with the inference stage's forward and the one metric; plus the
    method's val extras (e.g. each DuPL student's CAM mIoU: how the CAMs move through the
    phases), flattened to `<name>_<key>` numbers for the curves."""
    params, predictors = run.params, run.record.predictors(run.config)

    def validate(model, iteration: int) -> dict | None:
        with single_scale(model, params.train.val_scales == "single"):
            matrices = score_split(model, predictors, run.record.normalize, val_split,
                                   params.num_classes, ctx, params.infer.dtype,
                                   params.train.precision)
        if matrices is None:
            return None
        mious = {name: m.scores()["miou"] for name, m in matrices.items()}
        each = {f"miou_{name}": v for name, v in mious.items()} if len(mious) > 1 else {}
        scores = {"miou": max(mious.values(), key=lambda v: -1.0 if v is None else v), **each}
        if run.record.val_extras is not None:
            extras = run.record.val_extras(model, val_split, read_class_labels(
                class_labels, params.num_classes), ctx.device, run.method)
            for name, value in extras.items():
                scores.update({f"{name}_{k}": v for k, v in value.items()}
                              if isinstance(value, dict) else {name: value})
        return scores
    return validate


def run_training(params: Params, paths: RunPaths, threads: int | None = None) -> dict:
    """Train the configured method; `threads`: CPU threads of this process (default: the
    machine's cores shared among its ranks)."""
    return train_run(resolve_run(params), paths, threads)


def train_run(run: ResolvedRun, paths: RunPaths, threads: int | None = None) -> dict:
    """`run_training` of a run already resolved."""
    params, record, config = run.params, run.record, run.config
    split = resolve_split(params, "train", paths.prepared)
    val_split = resolve_split(params, "val", paths.prepared) if params.train.val_every else None
    if val_split is not None and val_split.gt_dir is None:
        raise DataError(paths.prepared, "train.val_every: the val split has no ground truth")
    inputs = paths.pseudo_labels if record.uses_pseudo_labels else paths.class_labels
    if record.uses_pseudo_labels and not inputs.is_dir():
        raise DataError(inputs, "pseudo labels not found (run the pseudo_labels stage)")
    if not record.uses_pseudo_labels and not inputs.is_file():
        raise DataError(inputs, "image-level labels not found (run the prepare_data stage)")
    method = run.training_method()
    dataset = TrainSet(split, record, params.num_classes, config, params.seed, inputs,
                       strong_view=method.needs_strong_view)
    # a checkpoint is resumed only by a run of the same configuration on the same labels and
    # images (image-level labels stay the same when the images are redrawn)
    identity = {**config, "method": params.method, "dataset": params.dataset,
                "labels_digest": folder_digest(inputs) if inputs.is_dir() else file_digest(inputs),
                "images_stamp": images_stamp([split.image_path(i) for i in split.ids])}
    run_config = {"method": params.method, "dataset": params.dataset,
                  "num_classes": params.num_classes, **config}
    with distributed(params.train.device, threads) as ctx:
        validate = (val_scorer(run, val_split, ctx, paths.class_labels)
                    if val_split is not None else None)
        summary = train(method, dataset, ctx, identity, paths.model_dir, paths.live_dir,
                        validate)
        if ctx.is_main:
            write_json(paths.run_config, run_config)
            write_train_summary(paths, summary, run_config)
            print(f"trained {params.method}: {summary['iterations']} iterations, effective batch "
                  f"{summary['effective_batch']}, {summary['wall_time_s']} s", flush=True)
    return summary
