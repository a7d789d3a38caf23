"""Class activation maps of a ViT classifier and the label rules that turn them into pixel labels
(DuPL `utils/cam_helper.py`: `multi_scale_cam2_siamese`, `cam_to_label[_dynamic_cls]`).

`multi_scale_cams` needs only a module with `cams(images) -> (raw_cam, raw_aux_cam)` (raw
classifier-weight projections of the tokens, no ReLU), e.g. `models.vit_seg.Student`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..io import IGNORE_INDEX
from .boxes import box_mask


@torch.no_grad()
def multi_scale_cams(student: nn.Module, images: torch.Tensor,
                     scales: Sequence[float] = (1.0, 0.5, 1.5), flip: bool = True, *,
                     classes: Sequence[int] | None = None, aux: bool = True
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(cams, cams_aux), each (B, K-1, H, W) in [0, 1], of one student (no gradient).

    Per scale (1.0 always first, then every other scale in order) the image and its mirror are
    forwarded; raw CAMs are upsampled bilinearly to H×W, the two flips merged by max, ReLU'd;
    the scales are summed; every (image, class) map is min-max normalised with +1e-5. Without
    `flip` only the image itself is forwarded (no mirror to merge).

    `classes` (foreground indices, 0-based) keeps only those maps, in that order, and `aux=False`
    skips the aux maps (None is returned for them): every step after the forward is per map, so
    the kept maps equal the full call's, and extracting an image's ~3.5 present classes of COCO's
    80 upsamples 3.5 maps instead of 160."""
    batch, _, height, width = images.shape
    cam_sum = aux_sum = None
    for scale in [1.0] + [s for s in scales if s != 1.0]:
        x = images if scale == 1.0 else F.interpolate(
            images, size=(int(scale * height), int(scale * width)), mode="bilinear",
            align_corners=False)
        raw_maps = student.cams(torch.cat([x, x.flip(-1)], dim=0) if flip else x)
        if classes is not None:
            raw_maps = tuple(raw[:, list(classes)] for raw in raw_maps)
        merged = []
        for raw in raw_maps if aux else raw_maps[:1]:
            up = F.interpolate(raw, size=(height, width), mode="bilinear", align_corners=False)
            merged.append(F.relu(torch.max(up[:batch], up[batch:].flip(-1)) if flip else up))
        cam_sum = merged[0] if cam_sum is None else cam_sum + merged[0]
        if aux:
            aux_sum = merged[1] if aux_sum is None else aux_sum + merged[1]

    def normalise(cam: torch.Tensor) -> torch.Tensor:
        cam = cam + F.adaptive_max_pool2d(-cam, (1, 1))
        return cam / (F.adaptive_max_pool2d(cam, (1, 1)) + 1e-5)

    return normalise(cam_sum), normalise(aux_sum) if aux else None


def _threshold(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A threshold as a (B, 1, 1) or scalar tensor in the CAM's dtype (float32 comparisons, as
    the original compares float32 tensors with Python floats)."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return t.view(-1, 1, 1) if t.ndim == 1 else t


def cam_to_train_label(cam: torch.Tensor, cls_labels: torch.Tensor,
                       img_box: torch.Tensor | None, high_thre: float | torch.Tensor,
                       low_thre: float = 0.25, bkg_thre: float = 0.5,
                       ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Training-mode CAM labels (`cam_to_label[_dynamic_cls]` with ignore_mid): with v the max of
    `cls_labels * cam` over classes and c* its argmax, label = c*+1 if v > τ_h, 255 if
    τ_l < v ≤ τ_h, 0 if v ≤ τ_l; 255 outside `img_box`. `high_thre` is a float or a (B,) tensor
    (one τ_h per image). The `bkg_thre` step comes first as in the original, so it only matters
    if τ_h < bkg_thre."""
    valid_cam = cls_labels[:, :, None, None].to(cam.dtype) * cam
    value, index = valid_cam.max(dim=1)
    label = index + 1
    label = torch.where(value <= _threshold(bkg_thre, value), torch.zeros_like(label), label)
    label = torch.where(value <= _threshold(high_thre, value),
                        torch.full_like(label, ignore_index), label)
    label = torch.where(value <= _threshold(low_thre, value), torch.zeros_like(label), label)
    inside = box_mask(img_box, cam.shape[0], cam.shape[-2:], cam.device)
    return torch.where(inside, label, torch.full_like(label, ignore_index))


def cam_to_val_label(cam: torch.Tensor, cls_labels: torch.Tensor, bkg_thre: float = 0.5
                     ) -> torch.Tensor:
    """Validation CAM labels: c*+1 where the max of `cls_labels * cam` is > bkg_thre, else 0."""
    value, index = (cls_labels[:, :, None, None].to(cam.dtype) * cam).max(dim=1)
    return torch.where(value <= _threshold(bkg_thre, value), torch.zeros_like(index), index + 1)
