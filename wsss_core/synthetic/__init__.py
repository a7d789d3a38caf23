"""The embedded synthetic segmentation dataset and the pseudo-label noise model.

`shapes` says what each class looks like, `context_styles` what each class's co-occurring
background looks like, `render` draws images and writes the dataset in VOC layout
(`generate_dataset`), `context` measures context in the data and in labels, `noise` turns GT
maps into CAM-like pseudo labels (`write_noisy_pseudo_labels`). Everything is seeded: the same config gives byte-identical files.
"""
from .noise import corrupt_label, noisy_pseudo_label, write_noisy_pseudo_labels
from .render import (
    CONTEXT_FOLDER,
    SPLIT_LISTS,
    SPLIT_PREFIX,
    TEST_LIST,
    TRAIN_LIST,
    VAL_LIST,
    add_void_border,
    generate_dataset,
    render_sample,
    render_sample_with_context,
    split_ids,
)
from .shapes import CLASS_STYLES, SIMILAR_CLASSES, ClassStyle

__all__ = [
    "CLASS_STYLES",
    "CONTEXT_FOLDER",
    "SIMILAR_CLASSES",
    "SPLIT_LISTS",
    "SPLIT_PREFIX",
    "TEST_LIST",
    "TRAIN_LIST",
    "VAL_LIST",
    "ClassStyle",
    "add_void_border",
    "corrupt_label",
    "generate_dataset",
    "noisy_pseudo_label",
    "render_sample",
    "render_sample_with_context",
    "split_ids",
    "write_noisy_pseudo_labels",
]
