"""The student discrepancy loss that keeps DuPL's two students apart (spec §1.4)."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ....errors import ConfigError


def discrepancy_loss(fmap_1: torch.Tensor, fmap_2: torch.Tensor,
                     form: Literal["code", "paper"] = "code") -> torch.Tensor:
    """Student discrepancy on the final token maps, symmetrised with stop-gradients.

    code (default, released): cosine per (image, channel) over the spatial positions (eps 1e-6),
        [1 + mean cos(sg F1, F2)] + [1 + mean cos(sg F2, F1)].
    paper (Eq. 2–3): −log(1 − cos) per image of the flattened maps, averaged over images, both
        directions summed; 1 − cos is clamped at 1e-6 (identical students would give log 0)."""
    if form not in ("code", "paper"):
        raise ConfigError(f"params.yaml: dupl.discrepancy: expected 'code' or 'paper', got {form!r}")
    batch, dim = fmap_1.shape[:2]
    if form == "code":
        flat_1, flat_2 = fmap_1.reshape(batch, dim, -1), fmap_2.reshape(batch, dim, -1)
        return ((1 + F.cosine_similarity(flat_1.detach(), flat_2, dim=-1, eps=1e-6).mean()) +
                (1 + F.cosine_similarity(flat_2.detach(), flat_1, dim=-1, eps=1e-6).mean()))
    flat_1, flat_2 = fmap_1.reshape(batch, -1), fmap_2.reshape(batch, -1)

    def one_way(fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        cos = F.cosine_similarity(fixed.detach(), moving, dim=-1, eps=1e-6)
        return -torch.log((1 - cos).clamp_min(1e-6)).mean()

    return one_way(flat_1, flat_2) + one_way(flat_2, flat_1)
