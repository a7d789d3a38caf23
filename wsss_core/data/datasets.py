"""Where each split's images, ground truth, pseudo labels and class labels live.

Every stage resolves files through `resolve_split`, so the three datasets (synthetic, VOC 2012,
COCO 2014) look the same downstream: a list of ids, an image folder and a GT folder.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import Params
from ..errors import ConfigError
from ..io import iter_id_list, read_id_list
from .classes import DATASET_CLASSES

# the synthetic dataset is generated in VOC layout in this folder of the prepare stage's output
SYNTHETIC_FOLDER = "VOC2012"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """One split: ids plus the folders their files are in (`gt_dir` None where there is no GT)."""

    name: str
    list_file: Path
    image_dir: Path
    gt_dir: Path | None
    image_ext: str = ".jpg"
    label_ext: str = ".png"

    @property
    def ids(self) -> list[str]:
        return read_id_list(self.list_file)

    def iter_ids(self):
        """The ids one by one in constant memory (`io.iter_id_list`: no repeated-id check)."""
        return iter_id_list(self.list_file)

    def image_path(self, image_id: str) -> Path:
        return self.image_dir / f"{image_id}{self.image_ext}"

    def gt_path(self, image_id: str) -> Path:
        if self.gt_dir is None:
            raise ConfigError(f"split '{self.name}' has no ground truth")
        return self.gt_dir / f"{image_id}{self.label_ext}"


def _under(root: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else root / p


def voc_layout_split(root: Path, split: str, image_dir: str = "JPEGImages",
                     gt_dir: str = "SegmentationClassAug", list_file: str | None = None,
                     test_has_gt: bool = False) -> Split:
    """A split of a dataset in VOC layout under `root` (the synthetic data, VOC 2012). VOC's
    test split has no GT; the synthetic one (`test_has_gt`) has."""
    default_lists = {"train": "ImageSets/Segmentation/train_aug.txt",
                     "val": "ImageSets/Segmentation/val.txt",
                     "test": "ImageSets/Segmentation/test.txt"}
    return Split(
        name=split,
        list_file=_under(root, list_file or default_lists[split]),
        image_dir=_under(root, image_dir),
        gt_dir=None if split == "test" and not test_has_gt else _under(root, gt_dir),
    )


def resolve_split(params: Params, split: str, prepared: Path | None = None) -> Split:
    """A split of the configured dataset; the synthetic one lives in the prepare stage's output
    `prepared` (default data/prepared/synthetic)."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split '{split}' (allowed: {', '.join(SPLITS)})")
    if params.dataset == "synthetic":
        prepared = Path("data/prepared/synthetic") if prepared is None else Path(prepared)
        return voc_layout_split(prepared / SYNTHETIC_FOLDER, split, test_has_gt=True)
    if params.dataset == "voc12":
        cfg = params.data.voc12
        lists = {"train": cfg.train_list, "val": cfg.val_list, "test": cfg.test_list}
        return voc_layout_split(Path(cfg.root), split, cfg.image_dir, cfg.eval_label_dir, lists[split])
    cfg = params.data.coco14
    root = Path(cfg.root)
    if split == "test":
        raise ConfigError("coco14 has no test split here (use val)")
    folder = "train2014" if split == "train" else "val2014"
    image_dir = cfg.train_image_dir if split == "train" else cfg.val_image_dir
    return Split(
        name=split,
        list_file=_under(root, cfg.train_list if split == "train" else cfg.val_part or cfg.val_list),
        image_dir=_under(root, image_dir),
        gt_dir=_under(root, cfg.label_dir) / folder,
    )


def subset_label(params: Params, split: str) -> str | None:
    """What part of `split` is scored when it is not the whole split (COCO's `val_part`), for
    the metric files: "<list>: <n> of <N> val images"; None for a whole split."""
    cfg = params.data.coco14
    if params.dataset != "coco14" or split != "val" or not cfg.val_part:
        return None
    root = Path(cfg.root)
    part = len(read_id_list(_under(root, cfg.val_part)))
    full = _under(root, cfg.val_list)
    of = f" of {len(read_id_list(full))}" if full.is_file() else ""
    return f"{Path(cfg.val_part).name}: {part}{of} val images"


def class_names(params: Params) -> tuple[str, ...]:
    return DATASET_CLASSES[params.dataset]


def scored_splits(params: Params) -> list[str]:
    """The splits with GT that inference and the CRF score: val (where presets, thresholds and
    DuPL's student are chosen) and the held-out test split results are reported on where it has
    GT (the synthetic data's; VOC's test GT is on the evaluation server, COCO has no test here)."""
    held_out = params.dataset == "synthetic" and params.data.synthetic.num_test > 0
    return ["val", "test"] if held_out else ["val"]
