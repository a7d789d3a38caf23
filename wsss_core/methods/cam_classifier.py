"""Method `cam`: a multi-label image classifier whose class activation maps segment (CAM, Zhou
et al. 2016; IRN's first step, Ahn et al. 2019), learning from image-level labels.

Training: the multi-label soft margin loss of the classifier's K−1 foreground logits against
the image's multi-hot label (IRN/DuPL), random scale-crop-flip of the image (the DeepLab
augmentation, labels ignored), SGD (IRN) or AdamW, poly LR with an optional linear warm-up;
the classifier learns at `head_lr_mult` × the backbone's lr (IRN: 10×).

Test time ("CAM only" baseline through infer/crf/report): the image-level labels are unknown,
so the classes present are those the classifier itself scores above
`presence_threshold` (sigmoid > 0.5); their multi-scale + flip CAMs, min-max normalised
(`wsss_core.cam.multi_scale_cams`), compete with a constant background score
`bkg_threshold`; absent classes score 0. The stored logits are the logs of these scores, so the
CRF's softmax gives the scores normalised over classes.

Backbones (`backbone` option; model in `wsss_core.models.classifier`): "resnet", DeepLab v2's
dilated ResNet, and "vit", DuPL's student ViT; their trained backbones initialise the demo
DeepLab and DuPL (the pretraining, `pretrain/`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..cam import multi_scale_cams
from ..cam.quality import cam_confusions
from ..data.transforms import deeplab_train_crop, to_bgr_mean_subtracted
from ..errors import ConfigError
from ..metrics import mean_average_precision
from ..models import build_checked, load_init_weights_reported, unwrap
from ..models.classifier import build_cam_classifier
from ..models.demo import DEMO_RESNET, DEMO_VIT
from ..models.vit_seg import load_vit_weights
from ..schedules import poly_factor_with_warmup
from .registry import MethodRecord, method_options, register_method


@dataclass
class CamOptions:
    """`train.method_options` of method `cam`."""

    backbone: Literal["resnet", "vit"] = "resnet"
    # test time: constant background score against the min-max normalised CAMs (IRN's
    # cam_eval_thres 0.15 is for its ResNet-50; 0.25 suits the demo)
    bkg_threshold: float = 0.25
    # test time: a class is present when the classifier's sigmoid exceeds this
    presence_threshold: float = 0.5
    # CAM scales at test time (each with its flip; 1.0 always included)
    cam_scales: list[float] = field(default_factory=lambda: [1.0, 0.5, 1.5])
    # lr multiplier of the 1×1 classifier over the backbone's (IRN: 10)
    head_lr_mult: float = 10.0

    def __post_init__(self):
        if not 0.0 < self.bkg_threshold < 1.0:
            raise ValueError(f"bkg_threshold must be in (0, 1), got {self.bkg_threshold}")
        if not 0.0 < self.presence_threshold < 1.0:
            raise ValueError(f"presence_threshold must be in (0, 1), got {self.presence_threshold}")
        if not self.cam_scales or any(s <= 0 for s in self.cam_scales):
            raise ValueError(f"cam_scales must be positive, got {self.cam_scales}")
        if self.head_lr_mult <= 0:
            raise ValueError(f"head_lr_mult must be > 0, got {self.head_lr_mult}")


_COMMON = {
    "iter_size": 1, "lr_step": 1, "lr_power": 0.9, "warmup_iter": 0, "momentum": 0.9,
    "num_workers": 2, "method_options": {}, "init_weights": "", "init_min_share": 0.5,
}

CAM_PRESETS = {
    # CPU demo on the synthetic data: the demo DeepLab's ResNet ([1, 1, 1, 1], width 16),
    # initialised by the synthetic pretraining (pretrain/dvc.yaml, which trains this preset from
    # scratch: train.init_weights ""), BatchNorm learning; gradient clipping and a warm-up as the
    # demo DeepLab's
    "demo": {
        **_COMMON, "init_weights": "models/init/demo_resnet.pth",
        "iterations": 300, "batch_size": 16, "crop": 96, "optimizer": "sgd", "lr": 0.05,
        "weight_decay": 1e-4, "warmup_iter": 30, "grad_clip": 5.0, "train_scales": [0.75, 1.0, 1.25],
        "checkpoint_every": 100, "log_every": 10, "num_workers": 0,
        "model": {**DEMO_RESNET, "freeze_bn": False},
    },
    # CPU demo with DuPL's demo student ViT (4 blocks of width 128, 8-px patches): AdamW as DuPL;
    # from scratch lr 1e-3 beats DuPL's demo 5e-4 (val mAP 0.41 vs 0.31 after 150 iterations of
    # the pretraining set)
    "demo_vit": {
        **_COMMON, "init_weights": "models/init/demo_vit.pth",
        "iterations": 300, "batch_size": 16, "crop": 96, "optimizer": "adamw", "lr": 1e-3,
        "weight_decay": 0.01, "warmup_iter": 30, "grad_clip": 5.0, "train_scales": [0.75, 1.0, 1.25],
        "checkpoint_every": 100, "log_every": 10, "num_workers": 0,
        "method_options": {"backbone": "vit", "head_lr_mult": 1.0},
        "model": dict(DEMO_VIT),
    },
    # IRN's ResNet-50 CAM (jiwoon-ahn/irn run_sample.py / train_cam.py): 5 epochs of the 1464
    # VOC train images at batch 16 (~460 iterations), SGD lr 0.1 (classifier 10×), weight decay
    # 1e-4, poly 0.9, crop 512, rescale ~ resize_long(320, 640) of ~500-px images, frozen BN
    # around ImageNet statistics. Differences: DeepLab v2's dilated stride-8 ResNet instead of
    # IRN's stride-16 one; init from a local ImageNet ResNet-50 converted with
    # wsss_core.models.convert_torchvision
    "voc": {
        **_COMMON,
        "iterations": 460, "batch_size": 16, "crop": 512, "optimizer": "sgd", "lr": 0.1,
        "weight_decay": 1e-4, "train_scales": [0.64, 0.8, 1.0, 1.12, 1.28],
        "checkpoint_every": 100, "log_every": 10,
        "init_weights": "models/init/resnet50-imagenet-deeplab.pth",
        "model": {"blocks": [3, 4, 6, 3], "width": 64, "freeze_bn": True},
    },
}


class CamMethod:
    """The `cam` classifier as a plug-in of the shared training loop. `config`: `iterations`,
    `optimizer` ("sgd" | "adamw"), `lr`, `weight_decay`, `momentum` (SGD), `lr_step`,
    `lr_power`, `warmup_iter`, `crop`, `train_scales`, `model` (kwargs of
    `build_cam_classifier` except `backbone`, which is the option), `init_weights`,
    `init_min_share`, `method_options` (`CamOptions`)."""

    needs_strong_view = False
    find_unused_parameters = False

    def __init__(self, name: str, num_classes: int, config: dict):
        self.name = name
        self.num_classes = num_classes
        self.config = config
        self.options = method_options(RECORD, config.get("method_options", {}))
        if "backbone" in config.get("model", {}):
            raise ConfigError("params.yaml: the cam method's backbone is "
                              "train.method_options.backbone, not a model parameter")
        if config.get("optimizer", "sgd") not in ("sgd", "adamw"):
            raise ConfigError(f"cam preset: optimizer '{config['optimizer']}' is not sgd or adamw")

    def build_model(self) -> nn.Module:
        model = build_checked(build_cam_classifier, self.num_classes, "method 'cam'",
                              backbone=self.options.backbone, **self.config["model"])
        path = self.config.get("init_weights")
        if path:
            if self.options.backbone == "resnet":
                load_init_weights_reported(model, path, self.config.get("init_min_share", 0.0))
            else:
                load_vit_weights(model.encoder, path)
        return model

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        net = unwrap(model)
        backbone = net.base if self.options.backbone == "resnet" else net.encoder
        frozen_bn = {id(p) for m in backbone.modules()
                     if isinstance(m, nn.modules.batchnorm._BatchNorm) and getattr(net, "freeze_bn", False)
                     for p in m.parameters()}
        params = [p for p in backbone.parameters() if p.requires_grad and id(p) not in frozen_bn]
        lr, decay = self.config["lr"], self.config["weight_decay"]
        head_lr = lr * self.options.head_lr_mult
        groups = [{"name": "backbone", "params": params, "lr": lr, "initial_lr": lr,
                   "weight_decay": decay},
                  {"name": "classifier", "params": [net.classifier.weight], "lr": head_lr,
                   "initial_lr": head_lr, "weight_decay": decay}]
        if self.config.get("optimizer", "sgd") == "adamw":
            return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=decay)
        return torch.optim.SGD(groups, lr=lr, momentum=self.config.get("momentum", 0.9))

    def lr_factor(self, iteration: int) -> float:
        return poly_factor_with_warmup(iteration, self.config, step_size=1)

    def training_loss(self, model: nn.Module, batch: dict, iteration: int):
        logits = model(batch["image"])
        loss = F.multilabel_soft_margin_loss(logits, batch["cls_label"].to(logits.dtype))
        return loss, {"loss": float(loss.detach())}


# --------------------------------------------------------------------------- data
def cam_train_sample(image: np.ndarray, cls_label: np.ndarray, rng: np.random.Generator,
                     crop: int, config: dict, strong_view: bool) -> dict:
    """Random scale (`train_scales`), crop (padded with the mean) and flip, BGR mean-subtracted;
    the multi-hot image label unchanged."""
    placeholder = np.zeros(image.shape[:2], np.uint8)  # the crop helper moves a label along
    cropped, _ = deeplab_train_crop(image, placeholder, rng, crop,
                                    config.get("train_scales") or [0.75, 1.0, 1.25])
    return {"image": torch.from_numpy(to_bgr_mean_subtracted(cropped)),
            "cls_label": torch.from_numpy(np.asarray(cls_label, np.float32))}


# --------------------------------------------------------------------------- test time
@torch.no_grad()
def cam_scores(model: nn.Module, images: torch.Tensor, options: CamOptions,
               class_labels: torch.Tensor | None = None) -> torch.Tensor:
    """(B, K, H, W) scores: `bkg_threshold` for background, the normalised multi-scale CAM of
    each present class, 0 for the others. Present: `class_labels` (B, K−1) when given (the
    image-level GT), else the classifier's sigmoid > `presence_threshold`."""
    net = unwrap(model)
    if class_labels is None:
        class_labels = (torch.sigmoid(net(images)) > options.presence_threshold).to(images.dtype)
    cams, _ = multi_scale_cams(net, images, options.cam_scales)
    cams = cams * class_labels[:, :, None, None].to(cams.dtype)
    background = torch.full_like(cams[:, :1], options.bkg_threshold)
    return torch.cat([background, cams], dim=1)


def cam_predictors(config: dict) -> dict:
    """One predictor: log of `cam_scores` (no image labels) on the stride-8 grid."""
    options = method_options(RECORD, config.get("method_options", {}))

    def run(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        scores = cam_scores(model, images, options)
        grid = (-(-height // 8), -(-width // 8))
        scores = F.interpolate(scores, size=grid, mode="bilinear", align_corners=False)
        return torch.log(scores.clamp_min(1e-5))
    return {"cam": run}


@torch.no_grad()
def cam_val_scores(model: nn.Module, split, class_labels, device, method: CamMethod) -> dict:
    """Val figures beside the predictor's: CAM mIoU with the image-level GT labels (the usual
    CAM-quality figure of WSSS papers, `bkg_threshold` rule) and the classifier's mAP."""
    net = unwrap(model).eval()
    scores, targets = [], []

    def classify(image: torch.Tensor, labels: torch.Tensor) -> None:
        scores.append(torch.sigmoid(net(image))[0].cpu().numpy())
        targets.append(labels[0].cpu().numpy())

    matrices = cam_confusions({"cam": net}, to_bgr_mean_subtracted, split, class_labels,
                              method.num_classes, device, method.options.cam_scales,
                              method.options.bkg_threshold, visit=classify)
    return {"cam_miou_gt_labels": matrices["cam"].scores()["miou"],
            "classifier_map": mean_average_precision(np.stack(scores), np.stack(targets))}


RECORD = register_method(MethodRecord(
    name="cam", create=CamMethod, build_model=build_cam_classifier, learns_from="image_labels",
    normalize=to_bgr_mean_subtracted, train_sample=cam_train_sample, crf_preset="deeplab",
    presets=CAM_PRESETS, predictors=cam_predictors, options=CamOptions, val_extras=cam_val_scores,
    description="CAM: a multi-label classifier whose class activation maps segment (CAM only)",
    cam_source="cams"))
