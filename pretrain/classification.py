"""The synthetic classification set of the pretraining pipeline (pretrain.pretrain): the stand-in
for ImageNet, disjoint from the demo segmentation data.

Images are drawn by the demo generator (`render.render_sample_with_context`) with its class
looks but all 20 VOC classes, another seed, their own size and their own context / part focus
(per backbone: `pretrain.<backbone>.context`, `.part_focus`), and only their image-level labels
are kept (no mask is written). On top, each image gets
up to `distractors` class-less patches: blobs carrying the texture and colours of a random class
(`shapes.CLASS_STYLES`, `render._texture`) painted on background pixels only, so a classifier
cannot name a class from its texture alone, and the image-level labels (taken from the GT
before the patches are drawn) stay those of the objects. The patches come from an RNG of their
own: with 0 distractors the images are the generator's.

Layout (what `TrainSet` and `voc_layout_split` read): `<root>/VOC2012/JPEGImages/<id>.jpg`,
`<root>/VOC2012/ImageSets/Segmentation/{train_aug,val}.txt`, `<root>/cls_labels.json` (as the
prepare stage writes it), and `<root>/summary.json`. Ids are `cls_train_000000`, `cls_val_...`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from wsss_core.config import VOC_NUM_CLASSES, SyntheticData
from wsss_core.data.classes import VOC_CLASSES, classes_in_label, write_class_labels
from wsss_core.io import atomic_dir, write_id_list, write_image, write_json
from wsss_core.synthetic.fields import hsv, smooth_noise
from wsss_core.synthetic.render import _SPLIT_CODE, _polygon_mask, _texture, render_sample_with_context
from wsss_core.synthetic.shapes import CLASS_STYLES, ellipse

from .config import PretrainParams, backbone_params

SPLITS = {"train": "ImageSets/Segmentation/train_aug.txt", "val": "ImageSets/Segmentation/val.txt"}
ID_PREFIX = "cls"
# SeedSequence word of the distractors' RNG (the generator's own streams use 7 and 8)
_DISTRACTOR_STREAM = 21
_RADIUS = (0.07, 0.18)     # × the short image side
_ALPHA = (0.75, 1.0)       # opacity of a patch over the background


def classification_config(pretrain: PretrainParams, backbone: str) -> SyntheticData:
    """The generator configuration of the `backbone`'s classification set: the demo generator's
    class looks with the shared sizes and seed, all 20 classes, and the backbone's own size and
    co-occurrence statistics (`pretrain.<backbone>`: num_train, num_val, context, part_focus),
    as ImageNet's are not the target data's."""
    own = backbone_params(pretrain, backbone)
    return SyntheticData(
        num_train=own.num_train, num_val=own.num_val, num_test=0,
        min_size=pretrain.min_size, max_size=pretrain.max_size,
        max_objects=pretrain.max_objects, classes=sorted(CLASS_STYLES), seed=pretrain.seed,
        context=own.context, part_focus=own.part_focus)


def image_id(split: str, index: int) -> str:
    return f"{ID_PREFIX}_{split}_{index:06d}"


def _distractor_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(
        np.random.SeedSequence([seed % 2**63, _SPLIT_CODE[split], index, _DISTRACTOR_STREAM]))


def add_distractors(image: np.ndarray, background: np.ndarray, rng: np.random.Generator,
                    count: int) -> np.ndarray:
    """`image` (H×W×3 uint8) with `count` class-less patches painted where `background` (H×W
    bool) is true: each a blob (ellipse or irregular polygon) with the body colour and texture of
    a random class. Pixels outside `background` are returned unchanged."""
    h, w = background.shape
    out = image.astype(np.float32) / 255.0
    short = min(h, w)
    for _ in range(count):
        style = CLASS_STYLES[int(rng.choice(sorted(CLASS_STYLES)))]
        cx, cy = rng.random() * w, rng.random() * h
        radius = short * (_RADIUS[0] + (_RADIUS[1] - _RADIUS[0]) * rng.random())
        if rng.random() < 0.5:
            outline = ellipse(cx, cy, radius, radius * (0.4 + 0.6 * rng.random()), 20)
        else:
            corners = int(rng.integers(4, 8))
            angles = np.sort(rng.random(corners)) * 2 * np.pi
            reach = radius * (0.5 + 0.5 * rng.random(corners))
            outline = list(zip((cx + reach * np.cos(angles)).tolist(),
                               (cy + reach * np.sin(angles)).tolist()))
        mask = _polygon_mask(h, w, [(1, outline)]).astype(bool) & background
        py, px = np.nonzero(mask)
        if not len(py):
            continue
        u = (px + 0.5 - cx) / radius          # patch-local coordinates for the texture
        v = (py + 0.5 - cy) / radius

        def pick(lo_hi):
            return lo_hi[0] + (lo_hi[1] - lo_hi[0]) * rng.random()

        body = hsv(pick(style.hue), pick(style.sat), pick(style.val))
        dh, fs, fv = style.tex_colour
        texture_colour = hsv(pick(style.hue) + dh, pick(style.sat) * fs, pick(style.val) * fv)
        patches = smooth_noise(rng, h, w, 3)[py, px, 0] if style.texture == "patches" else None
        t = _texture(style.texture, u, v, pick(style.tex_freq), rng.random() * np.pi,
                     rng.random(), patches)
        colours = body + (texture_colour - body) * t[:, None]
        alpha = pick(_ALPHA)
        out[py, px] = (1 - alpha) * out[py, px] + alpha * colours
    painted = np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.where(background[:, :, None], painted, image)


def render_classification_sample(cfg: SyntheticData, split: str, index: int, distractors: int
                                 ) -> tuple[np.ndarray, list[int]]:
    """Image (with 0..`distractors` patches) and its foreground class ids; depends only on
    (cfg, split, index, distractors)."""
    image, label, _ = render_sample_with_context(cfg, split, index)
    classes = classes_in_label(label, VOC_NUM_CLASSES)
    if distractors:
        rng = _distractor_rng(cfg.seed, split, index)
        image = add_distractors(image, label == 0, rng, int(rng.integers(0, distractors + 1)))
    return image, classes


def _write_sample(root: Path, cfg: SyntheticData, split: str, index: int, distractors: int
                  ) -> tuple[str, list[int]]:
    image, classes = render_classification_sample(cfg, split, index, distractors)
    name = image_id(split, index)
    write_image(root / "VOC2012" / "JPEGImages" / f"{name}.jpg", image, quality=95)
    return name, classes


def generate_classification_set(out_root: Path, cfg: SyntheticData, distractors: int,
                                n_jobs: int = 1) -> dict:
    """Write the classification set to `out_root` (replaced as a whole, atomically); returns its
    summary (images per split, images per class and split), also written as summary.json."""
    sizes = {"train": cfg.num_train, "val": cfg.num_val}
    jobs = [(split, i) for split, n in sizes.items() for i in range(n)]
    with atomic_dir(Path(out_root)) as tmp:
        if n_jobs == 1:
            results = [_write_sample(tmp, cfg, split, i, distractors) for split, i in jobs]
        else:
            from joblib import Parallel, delayed

            results = Parallel(n_jobs=n_jobs)(delayed(_write_sample)(tmp, cfg, split, i, distractors)
                                              for split, i in jobs)
        labels = dict(results)
        for split, list_file in SPLITS.items():
            write_id_list(tmp / "VOC2012" / list_file, [image_id(split, i) for i in range(sizes[split])])
        write_class_labels(tmp / "cls_labels.json", labels)
        per_class = {split: {VOC_CLASSES[c]: sum(c in labels[image_id(split, i)]
                                                 for i in range(n)) for c in cfg.classes}
                     for split, n in sizes.items()}
        summary = {"images": sizes, "seed": cfg.seed, "distractors": distractors,
                   "context": getattr(cfg, "context", 0.0), "part_focus": getattr(cfg, "part_focus", 0.0),
                   "images_per_class": per_class}
        write_json(tmp / "summary.json", summary)
    return summary
