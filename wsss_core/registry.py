"""The one registry of methods: everything the pipeline needs to know about a method, by name.

A method module declares one `MethodRecord` next to its code and registers it with
`register_method` (as timm's `register_model` does for a model and its default config). The
config loader, the training set, inference, the CRF and the benchmark look the record up with
`get_method(name)` instead of branching on method names, so adding a method is one module and
one record.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .methods import TrainingMethod

LearnsFrom = Literal["pseudo_labels", "image_labels"]
# a test-time logits function: (model, images (1, 3, H, W) normalised) -> (1, C, h, w)
Predictor = Callable[["nn.Module", "torch.Tensor"], "torch.Tensor"]


@dataclass(frozen=True)
class MethodRecord:
    """What one method is made of.

    - `create(name, num_classes, config)`: its adapter for the shared training loop (model
      builder, optimiser, LR schedule, losses; see `wsss_core.methods.TrainingMethod`), from the
      effective training configuration (preset merged with overrides);
    - `build_model(num_classes, **model_params)`: its network;
    - `learns_from`: "pseudo_labels" (per-pixel labels of the pseudo_labels stage) or
      "image_labels" (the image-level labels of the prepare stage);
    - `normalize(image_rgb uint8 HxWx3) -> float32 3xHxW`: its input normalisation;
    - `train_sample(image, target, rng, crop, config, strong_view) -> dict`: one augmented
      training sample (`target` the label map or the multi-hot image label);
    - `crf_preset`: the DenseCRF kernel `crf.preset: auto` picks (a key of `crf.CRF_PRESETS`);
    - `presets`: named training configurations (`train.preset`), the first the default;
    - `predictors(config) -> {name: Predictor}`: test-time logits functions; with several, the
      inference stage scores each on val and keeps the best (DuPL's two students);
    - `options`: the dataclass of `train.method_options` (field types are checked);
    - `val_extras(model, split, class_labels, device, config) -> dict`: optional extra val
      figures for metrics/scores.json (DuPL: CAM mIoU of each student);
    - `cam_model(model) -> nn.Module`: the module with `.cams()` whose CAMs the cams stage
      stores (pseudo_labels.source cams/dupl); None: the model itself has `.cams()`.
    """

    name: str
    create: Callable[[str, int, dict], TrainingMethod]
    build_model: Callable[..., nn.Module]
    learns_from: LearnsFrom
    normalize: Callable[[np.ndarray], np.ndarray]
    train_sample: Callable[..., dict]
    crf_preset: str
    presets: Mapping[str, dict]
    predictors: Callable[[dict], dict[str, Predictor]]
    options: type
    val_extras: Callable[..., dict] | None = None
    cam_model: Callable[[nn.Module], nn.Module] | None = None
    description: str = ""   # one line for people listing the methods

    @property
    def uses_pseudo_labels(self) -> bool:
        return self.learns_from == "pseudo_labels"


_RECORDS: dict[str, MethodRecord] = {}
# modules whose import registers the built-in methods (imported on first lookup)
_BUILTIN_MODULES = ("wsss_core.methods.deeplab_family", "wsss_core.methods.dupl.record",
                    "wsss_core.methods.cam_classifier")
_loaded = False


def register_method(record: MethodRecord) -> MethodRecord:
    """Add `record` under its name (re-registering the same name replaces it)."""
    _RECORDS[record.name] = record
    return record


def unregister_method(name: str) -> None:
    _RECORDS.pop(name, None)


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)


def method_names() -> list[str]:
    _load_builtins()
    return list(_RECORDS)


def get_method(name: str, key: str = "method") -> MethodRecord:
    """The record of `name`; an unknown name is a ConfigError naming the params `key`."""
    _load_builtins()
    if name not in _RECORDS:
        raise ConfigError(f"params.yaml: {key}: unknown method '{name}' (allowed: "
                          f"{', '.join(sorted(_RECORDS))})")
    return _RECORDS[name]


def method_options(record: MethodRecord, options: Mapping[str, Any], factory=None):
    """`train.method_options` as the method's options dataclass: every key must be a field and
    every value of the field's type (one-line ConfigError naming `train.method_options.<key>`);
    `factory` (e.g. a dataset's defaults) builds the object instead of the class itself."""
    from .config import convert_fields

    values = convert_fields(record.options, dict(options), "train.method_options",
                            owner=f"method '{record.name}'")
    try:
        return (factory or record.options)(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"params.yaml: train.method_options: {exc}") from None
