"""DeepLab v2 baseline: cross-entropy on every MSC output, plus the pieces CDL shares with it.

Shared pieces (CDL builds on them): `resize_labels` (per-output pseudo labels, PIL-nearest
sampling), `cross_entropy_ignore`, `balanced_cross_entropy` (ImageNet-init configs),
`segmentation_loss`, `imagenet_ramp` and `deeplab_param_groups` (1×/10×/20× SGD groups).

Method interface used by the training loop (same for every method):

    method.needs_strong_view                       bool: does forward need a strong view?
    method.compute_loss(outputs, labels, iteration, max_iter) -> (loss, {term: float})
    method.param_groups(model, base_lr, weight_decay) -> list of SGD param-group dicts

`outputs` is the model's training-mode `MscOutputs`, `labels` the (B, H, W) int64 crop labels
(255 = ignore) at input resolution, `iteration` 1-based.

Normalisation unit: one micro-batch of the *global* batch. Under DDP every batch sum and count of
a loss (its valid pixels, background/foreground groups, Dice sums, affinity pairs) is summed over
the processes with `distributed.global_sum`, as the originals' nn.DataParallel sees the whole
batch, and `compute_loss` returns `distributed.undo_gradient_averaging(loss)` for backward, so N
processes take the step of one process on the same images; the logged terms are the
global-batch values. With gradient accumulation (`iter_size`) each micro-batch is normalised on
its own and the loop averages their gradients (it divides each loss by iter_size), as the
original CDL's `iter_size` loop does: not one loss over the accumulated batch.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...distributed import global_sums, undo_gradient_averaging
from ...io import IGNORE_INDEX
from ...models import MscOutputs, unwrap
from ...precision import as_float, full_precision


# --------------------------------------------------------------------------- labels
def _pil_nearest_index(src: int, dst: int) -> np.ndarray:
    """Source indices PIL's NEAREST resize samples: positions start at half a step and grow by
    repeated float64 addition of the step (as Pillow's ImagingScaleAffine), then truncate."""
    step = src / dst
    positions = np.add.accumulate(np.concatenate([[step * 0.5], np.full(dst - 1, step)]))
    return np.clip(positions.astype(np.int64), 0, src - 1)


def resize_labels(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of a (B, H, W) label batch to `size` = (h, w), sampling exactly
    the pixels PIL's `Image.resize(..., NEAREST)` samples (as the original `resize_labels`).

    Unlike the original, `size` is (height, width); the original passed (H, W) where PIL expects
    (W, H), which only agrees for square outputs (all training crops are square)."""
    height, width = int(size[0]), int(size[1])
    src_h, src_w = labels.shape[-2:]
    rows = torch.from_numpy(_pil_nearest_index(src_h, height)).to(labels.device)
    cols = torch.from_numpy(_pil_nearest_index(src_w, width)).to(labels.device)
    return labels[:, rows[:, None], cols[None, :]]


# --------------------------------------------------------------------------- losses
def _zero_like_graph(logits: torch.Tensor) -> torch.Tensor:
    """A 0 that keeps `logits` in the graph (no NaN, no gradient)."""
    return logits.sum() * 0.0


def _pixel_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-pixel CE, 0 at ignored pixels."""
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="none")


def cross_entropy_ignore(logits: torch.Tensor, labels: torch.Tensor,
                         guard_empty: bool = True) -> torch.Tensor:
    """Mean CE over the (global) batch's pixels whose label is not 255. With no such pixel
    PyTorch returns NaN; with `guard_empty` the loss is 0 instead (and contributes no
    gradient)."""
    total, count = global_sums(_pixel_ce(logits, labels).sum(), (labels != IGNORE_INDEX).sum())
    if guard_empty and not bool(count > 0):
        return _zero_like_graph(logits)
    return total / count


def balanced_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                           guard_empty: bool = True) -> torch.Tensor:
    """½·(mean CE over background pixels + mean CE over foreground pixels), over the whole
    (global) batch (CDL's `criterion_balance`). The original gives NaN (0/0) when the batch has
    no background or no foreground pixel; with `guard_empty` an empty group is left out (the loss
    is the other group's mean, or 0 if both are empty)."""
    per_pixel = _pixel_ce(logits, labels)
    background = labels == 0
    foreground = (labels != 0) & (labels != IGNORE_INDEX)
    sum_bg, sum_fg, count_bg, count_fg = global_sums(
        (per_pixel * background).sum(), (per_pixel * foreground).sum(), background.sum(),
        foreground.sum())
    if not guard_empty:
        return (sum_bg / count_bg + sum_fg / count_fg) / 2
    terms = [total / count for total, count in ((sum_bg, count_bg), (sum_fg, count_fg))
             if bool(count > 0)]
    if not terms:
        return _zero_like_graph(logits)
    return sum(terms) / len(terms)


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, balanced: bool) -> torch.Tensor:
    """The per-output supervised loss: balanced CE for ImageNet-init configs, else plain CE."""
    if balanced:
        return balanced_cross_entropy(logits, labels)
    return cross_entropy_ignore(logits, labels)


def imagenet_ramp(iteration: int, enabled: bool) -> float:
    """CDL's ImageNet-init warm start: the loss is scaled by iteration/100 + 0.01 below 100."""
    return iteration / 100 + 0.01 if enabled and iteration < 100 else 1.0


# --------------------------------------------------------------------------- optimiser groups
def deeplab_param_groups(model: nn.Module, base_lr: float, weight_decay: float,
                         extra_20x: Iterable[str] = ()) -> list[dict]:
    """SGD groups of DeepLab v2 (caffe lr_mult/decay_mult):

    "1x"  conv parameters of the backbone (`layer*`), lr base, weight decay
    "10x" conv weights of every head whose name contains `aspp`, lr 10·base, weight decay
    "20x" their biases, plus every Conv2d/BatchNorm parameter of modules whose name contains
          one of `extra_20x` (CDL-b's affinity head), lr 20·base, no weight decay
    Backbone BatchNorm parameters are in no group (frozen). Each group records `name`,
    `initial_lr` (the undecayed lr, for `schedules.set_lr_factor`)."""
    groups: dict[str, list[nn.Parameter]] = {"1x": [], "10x": [], "20x": []}
    seen: set[int] = set()

    def add(group: str, parameter: nn.Parameter | None) -> None:
        if parameter is not None and id(parameter) not in seen:
            seen.add(id(parameter))
            groups[group].append(parameter)

    for name, module in unwrap(model).named_modules():
        if isinstance(module, nn.Conv2d) and "aspp" in name:
            add("10x", module.weight)
            add("20x", module.bias)
        elif isinstance(module, nn.Conv2d) and "layer" in name:
            for parameter in module.parameters():
                add("1x", parameter)
        elif any(key in name for key in extra_20x) and isinstance(
                module, (nn.Conv2d, nn.modules.batchnorm._BatchNorm)):
            for parameter in module.parameters():
                add("20x", parameter)
    settings = {"1x": (1, weight_decay), "10x": (10, weight_decay), "20x": (20, 0.0)}
    return [{"name": name, "params": params, "lr": settings[name][0] * base_lr,
             "initial_lr": settings[name][0] * base_lr, "weight_decay": settings[name][1]}
            for name, params in groups.items()]


# --------------------------------------------------------------------------- the method
@dataclass
class BaselineConfig:
    # ImageNet-init configs: balanced CE and the 100-iteration loss ramp (as CDL does)
    imagenet_init: bool = False


class BaselineMethod:
    """Plain DeepLab v2 training: (balanced) CE of `aspp` on every MSC output, summed."""

    name = "baseline"
    needs_strong_view = False

    def __init__(self, config: BaselineConfig | None = None):
        self.config = config or BaselineConfig()

    def compute_loss(self, outputs: MscOutputs, labels: torch.Tensor, iteration: int,
                     max_iter: int) -> tuple[torch.Tensor, dict[str, float]]:
        labels = labels.to(outputs.main[0].device)
        # mixed precision: the CE and its batch sums in float32 (bf16/fp16 logits are cast)
        with full_precision(outputs.main[0]):
            total = sum(segmentation_loss(logits, resize_labels(labels, logits.shape[-2:]),
                                          self.config.imagenet_init)
                        for logits in as_float(outputs.main))
            total = total * imagenet_ramp(iteration, self.config.imagenet_init)
        return undo_gradient_averaging(total), {"loss": float(total.detach())}

    def param_groups(self, model: nn.Module, base_lr: float, weight_decay: float) -> list[dict]:
        return deeplab_param_groups(model, base_lr, weight_decay)
