"""Segmentation scores from one confusion matrix (deeplab-pytorch / wkentaro convention).

IoU_c = TP / (TP + FP + FN). `miou` is the mean over classes present in the ground truth, so a
class that is only predicted (absent from GT) lowers no score but is still reported per class.
A prediction may leave pixels undecided with `ignore_index` (pseudo labels do): such a pixel is a
false negative of its GT class and a false positive of none.
"""
from __future__ import annotations

import numpy as np


class ConfusionMatrix:
    """Accumulates a num_classes × num_classes matrix, rows = ground truth, columns = prediction.

    Matrices of the same size merge with `+`, so joblib workers and distributed ranks can each
    return one and the caller reduces them.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        # GT pixels per class that the prediction left as ignore_index
        self.undecided = np.zeros(num_classes, dtype=np.int64)

    def update(self, pred, gt) -> ConfusionMatrix:
        pred = np.asarray(pred)
        gt = np.asarray(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
        gt = gt.reshape(-1).astype(np.int64, copy=False)
        pred = pred.reshape(-1).astype(np.int64, copy=False)
        valid = (gt >= 0) & (gt < self.num_classes) & (gt != self.ignore_index)
        gt, pred = gt[valid], pred[valid]
        n = self.num_classes
        undecided = pred == self.ignore_index
        if undecided.any():
            self.undecided += np.bincount(gt[undecided], minlength=n)
            gt, pred = gt[~undecided], pred[~undecided]
        if pred.size and (pred.min() < 0 or pred.max() >= n):
            raise ValueError(f"prediction holds class ids outside 0..{n - 1} (and {self.ignore_index})")
        self.matrix += np.bincount(n * gt + pred, minlength=n * n).reshape(n, n)
        return self

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        if not isinstance(other, ConfusionMatrix) or other.num_classes != self.num_classes:
            return NotImplemented
        out = ConfusionMatrix(self.num_classes, self.ignore_index)
        out.matrix = self.matrix + other.matrix
        out.undecided = self.undecided + other.undecided
        return out

    def __radd__(self, other):
        # lets sum(list_of_matrices) start from 0
        if isinstance(other, int) and other == 0:
            return self
        return self.__add__(other)

    def scores(self) -> dict:
        hist = self.matrix.astype(np.float64)
        tp = np.diag(hist)
        gt_count = hist.sum(axis=1) + self.undecided
        pred_count = hist.sum(axis=0)
        union = gt_count + pred_count - tp
        total = gt_count.sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
            class_acc = np.where(gt_count > 0, tp / gt_count, np.nan)
        present = gt_count > 0
        freq = gt_count / total if total > 0 else np.zeros_like(gt_count)
        return {
            "miou": _mean(iou[present]),
            "pixel_acc": float(tp.sum() / total) if total > 0 else None,
            "mean_acc": _mean(class_acc[present]),
            "fwiou": float((freq[present] * iou[present]).sum()) if present.any() else None,
            "per_class_iou": [None if np.isnan(v) else float(v) for v in iou],
        }


def _mean(values: np.ndarray):
    return float(values.mean()) if values.size else None


def scores_report(matrix: ConfusionMatrix, class_names, **info) -> dict:
    """Scores as strict-JSON metrics for `dvc metrics show`: `info` (split, method, …) first,
    then the summary numbers, then per-class IoU keyed by class name (null = class absent)."""
    if len(class_names) != matrix.num_classes:
        raise ValueError(f"{len(class_names)} class names for {matrix.num_classes} classes")
    scores = matrix.scores()
    per_class = dict(zip(class_names, scores.pop("per_class_iou")))
    pixels = int(matrix.matrix.sum() + matrix.undecided.sum())
    return {**info, **scores, "pixels": pixels, "undecided_pixels": int(matrix.undecided.sum()),
            "per_class_iou": per_class}


# what a metric file keeps of a report: `dvc metrics show` puts every file's keys side by side
# in one table, so only the headline numbers go there; per-class IoU goes to the CSVs
HEADLINE_KEYS = ("method", "split", "subset", "crf", "noise", "miou", "miou_no_crf", "pixel_acc",
                 "predictor", "predictors_miou", "cam_miou")


def headline(report: dict) -> dict:
    """The headline entries of a `scores_report` (in `HEADLINE_KEYS` order), for a metric file."""
    return {key: report[key] for key in HEADLINE_KEYS if key in report}


def confusion_plot_rows(matrix: ConfusionMatrix, class_names, rows_per_class: int = 200
                        ) -> list[dict]:
    """The confusion matrix as `{"actual", "predicted"}` rows for DVC's `confusion_normalized`
    template, which normalises each actual class's row: every class present in the GT gets
    `rows_per_class` rows shared among its predictions in proportion to their pixel counts
    (largest remainders, so they add up exactly), so each row shows that class's rates to
    1/rows_per_class whatever its pixel count, without one row per pixel."""
    table = []
    for gt, counts in enumerate(matrix.matrix.astype(np.float64)):
        total = counts.sum()
        if total == 0:
            continue
        share = counts / total * rows_per_class
        rows = np.floor(share).astype(int)
        for pred in np.argsort(-(share - rows), kind="stable")[:rows_per_class - rows.sum()]:
            rows[pred] += 1
        for pred in np.nonzero(rows)[0]:
            table += [{"actual": class_names[gt], "predicted": class_names[pred]}] * int(rows[pred])
    return table


def per_class_csv(report: dict) -> str:
    """`class,iou` rows from a `scores_report` dict, for `dvc plots` (absent classes left empty)."""
    lines = ["class,iou"]
    for name, iou in report["per_class_iou"].items():
        lines.append(f"{name},{'' if iou is None else f'{iou:.6f}'}")
    return "\n".join(lines) + "\n"


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float | None:
    """Mean over classes with at least one positive of the average precision (area under the
    precision at each positive, ranked by score; ties ranked in input order); None if no class
    has a positive."""
    values = []
    for c in range(scores.shape[1]):
        positives = targets[:, c] > 0.5
        if not positives.any():
            continue
        order = np.argsort(-scores[:, c], kind="stable")
        hits = positives[order]
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        values.append(float(precision[hits].mean()))
    return float(np.mean(values)) if values else None
