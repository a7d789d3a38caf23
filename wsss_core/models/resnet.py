"""Caffe/MSRA-style dilated ResNet: the DeepLab v2 backbone (output stride 8).

The module layout mirrors kazuto1011/deeplab-pytorch so that its checkpoints (and the Caffe
conversions of DeepLab's ResNet-101 init weights) load by key name:

    layer1            stem: conv1 (7x7/2 ConvBnReLU) + pool (3x3/2 max pool, ceil mode)
    layer2..layer5    bottleneck stages; blocks are named block1, block2, ...
    blockK            reduce (1x1, carries the stride) / conv3x3 (dilated) / increase (1x1, no
                      ReLU) / shortcut (1x1 conv + BN on the first block of every stage)
    ConvBnReLU        children conv (bias-free), bn, relu (absent when no ReLU follows)

All channel counts scale with `width` (the stem width, 64 in ResNet-101); stage widths are
4, 8, 16, 32 times `width` and each bottleneck's middle width is a quarter of its output.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

RESNET101_BLOCKS = (3, 4, 23, 3)
# Caffe's BatchNorm "moving_average_fraction" 0.999; irrelevant while BN is frozen.
BN_MOMENTUM = 1 - 0.999
BN_EPS = 1e-5


def stage_channels(width: int = 64) -> list[int]:
    """Output channels of [stem, -, layer2, layer3, layer4, layer5] for a stem `width`."""
    return [width * 2**power for power in range(6)]


class ConvBnReLU(nn.Sequential):
    """Bias-free conv → BatchNorm → optional ReLU (children `conv`, `bn`, `relu`)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int, padding: int,
                 dilation: int, relu: bool = True):
        super().__init__()
        self.add_module("conv", nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, dilation,
                                          bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_ch, eps=BN_EPS, momentum=BN_MOMENTUM))
        if relu:
            self.add_module("relu", nn.ReLU())


class Bottleneck(nn.Module):
    """1x1 reduce (strided) → 3x3 dilated → 1x1 increase, plus identity/projection shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, dilation: int, project: bool):
        super().__init__()
        mid_ch = out_ch // 4
        self.reduce = ConvBnReLU(in_ch, mid_ch, 1, stride, 0, 1)
        self.conv3x3 = ConvBnReLU(mid_ch, mid_ch, 3, 1, dilation, dilation)
        self.increase = ConvBnReLU(mid_ch, out_ch, 1, 1, 0, 1, relu=False)
        self.shortcut = ConvBnReLU(in_ch, out_ch, 1, stride, 0, 1, relu=False) if project \
            else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.increase(self.conv3x3(self.reduce(x)))
        return torch.relu(out + self.shortcut(x))


class ResLayer(nn.Sequential):
    """`num_blocks` bottlenecks; the first one changes width/stride and has a projection."""

    def __init__(self, num_blocks: int, in_ch: int, out_ch: int, stride: int, dilation: int):
        super().__init__()
        for index in range(num_blocks):
            first = index == 0
            block = Bottleneck(in_ch if first else out_ch, out_ch, stride if first else 1,
                               dilation, project=first)
            self.add_module(f"block{index + 1}", block)


class Stem(nn.Sequential):
    """7x7/2 conv + 3x3/2 max pool with ceil mode (as the Caffe model)."""

    def __init__(self, out_ch: int):
        super().__init__()
        self.add_module("conv1", ConvBnReLU(3, out_ch, 7, 2, 3, 1))
        self.add_module("pool", nn.MaxPool2d(3, 2, 1, ceil_mode=True))


def dilated_resnet_layers(blocks: Sequence[int] = RESNET101_BLOCKS,
                          width: int = 64) -> OrderedDict[str, nn.Module]:
    """The modules `layer1`..`layer5` of DeepLab v2's ResNet (stride 8: dilation 2 and 4 in the
    last two stages, no multi-grid). Returned as a mapping so that a model can register them as
    its own direct children, which is what gives the upstream key names."""
    if len(blocks) != 4 or any(int(n) < 1 for n in blocks):
        raise ValueError(f"blocks must be four positive block counts, got {list(blocks)}")
    if width < 4 or width % 4:
        raise ValueError(f"width must be a positive multiple of 4, got {width}")
    ch = stage_channels(width)
    return OrderedDict([
        ("layer1", Stem(ch[0])),
        ("layer2", ResLayer(blocks[0], ch[0], ch[2], stride=1, dilation=1)),
        ("layer3", ResLayer(blocks[1], ch[2], ch[3], stride=2, dilation=1)),
        ("layer4", ResLayer(blocks[2], ch[3], ch[4], stride=1, dilation=2)),
        ("layer5", ResLayer(blocks[3], ch[4], ch[5], stride=1, dilation=4)),
    ])


def feature_size(side: int) -> int:
    """Side of the stride-8 feature map for an input side (7x7/2 conv, ceil-mode pool, /2)."""
    after_conv = (side - 1) // 2 + 1
    after_pool = -(-(after_conv - 1) // 2) + 1
    return (after_pool - 1) // 2 + 1


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Put every BatchNorm layer of `module` in eval mode (running statistics are used and never
    updated); call after `module.train()`. Returns `module`."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.eval()
    return module


@contextmanager
def _running_stats_kept(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers of `module` in training mode normalise with the batch statistics as
    usual but leave their running statistics (and counters) as they were."""
    layers = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
              and m.training and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in layers]
    for layer in layers:
        layer.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
    try:
        yield
    finally:
        for layer, (momentum, count) in zip(layers, saved):
            layer.momentum = momentum
            layer.num_batches_tracked.copy_(count)


def checkpointed(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`module(x)` keeping only its input for backward (activations recomputed there; PyTorch's
    non-reentrant checkpoint, RNG state restored). The recomputation must not move trained
    BatchNorm statistics a second time, so they are held still while it runs."""
    return checkpoint(module, x, use_reentrant=False,
                      context_fn=lambda: (nullcontext(), _running_stats_kept(module)))
