"""CDL (Credible Dual-Expert Learning): label correction, Dice, affinity loss (spec cdl.md §2).

Two experts share one DeepLab v2 backbone (`models.deeplab_v2`): expert 1 (`aspp`) always learns
with (balanced) CE, expert 2 (`aspp_2nd`) with the same loss during warm-up and with Dice after
it. After warm-up the pseudo label of every MSC output is corrected online from the two
experts' current predictions (`update_labels`): pixels where one expert is credible take its
prediction; pixels where neither is confident take a prediction transferred from confident
pixels through the affinity map. The affinity head learns from the credible-only labels. CDL-e
adds a third expert (`aspp_3rd`) that sees a strong photometric view (`wsss_core.data.transforms.cdl_strong_view`) and
is the one used at test time.

Faithful to the released code by default; the questionable behaviours are behind `CdlConfig`
flags (`affinity_nclass`, `dice_mask_ignore`, `train_affinity_head`; the test scales are a
model parameter).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ...distributed import global_sums, undo_gradient_averaging
from ...errors import WsssError
from ...io import IGNORE_INDEX
from ...models import MscOutputs
from ...precision import as_float, full_precision
from .baseline import deeplab_param_groups, imagenet_ramp, resize_labels, segmentation_loss

Variant = Literal["cdl_b", "cdl_e"]


# --------------------------------------------------------------------------- label correction
@torch.no_grad()
def update_labels(logits_1: torch.Tensor, logits_2: torch.Tensor, affinity: torch.Tensor,
                  labels: torch.Tensor, threshold_1: float = 0.9, threshold_2: float = 0.9,
                  incredible_threshold: float = 0.5, source_threshold: float = 0.9
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise correction of one MSC output (the original `UpDate_labels`).

    logits_1, logits_2: (B, C, h, w) expert logits; affinity: (B, N, N) with N = h·w,
    row-major pixel index, A[b, i, j] relating source i to target j; labels: (B, h, w) int64.
    Returns (corrected, credible): `corrected` is the label for both experts, `credible` holds
    the credible experts' predictions and 255 elsewhere (the affinity-loss label). `labels` is
    not modified.
    """
    conf_1, pred_1 = F.softmax(logits_1, dim=1).max(dim=1)
    conf_2, pred_2 = F.softmax(logits_2, dim=1).max(dim=1)
    # credible: the more confident expert, above its threshold; ties belong to nobody
    credible_1 = (conf_1 > conf_2) & (conf_1 >= threshold_1)
    credible_2 = (conf_2 > conf_1) & (conf_2 >= threshold_2)
    ignore = torch.full_like(labels, IGNORE_INDEX)
    credible = torch.where(credible_2, pred_2, torch.where(credible_1, pred_1, ignore))
    # credible predictions overwrite the pseudo label, also where it was 255
    corrected = torch.where(credible != IGNORE_INDEX, credible, labels)

    incredible = (conf_1 < incredible_threshold) & (conf_2 < incredible_threshold)
    source = ((conf_1 > source_threshold) | (conf_2 > source_threshold)) \
        & (corrected != IGNORE_INDEX)

    batch, classes, height, width = logits_1.shape
    # column-wise softmax of A over the source pixels i for every target j
    weights = torch.exp(affinity - 1) * source.reshape(batch, -1, 1).to(affinity.dtype)
    weights = weights / (weights.sum(dim=1, keepdim=True) + 1e-5)
    flat_1 = logits_1.reshape(batch, classes, -1)
    flat_2 = logits_2.reshape(batch, classes, -1)
    transferred = flat_1.bmm(weights) + flat_2.bmm(weights)
    scores = 0.5 * (flat_1 + flat_2) + 0.5 * transferred
    transferred_label = scores.argmax(dim=1).reshape(batch, height, width)
    corrected = torch.where(incredible, transferred_label, corrected)
    return corrected, credible


# --------------------------------------------------------------------------- losses
def dice_loss(logits: torch.Tensor, labels: torch.Tensor, mask_ignore: bool = False,
              eps: float = 1e-7) -> torch.Tensor:
    """1 − mean over all C classes of 2·Σ p_c t_c / (Σ p_c + Σ t_c + eps), sums over the
    (global) batch and all pixels (the original `dice_loss`). Ignored pixels have an all-zero
    target row, but as in the original their predicted probability still counts in the denominator unless
    `mask_ignore` (the original's mask is a no-op). Absent classes contribute 0."""
    classes = logits.shape[1]
    valid = labels != IGNORE_INDEX
    target = F.one_hot(torch.where(valid, labels, classes), classes + 1)[..., :classes]
    target = target.permute(0, 3, 1, 2).to(logits.dtype)
    probs = F.softmax(logits, dim=1)
    if mask_ignore:
        probs = probs * valid.unsqueeze(1).to(probs.dtype)
    intersection, union = global_sums((probs * target).sum(dim=(0, 2, 3)),
                                      (probs + target).sum(dim=(0, 2, 3)))
    return 1.0 - (2.0 * intersection / (union + eps)).mean()


def affinity_loss(affinity: torch.Tensor, labels: torch.Tensor, negative_weight: float = 1.0,
                  nclass: int | None = None) -> torch.Tensor:
    """Pairwise loss on A (B, N, N) with labels (B, h, w) (the original `compute_affinity_loss`).

    Over pairs whose labels are both not 255: positives P (same class, i = j included) pull A
    to 1, negatives Q (different classes) push it to 0:
        −Σ_P log(A + 1e-5)/(|P| + 1e-5) − λ·Σ_Q log(1 − A + 1e-5)/(|Q| + 1e-5).
    λ = 1 in CDL-b, 2 in CDL-e. The original one-hot encodes with a fixed `nclass` (21): a label
    equal to nclass then matches nothing (not even itself) and larger labels are an error; pass
    `nclass` to reproduce that, or None to compare labels directly (any class count)."""
    batch = labels.shape[0]
    flat = labels.reshape(batch, -1)
    valid = flat != IGNORE_INDEX
    too_large = valid & (flat > nclass) if nclass is not None else torch.zeros_like(valid)
    matchable = valid & (flat < nclass) if nclass is not None else valid
    pair_valid = valid.unsqueeze(2) & valid.unsqueeze(1)
    same = (flat.unsqueeze(2) == flat.unsqueeze(1)) & matchable.unsqueeze(2)
    positive = pair_valid & same
    negative = pair_valid & ~same
    # the pair counts are the global batch's; the label check is global too, so that every
    # process raises (none is left waiting in an all-reduce)
    positive_sum, negative_sum, positive_count, negative_count, too_large_count = global_sums(
        (positive * torch.log(affinity + 1e-5)).sum(),
        (negative * torch.log(1 - affinity + 1e-5)).sum(),
        positive.sum(), negative.sum(), too_large.sum())
    if bool(too_large_count > 0):
        raise WsssError(f"affinity loss: a label is larger than affinity_nclass={nclass}; set "
                        f"affinity_nclass to the class count")
    positive_term = -positive_sum / (positive_count + 1e-5)
    negative_term = -negative_sum / (negative_count + 1e-5)
    return positive_term + negative_weight * negative_term


# --------------------------------------------------------------------------- the method
def as_float_outputs(outputs: MscOutputs) -> MscOutputs:
    """`outputs` with every head's tensors as float32 (autocast leaves them bf16/fp16)."""
    return dataclasses.replace(outputs, **{name: as_float(getattr(outputs, name)) for name in (
        "main", "second", "third", "affinity", "affinity_strong")})


@dataclass
class CdlConfig:
    """CDL hyper-parameters (`THRESHOLDS.*` of the original configs) and re-implementation flags."""

    imagenet_init: bool = False          # balanced CE + 100-iteration loss ramp
    warmup_ratio: float = 0.1            # START_RATION: no correction up to 0.1·max_iter
    threshold_1: float = 0.9             # credible threshold of expert 1 (aspp)
    threshold_2: float = 0.9             # credible threshold of expert 2 (aspp_2nd)
    incredible_threshold: float = 0.5    # hard-coded in the original
    source_threshold: float = 0.9        # hard-coded in the original
    loss_weight_1st: float = 0.2
    loss_weight_2nd: float = 0.2
    loss_weight_3rd: float = 0.2         # CDL-e only
    aff_loss_weight: float = 0.4
    # λ of the affinity loss's negative term; None = the variant's (1 for CDL-b, 2 for CDL-e)
    affinity_negative_weight: float | None = None
    # class count of the affinity loss's one-hot; the original hard-codes 21 (COCO crashes).
    # None = compare labels directly (same as 21 on VOC, works for any class count)
    affinity_nclass: int | None = None
    dice_mask_ignore: bool = False       # True: ignored pixels leave the Dice denominator
    # optimise the affinity head; None = as the original (CDL-b yes, CDL-e no)
    train_affinity_head: bool | None = None


@dataclass
class _Terms:
    expert1: torch.Tensor | float = 0.0
    expert2: torch.Tensor | float = 0.0
    strong: torch.Tensor | float = 0.0
    affinity: torch.Tensor | float = 0.0


class CdlMethod:
    """CDL-b or CDL-e training logic over the model's `MscOutputs`."""

    def __init__(self, variant: Variant, config: CdlConfig | None = None):
        if variant not in ("cdl_b", "cdl_e"):
            raise ValueError(f"unknown CDL variant {variant!r}")
        self.name = variant
        self.variant = variant
        self.config = config or CdlConfig()
        self.needs_strong_view = variant == "cdl_e"

    @property
    def negative_weight(self) -> float:
        if self.config.affinity_negative_weight is not None:
            return self.config.affinity_negative_weight
        return 2.0 if self.variant == "cdl_e" else 1.0

    @property
    def trains_affinity_head(self) -> bool:
        if self.config.train_affinity_head is not None:
            return self.config.train_affinity_head
        return self.variant == "cdl_b"

    def phase(self, iteration: int, max_iter: int) -> tuple[bool, bool]:
        """(use Dice for expert 2, correct labels) at `iteration`. The original compares with
        `<` for the loss switch and `>` for correction, so at exactly warmup_ratio·max_iter
        Dice is used on uncorrected labels."""
        boundary = self.config.warmup_ratio * max_iter
        return iteration >= boundary, iteration > boundary

    def compute_loss(self, outputs: MscOutputs, labels: torch.Tensor, iteration: int,
                     max_iter: int) -> tuple[torch.Tensor, dict[str, float]]:
        if outputs.second is None or outputs.affinity is None:
            raise ValueError(f"{self.variant} needs a model with aspp_2nd and the affinity head")
        if self.variant == "cdl_e" and (outputs.third is None or outputs.affinity_strong is None):
            raise ValueError("cdl_e needs the strong-view outputs (forward with strong_images)")
        use_dice, correct = self.phase(iteration, max_iter)
        labels = labels.to(outputs.main[0].device)
        # mixed precision: the label correction (softmax confidences against 0.9 thresholds,
        # the affinity transfer), the losses and their batch sums in float32
        with full_precision(outputs.main[0]):
            return self._loss(as_float_outputs(outputs), labels, iteration, use_dice, correct)

    def _loss(self, outputs: MscOutputs, labels: torch.Tensor, iteration: int, use_dice: bool,
              correct: bool) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        terms = _Terms()
        for index, (logits_1, logits_2, affinity) in enumerate(
                zip(outputs.main, outputs.second, outputs.affinity)):
            raw = resize_labels(labels, logits_1.shape[-2:])
            if correct:
                # CDL-e corrects with the weak view's map only
                target, affinity_target = update_labels(
                    logits_1, logits_2, affinity, raw, cfg.threshold_1, cfg.threshold_2,
                    cfg.incredible_threshold, cfg.source_threshold)
            else:
                target = affinity_target = raw
            terms.expert1 += cfg.loss_weight_1st * segmentation_loss(logits_1, target,
                                                                     cfg.imagenet_init)
            if use_dice:
                loss_2 = dice_loss(logits_2, target, mask_ignore=cfg.dice_mask_ignore)
            else:
                loss_2 = segmentation_loss(logits_2, target, cfg.imagenet_init)
            terms.expert2 += cfg.loss_weight_2nd * loss_2
            if self.variant == "cdl_e":
                terms.strong += cfg.loss_weight_3rd * segmentation_loss(
                    outputs.third[index], target, cfg.imagenet_init)
                # the affinity loss sees the average of the weak and strong maps
                affinity = 0.5 * affinity + 0.5 * outputs.affinity_strong[index]
            terms.affinity += cfg.aff_loss_weight * affinity_loss(
                affinity, affinity_target, self.negative_weight, cfg.affinity_nclass)
        ramp = imagenet_ramp(iteration, cfg.imagenet_init)
        total = (terms.expert1 + terms.expert2 + terms.strong + terms.affinity) * ramp
        parts = {"loss": total, "expert1": terms.expert1, "expert2": terms.expert2,
                 "affinity": terms.affinity}
        if self.variant == "cdl_e":
            parts["strong"] = terms.strong
        values = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=total.device)
                              .detach() for v in parts.values()]).tolist()
        return undo_gradient_averaging(total), dict(zip(parts, values))

    def param_groups(self, model: nn.Module, base_lr: float, weight_decay: float) -> list[dict]:
        """DeepLab's 1×/10×/20× groups; the affinity head's conv and BN parameters join the 20×
        group (no weight decay) when it is trained (CDL-b; CDL-e only with the flag)."""
        extra = ("affinity",) if self.trains_affinity_head else ()
        return deeplab_param_groups(model, base_lr, weight_decay, extra_20x=extra)
