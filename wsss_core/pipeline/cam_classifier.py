"""Stage cam_classifier: with `pseudo_labels.source` cams/dupl, train the CAM classifier (method
cam, or DuPL) on the image-level labels; with any other source, a manifest saying it is unused."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from ..cam.extract import split_class_labels
from ..cam.store import MANIFEST
from ..cli import is_main_process
from ..config import Params
from ..data.datasets import resolve_split
from ..io import atomic_dir, write_json
from ..methods.registry import cam_source_method
from .paths import RunPaths
from .resolve import resolve_run
from .train import train_run


def classifier_params(params: Params) -> Params:
    """The configuration that trains the CAM classifier of `pseudo_labels.source` cams/dupl:
    the method whose record names the source (cam, dupl) with `pseudo_labels.classifier` as its
    `train` group."""
    group = params.pseudo_labels
    return dataclasses.replace(params, method=cam_source_method(group.source).name,
                               train=group.classifier)


def classifier_paths(paths: RunPaths) -> RunPaths:
    """The classifier's run writes into `paths.classifier` only: model, config, checkpoints and
    its training metrics (metrics/), apart from the segmentation model's."""
    return dataclasses.replace(paths, model_dir=paths.classifier,
                               metrics=paths.classifier / "metrics")


def unused_stage_manifest(source: str) -> dict:
    return {"used": False, "source": source,
            "why": "pseudo_labels.source is neither cams nor dupl"}


def mark_stage_unused(folder: str | Path, source: str, whole_folder: bool,
                      keep: tuple[str, ...] = ()) -> dict:
    """The output of the cam_classifier / cams stage when the source does not use them: a
    manifest saying so, written at once (the stage's time is that of loading params).
    `whole_folder` replaces `folder` by one holding only the manifest; otherwise everything in
    it but the entries named in `keep` (the classifier's checkpoints, for a later resume) is
    removed first, so no model of an earlier run looks current."""
    folder = Path(folder)
    manifest = unused_stage_manifest(source)
    if whole_folder:
        with atomic_dir(folder) as tmp:
            write_json(tmp / MANIFEST, manifest)
        return manifest
    for entry in (sorted(folder.iterdir()) if folder.is_dir() else []):
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    write_json(folder / MANIFEST, manifest)
    return manifest


def train_cam_classifier(params: Params, paths: RunPaths, threads: int | None = None) -> dict:
    """With source cams/dupl, `run_training` of `classifier_params` into `paths.classifier`
    (resumes its checkpoints); otherwise only a manifest saying it is unused (the model and
    metrics of an earlier run are removed, its checkpoints kept for a resume). `threads`: CPU
    threads of this process (default: the machine's cores shared among its ranks)."""
    folder = paths.classifier
    if not params.pseudo_labels.from_cams:
        return mark_stage_unused(folder, params.pseudo_labels.source, whole_folder=False,
                                 keep=("checkpoints",))
    cparams, cpaths = classifier_params(params), classifier_paths(paths)
    run = resolve_run(cparams)
    split_class_labels(paths.class_labels, resolve_split(params, "train", paths.prepared),
                       params.num_classes)
    summary = train_run(run, cpaths, threads=threads)
    if is_main_process():
        write_json(folder / MANIFEST, {"used": True, "source": params.pseudo_labels.source,
                                       "method": cparams.method,
                                       "iterations": summary["iterations"]})
    return summary
