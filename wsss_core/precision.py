"""Mixed precision of training and inference (`train.precision`, `infer.precision`).

`fp32` (the papers') runs everything in float32. `bf16` and `fp16` run the network's forward
under `torch.autocast` on the context's device type (cpu or cuda); `fp16` training also scales
the loss with a `torch.amp.GradScaler` (bf16 has float32's exponent range and needs none).

What must stay float32 is cast explicitly by the methods with `full_precision`, which leaves
autocast for the block and returns the given tensors as float32: losses and their batch sums
(a bf16 sum of thousands of per-pixel CE values loses digits), the softmax statistics and
thresholds of CDL's label correction and DuPL's CAM / PAR / threshold rules (a bf16 probability
of 0.9 is 0.8984 or 0.9023: it would flip "credible" pixels), DuPL's GMM noise filter (EM on
losses in float64) and the logits handed to the CRF (stored from float32).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch

Precision = Literal["fp32", "bf16", "fp16"]
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device | str, precision: Precision = "fp32"):
    """The forward's autocast context for `precision` on `device`'s type (nothing for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=AUTOCAST_DTYPES[precision])


def grad_scaler(device: torch.device | str, precision: Precision = "fp32") -> torch.amp.GradScaler:
    """Loss scaling for fp16 (a disabled scaler otherwise: its calls then do nothing)."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=precision == "fp16")


@contextlib.contextmanager
def full_precision(like: torch.Tensor) -> Iterator[None]:
    """A block computed in float32 whatever autocast is active around it (on `like`'s device
    type); the caller casts its inputs with `.float()` (a no-op on float32 tensors)."""
    with torch.autocast(like.device.type, enabled=False):
        yield


def as_float(tensors):
    """`tensors` (a tensor, None, or a list/tuple of them) as float32."""
    if tensors is None:
        return None
    if isinstance(tensors, (list, tuple)):
        return type(tensors)(as_float(t) for t in tensors)
    return tensors.float() if tensors.is_floating_point() else tensors
