"""Measuring context: how much of the synthetic data's class-specific background the generator
drew (`generator_context_statistics`, `context_summary`), and how much of it a set of pseudo or
predicted labels calls foreground (`context_statistics`).

The context maps are the prepare stage's `VOC2012/SegmentationContext/<id>.png` (0 = not
context, else the VOC id of the class whose context the pixel is), written when
`data.synthetic.context` > 0.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..config import VOC_NUM_CLASSES
from ..io import IGNORE_INDEX, read_label


# --------------------------------------------------------------------------- the generator
def context_counts(label: np.ndarray, context: np.ndarray | None) -> np.ndarray | None:
    """Per class (rows 0..20): [in the image, has context, GT pixels, context pixels]."""
    if context is None:
        return None
    counts = np.zeros((VOC_NUM_CLASSES, 4), np.int64)
    gt_pixels = np.bincount(label.reshape(-1), minlength=256)[:VOC_NUM_CLASSES]
    ctx_pixels = np.bincount(context.reshape(-1), minlength=VOC_NUM_CLASSES)[:VOC_NUM_CLASSES]
    counts[:, 0] = gt_pixels > 0
    counts[:, 1] = (gt_pixels > 0) & (ctx_pixels > 0)
    counts[:, 2] = gt_pixels
    counts[:, 3] = ctx_pixels
    counts[0] = 0
    return counts


def context_summary(per_image: list[np.ndarray], names: Mapping[int, str]) -> dict:
    """Per class of `names`: images containing it, the share of those with its context, and
    context pixels / GT pixels over the images with context."""
    total = np.stack(per_image)                     # (images, classes, 4)
    with_context = total[:, :, 1].astype(bool)
    out = {}
    for c, name in names.items():
        if c == 0:
            continue
        images = int(total[:, c, 0].sum())
        rows = with_context[:, c]
        object_px = int(total[rows, c, 2].sum())
        out[name] = {
            "images": images,
            "with_context": round(float(rows.sum() / images), 4) if images else None,
            "area_ratio": round(float(total[rows, c, 3].sum() / object_px), 4) if object_px else None,
        }
    return out


# --------------------------------------------------------------------------- labels vs context
def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def context_statistics(labels: str | Path | Mapping[str, np.ndarray], gt_dir: str | Path,
                       context_dir: str | Path, ids: list[str], num_classes: int) -> dict:
    """Where label maps (a folder of `<id>.png`, or id → array) put foreground, relative to GT
    and context.

    Foreground = a class id 1..num_classes-1 (255 counts as neither foreground nor background);
    pixels void in the GT are left out. A false positive (FP) is foreground on GT background.
    - fp_on_context_share: share of all FP pixels that lie on context; fp_share_elsewhere the
      rest (1 - the former);
    - context_fp_rate: share of context pixels labelled foreground; other_background_fp_rate:
      the same on the GT background that is not context;
    - missed_object_share: share of GT object pixels labelled background (0);
    - context_share_of_background: share of GT background pixels that are context.
    """
    counts = dict.fromkeys(("fp", "fp_context", "context", "context_fg", "other", "other_fg",
                            "object", "object_missed", "background"), 0)
    for image_id in ids:
        if isinstance(labels, Mapping):
            pred = np.asarray(labels[image_id])
        else:
            pred = read_label(Path(labels) / f"{image_id}.png", num_classes)
        gt = read_label(Path(gt_dir) / f"{image_id}.png", num_classes, expected_hw=pred.shape)
        ctx = read_label(Path(context_dir) / f"{image_id}.png", expected_hw=pred.shape) > 0
        foreground = (pred != 0) & (pred != IGNORE_INDEX)
        background = gt == 0
        objects = (gt != 0) & (gt != IGNORE_INDEX)
        on_context = background & ctx
        elsewhere = background & ~ctx
        counts["fp"] += int((foreground & background).sum())
        counts["fp_context"] += int((foreground & on_context).sum())
        counts["context"] += int(on_context.sum())
        counts["context_fg"] += int((foreground & on_context).sum())
        counts["other"] += int(elsewhere.sum())
        counts["other_fg"] += int((foreground & elsewhere).sum())
        counts["object"] += int(objects.sum())
        counts["object_missed"] += int((objects & (pred == 0)).sum())
        counts["background"] += int(background.sum())
    on_share = _share(counts["fp_context"], counts["fp"])
    return {
        "images": len(ids),
        "fp_on_context_share": on_share,
        "fp_share_elsewhere": None if on_share is None else round(1.0 - on_share, 6),
        "context_fp_rate": _share(counts["context_fg"], counts["context"]),
        "other_background_fp_rate": _share(counts["other_fg"], counts["other"]),
        "missed_object_share": _share(counts["object_missed"], counts["object"]),
        "context_share_of_background": _share(counts["context"], counts["background"]),
    }
