"""Pixel-adaptive refinement (PAR, ToCo/DuPL `model/PAR.py`) and the two-background CAM → label
refinement built on it (`refine_cams_with_dynamic_thres` / `refine_cams_with_bkg_v2`).

PAR works on images in [0, 1] as the original's `denormalize_img2` gives them:
`denormalize_to_unit` turns ImageNet-normalised batches into that form.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..io import IGNORE_INDEX
from .boxes import box_mask

PAR_DILATIONS = (1, 2, 4, 8, 12, 24)
# `denormalize_img2`'s literals (0-255 scale); float32(123.675) is not float32(0.485)·255 in
# float32, and the truncation to uint8 below can tell the two apart
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def denormalize_to_unit(images: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised images → [0, 1], quantised to uint8 steps (truncated) as the
    original `denormalize_img2`: x·std + mean with float32 tensors of its literals, clamped to
    [0, 255] (the original's uint8 cast of out-of-range values is undefined), / 255."""
    mean = torch.tensor(PIXEL_MEAN, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    pixels = images.float() * std + mean
    return pixels.clamp(0, 255).to(torch.uint8).to(images.dtype) / 255.0


def _neighbour_offsets(dilations: Sequence[int]) -> list[tuple[int, int, float]]:
    """(dy, dx, distance) of the 8 neighbours per dilation, in the original kernel order."""
    ring = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    return [(dy * d, dx * d, float(d) * (math.sqrt(2) if dy and dx else 1.0))
            for d in dilations for dy, dx in ring]


def _gather_neighbours(x: torch.Tensor, offsets: Sequence[tuple[int, int, float]]) -> torch.Tensor:
    """(B, C, H, W) → (B, C, N, H, W) values of the N neighbours at `offsets`, replicate padded.

    One replicate pad by the largest offset, then one strided window per offset, stacked: the
    same values as clamping every neighbour index, ~7× faster on CPU than an index gather."""
    _, _, height, width = x.shape
    pad = max(max(abs(dy), abs(dx)) for dy, dx, _ in offsets)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    return torch.stack([padded[:, :, pad + dy:pad + dy + height, pad + dx:pad + dx + width]
                        for dy, dx, _ in offsets], dim=2)


def par_refine(images: torch.Tensor, masks: torch.Tensor,
               dilations: Sequence[int] = PAR_DILATIONS, num_iter: int = 10,
               w1: float = 0.3, w2: float = 0.01) -> torch.Tensor:
    """Pixel-adaptive refinement (ToCo/DuPL `PAR`), vectorised over pixels and neighbours.

    `images` (B, 3, H, W) in [0, 1]; `masks` (B, C, h, w) scores, first resized bilinearly
    (align_corners=True) to H×W. Kernel over the 8·len(dilations) replicate-padded neighbours:
    softmax of the appearance affinity −(|I_n − I| / (σ_I + 1e-8) / w1)² averaged over RGB
    (σ_I the unbiased std of the neighbours, per channel) plus w2·softmax of the position term
    −(d / (σ_d + 1e-8) / w1)². `num_iter` times mask ← Σ_n kernel_n · mask_n. Channels are
    refined independently (the kernel depends on the image only); the output is not
    renormalised (the kernel sums to 1 + w2)."""
    masks = F.interpolate(masks, size=images.shape[-2:], mode="bilinear", align_corners=True)
    offsets = _neighbour_offsets(dilations)
    count = len(offsets)

    neighbours = _gather_neighbours(images, offsets)
    distance = (neighbours - images.unsqueeze(2)).abs()
    sigma = torch.std(neighbours, dim=2, keepdim=True)
    appearance = (-(distance / (sigma + 1e-8) / w1) ** 2).mean(dim=1, keepdim=True)
    # distances rounded to float32 as the original's float32 kernel tensor
    position = torch.tensor([float(np.float32(d)) for _, _, d in offsets], dtype=images.dtype,
                            device=images.device).view(1, 1, count, 1, 1)
    position_aff = -(position / (torch.std(position, dim=2, keepdim=True) + 1e-8) / w1) ** 2
    kernel = F.softmax(appearance, dim=2) + w2 * F.softmax(position_aff, dim=2)
    del neighbours, distance, sigma, appearance

    for _ in range(num_iter):
        masks = (_gather_neighbours(masks, offsets) * kernel).sum(2)
    return masks


# --------------------------------------------------------------------------- pseudo labels
def refine_cams_two_backgrounds(images_unit: torch.Tensor, cams: torch.Tensor,
                                cls_labels: torch.Tensor, high_thre: float | torch.Tensor,
                                low_thre: float = 0.25, img_box: torch.Tensor | None = None,
                                ignore_index: int = IGNORE_INDEX, down_scale: int = 2,
                                dilations: Sequence[int] = PAR_DILATIONS, num_iter: int = 10
                                ) -> torch.Tensor:
    """Segmentation pseudo labels from CAMs + PAR with two background planes
    (`refine_cams_with_dynamic_thres` / `refine_cams_with_bkg_v2`), all images at once.

    A constant background plane τ_h (float or (B,) tensor, per image) resp. τ_l is put in front
    of the CAMs; image and stacks are downsampled by `down_scale`; per image the background and
    present classes are softmaxed, refined by PAR, upsampled back and arg-maxed. Result (B, H, W)
    int64: the class where one beats τ_h, 0 where none beats even τ_l, 255 in between and
    outside `img_box`."""
    batch, num_fg, height, width = cams.shape
    small = (height // down_scale, width // down_scale)
    images_small = F.interpolate(images_unit, size=small, mode="bilinear", align_corners=False)
    cams_small = F.interpolate(cams, size=small, mode="bilinear", align_corners=False)

    def plane(value: float | torch.Tensor) -> torch.Tensor:
        level = torch.as_tensor(value, dtype=cams.dtype, device=cams.device).reshape(-1, 1, 1, 1)
        full = torch.ones(batch, 1, height, width, dtype=cams.dtype, device=cams.device) * level
        return F.interpolate(full, size=small, mode="bilinear", align_corners=False)

    # keep, per image, background + present classes in increasing class order (padded slots last)
    present = torch.cat([torch.ones(batch, 1, dtype=torch.bool, device=cams.device),
                         cls_labels.to(cams.device) > 0], dim=1)
    slots = int(present.sum(1).max())
    slot_class = torch.sort((~present).to(torch.int8), dim=1, stable=True)[1][:, :slots]
    slot_valid = torch.gather(present, 1, slot_class)

    def scores(background: torch.Tensor) -> torch.Tensor:
        stack = torch.cat([background, cams_small], dim=1)
        picked = torch.gather(stack, 1, slot_class[:, :, None, None].expand(-1, -1, *small))
        picked = picked.masked_fill(~slot_valid[:, :, None, None], float("-inf"))
        return picked.softmax(dim=1)  # absent slots get exactly 0 and stay 0 under PAR

    stacked = torch.cat([scores(plane(high_thre)), scores(plane(low_thre))], dim=1)
    refined = par_refine(images_small, stacked, dilations=dilations, num_iter=num_iter)
    refined = F.interpolate(refined, size=(height, width), mode="bilinear", align_corners=False)
    label_high = torch.gather(slot_class, 1, refined[:, :slots].argmax(1).flatten(1)).view(
        batch, height, width)
    label_low = torch.gather(slot_class, 1, refined[:, slots:].argmax(1).flatten(1)).view(
        batch, height, width)

    label = torch.where(label_high == 0, torch.full_like(label_high, ignore_index), label_high)
    label = torch.where((label_high == 0) & (label_low == 0), torch.zeros_like(label), label)
    inside = box_mask(img_box, batch, (height, width), cams.device)
    return torch.where(inside, label, torch.full_like(label, ignore_index))
