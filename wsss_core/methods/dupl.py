"""DuPL training logic (spec dupl.md §1.3–§3): CAMs, PAR, pseudo labels, progressive threshold,
GMM noise filter and the losses, plus test-time prediction. Follows the released code
(Wu0409/DuPL `train_final_voc.py` / `train_final_coco.py`); paper variants sit behind flags.

Interface used by the shared training loop (`model` is a `models.vit_seg.DuplNet`, possibly
wrapped in DDP; `iteration` is 1-based like every method, the original's `n_iter` is
`iteration - 1`):

    method = DuplMethod(DuplConfig.voc())          # or DuplConfig.coco(), .rescaled(...)
    loss, terms = method.compute_loss(model, batch, iteration)
    groups = method.param_groups(model, base_lr=6e-5, weight_decay=0.01)   # AdamW groups
    factor = schedules.warmup_poly_factor(iteration, max_iter)              # lr factor

`batch` is a dict:
    images          (B, 3, H, W) float, ImageNet mean/std normalised crops
    cls_labels      (B, K-1) multi-hot image labels (no background entry)
    img_box         (B, 4) int [h0, h1, w0, w1] valid (non-padded) crop region; optional
    strong_images   (B, 3, H, W) normalised strong photometric view, pixel-aligned with
                    `images` (not flipped: the flip of the original is done here); needed once
                    the consistency loss is on (iteration - 1 > gmm_iters)

Test time: `predict(model, images, scales, flip, student)` (seg logits, flip-summed, max over
scales); `DuplMethod.cam_matrices` scores each student's CAMs by the `bkg_thre` rule.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, WsssError
from ..io import IGNORE_INDEX
from ..metrics import ConfusionMatrix
from ..models import unwrap

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAR_DILATIONS = (1, 2, 4, 8, 12, 24)
# per-class end of the VOC τ_h descent: 0.70 for aeroplane, bicycle, bird, boat, chair, train
VOC_THRE_END = (0.70, 0.70, 0.70, 0.70, 0.55, 0.55, 0.55, 0.55, 0.70, 0.55,
                0.55, 0.55, 0.55, 0.55, 0.55, 0.55, 0.55, 0.55, 0.70, 0.55)


# --------------------------------------------------------------------------- images
def denormalize_to_unit(images: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised images → [0, 1], quantised to uint8 steps (truncated) as the
    original `denormalize_img2` (PAR sees these)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device) * 255
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device) * 255
    pixels = images * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)
    return pixels.clamp(0, 255).to(torch.uint8).to(images.dtype) / 255.0


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


# --------------------------------------------------------------------------- CAMs
@torch.no_grad()
def multi_scale_cams(student: nn.Module, images: torch.Tensor,
                     scales: Sequence[float] = (1.0, 0.5, 1.5)) -> tuple[torch.Tensor, torch.Tensor]:
    """(cams, cams_aux), each (B, K-1, H, W) in [0, 1], of one student (no gradient).

    Per scale (1.0 always first, then every other scale in order) the image and its mirror are
    forwarded; raw CAMs are upsampled bilinearly to H×W, the two flips merged by max, ReLU'd;
    the scales are summed; every (image, class) map is min-max normalised with +1e-5."""
    batch, _, height, width = images.shape
    cam_sum = aux_sum = None
    for scale in [1.0] + [s for s in scales if s != 1.0]:
        x = images if scale == 1.0 else F.interpolate(
            images, size=(int(scale * height), int(scale * width)), mode="bilinear",
            align_corners=False)
        raw_cam, raw_aux = student.cams(torch.cat([x, x.flip(-1)], dim=0))
        merged = []
        for raw in (raw_cam, raw_aux):
            up = F.interpolate(raw, size=(height, width), mode="bilinear", align_corners=False)
            merged.append(F.relu(torch.max(up[:batch], up[batch:].flip(-1))))
        cam_sum = merged[0] if cam_sum is None else cam_sum + merged[0]
        aux_sum = merged[1] if aux_sum is None else aux_sum + merged[1]

    def normalise(cam: torch.Tensor) -> torch.Tensor:
        cam = cam + F.adaptive_max_pool2d(-cam, (1, 1))
        return cam / (F.adaptive_max_pool2d(cam, (1, 1)) + 1e-5)

    return normalise(cam_sum), normalise(aux_sum)


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


# --------------------------------------------------------------------------- PAR
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


# --------------------------------------------------------------------------- thresholds
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


# --------------------------------------------------------------------------- losses
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


# --------------------------------------------------------------------------- GMM noise filter
# The first three uniforms of numpy's RandomState(0): scikit-learn's k-means++ (random_state=0)
# draws the first centre with `choice(n, p=uniform)` and then 2 + int(log 2) = 2 local trials.
_KMEANS_UNIFORMS = tuple(np.random.RandomState(0).random_sample(3).tolist())
_EPS32 = float(np.finfo(np.float32).eps)


class TwoGaussians(NamedTuple):
    """Fitted 1-D two-component mixtures, one per row: (R, 2) each."""

    weights: torch.Tensor
    means: torch.Tensor
    variances: torch.Tensor

    def log_posterior(self, x: torch.Tensor) -> torch.Tensor:
        """(R, M) samples → (R, M, 2) log responsibilities."""
        var = self.variances[:, None, :]
        log_prob = (-0.5 * (math.log(2 * math.pi) + torch.log(var) +
                            (x[:, :, None] - self.means[:, None, :]) ** 2 / var) +
                    torch.log(self.weights[:, None, :]))
        return log_prob - torch.logsumexp(log_prob, dim=2, keepdim=True)


def _kmeans_two_labels(x: torch.Tensor, valid: torch.Tensor, counts: torch.Tensor,
                       max_iter: int = 300, tol: float = 1e-4) -> torch.Tensor:
    """Batched 1-D k-means (k=2) like scikit-learn's KMeans(n_init=1, random_state=0): k-means++
    seeding replayed with the same random draws, then Lloyd until the labels repeat or the
    centre shift² ≤ tol·var. Returns (R, N) labels in {0, 1} (padding: 0)."""
    rows = torch.arange(x.shape[0], device=x.device)
    n = counts.to(x.dtype)
    # first centre: numpy `choice` with uniform p → searchsorted(cdf, u, side="right")
    p = torch.full_like(x, float(np.float32(1.0)) ).div(n[:, None].float()).float().double()
    p = (torch.ones_like(x, dtype=torch.float32) / n[:, None].float()).double() * valid
    cdf = torch.cumsum(p, dim=1)
    cdf = cdf / cdf[rows, counts - 1][:, None]
    cdf = cdf.masked_fill(~valid, 2.0)
    u0 = torch.full((x.shape[0], 1), _KMEANS_UNIFORMS[0], dtype=x.dtype, device=x.device)
    first = torch.searchsorted(cdf.contiguous(), u0, right=True).squeeze(1).clamp_max(counts - 1)
    centre0 = x[rows, first]
    closest = ((x - centre0[:, None]) ** 2) * valid
    potential = closest.sum(1)
    draws = torch.tensor(_KMEANS_UNIFORMS[1:], dtype=x.dtype, device=x.device)
    targets = draws[None, :] * potential[:, None]
    candidates = torch.searchsorted(torch.cumsum(closest, 1).contiguous(), targets.contiguous())
    candidates = torch.minimum(candidates, (counts - 1)[:, None])
    cand_values = torch.gather(x, 1, candidates)
    cand_dist = torch.minimum(closest[:, None, :], (x[:, None, :] - cand_values[:, :, None]) ** 2)
    cand_pot = (cand_dist * valid[:, None, :]).sum(2)
    best = cand_pot.argmin(1)
    centres = torch.stack([centre0, cand_values[rows, best]], dim=1)

    mean = (x * valid).sum(1) / n
    threshold = (((x - mean[:, None]) ** 2) * valid).sum(1) / n * tol
    labels_old = torch.full_like(x, -1, dtype=torch.long)
    labels = torch.zeros_like(labels_old)
    active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    strict = torch.zeros_like(active)
    for _ in range(max_iter):
        new_labels = ((x - centres[:, 1:2]) ** 2 < (x - centres[:, 0:1]) ** 2).long()
        new_labels = new_labels * valid
        one_hot = F.one_hot(new_labels, 2).to(x.dtype) * valid[:, :, None]
        sizes = one_hot.sum(1)
        sums = (one_hot * x[:, :, None]).sum(1)
        new_centres = torch.where(sizes > 0, sums / sizes.clamp_min(1), centres)
        shift = ((new_centres - centres) ** 2).sum(1)
        same = (new_labels == labels_old).all(1)
        centres = torch.where(active[:, None], new_centres, centres)
        labels = torch.where(active[:, None], new_labels, labels)
        strict = strict | (active & same)
        finished = same | (shift <= threshold)
        labels_old = new_labels
        active = active & ~finished
        if not bool(active.any()):
            break
    # not strictly converged: labels of the final centres (scikit-learn reruns the E-step)
    final = ((x - centres[:, 1:2]) ** 2 < (x - centres[:, 0:1]) ** 2).long() * valid
    return torch.where(strict[:, None], labels, final)


def fit_two_gaussians(x: torch.Tensor, valid: torch.Tensor, max_iter: int = 10,
                      tol: float = 1e-2, reg_covar: float = 5e-4) -> TwoGaussians:
    """EM for a 1-D two-component Gaussian mixture on every row of `x` (R, N) at once (padding
    marked False in `valid`), mirroring scikit-learn's `GaussianMixture(n_components=2,
    max_iter, tol, reg_covar, random_state=0)`: k-means initialisation, stop a row once its mean
    log-likelihood changes by < tol. Computed in float64."""
    x = x.double() * valid
    counts = valid.sum(1)
    n = counts.double()
    resp = F.one_hot(_kmeans_two_labels(x, valid, counts), 2).double() * valid[:, :, None]

    def m_step(resp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        nk = resp.sum(1) + 10 * _EPS32
        means = (resp * x[:, :, None]).sum(1) / nk
        variances = (resp * (x[:, :, None] - means[:, None, :]) ** 2).sum(1) / nk + reg_covar
        return nk, means, variances

    nk, means, variances = m_step(resp)
    params = TwoGaussians(nk / n[:, None], means, variances)
    previous = torch.full_like(n, float("-inf"))
    active = torch.ones_like(valid[:, 0])
    for _ in range(max_iter):
        var = params.variances[:, None, :]
        log_prob = (-0.5 * (math.log(2 * math.pi) + torch.log(var) +
                            (x[:, :, None] - params.means[:, None, :]) ** 2 / var) +
                    torch.log(params.weights[:, None, :]))
        norm = torch.logsumexp(log_prob, dim=2, keepdim=True)
        lower_bound = (norm.squeeze(2) * valid).sum(1) / n
        resp = torch.exp(log_prob - norm) * valid[:, :, None]
        nk, means, variances = m_step(resp)
        keep = active[:, None]
        params = TwoGaussians(torch.where(keep, nk / nk.sum(1, keepdim=True), params.weights),
                              torch.where(keep, means, params.means),
                              torch.where(keep, variances, params.variances))
        converged = (lower_bound - previous).abs() < tol
        previous = torch.where(active, lower_bound, previous)
        active = active & ~converged
        if not bool(active.any()):
            break
    return params


class NoiseFilterResult(NamedTuple):
    """Outcome of `filter_noisy_labels` (per image unless noted)."""

    labels: torch.Tensor        # (B, H, W) filtered labels
    n_samples: torch.Tensor     # (B,) fg pixels with loss > loss_min
    fitted: torch.Tensor        # (B,) bool, n_samples > min_samples
    applied: torch.Tensor       # (B,) bool, |μ0 − μ1| > mean_gap
    means: torch.Tensor         # (B, 2) float64, NaN where not fitted
    variances: torch.Tensor     # (B, 2)
    weights: torch.Tensor       # (B, 2)
    noise_prob: torch.Tensor    # (B, H, W) float64 noise posterior, NaN where not applied


def filter_noisy_labels(loss: torch.Tensor, labels: torch.Tensor, gamma: float = 0.95,
                        mean_gap: float = 1.0, loss_min: float = 0.1, min_samples: int = 1000,
                        backend: Literal["torch", "sklearn"] = "torch",
                        ignore_index: int = IGNORE_INDEX) -> NoiseFilterResult:
    """Adaptive noise filtering (ANF) of the released code, per image.

    Samples: foreground pixels (label ∉ {0, 255}) with per-pixel loss > loss_min (float32
    comparison). If there are more than `min_samples`, a 2-component 1-D GMM is fitted; if its
    means differ by more than `mean_gap`, the larger-mean component is noise and every non-
    background pixel whose noise posterior (evaluated on all pixels) exceeds `gamma` becomes 255.
    backend "torch": batched EM on the loss's device; "sklearn": scikit-learn per image (the
    original, reference path)."""
    if backend not in ("torch", "sklearn"):
        raise ConfigError(f"params.yaml: dupl.gmm_backend: expected 'torch' or 'sklearn', "
                          f"got {backend!r}")
    batch = loss.shape[0]
    loss_flat = loss.detach().reshape(batch, -1)
    label_flat = labels.reshape(batch, -1)
    foreground = (label_flat != 0) & (label_flat != ignore_index)
    selected = foreground & (loss_flat > torch.tensor(loss_min, dtype=loss_flat.dtype))
    n_samples = selected.sum(1)
    fitted = n_samples > min_samples
    nan = torch.full((batch, 2), float("nan"), dtype=torch.float64, device=loss.device)
    means, variances, weights = nan.clone(), nan.clone(), nan.clone()
    noise_prob = torch.full(loss_flat.shape, float("nan"), dtype=torch.float64, device=loss.device)
    rows = torch.nonzero(fitted).squeeze(1)
    if rows.numel():
        if backend == "torch":
            counts = n_samples[rows]
            order = torch.sort((~selected[rows]).to(torch.int8), dim=1, stable=True)[1]
            order = order[:, :int(counts.max())]
            samples = torch.gather(loss_flat[rows], 1, order)
            valid = torch.arange(order.shape[1], device=loss.device)[None, :] < counts[:, None]
            mixture = fit_two_gaussians(samples, valid)
            posterior = mixture.log_posterior(loss_flat[rows].double()).exp()
            means[rows], variances[rows], weights[rows] = (mixture.means, mixture.variances,
                                                           mixture.weights)
            noise = mixture.means.argmax(1)
            noise_prob[rows] = torch.gather(posterior, 2, noise.view(-1, 1, 1).expand(
                -1, posterior.shape[1], 1)).squeeze(2)
        else:
            _fit_sklearn(loss_flat, selected, rows, means, variances, weights, noise_prob)
    applied = fitted & ((means[:, 0] - means[:, 1]).abs() > mean_gap)
    noise_prob = torch.where(applied[:, None], noise_prob, torch.full_like(noise_prob, float("nan")))
    noisy = applied[:, None] & (noise_prob > gamma) & (label_flat != 0)
    filtered = torch.where(noisy, torch.full_like(label_flat, ignore_index), label_flat)
    return NoiseFilterResult(filtered.view_as(labels), n_samples, fitted, applied, means,
                             variances, weights, noise_prob.view(labels.shape))


def _fit_sklearn(loss_flat: torch.Tensor, selected: torch.Tensor, rows: torch.Tensor,
                 means: torch.Tensor, variances: torch.Tensor, weights: torch.Tensor,
                 noise_prob: torch.Tensor) -> None:
    """The original per-image scikit-learn loop (fills the given tensors for `rows`)."""
    from sklearn.mixture import GaussianMixture

    loss_np = loss_flat.cpu().numpy()
    selected_np = selected.cpu().numpy()
    for row in rows.tolist():
        gmm = GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4,
                              random_state=0)
        gmm.fit(loss_np[row][selected_np[row]].reshape(-1, 1))
        means[row] = torch.from_numpy(gmm.means_[:, 0].astype(np.float64))
        variances[row] = torch.from_numpy(gmm.covariances_.reshape(2).astype(np.float64))
        weights[row] = torch.from_numpy(gmm.weights_.astype(np.float64))
        prob = gmm.predict_proba(loss_np[row].reshape(-1, 1))[:, int(gmm.means_.argmax())]
        noise_prob[row] = torch.from_numpy(prob.astype(np.float64)).to(noise_prob.device)


# --------------------------------------------------------------------------- configuration
@dataclass
class DuplConfig:
    """DuPL hyper-parameters (defaults: VOC, `train_final_voc.py`) and re-implementation flags.
    Iteration boundaries are in the original's 0-based `n_iter`."""

    max_iters: int = 20000
    cam_iters: int = 2000       # n < cam_iters: no seg labels, PTC with the fixed high_thre
    gmm_iters: int = 8000       # n ≥ gmm_iters: ANF; n > gmm_iters: + L_reg
    high_thre: float = 0.7      # fixed τ_h (PTC before cam_iters; aux-CAM seg labels)
    low_thre: float = 0.25
    bkg_thre: float = 0.5       # validation CAM rule
    thre_start: float = 0.7
    thre_end: list[float] = field(default_factory=lambda: list(VOC_THRE_END))  # or one value
    thre_offset: int | None = None        # τ_h descent starts here (None: cam_iters)
    aux_seg_label_until: int = -1         # COCO: n ≤ this → seg labels from aux CAMs, fixed τ_h
    ptc_from: int = -1                    # PTC weighted only for n > ptc_from (COCO 12000)
    dis_from: int = -1                    # L_dis weighted only for n > dis_from (COCO 8000)
    w_cls: float = 1.0
    w_ptc: float = 0.2
    w_seg: float = 0.2
    w_dis: float = 0.1
    w_reg: float = 0.05
    cam_scales: list[float] = field(default_factory=lambda: [1.0, 0.5, 1.5])
    gamma: float = 0.95
    gmm_valid_thre: float = 1.0
    gmm_loss_min: float = 0.1
    gmm_min_samples: int = 1000
    gmm_backend: Literal["torch", "sklearn"] = "torch"
    reg_confidence: float = 0.9
    strong_scale: float = 0.75
    strong_flip: bool = True              # the original always mirrors the strong view
    ptc_scale_img_box: bool = False       # True: fix ToCo's unscaled img_box on the token grid
    discrepancy: Literal["code", "paper"] = "code"
    par_iters: int = 10
    par_dilations: list[int] = field(default_factory=lambda: list(PAR_DILATIONS))
    ignore_index: int = IGNORE_INDEX

    @classmethod
    def voc(cls, **overrides: Any) -> DuplConfig:
        return cls(**overrides)

    @classmethod
    def coco(cls, **overrides: Any) -> DuplConfig:
        values = dict(max_iters=80000, cam_iters=8000, gmm_iters=32000, high_thre=0.65,
                      bkg_thre=0.45, thre_start=0.65, thre_end=[0.55], thre_offset=12000,
                      aux_seg_label_until=12000, ptc_from=12000, dis_from=8000, w_dis=0.05)
        values.update(overrides)
        return cls(**values)

    def rescaled(self, max_iters: int, crop_size: int | None = None,
                 reference_crop: int = 448) -> DuplConfig:
        """The same schedule over `max_iters` iterations (every boundary scaled
        proportionally); with `crop_size`, `gmm_min_samples` scales with the crop area (a
        deliberate adaptation for small demo crops: 1000 of 448² pixels)."""
        ratio = max_iters / self.max_iters

        def scale(value: int | None) -> int | None:
            return value if value is None or value < 0 else int(round(value * ratio))

        changes: dict[str, Any] = dict(
            max_iters=max_iters, cam_iters=scale(self.cam_iters), gmm_iters=scale(self.gmm_iters),
            thre_offset=scale(self.thre_offset), aux_seg_label_until=scale(self.aux_seg_label_until),
            ptc_from=scale(self.ptc_from), dis_from=scale(self.dis_from))
        if crop_size is not None:
            changes["gmm_min_samples"] = max(1, int(round(
                self.gmm_min_samples * (crop_size / reference_crop) ** 2)))
        return dataclasses.replace(self, **changes)

    def validate(self, where: str = "dupl") -> None:
        def check(ok: bool, key: str, problem: str) -> None:
            if not ok:
                raise ConfigError(f"params.yaml: {where}.{key}: {problem}")

        check(self.max_iters >= 1, "max_iters", "must be >= 1")
        check(0 <= self.cam_iters <= self.gmm_iters, "gmm_iters", "need 0 <= cam_iters <= gmm_iters")
        check(0 <= self.low_thre <= self.high_thre <= 1, "high_thre", "need 0 <= low_thre <= high_thre <= 1")
        check(len(self.thre_end) >= 1, "thre_end", "needs one value or one per class")
        check(len(self.cam_scales) >= 1 and all(s > 0 for s in self.cam_scales), "cam_scales",
              "needs positive scales")
        check(0 < self.gamma < 1, "gamma", "must be in (0, 1)")
        check(self.gmm_backend in ("torch", "sklearn"), "gmm_backend", "must be 'torch' or 'sklearn'")
        check(self.discrepancy in ("code", "paper"), "discrepancy", "must be 'code' or 'paper'")
        check(0 < self.strong_scale <= 1, "strong_scale", "must be in (0, 1]")

    def class_thresholds(self, num_fg: int, device: torch.device
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """(start, end) per-class τ_h tensors (float32) for `num_fg` foreground classes."""
        end = list(self.thre_end)
        if len(end) == 1:
            end = end * num_fg
        if len(end) != num_fg:
            raise ConfigError(f"params.yaml: dupl.thre_end: has {len(end)} values, the dataset "
                              f"has {num_fg} foreground classes (give one value or one per class)")
        start = torch.full((num_fg,), self.thre_start, dtype=torch.float32, device=device)
        return start, torch.tensor(end, dtype=torch.float32, device=device)


def phase_weights(n_iter: int, cfg: DuplConfig) -> dict[str, float]:
    """Loss weights at the original's 0-based `n_iter`. As in the scripts the weights switch
    with `<=` while the computations switch with `<`, so at n = cam_iters the seg loss is built
    but weighted 0, and at n = gmm_iters the labels are filtered but L_reg is weighted 0."""
    seg_on = n_iter > cfg.cam_iters
    return {
        "cls": cfg.w_cls,
        "ptc": cfg.w_ptc if n_iter > cfg.ptc_from else 0.0,
        "seg": cfg.w_seg if seg_on else 0.0,
        "dis": cfg.w_dis if n_iter > cfg.dis_from else 0.0,
        "reg": cfg.w_reg if n_iter > cfg.gmm_iters else 0.0,
    }


# --------------------------------------------------------------------------- training step
def _batch_tensor(batch: Mapping[str, Any], key: str, device: torch.device | None = None
                  ) -> torch.Tensor:
    if key not in batch or batch[key] is None:
        raise WsssError(f"DuPL batch: missing '{key}'")
    value = batch[key]
    return torch.as_tensor(value) if device is None else torch.as_tensor(value).to(device)


def compute_loss(model: nn.Module, batch: Mapping[str, Any], iteration: int, cfg: DuplConfig
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """One DuPL training step's loss. `iteration` is 1-based (the original `n_iter + 1`).

    CAMs of both students (no grad) → PTC token labels (aux CAMs) and two-background PAR seg
    labels (final CAMs; aux CAMs with fixed τ_h up to `aux_seg_label_until`) → ANF filtering of
    each student's own labels (n ≥ gmm_iters) → cross supervision Y2 → student 1, Y1 → student 2
    → consistency on the strong view (n > gmm_iters). The gradient forward is a single call of
    `model` (so DDP sees it). Terms with weight 0 are not computed (reported as 0). Returns
    (total, {"loss", "cls", "ptc", "seg", "dis", "reg", "filtered"}), "filtered" being the
    fraction of pixels ANF set to 255."""
    net = unwrap(model)
    images = _batch_tensor(batch, "images")
    device = images.device
    cls_labels = _batch_tensor(batch, "cls_labels", device).float()
    batch_size, _, height, width = images.shape
    img_box = batch.get("img_box")
    img_box = None if img_box is None else torch.as_tensor(img_box).to(device).long()
    n_iter = iteration - 1
    weights = phase_weights(n_iter, cfg)
    ignore = cfg.ignore_index

    cams = [multi_scale_cams(student, images, cfg.cam_scales) for student in net.students]
    use_reg = weights["reg"] > 0
    strong = None
    if use_reg:
        strong = _batch_tensor(batch, "strong_images", device)
        strong = strong.flip(-1) if cfg.strong_flip else strong
    out = model(images, strong_images=strong, strong_scale=cfg.strong_scale)
    students = (out.student1, out.student2)

    if n_iter < cfg.cam_iters:
        high: float | torch.Tensor = cfg.high_thre
    else:
        start, end = cfg.class_thresholds(cls_labels.shape[1], device)
        offset = cfg.cam_iters if cfg.thre_offset is None else cfg.thre_offset
        class_thresholds = cosine_descent(start, end, n_iter - offset, cfg.max_iters - offset)
        high = image_high_thresholds(class_thresholds, cls_labels)

    zero = images.new_zeros(())
    terms: dict[str, torch.Tensor] = {}
    terms["cls"] = sum(F.multilabel_soft_margin_loss(o.cls, cls_labels) +
                       F.multilabel_soft_margin_loss(o.cls_aux, cls_labels) for o in students)
    terms["ptc"] = zero
    if weights["ptc"] > 0:
        terms["ptc"] = sum(
            ptc_loss(o.fmap, ptc_affinity_target(ptc_token_labels(
                cam_aux, cls_labels, o.fmap.shape[-2:], img_box, high, cfg.low_thre,
                cfg.bkg_thre, cfg.ptc_scale_img_box, ignore), ignore))
            for o, (_, cam_aux) in zip(students, cams))
    terms["seg"] = terms["reg"] = zero
    filtered_fraction = zero
    if weights["seg"] > 0:
        images_unit = denormalize_to_unit(images)
        from_aux = n_iter <= cfg.aux_seg_label_until
        labels = [refine_cams_two_backgrounds(
            images_unit, (cam_aux if from_aux else cam) * cls_labels[:, :, None, None],
            cls_labels, cfg.high_thre if from_aux else high, cfg.low_thre, img_box, ignore,
            dilations=cfg.par_dilations, num_iter=cfg.par_iters) for cam, cam_aux in cams]
        segs = [F.interpolate(o.seg, size=(height, width), mode="bilinear", align_corners=False)
                for o in students]
        if n_iter >= cfg.gmm_iters:
            before = [label.clone() for label in labels]
            labels = [filter_noisy_labels(
                F.cross_entropy(seg.detach(), label, ignore_index=ignore, reduction="none"),
                label, cfg.gamma, cfg.gmm_valid_thre, cfg.gmm_loss_min, cfg.gmm_min_samples,
                cfg.gmm_backend, ignore).labels for seg, label in zip(segs, labels)]
            filtered_fraction = sum(((b != a).float().mean() for b, a in zip(before, labels)),
                                    zero) / 2
        terms["seg"] = (balanced_seg_loss(segs[0], labels[1], ignore) +
                        balanced_seg_loss(segs[1], labels[0], ignore))
        if use_reg:
            terms["reg"] = (
                consistency_loss(segs[0], out.strong_seg1, labels[1], cfg.reg_confidence,
                                 cfg.strong_flip, ignore) +
                consistency_loss(segs[1], out.strong_seg2, labels[0], cfg.reg_confidence,
                                 cfg.strong_flip, ignore))
    terms["dis"] = zero
    if weights["dis"] > 0:
        terms["dis"] = discrepancy_loss(out.student1.fmap, out.student2.fmap, cfg.discrepancy)

    total = sum(weights[name] * terms[name] for name in ("cls", "ptc", "seg", "dis", "reg"))
    names = ["loss", "cls", "ptc", "seg", "dis", "reg", "filtered"]
    values = torch.stack([torch.as_tensor(v).detach().float().to(device) for v in
                          (total, terms["cls"], terms["ptc"], terms["seg"], terms["dis"],
                           terms["reg"], filtered_fraction)]).tolist()
    return total, dict(zip(names, values))


def param_groups(model: nn.Module, base_lr: float = 6e-5, weight_decay: float = 0.01,
                 head_lr_mult: float = 10.0) -> list[dict]:
    """AdamW groups of the original (weight decay on all of them): "backbone" (encoder
    parameters of both students without "norm" in the name), "backbone_norm", "classifier"
    (both students' classifier + aux_classifier, lr ×10), "decoder" (both LargeFOV heads, ×10).
    Frozen parameters (pos_embed, unused ImageNet head) are left out. Each group records `name`
    and `initial_lr`; use AdamW(betas=(0.9, 0.999), eps=1e-8)."""
    net = unwrap(model)
    groups: dict[str, list[nn.Parameter]] = {"backbone": [], "backbone_norm": [],
                                             "classifier": [], "decoder": []}
    for student in net.students:
        for name, parameter in student.encoder.named_parameters():
            if parameter.requires_grad:
                groups["backbone_norm" if "norm" in name else "backbone"].append(parameter)
        groups["classifier"] += [student.classifier.weight, student.aux_classifier.weight]
        groups["decoder"] += list(student.decoder.parameters())
    mult = {"backbone": 1.0, "backbone_norm": 1.0, "classifier": head_lr_mult,
            "decoder": head_lr_mult}
    return [{"name": name, "params": params, "lr": base_lr * mult[name],
             "initial_lr": base_lr * mult[name], "weight_decay": weight_decay}
            for name, params in groups.items()]


class DuplMethod:
    """DuPL as a plug-in of the shared training loop (`wsss_core.methods.TrainingMethod`).

    `config` is the effective training configuration: `iterations`, `lr`, `weight_decay`,
    `warmup_iter`, `warmup_ratio`, `lr_power`, `crop`, `model` (kwargs of `build_dupl_model`),
    `init_weights`, `schedule` ("voc" | "coco": the released scripts' phase tables, rescaled
    to `iterations` when that differs) and `method_options` (any `DuplConfig` field)."""

    name = "dupl"
    family = "dupl"
    needs_strong_view = True
    # the unused ImageNet head and the terms switched off in early phases get no gradient
    find_unused_parameters = True

    def __init__(self, num_classes: int, config: Mapping[str, Any]):
        self.num_classes = num_classes
        self.config = dict(config)
        base = DuplConfig.coco if config.get("schedule", "voc") == "coco" else DuplConfig.voc
        from ..presets import method_options

        cfg = method_options(DuplConfig, config.get("method_options", {}), "dupl", factory=base)
        if cfg.max_iters != config["iterations"]:
            cfg = cfg.rescaled(config["iterations"], crop_size=config["crop"])
        cfg.validate()
        self.cfg = cfg

    def build_model(self) -> nn.Module:
        from ..models.vit_seg import build_dupl_model

        return build_dupl_model(self.num_classes, pretrained_path=self.config.get("init_weights") or "",
                                **self.config["model"])

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        groups = param_groups(model, self.config["lr"], self.config["weight_decay"])
        return torch.optim.AdamW(groups, lr=self.config["lr"], betas=(0.9, 0.999), eps=1e-8,
                                 weight_decay=self.config["weight_decay"])

    def lr_factor(self, iteration: int) -> float:
        from ..schedules import warmup_poly_factor

        return warmup_poly_factor(iteration - 1, self.config["warmup_iter"], self.config["iterations"],
                                  self.config["warmup_ratio"], self.config["lr_power"])

    def training_loss(self, model: nn.Module, batch: Mapping[str, Any], iteration: int
                      ) -> tuple[torch.Tensor, dict[str, float]]:
        inputs = {"images": batch["image"], "cls_labels": batch["cls_label"],
                  "img_box": batch["img_box"], "strong_images": batch.get("strong_image")}
        return compute_loss(model, inputs, iteration, self.cfg)

    def predictors(self):
        """Both students, stored on the stride-8 grid like the DeepLab methods' logits."""
        def student(index: int):
            def run(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
                height, width = images.shape[-2:]
                grid = (-(-height // 8), -(-width // 8))
                return predict(model, images, student=index, output_size=grid)
            return run
        return {"student1": student(1), "student2": student(2)}

    @torch.no_grad()
    def cam_matrices(self, model: nn.Module, split, class_labels: Mapping[str, list[int]],
                     device: torch.device) -> dict[str, ConfusionMatrix]:
        """CAM quality of each student on a split (`validate_siamase`'s CAM mIoU, at full image
        resolution): multi-scale + flip CAMs of the image-level GT classes, the `bkg_thre` rule."""
        from ..data.classes import multi_hot
        from ..data.transforms import to_imagenet_normalized
        from ..io import read_image, read_label
        net = unwrap(model).eval()
        matrices = {f"student{i + 1}": ConfusionMatrix(self.num_classes) for i in range(2)}
        for image_id in split.ids:
            image = torch.from_numpy(to_imagenet_normalized(read_image(split.image_path(image_id))))
            image = image[None].to(device)
            labels = torch.from_numpy(multi_hot(class_labels[image_id], self.num_classes))[None]
            gt = read_label(split.gt_path(image_id), self.num_classes)
            for name, student in zip(matrices, net.students):
                cam, _ = multi_scale_cams(student, image, self.cfg.cam_scales)
                pred = cam_to_val_label(cam, labels.to(device), self.cfg.bkg_thre)
                matrices[name].update(pred[0].cpu().numpy(), gt)
        return matrices


# --------------------------------------------------------------------------- inference
@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, scales: Sequence[float] = (1.0, 1.5, 1.25),
            flip: bool = True, student: int = 1, output_size: Sequence[int] | None = None
            ) -> torch.Tensor:
    """Test-time segmentation logits (B, K, h, w) of one student (`eval_seg_voc.py`): per scale
    the image (and its mirror) is resized bilinearly, the decoder logits are upsampled to
    `output_size` (default: the input size) and the flips summed; the element-wise max over
    scales is returned."""
    net = unwrap(model).student(student)
    batch, _, height, width = images.shape
    size = (height, width) if output_size is None else (int(output_size[0]), int(output_size[1]))
    best = None
    for scale in scales:
        x = F.interpolate(images, size=(int(height * scale), int(width * scale)),
                          mode="bilinear", align_corners=False)
        if flip:
            x = torch.cat([x, x.flip(-1)], dim=0)
        logits = F.interpolate(net.seg_logits(x), size=size, mode="bilinear", align_corners=False)
        if flip:
            logits = logits[:batch] + logits[batch:].flip(-1)
        best = logits if best is None else torch.max(best, logits)
    return best


__all__ = [
    "DuplConfig", "DuplMethod", "compute_loss", "param_groups", "phase_weights", "predict",
    "multi_scale_cams", "cam_to_train_label", "cam_to_val_label",
    "par_refine", "refine_cams_two_backgrounds", "cosine_descent", "image_high_thresholds",
    "balanced_seg_loss", "ptc_affinity_target", "ptc_loss", "ptc_token_labels",
    "discrepancy_loss", "consistency_loss", "consistency_target", "filter_noisy_labels",
    "fit_two_gaussians", "TwoGaussians", "NoiseFilterResult", "denormalize_to_unit", "box_mask",
    "scale_box",
]
