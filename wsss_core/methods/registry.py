"""The one registry of methods: everything the pipeline needs to know about a method, by name.

A leaf: it imports no method. A method module declares one `MethodRecord` next to its code and
presets and registers it with `register_method` (as timm's `register_model` does for a model and
its default config); `wsss_core.methods` imports the built-in modules, one line each, so any
import of this module (which imports its package first) finds them registered. The pipeline
and the benchmark look a record up with `get_method(name)` instead of branching on method
names, so adding a method is one module and one import line.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..config_types import convert_fields
from ..errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..training.method import TrainingMethod

LearnsFrom = Literal["pseudo_labels", "image_labels"]
# a test-time logits function: (model, images (1, 3, H, W) normalised) -> (1, C, h, w)
Predictor = Callable[["nn.Module", "torch.Tensor"], "torch.Tensor"]


@dataclass(frozen=True)
class MethodRecord:
    """What one method is made of.

    - `create(name, num_classes, config)`: its adapter for the shared training loop (model
      builder, optimiser, LR schedule, losses; see `wsss_core.training.method.TrainingMethod`), from the
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
    # the `pseudo_labels.source` whose classifier this method is (its CAMs become the pseudo
    # labels: cam for `cams`, dupl for `dupl`); None: not a CAM source
    cam_source: str | None = None

    @property
    def uses_pseudo_labels(self) -> bool:
        return self.learns_from == "pseudo_labels"


_RECORDS: dict[str, MethodRecord] = {}


def register_method(record: MethodRecord) -> MethodRecord:
    """Add `record` under its name (re-registering the same name replaces it)."""
    _RECORDS[record.name] = record
    return record


def unregister_method(name: str) -> None:
    _RECORDS.pop(name, None)


def method_names() -> list[str]:
    return list(_RECORDS)


def cam_source_method(source: str) -> MethodRecord:
    """The method that trains the classifier of CAM pseudo-label source `source`."""
    for record in _RECORDS.values():
        if record.cam_source == source:
            return record
    raise ConfigError(f"params.yaml: pseudo_labels.source: no method makes CAMs for '{source}'")


def get_method(name: str, key: str = "method") -> MethodRecord:
    """The record of `name`; an unknown name is a ConfigError naming the params `key`."""
    if name not in _RECORDS:
        raise ConfigError(f"params.yaml: {key}: unknown method '{name}' (allowed: "
                          f"{', '.join(sorted(_RECORDS))})")
    return _RECORDS[name]


def method_options(record: MethodRecord, options: Mapping[str, Any], factory=None):
    """`train.method_options` as the method's options dataclass: every key must be a field and
    every value of the field's type (one-line ConfigError naming `train.method_options.<key>`);
    `factory` (e.g. a dataset's defaults) builds the object instead of the class itself."""
    return parse_options(record.options, record.name, options, factory)


def parse_options(options_class: type, method: str, options: Mapping[str, Any], factory=None):
    """`method_options` for a method's own code, which holds its options class but not its
    record (the record is made from that code)."""
    values = convert_fields(options_class, dict(options), "train.method_options",
                            owner=f"method '{method}'")
    try:
        return (factory or options_class)(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"params.yaml: train.method_options: {exc}") from None
