"""What each synthetic class looks like: a shape template of polygon parts, colours, texture.

Every class has its own shape family, so a small network can recognise it from pixels; classes
listed together in `SIMILAR_CLASSES` share a family and neighbouring colours (the pseudo-label
noise swaps classes only within these groups).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

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


def ellipse(cx, cy, rx, ry, n=24):
    """`n` vertices of an axis-aligned ellipse."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return list(zip((cx + rx * np.cos(t)).tolist(), (cy + ry * np.sin(t)).tolist()))


def _rect(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _mirror_y(points):
    return [(x, -y) for x, y in points]


def bar(x0, y0, x1, y1, width):
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
            (1, ellipse(0, 0, 1.0, _j(rng, 0.14))), (2, ellipse(0.8, 0, 0.12, 0.07))]


def _bird(rng) -> list[Part]:
    span = _j(rng, 0.9)
    wing = [(0.18, -0.12), (-0.05, -span), (-0.42, -span * 0.85), (-0.28, -0.12)]
    return [(1, wing), (1, _mirror_y(wing)), (1, [(-0.45, 0), (-0.95, -0.28), (-0.95, 0.28)]),
            (1, ellipse(0, 0, 0.55, _j(rng, 0.22))), (2, ellipse(0.58, 0, 0.2, 0.18)),
            (3, [(0.75, -0.06), (0.98, 0), (0.75, 0.06)])]


def _quadruped(rng, leg_len, leg_w, body_ry, ears: str, tail: str, head_r=0.23) -> list[Part]:
    parts: list[Part] = []
    leg_top = 0.15
    for x in (-0.55, -0.35, 0.2, 0.4):
        parts.append((1, _rect(x, leg_top, x + leg_w, leg_top + _j(rng, leg_len, 0.08))))
    if tail == "up":
        parts.append((1, bar(-0.62, 0.0, -0.95, -0.5, 0.08)))
    elif tail == "short":
        parts.append((1, bar(-0.62, -0.05, -0.85, -0.3, 0.1)))
    elif tail == "hanging":
        parts.append((3, bar(-0.65, 0.0, -0.85, 0.45, 0.1)))
    body = ellipse(-0.1, 0.0, 0.62, _j(rng, body_ry, 0.1))
    if ears == "wool":  # sheep: a bumpy cloud-like body
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        r = 1.0 + 0.08 * np.cos(9 * t + rng.random() * 6.3)
        body = list(zip((-0.1 + 0.62 * r * np.cos(t)).tolist(),
                        (0.0 + body_ry * r * np.sin(t)).tolist()))
    parts.append((1, body))
    hx, hy = 0.62, -0.28
    parts.append((1, bar(0.3, -0.05, hx, hy, 0.22)))  # neck
    head_mat = 3 if ears == "wool" else 1
    parts.append((head_mat, ellipse(hx, hy, head_r, head_r * 0.85)))
    if ears == "pointed":
        parts += [(1, [(hx - 0.18, hy - 0.1), (hx - 0.12, hy - 0.42), (hx - 0.02, hy - 0.17)]),
                  (1, [(hx + 0.04, hy - 0.17), (hx + 0.14, hy - 0.42), (hx + 0.2, hy - 0.08)])]
    elif ears == "floppy":
        parts += [(3, ellipse(hx - 0.12, hy + 0.08, 0.08, 0.2)),
                  (2, ellipse(hx + 0.22, hy + 0.07, 0.13, 0.09))]  # snout
    elif ears == "horns":
        parts += [(2, bar(hx - 0.1, hy - 0.15, hx - 0.2, hy - 0.38, 0.06)),
                  (2, bar(hx + 0.08, hy - 0.15, hx + 0.16, hy - 0.38, 0.06))]
    elif ears == "mane":
        parts += [(2, bar(0.25, -0.3, hx - 0.05, hy - 0.2, 0.1))]
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
            (1, bar(-0.27, -0.5, -0.27 - arm, 0.05, 0.13)),
            (1, bar(0.27, -0.5, 0.27 + arm, 0.05, 0.13)),
            (1, _rect(-0.3, -0.58, 0.3, 0.18)),
            (2, ellipse(0, -0.78, 0.17, 0.2))]


def _wheels(xs, y, r) -> list[Part]:
    """Dark tyres with a light hub."""
    parts: list[Part] = []
    for x in xs:
        parts += [(3, ellipse(x, y, r, r, 16)), (2, ellipse(x, y, r * 0.35, r * 0.35, 10))]
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
        parts += [(3, ellipse(x, 0.35, r, r, 20)), (0, ellipse(x, 0.35, r * 0.8, r * 0.8, 20))]
    parts += [(1, bar(-0.55, 0.35, 0.0, 0.35, 0.08)), (1, bar(0.0, 0.35, 0.4, -0.2, 0.08)),
              (1, bar(-0.55, 0.35, -0.2, -0.2, 0.08)), (1, bar(-0.2, -0.2, 0.4, -0.2, 0.08)),
              (1, bar(0.4, -0.2, 0.55, 0.35, 0.08)), (2, _rect(-0.32, -0.3, -0.08, -0.22))]
    return parts


def _motorbike(rng) -> list[Part]:
    r = _j(rng, 0.33, 0.1)
    return _wheels((-0.6, 0.6), 0.4, r) + [
        (1, ellipse(0.0, 0.0, 0.5, _j(rng, 0.25))), (3, _rect(-0.45, -0.3, 0.0, -0.18)),
        (1, bar(0.35, -0.1, 0.6, 0.4, 0.1)), (2, bar(0.35, -0.2, 0.55, -0.45, 0.06))]


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


# --------------------------------------------------------------------------- discriminative parts
# The part of each template that keeps the class look under `part_focus` (a half-plane of the
# template's local coordinates: a*u + b*v > c; u along the object, v down): the head of animals
# and people, the front of vehicles, the back of chairs, the sail of boats. The rest of the body
# is pulled towards `SHARED_PALETTE`, so that like a real classifier's CAM, evidence concentrates
# on this part.
PART_FOCUS: dict[int, tuple[float, float, float]] = {
    1: (1.0, 0.0, 0.35),     # aeroplane: nose and cockpit
    2: (1.0, 0.0, 0.15),     # bicycle: front wheel and fork
    3: (1.0, 0.0, 0.35),     # bird: head and beak
    4: (0.0, -1.0, -0.1),    # boat: sail and mast
    5: (0.0, -1.0, 0.3),     # bottle: neck and cap
    6: (1.0, 0.0, 0.35),     # bus: front
    7: (0.0, -1.0, 0.05),    # car: cabin and roof
    8: (1.0, 0.0, 0.35),     # cat: head
    9: (-1.0, 0.0, 0.3),     # chair: backrest
    10: (1.0, 0.0, 0.35),    # cow: head and horns
    11: (0.0, -1.0, 0.1),    # diningtable: top
    12: (1.0, 0.0, 0.35),    # dog: head
    13: (1.0, 0.0, 0.35),    # horse: head and mane
    14: (1.0, 0.0, 0.25),    # motorbike: front
    15: (0.0, -1.0, 0.35),   # person: head and shoulders
    16: (0.0, -1.0, 0.35),   # pottedplant: top of the foliage
    17: (1.0, 0.0, 0.35),    # sheep: head
    18: (0.0, -1.0, 0.15),   # sofa: back cushions
    19: (1.0, 0.0, 0.45),    # train: front
    20: (0.0, -1.0, 0.1),    # tvmonitor: upper screen
}

# dull HSV colours shared by all classes: the non-discriminative rest of an object under part_focus
SHARED_PALETTE: tuple[tuple[float, float, float], ...] = (
    (0.08, 0.15, 0.55), (0.6, 0.08, 0.5), (0.0, 0.0, 0.45), (0.12, 0.2, 0.62), (0.55, 0.1, 0.4))
