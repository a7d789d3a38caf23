"""DuPL's cross segmentation loss: ToCo's background/foreground-balanced cross-entropy."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ....io import IGNORE_INDEX


def balanced_seg_loss(logits: torch.Tensor, labels: torch.Tensor,
                      ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """DuPL's `get_seg_loss`: ½·(Σ CE over bg pixels / (n_bg + 1e-6) + Σ CE over fg pixels /
    (n_fg + 1e-6)) over the whole batch; an empty group contributes 0 (no NaN)."""
    per_pixel = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")
    background = labels == 0
    foreground = (labels != 0) & (labels != ignore_index)
    loss_bg = (per_pixel * background).sum() / (background.sum() + 1e-6)
    loss_fg = (per_pixel * foreground).sum() / (foreground.sum() + 1e-6)
    return (loss_bg + loss_fg) * 0.5
