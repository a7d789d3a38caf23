"""Multi-label CAM classifiers (method `cam`): a backbone, global pooling and a 1×1 conv
classifier without bias over the K−1 foreground classes (IRN's `resnet50_cam`, CAM of Zhou et al.).

Pooling: "avg" (IRN's global average pooling) or "max" (global max pooling of the features, as
DuPL's students pool before their classifiers). With average pooling the logits are the spatial
mean of the class activation maps (the classifier is linear and bias-free); with max pooling
each class scores the per-channel maxima, which need not be at one position. Either way
`cams(images)` applies the classifier weight to every feature position (no ReLU;
`wsss_core.cam.multi_scale_cams` ReLUs and normalises). Two backbones, chosen so that the
trained weights initialise the demo networks:

    resnet   `base`: the DeepLab v2 dilated ResNet (`resnet.dilated_resnet_layers`, stride 8),
             keys `base.layer1.conv1.conv.weight`, ... — `base.state_dict()` is what
             `models.load_init_weights` loads into any DeepLab v2 model, and a DeepLab model's
             `base.*` weights load into this one the same way
    vit      `encoder`: the timm ViT of DuPL's students (`vit_seg.create_vit`, tokens of
             `vit_seg.vit_tokens`); `encoder.state_dict()` is what
             `build_dupl_model(pretrained_path=...)` loads

Both take the same input: the method's normalisation is the DeepLab one (BGR minus the caffe
mean, 0..255), and the ViT classifier turns it back into the ImageNet-normalised RGB that DuPL's
students see (`ImagenetInput`), so a ViT trained here sees exactly what it will see in DuPL.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.transforms import BGR_MEAN, IMAGENET_MEAN, IMAGENET_STD
from ..errors import ConfigError
from .vit_seg import create_vit, vit_tokens
from .resnet import checkpointed, dilated_resnet_layers, freeze_batchnorm, stage_channels

BACKBONES = ("resnet", "vit")
POOLINGS = ("avg", "max")
RESNET50_BLOCKS = (3, 4, 6, 3)
# BatchNorm trained from scratch: caffe's momentum 0.001 would leave the running statistics near
# their initial values after a short run (as the DeepLab demo does)
TRAINED_BN_MOMENTUM = 0.1


class ResNetBackbone(nn.Module):
    """DeepLab v2's `layer1`..`layer5` as direct children (the DeepLab key names); forward gives
    the stride-8 `layer5` features."""

    def __init__(self, blocks: Sequence[int], width: int, grad_checkpointing: bool = False):
        super().__init__()
        for name, layer in dilated_resnet_layers(blocks, width).items():
            self.add_module(name, layer)
        self.out_channels = stage_channels(width)[5]
        self.grad_checkpointing = grad_checkpointing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        save_memory = self.grad_checkpointing and torch.is_grad_enabled()
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4, self.layer5):
            x = checkpointed(stage, x) if save_memory else stage(x)
        return x


class ImagenetInput(nn.Module):
    """BGR-minus-caffe-mean input (the method's normalisation) → ImageNet-normalised RGB (what
    `to_imagenet_normalized` gives and DuPL's ViT is trained on). Constants, not parameters: no
    state-dict entries."""

    def __init__(self):
        super().__init__()
        rgb_mean = torch.tensor(BGR_MEAN[::-1].copy()).view(1, 3, 1, 1)
        self.register_buffer("rgb_mean", rgb_mean, persistent=False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, bgr: torch.Tensor) -> torch.Tensor:
        rgb = (bgr.flip(1) + self.rgb_mean) / 255.0
        return (rgb - self.mean) / self.std


class CamClassifier(nn.Module):
    """Backbone features → 1×1 conv `classifier` (D → K−1, no bias). Subclasses define
    `features(images) -> (B, D, h, w)`."""

    classifier: nn.Conv2d
    pooling: str = "avg"

    def features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, K−1) logits: the classifier on the globally pooled features (`pooling`)."""
        features = self.features(images)
        pool = F.adaptive_max_pool2d if self.pooling == "max" else F.adaptive_avg_pool2d
        pooled = pool(features, 1)
        return self.classifier(pooled).flatten(1)

    def cams(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw CAM, raw CAM): the classifier weight at every feature position, (B, K−1, h, w),
        no ReLU. The second map is the interface's auxiliary CAM (DuPL's students have two);
        this classifier has one, returned twice."""
        cam = F.conv2d(self.features(images), self.classifier.weight)
        return cam, cam


class ResNetCam(CamClassifier):
    """CAM classifier on DeepLab v2's dilated ResNet (`base`). With `freeze_bn`, `train()` leaves
    BatchNorm in eval mode (a pretrained init, as IRN); otherwise BatchNorm learns."""

    def __init__(self, num_classes: int, blocks: Sequence[int], width: int, freeze_bn: bool,
                 grad_checkpointing: bool = False, pooling: str = "avg"):
        super().__init__()
        self.pooling = pooling
        self.base = ResNetBackbone(blocks, width, grad_checkpointing)
        self.classifier = nn.Conv2d(self.base.out_channels, num_classes - 1, 1, bias=False)
        # IRN initialises the CAM classifier with Xavier-uniform
        nn.init.xavier_uniform_(self.classifier.weight)
        self.freeze_bn = freeze_bn
        if not freeze_bn:
            for module in self.base.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.momentum = TRAINED_BN_MOMENTUM

    def train(self, mode: bool = True) -> ResNetCam:
        super().train(mode)
        if mode and self.freeze_bn:
            freeze_batchnorm(self)
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.base(images)


class VitCam(CamClassifier):
    """CAM classifier on the ViT of DuPL's students (`encoder`, final normed patch tokens)."""

    def __init__(self, num_classes: int, vit_name: str, grad_checkpointing: bool = False,
                 pooling: str = "avg", **vit_overrides: int | None):
        super().__init__()
        self.pooling = pooling
        self.to_imagenet = ImagenetInput()
        self.encoder = create_vit(vit_name, **vit_overrides)
        self.encoder.set_grad_checkpointing(grad_checkpointing)
        self.classifier = nn.Conv2d(int(self.encoder.embed_dim), num_classes - 1, 1, bias=False)
        nn.init.xavier_uniform_(self.classifier.weight)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return vit_tokens(self.encoder, self.to_imagenet(images), aux_layer=-1)[0]


def build_cam_classifier(num_classes: int, backbone: str = "resnet",
                         blocks: Sequence[int] | None = None, width: int | None = None,
                         freeze_bn: bool | None = None, vit_name: str | None = None,
                         patch_size: int | None = None, depth: int | None = None,
                         embed_dim: int | None = None, num_heads: int | None = None,
                         grad_checkpointing: bool = False, pooling: str = "avg") -> CamClassifier:
    """The CAM classifier of `backbone` for `num_classes` (background included; the classifier
    has K−1 outputs). resnet takes `blocks` (default ResNet-50's [3, 4, 6, 3]), `width` (64) and
    `freeze_bn` (False); vit takes `vit_name` (a timm ViT, default deit_tiny_patch16_224) and
    DuPL's `patch_size`, `depth`, `embed_dim`, `num_heads` overrides; both take `pooling`
    ("avg" | "max"). A parameter of the other backbone is a ConfigError rather than silently
    ignored."""
    if backbone not in BACKBONES:
        raise ConfigError(f"params.yaml: train.method_options.backbone: '{backbone}' is not one "
                          f"of {', '.join(BACKBONES)}")
    if pooling not in POOLINGS:
        raise ConfigError(f"cam classifier: pooling '{pooling}' is not one of "
                          f"{', '.join(POOLINGS)}")
    if num_classes < 2:
        raise ConfigError(f"a CAM classifier needs at least 2 classes, got {num_classes}")
    resnet_params = {"blocks": blocks, "width": width, "freeze_bn": freeze_bn}
    vit_params = {"vit_name": vit_name, "patch_size": patch_size, "depth": depth,
                  "embed_dim": embed_dim, "num_heads": num_heads}
    other = vit_params if backbone == "resnet" else resnet_params
    wrong = [name for name, value in other.items() if value is not None]
    if wrong:
        raise ConfigError(f"model parameter '{wrong[0]}' is not used by the cam method's "
                          f"backbone '{backbone}'")
    if backbone == "resnet":
        return ResNetCam(num_classes, list(blocks or RESNET50_BLOCKS), int(width or 64),
                         bool(freeze_bn), grad_checkpointing, pooling)
    return VitCam(num_classes, vit_name or "deit_tiny_patch16_224", grad_checkpointing, pooling,
                  patch_size=patch_size, depth=depth, embed_dim=embed_dim, num_heads=num_heads)


__all__ = ["BACKBONES", "POOLINGS", "CamClassifier", "ImagenetInput", "ResNetBackbone", "ResNetCam",
           "VitCam", "build_cam_classifier"]
