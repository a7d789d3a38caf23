"""The pretraining's params: group `pretrain` of pretrain/params.yaml (read like params.yaml)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wsss_core.config import load_group
from wsss_core.config_types import _check

PARAMS_FILE = Path("pretrain/params.yaml")


@dataclass
class PretrainParams:
    """The stand-in for ImageNet pretraining (pretrain/dvc.yaml, pretrain.pretrain): a synthetic
    classification set (all 20 VOC classes, image-level labels only, distractor textures on the
    background; the demo data's appearance, its own seed), a `cam` classifier trained on it per
    backbone, whose backbones initialise the demo DeepLab and DuPL."""

    num_train: int = 2700
    num_val: int = 300           # held out: the classifiers' mAP / accuracy
    min_size: int = 96
    max_size: int = 128
    max_objects: int = 3
    seed: int = 1000             # other images than the demo data's (data.synthetic.seed)
    # class-less patches with a random class's texture and colours on background pixels, at
    # most this many per image (uniform 0..n)
    distractors: int = 3
    # the set's own co-occurring context and part focus (data.synthetic's meaning), independent
    # of the demo data's, as ImageNet's statistics are of VOC's
    context: float = 0.8
    part_focus: float = 0.5
    iterations_resnet: int = 600
    iterations_vit: int = 900
    # global pooling before the ViT classifier: "max" as DuPL's students pool (the classifier
    # the weights go into), "avg" as IRN's CAM (the resnet classifier always averages)
    vit_pooling: str = "max"
    batch_size: int = 16
    crop: int = 96
    threads: int = 2             # CPU threads of each training (float sums depend on it)
    n_jobs: int = 2              # rendering workers

    def validate(self, where: str) -> None:
        _check(self.num_train >= 1 and self.num_val >= 1, where, "num_train and num_val must be >= 1")
        _check(16 <= self.min_size <= self.max_size, where, "need 16 <= min_size <= max_size")
        _check(self.max_objects >= 1, f"{where}.max_objects", "must be >= 1")
        _check(self.distractors >= 0, f"{where}.distractors", "must be >= 0")
        for key in ("context", "part_focus"):
            _check(0.0 <= getattr(self, key) <= 1.0, f"{where}.{key}", "must be in [0, 1]")
        for key in ("iterations_resnet", "iterations_vit", "batch_size", "crop", "threads"):
            _check(getattr(self, key) >= 1, f"{where}.{key}", "must be >= 1")
        _check(self.vit_pooling in ("avg", "max"), f"{where}.vit_pooling", "must be avg or max")
        _check(self.batch_size <= self.num_train, f"{where}.batch_size", "exceeds num_train")
        _check(self.n_jobs != 0, f"{where}.n_jobs", "must be -1 (all cores) or a non-zero count")


def load_pretrain_params(path: str | Path = PARAMS_FILE, overrides: dict | None = None
                         ) -> PretrainParams:
    """`pretrain` of pretrain/params.yaml; `overrides` map dotted keys (`pretrain.seed`)."""
    return load_group(path, "pretrain", PretrainParams, overrides)
