"""Methods as plug-ins of the one training loop and the one inference path.

A method is its model heads plus its losses: one module (or folder) holding its training
adapter (a `wsss_core.training.TrainingMethod`), its presets and its `MethodRecord`, registered
in the leaf `registry`. Importing this package registers the built-ins, one line each; a new
method is one module plus one line here. Methods do not import each other.
"""
from __future__ import annotations

from ..models import build_checked
from . import (
    cam_classifier,  # noqa: F401  cam: the CAM classifier (CAM pseudo labels)
    deeplab,  # noqa: F401  baseline, cdl_b, cdl_e: the DeepLab v2 family
    dupl,  # noqa: F401  dupl: two ViT students from image-level labels
)
from .registry import MethodRecord, get_method, method_names, method_options, register_method


def build_model(name: str, num_classes: int, **model_params):
    """The network of method `name` (timm's `create_model` by name): its record's builder, a
    model parameter it does not take being a one-line ConfigError."""
    return build_checked(get_method(name).build_model, num_classes, f"method '{name}'",
                         **model_params)


def create_method(name: str, num_classes: int, config: dict):
    """The training adapter of method `name` (a `wsss_core.training.TrainingMethod`)."""
    return get_method(name).create(name, num_classes, config)


__all__ = ["MethodRecord", "build_model", "create_method", "get_method", "method_names", "method_options",
           "register_method"]
