"""Synthetic data at the real scale of VOC 2012 (aug) and COCO 2014, for `benchmarks/scale.py`.

The project's generator (`wsss_core.synthetic`) draws square images of the demo's VOC classes;
the rehearsal needs the real image sizes and orientations and, for COCO, labels spread over all
80 classes. So this module renders its own, fast: a textured background, a few jittered
polygons per image (class colour + stripes), the GT painted from those polygons (COCO: by the
project's own `wsss_core.data.coco.render_mask`, so the masks equal what the prepare stage
converts; VOC: with VOC's 255 border band).

Rendering happens once, outside every timed part: a pool of `pool` distinct samples is rendered
and every image id is a hard link to a pool file (`id i` → sample `i % pool`), so 82,081 COCO
images cost no disk and no time. Only the DVC sets need files of distinct content (DVC stores
equal contents once): `write_unique_pngs` / `write_unique_logits` make every file distinct
cheaply (a PNG text chunk naming the id; the id in the first logits values).

Class statistics (per image): VOC 1 + Binomial-ish categories (mean ≈ 1.5 < 2), ≈ 1.3 instances
per category (< 3 instances per image); COCO ≈ 3.5 categories (1 + Poisson 2.5, at most 12),
≈ 2.2 instances per category (≈ 7.7 per image), "person" in half the images, the other 79
classes drawn from a Zipf-like long tail.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from wsss_core.data.coco import render_mask
from wsss_core.io import IGNORE_INDEX, label_to_png_image, write_id_list
from wsss_core.logits_io import read_logits, write_compact_logits, write_logits


@dataclass(frozen=True)
class DatasetSpec:
    """The real-scale facts of one dataset (`/work/shared/spec/scale.md`)."""

    name: str
    train_images: int
    val_images: int
    num_classes: int
    landscape: tuple[int, int]           # (H, W); the portrait orientation is (W, H)
    portrait_share: float
    person_class: int                    # contiguous class id of "person"
    person_share: float                  # share of images with a person
    extra_categories: float              # mean categories beyond the first
    max_categories: int
    extra_instances: float               # mean instances per category beyond the first
    # the logits form a user stores (README "Compact logits for COCO"): None = full .npy, else
    # compact .npz of the top k classes per cell (infer.logits: compact, infer.compact_top_k)
    compact_top_k: int | None = None

    @property
    def logits_suffix(self) -> str:
        return ".npy" if self.compact_top_k is None else ".npz"

    @property
    def sizes(self) -> list[list[int]]:
        h, w = self.landscape
        return [[h, w], [w, h]]

    def train_id(self, index: int) -> str:
        return f"COCO_train2014_{index:012d}" if self.name == "coco14" else f"2011_{index:06d}"

    def val_id(self, index: int) -> str:
        return f"COCO_val2014_{index:012d}" if self.name == "coco14" else f"2012_{index:06d}"


DATASETS = {
    "voc12": DatasetSpec("voc12", 10_582, 1_449, 21, (375, 500), 0.3, 15, 0.3, 0.5, 4, 0.3),
    "coco14": DatasetSpec("coco14", 82_081, 40_137, 81, (480, 640), 0.35, 1, 0.5, 2.5, 12, 1.2,
                          compact_top_k=8),
}


def deeplab_grid(side: int) -> int:
    """DeepLab v2's output side (stride 8: stride-2 conv, ceil-mode pool, stride-2 layer3)."""
    a = (side - 1) // 2 + 1
    b = -(-(a - 1) // 2) + 1
    return (b - 1) // 2 + 1


# --------------------------------------------------------------------------- one sample
def _categories(rng: np.random.Generator, spec: DatasetSpec) -> list[int]:
    count = int(min(spec.max_categories, 1 + rng.poisson(spec.extra_categories)))
    others = [c for c in range(1, spec.num_classes) if c != spec.person_class]
    chosen: list[int] = []
    if rng.random() < spec.person_share:
        chosen.append(spec.person_class)
    # long tail over the other classes; which class gets which rank is fixed per dataset
    weights = 1.0 / np.arange(1, len(others) + 1) ** 0.8
    weights = weights[np.random.default_rng(spec.num_classes).permutation(len(others))]
    picks = rng.choice(len(others), size=len(others), replace=False, p=weights / weights.sum())
    for index in picks:
        if len(chosen) >= count:
            break
        chosen.append(others[index])
    return chosen[:max(count, 1)]


def _polygon(rng: np.random.Generator, h: int, w: int) -> list[float]:
    """A jittered star-shaped polygon (12–32 vertices), COCO's [x0, y0, x1, y1, ...]."""
    side = min(h, w)
    rx, ry = rng.uniform(0.04, 0.35, 2) * side
    cx, cy = rng.uniform(rx, max(rx + 1, w - rx)), rng.uniform(ry, max(ry + 1, h - ry))
    n = int(rng.integers(12, 33))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radius = rng.uniform(0.7, 1.0, n)
    xs = np.clip(cx + rx * radius * np.cos(angles), 0, w - 1)
    ys = np.clip(cy + ry * radius * np.sin(angles), 0, h - 1)
    return [round(float(v), 2) for pair in zip(xs, ys) for v in pair]


def _paint_voc(h: int, w: int, instances) -> np.ndarray:
    """VOC GT: instances painted largest first (smaller ones on top), 255 on object borders."""
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    areas = []
    for class_id, polygon in instances:
        mask = Image.new("1", (w, h), 0)
        ImageDraw.Draw(mask).polygon(polygon, fill=1)
        areas.append((-int(np.count_nonzero(np.asarray(mask))), class_id, polygon))
    for _, class_id, polygon in sorted(areas, key=lambda a: a[0]):
        draw.polygon(polygon, fill=int(class_id))
    label = np.asarray(canvas, dtype=np.uint8)
    edge = np.zeros(label.shape, bool)
    vertical, horizontal = label[:-1] != label[1:], label[:, :-1] != label[:, 1:]
    edge[:-1] |= vertical
    edge[1:] |= vertical
    edge[:, :-1] |= horizontal
    edge[:, 1:] |= horizontal
    out = label.copy()
    out[edge] = IGNORE_INDEX
    return out


def _image(rng: np.random.Generator, label: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Textured background; objects in their class colour with stripes; 255 takes a neighbour."""
    h, w = label.shape
    coarse = rng.integers(40, 200, (max(2, h // 32), max(2, w // 32), 3), dtype=np.uint8)
    background = np.asarray(Image.fromarray(coarse, "RGB").resize((w, h), Image.BILINEAR),
                            dtype=np.int16)
    classes = np.where(label == IGNORE_INDEX, 0, label)
    stripes = ((np.arange(w)[None, :] + np.arange(h)[:, None]) // 6 % 2 * 30).astype(np.int16)
    objects = colours[classes].astype(np.int16) + stripes[..., None]
    image = np.where((classes > 0)[..., None], objects, background)
    image += rng.integers(-12, 13, image.shape, dtype=np.int16)
    return np.clip(image, 0, 255).astype(np.uint8)


@dataclass
class Sample:
    hw: tuple[int, int]
    annotations: list[tuple[int, list[float]]]   # (class id 1..C-1, polygon)
    classes: list[int]                           # present foreground classes (the GT's)
    jpeg: bytes
    gt_png: bytes
    label: np.ndarray


def render_sample(spec: DatasetSpec, index: int, seed: int = 0, scale: float = 1.0) -> Sample:
    rng = np.random.default_rng([seed, index, spec.num_classes])
    h, w = spec.landscape if rng.random() >= spec.portrait_share else spec.landscape[::-1]
    h, w = max(16, round(h * scale)), max(16, round(w * scale))
    instances = []
    for class_id in _categories(rng, spec):
        for _ in range(1 + rng.poisson(spec.extra_instances)):
            instances.append((class_id, _polygon(rng, h, w)))
    if spec.name == "coco14":
        label = render_mask(h, w, [(i, c, 0, [p]) for i, (c, p) in enumerate(instances)])
    else:
        label = _paint_voc(h, w, instances)
    colours = np.random.default_rng([seed, 7]).integers(0, 226, (spec.num_classes, 3))
    image = _image(rng, label, colours)
    jpeg, png = BytesIO(), BytesIO()
    Image.fromarray(image, "RGB").save(jpeg, "JPEG", quality=90)
    label_to_png_image(label).save(png, "PNG")
    present = sorted(int(v) for v in np.unique(label) if 0 < v < spec.num_classes)
    return Sample((h, w), instances, present, jpeg.getvalue(), png.getvalue(), label)


# --------------------------------------------------------------------------- the pool
def grid_logits(spec: DatasetSpec, sample, rng: np.random.Generator) -> np.ndarray:
    """Logits (C×h×w float32) on DeepLab's stride-8 grid of `sample`: its GT one-hot (nearest)
    plus N(0, 1) noise, so the CRF has something to refine."""
    h, w = sample.hw
    gh, gw = deeplab_grid(h), deeplab_grid(w)
    small = sample.label[np.linspace(0, h - 1, gh).astype(int)][:, np.linspace(0, w - 1, gw).astype(int)]
    logits = rng.normal(0, 1, (spec.num_classes, gh, gw)).astype(np.float32)
    valid = small != IGNORE_INDEX
    logits[small[valid], np.nonzero(valid)[0], np.nonzero(valid)[1]] += 3.0
    return logits


class Pool:
    """`size` rendered samples with their derived files (image, GT, logits, CAMs) on disk."""

    def __init__(self, spec: DatasetSpec, folder: Path, size: int, scale: float = 1.0, seed: int = 0):
        # here, not at the top: importing torch would be in every measured child's RSS
        from wsss_core.cam.store import save_cams

        self.spec, self.folder, self.size = spec, Path(folder), size
        self.folder.mkdir(parents=True, exist_ok=True)
        self.samples = [render_sample(spec, i, seed, scale) for i in range(size)]
        rng = np.random.default_rng([seed, 99])
        for i, sample in enumerate(self.samples):
            (self.folder / f"{i}.jpg").write_bytes(sample.jpeg)
            (self.folder / f"{i}.png").write_bytes(sample.gt_png)
            h, w = sample.hw
            write_form(self.file(i, LOGITS + spec.logits_suffix), grid_logits(spec, sample, rng),
                       spec.compact_top_k)
            # stored CAMs of the present classes (stage cams' format): soft GT masks
            masks = np.stack([(sample.label == c).astype(np.float32) * 0.8 for c in sample.classes]) \
                if sample.classes else np.zeros((0, h, w), np.float32)
            masks += rng.uniform(0, 0.2, masks.shape).astype(np.float32)
            save_cams(self.folder / f"{i}.npz", masks, sample.classes, stride=4)

    def of(self, index: int) -> Sample:
        return self.samples[index % self.size]

    def file(self, index: int, suffix: str) -> Path:
        return self.folder / f"{index % self.size}{suffix}"


LOGITS = ".logits"   # pool files `<i>.logits.npy|npz`, apart from the CAMs' `<i>.npz`


def write_form(path: Path, logits: np.ndarray, compact_top_k: int | None) -> None:
    """float16 logits in the form the dataset's users store (full, or compact top k)."""
    if compact_top_k is None:
        write_logits(path, logits)
    else:
        write_compact_logits(path, logits, compact_top_k)


def link_files(pool: Pool, ids: list[str], folder: Path, suffix: str, start: int = 0,
               pool_suffix: str | None = None) -> None:
    """`<folder>/<id><suffix>` hard-linked to the pool file (`<i><pool_suffix>`, default
    `suffix`) of sample `start + position` (an existing link is kept)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, image_id in enumerate(ids, start):
        dest = folder / f"{image_id}{suffix}"
        if not dest.exists():
            os.link(pool.file(index, pool_suffix or suffix), dest)


def write_lists(folder: Path, name: str, ids: list[str], counts) -> dict[int, Path]:
    """`<folder>/<name>_<n>.txt` with the first n ids, per count."""
    out = {}
    for n in sorted(set(counts)):
        out[n] = folder / f"{name}_{n}.txt"
        if not out[n].is_file():
            write_id_list(out[n], ids[:n])
    return out


def write_coco_json(pool: Pool, ids: list[str], path: Path, start: int = 0) -> None:
    """A COCO instances file (polygons; categories with COCO's own ids 1..90 with gaps) of `ids`."""
    coco_ids = [i for i in range(1, 91) if i not in
                {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}][:pool.spec.num_classes - 1]
    images, annotations = [], []
    for index, image_id in enumerate(ids):
        sample = pool.of(start + index)
        images.append({"id": index + 1, "file_name": f"{image_id}.jpg",
                       "height": sample.hw[0], "width": sample.hw[1]})
        for class_id, polygon in sample.annotations:
            xs, ys = polygon[0::2], polygon[1::2]
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1,
                                "category_id": coco_ids[class_id - 1], "iscrowd": 0,
                                "segmentation": [polygon], "area": 0.0,
                                "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]})
    categories = [{"id": cid, "name": f"class{cid}", "supercategory": "thing"} for cid in coco_ids]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, fh)


# --------------------------------------------------------------------------- DVC sets
def _png_with_text(png: bytes, text: str) -> bytes:
    """`png` with a tEXt chunk after IHDR: same pixels, distinct bytes."""
    data = b"id\x00" + text.encode()
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data))
    return png[:33] + chunk + png[33:]


def write_unique_pngs(pool: Pool, ids: list[str], folder: Path, start: int = 0) -> int:
    """One pseudo-label PNG per id (the pool's GT, made distinct); returns the bytes written."""
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for index, image_id in enumerate(ids, start):
        data = _png_with_text(pool.of(index).gt_png, image_id)
        (folder / f"{image_id}.png").write_bytes(data)
        total += len(data)
    return total


def write_unique_logits(pool: Pool, ids: list[str], folder: Path, start: int = 0) -> int:
    """One float16 logits file per id in the dataset's form (the pool's, the id's index in the
    first values: distinct files)."""
    folder.mkdir(parents=True, exist_ok=True)
    spec, total = pool.spec, 0
    cache: dict[int, np.ndarray] = {}
    for index, image_id in enumerate(ids, start):
        key = index % pool.size
        if key not in cache:
            cache = {key: read_logits(pool.file(index, LOGITS + spec.logits_suffix), spec.num_classes)}
        logits = cache[key].copy()
        logits.reshape(-1)[:3] = [index % 2048, index // 2048 % 2048, index // 2048 ** 2]
        path = folder / f"{image_id}{spec.logits_suffix}"
        write_form(path, logits, spec.compact_top_k)
        total += path.stat().st_size
    return total


def replace_one_file(path: Path) -> None:
    """Give one file of a DVC-tracked folder new contents (a new inode: never the cache's)."""
    data = path.read_bytes()
    if path.suffix == ".png":
        data = _png_with_text(data, "changed")
    else:
        data = data[:-2] + bytes([data[-2] ^ 1, data[-1]])
    path.unlink()
    path.write_bytes(data)
