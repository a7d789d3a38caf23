"""CAM quality on a split with GT: the usual CAM figure of WSSS papers (CAM mIoU with the
image-level GT labels, each pixel the arg-max of its classes' normalised multi-scale + flip CAMs
against a constant background threshold), for one network or several (DuPL's two students)."""
from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn

from ..data.classes import multi_hot
from ..data.datasets import Split
from ..io import read_image, read_label
from ..metrics import ConfusionMatrix
from .cams import cam_to_val_label, multi_scale_cams


@torch.no_grad()
def cam_confusions(nets: Mapping[str, nn.Module], normalize: Callable[[np.ndarray], np.ndarray],
                   split: Split, class_labels: Mapping[str, list[int]], num_classes: int,
                   device: torch.device, scales, bkg_threshold: float,
                   visit: Callable[[torch.Tensor, torch.Tensor], None] | None = None
                   ) -> dict[str, ConfusionMatrix]:
    """One confusion matrix per network of `nets` (each with `.cams()`, in eval mode) over the
    images of `split`: the multi-scale (`scales`) + flip CAMs of each image's GT classes, the
    `bkg_threshold` rule, at full image resolution. `visit(image, labels)`, when given, sees each
    normalised image (1, 3, H, W) and its multi-hot labels (1, K−1) on `device` (e.g. to score a
    classifier on the same pass)."""
    matrices = {name: ConfusionMatrix(num_classes) for name in nets}
    for image_id in split.ids:
        image = torch.from_numpy(normalize(read_image(split.image_path(image_id))))[None].to(device)
        labels = torch.from_numpy(multi_hot(class_labels[image_id], num_classes))[None].to(device)
        gt = read_label(split.gt_path(image_id), num_classes)
        for name, net in nets.items():
            cams, _ = multi_scale_cams(net, image, scales)
            matrices[name].update(cam_to_val_label(cams, labels, bkg_threshold)[0].cpu().numpy(), gt)
        if visit is not None:
            visit(image, labels)
    return matrices
