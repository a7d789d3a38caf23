"""Scoring of predictions on disk (label PNGs or logits) against ground truth.

Logits are upsampled in NumPy (no torch import in workers), bit-compatible with torch's
bilinear `F.interpolate(align_corners=False)`.

Work is split into chunks of images; each joblib worker returns one `ConfusionMatrix`, so memory
does not grow with the number of images and the result does not depend on `n_jobs`.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed

from .cli import progress
from .data.datasets import Split
from .io import read_label
from .logits_io import logits_file, read_logits
from .metrics import ConfusionMatrix


def _fma(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 a·b + c rounded once, like a fused multiply-add (the float32 product is exact
    in float64)."""
    out = a.astype(np.float64)
    out *= b
    out += c
    return out.astype(np.float32)


def _linear_taps(in_size: int, out_size: int):
    """Source indices and weights of 1-D linear resampling with align_corners=False."""
    scale = np.float32(in_size) / np.float32(out_size)
    centre = np.arange(out_size, dtype=np.float32) + np.float32(0.5)
    src = np.maximum(_fma(np.full(out_size, scale), centre, np.float32(-0.5)), np.float32(0))
    low = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    lam = np.clip(src - low.astype(np.float32), np.float32(0), np.float32(1))
    high = np.where(low < in_size - 1, low + 1, low)
    return low, high, np.float32(1) - lam, lam


def upsample_bilinear(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """C×h×w → C×H×W float32 like torch's F.interpolate(mode="bilinear", align_corners=False).

    NumPy, so CRF workers need not import torch (≈0.5 GB RSS and seconds of start-up each).
    The operation order and the fused multiply-adds of torch's CPU kernel are reproduced: for
    stride-8 grids upsampled to their image it equals torch 2.x bit for bit (checked over a
    range of sizes), in the remaining corner cases it is within 1 ulp.
    """
    x = np.asarray(logits, dtype=np.float32)
    if x.shape[1:] == tuple(size):
        return x.copy()
    y0, y1, wy0, wy1 = _linear_taps(x.shape[1], size[0])
    x0, x1, wx0, wx1 = _linear_taps(x.shape[2], size[1])

    # torch: out = fma(row(y0), wy0, row(y1)·wy1) with row(r) = fma(x[r,x0], wx0, x[r,x1]·wx1);
    # rows are resampled once per source row (h ≪ H), then gathered
    rows = _fma(x[:, :, x0], wx0, x[:, :, x1] * wx1)
    return _fma(rows[:, y0], wy0[:, None], rows[:, y1] * wy1[:, None])


def softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    out = logits - logits.max(axis=axis, keepdims=True)
    np.exp(out, out=out)
    out /= out.sum(axis=axis, keepdims=True)
    return out



def label_file_prediction(folder: Path, image_id: str, num_classes: int, gt: np.ndarray) -> np.ndarray:
    return read_label(folder / f"{image_id}.png", num_classes, expected_hw=gt.shape)


def logits_file_prediction(folder: Path, image_id: str, num_classes: int, gt: np.ndarray) -> np.ndarray:
    logits = read_logits(logits_file(folder, image_id), num_classes)
    return upsample_bilinear(logits, gt.shape).argmax(0)


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
    argmax(upsampled `<folder>/<id>.npy` or compact `.npz`) (kind="logits")."""
    predict = {"labels": label_file_prediction, "logits": logits_file_prediction}[kind]
    ids = split.ids
    chunks = [ids[i:i + chunk_size] for i in range(0, len(ids), chunk_size)]
    jobs = (delayed(_score_chunk)(predict, Path(folder), split, chunk, num_classes) for chunk in chunks)
    # threads: decoding and bincount release the GIL, and no worker start-up cost
    results = Parallel(n_jobs=n_jobs, return_as="generator", prefer="threads")(jobs)
    return sum(progress(results, f"scoring {kind}", total=len(chunks)), ConfusionMatrix(num_classes))
