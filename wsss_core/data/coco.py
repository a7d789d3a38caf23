"""COCO instance annotations → VOC-style class-id masks (one palette PNG per image).

The WSSS codebases (ToCo, DuPL, CDL) train and score COCO 2014 as 81 classes: 0 = background and
1..80 = the COCO thing categories in sorted category-id order. Their lists name images by the
`file_name` stem (`COCO_train2014_000000000009`) and expect `<stem>.png` masks, which this module
writes from an `instances_{train,val}2014.json` with pycocotools:

- class ids 1..80 from the sorted category ids (`category_map`), so id 90 (toothbrush) → 80; the
  commonly used alicranck/coco2voc writes the raw category id instead, which breaks 81-class code;
- non-crowd instances are painted from largest to smallest area (area = mask pixel count; equal
  areas in increasing annotation id), so a smaller object stays on top of a larger one it overlaps;
- crowd regions (`iscrowd=1`) become 255 (ignore) where no non-crowd instance covers them
  (`crowd="ignore"`, default); `crowd="class"` paints them like any instance (coco2voc's
  behaviour) and `crowd="background"` drops them;
- every image of the file gets a PNG, all background when it has no annotation;
- the whole file is validated before anything is written; each mask is written atomically and
  byte-identically across runs and carries (in a PNG text chunk, `DIGEST_KEY`) a digest of what it
  was rendered from: the image's size, its annotations and the crowd policy. An existing valid
  mask with the same digest is kept, so an interrupted run resumes, and a mask whose annotations
  changed (or that an older version wrote without a digest) is rendered again.
"""
from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed, effective_n_jobs
from PIL import Image, PngImagePlugin
from pycocotools import mask as mask_utils

from ..cli import progress as progress_bar
from ..errors import DataError
from ..io import IGNORE_INDEX, atomic_path, label_to_png_image, read_json, read_label

MAX_CATEGORIES = 80
CROWD_POLICIES = ("ignore", "class", "background")
_MIN_POLYGON_COORDS = 6  # three points; fewer has no area (and pycocotools reads 4 numbers as a box)
DIGEST_KEY = "wsss-coco-annotations"  # the masks' PNG text chunk holding annotations_digest()


# --------------------------------------------------------------------------- public helpers
def category_map(categories) -> dict[int, int]:
    """COCO category id → contiguous class id 1..n in sorted category-id order (0 = background).

    `categories` is the JSON `categories` list (dicts with an `id`) or plain category ids.
    """
    ids = [c["id"] if isinstance(c, dict) else c for c in categories]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate category ids in {ids}")
    return {cid: index + 1 for index, cid in enumerate(sorted(ids))}


def coco_image_ids(annotation_json: str | Path) -> list[str]:
    """The `file_name` stems of the file's images in image-id order (the split's id list)."""
    path = Path(annotation_json)
    data = _load(path)
    images = _check_images(path, data)
    return [images[image_id][0] for image_id in sorted(images)]


def convert_coco(
    annotation_json: str | Path,
    out_dir: str | Path,
    n_jobs: int = 1,
    progress: bool = True,
    crowd: str = "ignore",
    chunk_size: int = 256,
) -> dict:
    """Write `<out_dir>/<file_name stem>.png` for every image of a COCO instances file.

    Existing valid masks (decodable single-channel PNG of the image's size with class ids in
    range) rendered from the same annotations (their digest) are skipped, anything else at a
    mask's path is rewritten. `crowd` chooses what crowd
    regions become (see the module docstring). Returns a summary: images, written, skipped,
    annotations, crowd_annotations, empty_images (images without annotations), categories.
    """
    if crowd not in CROWD_POLICIES:
        raise ValueError(f"crowd must be one of {CROWD_POLICIES}, got {crowd!r}")
    path = Path(annotation_json)
    out_dir = Path(out_dir)
    data = _load(path)
    images = _check_images(path, data)
    classes = _check_categories(path, data)
    per_image = _check_annotations(path, data, images, classes)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(out_dir, "output path exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)

    # Each task gets only its own images' annotations: the parsed JSON is never re-sent whole.
    tasks = [(stem, height, width, per_image.get(image_id, []))
             for image_id, (stem, height, width) in sorted(images.items())]
    workers = max(1, effective_n_jobs(n_jobs))
    size = max(1, min(chunk_size, math.ceil(len(tasks) / (4 * workers)))) if tasks else 1
    chunks = [tasks[i:i + size] for i in range(0, len(tasks), size)]
    num_classes = len(classes) + 1
    jobs = (delayed(_convert_chunk)(str(path), out_dir, chunk, num_classes, crowd) for chunk in chunks)
    results = Parallel(n_jobs=n_jobs, return_as="generator")(jobs)
    if progress:
        results = progress_bar(results, f"converting {path.name} (chunks of {size} images)",
                               total=len(chunks))
    written = skipped = 0
    for chunk_written, chunk_skipped in results:
        written += chunk_written
        skipped += chunk_skipped

    annotations = data["annotations"]
    crowd_count = sum(1 for ann in annotations if ann.get("iscrowd", 0))
    return {
        "images": len(images),
        "written": written,
        "skipped": skipped,
        "annotations": len(annotations),
        "crowd_annotations": crowd_count,
        "empty_images": len(images) - len(per_image),
        "categories": len(classes),
    }


def render_mask(height: int, width: int, annotations, crowd: str = "ignore") -> np.ndarray:
    """The H×W uint8 class-id mask of one image.

    `annotations` are `(annotation_id, class_id, iscrowd, segmentation)` with class ids already
    mapped to 1..80 and segmentations in any COCO form (polygons, uncompressed or compressed RLE).
    """
    # Column-major like pycocotools' decoded masks, so painting walks both arrays in step
    label = np.zeros((height, width), np.uint8, order="F")
    crowd_rles, instances = [], []
    for position, (ann_id, class_id, iscrowd, segmentation) in enumerate(annotations):
        rle = _to_rle(segmentation, height, width)
        if rle is None:
            continue
        if iscrowd and crowd == "background":
            continue
        if iscrowd and crowd == "ignore":
            crowd_rles.append(rle)
            continue
        area = int(mask_utils.area(rle))
        instances.append((-area, ann_id, position, class_id, rle))
    if crowd_rles:
        # 255 first: any non-crowd instance painted afterwards takes those pixels back
        np.copyto(label, IGNORE_INDEX, where=_decode(mask_utils.merge(crowd_rles)))
    for *_, class_id, rle in sorted(instances, key=lambda item: item[:3]):
        np.copyto(label, class_id, where=_decode(rle))
    return np.ascontiguousarray(label)


def _decode(rle) -> np.ndarray:
    """One RLE as an H×W (column-major) bool mask."""
    with warnings.catch_warnings():
        # pycocotools 2.0.11 builds its array through a NumPy-2-deprecated __array__ signature
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        mask = mask_utils.decode(rle)
    return mask.view(np.bool_)  # decode yields 0/1 uint8: a free reinterpretation


# --------------------------------------------------------------------------- workers
def _to_rle(segmentation, height: int, width: int):
    """A COCO segmentation as one RLE (pycocotools `annToRLE` logic), or None when empty."""
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= _MIN_POLYGON_COORDS]
        if not polygons:
            return None
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def annotations_digest(height: int, width: int, annotations, crowd: str) -> str:
    """Identifies what one mask is rendered from (`render_mask`'s arguments)."""
    blob = json.dumps([height, width, crowd, annotations], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _existing_is_current(path: Path, height: int, width: int, num_classes: int,
                         digest: str) -> bool:
    if not path.is_file():
        return False
    try:
        with Image.open(path) as img:  # text chunks before the pixels are read with the header
            if img.info.get(DIGEST_KEY) != digest:
                return False
        read_label(path, num_classes, expected_hw=(height, width))
    except (DataError, OSError, SyntaxError, ValueError):
        return False
    return True


def _write_mask(path: Path, label: np.ndarray, digest: str) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text(DIGEST_KEY, digest)
    with atomic_path(path) as tmp:
        label_to_png_image(label).save(tmp, "PNG", pnginfo=info)


def _convert_chunk(annotation_json: str, out_dir: Path, chunk, num_classes: int, crowd: str):
    written = skipped = 0
    for stem, height, width, image_annotations in chunk:
        dest = out_dir / f"{stem}.png"
        digest = annotations_digest(height, width, image_annotations, crowd)
        if _existing_is_current(dest, height, width, num_classes, digest):
            skipped += 1
            continue
        try:
            label = render_mask(height, width, image_annotations, crowd)
        except Exception as exc:  # pycocotools raises bare Exception/TypeError on bad input
            raise DataError(annotation_json,
                            f"image {stem}: cannot decode a segmentation ({exc})") from None
        _write_mask(dest, label, digest)
        written += 1
    return written, skipped


# --------------------------------------------------------------------------- validation
def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _load(path: Path) -> dict:
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(path, "not a COCO annotation file (top level is not an object)")
    missing = [key for key in ("images", "annotations", "categories") if key not in data]
    if missing:
        raise DataError(path, f"not a COCO instances file: missing {', '.join(missing)}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise DataError(path, f"'{key}' is not a list")
    return data


def _check_images(path: Path, data: dict) -> dict[int, tuple[str, int, int]]:
    """image id → (file_name stem, height, width)."""
    images: dict[int, tuple[str, int, int]] = {}
    stems: set[str] = set()
    for index, image in enumerate(data["images"]):
        if not isinstance(image, dict) or not _is_int(image.get("id")):
            raise DataError(path, f"images[{index}] has no integer id")
        image_id = image["id"]
        name, height, width = image.get("file_name"), image.get("height"), image.get("width")
        if not isinstance(name, str) or not Path(name).stem:
            raise DataError(path, f"image {image_id} has no file_name")
        if not (_is_int(height) and _is_int(width) and height > 0 and width > 0):
            raise DataError(path, f"image {image_id} has no positive integer height/width")
        if image_id in images:
            raise DataError(path, f"duplicate image id {image_id}")
        stem = Path(name).stem
        if stem in stems:
            raise DataError(path, f"two images have the file name stem {stem}")
        stems.add(stem)
        images[image_id] = (stem, height, width)
    return images


def _check_categories(path: Path, data: dict) -> dict[int, int]:
    ids = []
    for index, category in enumerate(data["categories"]):
        if not isinstance(category, dict) or not _is_int(category.get("id")):
            raise DataError(path, f"categories[{index}] has no integer id")
        ids.append(category["id"])
    if len(set(ids)) != len(ids):
        raise DataError(path, "duplicate category ids")
    if len(ids) > MAX_CATEGORIES:
        raise DataError(path, f"{len(ids)} categories; at most {MAX_CATEGORIES} fit the 81-class masks")
    return category_map(ids)


def _segmentation_problem(segmentation, height: int, width: int) -> str | None:
    """Why a segmentation cannot be rasterised on a height×width image, or None if it can."""
    if isinstance(segmentation, list):
        for polygon in segmentation:
            if not isinstance(polygon, list) or not all(_is_number(v) for v in polygon):
                return "polygon is not a list of numbers"
            if len(polygon) % 2:
                return f"polygon has an odd number of coordinates ({len(polygon)})"
        return None
    if not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
        return "segmentation is neither polygons nor RLE with counts and size"
    size = segmentation["size"]
    if not isinstance(size, list) or size != [height, width]:
        return f"RLE size {size} differs from the image's [{height}, {width}]"
    counts = segmentation["counts"]
    if isinstance(counts, list):
        if not all(_is_int(c) and c >= 0 for c in counts):
            return "uncompressed RLE counts are not non-negative integers"
        if sum(counts) != height * width:
            return f"uncompressed RLE counts sum to {sum(counts)}, not {height}*{width}"
        return None
    if not isinstance(counts, (str, bytes)):
        return "RLE counts are neither a list nor a string"
    return None


def _check_annotations(path: Path, data: dict, images: dict, classes: dict[int, int]):
    """image id → [(annotation id, class id, iscrowd, segmentation)], in file order."""
    per_image: dict[int, list] = {}
    for index, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not _is_int(ann.get("id")):
            raise DataError(path, f"annotations[{index}] has no integer id")
        ann_id = ann["id"]
        image_id, category_id = ann.get("image_id"), ann.get("category_id")
        if image_id not in images:
            raise DataError(path, f"annotation {ann_id} refers to unknown image id {image_id}")
        if category_id not in classes:
            raise DataError(path, f"annotation {ann_id} refers to unknown category id {category_id}")
        iscrowd = ann.get("iscrowd", 0)
        if iscrowd not in (0, 1):
            raise DataError(path, f"annotation {ann_id} has iscrowd={iscrowd!r} (expected 0 or 1)")
        if "segmentation" not in ann:
            raise DataError(path, f"annotation {ann_id} has no segmentation")
        _, height, width = images[image_id]
        problem = _segmentation_problem(ann["segmentation"], height, width)
        if problem:
            raise DataError(path, f"annotation {ann_id}: {problem}")
        per_image.setdefault(image_id, []).append(
            (ann_id, classes[category_id], int(iscrowd), ann["segmentation"]))
    return per_image
