"""Self-consistency of each student on the pixels its label ignores (L_reg, spec §3.5)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ....io import IGNORE_INDEX


def consistency_target(segs: torch.Tensor, sup_label: torch.Tensor, confidence: float = 0.9,
                       ignore_index: int = IGNORE_INDEX
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(confidence, mask, target) of L_reg from the detached clean logits `segs` (B, K, H, W):
    the max softmax, mask = `sup_label` is 255 and confidence > `confidence`, and the argmax of
    the logits on the mask (255 elsewhere)."""
    logits = segs.detach()
    conf = torch.softmax(logits, dim=1).max(dim=1)[0]
    mask = (sup_label == ignore_index) & (conf > confidence)
    # the original takes argmax of the logits (the same index as argmax of their softmax)
    target = torch.where(mask, logits.argmax(dim=1), torch.full_like(sup_label, ignore_index))
    return conf, mask, target


def consistency_loss(segs: torch.Tensor, segs_aug: torch.Tensor, sup_label: torch.Tensor,
                     confidence: float = 0.9, flip_back: bool = True,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Self-consistency on discarded pixels (L_reg of one student).

    `segs` clean-view logits at label resolution (B, K, H, W); `segs_aug` raw strong-view logits
    (mirrored if `flip_back`); `sup_label` the label supervising this student. Target = argmax of
    the detached clean logits on pixels where `sup_label` is 255 and the max softmax > confidence;
    loss = Σ CE(upsampled strong logits, target) / |mask| (0 when the mask is empty)."""
    if flip_back:
        segs_aug = segs_aug.flip(-1)
    segs_aug_up = F.interpolate(segs_aug, size=segs.shape[-2:], mode="bilinear",
                                align_corners=False)
    _, mask, target = consistency_target(segs, sup_label, confidence, ignore_index)
    count = mask.sum()
    per_pixel = F.cross_entropy(segs_aug_up, target, ignore_index=ignore_index, reduction="none")
    return torch.where(count > 0, per_pixel.sum() / count.clamp_min(1), per_pixel.sum() * 0.0)
