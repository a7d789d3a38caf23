"""Training adapter of the DeepLab v2 family (baseline, CDL-b, CDL-e) for the shared loop.

SGD (momentum 0.9) over the 1×/10×/20× groups of the method, DeepLab's poly LR stepped every 10
iterations, frozen BatchNorm (unless the preset trains from scratch), and the method's losses
over every MSC output.
"""
from __future__ import annotations

import torch
from torch import nn

from ..cli import is_main_process
from ..models import build_model, load_init_weights
from ..presets import method_options
from ..schedules import stepped_poly_factor
from .baseline import BaselineConfig, BaselineMethod
from .cdl import CdlConfig, CdlMethod


class DeepLabFamily:
    family = "deeplab"
    find_unused_parameters = False

    def __init__(self, name: str, num_classes: int, config: dict):
        self.name = name
        self.num_classes = num_classes
        self.config = config
        options = dict(config.get("method_options", {}))
        if name == "baseline":
            self.method = BaselineMethod(method_options(BaselineConfig, options, name))
        else:
            self.method = CdlMethod(name, method_options(CdlConfig, options, name))
        self.needs_strong_view = self.method.needs_strong_view

    def build_model(self) -> nn.Module:
        model = build_model(self.name, self.num_classes, **self.config["model"])
        if not self.config["model"].get("freeze_bn", True):
            # BatchNorm trained from scratch: the caffe momentum 0.001 would leave the running
            # statistics used at test time near their initial values after a short run
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.momentum = 0.1
        if self.config.get("init_weights"):
            report = load_init_weights(model, self.config["init_weights"])
            if is_main_process():
                print(report.summary(), flush=True)
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
        factor = stepped_poly_factor(iteration, self.config["iterations"],
                                     self.config.get("lr_step", 10), self.config.get("lr_power", 0.9))
        # demo only (the paper configs fine-tune a pretrained net and have none): heads trained
        # from scratch at 10×/20× the lr blow up in the first steps without a linear warm-up
        warmup = self.config.get("warmup_iter", 0)
        return factor * min(1.0, iteration / warmup) if warmup else factor

    def training_loss(self, model: nn.Module, batch: dict, iteration: int):
        strong = batch.get("strong_image") if self.needs_strong_view else None
        outputs = model(batch["image"], strong)
        return self.method.compute_loss(outputs, batch["label"], iteration, self.config["iterations"])

    def predictors(self):
        return {"main": lambda model, images: model.predict(images)}
