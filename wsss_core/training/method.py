"""What the training loop asks of a method: its model, optimiser, LR schedule and losses.

The loop defines this contract and the methods (`wsss_core.methods`) implement it, so the loop
never imports them.
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
