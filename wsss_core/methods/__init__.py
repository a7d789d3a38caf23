"""Methods as plug-ins of the one training loop and the one inference path.

A method is its model heads plus its losses; `create_method(name, num_classes, config)` returns a
`TrainingMethod` built from the effective training configuration (preset + overrides, see
`wsss_core.presets`). The DeepLab family (baseline, cdl_b, cdl_e) shares one adapter; DuPL has its
own. Both expose the same things to `wsss_core.train`; what else the pipeline needs to know of a
method (its data, normalisation, CRF preset, predictors) is in its `wsss_core.registry` record.
"""
from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


class TrainingMethod(Protocol):
    name: str
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


def create_method(name: str, num_classes: int, config: dict) -> TrainingMethod:
    """The training adapter of method `name` (looked up in `wsss_core.registry`)."""
    from ..registry import get_method

    return get_method(name).create(name, num_classes, config)
