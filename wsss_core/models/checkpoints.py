"""Trained checkpoints from elsewhere (`infer.weights`): detect the key layout, map it to ours.

One `CheckpointLayout` per family of released files, each with the test on its keys and the
mapping onto this project's state-dict keys (after `read_state_dict` has dropped a DDP /
DataParallel `module.` prefix and unwrapped a `{"state_dict": ...}` / `{"model": ...}` dict):

    wsss      this project's model.pth, kazuto1011/deeplab-pytorch's and zbf1991/CDL's
              `.pth` (the MSC module's state dict: `base.layer4.block7.conv3x3.conv.weight`,
              `base.aspp.c0.weight`, CDL's `base.aspp_2nd.*`, `base.affinity_3rd.*`) and
              Wu0409/DuPL's `checkpoint.pth` (`siamese_network`, both students in one file:
              `branch1.encoder.blocks.0.attn.qkv.weight`, `branch2.decoder.conv6.weight`,
              `branch1.classifier.weight`, `branch1.aux_classifier.weight`): our modules carry
              the original names, so the keys map to themselves
    toco      rulixiang/ToCo's `model_iter_*.pth` (one `network`: `encoder.*`, `classifier.weight`,
              `aux_classifier.weight`, `decoder.conv6/7/8.weight`, plus the projection heads
              `proj_head.*` / `proj_head_t.*` of its CTC loss, unused at test time and dropped):
              the one network becomes both DuPL students (they then score the same)

The load is strict: every key of the model must come from the file and every kept key of the
file must go into the model, with the same shape. The one exception is BatchNorm's
`num_batches_tracked` counter, absent from Caffe conversions and files saved by PyTorch < 0.4.1
(inference never reads it). Anything else is a one-line `DataError` naming the file and the
first unmatched keys.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import DataError
from . import read_state_dict, unwrap

State = dict[str, torch.Tensor]
SHOWN_KEYS = 3  # unmatched keys named in an error


def _identity(state: State) -> State:
    return state


TOCO_UNUSED_PREFIXES = ("proj_head.", "proj_head_t.")
TOCO_PARTS = ("encoder.", "classifier.", "aux_classifier.", "decoder.")


def _is_toco(keys: list[str]) -> bool:
    return any(k.startswith("encoder.") for k in keys) and all(
        k.startswith(TOCO_PARTS + TOCO_UNUSED_PREFIXES) for k in keys)


def _toco_to_dupl(state: State) -> State:
    kept = {k: v for k, v in state.items() if not k.startswith(TOCO_UNUSED_PREFIXES)}
    return {f"{branch}.{key}": value.clone() if branch == "branch2" else value
            for branch in ("branch1", "branch2") for key, value in kept.items()}


@dataclass(frozen=True)
class CheckpointLayout:
    name: str
    description: str
    matches: Callable[[list[str]], bool]
    to_ours: Callable[[State], State]


# most specific first; `wsss` takes whatever the others do not claim (the strict load decides)
LAYOUTS = (
    CheckpointLayout("toco", "rulixiang/ToCo network (one ViT student)", _is_toco, _toco_to_dupl),
    CheckpointLayout("wsss", "this project / deeplab-pytorch / CDL / DuPL keys",
                     lambda keys: True, _identity),
)


def detect_layout(keys: list[str]) -> CheckpointLayout:
    return next(layout for layout in LAYOUTS if layout.matches(keys))


def _first(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (f" (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else "")


def load_trained_weights(model: nn.Module, source: str | Path | Mapping[str, torch.Tensor]
                         ) -> CheckpointLayout:
    """Load a trained checkpoint of any supported layout into `model`, strictly (see the module
    docstring). Returns the detected layout; a mismatch is a one-line `DataError`."""
    state, where = read_state_dict(source, kind="checkpoint")
    layout = detect_layout(list(state))
    state = layout.to_ours(state)
    target = unwrap(model)
    own = target.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        problems = [f"{len(keys)} {what} ({_first(keys)})"
                    for what, keys in (("model keys not in the file", missing),
                                       ("file keys not in the model", unexpected)) if keys]
        raise DataError(where, f"checkpoint ({layout.name} layout) does not fit the "
                               f"configured model: {'; '.join(problems)}")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and state[k].shape != own[k].shape]
    if wrong:
        raise DataError(where, f"checkpoint ({layout.name} layout): {len(wrong)} tensors of "
                               f"another shape than the model's, file vs model: {_first(wrong)} "
                               "(number of classes or architecture?)")
    target.load_state_dict(state, strict=False)
    return layout


__all__ = ["CheckpointLayout", "LAYOUTS", "detect_layout", "load_trained_weights"]
