"""Crop boxes on label and token grids: the valid (non-padded) region of a training crop as
`[h0, h1, w0, w1]` pixel bounds, as a mask and mapped onto a coarser grid."""
from __future__ import annotations

from collections.abc import Sequence

import torch


def box_mask(img_box: torch.Tensor | None, batch: int, size: Sequence[int],
             device: torch.device) -> torch.Tensor:
    """(B, h, w) bool: True inside each `[h0, h1, w0, w1]` box (Python-slice semantics, so
    bounds beyond the map are clipped). No box → everything valid."""
    height, width = int(size[0]), int(size[1])
    if img_box is None:
        return torch.ones(batch, height, width, dtype=torch.bool, device=device)
    box = torch.as_tensor(img_box, device=device).long().view(batch, 4, 1, 1)
    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    return ((rows >= box[:, 0]) & (rows < box[:, 1]) & (cols >= box[:, 2]) & (cols < box[:, 3]))


def scale_box(img_box: torch.Tensor, image_size: Sequence[int], grid_size: Sequence[int]
              ) -> torch.Tensor:
    """A pixel box on a coarser grid: start floored, end ceiled (tokens touching the valid
    region are kept)."""
    box = torch.as_tensor(img_box).double()
    fy, fx = grid_size[0] / image_size[0], grid_size[1] / image_size[1]
    return torch.stack([torch.floor(box[:, 0] * fy), torch.ceil(box[:, 1] * fy),
                        torch.floor(box[:, 2] * fx), torch.ceil(box[:, 3] * fx)], 1).long()
