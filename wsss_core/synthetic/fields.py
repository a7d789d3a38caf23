"""Colour and noise fields shared by the object, background and context drawing."""
from __future__ import annotations

import colorsys

import numpy as np


def hsv(h, s, v) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)),
                    dtype=np.float32)


def smooth_noise(rng, h: int, w: int, cells: int, channels: int = 1) -> np.ndarray:
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
