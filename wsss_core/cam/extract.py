"""A split's CAMs from a trained classifier, stored with `store.save_cams` (stage cams), and the
image-level labels they are restricted to."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..cli import progress
from ..data.classes import read_class_labels
from ..data.datasets import Split
from ..errors import DataError
from ..io import read_image
from .cams import multi_scale_cams
from .store import CAM_SUFFIX, save_cams


def split_class_labels(path: Path, split: Split, num_classes: int) -> dict[str, list[int]]:
    """Image id → present foreground classes for every id of `split`, from the image-level
    label file; an image without an entry is a DataError naming the file."""
    labels = read_class_labels(path, num_classes)
    missing = [i for i in split.ids if i not in labels]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(path, f"no image-level label for id {missing[0]}{more} of "
                              f"{split.list_file}")
    return {i: labels[i] for i in split.ids}


@torch.no_grad()
def write_split_cams(cam_model: nn.Module, normalize: Callable[[np.ndarray], np.ndarray],
                     split: Split, class_labels: dict[str, list[int]], num_classes: int,
                     scales: list[float], flip: bool, stride: int, out_dir: Path,
                     device: torch.device, where: Path) -> int:
    """`<id>.npz` in `out_dir` for every image of `split`: the multi-scale (+ flip) CAMs of
    `cam_model` (a module with `.cams()`) of the image's present classes. A classifier with
    another number of classes than the dataset's is a DataError naming `where`."""
    count = 0
    for image_id in progress(split.ids, "cams"):
        image = torch.from_numpy(normalize(read_image(split.image_path(image_id))))[None].to(device)
        if count == 0:   # the classifier's class count, once: below only present maps are made
            foreground = cam_model.cams(image)[0].shape[1]
            if foreground != num_classes - 1:
                raise DataError(where, f"the classifier has {foreground} foreground classes, the "
                                       f"dataset {num_classes - 1}")
        keys = class_labels[image_id]
        if keys:
            cams, _ = multi_scale_cams(cam_model, image, scales, flip,
                                       classes=[k - 1 for k in keys], aux=False)
            present = cams[0].float().cpu()
        else:
            present = torch.zeros((0, *image.shape[-2:]))
        save_cams(out_dir / f"{image_id}{CAM_SUFFIX}", present, keys, stride)
        count += 1
    return count
