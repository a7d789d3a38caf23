"""torchvision / timm ResNet weights → this project's Caffe-style DeepLab backbone keys.

    python -m wsss_core.models.convert_torchvision resnet101-63fe2227.pth models/init/resnet101-tv.pth

writes a state dict that `load_init_weights` (`train.init_weights`) loads into `model.base`.
The key names map one to one (torchvision's and timm's plain `resnet50/101/152` share them):

    conv1 / bn1                      → layer1.conv1.conv / layer1.conv1.bn
    layer{i}.{j}.conv1 / bn1         → layer{i+1}.block{j+1}.reduce.conv / .bn
    layer{i}.{j}.conv2 / bn2         → layer{i+1}.block{j+1}.conv3x3.conv / .bn
    layer{i}.{j}.conv3 / bn3         → layer{i+1}.block{j+1}.increase.conv / .bn
    layer{i}.{j}.downsample.0 / .1   → layer{i+1}.block{j+1}.shortcut.conv / .bn
    fc.*                             dropped (the ImageNet classifier)

What changes in the network that runs them (every tensor keeps its shape and values):
- stride placement: torchvision (ResNet v1.5) and timm stride the first block of a stage in its
  3×3 conv; the Caffe ResNet of DeepLab strides the first 1×1 (`reduce`). With output stride 8
  only `layer3.block1` is strided, so that one block sees its 3×3 conv on the subsampled map
  instead of subsampling after it (fine-tuning adapts; every other block computes exactly what
  it computed in torchvision, `tests/test_convert_torchvision.py` checks it);
- dilation: torchvision's `replace_stride_with_dilation` keeps the previous dilation in the first
  block of a dilated stage; DeepLab dilates all blocks of `layer4` by 2 and `layer5` by 4;
- the stem's max pool rounds up (Caffe's ceil mode): one more row/column on even-sized maps;
- BatchNorm epsilon: 1e-5 in torchvision, timm and `resnet.BN_EPS`, so nothing changes; the
  running statistics are used as they are (frozen BN in the paper presets).
Deep-stem variants (timm `resnet101d`: `conv1.0.weight`, ...) have no Caffe counterpart and are
refused.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from ..errors import DataError
from . import read_state_dict

_LEAF = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_STEM = re.compile(rf"^(conv1|bn1)\.{_LEAF}$")
_BLOCK = re.compile(rf"^layer([1-4])\.(\d+)\.(conv[123]|bn[123]|downsample\.[01])\.{_LEAF}$")
_PART = {"conv1": "reduce.conv", "bn1": "reduce.bn", "conv2": "conv3x3.conv", "bn2": "conv3x3.bn",
         "conv3": "increase.conv", "bn3": "increase.bn", "downsample.0": "shortcut.conv",
         "downsample.1": "shortcut.bn"}


def caffe_key(key: str) -> str | None:
    """Our key for a torchvision/timm ResNet key; None for the classifier `fc.*`. A key of
    another architecture is a ValueError."""
    if key.startswith("fc."):
        return None
    stem = _STEM.match(key)
    if stem:
        return f"layer1.conv1.{'conv' if stem[1] == 'conv1' else 'bn'}.{stem[2]}"
    block = _BLOCK.match(key)
    if block is None:
        raise ValueError(key)
    stage, index, part, leaf = block.groups()
    return f"layer{int(stage) + 1}.block{int(index) + 1}.{_PART[part]}.{leaf}"


def convert_state_dict(state: dict[str, torch.Tensor], where: str = "state dict"
                       ) -> dict[str, torch.Tensor]:
    """A torchvision/timm ResNet state dict in this project's backbone keys (no `base.`)."""
    converted, foreign = {}, []
    for key, value in state.items():
        try:
            new = caffe_key(key)
        except ValueError:
            foreign.append(key)
            continue
        if new is not None:
            converted[new] = value
    if foreign or not converted:
        shown = ", ".join(foreign[:3]) or "no ResNet keys"
        raise DataError(where, f"not a torchvision/timm ResNet state dict ({len(foreign)} other "
                               f"keys: {shown}; deep-stem variants are not supported)")
    return converted


def convert_file(source: str | Path, out: str | Path) -> int:
    """Convert `source` (.pth / .safetensors) and save it to `out`; returns the tensor count."""
    state, where = read_state_dict(source, kind="ResNet weights")
    converted = convert_state_dict(state, where)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(converted, out)
    return len(converted)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wsss_core.models.convert_torchvision",
        description="Convert torchvision/timm ResNet weights to the DeepLab (Caffe-style) layout.")
    parser.add_argument("source", type=Path, help="torchvision or timm ResNet .pth/.safetensors")
    parser.add_argument("out", type=Path, help="output .pth for train.init_weights")
    args = parser.parse_args(argv)
    try:
        count = convert_file(args.source, args.out)
    except DataError as exc:
        print(f"error: {exc}")
        return 2
    print(f"{args.out}: {count} tensors in the DeepLab layout (train.init_weights: {args.out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
