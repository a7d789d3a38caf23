"""params.yaml → typed, validated configuration objects (the only config loader).

Each group of params.yaml is a dataclass below; the generic `_build` (wsss_core.config_types)
converts and checks a mapping against it, so an unknown key, a wrong type or a value outside a `Literal` fails with one
line naming the key and what is allowed.
"""
from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from .config_types import PARAMS_FILE, _build, _check
from .errors import ConfigError

DatasetName = Literal["synthetic", "voc12", "coco14"]
# classes of each dataset with background (the names are in wsss_core.data.classes)
NUM_CLASSES = {"synthetic": 21, "voc12": 21, "coco14": 81}
VOC_NUM_CLASSES = NUM_CLASSES["voc12"]

# where images are processed (wsss_core.parallel): joblib on this machine, or dask.distributed
Backend = Literal["local", "dask"]
# a dask scheduler: tcp://host:8786 (also tls://, ucx://, ws://, wss://, or host:port), or the
# JSON file `dask scheduler --scheduler-file` writes
_SCHEDULER = re.compile(r"((tcp|tls|ucx|ws|wss)://)?[^\s/:]+:\d+|\S+\.json")


def _check_workers(group, where: str) -> None:
    """The `backend`, `scheduler` and `n_jobs` keys of a group (placement only: not in dvc.yaml)."""
    _check(group.n_jobs != 0, f"{where}.n_jobs", "must be -1 (all cores) or a non-zero count")
    if group.scheduler is None:
        return
    _check(group.backend == "dask", f"{where}.scheduler",
           f"is used only with {where}.backend: dask (set it, or scheduler: null)")
    _check(bool(_SCHEDULER.fullmatch(group.scheduler)), f"{where}.scheduler",
           f"expected a dask scheduler address like tcp://host:8786 or a scheduler file "
           f"(*.json), got {group.scheduler!r}")


# --------------------------------------------------------------------------- groups
@dataclass
class SyntheticData:
    """The embedded synthetic dataset, generated in VOC layout."""

    num_train: int = 300
    num_val: int = 50
    min_size: int = 96
    max_size: int = 128
    max_objects: int = 3
    # VOC class ids drawn in the images (background 0 is implicit); the ids keep VOC's meaning.
    classes: list[int] = field(default_factory=lambda: [1, 3, 8, 12, 15, 19])
    seed: int = 0
    # held-out split with GT (ids syn_test_*), never trained or tuned on
    num_test: int = 50
    # probability that an object gets its class's co-occurring background structure (rails under
    # trains, water under boats, ...): CAMs spill onto it; it stays background in the GT
    context: float = 0.0
    # 0..1: how much of an object's class look is kept only on a discriminative part (head,
    # front); the rest is pulled towards a palette shared by all classes, like CAMs that cover
    # only the most discriminative part
    part_focus: float = 0.0

    def validate(self, where: str) -> None:
        _check(self.num_train >= 1 and self.num_val >= 1, where, "num_train and num_val must be >= 1")
        _check(self.num_test >= 0, f"{where}.num_test", "must be >= 0")
        _check(0.0 <= self.context <= 1.0, f"{where}.context", "must be in [0, 1]")
        _check(0.0 <= self.part_focus <= 1.0, f"{where}.part_focus", "must be in [0, 1]")
        _check(16 <= self.min_size <= self.max_size, where, "need 16 <= min_size <= max_size")
        _check(self.max_objects >= 1, where, "max_objects must be >= 1")
        _check(len(self.classes) >= 2 and len(set(self.classes)) == len(self.classes), where,
               "classes must list at least two distinct VOC class ids")
        _check(all(1 <= c <= 20 for c in self.classes), where, "classes must be VOC ids in 1..20")


@dataclass
class NoiseTypes:
    """Relative strength of each pseudo-label corruption (multiplied by `data.noise`)."""

    boundary: float = 1.0          # object boundaries shrink or grow
    missing_parts: float = 1.0     # parts of objects dropped to background
    false_positives: float = 1.0   # blobs of an image's class on the background
    class_confusion: float = 1.0   # whole objects given a similar class
    ignore: float = 1.0            # uncertain bands marked 255

    def validate(self, where: str) -> None:
        for name in ("boundary", "missing_parts", "false_positives", "class_confusion", "ignore"):
            _check(getattr(self, name) >= 0, f"{where}.{name}", "must be >= 0")


@dataclass
class VocData:
    """PASCAL VOC 2012 + SBD (train_aug). Paths are relative to `root` unless absolute."""

    root: str = "data/VOCdevkit/VOC2012"
    image_dir: str = "JPEGImages"
    eval_label_dir: str = "SegmentationClassAug"
    train_list: str = "ImageSets/Segmentation/train_aug.txt"
    val_list: str = "ImageSets/Segmentation/val.txt"
    test_list: str = "ImageSets/Segmentation/test.txt"
    # cls_labels.json or DuPL's cls_labels_onehot.npy; empty: derived from the GT of each split
    class_labels: str = ""


@dataclass
class CocoData:
    """MS COCO 2014 with VOC-style masks (81 classes)."""

    root: str = "data/coco"
    train_image_dir: str = "train2014"
    val_image_dir: str = "val2014"
    label_dir: str = "SegmentationClass"        # holds train2014/ and val2014/
    train_list: str = "train.txt"
    val_list: str = "val.txt"
    # a list of val ids scored instead of the whole val split, e.g. DuPL's 4,999-image
    # `val_part.txt`; "" (default): the whole val (40,137 images). Every metric file of such a
    # run names it (`subset`), so a partial score is never read as the full val's
    val_part: str = ""
    class_labels: str = ""
    # instances JSON per split; masks are converted when missing (see wsss_core.data.coco)
    train_annotations: str = "annotations/instances_train2014.json"
    val_annotations: str = "annotations/instances_val2014.json"
    convert: bool = True
    n_jobs: int = -1


@dataclass
class DataParams:
    synthetic: SyntheticData = field(default_factory=SyntheticData)
    # pseudo-label noise of the synthetic dataset: 0 = the GT itself, 1 = very noisy
    noise: float = 0.5
    noise_types: NoiseTypes = field(default_factory=NoiseTypes)
    noise_seed: int = 0
    voc12: VocData = field(default_factory=VocData)
    coco14: CocoData = field(default_factory=CocoData)

    def validate(self, where: str) -> None:
        _check(0.0 <= self.noise <= 1.0, f"{where}.noise", "must be in [0, 1]")


PseudoLabelSource = Literal["simulate", "files", "cams", "dupl"]
DEFAULT_SIMULATE_PATH = "data/prepared/synthetic/VOC2012/SegmentationClassAug"


@dataclass
class CamParams:
    """Stage cams: multi-scale (+ flip) CAMs of every train image, stored compactly."""

    scales: list[float] = field(default_factory=lambda: [1.0, 0.5, 1.5])
    flip: bool = True
    # stored every `stride` pixels (float16): refinement upsamples them to the image again
    stride: int = 4

    def validate(self, where: str) -> None:
        _check(len(self.scales) >= 1 and all(s > 0 for s in self.scales), f"{where}.scales",
               "must list at least one scale > 0")
        _check(self.stride >= 1, f"{where}.stride", "must be >= 1")


@dataclass
class RefineParams:
    """Stage pseudo_labels with source cams/dupl: stored CAMs -> pixel labels.

    A pixel's score is the max of its present classes' CAMs (after `method`'s refinement). It is
    background where that is <= `low`, the arg-max class where it is > `high`, and 255 (ignored)
    in between, as DuPL/ToCo's two background planes; `low`/`high` null take `bkg_threshold`
    (no ignore band: background where the score is <= `bkg_threshold`)."""

    # none: the rule on the CAMs; par: DuPL/ToCo's PAR with two background planes (the image's
    # colours pull the scores); crf: DenseCRF (wsss_core.crf) of [background, CAMs] per plane
    method: Literal["none", "par", "crf"] = "crf"
    bkg_threshold: float = 0.4
    low: float | None = None
    high: float | None = None
    crf_preset: Literal["deeplab", "dupl"] = "dupl"   # DenseCRF kernel of `method: crf`
    # where the images are refined (same labels everywhere; wsss_core.parallel): local = joblib
    # with n_jobs processes (1 = serial, in the stage's process; -1 = all cores); dask = a
    # LocalCluster of n_jobs workers (scheduler null) or the running cluster at `scheduler`
    backend: Backend = "local"
    scheduler: str | None = None
    n_jobs: int = 1

    @property
    def band(self) -> tuple[float, float]:
        """(low, high) with null taking bkg_threshold."""
        return (self.bkg_threshold if self.low is None else self.low,
                self.bkg_threshold if self.high is None else self.high)

    def validate(self, where: str) -> None:
        for name in ("bkg_threshold", "low", "high"):
            value = getattr(self, name)
            _check(value is None or 0.0 <= value <= 1.0, f"{where}.{name}", "must be in [0, 1]")
        low, high = self.band
        _check(low <= self.bkg_threshold <= high, where,
               "need low <= bkg_threshold <= high (null takes bkg_threshold)")
        _check_workers(self, where)


@dataclass
class PseudoLabelParams:
    # folder under data/pseudo_labels/ the labels go to (tracked by DVC); also names data/cams/<name>
    name: str = "synthetic"
    # simulate: CAM-like noise (data.noise) on the synthetic GT in `path`; files: a folder or
    # .zip/.tar/.tar.gz of <id>.png in `path` (A2GNN/EPS/RIB/VML labels); cams: a CAM classifier
    # (method cam) trained on the image-level labels, its CAMs refined (stages cam_classifier,
    # cams); dupl: the same with a DuPL student's CAMs
    source: PseudoLabelSource = "simulate"
    # simulate: the GT folder; files: the folder/archive. A DVC dependency (new contents at the
    # same path rerun the stage), so it must exist whatever the source (cams/dupl do not read it)
    path: str = DEFAULT_SIMULATE_PATH
    # the classifier of source cams/dupl: a training configuration like `train` (preset of
    # method cam resp. dupl, null values take the preset's)
    classifier: TrainParams = field(default_factory=lambda: TrainParams())
    cam: CamParams = field(default_factory=CamParams)
    refine: RefineParams = field(default_factory=RefineParams)

    @property
    def simulated(self) -> bool:
        return self.source == "simulate"

    @property
    def from_cams(self) -> bool:
        """The labels are refined CAMs of a classifier trained in the pipeline (the method whose
        registry record names this source as its `cam_source`)."""
        return self.source not in ("simulate", "files")

    def validate(self, where: str) -> None:
        _check(bool(self.name) and "/" not in self.name and self.name not in (".", ".."),
               f"{where}.name", "must be a plain folder name")
        _check(bool(self.path), f"{where}.path", "must be a path (it is a DVC dependency)")


@dataclass
class EvaluateParams:
    n_jobs: int = -1  # joblib workers for scoring label files (-1 = all cores)


@dataclass
class CrfParams:
    """DenseCRF refinement of the val predictions (stage crf) and of the VOC test export."""

    # auto: DeepLab/CDL kernel (10, 3, 1, 4, 67, 3) for baseline/cdl_b/cdl_e, DuPL's
    # (10, 1, 1, 4, 121, 5) for dupl; each value below overrides the preset unless null
    preset: Literal["auto", "deeplab", "dupl"] = "auto"
    iter_max: int | None = None
    pos_w: float | None = None
    pos_xy_std: float | None = None
    bi_w: float | None = None
    bi_xy_std: float | None = None
    bi_rgb_std: float | None = None
    # CDL/deeplab-pytorch fidelity: the bilateral term sees the mean-subtracted image cast to
    # uint8 (negatives wrap, -3.7 -> 253) instead of the real RGB image
    wrapped_mean_image: bool = False
    n_jobs: int = -1    # workers over images (-1 = all cores)
    # where the images are refined (same outputs everywhere; wsss_core.parallel): local = joblib
    # with n_jobs processes; dask = a LocalCluster of n_jobs workers (scheduler null) or the
    # running cluster at `scheduler` (tcp://host:8786 or a scheduler file *.json)
    backend: Backend = "local"
    scheduler: str | None = None
    overlays: int = 4   # val images drawn as image | GT | no CRF | CRF in metrics/plots/overlays

    def validate(self, where: str) -> None:
        _check(self.iter_max is None or self.iter_max >= 1, f"{where}.iter_max", "must be >= 1")
        for name in ("pos_w", "bi_w"):
            value = getattr(self, name)
            _check(value is None or value >= 0, f"{where}.{name}", "must be >= 0")
        for name in ("pos_xy_std", "bi_xy_std", "bi_rgb_std"):
            value = getattr(self, name)
            _check(value is None or value > 0, f"{where}.{name}", "must be > 0")
        _check_workers(self, where)
        _check(self.overlays >= 0, f"{where}.overlays", "must be >= 0")


@dataclass
class TrainParams:
    """Training: a named preset of the method (beside its record in wsss_core.methods) plus
    overrides of its values."""

    # demo | voc12_coco_predtrain | voc12_imageNet_predtrain | coco (DeepLab/CDL); demo | voc | coco (DuPL)
    preset: str = "demo"
    nproc: int = 1                     # processes per node (torchrun --nproc-per-node)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # null = the preset's value
    iterations: int | None = None
    batch_size: int | None = None      # global batch of one step, split over the processes
    iter_size: int | None = None       # gradient accumulation steps per optimiser step
    crop: int | None = None
    lr: float | None = None
    checkpoint_every: int | None = None
    log_every: int | None = None
    num_workers: int | None = None
    init_weights: str | None = None    # local file; nothing is downloaded
    # least share of the backbone's keys init_weights must supply (0 = load partially on
    # purpose); DuPL's ViT weights must match every key
    init_min_share: float | None = None
    # fields of the method's options (CdlConfig / BaselineConfig / DuplConfig), over the preset's
    method_options: dict = field(default_factory=dict)
    # memory savers, same results (README "Training on GPUs"): recompute activations in backward
    # (ResNet stages, ViT blocks); NHWC convolutions (DeepLab family only)
    grad_checkpointing: bool = False
    channels_last: bool = False
    # fp32 (the papers') | bf16 | fp16: autocast of the forward, losses kept in float32; fp16
    # adds loss scaling (README "Training on GPUs")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # score the val split (no CRF) every N iterations and at the end, log val/miou, keep
    # models/<method>/model_best.pth; 0/null = off (model_best.pth is then the last model)
    val_every: int | None = None
    # scales of that validation: single (1.0) | inference (the method's test scales)
    val_scales: Literal["single", "inference"] = "single"

    _PRESET_KEYS = ("iterations", "batch_size", "iter_size", "crop", "lr", "checkpoint_every",
                    "log_every", "num_workers", "init_weights", "init_min_share")

    def overrides(self) -> dict:
        return {k: getattr(self, k) for k in self._PRESET_KEYS if getattr(self, k) is not None}

    def validate(self, where: str) -> None:
        _check(self.nproc >= 1, f"{where}.nproc", "must be >= 1")
        for key in ("iterations", "batch_size", "iter_size", "crop", "checkpoint_every", "log_every"):
            value = getattr(self, key)
            _check(value is None or value >= 1, f"{where}.{key}", "must be >= 1")
        _check(self.lr is None or self.lr > 0, f"{where}.lr", "must be > 0")
        _check(self.init_min_share is None or 0 <= self.init_min_share <= 1,
               f"{where}.init_min_share", "must be in [0, 1]")
        _check(self.val_every is None or self.val_every >= 0, f"{where}.val_every",
               "must be >= 0 (0 or null: no validation during training)")


@dataclass
class InferParams:
    nproc: int = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float16", "float32"] = "float16"   # stored logits
    # full: the (C, h, w) array, <id>.npy | compact: <id>.npz, at each cell the compact_top_k
    # most probable classes and one log-sum-exp for the rest (wsss_core.io; for COCO's 81 classes)
    logits: Literal["full", "compact"] = "full"
    compact_top_k: int = 8
    # a trained checkpoint to evaluate instead of the train stage's models/<method>/model.pth
    # ("" = that one): this project's, deeplab-pytorch's, CDL's, DuPL's or ToCo's .pth
    # (wsss_core.models.checkpoints)
    weights: str = ""
    # which model of the train stage: last (model.pth, as the papers report) | best
    # (model_best.pth, the best val score of train.val_every); infer.weights wins when set
    checkpoint: Literal["last", "best"] = "last"
    # fp32 | bf16 | fp16: autocast of the forward; logits are stored as `dtype` from float32
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"

    def validate(self, where: str) -> None:
        _check(self.nproc >= 1, f"{where}.nproc", "must be >= 1")
        _check(1 <= self.compact_top_k <= 255, f"{where}.compact_top_k",
               f"must be in 1..255 (classes kept per cell), got {self.compact_top_k}")

    @property
    def stored_top_k(self) -> int | None:
        """The compact form's classes per cell, None for full logits (`logits_io.store_logits`)."""
        return self.compact_top_k if self.logits == "compact" else None


@dataclass
class Params:
    method: str = "baseline"   # a name in wsss_core.methods.registry
    dataset: DatasetName = "synthetic"
    seed: int = 0
    data: DataParams = field(default_factory=DataParams)
    pseudo_labels: PseudoLabelParams = field(default_factory=PseudoLabelParams)
    train: TrainParams = field(default_factory=TrainParams)
    infer: InferParams = field(default_factory=InferParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    crf: CrfParams = field(default_factory=CrfParams)

    def validate(self, where: str) -> None:
        # the method name is checked against the registry by the pipeline (resolve_run), so
        # that loading params imports no method (and no torch)
        if self.pseudo_labels.simulated and self.dataset != "synthetic":
            raise ConfigError(
                f"params.yaml: pseudo_labels.source: simulate needs dataset 'synthetic' (got "
                f"'{self.dataset}'); use files (a folder or archive in pseudo_labels.path), "
                "cams or dupl"
            )

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES[self.dataset]


# --------------------------------------------------------------------------- loading
def load_params(path: str | Path = PARAMS_FILE, overrides: dict | None = None) -> Params:
    """Read and validate params.yaml; `overrides` maps dotted keys to values (for tests/tools)."""
    return params_from_dict(read_params_file(path, overrides), source=str(path))


def read_params_file(path: str | Path, overrides: dict | None = None) -> dict:
    """A params file's mapping, `overrides` (dotted keys → values) applied."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level: expected a mapping, got {raw!r}")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return raw


def load_group(path: str | Path, group: str, cls: type, overrides: dict | None = None):
    """One top-level group of a params file as dataclass `cls`, checked like params.yaml (for
    the pipelines beside the product, e.g. the benchmark's robustness/params.yaml)."""
    raw = read_params_file(path, overrides)
    unknown = sorted(set(raw) - {group})
    if unknown:
        raise ConfigError(f"{path}: unknown key '{unknown[0]}' (allowed: {group})")
    return _build(cls, raw.get(group), group, str(path))


def params_from_dict(raw: dict, source: str = PARAMS_FILE) -> Params:
    _reject_legacy_pseudo_label_keys(raw, source)
    return _build(Params, raw, "", source)


def _reject_legacy_pseudo_label_keys(raw, source: str) -> None:
    """The pre-mode layout (`source: <path>`, `simulate: true|false`) fails with the fix."""
    group = raw.get("pseudo_labels") if isinstance(raw, dict) else None
    if not isinstance(group, dict):
        return
    if "simulate" in group:
        raise ConfigError(f"{source}: pseudo_labels.simulate: removed; write pseudo_labels.source: "
                          "simulate (or files) and the folder as pseudo_labels.path")
    value = group.get("source")
    if isinstance(value, str) and value not in typing.get_args(PseudoLabelSource):
        raise ConfigError(f"{source}: pseudo_labels.source: is now the mode (simulate, files, "
                          f"cams, dupl), not a path: write source: files and path: {value}")


__all__ = ["NUM_CLASSES", "PARAMS_FILE", "Params", "VOC_NUM_CLASSES", "load_params", "load_group",
           "params_from_dict"]
