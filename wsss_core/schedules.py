"""Learning-rate schedules shared by the methods (pure functions of the iteration number).

DeepLab v2 / CDL: polynomial decay lr = base · (1 − k/max_iter)^power evaluated only every
`step_size` iterations (upstream `PolynomialLR` stepped with `scheduler.step(epoch=it)` after each
optimiser step): iterations 1..10 use the base lr, 11..20 the factor of k = 10, and so on; the lr
stops changing after `max_iter`.

Param groups carry their undecayed lr as ``initial_lr`` (see
`methods.deeplab.baseline.deeplab_param_groups`); `set_lr_factor` multiplies it by a schedule factor.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch


def stepped_poly_factor(iteration: int, max_iter: int, step_size: int = 10,
                        power: float = 0.9) -> float:
    """Factor of the lr used by the optimiser step of `iteration` (1-based) under DeepLab's
    poly schedule updated every `step_size` iterations."""
    if iteration < 1 or max_iter < 1 or step_size < 1:
        raise ValueError(f"need iteration >= 1, max_iter >= 1, step_size >= 1 "
                         f"(got {iteration}, {max_iter}, {step_size})")
    # the last scheduler update before this iteration happened after iteration k
    last_update = min(((iteration - 1) // step_size) * step_size,
                      (max_iter // step_size) * step_size)
    return (1 - last_update / max_iter) ** power


def set_lr_factor(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Set every group's lr to its ``initial_lr`` × factor (a group without ``initial_lr``
    records its current lr as such first)."""
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
        group["lr"] = group["initial_lr"] * factor


def warmup_poly_factor(step: int, warmup_iter: int, max_iter: int, warmup_ratio: float = 1e-6,
                       power: float = 0.9) -> float:
    """Factor of the base lr at optimiser step `step` (0-based) under DuPL/ToCo's
    `PolyWarmupAdamW`: linear warm-up from `warmup_ratio` over `warmup_iter` steps, then
    (1 − step/max_iter)^power, not re-based after the warm-up (so the factor drops slightly at
    step = warmup_iter), frozen from step max_iter on (the value of step max_iter − 1)."""
    if step < warmup_iter:
        return 1 - (1 - step / warmup_iter) * (1 - warmup_ratio)
    step = min(step, max_iter - 1)
    return (1 - step / max_iter) ** power


def poly_factor_with_warmup(iteration: int, config: Mapping, step_size: int) -> float:
    """DeepLab's stepped poly factor over a training configuration's `iterations` (`lr_step`,
    default `step_size`; `lr_power`, default 0.9), times a linear warm-up over its first
    `warmup_iter` iterations (0 or absent: none). The demo presets warm up because heads trained
    from scratch at 10×/20× the lr blow up in the first steps; the paper configs have none."""
    factor = stepped_poly_factor(iteration, config["iterations"], config.get("lr_step", step_size),
                                 config.get("lr_power", 0.9))
    warmup = config.get("warmup_iter", 0)
    return factor * min(1.0, iteration / warmup) if warmup else factor
