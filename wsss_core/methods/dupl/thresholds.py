"""DuPL's progressive high threshold τ_h (`train_helper.cosine_descent` and the per-image
maximum over present classes of the training scripts)."""
from __future__ import annotations

import numpy as np
import torch


def cosine_descent(start: torch.Tensor, end: torch.Tensor, step: int, num_steps: int
                   ) -> torch.Tensor:
    """Per-class τ_h: start while step < 0, end once step ≥ num_steps, else
    start + (end − start)·(1 − cos(π·step/(num_steps − 1)))/2 (float32 like the original)."""
    if step < 0:
        return start
    if step >= num_steps:
        return end
    weight = (1 - np.cos(np.pi * (step / (num_steps - 1)))) / 2
    return start + (end - start) * float(weight)


def image_high_thresholds(class_thresholds: torch.Tensor, cls_labels: torch.Tensor
                          ) -> torch.Tensor:
    """(B,) τ_h per image = max of the thresholds of its present classes (an image without any
    class, where τ_h is irrelevant, gets the max over all classes)."""
    thresholds = class_thresholds.to(cls_labels.device).view(1, -1).expand_as(cls_labels)
    masked = thresholds.masked_fill(cls_labels <= 0, float("-inf")).max(dim=1)[0]
    return torch.where(torch.isinf(masked), thresholds.max(dim=1)[0], masked)
