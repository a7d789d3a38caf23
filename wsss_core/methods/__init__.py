"""Methods as plug-ins of the one training loop and the one inference path.

A method is its model heads plus its losses; `create_method(name, num_classes, config)` returns a
`TrainingMethod` built from the effective training configuration (preset + overrides, see
`wsss_core.presets`). The DeepLab family (baseline, cdl_b, cdl_e) shares one adapter; DuPL has its
own. Both expose the same things to `wsss_core.train` and `wsss_core.infer`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn


class TrainingMethod(Protocol):
    name: str
    family: str                       # "deeplab" | "dupl": which data pipeline feeds it
    needs_strong_view: bool           # the dataset adds `strong_image` to each sample
    find_unused_parameters: bool      # for DDP: some parameters get no gradient in some phases

    def build_model(self) -> nn.Module: ...

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """Optimiser whose param groups carry `initial_lr` (and a `name` for logging)."""

    def lr_factor(self, iteration: int) -> float:
        """Multiplier of every group's `initial_lr` for the optimiser step of `iteration` (1-based)."""

    def training_loss(self, model: nn.Module, batch: dict, iteration: int
                      ) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss of one (micro-)batch and its named terms for logging. `model` may be the
        DDP wrapper: call it, do not reach into it, for anything that needs gradients."""

    def predictors(self) -> dict[str, Callable[[nn.Module, torch.Tensor], torch.Tensor]]:
        """Test-time logits functions by name (one for DeepLab/CDL; one per student for DuPL):
        `fn(model, images (1, 3, H, W) normalised) -> (1, C, h, w)` logits."""


def create_method(name: str, num_classes: int, config: dict) -> TrainingMethod:
    if name in ("baseline", "cdl_b", "cdl_e"):
        from .deeplab_family import DeepLabFamily

        return DeepLabFamily(name, num_classes, config)
    if name == "dupl":
        from .dupl import DuplMethod

        return DuplMethod(num_classes, config)
    from ..errors import ConfigError

    raise ConfigError(f"unknown method '{name}' (allowed: baseline, cdl_b, cdl_e, dupl)")
