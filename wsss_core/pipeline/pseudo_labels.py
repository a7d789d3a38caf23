"""Stage pseudo_labels: the train split's pseudo labels, published as one folder that DVC tracks
(`dvc push` / `dvc pull`), from each `pseudo_labels.source`: ingested from a folder or an archive
(files), simulated from the synthetic GT (simulate), or refined from the stored CAMs (cams, dupl).
Refined and simulated labels go through the same PNG writer and validation as ingested ones."""
from __future__ import annotations

from pathlib import Path

from ..cam.extract import split_class_labels
from ..cam.refine import refine_cam_labels
from ..cam.store import read_manifest
from ..config import Params
from ..data.datasets import Split, resolve_split
from ..data.pseudo_labels import ingest_pseudo_labels
from ..errors import DataError
from ..io import atomic_dir
from ..parallel import Workers
from ..synthetic import write_noisy_pseudo_labels
from .paths import RunPaths
from .resolve import resolve_run


def synthesize_pseudo_labels(params: Params, split: Split, gt_dir: str | Path, out_dir: str | Path) -> dict:
    """Noisy, CAM-like pseudo labels of the synthetic train split: the masks in `gt_dir`
    corrupted with `data.noise`."""
    ids = split.ids
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise DataError(gt_dir, "GT folder to simulate pseudo labels from not found (run the "
                                "prepare_data stage)")
    with atomic_dir(out_dir) as tmp:
        write_noisy_pseudo_labels(gt_dir, ids, tmp, params.data.noise, params.data.noise_types,
                                  params.data.noise_seed, params.data.synthetic.classes)
    return {"source": str(gt_dir), "noise": params.data.noise, "labels": len(ids)}


def publish_pseudo_labels(params: Params, paths: RunPaths) -> dict:
    """The train split's pseudo labels in `paths.pseudo_labels`, by `pseudo_labels.source`:
    simulate (the synthetic GT in `pseudo_labels.path` corrupted with `data.noise`), files
    (validated and copied from `path`), cams/dupl (the CAMs in `paths.cams` refined with
    `pseudo_labels.refine`)."""
    resolve_run(params)
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
                                 out_dir, workers=Workers.of(group.refine, "pseudo_labels.refine"))
    print(f"pseudo labels: {info['labels']} files in {out_dir}", flush=True)
    return info
