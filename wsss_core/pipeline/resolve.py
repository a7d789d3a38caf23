"""A stage's view of params.yaml, resolved and validated once: the method's registry record, the
effective training configuration (its preset merged with `train.*`), its training adapter and the
CRF kernel. A misspelt method, preset or option fails here, before a stage reads any data.

`batch_size` is the **global** batch of one forward/backward step, split evenly over the
processes; the effective batch of an optimiser step is batch_size × iter_size, whatever the number
of GPUs (the originals tie it to the GPU count, a known cause of failed reproductions).
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

from ..config import Params
from ..crf import CrfSettings, crf_settings
from ..errors import ConfigError
from ..methods import MethodRecord, get_method, method_options
from ..training import TrainingMethod


def effective_train_config(params: Params) -> dict:
    """The method's preset named by `train.preset` (presets come from the method's registry
    record), adapted to the method where the preset says so, overridden by non-null `train.*`,
    with the method options checked against the method's options class."""
    record = get_method(params.method)
    presets = record.presets
    name = params.train.preset
    if name not in presets:
        raise ConfigError(f"params.yaml: train.preset: '{name}' is not a preset of method "
                          f"'{params.method}' (allowed: {', '.join(presets)})")
    config = copy.deepcopy(presets[name])
    # a preset may adapt some values to one method of its family (the CPU demo does for CDL)
    for key, value in config.pop("method_overrides", {}).get(params.method, {}).items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    for key, value in params.train.overrides().items():
        config[key] = value
    config["method_options"] = {**config.get("method_options", {}), **params.train.method_options}
    # memory savers are model options; set only when on, so configurations (and the checkpoints
    # they resume) without them stay as they were
    for key in ("grad_checkpointing", "channels_last"):
        if getattr(params.train, key):
            if key not in inspect.signature(record.build_model).parameters:
                raise ConfigError(f"params.yaml: train.{key}: not supported by method "
                                  f"'{params.method}'")
            config["model"] = {**config.get("model", {}), key: True}
    config["seed"] = params.seed
    config["preset"] = name
    method_options(record, config["method_options"])  # a bad option fails before any data is read
    return config


@dataclass(frozen=True)
class ResolvedRun:
    params: Params
    record: MethodRecord
    # the effective training configuration (precision and validation entered only when on, so
    # runs without them, and the checkpoints they resume, stay as they were)
    config: dict
    # the method's adapter without init weights: it builds the network a trained model loads into
    method: TrainingMethod
    crf: CrfSettings

    @property
    def name(self) -> str:
        return self.params.method

    def training_method(self) -> TrainingMethod:
        """The adapter that trains: its network starts from the configured init weights."""
        return self.record.create(self.name, self.params.num_classes, self.config)


def resolve_run(params: Params) -> ResolvedRun:
    """Everything a stage builds from `params` beyond the loader's checks, validated."""
    record = get_method(params.method)
    config = effective_train_config(params)
    if params.train.precision != "fp32":
        config["precision"] = params.train.precision
    if params.train.val_every:
        config.update(val_every=params.train.val_every, val_scales=params.train.val_scales)
    # creating the adapter runs the method's own checks (DuPL's phase schedule)
    method = record.create(params.method, params.num_classes, {**config, "init_weights": ""})
    return ResolvedRun(params, record, config, method, crf_settings(params.crf, record.crf_preset))
