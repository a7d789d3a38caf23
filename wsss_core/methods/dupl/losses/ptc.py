"""ToCo's patch-token contrast (PTC) on the final tokens, supervised by aux-CAM token labels."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ....cam import cam_to_train_label, scale_box
from ....io import IGNORE_INDEX


def ptc_affinity_target(token_labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
                        ) -> torch.Tensor:
    """(B, N, N) int64 pairwise target of the token labels (row-major token index): 1 same
    label, 0 different, 255 if either token is ignored and on the diagonal."""
    flat = token_labels.flatten(1)
    target = (flat[:, :, None] == flat[:, None, :]).long()
    ignored = flat == ignore_index
    target = target.masked_fill(ignored[:, :, None] | ignored[:, None, :], ignore_index)
    eye = torch.eye(flat.shape[1], dtype=torch.bool, device=flat.device)
    return target.masked_fill(eye, ignore_index)


def ptc_loss(fmap: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """ToCo's masked patch-token contrast: with s = |cos| between tokens (L2 eps 1e-8),
    ½(1 − Σ_pos s / (N_pos + 1)) + ½ Σ_neg s / (N_neg + 1), summed over the whole batch."""
    tokens = F.normalize(fmap.flatten(2), p=2, dim=1, eps=1e-8)
    similarity = torch.matmul(tokens.transpose(1, 2), tokens).abs()
    positive, negative = target == 1, target == 0
    return (0.5 * (1 - (positive * similarity).sum() / (positive.sum() + 1)) +
            0.5 * (negative * similarity).sum() / (negative.sum() + 1))


def ptc_token_labels(cams_aux: torch.Tensor, cls_labels: torch.Tensor, grid: Sequence[int],
                     img_box: torch.Tensor | None, high_thre: float | torch.Tensor,
                     low_thre: float = 0.25, bkg_thre: float = 0.5, scale_img_box: bool = False,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Token-grid labels for PTC: aux CAMs resized bilinearly to `grid`, then the training
    label rules. By default `img_box` (image pixels) is applied unscaled to the token grid, the
    ToCo/DuPL quirk; `scale_img_box=True` maps it onto the grid instead (deviation)."""
    resized = F.interpolate(cams_aux, size=tuple(grid), mode="bilinear", align_corners=False)
    if img_box is not None and scale_img_box:
        img_box = scale_box(img_box, cams_aux.shape[-2:], grid)
    return cam_to_train_label(resized, cls_labels, img_box, high_thre, low_thre, bkg_thre,
                              ignore_index)
