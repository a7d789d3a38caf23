"""Stage prepare_data: make the configured dataset ready and describe it.

- synthetic: generate the embedded dataset in VOC layout;
- voc12: check the user's VOC 2012 + SBD copy (every listed id has an image and GT of one size);
- coco14: convert COCO instance annotations to VOC-style masks where they are missing, then check.

Each writes `cls_labels.json` (image-level labels of every train and val image, and of the
synthetic test images; the labels DuPL trains from) and `summary.json` into
`data/prepared/<dataset>/`, replaced as a whole. The synthetic data also has a test split with GT
and, with `data.synthetic.context` > 0, context maps (`VOC2012/SegmentationContext/`), whose
per-class figures go into the summary.
"""
from __future__ import annotations

from pathlib import Path

from joblib import Parallel, delayed

from ..cli import progress
from ..config import Params
from ..data.classes import classes_in_label, read_class_labels, write_class_labels
from ..data.coco import convert_coco
from ..data.datasets import SYNTHETIC_FOLDER, Split, resolve_split, voc_layout_split
from ..errors import DataError
from ..io import atomic_dir, image_size, read_label, write_json
from ..synthetic import generate_dataset
from .paths import RunPaths
from .resolve import resolve_run


def _check_chunk(split: Split, ids: list[str], num_classes: int) -> dict[str, list[int]]:
    """Check one chunk of ids; return their image-level labels derived from the GT."""
    labels = {}
    for image_id in ids:
        hw = image_size(split.image_path(image_id))
        gt = read_label(split.gt_path(image_id), num_classes, expected_hw=hw)
        labels[image_id] = classes_in_label(gt, num_classes)
    return labels


def check_split(split: Split, num_classes: int, n_jobs: int = 1, chunk_size: int = 128) -> dict[str, list[int]]:
    """Every id has a readable image and a valid GT of the same size; returns GT class labels."""
    ids = split.ids
    chunks = [ids[i:i + chunk_size] for i in range(0, len(ids), chunk_size)]
    jobs = (delayed(_check_chunk)(split, chunk, num_classes) for chunk in chunks)
    labels: dict[str, list[int]] = {}
    for part in progress(Parallel(n_jobs=n_jobs, return_as="generator", prefer="threads")(jobs),
                         f"checking {split.name}", total=len(chunks)):
        labels.update(part)
    return labels


def _convert_coco_masks(params: Params) -> None:
    cfg = params.data.coco14
    for split_name, annotation_file in (("train", cfg.train_annotations), ("val", cfg.val_annotations)):
        split = resolve_split(params, split_name)
        ann = Path(annotation_file) if Path(annotation_file).is_absolute() else Path(cfg.root) / annotation_file
        if not ann.is_file():
            if not split.gt_dir.is_dir():
                raise DataError(ann, f"annotation file not found and no masks in {split.gt_dir}")
            continue  # masks already there, annotations not needed
        # the id list comes from the same read of the file as the masks
        convert_coco(ann, split.gt_dir, n_jobs=cfg.n_jobs,
                     id_list=None if split.list_file.is_file() else split.list_file)


def prepare_dataset(params: Params, out: Path) -> dict:
    """Run the prepare stage for `params.dataset` into `out` (replaced as a whole); returns the
    summary it writes."""
    num_classes = params.num_classes
    out = Path(out)
    with atomic_dir(out) as tmp:
        if params.dataset == "synthetic":
            generated = generate_dataset(tmp / SYNTHETIC_FOLDER, params.data.synthetic)
            names = ("train", "val", "test") if params.data.synthetic.num_test else ("train", "val")
            splits = {name: voc_layout_split(tmp / SYNTHETIC_FOLDER, name, test_has_gt=True)
                      for name in names}
            n_jobs, given_labels = 1, ""
            context_figures = generated.get("context")
        else:
            if params.dataset == "coco14" and params.data.coco14.convert:
                _convert_coco_masks(params)
            cfg = params.data.voc12 if params.dataset == "voc12" else params.data.coco14
            splits = {name: resolve_split(params, name) for name in ("train", "val")}
            n_jobs, given_labels = -1, cfg.class_labels
            context_figures = None
        class_labels: dict[str, list[int]] = {}
        summary = {"dataset": params.dataset, "num_classes": num_classes, "splits": {}}
        for name, split in splits.items():
            derived = check_split(split, num_classes, n_jobs=n_jobs)
            class_labels.update(derived)
            summary["splits"][name] = {"images": len(derived),
                                       "list": str(resolve_split(params, name, out).list_file)}
        if context_figures:   # per class: share of images with context, context/object area
            summary["context"] = context_figures
        if given_labels:
            # users of DuPL/ToCo may bring their own cls_labels file; it must cover every image
            given = read_class_labels(given_labels, num_classes)
            missing = sorted(set(class_labels) - set(given))
            if missing:
                raise DataError(given_labels, f"no image-level label for id {missing[0]}")
            class_labels = {key: given[key] for key in class_labels}
        write_class_labels(tmp / "cls_labels.json", class_labels)
        write_json(tmp / "summary.json", summary)
    return summary


def prepare_data(params: Params, paths: RunPaths) -> dict:
    """The prepare stage: the dataset in `paths.prepared` (the configuration is checked first,
    so a misspelt method fails before minutes of data preparation)."""
    resolve_run(params)
    return prepare_dataset(params, paths.prepared)
