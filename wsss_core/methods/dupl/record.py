"""DuPL's registry record: two ViT students learning from image-level labels only."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ...data.transforms import dupl_color_pipeline, dupl_strong_view, dupl_train_crop, to_imagenet_normalized
from ...models import unwrap
from ...models.vit_seg import build_dupl_model
from ..registry import MethodRecord, register_method
from .config import DuplConfig
from .method import DuplMethod, predict
from .presets import DUPL_PRESETS


def dupl_predictors(config: dict) -> dict:
    """Both students, stored on the stride-8 grid like the DeepLab methods' logits; the
    inference stage keeps the one that scores better on val, as the authors do."""
    def student(index: int):
        def run(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
            height, width = images.shape[-2:]
            grid = (-(-height // 8), -(-width // 8))
            return predict(model, images, student=index, output_size=grid)
        return run
    return {"student1": student(1), "student2": student(2)}


def dupl_train_sample(image: np.ndarray, cls_label: np.ndarray, rng: np.random.Generator,
                      crop: int, config: dict, strong_view: bool) -> dict:
    """Random crop (with the valid box `img_box`) + colour pipeline, ImageNet-normalised, the
    multi-hot image label, and the strong RandAugment view of the same crop."""
    cropped, box = dupl_train_crop(image, rng, crop)
    cropped = dupl_color_pipeline(cropped, rng)
    sample = {"image": torch.from_numpy(to_imagenet_normalized(cropped)),
              "cls_label": torch.from_numpy(cls_label), "img_box": torch.from_numpy(box)}
    if strong_view:
        sample["strong_image"] = torch.from_numpy(
            to_imagenet_normalized(dupl_strong_view(cropped, rng)))
    return sample


def dupl_cam_scores(model: nn.Module, split, class_labels, device, method: DuplMethod) -> dict:
    """CAM mIoU of each student on val (what the authors' logs report beside the seg mIoU)."""
    matrices = method.cam_matrices(model, split, class_labels, device)
    return {"cam_miou": {name: m.scores()["miou"] for name, m in matrices.items()}}


def dupl_cam_model(model: nn.Module) -> nn.Module:
    """Student 1, whose final CAMs (not the aux ones) the cams stage stores for
    pseudo_labels.source dupl: DuPL's pseudo labels at the end of training are these CAMs
    refined with PAR and two background planes (refine.method par). Student 1, not the one
    inference picks on val: pseudo labels of the train split must not depend on val."""
    return unwrap(model).student(1)


RECORD = register_method(MethodRecord(
    name="dupl", create=lambda name, num_classes, config: DuplMethod(num_classes, config),
    build_model=build_dupl_model, learns_from="image_labels", normalize=to_imagenet_normalized,
    train_sample=dupl_train_sample, crf_preset="dupl", presets=DUPL_PRESETS,
    predictors=dupl_predictors, options=DuplConfig, val_extras=dupl_cam_scores,
    cam_model=dupl_cam_model,
    description="DuPL: two ViT students with progressive, noise-filtered cross supervision",
    cam_source="dupl"))
