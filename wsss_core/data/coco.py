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
  changed (or that an older version wrote without a digest) is rendered again;
- memory does not grow with the annotations (`convert_coco`): the file is streamed (ijson), its
  annotations spilled to a temporary SQLite file beside the masks and read back chunk by chunk.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import sqlite3
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import ijson
import numpy as np
from joblib import Parallel, delayed, effective_n_jobs
from PIL import Image, PngImagePlugin
from pycocotools import mask as mask_utils

from ..cli import progress as progress_bar
from ..errors import DataError
from ..io import IGNORE_INDEX, atomic_path, label_to_png_image, read_label, write_id_list

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
    images, _ = _scan_images_and_categories(path)
    return [images[image_id][0] for image_id in sorted(images)]


def convert_coco(
    annotation_json: str | Path,
    out_dir: str | Path,
    n_jobs: int = 1,
    progress: bool = True,
    crowd: str = "ignore",
    chunk_size: int = 256,
    id_list: str | Path | None = None,
) -> dict:
    """Write `<out_dir>/<file_name stem>.png` for every image of a COCO instances file.

    Existing valid masks (decodable single-channel PNG of the image's size with class ids in
    range) rendered from the same annotations (their digest) are skipped, anything else at a
    mask's path is rewritten. `crowd` chooses what crowd
    regions become (see the module docstring). `id_list`, if given, also receives the split's id
    list (`coco_image_ids`, without reading the file again). Returns a summary: images, written,
    skipped, annotations, crowd_annotations, empty_images (images without annotations), categories.

    Memory does not grow with the annotations: the file is streamed (ijson) twice, once for its
    images and categories (kept: a stem and a size per image) and once for its annotations, which
    are validated one at a time and spilled to a temporary SQLite file beside `out_dir`, indexed by
    image id; each worker then reads only its chunk of consecutive image ids back from it.
    Parsing the whole file at once (json.load) needs several GB for COCO train, and keeping
    every image's annotations alive until the end grows with the count.
    """
    if crowd not in CROWD_POLICIES:
        raise ValueError(f"crowd must be one of {CROWD_POLICIES}, got {crowd!r}")
    path = Path(annotation_json)
    out_dir = Path(out_dir)
    images, classes = _scan_images_and_categories(path)
    with _spill_folder(out_dir) as spill:
        db_path = spill / "annotations.sqlite"
        counts = _spill_annotations(path, images, classes, db_path)
        if out_dir.exists() and not out_dir.is_dir():
            raise DataError(out_dir, "output path exists and is not a folder")
        out_dir.mkdir(parents=True, exist_ok=True)

        # Each task names its images; the worker reads their annotations from the spill itself.
        image_ids = sorted(images)
        workers = max(1, effective_n_jobs(n_jobs))
        size = max(1, min(chunk_size, math.ceil(len(image_ids) / (4 * workers)))) if image_ids else 1
        n_chunks = math.ceil(len(image_ids) / size)
        chunks = ([(image_id, *images[image_id]) for image_id in image_ids[i:i + size]]
                  for i in range(0, len(image_ids), size))
        num_classes = len(classes) + 1
        jobs = (delayed(_convert_chunk)(str(path), str(db_path), out_dir, chunk, num_classes, crowd)
                for chunk in chunks)
        results = Parallel(n_jobs=n_jobs, return_as="generator")(jobs)
        if progress:
            results = progress_bar(results, f"converting {path.name} (chunks of {size} images)",
                                   total=n_chunks)
        written = skipped = 0
        for chunk_written, chunk_skipped in results:
            written += chunk_written
            skipped += chunk_skipped
    if id_list is not None:
        write_id_list(id_list, (images[image_id][0] for image_id in image_ids))

    annotations, crowd_count, annotated_images = counts
    return {
        "images": len(images),
        "written": written,
        "skipped": skipped,
        "annotations": annotations,
        "crowd_annotations": crowd_count,
        "empty_images": len(images) - annotated_images,
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


def _chunk_annotations(db_path: str, first: int, last: int) -> dict[int, list]:
    """image id → [(annotation id, class id, iscrowd, segmentation)] in file order, for the
    spilled annotations of image ids first..last."""
    uri = f"{Path(db_path).resolve().as_uri()}?mode=ro"
    per_image: dict[int, list] = {}
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        rows = db.execute("SELECT image_id, payload FROM annotations WHERE image_id BETWEEN ? AND ? "
                          "ORDER BY image_id, seq", (first, last))
        for image_id, payload in rows:
            per_image.setdefault(image_id, []).append(tuple(json.loads(payload)))
    return per_image


def _convert_chunk(annotation_json: str, db_path: str, out_dir: Path, chunk, num_classes: int,
                   crowd: str):
    """Render one chunk of consecutive image ids: [(image id, stem, height, width)]."""
    per_image = _chunk_annotations(db_path, chunk[0][0], chunk[-1][0])
    written = skipped = 0
    for image_id, stem, height, width in chunk:
        image_annotations = per_image.get(image_id, [])
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


@contextlib.contextmanager
def _json_stream(path: Path) -> Iterator[BinaryIO]:
    """`path` opened for ijson; a syntax error anywhere in it becomes a one-line DataError."""
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        with open(path, "rb") as fh:
            yield fh
    except ijson.JSONError as exc:
        # yajl's messages span three lines (message, excerpt, caret); its UTF-8 one is bytes
        message = exc.args[0] if exc.args else ""
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        first = next((line.strip() for line in str(message).splitlines() if line.strip()), "")
        raise DataError(path, f"malformed JSON ({first or type(exc).__name__})") from None
    except OSError as exc:
        raise DataError(path, f"cannot read ({exc.strerror or exc})") from None


_STREAMED = ("images", "annotations", "categories")
_ITEMS = ("images.item", "categories.item")


def _scan_images_and_categories(path: Path) -> tuple[dict[int, tuple[str, int, int]], dict[int, int]]:
    """One streamed pass over the whole file (so any syntax error is found before anything is
    written): its top-level structure, image id → (file_name stem, height, width), and the class
    map. Annotations are skipped here (`_spill_annotations` reads them in a second pass): their
    checks need the images and categories, which may come after them in the file."""
    images: dict[int, tuple[str, int, int]] = {}
    stems: set[str] = set()
    category_ids: list[int] = []
    kinds: dict[str, str] = {}       # top-level key → the event that starts its value
    duplicate: str | None = None
    problems: dict[str, DataError] = {}  # first problem per list, raised once the syntax is known good
    indices = {"images.item": 0, "categories.item": 0}
    builder, building = None, ""
    pending: str | None = None       # the top-level key whose value starts with the next event

    def take(prefix: str, item) -> None:
        index = indices[prefix]
        indices[prefix] += 1
        if prefix in problems:
            return
        try:
            if prefix == "images.item":
                _add_image(path, index, item, images, stems)
            else:
                category_ids.append(_category_id(path, index, item))
        except DataError as exc:
            problems[prefix] = exc

    with _json_stream(path) as fh:
        events = ijson.parse(fh, use_float=True)
        _, first_event, _ = next(events)
        top_is_object = first_event == "start_map"
        # Per event, the common case (a number of an annotation's polygon) fails each test quickly
        for prefix, event, value in events:
            if builder is not None:
                builder.event(event, value)
                if prefix == building and event in ("end_map", "end_array"):
                    take(building, builder.value)
                    builder = None
                continue
            if prefix == "":
                if event == "map_key":
                    pending = value
                continue
            if pending is not None:
                if pending in kinds and pending in _STREAMED:
                    duplicate = duplicate or pending
                kinds[pending] = event
                pending = None
                continue
            if top_is_object and prefix in _ITEMS:
                if event in ("start_map", "start_array"):
                    builder, building = ijson.ObjectBuilder(), prefix
                    builder.event(event, value)
                else:
                    take(prefix, value)

    if not top_is_object:
        raise DataError(path, "not a COCO annotation file (top level is not an object)")
    missing = [key for key in _STREAMED if key not in kinds]
    if missing:
        raise DataError(path, f"not a COCO instances file: missing {', '.join(missing)}")
    for key in _STREAMED:
        if kinds[key] != "start_array":
            raise DataError(path, f"'{key}' is not a list")
    if duplicate:
        raise DataError(path, f"the key '{duplicate}' appears twice at the top level")
    for prefix in _ITEMS:
        if prefix in problems:
            raise problems[prefix]
    if len(set(category_ids)) != len(category_ids):
        raise DataError(path, "duplicate category ids")
    if len(category_ids) > MAX_CATEGORIES:
        raise DataError(path, f"{len(category_ids)} categories; at most {MAX_CATEGORIES} fit the 81-class masks")
    return images, category_map(category_ids)


def _add_image(path: Path, index: int, image, images: dict, stems: set) -> None:
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


def _category_id(path: Path, index: int, category) -> int:
    if not isinstance(category, dict) or not _is_int(category.get("id")):
        raise DataError(path, f"categories[{index}] has no integer id")
    return category["id"]


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


_SPILL_BATCH = 1000  # annotations per INSERT batch


@contextlib.contextmanager
def _spill_folder(out_dir: Path) -> Iterator[Path]:
    """A temporary folder beside `out_dir` (in its nearest existing ancestor: nothing is created
    before the file is validated), on the masks' disk rather than a possibly RAM-backed /tmp;
    removed afterwards, also on failure."""
    anchor = out_dir.absolute().parent
    while not anchor.is_dir() and anchor != anchor.parent:
        anchor = anchor.parent
    try:
        folder = tempfile.mkdtemp(prefix=f".{out_dir.name}.annotations-", dir=anchor)
    except OSError as exc:
        raise DataError(anchor, f"cannot create a temporary folder ({exc.strerror or exc})") from None
    try:
        yield Path(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _spill_annotations(path: Path, images: dict, classes: dict[int, int], db_path: Path):
    """Validate the annotations one at a time, in file order, and store each as
    `(image id, JSON [annotation id, class id, iscrowd, segmentation])` in a SQLite table indexed
    by image id (`seq` keeps the file order). Returns (annotations, crowd annotations, images
    with at least one annotation)."""
    total = crowd = 0
    try:
        with contextlib.closing(sqlite3.connect(db_path)) as db:
            db.execute("PRAGMA journal_mode = OFF")  # a scratch file: no rollback journal
            db.execute("PRAGMA synchronous = OFF")
            db.execute("CREATE TABLE annotations (seq INTEGER PRIMARY KEY, image_id INTEGER NOT NULL, "
                       "payload TEXT NOT NULL)")
            insert = "INSERT INTO annotations (image_id, payload) VALUES (?, ?)"
            batch: list[tuple[int, str]] = []
            with _json_stream(path) as fh:
                for index, ann in enumerate(ijson.items(fh, "annotations.item", use_float=True)):
                    image_id, entry = _annotation_entry(path, index, ann, images, classes)
                    batch.append((image_id, json.dumps(entry, separators=(",", ":"))))
                    total += 1
                    crowd += entry[2]
                    if len(batch) >= _SPILL_BATCH:
                        db.executemany(insert, batch)
                        batch.clear()
            db.executemany(insert, batch)
            db.execute("CREATE INDEX annotations_by_image ON annotations (image_id, seq)")
            annotated = db.execute("SELECT COUNT(DISTINCT image_id) FROM annotations").fetchone()[0]
            db.commit()
    except sqlite3.Error as exc:
        raise DataError(db_path, f"cannot store the annotations ({exc})") from None
    return total, crowd, annotated


def _annotation_entry(path: Path, index: int, ann, images: dict, classes: dict[int, int]):
    """(image id, (annotation id, class id, iscrowd, segmentation)) of one valid annotation."""
    if not isinstance(ann, dict) or not _is_int(ann.get("id")):
        raise DataError(path, f"annotations[{index}] has no integer id")
    ann_id = ann["id"]
    image_id, category_id = ann.get("image_id"), ann.get("category_id")
    # `in` on a number, as before the streaming: 9.0 names image 9; a list or object names none
    if not isinstance(image_id, (int, float)) or image_id not in images:
        raise DataError(path, f"annotation {ann_id} refers to unknown image id {image_id}")
    if not isinstance(category_id, (int, float)) or category_id not in classes:
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
    return int(image_id), (ann_id, classes[category_id], int(iscrowd), ann["segmentation"])
