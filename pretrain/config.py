"""The pretraining's params: group `pretrain` of pretrain/params.yaml (read like params.yaml):
the keys shared by both backbones, and per backbone (`pretrain.resnet`, `pretrain.vit`) its own
classification set (size, context, part focus) and run length."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from wsss_core.config import load_group
from wsss_core.errors import ConfigError, WsssError

PARAMS_FILE = Path("pretrain/params.yaml")
BACKBONES = ("resnet", "vit")


def _check(ok: bool, where: str, problem: str) -> None:
    """As wsss_core.config_types._check, naming this pipeline's params file."""
    if not ok:
        raise ConfigError(f"{PARAMS_FILE.as_posix()}: {where}: {problem}")


@dataclass
class BackboneParams:
    """One backbone's classification set and run: `pretrain.resnet` or `pretrain.vit`."""

    num_train: int = 2700
    num_val: int = 300           # held out: the classifier's mAP / accuracy
    # the set's own co-occurring context and part focus (data.synthetic's meaning), independent
    # of the demo data's, as ImageNet's statistics are of VOC's
    context: float = 0.8
    part_focus: float = 0.5
    iterations: int = 600

    def validate(self, where: str) -> None:
        _check(self.num_train >= 1 and self.num_val >= 1, where, "num_train and num_val must be >= 1")
        for key in ("context", "part_focus"):
            _check(0.0 <= getattr(self, key) <= 1.0, f"{where}.{key}", "must be in [0, 1]")
        _check(self.iterations >= 1, f"{where}.iterations", "must be >= 1")


@dataclass
class ResnetParams(BackboneParams):
    """The demo DeepLab's ResNet (its classifier always averages before the classifier)."""


@dataclass
class VitParams(BackboneParams):
    """DuPL's demo ViT: whole objects and weak class-specific context, more images and a longer
    run than the ResNet's set (README "Pretrained initialisation")."""

    num_train: int = 5400
    context: float = 0.3
    part_focus: float = 0.0
    iterations: int = 2400
    # global pooling before the ViT classifier: "max" as DuPL's students pool (the classifier
    # the weights go into), "avg" as IRN's CAM
    pooling: str = "max"

    def validate(self, where: str) -> None:
        super().validate(where)
        _check(self.pooling in ("avg", "max"), f"{where}.pooling", "must be avg or max")


@dataclass
class PretrainParams:
    """The stand-in for ImageNet pretraining (pretrain/dvc.yaml, pretrain.pretrain): per backbone
    a synthetic classification set (all 20 VOC classes, image-level labels only, distractor
    textures on the background; the demo data's appearance, its own seed) and a `cam`
    classifier trained on it, whose backbones initialise the demo DeepLab and DuPL."""

    # shared by both backbones' sets
    min_size: int = 96
    max_size: int = 128
    max_objects: int = 3
    seed: int = 1000             # other images than the demo data's (data.synthetic.seed)
    # class-less patches with a random class's texture and colours on background pixels, at
    # most this many per image (uniform 0..n)
    distractors: int = 3
    # shared by both backbones' runs
    batch_size: int = 16
    crop: int = 96
    threads: int = 2             # CPU threads of each training (float sums depend on it)
    n_jobs: int = 2              # rendering workers
    # each backbone's own set and run length
    resnet: ResnetParams = field(default_factory=ResnetParams)
    vit: VitParams = field(default_factory=VitParams)

    def validate(self, where: str) -> None:
        _check(16 <= self.min_size <= self.max_size, where, "need 16 <= min_size <= max_size")
        _check(self.max_objects >= 1, f"{where}.max_objects", "must be >= 1")
        _check(self.distractors >= 0, f"{where}.distractors", "must be >= 0")
        for key in ("batch_size", "crop", "threads"):
            _check(getattr(self, key) >= 1, f"{where}.{key}", "must be >= 1")
        for backbone in BACKBONES:
            _check(self.batch_size <= getattr(self, backbone).num_train, f"{where}.batch_size",
                   f"exceeds {where}.{backbone}.num_train")
        _check(self.n_jobs != 0, f"{where}.n_jobs", "must be -1 (all cores) or a non-zero count")


def load_pretrain_params(path: str | Path = PARAMS_FILE, overrides: dict | None = None
                         ) -> PretrainParams:
    """`pretrain` of pretrain/params.yaml; `overrides` map dotted keys (`pretrain.seed`,
    `pretrain.vit.num_train`)."""
    return load_group(path, "pretrain", PretrainParams, overrides)


def backbone_params(p: PretrainParams, backbone: str) -> BackboneParams:
    """The `backbone`'s own group (`pretrain.resnet` or `pretrain.vit`)."""
    if backbone not in BACKBONES:
        raise WsssError(f"pretrain: unknown backbone '{backbone}' (allowed: {', '.join(BACKBONES)})")
    return getattr(p, backbone)
