"""What each class's co-occurring background looks like and where it lies: rails under trains,
water under boats, sky around aeroplanes, road under cars, grass under cows, floor under chairs.

A real classifier learns such context along with the object, so its CAMs spill onto it
("railroad is not a train"). `paint_context` draws one object's context on background pixels
only: a region of about `AREA_RATIO` × the object's visible area, grown from the object (so it
is connected and touches it) inside the class's zone, and filled with the class's own colours and pattern. The GT
is not touched: context is background.

Coordinates: (U, V) place the object's bounding box at [-1, 1]^2 (V down), so zones and
patterns follow the object's size and position.
"""
from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .fields import hsv as _hsv
from .fields import smooth_noise

AREA_RATIO = (0.35, 0.9)   # context area / the object's visible area
_EDGE_WOBBLE = 0.12        # irregularity of the context region's edge, in box half-sizes


@dataclass(frozen=True)
class _Frame:
    """Pixel grid and the object's box frame."""

    U: np.ndarray
    V: np.ndarray
    x: np.ndarray      # pixel centres
    y: np.ndarray
    box_w: float
    box_h: float


def _jittered(rng, h, s, v) -> np.ndarray:
    d = (rng.random(3) - 0.5) * (0.03, 0.12, 0.12)
    return _hsv(h + d[0], s + d[1], v + d[2])


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-pixel blend of colours a → b by t (h, w) in [0, 1]."""
    return a + (b - a) * np.clip(t, 0.0, 1.0)[:, :, None]


def _grain(rng, f: _Frame, cells: int = 6) -> np.ndarray:
    h, w = f.U.shape
    return smooth_noise(rng, h, w, cells)[:, :, 0]


def _period(f: _Frame, axis: np.ndarray, cycles: float, phase: float) -> np.ndarray:
    """Position in [0, 1) of a pattern with `cycles` repeats per object box along `axis`."""
    return (axis * cycles / 2.0 + phase) % 1.0


def _field(colour: np.ndarray, f: _Frame) -> np.ndarray:
    return np.broadcast_to(colour, (*f.U.shape, 3)).astype(np.float32)


# --------------------------------------------------------------------------- painters
# Each returns the (h, w, 3) colours of the class's context; only the region's pixels are used.
def _sky(rng, f, region):
    top = _jittered(rng, 0.58, 0.45, 0.92)
    bottom = _jittered(rng, 0.56, 0.15, 0.98)
    out = _mix(_field(top, f), _field(bottom, f), (f.V + 1.6) / 3.2)
    clouds = _grain(rng, f, 4) + 0.25 * _grain(rng, f, 9)
    return _mix(out, _field(_hsv(0, 0, 1.0), f), (clouds - 0.35) * 2.5)


def _branch(rng, f, region):
    bark = _jittered(rng, 0.07, 0.6, 0.38)
    out = _mix(_field(bark, f), _field(bark * 0.55, f), (np.sin(f.V * 40 + 3 * _grain(rng, f)) > 0.3))
    leaves = (np.sin(f.U * 9 + rng.random() * 6) * np.sin(f.V * 9) > 0.55)
    return np.where(leaves[:, :, None], _field(_jittered(rng, 0.3, 0.7, 0.5), f), out)


def _water(rng, f, region):
    deep = _jittered(rng, 0.53, 0.75, 0.5)
    out = _mix(_field(deep, f), _field(deep * 0.7, f), (f.V - 0.5) / 2.0)
    ripple = np.sin(2 * np.pi * (f.V * 5.0 + 0.25 * np.sin(f.U * 7.0 + rng.random() * 6))) > 0.75
    return np.where(ripple[:, :, None], _field(_hsv(0.52, 0.25, 0.95), f), out)


def _rails(rng, f, region):
    gravel = _jittered(rng, 0.08, 0.2, 0.42)
    out = _mix(_field(gravel, f), _field(gravel * 0.6, f), _grain(rng, f, 12) + 0.5)
    sleepers = _period(f, f.U, 9.0, rng.random()) < 0.4
    out = np.where(sleepers[:, :, None], _field(_jittered(rng, 0.06, 0.55, 0.3), f), out)
    rows = np.nonzero(region.any(axis=1))[0]
    top, bottom = (rows.min(), rows.max()) if rows.size else (0, 0)
    rail = np.zeros(region.shape, bool)
    for frac in (0.25, 0.7):
        y = top + frac * (bottom - top)
        rail |= np.abs(f.y - y) < max(1.0, 0.03 * f.box_h)
    return np.where(rail[:, :, None], _field(_hsv(0.6, 0.05, 0.85), f), out)


def _road(marking: str):
    def paint(rng, f, region):
        asphalt = _jittered(rng, 0.6, 0.06, 0.25)
        out = _mix(_field(asphalt, f), _field(asphalt * 1.4, f), _grain(rng, f, 10) + 0.5)
        rows = np.nonzero(region.any(axis=1))[0]
        mid = (rows.min() + rows.max()) / 2.0 if rows.size else 0.0
        line = max(1.0, 0.035 * f.box_h)
        if marking == "dashed":      # car: white dashes along the middle
            mark = (np.abs(f.y - mid) < line) & (_period(f, f.U, 3.0, rng.random()) < 0.5)
            paint_colour = _hsv(0, 0, 0.95)
        elif marking == "double":    # bus: two solid yellow lines
            mark = np.abs(np.abs(f.y - mid) - 2.2 * line) < line
            paint_colour = _hsv(0.14, 0.85, 0.9)
        else:                        # motorbike: a zebra crossing
            mark = _period(f, f.U, 5.0, rng.random()) < 0.45
            paint_colour = _hsv(0, 0, 0.9)
        return np.where(mark[:, :, None], _field(paint_colour, f), out)
    return paint


def _bike_lane(rng, f, region):
    lane = _jittered(rng, 0.02, 0.6, 0.5)
    out = _mix(_field(lane, f), _field(lane * 0.8, f), _grain(rng, f, 10) + 0.5)
    rows = np.nonzero(region.any(axis=1))[0]
    top, bottom = (rows.min(), rows.max()) if rows.size else (0, 0)
    line = max(1.0, 0.03 * f.box_h)
    edge = (np.abs(f.y - top - line) < line) | (np.abs(f.y - bottom + line) < line)
    return np.where(edge[:, :, None], _field(_hsv(0, 0, 0.95), f), out)


def _grass(kind: str):
    def paint(rng, f, region):
        if kind == "meadow":     # cow: green with yellow flowers
            base = _jittered(rng, 0.27, 0.65, 0.5)
        elif kind == "paddock":  # horse: dark green with a white fence rail
            base = _jittered(rng, 0.33, 0.6, 0.35)
        else:                    # sheep: pale mown pasture in diagonal stripes
            base = _jittered(rng, 0.2, 0.45, 0.65)
        blades = (np.sin(f.x * 2.3 + 2 * _grain(rng, f, 14)) > 0.2).astype(np.float32)
        out = _mix(_field(base, f), _field(base * 0.7, f), blades)
        if kind == "meadow":
            flowers = np.sin(f.U * 14 + rng.random() * 6) * np.sin(f.V * 14) > 0.8
            out = np.where(flowers[:, :, None], _field(_hsv(0.15, 0.8, 0.95), f), out)
        elif kind == "paddock":
            rail = _period(f, f.V, 4.0, rng.random()) < 0.18
            out = np.where(rail[:, :, None], _field(_hsv(0, 0, 0.92), f), out)
        else:
            stripes = _period(f, f.U + f.V, 3.0, rng.random()) < 0.5
            out = np.where(stripes[:, :, None], out * 1.2, out)
        return out
    return paint


def _rug(rng, f, region):      # cat: a red rug with cream bands and diamonds
    red = _jittered(rng, 0.98, 0.7, 0.5)
    diamonds = (np.abs(_period(f, f.U, 4.0, 0) - 0.5) + np.abs(_period(f, f.V, 4.0, 0) - 0.5)) < 0.25
    out = np.where(diamonds[:, :, None], _field(red * 0.6, f), _field(red, f))
    bands = _period(f, f.V, 6.0, rng.random()) < 0.15
    return np.where(bands[:, :, None], _field(_hsv(0.12, 0.25, 0.9), f), out)


def _cushion(rng, f, region):  # dog: a blue tartan dog bed
    blue = _jittered(rng, 0.62, 0.6, 0.45)
    tartan = (_period(f, f.U, 6.0, rng.random()) < 0.3) ^ (_period(f, f.V, 6.0, 0.3) < 0.3)
    out = np.where(tartan[:, :, None], _field(blue * 1.5, f), _field(blue, f))
    thin = (_period(f, f.U, 6.0, 0.62) < 0.06) | (_period(f, f.V, 6.0, 0.92) < 0.06)
    return np.where(thin[:, :, None], _field(_hsv(0.0, 0.8, 0.8), f), out)


def _cobbles(rng, f, region):  # person: a beige cobblestone path
    stone = _jittered(rng, 0.1, 0.25, 0.7)
    row = np.floor(f.V * 3.5)
    u = _period(f, f.U + 0.5 * (row % 2) * 2 / 4.0, 4.0, 0)
    grout = (u < 0.12) | (((f.V * 3.5) % 1.0) < 0.15)
    out = _mix(_field(stone, f), _field(stone * 0.8, f), _grain(rng, f, 8) + 0.5)
    return np.where(grout[:, :, None], _field(stone * 0.45, f), out)


def _floor(kind: str):
    def paint(rng, f, region):
        if kind == "planks":     # chair: light horizontal boards, staggered seams
            wood = _jittered(rng, 0.09, 0.5, 0.75)
            board = np.floor(f.V * 3.0)
            seam = (((f.V * 3.0) % 1.0) < 0.1) | (_period(f, f.U + board * 0.37, 1.5, 0) < 0.05)
        elif kind == "boards":   # sofa: dark boards running away from the viewer
            wood = _jittered(rng, 0.05, 0.6, 0.35)
            seam = _period(f, f.U, 5.0, rng.random()) < 0.1
        else:                    # diningtable: black and white tiles
            wood = _hsv(0, 0, 0.9)
            tiles = (_period(f, f.U, 3.0, 0) < 0.5) ^ (_period(f, f.V, 3.0, rng.random()) < 0.5)
            return np.where(tiles[:, :, None], _field(_hsv(0, 0, 0.12), f), _field(wood, f))
        grain = np.sin(f.x * 0.9 + 3 * _grain(rng, f, 10)) > 0.5 if kind == "planks" else \
            np.sin(f.y * 0.9 + 3 * _grain(rng, f, 10)) > 0.5
        out = np.where(grain[:, :, None], _field(wood * 0.85, f), _field(wood, f))
        return np.where(seam[:, :, None], _field(wood * 0.4, f), out)
    return paint


def _table_top(rng, f, region):   # bottle: a walnut table top with long grain
    wood = _jittered(rng, 0.06, 0.65, 0.4)
    grain = np.sin(f.y * 1.3 + 4 * _grain(rng, f, 5)) > 0.3
    out = np.where(grain[:, :, None], _field(wood * 1.3, f), _field(wood, f))
    rows = np.nonzero(region.any(axis=1))[0]
    edge = f.y > (rows.max() - max(1.0, 0.06 * f.box_h)) if rows.size else f.y < 0
    return np.where(edge[:, :, None], _field(wood * 0.5, f), out)


def _sill(rng, f, region):        # pottedplant: a white windowsill under light-blue glass
    glass = _mix(_field(_jittered(rng, 0.55, 0.3, 0.95), f), _field(_hsv(0.55, 0.1, 1.0), f),
                 (f.U + 1) / 2)
    frame = (_period(f, f.U, 1.0, 0.5) < 0.06) | (_period(f, f.V, 1.0, 0.5) < 0.06)
    out = np.where(frame[:, :, None], _field(_hsv(0, 0, 0.97), f), glass)
    sill = f.V > 0.85
    return np.where(sill[:, :, None], _field(_jittered(rng, 0.1, 0.05, 0.88), f), out)


def _cabinet(rng, f, region):     # tvmonitor: a dark cabinet with drawers and knobs
    wood = _jittered(rng, 0.04, 0.5, 0.22)
    out = _field(wood, f)
    drawers = (_period(f, f.V, 3.0, 0.1) < 0.08) | (np.abs(f.U) < 0.03)
    out = np.where(drawers[:, :, None], _field(wood * 0.4, f), out)
    knobs = (np.abs(np.abs(f.U) - 0.25) < 0.06) & (np.abs(_period(f, f.V, 3.0, 0.1) - 0.5) < 0.08)
    return np.where(knobs[:, :, None], _field(_hsv(0.12, 0.6, 0.85), f), out)


# --------------------------------------------------------------------------- where each lies
@dataclass(frozen=True)
class ContextStyle:
    """Where a class's context grows and how it looks.

    `zone` in box coordinates: V >= v_min and |U| <= u_max. `order` picks which zone pixels are
    taken first: "below" row by row downwards from the object (a band under it), "around" by
    distance to the box centre (a patch the object sits in, such as
    sky around an aeroplane), "level" by distance to the row V = v_level (a bar through
    the object's lower part, such as a branch).
    """

    painter: Callable[[np.random.Generator, _Frame, np.ndarray], np.ndarray]
    order: str = "below"
    v_min: float = 0.55
    u_max: float = 1.5
    v_level: float = 0.6


CONTEXT_STYLES: dict[int, ContextStyle] = {
    1: ContextStyle(_sky, "around", v_min=-9.0, u_max=9.0),
    2: ContextStyle(_bike_lane),
    3: ContextStyle(_branch, "level", v_min=0.0, u_max=1.9, v_level=0.55),
    4: ContextStyle(_water, v_min=0.5, u_max=1.8),
    5: ContextStyle(_table_top, v_min=0.75, u_max=3.0),
    6: ContextStyle(_road("double")),
    7: ContextStyle(_road("dashed")),
    8: ContextStyle(_rug, v_min=0.6, u_max=1.4),
    9: ContextStyle(_floor("planks"), v_min=0.6),
    10: ContextStyle(_grass("meadow"), v_min=0.3),
    11: ContextStyle(_floor("tiles"), v_min=0.6),
    12: ContextStyle(_cushion, v_min=0.6, u_max=1.4),
    13: ContextStyle(_grass("paddock"), v_min=0.3),
    14: ContextStyle(_road("zebra")),
    15: ContextStyle(_cobbles, v_min=0.7, u_max=2.2),
    16: ContextStyle(_sill, "around", v_min=-9.0, u_max=1.8),
    17: ContextStyle(_grass("pasture"), v_min=0.3),
    18: ContextStyle(_floor("boards"), v_min=0.6),
    19: ContextStyle(_rails, v_min=0.6, u_max=1.6),
    20: ContextStyle(_cabinet, v_min=0.75, u_max=1.2),
}


def _frame(obj: np.ndarray) -> _Frame:
    h, w = obj.shape
    ys, xs = np.nonzero(obj)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1.0, ys.min(), ys.max() + 1.0
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    box_w, box_h = max(x1 - x0, 2.0), max(y1 - y0, 2.0)
    return _Frame((x - (x0 + x1) / 2) / (box_w / 2), (y - (y0 + y1) / 2) / (box_h / 2), x, y,
                  float(box_w), float(box_h))


def _rim(mask: np.ndarray) -> np.ndarray:
    """Pixels 4-adjacent to `mask`, outside it."""
    rim = np.zeros_like(mask)
    rim[1:] |= mask[:-1]
    rim[:-1] |= mask[1:]
    rim[:, 1:] |= mask[:, :-1]
    rim[:, :-1] |= mask[:, 1:]
    return rim & ~mask


def _grow(obj: np.ndarray, free: np.ndarray, key: np.ndarray, target: int) -> np.ndarray:
    """Up to `target` pixels of `free`, grown from the object outwards (a priority flood: always
    the reachable free pixel of smallest `key`), so the region is connected and touches it."""
    h, w = obj.shape
    flat_free, flat_key = free.reshape(-1), key.reshape(-1)
    region = np.zeros(h * w, bool)
    heap = [(float(flat_key[i]), int(i)) for i in np.flatnonzero((_rim(obj) & free).reshape(-1))]
    heapq.heapify(heap)
    taken = 0
    while heap and taken < target:
        _, i = heapq.heappop(heap)
        if region[i]:
            continue
        region[i] = True
        taken += 1
        y, x = divmod(i, w)
        for j, ok in ((i - w, y > 0), (i + w, y < h - 1), (i - 1, x > 0), (i + 1, x < w - 1)):
            if ok and flat_free[j] and not region[j]:
                heapq.heappush(heap, (float(flat_key[j]), j))
    return region.reshape(h, w)


def paint_context(rng: np.random.Generator, image: np.ndarray, context: np.ndarray,
                  objects: np.ndarray, obj: np.ndarray, cls: int) -> int:
    """Paint class `cls`'s context for the object `obj` (bool mask) into `image` (float RGB) and
    `context` (its class id) on pixels that are neither an object (`objects`) nor earlier
    context; returns the number of pixels painted."""
    style = CONTEXT_STYLES[cls]
    f = _frame(obj)
    # the zone; where other objects fill it next to this one, anywhere free beside the object
    free = ~objects & (context == 0) & (f.V >= style.v_min) & (np.abs(f.U) <= style.u_max)
    if style.order == "below":
        key = f.V
    elif style.order == "level":
        key = np.abs(f.V - style.v_level)
    else:
        key = np.hypot(f.U, f.V)
    key = key + _EDGE_WOBBLE * _grain(rng, f, 5)     # ragged, not ruler-straight, edges
    target = int(round(obj.sum() * (AREA_RATIO[0] + (AREA_RATIO[1] - AREA_RATIO[0]) * rng.random())))
    region = _grow(obj, free if (_rim(obj) & free).any() else ~objects & (context == 0), key, target)
    colours = style.painter(rng, f, region)
    image[region] = np.clip(colours[region], 0.0, 1.0)
    context[region] = cls
    return int(region.sum())
