"""Model registry and weight loading.

`build_checked(builder, num_classes, owner, **model_params)` checks `model_params` against the
builder's keyword arguments, so a misspelt parameter is a one-line `ConfigError`.

`load_init_weights` loads backbone init weights (e.g. the Caffe-converted DeepLab ResNet-101,
keys like ``layer4.block7.conv3x3.conv.weight`` plus an unused ``fc.*``) into `model.base`,
non-strictly, and returns a `LoadReport` naming the missing and unexpected keys; a shape mismatch
is a `WsssError` naming the key and both shapes, a missing or unreadable file a `DataError`.
Whole trained models (this project's `model.pth`, released checkpoints) load strictly with
`wsss_core.models.checkpoints.load_trained_weights`, the one loader of trained weights.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..cli import is_main_process
from ..errors import ConfigError, DataError, WsssError
from .deeplab_v2 import MSC, MscOutputs
from .resnet import freeze_batchnorm


def build_checked(builder: Callable[..., nn.Module], num_classes: int, owner: str,
                  **model_params: Any) -> nn.Module:
    """`builder(num_classes, **model_params)`; a model parameter the builder does not take is a
    one-line ConfigError naming `owner` (e.g. "method 'cdl_b'")."""
    parameters = inspect.signature(builder).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    allowed = [name for name in parameters if name != "num_classes"
               and parameters[name].kind is not inspect.Parameter.VAR_KEYWORD]
    for name in model_params:
        if not takes_any and name not in allowed:
            raise ConfigError(f"model parameter '{name}' is not used by {owner} "
                              f"(allowed: {', '.join(allowed)})")
    return builder(num_classes, **model_params)


# --------------------------------------------------------------------------- weights
@dataclass
class LoadReport:
    """Outcome of a non-failing load: key names loaded, missing from the file, not in the model."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def summary(self, max_names: int = 8) -> str:
        def names(keys: list[str]) -> str:
            shown = ", ".join(keys[:max_names])
            more = len(keys) - max_names
            return shown + (f", ... ({more} more)" if more > 0 else "")

        lines = [f"{self.source}: loaded {len(self.loaded)} tensors"]
        if self.missing:
            lines.append(f"  missing (kept their initialisation): {names(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected (ignored): {names(self.unexpected)}")
        return "\n".join(lines)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel wrappers."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state and all(key.startswith(prefix) for key in state):
        return {key[len(prefix):]: value for key, value in state.items()}
    return state


def _torch_load_problem(exc: Exception) -> str:
    """What torch.load found wrong, without its advice to retry with weights_only=False (which
    would only run the file's pickled code; a weights file never needs it)."""
    text = str(exc).strip()
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].strip()
    first = text.splitlines()[0].strip() if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def read_state_dict(source: str | Path | Mapping[str, torch.Tensor], kind: str = "weights"
                    ) -> tuple[dict[str, torch.Tensor], str]:
    """A state dict from a mapping or a local `.pth` (read with weights_only=True) or
    `.safetensors` file, with a DataParallel `module.` prefix removed. A file holding a training
    checkpoint dict (or a DeiT release) is accepted when its `state_dict` or `model` entry is the
    state dict. `kind` names the file in the one-line errors. Returns (state, description)."""
    if isinstance(source, Mapping):
        obj: Any = source
        where = "state dict"
    else:
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise DataError(path, f"{kind} file not found (nothing is downloaded; give a local "
                                  ".pth or .safetensors file)")
        if path.suffix == ".safetensors":
            try:
                from safetensors.torch import load_file

                obj = load_file(str(path), device="cpu")
            except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
                detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise DataError(path, f"cannot read {kind} ({detail})") from None
        else:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
                raise DataError(path, f"not a PyTorch {kind} file ({_torch_load_problem(exc)})"
                                ) from None
    if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        nested = next((obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), Mapping)),
                      None)
        obj = nested if nested is not None else obj
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataError(where, "does not contain a state dict of tensors")
    return _strip_prefix(dict(obj), "module."), where


def _load_into(target: nn.Module, state: dict[str, torch.Tensor], where: str,
               key_prefix: str = "") -> LoadReport:
    own = target.state_dict()
    for key, value in state.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            raise WsssError(f"{where}: '{key_prefix}{key}' has shape {tuple(value.shape)} in the "
                            f"weights but {tuple(own[key].shape)} in the model "
                            "(wrong number of classes or architecture?)")
    report = LoadReport(
        source=where,
        loaded=[key_prefix + k for k in own if k in state],
        missing=[key_prefix + k for k in own if k not in state],
        unexpected=[k for k in state if k not in own],  # as named in the file
    )
    target.load_state_dict(state, strict=False)
    return report


def load_init_weights(model: nn.Module, source: str | Path | Mapping[str, torch.Tensor],
                      min_share: float = 0.0) -> LoadReport:
    """Load backbone init weights into `model.base` (or `model` if it has no `base`),
    non-strictly, as the original `model.base.load_state_dict(init, strict=False)`.

    Keys may come with or without the `base.` prefix. BatchNorm `num_batches_tracked` counters
    absent from the file are not reported as missing (frozen BN never reads them). A file that
    supplies fewer than `min_share` of those keys (a wrong file, or another architecture's: the
    run would silently train from scratch) is a `DataError` with the counts; 0 accepts any."""
    state, where = read_state_dict(source)
    target = unwrap(model)
    prefix = ""
    if isinstance(getattr(target, "base", None), nn.Module):
        target, prefix = target.base, "base."
        state = _strip_prefix(state, "base.")
    report = _load_into(target, state, where, key_prefix=prefix)
    report.missing = [k for k in report.missing if not k.endswith("num_batches_tracked")]
    matched = sum(1 for k in report.loaded if not k.endswith("num_batches_tracked"))
    total = matched + len(report.missing)
    if total and matched < min_share * total:
        raise DataError(where, f"init weights match only {matched} of the model's {total} keys "
                               f"({matched / total:.0%}; train.init_min_share asks for at least "
                               f"{min_share:.0%}): wrong file or architecture? (0 allows partial "
                               "loading on purpose)")
    return report


def load_init_weights_reported(model: nn.Module, source: str | Path, min_share: float = 0.0
                               ) -> LoadReport:
    """`load_init_weights`, its summary printed by the main process (what loaded, what kept its
    initialisation): the one place a run says which init it started from."""
    report = load_init_weights(model, source, min_share=min_share)
    if is_main_process():
        print(report.summary(), flush=True)
    return report


__all__ = ["build_checked", "LoadReport", "load_init_weights", "load_init_weights_reported", "read_state_dict", "unwrap",
           "freeze_batchnorm", "MSC", "MscOutputs"]
