"""The training dataset over a `Split` (synthetic, VOC and COCO alike), for any method.

What a sample is made of comes from the method's registry record (any object with its
`uses_pseudo_labels` and `train_sample`): its target (the pseudo label
of each image, or its image-level multi-hot label) and its `train_sample` augmentation
(DeepLab/CDL: scale-crop-flip + BGR mean subtraction; DuPL: crop with `img_box` + ImageNet
normalisation + strong view). Each sample's randomness comes from a generator seeded by (seed,
epoch, index), so augmentation is reproducible and independent of DataLoader worker scheduling.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
from torch.utils.data import Dataset

from ..io import read_image, read_label
from .classes import multi_hot, read_class_labels
from .datasets import Split


class SampleRecipe(Protocol):
    """What the training set needs of a method (its `wsss_core.methods.MethodRecord` has it)."""

    uses_pseudo_labels: bool
    train_sample: Callable[..., dict]


class TrainSet(Dataset):
    """`inputs` is the pseudo-label folder (`<id>.png`) for a method learning from pseudo labels,
    or the image-level label file (cls_labels.json) for one learning from image labels."""

    def __init__(self, split: Split, record: SampleRecipe, num_classes: int, config: dict,
                 seed: int, inputs: str | Path, *, strong_view: bool = False):
        self.ids = split.ids
        self.split = split
        self.record = record
        self.num_classes = num_classes
        self.config = config
        self.crop = config["crop"]
        self.seed = seed
        self.epoch = 0
        self.strong_view = strong_view
        self.label_dir = None
        self.class_labels = None
        if record.uses_pseudo_labels:
            self.label_dir = Path(inputs)
        else:
            labels = read_class_labels(inputs, num_classes)
            self.class_labels = {i: multi_hot(labels[i], num_classes) for i in self.ids}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        image_id = self.ids[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image = read_image(self.split.image_path(image_id))
        if self.label_dir is not None:
            target = read_label(self.label_dir / f"{image_id}.png", self.num_classes,
                                expected_hw=image.shape[:2])
        else:
            target = self.class_labels[image_id]
        sample = self.record.train_sample(image, target, rng, self.crop, self.config,
                                          self.strong_view)
        sample["index"] = index
        return sample
