"""Scoring of predictions on disk (label PNGs or logits) against ground truth.

Work is split into chunks of images; each joblib worker returns one `ConfusionMatrix`, so memory
does not grow with the number of images and the result does not depend on `n_jobs`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from joblib import Parallel, delayed

from .cli import progress
from .data.datasets import Split
from .io import read_label, read_logits
from .metrics import ConfusionMatrix


def upsample_logits(logits: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """(C, h, w) logits → (C, H, W), bilinear with align_corners=False (as every original code)."""
    t = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))[None]
    return F.interpolate(t, size=tuple(size_hw), mode="bilinear", align_corners=False)[0].numpy()


def label_file_prediction(folder: Path, image_id: str, num_classes: int, gt: np.ndarray) -> np.ndarray:
    return read_label(folder / f"{image_id}.png", num_classes, expected_hw=gt.shape)


def logits_file_prediction(folder: Path, image_id: str, num_classes: int, gt: np.ndarray) -> np.ndarray:
    logits = read_logits(folder / f"{image_id}.npy", num_classes)
    return upsample_logits(logits, gt.shape).argmax(0)


def _score_chunk(predict: Callable, folder: Path, split: Split, ids: list[str],
                 num_classes: int) -> ConfusionMatrix:
    matrix = ConfusionMatrix(num_classes)
    for image_id in ids:
        gt = read_label(split.gt_path(image_id), num_classes)
        matrix.update(predict(folder, image_id, num_classes, gt), gt)
    return matrix


def score_folder(folder: str | Path, split: Split, num_classes: int, kind: str = "labels",
                 n_jobs: int = 1, chunk_size: int = 32) -> ConfusionMatrix:
    """Confusion matrix over the split of `<folder>/<id>.png` (kind="labels") or of
    argmax(upsampled `<folder>/<id>.npy`) (kind="logits")."""
    predict = {"labels": label_file_prediction, "logits": logits_file_prediction}[kind]
    ids = split.ids
    chunks = [ids[i:i + chunk_size] for i in range(0, len(ids), chunk_size)]
    jobs = (delayed(_score_chunk)(predict, Path(folder), split, chunk, num_classes) for chunk in chunks)
    # threads: decoding and bincount release the GIL, and no worker start-up cost
    results = Parallel(n_jobs=n_jobs, return_as="generator", prefer="threads")(jobs)
    return sum(progress(results, f"scoring {kind}", total=len(chunks)), ConfusionMatrix(num_classes))
