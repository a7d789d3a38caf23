"""Class names and image-level class-label files.

Image-level labels are stored as `cls_labels.json`: `{"<image id>": [class ids], ...}` with the
foreground ids (1..C-1) present in the image, background excluded. The DuPL/ToCo file
`cls_labels_onehot.npy` (a pickled dict id → (C-1,) multi-hot) is read too, so users of those
repositories can point `class_labels` at it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from ..io import IGNORE_INDEX, read_json, write_json

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)

# 0 = background, then the 80 COCO thing classes in sorted category-id order (ids 1..90 with gaps).
COCO_CLASSES = (
    "background", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck",
    "boat", "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

DATASET_CLASSES = {"voc12": VOC_CLASSES, "synthetic": VOC_CLASSES, "coco14": COCO_CLASSES}


def classes_in_label(label: np.ndarray, num_classes: int) -> list[int]:
    """Foreground class ids present in a label map (ignore and background excluded)."""
    values = np.unique(label)
    return [int(v) for v in values if 0 < v < num_classes and v != IGNORE_INDEX]


def write_class_labels(path: str | Path, labels: dict[str, list[int]]) -> None:
    write_json(path, {key: sorted(int(c) for c in value) for key, value in labels.items()})


def read_class_labels(path: str | Path, num_classes: int) -> dict[str, list[int]]:
    """Image id → foreground class ids, from `cls_labels.json` or DuPL's `cls_labels_onehot.npy`."""
    path = Path(path)
    if path.suffix == ".npy":
        if not path.is_file():
            raise DataError(path, "file not found")
        try:
            raw = np.load(path, allow_pickle=True).item()
        except (ValueError, OSError, AttributeError) as exc:
            raise DataError(path, f"not a DuPL/ToCo one-hot label dict ({exc})") from None
        labels = {}
        for key, onehot in raw.items():
            onehot = np.asarray(onehot).reshape(-1)
            if onehot.size != num_classes - 1:
                raise DataError(path, f"entry {key!r} has {onehot.size} classes, expected {num_classes - 1}")
            labels[str(key)] = [int(i) + 1 for i in np.flatnonzero(onehot)]
        return labels
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise DataError(path, "expected a JSON object mapping image id to a list of class ids")
    labels = {}
    for key, value in raw.items():
        if not isinstance(value, list) or not all(
            isinstance(c, int) and 0 < c < num_classes for c in value
        ):
            raise DataError(path, f"entry {key!r} must be a list of class ids in 1..{num_classes - 1}")
        labels[key] = sorted(value)
    return labels


def multi_hot(class_ids: list[int], num_classes: int) -> np.ndarray:
    """(C-1,) float32 multi-hot vector over foreground classes (DuPL's classifier target)."""
    vec = np.zeros(num_classes - 1, dtype=np.float32)
    for c in class_ids:
        vec[c - 1] = 1.0
    return vec
