"""The embedded synthetic segmentation dataset and the pseudo-label noise model.

`generate_dataset` draws a small dataset in exact PASCAL VOC layout (JPEGImages/,
SegmentationClassAug/ palette PNGs with a void band on object boundaries, ImageSets/Segmentation
lists). Each image is a cluttered, textured background with 1..max_objects objects of VOC classes;
every class has its own shape family (a template of polygon parts), colour ranges and texture, so
a small network can recognise and localise it from pixels, and class evidence lies on the object
(backgrounds are class-agnostic). Classes listed together in `SIMILAR_CLASSES` share a shape family
and neighbouring colours.

`corrupt_label` turns a GT map into a CAM-like pseudo label (boundary shrink/grow, missed parts,
false-positive blobs, class confusion, ignore regions); `write_noisy_pseudo_labels` applies it to
a split with one RNG per image id, so outputs do not depend on order or parallelism.

Everything is seeded: the same config gives byte-identical files.
"""
from __future__ import annotations

import colorsys
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from ..config import NoiseTypes, SyntheticData
from ..errors import WsssError
from ..io import IGNORE_INDEX, atomic_dir, read_label, write_id_list, write_image, write_label
from .classes import VOC_CLASSES

TRAIN_LIST = "ImageSets/Segmentation/train_aug.txt"
VAL_LIST = "ImageSets/Segmentation/val.txt"
SPLIT_PREFIX = {"train": "syn_train", "val": "syn_val"}
_SPLIT_CODE = {"train": 1, "val": 2}
NUM_VOC_CLASSES = 21

# Classes with a shared shape family and close colours; class-confusion noise swaps an object's
# class only within these groups (symmetric).
SIMILAR_CLASSES: dict[int, tuple[int, ...]] = {
    1: (3,), 3: (1,),                      # aeroplane - bird: winged top views
    8: (12,), 12: (8,),                    # cat - dog: small quadrupeds, orange/brown fur
    10: (13, 17), 13: (10, 17), 17: (10, 13),   # cow - horse - sheep: large quadrupeds
    6: (7, 19), 7: (6, 19), 19: (6, 7),    # bus - car - train: boxy vehicles with wheels
    2: (14,), 14: (2,),                    # bicycle - motorbike: two wheels
    9: (18, 11), 18: (9, 11), 11: (9, 18),  # chair - sofa - diningtable: furniture
    5: (16,), 16: (5,),                    # bottle - pottedplant: small upright objects
    4: (), 15: (), 20: (),                 # boat, person, tvmonitor: no look-alike here
}

# --------------------------------------------------------------------------- class styles
# Part materials of a template: 0 cuts a hole, 1 = body (class colour + texture),
# 2 = secondary colour, 3 = tertiary colour.
Part = tuple[int, list[tuple[float, float]]]


def _ellipse(cx, cy, rx, ry, n=24):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return list(zip((cx + rx * np.cos(t)).tolist(), (cy + ry * np.sin(t)).tolist()))


def _rect(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _mirror_y(points):
    return [(x, -y) for x, y in points]


def _bar(x0, y0, x1, y1, width):
    """A thick segment as a quadrilateral."""
    dx, dy = x1 - x0, y1 - y0
    norm = max(np.hypot(dx, dy), 1e-6)
    nx, ny = -dy / norm * width / 2, dx / norm * width / 2
    return [(x0 + nx, y0 + ny), (x1 + nx, y1 + ny), (x1 - nx, y1 - ny), (x0 - nx, y0 - ny)]


def _j(rng, value, amount=0.12):
    """`value` jittered by up to ±amount (relative): per-instance shape variation."""
    return value * (1.0 + amount * (2.0 * rng.random() - 1.0))


# Templates: local coordinates, x right, y down, roughly inside [-1, 1]^2.
def _aeroplane(rng) -> list[Part]:
    span = _j(rng, 0.95)
    sweep = _j(rng, 0.3, 0.4)
    wing = [(0.22, -0.1), (0.22 - sweep - 0.1, -span), (0.22 - sweep - 0.3, -span), (-0.2, -0.1)]
    tail = [(-0.68, -0.05), (-0.9, -0.38), (-1.0, -0.38), (-0.93, -0.05)]
    return [(1, wing), (1, _mirror_y(wing)), (1, tail), (1, _mirror_y(tail)),
            (1, _ellipse(0, 0, 1.0, _j(rng, 0.14))), (2, _ellipse(0.8, 0, 0.12, 0.07))]


def _bird(rng) -> list[Part]:
    span = _j(rng, 0.9)
    wing = [(0.18, -0.12), (-0.05, -span), (-0.42, -span * 0.85), (-0.28, -0.12)]
    return [(1, wing), (1, _mirror_y(wing)), (1, [(-0.45, 0), (-0.95, -0.28), (-0.95, 0.28)]),
            (1, _ellipse(0, 0, 0.55, _j(rng, 0.22))), (2, _ellipse(0.58, 0, 0.2, 0.18)),
            (3, [(0.75, -0.06), (0.98, 0), (0.75, 0.06)])]


def _quadruped(rng, leg_len, leg_w, body_ry, ears: str, tail: str, head_r=0.23) -> list[Part]:
    parts: list[Part] = []
    leg_top = 0.15
    for x in (-0.55, -0.35, 0.2, 0.4):
        parts.append((1 if ears != "dark_legs" else 3,
                      _rect(x, leg_top, x + leg_w, leg_top + _j(rng, leg_len, 0.08))))
    if tail == "up":
        parts.append((1, _bar(-0.62, 0.0, -0.95, -0.5, 0.08)))
    elif tail == "short":
        parts.append((1, _bar(-0.62, -0.05, -0.85, -0.3, 0.1)))
    elif tail == "hanging":
        parts.append((3, _bar(-0.65, 0.0, -0.85, 0.45, 0.1)))
    body = _ellipse(-0.1, 0.0, 0.62, _j(rng, body_ry, 0.1))
    if ears == "wool":  # sheep: a bumpy cloud-like body
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        r = 1.0 + 0.08 * np.cos(9 * t + rng.random() * 6.3)
        body = list(zip((-0.1 + 0.62 * r * np.cos(t)).tolist(),
                        (0.0 + body_ry * r * np.sin(t)).tolist()))
    parts.append((1, body))
    hx, hy = 0.62, -0.28
    parts.append((1, _bar(0.3, -0.05, hx, hy, 0.22)))  # neck
    head_mat = 3 if ears in ("wool", "dark_legs") else 1
    parts.append((head_mat, _ellipse(hx, hy, head_r, head_r * 0.85)))
    if ears == "pointed":
        parts += [(1, [(hx - 0.18, hy - 0.1), (hx - 0.12, hy - 0.42), (hx - 0.02, hy - 0.17)]),
                  (1, [(hx + 0.04, hy - 0.17), (hx + 0.14, hy - 0.42), (hx + 0.2, hy - 0.08)])]
    elif ears == "floppy":
        parts += [(3, _ellipse(hx - 0.12, hy + 0.08, 0.08, 0.2)),
                  (2, _ellipse(hx + 0.22, hy + 0.07, 0.13, 0.09))]  # snout
    elif ears == "horns":
        parts += [(2, _bar(hx - 0.1, hy - 0.15, hx - 0.2, hy - 0.38, 0.06)),
                  (2, _bar(hx + 0.08, hy - 0.15, hx + 0.16, hy - 0.38, 0.06))]
    elif ears == "mane":
        parts += [(2, _bar(0.25, -0.3, hx - 0.05, hy - 0.2, 0.1))]
    return parts


def _cat(rng):
    return _quadruped(rng, 0.45, 0.09, 0.3, "pointed", "up")


def _dog(rng):
    return _quadruped(rng, 0.5, 0.12, 0.3, "floppy", "short")


def _cow(rng):
    return _quadruped(rng, 0.5, 0.14, 0.38, "horns", "hanging", head_r=0.22)


def _horse(rng):
    return _quadruped(rng, 0.75, 0.1, 0.3, "mane", "hanging", head_r=0.2)


def _sheep(rng):
    return _quadruped(rng, 0.4, 0.09, 0.4, "wool", "short", head_r=0.17)


def _person(rng) -> list[Part]:
    arm = _j(rng, 0.35, 0.3)
    return [(3, _rect(-0.26, 0.1, -0.04, _j(rng, 0.95, 0.05))),
            (3, _rect(0.04, 0.1, 0.26, _j(rng, 0.95, 0.05))),
            (1, _bar(-0.27, -0.5, -0.27 - arm, 0.05, 0.13)),
            (1, _bar(0.27, -0.5, 0.27 + arm, 0.05, 0.13)),
            (1, _rect(-0.3, -0.58, 0.3, 0.18)),
            (2, _ellipse(0, -0.78, 0.17, 0.2))]


def _wheels(xs, y, r, hub=True) -> list[Part]:
    parts: list[Part] = []
    for x in xs:
        parts.append((3, _ellipse(x, y, r, r, 16)))
        if hub:
            parts.append((2, _ellipse(x, y, r * 0.35, r * 0.35, 10)))
    return parts


def _train(rng) -> list[Part]:
    length = _j(rng, 0.75, 0.1)
    return [(2, _rect(-1.0, -0.42, length + 0.05, -0.33)),
            (1, _rect(-1.0, -0.35, length, 0.3)),
            (2, [(length, -0.35), (1.0, -0.05), (1.0, 0.3), (length, 0.3)])] + \
        _wheels(np.linspace(-0.85, length - 0.1, 5), 0.33, 0.1)


def _bus(rng) -> list[Part]:
    return [(1, _rect(-0.9, -0.55, 0.9, 0.38)), (2, _rect(-0.9, 0.18, 0.9, 0.3))] + \
        _wheels((-0.55, 0.55), 0.4, _j(rng, 0.17, 0.1))


def _car(rng) -> list[Part]:
    roof = _j(rng, 0.5, 0.1)
    return [(1, [(-0.45, -0.05), (-0.3, -roof), (0.35, -roof), (0.55, -0.05)]),
            (1, _rect(-0.95, -0.08, 0.95, 0.3)), (2, _rect(-0.2, -roof + 0.08, 0.3, -0.1))] + \
        _wheels((-0.55, 0.55), 0.32, 0.18)


def _bicycle(rng) -> list[Part]:
    r = _j(rng, 0.4, 0.1)
    parts: list[Part] = []
    for x in (-0.55, 0.55):
        parts += [(3, _ellipse(x, 0.35, r, r, 20)), (0, _ellipse(x, 0.35, r * 0.8, r * 0.8, 20))]
    parts += [(1, _bar(-0.55, 0.35, 0.0, 0.35, 0.08)), (1, _bar(0.0, 0.35, 0.4, -0.2, 0.08)),
              (1, _bar(-0.55, 0.35, -0.2, -0.2, 0.08)), (1, _bar(-0.2, -0.2, 0.4, -0.2, 0.08)),
              (1, _bar(0.4, -0.2, 0.55, 0.35, 0.08)), (2, _rect(-0.32, -0.3, -0.08, -0.22))]
    return parts


def _motorbike(rng) -> list[Part]:
    r = _j(rng, 0.33, 0.1)
    return _wheels((-0.6, 0.6), 0.4, r) + [
        (1, _ellipse(0.0, 0.0, 0.5, _j(rng, 0.25))), (3, _rect(-0.45, -0.3, 0.0, -0.18)),
        (1, _bar(0.35, -0.1, 0.6, 0.4, 0.1)), (2, _bar(0.35, -0.2, 0.55, -0.45, 0.06))]


def _boat(rng) -> list[Part]:
    mast = _j(rng, 0.95, 0.05)
    return [(3, _rect(-0.04, -mast, 0.04, 0.2)),
            (2, [(0.06, -mast + 0.05), (0.06, 0.1), (_j(rng, 0.6), 0.1)]),
            (1, [(-1.0, 0.15), (1.0, 0.15), (0.7, 0.55), (-0.75, 0.55)])]


def _bottle(rng) -> list[Part]:
    w = _j(rng, 0.32, 0.15)
    return [(1, _rect(-w, -0.35, w, 0.95)),
            (1, [(-w, -0.35), (-0.12, -0.6), (0.12, -0.6), (w, -0.35)]),
            (1, _rect(-0.12, -0.85, 0.12, -0.55)), (3, _rect(-0.14, -0.98, 0.14, -0.82)),
            (2, _rect(-w, 0.1, w, 0.5))]


def _pottedplant(rng) -> list[Part]:
    t = np.linspace(0, 2 * np.pi, 36, endpoint=False)
    lobes = int(rng.integers(5, 8))
    r = 0.55 * (1.0 + 0.3 * np.cos(lobes * t + rng.random() * 6.3))
    foliage = list(zip((r * np.cos(t)).tolist(), (-0.25 + r * 0.9 * np.sin(t)).tolist()))
    return [(1, foliage), (2, [(-0.4, 0.35), (0.4, 0.35), (0.3, 0.98), (-0.3, 0.98)])]


def _chair(rng) -> list[Part]:
    back = _j(rng, 0.95, 0.05)
    return [(1, _rect(-0.5, -back, -0.35, 0.1)), (1, _rect(-0.5, 0.0, 0.5, 0.14)),
            (3, _rect(-0.48, 0.1, -0.38, 0.95)), (3, _rect(0.38, 0.1, 0.48, 0.95))]


def _sofa(rng) -> list[Part]:
    return [(1, _rect(-0.95, -0.45, 0.95, 0.1)), (1, _rect(-1.0, -0.15, -0.75, 0.5)),
            (1, _rect(0.75, -0.15, 1.0, 0.5)), (2, _rect(-0.75, 0.05, 0.75, 0.42)),
            (3, _rect(-0.9, 0.5, -0.8, 0.62)), (3, _rect(0.8, 0.5, 0.9, 0.62))]


def _diningtable(rng) -> list[Part]:
    top = _j(rng, 0.16, 0.2)
    return [(1, _rect(-1.0, -0.3, 1.0, -0.3 + top)), (3, _rect(-0.85, -0.2, -0.72, 0.7)),
            (3, _rect(0.72, -0.2, 0.85, 0.7)), (2, _rect(-0.3, -0.42, 0.1, -0.3))]


def _tvmonitor(rng) -> list[Part]:
    return [(3, _rect(-0.95, -0.7, 0.95, 0.45)), (1, _rect(-0.82, -0.58, 0.82, 0.33)),
            (3, _rect(-0.08, 0.45, 0.08, 0.65)), (3, _rect(-0.4, 0.62, 0.4, 0.72))]


@dataclass(frozen=True)
class ClassStyle:
    """How one class looks: shape template, HSV colour ranges, texture and size."""

    template: Callable[[np.random.Generator], list[Part]]
    hue: tuple[float, float]
    sat: tuple[float, float]
    val: tuple[float, float]
    texture: str                                # stripes, checker, dots, windows, smooth, patches
    tex_freq: tuple[float, float]               # cycles per object half-extent
    tex_colour: tuple[float, float, float]      # texture colour: (hue shift, sat ×, val ×) of body
    secondary: tuple[float, float, float]       # HSV of material 2
    tertiary: tuple[float, float, float] = (0.6, 0.15, 0.15)   # HSV of material 3 (dark)
    size: tuple[float, float] = (0.34, 0.5)     # half-extent as a fraction of the short side
    rotation: float = 15.0                      # max |rotation| in degrees
    aspect: float = 1.0                         # template y scale
    tex_angle: float = 0.0                      # texture orientation in the object frame (rad)

CLASS_STYLES: dict[int, ClassStyle] = {
    1: ClassStyle(_aeroplane, (0.55, 0.62), (0.2, 0.4), (0.82, 0.97), "stripes", (1.2, 2.0),
                  (0.0, 2.0, 0.45), (0.6, 0.5, 0.25), rotation=60.0),
    2: ClassStyle(_bicycle, (0.0, 1.0), (0.7, 0.95), (0.6, 0.9), "smooth", (1, 1),
                  (0.0, 1.0, 0.7), (0.0, 0.0, 0.2)),
    3: ClassStyle(_bird, (0.12, 0.17), (0.6, 0.9), (0.65, 0.9), "dots", (5.0, 7.0),
                  (-0.04, 1.0, 0.5), (0.0, 0.8, 0.7), (0.1, 0.8, 0.25), rotation=60.0),
    4: ClassStyle(_boat, (0.58, 0.68), (0.6, 0.9), (0.35, 0.6), "stripes", (2.0, 3.0),
                  (0.0, 0.2, 2.0), (0.15, 0.05, 0.95), rotation=10.0),
    5: ClassStyle(_bottle, (0.28, 0.36), (0.6, 0.9), (0.3, 0.55), "smooth", (1, 1),
                  (0.0, 0.5, 1.8), (0.12, 0.1, 0.95), size=(0.3, 0.42), rotation=10.0),
    6: ClassStyle(_bus, (0.12, 0.16), (0.7, 0.95), (0.75, 0.95), "windows", (3.0, 4.0),
                  (0.45, 0.3, 0.35), (0.0, 0.0, 0.25), rotation=8.0),
    7: ClassStyle(_car, (0.0, 0.03), (0.7, 0.95), (0.55, 0.85), "smooth", (1, 1),
                  (0.0, 0.8, 0.6), (0.58, 0.3, 0.35), rotation=8.0),
    8: ClassStyle(_cat, (0.06, 0.10), (0.55, 0.85), (0.72, 0.95), "stripes", (4.0, 6.0),
                  (-0.02, 1.0, 0.45), (0.08, 0.5, 0.8), (0.05, 0.6, 0.3), tex_angle=np.pi / 2),
    9: ClassStyle(_chair, (0.07, 0.1), (0.5, 0.7), (0.35, 0.55), "stripes", (6.0, 8.0),
                  (0.0, 1.0, 0.7), (0.07, 0.5, 0.7), (0.07, 0.6, 0.2), size=(0.3, 0.42),
                  tex_angle=np.pi / 2),
    10: ClassStyle(_cow, (0.0, 1.0), (0.0, 0.08), (0.88, 1.0), "patches", (2.0, 3.0),
                   (0.0, 1.0, 0.12), (0.0, 0.3, 0.8), (0.0, 0.0, 0.1)),
    11: ClassStyle(_diningtable, (0.07, 0.1), (0.5, 0.7), (0.45, 0.65), "stripes", (8.0, 10.0),
                   (0.0, 1.0, 0.75), (0.0, 0.0, 0.95), (0.07, 0.6, 0.25), rotation=5.0,
                   tex_angle=np.pi / 2),
    12: ClassStyle(_dog, (0.05, 0.09), (0.35, 0.6), (0.4, 0.65), "dots", (3.0, 4.5),
                   (0.0, 1.0, 0.4), (0.06, 0.3, 0.85), (0.05, 0.6, 0.2)),
    13: ClassStyle(_horse, (0.04, 0.08), (0.5, 0.75), (0.3, 0.5), "smooth", (1, 1),
                   (0.0, 1.0, 0.7), (0.0, 0.0, 0.1), (0.0, 0.0, 0.1)),
    14: ClassStyle(_motorbike, (0.0, 1.0), (0.0, 0.1), (0.15, 0.3), "stripes", (1.5, 2.0),
                   (0.0, 1.0, 3.0), (0.0, 0.0, 0.8), (0.0, 0.0, 0.12)),
    15: ClassStyle(_person, (0.94, 1.02), (0.6, 0.9), (0.55, 0.85), "checker", (3.0, 4.5),
                   (0.0, 0.6, 0.55), (0.06, 0.4, 0.88), (0.62, 0.6, 0.3), size=(0.38, 0.5),
                   rotation=10.0),
    16: ClassStyle(_pottedplant, (0.28, 0.36), (0.6, 0.9), (0.35, 0.6), "dots", (5.0, 7.0),
                   (0.05, 1.0, 1.5), (0.04, 0.7, 0.55), rotation=8.0),
    17: ClassStyle(_sheep, (0.1, 0.14), (0.05, 0.2), (0.85, 0.97), "dots", (7.0, 9.0),
                   (0.0, 1.0, 0.8), (0.0, 0.0, 0.2), (0.0, 0.0, 0.15)),
    18: ClassStyle(_sofa, (0.72, 0.8), (0.4, 0.7), (0.4, 0.65), "checker", (4.0, 6.0),
                   (0.0, 1.0, 0.75), (0.74, 0.3, 0.8), rotation=5.0),
    19: ClassStyle(_train, (0.30, 0.40), (0.5, 0.8), (0.45, 0.7), "windows", (3.0, 4.0),
                   (0.0, 0.15, 1.8), (0.0, 0.75, 0.8), (0.6, 0.1, 0.12), rotation=8.0),
    20: ClassStyle(_tvmonitor, (0.5, 0.56), (0.6, 0.9), (0.6, 0.9), "stripes", (6.0, 8.0),
                   (0.0, 1.0, 0.6), (0.0, 0.0, 0.2), (0.0, 0.0, 0.12), size=(0.3, 0.42),
                   rotation=5.0),
}


# --------------------------------------------------------------------------- drawing helpers
def _hsv(h, s, v) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)),
                    dtype=np.float32)


def _uniform(rng, lo_hi) -> float:
    return float(lo_hi[0] + (lo_hi[1] - lo_hi[0]) * rng.random())


def _smooth_noise(rng, h: int, w: int, cells: int, channels: int = 1) -> np.ndarray:
    """(h, w, channels) smooth noise: a (cells+1)^2 random grid, smoothstep-interpolated.

    The number of random draws depends only on `cells` and `channels`, not on the image size.
    """
    grid = rng.standard_normal((cells + 1, cells + 1, channels)).astype(np.float32)

    def axis(n):
        pos = (np.arange(n, dtype=np.float32) + 0.5) * cells / n
        i0 = np.minimum(pos.astype(np.int64), cells - 1)
        t = pos - i0
        return i0, (t * t * (3 - 2 * t))[:, None]

    y0, ty = axis(h)
    x0, tx = axis(w)
    rows = grid[:, x0] * (1 - tx) + grid[:, x0 + 1] * tx        # (cells+1, w, channels)
    return rows[y0] * (1 - ty[:, :, None]) + rows[y0 + 1] * ty[:, :, None]


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
    cls: int
    mask: np.ndarray
    area: int


def _background(rng, h: int, w: int) -> np.ndarray:
    """Smooth low-saturation colour field, an optional horizon, and low-contrast clutter."""
    base = _hsv(rng.random(), _uniform(rng, (0.03, 0.22)), _uniform(rng, (0.35, 0.72)))
    image = np.broadcast_to(base, (h, w, 3)).astype(np.float32)
    if rng.random() < 0.5:   # a second region (ground / sky) behind a tilted horizon
        other = _hsv(rng.random(), _uniform(rng, (0.03, 0.22)), _uniform(rng, (0.3, 0.75)))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        level = h * _uniform(rng, (0.3, 0.75)) + (xx - w / 2) * _uniform(rng, (-0.3, 0.3))
        image = np.where((yy > level)[:, :, None], other, image)
    image = image + 0.07 * _smooth_noise(rng, h, w, int(rng.integers(3, 7)), 3)
    # clutter: blurry-edged low-contrast shapes of no class (rocks, leaves, walls)
    for _ in range(int(rng.integers(4, 10))):
        cx, cy = rng.random() * w, rng.random() * h
        r = min(h, w) * _uniform(rng, (0.05, 0.25))
        kind = rng.integers(0, 3)
        if kind == 0:
            shape = _ellipse(cx, cy, r, r * _uniform(rng, (0.3, 1.0)), 16)
        elif kind == 1:
            n = int(rng.integers(3, 7))
            t = np.sort(rng.random(n)) * 2 * np.pi
            rr = r * (0.5 + 0.5 * rng.random(n))
            shape = list(zip((cx + rr * np.cos(t)).tolist(), (cy + rr * np.sin(t)).tolist()))
        else:
            angle = rng.random() * np.pi
            ex, ey = r * np.cos(angle), r * np.sin(angle)
            shape = _bar(cx - ex, cy - ey, cx + ex, cy + ey, r * _uniform(rng, (0.1, 0.3)))
        mask = _polygon_mask(h, w, [(1, shape)]).astype(bool)
        colour = _hsv(rng.random(), _uniform(rng, (0.0, 0.25)), _uniform(rng, (0.25, 0.8)))
        alpha = _uniform(rng, (0.25, 0.6))
        image[mask] = (1 - alpha) * image[mask] + alpha * colour
    return image


def _draw_object(rng, cls: int, h: int, w: int, shrink: float):
    """Mask (h, w) of one object instance and the (N, 3) colours of its N mask pixels."""
    style = CLASS_STYLES[cls]
    parts = style.template(rng)
    short = min(h, w)
    scale = short * _uniform(rng, style.size) * shrink
    sx = scale * _uniform(rng, (0.88, 1.12)) * (1 if rng.random() < 0.5 else -1)   # flip
    sy = scale * style.aspect * _uniform(rng, (0.88, 1.12))
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
        patches = _smooth_noise(rng, h, w, max(2, int(round(short / scale * 1.5))))[py, px, 0]
    t = _texture(style.texture, u, v, _uniform(rng, style.tex_freq),
                 style.tex_angle + _uniform(rng, (-0.3, 0.3)), rng.random(), patches)
    body_colour = body + (tex_colour - body) * t[:, None]
    shade = 1.0 + 0.12 * np.clip(-v, -1.5, 1.5)[:, None] * _uniform(rng, (0.5, 1.0))
    colours = np.where((materials == 1)[:, None], body_colour,
                       np.where((materials == 2)[:, None], second, third)) * shade
    return mask, colours.astype(np.float32)


def _render_image(rng, cfg: SyntheticData, first_class: int):
    """One image (H×W×3 uint8) and its GT label (H×W uint8 with void borders)."""
    h = int(rng.integers(cfg.min_size, cfg.max_size + 1))
    w = int(rng.integers(cfg.min_size, cfg.max_size + 1))
    n_objects = int(rng.integers(1, cfg.max_objects + 1))
    chosen = [first_class] + [int(c) for c in rng.choice(cfg.classes, n_objects - 1)]
    rng.shuffle(chosen)
    image = _background(rng, h, w)
    label = np.zeros((h, w), np.uint8)
    placed: list[_Placed] = []
    shrink = 1.0 if n_objects == 1 else 0.8
    for cls in chosen:
        for _attempt in range(8):
            mask, colours = _draw_object(rng, cls, h, w, shrink)
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
        placed.append(_Placed(cls, mask.copy(), int(mask.sum())))
        image[mask] = colours
        label[mask] = cls
    image = image + rng.normal(0.0, 0.015, image.shape).astype(np.float32)
    image = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return image, add_void_border(label)


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


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed % 2**63, _SPLIT_CODE[split], index]))


def render_sample(cfg: SyntheticData, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Image and GT of sample `index` of `split`; depends only on (cfg, split, index)."""
    rng = _image_rng(cfg.seed, split, index)
    # the first object's class cycles through the classes: classes stay balanced per split
    first = cfg.classes[(index + _SPLIT_CODE[split]) % len(cfg.classes)]
    for _ in range(20):
        image, label = _render_image(rng, cfg, first)
        if ((label != 0) & (label != IGNORE_INDEX)).any():
            return image, label
    raise WsssError(f"data.synthetic: could not draw a visible object in a {cfg.min_size}px image; "
                    "raise min_size")


def _check_config(cfg: SyntheticData) -> None:
    unknown = [c for c in cfg.classes if c not in CLASS_STYLES]
    if unknown:
        raise WsssError(f"data.synthetic.classes: no synthetic style for class ids {unknown}")


def _write_sample(root: Path, cfg: SyntheticData, split: str, index: int) -> np.ndarray:
    image, label = render_sample(cfg, split, index)
    image_id = f"{SPLIT_PREFIX[split]}_{index:06d}"
    write_image(root / "JPEGImages" / f"{image_id}.jpg", image, quality=95)
    write_label(root / "SegmentationClassAug" / f"{image_id}.png", label)
    return np.bincount(label.reshape(-1), minlength=256)


def split_ids(cfg: SyntheticData) -> dict[str, list[str]]:
    return {"train": [f"{SPLIT_PREFIX['train']}_{i:06d}" for i in range(cfg.num_train)],
            "val": [f"{SPLIT_PREFIX['val']}_{i:06d}" for i in range(cfg.num_val)]}


def generate_dataset(out_root: Path, cfg: SyntheticData, n_jobs: int = 1) -> dict:
    """Write the synthetic dataset in VOC layout to `out_root` (replaced as a whole, atomically).

    Returns a summary: image counts per split, and per class the number of images containing it
    and its share of labelled (non-void) pixels, plus the void share.
    """
    _check_config(cfg)
    jobs = [(split, i) for split, n in (("train", cfg.num_train), ("val", cfg.num_val))
            for i in range(n)]
    with atomic_dir(out_root) as tmp:
        if n_jobs == 1:
            counts = [_write_sample(tmp, cfg, split, i) for split, i in jobs]
        else:
            from joblib import Parallel, delayed

            counts = Parallel(n_jobs=n_jobs)(delayed(_write_sample)(tmp, cfg, split, i)
                                             for split, i in jobs)
        ids = split_ids(cfg)
        write_id_list(tmp / TRAIN_LIST, ids["train"])
        write_id_list(tmp / VAL_LIST, ids["val"])
    counts = np.stack(counts)                       # (images, 256)
    total = counts.sum(axis=0)
    labelled = total.sum() - total[IGNORE_INDEX]
    names = {c: VOC_CLASSES[c] for c in [0, *sorted(cfg.classes)]}
    return {
        "images": {"train": cfg.num_train, "val": cfg.num_val},
        "images_per_class": {names[c]: int((counts[:, c] > 0).sum()) for c in names if c},
        "pixel_frequency": {names[c]: round(float(total[c] / labelled), 4) for c in names},
        "void_fraction": round(float(total[IGNORE_INDEX] / total.sum()), 4),
    }


# --------------------------------------------------------------------------- pseudo-label noise
# Strength constants, calibrated so that noise 0.5 with all knobs at 1 gives a pseudo-label mIoU
# of about 0.70 on the default dataset (as scored by the evaluate_pseudo_labels stage).
_CONFUSION_P = 0.15         # probability per object (× noise × knob) of taking a similar class
_BOUNDARY_SHIFT = 0.21      # max mean boundary shift, × equivalent object radius
_BOUNDARY_WOBBLE = 0.17     # amplitude of the spatially varying shift, × equivalent radius
_MISSING_P = 0.6            # probability per object of losing a part
_MISSING_RADIUS = (0.3, 0.75)   # radius of the lost part, × equivalent radius
_FP_CANDIDATES = 3
_FP_P = 0.3                 # probability per candidate blob
_FP_RADIUS = (0.06, 0.16)   # × short image side
_IGNORE_BAND = 2.5          # max half-width in px of the uncertain band on boundaries
_IGNORE_CANDIDATES = 2
_IGNORE_P = 0.4
_IGNORE_RADIUS = (0.2, 0.45)   # × equivalent radius of the object it sits on
_MIN_OBJECT_PIXELS = 4


def _fill_void(label: np.ndarray) -> np.ndarray:
    """Void pixels take the nearest labelled pixel's value (a CAM knows nothing of void)."""
    void = label == IGNORE_INDEX
    if not void.any() or void.all():
        return label.copy()
    _, (iy, ix) = ndimage.distance_transform_edt(void, return_indices=True)
    return label[iy, ix]


def _blob(rim: np.ndarray, cy: float, cx: float, radius: float) -> np.ndarray:
    """An irregular blob: a disk whose rim is pushed in and out by the smooth noise `rim`."""
    h, w = rim.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.hypot(yy - cy, xx - cx) / max(radius, 0.5) + 0.3 * rim < 1.0


def _rim(rng, h: int, w: int) -> np.ndarray:
    return _smooth_noise(rng, h, w, 4)[:, :, 0]


def _signed_distance(mask: np.ndarray) -> np.ndarray:
    """< 0 inside, > 0 outside, ±0.5 on the pixels either side of the boundary."""
    outside = ndimage.distance_transform_edt(~mask)
    inside = ndimage.distance_transform_edt(mask)
    return np.where(mask, 0.5 - inside, outside - 0.5)


def corrupt_label(gt: np.ndarray, noise: float, types: NoiseTypes, rng: np.random.Generator,
                  class_ids: list[int]) -> np.ndarray:
    """A CAM-like noisy pseudo label from a GT map (uint8: 0 bg, class ids, 255 void).

    `noise` in [0, 1] scales every corruption; `types` weighs them. noise=0 returns the GT itself.
    Otherwise GT void pixels first take the nearest labelled value (pseudo labels from CAMs have
    no void borders), then, per connected object: class confusion (a similar class from
    `SIMILAR_CLASSES` that is in `class_ids`), boundary shrink/grow by an irregular signed
    distance, a missed part set to background; per image: false-positive blobs of a present
    class on the background near objects, and ignore (255) bands along the noisy boundaries and
    blobs on objects. The random numbers drawn do not depend on `noise` (only thresholds and
    magnitudes do), so for one rng seed more noise means a more corrupted label.
    """
    gt = np.asarray(gt)
    if gt.ndim != 2 or gt.dtype != np.uint8:
        raise ValueError(f"gt must be a 2-D uint8 label map, got {gt.dtype} {gt.shape}")
    if not 0.0 <= noise <= 1.0:
        raise WsssError(f"data.noise: must be in [0, 1], got {noise}")
    if noise == 0.0:
        return gt.copy()
    h, w = gt.shape
    label = _fill_void(gt)
    allowed = set(int(c) for c in class_ids)

    # connected objects, in a fixed order (class, then scan order)
    objects = []
    for cls in np.unique(label):
        if cls == 0 or cls == IGNORE_INDEX:
            continue
        components, count = ndimage.label(label == cls, structure=np.ones((3, 3), bool))
        for k in range(1, count + 1):
            mask = components == k
            if mask.sum() >= _MIN_OBJECT_PIXELS:
                objects.append([int(cls), mask])
    objects_before = [m for _, m in objects]

    def strength(knob, base):
        return min(1.0, noise * knob * base)

    # 1) class confusion of whole objects
    for obj in objects:
        u, pick = rng.random(), rng.random()
        similar = [c for c in SIMILAR_CLASSES.get(obj[0], ()) if c in allowed]
        if similar and u < strength(types.class_confusion, _CONFUSION_P):
            obj[0] = similar[int(pick * len(similar))]

    # 2) boundaries: irregular shrink / grow; larger objects painted first, small ones on top
    out = label.copy()
    for _, mask in objects:
        out[mask] = 0
    grown = []
    for cls, mask in objects:
        r_eq = np.sqrt(mask.sum() / np.pi)
        u = rng.random()
        wobble = _rim(rng, h, w)
        k = noise * types.boundary
        shift = k * r_eq * (_BOUNDARY_SHIFT * (2.0 * u - 1.0) + _BOUNDARY_WOBBLE * wobble)
        new_mask = _signed_distance(mask) < shift if k > 0 else mask
        grown.append((cls, new_mask, r_eq))
    for cls, mask, _ in sorted(grown, key=lambda g: -g[2]):
        out[mask] = cls

    # 3) missed parts: a blob of each object dropped to background
    for (cls, mask, r_eq), before in zip(grown, objects_before):
        u, iu, ru = rng.random(), rng.random(), rng.random()
        candidates = np.flatnonzero(before)
        cy, cx = divmod(int(candidates[int(iu * len(candidates))]), w)
        radius = r_eq * (_MISSING_RADIUS[0] + (_MISSING_RADIUS[1] - _MISSING_RADIUS[0]) * ru)
        rim = _rim(rng, h, w)
        if u < strength(types.missing_parts, _MISSING_P):
            out[_blob(rim, cy, cx, radius) & (out == cls) & mask] = 0

    # 4) false positives: blobs of a present class on background near objects (CAM bleeding)
    present = sorted(set(int(c) for c in np.unique(out)) - {0, IGNORE_INDEX})
    near = np.zeros((h, w), bool)
    if objects:
        reach = 0.25 * min(h, w)
        near = (ndimage.distance_transform_edt(out == 0) <= reach) & (out == 0)
    short = min(h, w)
    for _ in range(_FP_CANDIDATES):
        u, iu, ru, cu = rng.random(), rng.random(), rng.random(), rng.random()
        rim = _rim(rng, h, w)
        if not present or not near.any() or u >= strength(types.false_positives, _FP_P):
            continue
        candidates = np.flatnonzero(near)
        cy, cx = divmod(int(candidates[int(iu * len(candidates))]), w)
        radius = short * (_FP_RADIUS[0] + (_FP_RADIUS[1] - _FP_RADIUS[0]) * ru)
        out[_blob(rim, cy, cx, radius) & (out == 0)] = present[int(cu * len(present))]

    # 5) ignore: an uncertain band on the noisy boundaries and blobs on objects
    k_ignore = noise * types.ignore
    band_u = rng.random()
    band = _IGNORE_BAND * k_ignore * (0.5 + 0.5 * band_u)
    if band >= 0.5:
        edge = add_void_border(out) == IGNORE_INDEX
        far = ndimage.distance_transform_edt(~edge)
        ignore = far <= band - 0.5
    else:
        ignore = np.zeros((h, w), bool)
    for _ in range(_IGNORE_CANDIDATES):
        u, iu, ru = rng.random(), rng.random(), rng.random()
        rim = _rim(rng, h, w)
        fg = np.flatnonzero(out != 0)
        if not fg.size or u >= strength(types.ignore, _IGNORE_P):
            continue
        cy, cx = divmod(int(fg[int(iu * fg.size)]), w)
        r_eq = np.sqrt(fg.size / np.pi / max(len(present), 1))
        radius = r_eq * (_IGNORE_RADIUS[0] + (_IGNORE_RADIUS[1] - _IGNORE_RADIUS[0]) * ru)
        ignore |= _blob(rim, cy, cx, radius)
    out[ignore] = IGNORE_INDEX
    return out


def _id_rng(seed: int, image_id: str) -> np.random.Generator:
    digest = hashlib.sha256(image_id.encode("utf-8")).digest()
    words = np.frombuffer(digest[:16], dtype=np.uint32).tolist()
    return np.random.default_rng(np.random.SeedSequence([seed % 2**63, *words]))


def noisy_pseudo_label(gt: np.ndarray, image_id: str, noise: float, types: NoiseTypes, seed: int,
                       class_ids: list[int]) -> np.ndarray:
    """`corrupt_label` with the RNG of (seed, image id): the same label whatever the order."""
    return corrupt_label(gt, noise, types, _id_rng(seed, image_id), class_ids)


def _write_noisy(gt_dir: Path, out_dir: Path, image_id: str, noise, types, seed, class_ids):
    gt = read_label(Path(gt_dir) / f"{image_id}.png", num_classes=NUM_VOC_CLASSES)
    write_label(Path(out_dir) / f"{image_id}.png",
                noisy_pseudo_label(gt, image_id, noise, types, seed, class_ids))


def write_noisy_pseudo_labels(gt_dir: Path, ids: list[str], out_dir: Path, noise: float,
                              types: NoiseTypes, seed: int, class_ids: list[int],
                              n_jobs: int = 1) -> None:
    """Write `<out_dir>/<id>.png` noisy pseudo labels from `<gt_dir>/<id>.png` for every id."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    if n_jobs == 1:
        for image_id in ids:
            _write_noisy(gt_dir, out_dir, image_id, noise, types, seed, class_ids)
        return
    from joblib import Parallel, delayed

    Parallel(n_jobs=n_jobs)(delayed(_write_noisy)(gt_dir, out_dir, i, noise, types, seed, class_ids)
                            for i in ids)
