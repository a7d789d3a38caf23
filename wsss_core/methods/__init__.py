"""Methods as plug-ins of the one training loop and the one inference path.

A method is its model heads plus its losses; `create_method(name, num_classes, config)` returns a
`TrainingMethod` (the loop's contract, `wsss_core.training.method`, re-exported here) built from
the effective training configuration (preset + overrides, see `wsss_core.presets`). The DeepLab
family (baseline, cdl_b, cdl_e) shares one adapter; DuPL has its own. Both expose the same things
to `wsss_core.training`; what else the pipeline needs to know of a method (its data,
normalisation, CRF preset, predictors) is in its `wsss_core.registry` record.
"""
from __future__ import annotations

from ..training.method import TrainingMethod  # where the methods' code and the registry look for it


def create_method(name: str, num_classes: int, config: dict) -> TrainingMethod:
    """The training adapter of method `name` (looked up in `wsss_core.registry`)."""
    from ..registry import get_method

    return get_method(name).create(name, num_classes, config)
