"""Training adapter of the DeepLab v2 family (baseline, CDL-b, CDL-e) for the shared loop.

SGD (momentum 0.9) over the 1×/10×/20× groups of the method, DeepLab's poly LR stepped every 10
iterations, frozen BatchNorm (unless the preset trains from scratch), and the method's losses
over every MSC output. The three methods' registry records are at the end.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ...data.transforms import cdl_strong_view, deeplab_train_crop, to_bgr_mean_subtracted
from ...models import build_checked, load_init_weights_reported
from ...models.deeplab_v2 import build_baseline, build_cdl_b, build_cdl_e
from ...schedules import poly_factor_with_warmup
from ..registry import MethodRecord, method_options, register_method
from .baseline import BaselineConfig, BaselineMethod
from .cdl import CdlConfig, CdlMethod
from .presets import DEEPLAB_PRESETS


class DeepLabFamily:
    family = "deeplab"
    find_unused_parameters = False

    def __init__(self, name: str, num_classes: int, config: dict):
        self.name = name
        self.num_classes = num_classes
        self.config = config
        self.record = RECORDS[name]
        options = method_options(self.record, config.get("method_options", {}))
        self.method = BaselineMethod(options) if name == "baseline" else CdlMethod(name, options)
        self.needs_strong_view = self.method.needs_strong_view

    def build_model(self) -> nn.Module:
        model = build_checked(self.record.build_model, self.num_classes, f"method '{self.name}'",
                              **self.config["model"])
        if not self.config["model"].get("freeze_bn", True):
            # BatchNorm trained from scratch: the caffe momentum 0.001 would leave the running
            # statistics used at test time near their initial values after a short run
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.momentum = 0.1
        if self.config.get("init_weights"):
            load_init_weights_reported(model, self.config["init_weights"],
                                       min_share=self.config.get("init_min_share", 0.0))
        return model

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        groups = self.method.param_groups(model, self.config["lr"], self.config["weight_decay"])
        if not self.config["model"].get("freeze_bn", True):
            # trained from scratch: BatchNorm learns (original: frozen, in no group)
            bn = [p for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                  for p in m.parameters()]
            known = {id(p) for g in groups for p in g["params"]}
            groups.append({"name": "bn", "params": [p for p in bn if id(p) not in known],
                           "lr": self.config["lr"], "initial_lr": self.config["lr"],
                           "weight_decay": 0.0})
        return torch.optim.SGD(groups, lr=self.config["lr"], momentum=self.config["momentum"])

    def lr_factor(self, iteration: int) -> float:
        return poly_factor_with_warmup(iteration, self.config, step_size=10)

    def training_loss(self, model: nn.Module, batch: dict, iteration: int):
        strong = batch.get("strong_image") if self.needs_strong_view else None
        outputs = model(batch["image"], strong)
        return self.method.compute_loss(outputs, batch["label"], iteration, self.config["iterations"])


def deeplab_predictors(config: dict) -> dict:
    """One test-time predictor: the MSC model's own (max over its test scales)."""
    return {"main": lambda model, images: model.predict(images)}


def deeplab_train_sample(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                         crop: int, config: dict, strong_view: bool) -> dict:
    """Random scale, crop and flip of image + pseudo label (BGR mean-subtracted), and CDL-e's
    strong photometric view of the same crop."""
    cropped, cropped_label = deeplab_train_crop(image, label, rng, crop,
                                                config.get("train_scales") or [0.5, 0.75, 1.0, 1.25, 1.5])
    sample = {"image": torch.from_numpy(to_bgr_mean_subtracted(cropped)),
              "label": torch.from_numpy(cropped_label.astype(np.int64))}
    if strong_view:
        strong = cdl_strong_view(cropped.astype(np.uint8), rng)
        sample["strong_image"] = torch.from_numpy(to_bgr_mean_subtracted(strong))
    return sample


def _record(name: str, builder, options: type, description: str) -> MethodRecord:
    return register_method(MethodRecord(
        name=name, create=DeepLabFamily, build_model=builder, learns_from="pseudo_labels",
        normalize=to_bgr_mean_subtracted, train_sample=deeplab_train_sample, crf_preset="deeplab",
        presets=DEEPLAB_PRESETS, predictors=deeplab_predictors, options=options,
        description=description))


RECORDS = {
    "baseline": _record("baseline", build_baseline, BaselineConfig,
                        "DeepLab v2 (ResNet-101 MSC) trained on the pseudo labels"),
    "cdl_b": _record("cdl_b", build_cdl_b, CdlConfig,
                     "CDL-b: two experts and an affinity head correct the pseudo labels online"),
    "cdl_e": _record("cdl_e", build_cdl_e, CdlConfig,
                     "CDL-e: CDL-b plus a third expert on a strong view (the test head)"),
}
