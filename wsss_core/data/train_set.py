"""The training dataset over a `Split` (synthetic, VOC and COCO alike).

`TrainSet` yields augmented crops for one method family:
- "deeplab" (baseline, CDL): BGR mean-subtracted crop + pseudo label (+ CDL-e's strong view);
- "dupl": ImageNet-normalised crop + image-level multi-hot label + `img_box` + strong view.
Each sample's randomness comes from a generator seeded by (seed, epoch, index), so augmentation
is reproducible and independent of DataLoader worker scheduling.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..io import read_image, read_label
from .classes import multi_hot, read_class_labels
from .datasets import Split
from .transforms import (cdl_strong_view, deeplab_train_crop, dupl_color_pipeline, dupl_strong_view,
                         dupl_train_crop, to_bgr_mean_subtracted, to_imagenet_normalized)

FAMILIES = ("deeplab", "dupl")


class TrainSet(Dataset):
    def __init__(self, split: Split, family: str, num_classes: int, crop: int, seed: int = 0, *,
                 label_dir: str | Path | None = None, class_labels: str | Path | None = None,
                 scales: list[float] | None = None, strong_view: bool = False):
        if family not in FAMILIES:
            raise ValueError(f"unknown family {family!r}")
        self.ids = split.ids
        self.split = split
        self.family = family
        self.num_classes = num_classes
        self.crop = crop
        self.seed = seed
        self.epoch = 0
        self.scales = scales or [0.5, 0.75, 1.0, 1.25, 1.5]
        self.strong_view = strong_view
        self.label_dir = Path(label_dir) if label_dir is not None else None
        if family == "deeplab" and self.label_dir is None:
            raise ValueError("the deeplab family trains on pseudo labels: give label_dir")
        self.class_labels = None
        if family == "dupl":
            if class_labels is None:
                raise ValueError("the dupl family trains on image-level labels: give class_labels")
            labels = read_class_labels(class_labels, num_classes)
            self.class_labels = {i: multi_hot(labels[i], num_classes) for i in self.ids}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        image_id = self.ids[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image = read_image(self.split.image_path(image_id))
        if self.family == "deeplab":
            label = read_label(self.label_dir / f"{image_id}.png", self.num_classes,
                               expected_hw=image.shape[:2])
            crop, crop_label = deeplab_train_crop(image, label, rng, self.crop, self.scales)
            sample = {"image": torch.from_numpy(to_bgr_mean_subtracted(crop)),
                      "label": torch.from_numpy(crop_label.astype(np.int64))}
            if self.strong_view:
                strong = cdl_strong_view(crop.astype(np.uint8), rng)
                sample["strong_image"] = torch.from_numpy(to_bgr_mean_subtracted(strong))
        else:
            crop, box = dupl_train_crop(image, rng, self.crop)
            crop = dupl_color_pipeline(crop, rng)
            sample = {"image": torch.from_numpy(to_imagenet_normalized(crop)),
                      "cls_label": torch.from_numpy(self.class_labels[image_id]),
                      "img_box": torch.from_numpy(box)}
            if self.strong_view:
                sample["strong_image"] = torch.from_numpy(
                    to_imagenet_normalized(dupl_strong_view(crop, rng)))
        sample["index"] = index
        return sample

