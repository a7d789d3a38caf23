"""Scoring of label maps on disk against ground truth (pseudo labels, predictions).

Work is split into chunks of images; each joblib worker returns one `ConfusionMatrix`, so memory
does not grow with the number of images and the result does not depend on `n_jobs`.
"""
from __future__ import annotations

from pathlib import Path

from joblib import Parallel, delayed

from .cli import progress
from .data.datasets import Split
from .io import read_label
from .metrics import ConfusionMatrix


def _score_chunk(pred_dir: Path, split: Split, ids: list[str], num_classes: int) -> ConfusionMatrix:
    matrix = ConfusionMatrix(num_classes)
    for image_id in ids:
        gt = read_label(split.gt_path(image_id), num_classes)
        pred = read_label(pred_dir / f"{image_id}.png", num_classes, expected_hw=gt.shape)
        matrix.update(pred, gt)
    return matrix


def score_label_folder(pred_dir: str | Path, split: Split, num_classes: int,
                       n_jobs: int = 1, chunk_size: int = 64) -> ConfusionMatrix:
    """Confusion matrix of `<pred_dir>/<id>.png` against the split's GT over all its ids."""
    ids = split.ids
    chunks = [ids[i:i + chunk_size] for i in range(0, len(ids), chunk_size)]
    jobs = (delayed(_score_chunk)(Path(pred_dir), split, chunk, num_classes) for chunk in chunks)
    results = Parallel(n_jobs=n_jobs, return_as="generator")(jobs)
    return sum(progress(results, "scoring", total=len(chunks)), ConfusionMatrix(num_classes))
