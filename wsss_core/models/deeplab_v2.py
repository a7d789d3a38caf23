"""DeepLab v2 (dilated ResNet + ASPP) with the MSC multi-scale wrapper, and CDL's extra heads.

One shared backbone, heads per method (spec cdl.md §1):

    baseline  aspp                                   (kazuto1011/deeplab-pytorch)
    cdl_b     aspp (expert 1), aspp_2nd (expert 2), affinity_3rd (embedding, cosine map)
    cdl_e     cdl_b's heads + aspp_3rd on the strong photometric view; dot-product map and
              Dropout2d(0.5) in the affinity branches

State-dict keys are those of the original code (`base.layer4.block7.conv3x3.conv.weight`,
`base.aspp.c0.weight`, `base.aspp_2nd.*`, `base.aspp_3rd.*`, `base.affinity_3rd.*`), so upstream
DeepLab and CDL checkpoints load unchanged.

Outputs
-------
`MSC.forward` in training mode returns an `MscOutputs`; every field is a list with one entry
per MSC output, in the order ``[scale 1.0, scales[0], scales[1], ..., max-fused]`` (`names`
gives labels such as ``["1.0", "0.5", "0.75", "max"]``). Scaled entries keep their own
resolution; the fused entry has the size of the 1.0 entry. Fields:

    main             (B, C, h, w) logits of `aspp` (expert 1; the baseline's only head)
    second           (B, C, h, w) logits of `aspp_2nd` (expert 2)            CDL only, else None
    third            (B, C, h, w) logits of `aspp_3rd` on the strong view     CDL-e only
    affinity         (B, N, N) affinity map A of the (weak) images, N = h*w   CDL only
                     (row-major pixel index; for the fused entry A is computed from the mean of
                     the embeddings of all scales upsampled to the 1.0 grid)
    affinity_strong  (B, N, N) map of the strong view                        CDL-e only

In eval mode `forward` returns the test-time logits (B, C, h, w) at the 1.0 feature
resolution, exactly what `predict` returns: the element-wise max over scales {1.0} ∪
`test_scales` of the test head's logits (`aspp` for baseline/CDL-b, `aspp_3rd` for CDL-e, run on
the clean image), divided by `test_divisor` (2 for CDL, 1 for the baseline, as in the originals).

Batch norm is frozen: while `freeze_bn` is true, `train()` leaves every BatchNorm layer in eval
mode (the original calls `freeze_bn()` once after `model.train()`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import RESNET101_BLOCKS, checkpointed, dilated_resnet_layers, freeze_batchnorm, stage_channels

ATROUS_RATES = (6, 12, 18, 24)
DEFAULT_MSC_SCALES = (0.5, 0.75)
VARIANTS = ("baseline", "cdl_b", "cdl_e")


# --------------------------------------------------------------------------- heads
class ASPP(nn.Module):
    """DeepLab v2 classifier: parallel dilated 3x3 convs (`c0`, `c1`, ...), outputs summed."""

    def __init__(self, in_ch: int, num_classes: int, rates: Sequence[int] = ATROUS_RATES):
        super().__init__()
        for index, rate in enumerate(rates):
            conv = nn.Conv2d(in_ch, num_classes, 3, 1, padding=rate, dilation=rate, bias=True)
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.zeros_(conv.bias)
            self.add_module(f"c{index}", conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = iter(self.children())
        logits = next(branches)(x)
        for branch in branches:
            logits = logits + branch(x)
        return logits


class AffinityHead(nn.Module):
    """CDL's relationship-transfer embedding from the layer2..layer5 features.

    Each input goes through 1x1 conv (no bias) → BN → ReLU (→ Dropout2d in CDL-e) to
    embed_dim/4, /4, /2, /1 channels; the concatenation is projected by a 1x1 conv to embed_dim.
    The branches are registered twice, as `aff_module.<k>` and as `aff_conv_<k+2>`, because the
    original registers them under both names and its checkpoints hold both copies of each key.
    """

    def __init__(self, in_channels: Sequence[int], embed_dim: int, dropout: float = 0.0):
        super().__init__()
        out_channels = [embed_dim // 4, embed_dim // 4, embed_dim // 2, embed_dim]
        self.aff_module = nn.ModuleList()
        branches = []
        for level, (cin, cout) in enumerate(zip(in_channels, out_channels), start=2):
            layers = [nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout2d(dropout))
            branch = nn.Sequential(*layers)
            self.add_module(f"aff_conv_{level}", branch)
            branches.append(branch)
        for branch in branches:
            self.aff_module.append(branch)
        self.reduce_dim = nn.Conv2d(sum(out_channels), embed_dim, 1, bias=False)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        embedded = [branch(f) for branch, f in zip(self.aff_module, features)]
        return self.reduce_dim(torch.cat(embedded, dim=1))


def affinity_cosine(embedding: torch.Tensor) -> torch.Tensor:
    """CDL-b map: A[b, i, j] = sigmoid(f_i·f_j / (|f_i| |f_j| + 1e-5)), shape (B, N, N)."""
    flat = embedding.flatten(2)                                     # (B, D, N)
    norms = flat.norm(p=2, dim=1, keepdim=True)                     # (B, 1, N)
    dots = torch.bmm(flat.transpose(1, 2), flat)
    return torch.sigmoid(dots / (torch.bmm(norms.transpose(1, 2), norms) + 1e-5))


def affinity_dot(embedding: torch.Tensor) -> torch.Tensor:
    """CDL-e map: A[b, i, j] = sigmoid(f_i·f_j) (no normalisation), shape (B, N, N)."""
    flat = embedding.flatten(2)
    return torch.sigmoid(torch.bmm(flat.transpose(1, 2), flat))


AFFINITY_MAPS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "cosine": affinity_cosine, "dot": affinity_dot}


# --------------------------------------------------------------------------- one scale
@dataclass
class ScaleOutputs:
    """What the base network returns for one input scale (see `DeepLabV2.forward`)."""

    main: torch.Tensor
    second: torch.Tensor | None = None
    third: torch.Tensor | None = None
    embedding: torch.Tensor | None = None
    embedding_strong: torch.Tensor | None = None


def _dense(outputs: ScaleOutputs) -> ScaleOutputs:
    """Outputs in the default (contiguous) layout, whatever layout the convolutions used: the
    losses reshape them with `view`."""
    return dataclasses.replace(outputs, **{
        f.name: getattr(outputs, f.name).contiguous() for f in dataclasses.fields(outputs)
        if getattr(outputs, f.name) is not None})


class DeepLabV2(nn.Module):
    """DeepLab v2 for one scale: `layer1`..`layer5`, `aspp` and the variant's extra heads.

    Memory savers (same results): `grad_checkpointing` keeps only each ResNet stage's input for
    backward and recomputes the stage there (`resnet.checkpointed`); `channels_last` runs the
    convolutions in NHWC (the model's weights are converted by the builder, the inputs here)."""

    def __init__(self, num_classes: int, variant: str = "baseline",
                 blocks: Sequence[int] = RESNET101_BLOCKS, width: int = 64,
                 atrous_rates: Sequence[int] = ATROUS_RATES, grad_checkpointing: bool = False,
                 channels_last: bool = False):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown DeepLab variant {variant!r} (expected one of {VARIANTS})")
        self.variant = variant
        self.grad_checkpointing = grad_checkpointing
        self.channels_last = channels_last
        for name, layer in dilated_resnet_layers(blocks, width).items():
            self.add_module(name, layer)
        ch = stage_channels(width)
        self.aspp = ASPP(ch[5], num_classes, atrous_rates)
        if variant in ("cdl_b", "cdl_e"):
            self.aspp_2nd = ASPP(ch[5], num_classes, atrous_rates)
        if variant == "cdl_e":
            self.aspp_3rd = ASPP(ch[5], num_classes, atrous_rates)
        if variant in ("cdl_b", "cdl_e"):
            # embed_dim 128 for the standard width 64 (scaled with it for narrow demo models)
            self.affinity_3rd = AffinityHead(ch[2:6], embed_dim=2 * width,
                                             dropout=0.5 if variant == "cdl_e" else 0.0)

    def backbone(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of layer2, layer3, layer4, layer5 (strides 4, 8, 8, 8)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        save_memory = self.grad_checkpointing and torch.is_grad_enabled()
        features = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4, self.layer5):
            x = checkpointed(stage, x) if save_memory else stage(x)
            features.append(x)
        return features[1:]

    def embed(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Affinity embedding; its inputs are detached so this head never trains the backbone."""
        x2, x3, x4, x5 = (f.detach() for f in features)
        x2 = F.interpolate(x2, size=x5.shape[-2:], mode="bilinear", align_corners=False)
        return self.affinity_3rd([x2, x3, x4, x5])

    def forward(self, images: torch.Tensor, strong_images: torch.Tensor | None = None
                ) -> ScaleOutputs:
        if self.variant == "cdl_e":
            if strong_images is None:
                raise ValueError("cdl_e needs the strong photometric view in training")
            batch = images.shape[0]
            features = self.backbone(torch.cat([images, strong_images], dim=0))
            top = features[3]
            embedding = self.embed(features)
            return _dense(ScaleOutputs(
                main=self.aspp(top[:batch]), second=self.aspp_2nd(top[:batch]),
                third=self.aspp_3rd(top[batch:]), embedding=embedding[:batch],
                embedding_strong=embedding[batch:]))
        features = self.backbone(images)
        top = features[3]
        if self.variant == "cdl_b":
            return _dense(ScaleOutputs(main=self.aspp(top), second=self.aspp_2nd(top),
                                       embedding=self.embed(features)))
        return _dense(ScaleOutputs(main=self.aspp(top)))

    def test_head_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of the head used at test time (`aspp`; `aspp_3rd` for CDL-e) for one scale.
        CDL-e's original feeds [image, image] and keeps aspp_3rd of the second copy; with frozen
        BN that equals aspp_3rd of the image itself, so only one copy is computed."""
        top = self.backbone(images)[3]
        return (self.aspp_3rd(top) if self.variant == "cdl_e" else self.aspp(top)).contiguous()


# --------------------------------------------------------------------------- MSC
@dataclass
class MscOutputs:
    """Training-mode outputs, one list entry per MSC output (see the module docstring)."""

    names: list[str]
    main: list[torch.Tensor]
    second: list[torch.Tensor] | None = None
    third: list[torch.Tensor] | None = None
    affinity: list[torch.Tensor] | None = None
    affinity_strong: list[torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.main)


def upsample_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def max_fuse(per_scale: Sequence[torch.Tensor]) -> torch.Tensor:
    """Element-wise max of [full-scale, other scales upsampled to the full-scale size]."""
    size = per_scale[0].shape[-2:]
    return torch.stack([per_scale[0]] + [upsample_to(t, size) for t in per_scale[1:]]).amax(0)


def mean_fuse(per_scale: Sequence[torch.Tensor]) -> torch.Tensor:
    """Element-wise mean of [full-scale, other scales upsampled to the full-scale size]."""
    size = per_scale[0].shape[-2:]
    return torch.stack([per_scale[0]] + [upsample_to(t, size) for t in per_scale[1:]]).mean(0)


def rescale(images: torch.Tensor, scale: float) -> torch.Tensor:
    """Bilinear input rescaling of the MSC wrapper (output side floor(side * scale))."""
    return F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)


class MSC(nn.Module):
    """Multi-scale wrapper: runs `base` at scale 1.0 and at each of `scales`, fuses by max.

    `affinity` names the pairwise map of the CDL variants ("cosine" for CDL-b, "dot" for CDL-e,
    None for the baseline); `test_divisor` divides the test-time logits (2 in CDL)."""

    def __init__(self, base: nn.Module, scales: Sequence[float] = DEFAULT_MSC_SCALES,
                 test_scales: Sequence[float] = DEFAULT_MSC_SCALES,
                 affinity: str | None = None, test_divisor: float = 1.0,
                 freeze_bn: bool = True):
        super().__init__()
        self.base = base
        self.scales = [float(s) for s in scales]
        self.test_scales = [float(s) for s in test_scales]
        self.affinity_map = AFFINITY_MAPS[affinity] if affinity else None
        self.test_divisor = float(test_divisor)
        self.freeze_bn = freeze_bn

    def train(self, mode: bool = True) -> MSC:
        super().train(mode)
        if mode and self.freeze_bn:
            freeze_batchnorm(self)
        return self

    def forward(self, images: torch.Tensor, strong_images: torch.Tensor | None = None):
        if not self.training:
            return self.test_logits(images)
        per_scale = [self.base(images, strong_images)]
        for scale in self.scales:
            strong = rescale(strong_images, scale) if strong_images is not None else None
            per_scale.append(self.base(rescale(images, scale), strong))
        return self._collect(per_scale)

    def _collect(self, per_scale: list[ScaleOutputs]) -> MscOutputs:
        names = ["1.0"] + [f"{s:g}" for s in self.scales] + ["max"]

        def head(field: str) -> list[torch.Tensor] | None:
            values = [getattr(out, field) for out in per_scale]
            if values[0] is None:
                return None
            return values + [max_fuse(values)]

        def affinity(field: str) -> list[torch.Tensor] | None:
            embeddings = [getattr(out, field) for out in per_scale]
            if embeddings[0] is None or self.affinity_map is None:
                return None
            maps = [self.affinity_map(e) for e in embeddings]
            return maps + [self.affinity_map(mean_fuse(embeddings))]

        return MscOutputs(names=names, main=head("main"), second=head("second"),
                          third=head("third"), affinity=affinity("embedding"),
                          affinity_strong=affinity("embedding_strong"))

    def test_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Test-time logits (B, C, h, w) with gradient tracking as the caller has it."""
        logits = [self.base.test_head_logits(images)]
        logits += [self.base.test_head_logits(rescale(images, s)) for s in self.test_scales]
        fused = max_fuse(logits)
        return fused / self.test_divisor if self.test_divisor != 1.0 else fused

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The method's test-time logits for a batch of normalised images (call `eval()` first):
        MSC max over {1.0} ∪ test_scales of the test head, / test_divisor; (B, C, h, w) at
        stride 8."""
        return self.test_logits(images)


# --------------------------------------------------------------------------- builders
def _build(variant: str, num_classes: int, blocks: Sequence[int], width: int,
           msc_scales: Sequence[float], test_scales: Sequence[float],
           freeze_bn: bool = True, grad_checkpointing: bool = False,
           channels_last: bool = False) -> MSC:
    base = DeepLabV2(num_classes, variant, blocks=blocks, width=width,
                     grad_checkpointing=grad_checkpointing, channels_last=channels_last)
    affinity = {"baseline": None, "cdl_b": "cosine", "cdl_e": "dot"}[variant]
    # CDL divides its test logits by 2 (a softmax temperature for the CRF); upstream does not.
    divisor = 1.0 if variant == "baseline" else 2.0
    model = MSC(base, scales=msc_scales, test_scales=test_scales, affinity=affinity,
                test_divisor=divisor, freeze_bn=freeze_bn)
    # weights loaded later (init, checkpoints) are copied into these tensors and keep the layout
    return model.to(memory_format=torch.channels_last) if channels_last else model


def build_baseline(num_classes: int, blocks: Sequence[int] = RESNET101_BLOCKS, width: int = 64,
                   msc_scales: Sequence[float] = DEFAULT_MSC_SCALES,
                   test_scales: Sequence[float] = DEFAULT_MSC_SCALES,
                   freeze_bn: bool = True, grad_checkpointing: bool = False,
                   channels_last: bool = False) -> MSC:
    """kazuto1011's DeepLabV2_ResNet101_MSC (for the default blocks/width); the memory savers
    `grad_checkpointing` and `channels_last` are described in `DeepLabV2`."""
    return _build("baseline", num_classes, blocks, width, msc_scales, test_scales, freeze_bn,
                  grad_checkpointing, channels_last)


def build_cdl_b(num_classes: int, blocks: Sequence[int] = RESNET101_BLOCKS, width: int = 64,
                msc_scales: Sequence[float] = DEFAULT_MSC_SCALES,
                test_scales: Sequence[float] = DEFAULT_MSC_SCALES, freeze_bn: bool = True,
                grad_checkpointing: bool = False, channels_last: bool = False) -> MSC:
    """CDL-b: experts `aspp`/`aspp_2nd` and the cosine affinity head. `test_scales` defaults to
    [0.5, 0.75] whatever `msc_scales` is, as in the original test command."""
    return _build("cdl_b", num_classes, blocks, width, msc_scales, test_scales, freeze_bn,
                  grad_checkpointing, channels_last)


def build_cdl_e(num_classes: int, blocks: Sequence[int] = RESNET101_BLOCKS, width: int = 64,
                msc_scales: Sequence[float] = DEFAULT_MSC_SCALES,
                test_scales: Sequence[float] = DEFAULT_MSC_SCALES, freeze_bn: bool = True,
                grad_checkpointing: bool = False, channels_last: bool = False) -> MSC:
    """CDL-e: CDL-b's heads plus `aspp_3rd` on the strong view (the test head), dot-product
    affinity with dropout. Training-mode forward needs `strong_images`."""
    return _build("cdl_e", num_classes, blocks, width, msc_scales, test_scales, freeze_bn,
                  grad_checkpointing, channels_last)
