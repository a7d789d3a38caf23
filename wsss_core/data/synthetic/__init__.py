"""The embedded synthetic segmentation dataset and the pseudo-label noise model.

`shapes` says what each class looks like, `render` draws images and writes the dataset in VOC
layout (`generate_dataset`), `noise` turns GT maps into CAM-like pseudo labels
(`write_noisy_pseudo_labels`). Everything is seeded: the same config gives byte-identical files.
"""
from .noise import NUM_VOC_CLASSES, corrupt_label, noisy_pseudo_label, write_noisy_pseudo_labels
from .render import (
    SPLIT_PREFIX,
    TRAIN_LIST,
    VAL_LIST,
    add_void_border,
    generate_dataset,
    render_sample,
    split_ids,
)
from .shapes import CLASS_STYLES, SIMILAR_CLASSES, ClassStyle

__all__ = [
    "CLASS_STYLES",
    "NUM_VOC_CLASSES",
    "SIMILAR_CLASSES",
    "SPLIT_PREFIX",
    "TRAIN_LIST",
    "VAL_LIST",
    "ClassStyle",
    "add_void_border",
    "corrupt_label",
    "generate_dataset",
    "noisy_pseudo_label",
    "render_sample",
    "split_ids",
    "write_noisy_pseudo_labels",
]
