"""Drawing the synthetic dataset: backgrounds, object instances, one image and its GT, and the
whole dataset in exact PASCAL VOC layout (JPEGImages/, SegmentationClassAug/ palette PNGs with a
void band on object boundaries, ImageSets/Segmentation lists).

Each image is a cluttered, textured background with 1..max_objects objects. By default class
evidence lies on the object (backgrounds are class-agnostic); `context` adds each class's
co-occurring background structure beside its objects (`context_styles`), `part_focus` keeps the
class look only on a discriminative part (`shapes.PART_FOCUS`) - the two ways real CAMs fail.
Every image has its own RNG of (seed, split, index), and context and part focus each have a
separate one, so outputs do not depend on order or parallelism, and with both at 0 the images
are exactly those of the generator before these options existed.
"""
from __future__ import annotations

import colorsys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..config import SyntheticData
from ..data.classes import VOC_CLASSES
from ..errors import WsssError
from ..io import IGNORE_INDEX, atomic_dir, write_id_list, write_image, write_label
from .context import context_counts, context_summary
from .context_styles import paint_context
from .fields import hsv as _hsv
from .fields import smooth_noise
from .shapes import CLASS_STYLES, PART_FOCUS, SHARED_PALETTE, bar, ellipse

TRAIN_LIST = "ImageSets/Segmentation/train_aug.txt"
VAL_LIST = "ImageSets/Segmentation/val.txt"
TEST_LIST = "ImageSets/Segmentation/test.txt"
CONTEXT_FOLDER = "SegmentationContext"   # <id>.png: 0, or the class whose context a pixel is
SPLIT_LISTS = {"train": TRAIN_LIST, "val": VAL_LIST, "test": TEST_LIST}
SPLIT_PREFIX = {"train": "syn_train", "val": "syn_val", "test": "syn_test"}
_SPLIT_CODE = {"train": 1, "val": 2, "test": 3}
# extra SeedSequence words of the separate RNGs (context drawing, part focus)
_CONTEXT_STREAM, _FOCUS_STREAM = 7, 8


# --------------------------------------------------------------------------- drawing helpers
def _uniform(rng, lo_hi) -> float:
    return float(lo_hi[0] + (lo_hi[1] - lo_hi[0]) * rng.random())


def _polygon_mask(h: int, w: int, polygons: Iterable[tuple[int, list]]) -> np.ndarray:
    """Rasterise (value, vertices) polygons in order onto an h×w uint8 map (PIL, so fast)."""
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for value, vertices in polygons:
        draw.polygon([(float(x), float(y)) for x, y in vertices], fill=int(value))
    return np.asarray(canvas, dtype=np.uint8)


def _texture(kind: str, u: np.ndarray, v: np.ndarray, freq: float, angle: float, phase: float,
             patches: np.ndarray) -> np.ndarray:
    """Texture intensity in [0, 1] from object-local coordinates (u, v)."""
    ca, sa = np.cos(angle), np.sin(angle)
    a = (ca * u + sa * v) * freq + phase
    b = (-sa * u + ca * v) * freq + phase
    if kind == "stripes":
        return (np.sin(2 * np.pi * a) > 0.2).astype(np.float32)
    if kind == "checker":
        return ((np.floor(a) + np.floor(b)) % 2).astype(np.float32)
    if kind == "dots":
        return ((np.sin(2 * np.pi * a) * np.sin(2 * np.pi * b)) > 0.45).astype(np.float32)
    if kind == "windows":
        # a row of light windows in the upper half of the body (u along the length)
        cell = (u * freq + phase) % 1.0
        return ((cell > 0.2) & (cell < 0.75) & (v > -0.27) & (v < -0.03)).astype(np.float32)
    if kind == "patches":
        return (patches > 0.35).astype(np.float32)
    return np.clip(0.5 + 0.5 * v, 0, 1).astype(np.float32)   # "smooth": a vertical gradient


# --------------------------------------------------------------------------- one image
@dataclass
class _Placed:
    mask: np.ndarray
    area: int
    cls: int = 0


def _background(rng, h: int, w: int) -> np.ndarray:
    """Smooth low-saturation colour field, an optional horizon, and low-contrast clutter."""
    base = _hsv(rng.random(), _uniform(rng, (0.03, 0.22)), _uniform(rng, (0.35, 0.72)))
    image = np.broadcast_to(base, (h, w, 3)).astype(np.float32)
    if rng.random() < 0.5:   # a second region (ground / sky) behind a tilted horizon
        other = _hsv(rng.random(), _uniform(rng, (0.03, 0.22)), _uniform(rng, (0.3, 0.75)))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        level = h * _uniform(rng, (0.3, 0.75)) + (xx - w / 2) * _uniform(rng, (-0.3, 0.3))
        image = np.where((yy > level)[:, :, None], other, image)
    image = image + 0.07 * smooth_noise(rng, h, w, int(rng.integers(3, 7)), 3)
    # clutter: blurry-edged low-contrast shapes of no class (rocks, leaves, walls)
    for _ in range(int(rng.integers(4, 10))):
        cx, cy = rng.random() * w, rng.random() * h
        r = min(h, w) * _uniform(rng, (0.05, 0.25))
        kind = rng.integers(0, 3)
        if kind == 0:
            shape = ellipse(cx, cy, r, r * _uniform(rng, (0.3, 1.0)), 16)
        elif kind == 1:
            n = int(rng.integers(3, 7))
            t = np.sort(rng.random(n)) * 2 * np.pi
            rr = r * (0.5 + 0.5 * rng.random(n))
            shape = list(zip((cx + rr * np.cos(t)).tolist(), (cy + rr * np.sin(t)).tolist()))
        else:
            angle = rng.random() * np.pi
            ex, ey = r * np.cos(angle), r * np.sin(angle)
            shape = bar(cx - ex, cy - ey, cx + ex, cy + ey, r * _uniform(rng, (0.1, 0.3)))
        mask = _polygon_mask(h, w, [(1, shape)]).astype(bool)
        colour = _hsv(rng.random(), _uniform(rng, (0.0, 0.25)), _uniform(rng, (0.25, 0.8)))
        alpha = _uniform(rng, (0.25, 0.6))
        image[mask] = (1 - alpha) * image[mask] + alpha * colour
    return image


def _draw_object(rng, cls: int, h: int, w: int, shrink: float, focus=None):
    """Mask (h, w) of one object instance and the (N, 3) colours of its N mask pixels.

    `focus` (strength, rng) or None: outside the class's discriminative part the texture
    contrast is cut by `strength` and the colour pulled by `strength` towards a shared dull
    colour (drawn from `rng`, so the main rng's draws are those of focus None)."""
    style = CLASS_STYLES[cls]
    parts = style.template(rng)
    short = min(h, w)
    scale = short * _uniform(rng, style.size) * shrink
    sx = scale * _uniform(rng, (0.88, 1.12)) * (1 if rng.random() < 0.5 else -1)   # flip
    sy = scale * _uniform(rng, (0.88, 1.12))
    theta = np.deg2rad(_uniform(rng, (-style.rotation, style.rotation)))
    cx = _uniform(rng, (0.45 * scale, w - 0.45 * scale)) if w > 0.9 * scale else w / 2
    cy = _uniform(rng, (0.45 * scale, h - 0.45 * scale)) if h > 0.9 * scale else h / 2
    cos, sin = np.cos(theta), np.sin(theta)

    def to_pixels(vertices):
        q = np.asarray(vertices, dtype=np.float64) * (sx, sy)
        return np.stack([cx + cos * q[:, 0] - sin * q[:, 1], cy + sin * q[:, 0] + cos * q[:, 1]], 1)

    part_map = _polygon_mask(h, w, [(m, to_pixels(v)) for m, v in parts])
    mask = part_map > 0
    # colour only the object's pixels (1-D arrays in row-major order of `mask`)
    py, px = np.nonzero(mask)
    materials = part_map[py, px]
    dx, dy = px.astype(np.float32) + 0.5 - cx, py.astype(np.float32) + 0.5 - cy
    u = (cos * dx + sin * dy) / sx          # object-local coordinates: texture moves with it
    v = (-sin * dx + cos * dy) / sy

    hue = _uniform(rng, style.hue)
    body = _hsv(hue, _uniform(rng, style.sat), _uniform(rng, style.val))
    bh, bs, bv = colorsys.rgb_to_hsv(*body.tolist())
    dh, fs, fv = style.tex_colour
    tex_colour = _hsv(bh + dh, bs * fs, bv * fv)
    jitter = (rng.random(3) - 0.5) * (0.04, 0.15, 0.15)
    second = _hsv(style.secondary[0] + jitter[0], style.secondary[1] + jitter[1],
                  style.secondary[2] + jitter[2])
    third = _hsv(*style.tertiary)
    patches = None
    if style.texture == "patches":
        patches = smooth_noise(rng, h, w, max(2, int(round(short / scale * 1.5))))[py, px, 0]
    t = _texture(style.texture, u, v, _uniform(rng, style.tex_freq),
                 style.tex_angle + _uniform(rng, (-0.3, 0.3)), rng.random(), patches)
    if focus is not None:
        strength, focus_rng = focus
        a, b, c = PART_FOCUS[cls]
        rest = (a * u + b * v <= c)[:, None]
        dull_hsv = SHARED_PALETTE[int(focus_rng.integers(len(SHARED_PALETTE)))]
        dull = _hsv(*(np.asarray(dull_hsv) + (focus_rng.random(3) - 0.5) * (0.04, 0.06, 0.1)))
        t = np.where(rest[:, 0], t * (1.0 - strength), t).astype(np.float32)
    body_colour = body + (tex_colour - body) * t[:, None]
    shade = 1.0 + 0.12 * np.clip(-v, -1.5, 1.5)[:, None] * _uniform(rng, (0.5, 1.0))
    colours = np.where((materials == 1)[:, None], body_colour,
                       np.where((materials == 2)[:, None], second, third))
    if focus is not None:
        colours = np.where(rest, colours + (dull - colours) * strength, colours)
    colours = colours * shade
    return mask, colours.astype(np.float32)


def _render_image(rng, cfg: SyntheticData, first_class: int, context_rng=None, focus_rng=None):
    """One image (H×W×3 uint8), its GT label (H×W uint8 with void borders) and its context map
    (H×W uint8: the class whose context a pixel shows, else 0; None without `context_rng`)."""
    h = int(rng.integers(cfg.min_size, cfg.max_size + 1))
    w = int(rng.integers(cfg.min_size, cfg.max_size + 1))
    n_objects = int(rng.integers(1, cfg.max_objects + 1))
    chosen = [first_class] + [int(c) for c in rng.choice(cfg.classes, n_objects - 1)]
    rng.shuffle(chosen)
    image = _background(rng, h, w)
    label = np.zeros((h, w), np.uint8)
    placed: list[_Placed] = []
    shrink = 1.0 if n_objects == 1 else 0.8
    focus = None if focus_rng is None else (cfg.part_focus, focus_rng)
    for cls in chosen:
        for _attempt in range(8):
            mask, colours = _draw_object(rng, cls, h, w, shrink, focus)
            area = int(mask.sum())
            if area < 4:
                continue
            # reject placements that hide most of an earlier object (its class would lose its
            # evidence while staying in the image-level label)
            if all((p.mask & ~mask).sum() >= 0.45 * p.area for p in placed):
                break
        else:
            continue
        for p in placed:
            p.mask &= ~mask
        placed.append(_Placed(mask.copy(), int(mask.sum()), cls))
        image[mask] = colours
        label[mask] = cls
    context = None
    if context_rng is not None:
        # only on background pixels, after all objects: the GT and the objects stay as they are
        context = np.zeros((h, w), np.uint8)
        for p in placed:
            if context_rng.random() < cfg.context and p.mask.any():
                paint_context(context_rng, image, context, label != 0, p.mask, p.cls)
    image = image + rng.normal(0.0, 0.015, image.shape).astype(np.float32)
    image = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return image, add_void_border(label), context


def add_void_border(label: np.ndarray) -> np.ndarray:
    """Mark IGNORE_INDEX on both sides of every label change (4-neighbours): a ~2 px void band
    along object boundaries, like VOC's border annotation."""
    edge = np.zeros(label.shape, bool)
    vertical = label[:-1, :] != label[1:, :]
    horizontal = label[:, :-1] != label[:, 1:]
    edge[:-1, :] |= vertical
    edge[1:, :] |= vertical
    edge[:, :-1] |= horizontal
    edge[:, 1:] |= horizontal
    out = label.copy()
    out[edge] = IGNORE_INDEX
    return out


def _image_rng(seed: int, split: str, index: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(
        np.random.SeedSequence([seed % 2**63, _SPLIT_CODE[split], index, *stream]))


def render_sample_with_context(cfg: SyntheticData, split: str, index: int
                               ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Image, GT and context map (None when `cfg.context` is 0) of sample `index` of `split`;
    depends only on (cfg, split, index)."""
    rng = _image_rng(cfg.seed, split, index)
    context_rng = _image_rng(cfg.seed, split, index, _CONTEXT_STREAM) if cfg.context > 0 else None
    focus_rng = _image_rng(cfg.seed, split, index, _FOCUS_STREAM) if cfg.part_focus > 0 else None
    # the first object's class cycles through the classes: classes stay balanced per split
    first = cfg.classes[(index + _SPLIT_CODE[split]) % len(cfg.classes)]
    for _ in range(20):
        image, label, context = _render_image(rng, cfg, first, context_rng, focus_rng)
        if ((label != 0) & (label != IGNORE_INDEX)).any():
            return image, label, context
    raise WsssError(f"data.synthetic: could not draw a visible object in a {cfg.min_size}px image; "
                    "raise min_size")


def render_sample(cfg: SyntheticData, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Image and GT of sample `index` of `split`; depends only on (cfg, split, index)."""
    image, label, _ = render_sample_with_context(cfg, split, index)
    return image, label


def _check_config(cfg: SyntheticData) -> None:
    unknown = [c for c in cfg.classes if c not in CLASS_STYLES]
    if unknown:
        raise WsssError(f"data.synthetic.classes: no synthetic style for class ids {unknown}")


def _write_sample(root: Path, cfg: SyntheticData, split: str, index: int):
    image, label, context = render_sample_with_context(cfg, split, index)
    image_id = f"{SPLIT_PREFIX[split]}_{index:06d}"
    write_image(root / "JPEGImages" / f"{image_id}.jpg", image, quality=95)
    write_label(root / "SegmentationClassAug" / f"{image_id}.png", label)
    if context is not None:
        write_label(root / CONTEXT_FOLDER / f"{image_id}.png", context)
    return np.bincount(label.reshape(-1), minlength=256), context_counts(label, context)


def split_sizes(cfg: SyntheticData) -> dict[str, int]:
    return {"train": cfg.num_train, "val": cfg.num_val, "test": cfg.num_test}


def split_ids(cfg: SyntheticData) -> dict[str, list[str]]:
    return {split: [f"{SPLIT_PREFIX[split]}_{i:06d}" for i in range(n)]
            for split, n in split_sizes(cfg).items()}


def generate_dataset(out_root: Path, cfg: SyntheticData, n_jobs: int = 1) -> dict:
    """Write the synthetic dataset in VOC layout to `out_root` (replaced as a whole, atomically).

    Returns a summary: image counts per split, and per class the number of images containing it
    and its share of labelled (non-void) pixels, plus the void share.
    """
    _check_config(cfg)
    jobs = [(split, i) for split, n in split_sizes(cfg).items() for i in range(n)]
    with atomic_dir(out_root) as tmp:
        if n_jobs == 1:
            results = [_write_sample(tmp, cfg, split, i) for split, i in jobs]
        else:
            from joblib import Parallel, delayed

            results = Parallel(n_jobs=n_jobs)(delayed(_write_sample)(tmp, cfg, split, i)
                                              for split, i in jobs)
        for split, ids in split_ids(cfg).items():
            write_id_list(tmp / SPLIT_LISTS[split], ids)
    counts = np.stack([r[0] for r in results])      # (images, 256)
    total = counts.sum(axis=0)
    labelled = total.sum() - total[IGNORE_INDEX]
    names = {c: VOC_CLASSES[c] for c in [0, *sorted(cfg.classes)]}
    summary = {
        "images": split_sizes(cfg),
        "images_per_class": {names[c]: int((counts[:, c] > 0).sum()) for c in names if c},
        "pixel_frequency": {names[c]: round(float(total[c] / labelled), 4) for c in names},
        "void_fraction": round(float(total[IGNORE_INDEX] / total.sum()), 4),
    }
    if cfg.context > 0:
        summary["context"] = context_summary([r[1] for r in results], names)
    return summary


def generator_context_statistics(cfg: SyntheticData, split: str = "train",
                                 limit: int | None = None) -> dict:
    """`context_summary` of the first `limit` (default all) samples of `split`, rendered in
    memory (nothing written)."""
    n = split_sizes(cfg)[split] if limit is None else min(limit, split_sizes(cfg)[split])
    per_image = []
    for index in range(n):
        _, label, context = render_sample_with_context(cfg, split, index)
        if context is None:
            context = np.zeros_like(label)
        per_image.append(context_counts(label, context))
    return context_summary(per_image, {c: VOC_CLASSES[c] for c in [0, *sorted(cfg.classes)]})
