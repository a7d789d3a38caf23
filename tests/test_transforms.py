"""DuPL's strong view: RandAugment strengths of the original (Wu0409/DuPL utils/randomaug.py).

There each op's value is low + m/30·(high − low) of its range; at m = 10 Color, Contrast,
Brightness and Sharpness enhance with factor 0.1 + 1.8/3 = 0.7 (no random sign) and Posterize
keeps int(6/3) = 2 bits. The expected pixels below follow PIL's enhance formula
out = degenerate + factor·(image − degenerate), truncated to uint8 (±1 allowed for that).
"""
import numpy as np
import pytest
from PIL import Image

from wsss_core.data.transforms import (
    RANDAUG_RANGES,
    dupl_strong_view,
    randaugment_op,
    randaugment_value,
)

COLOUR = np.array([200.0, 100.0, 50.0])
FACTOR = 0.7


def _constant(colour=COLOUR, size=4) -> Image.Image:
    return Image.fromarray(np.full((size, size, 3), colour, np.uint8))


def _enhanced(degenerate, image, factor=FACTOR):
    return degenerate + factor * (np.asarray(image, float) - degenerate)


def test_magnitude_10_gives_the_originals_strengths():
    for name in ("color", "contrast", "brightness", "sharpness"):
        assert randaugment_value(name, 10) == pytest.approx(FACTOR, abs=1e-12)
    assert int(randaugment_value("posterize", 10)) == 2


@pytest.mark.parametrize("name", ["color", "contrast", "brightness", "posterize"])
def test_one_op_on_a_constant_image(name):
    grey = round(0.299 * COLOUR[0] + 0.587 * COLOUR[1] + 0.114 * COLOUR[2])  # PIL's "L": 124
    expected = {
        "brightness": _enhanced(0.0, COLOUR),            # degenerate: black → (140, 70, 35)
        "color": _enhanced(float(grey), COLOUR),         # degenerate: the grey image
        "contrast": _enhanced(float(grey), COLOUR),      # degenerate: the mean grey level
        "posterize": COLOUR.astype(int) & 0b11000000,    # 2 bits kept → (192, 64, 0)
    }[name]
    out = np.asarray(randaugment_op(_constant(), name, 10))[0, 0].astype(float)
    assert np.allclose(out, expected, atol=1.0), (name, out, expected)


def test_sharpness_blends_with_the_smoothed_image():
    # PIL's SMOOTH kernel [[1,1,1],[1,5,1],[1,1,1]]/13 around one bright pixel
    image = np.zeros((5, 5, 3), np.uint8)
    image[2, 2] = 255
    out = np.asarray(randaugment_op(Image.fromarray(image), "sharpness", 10))[..., 0].astype(float)
    assert out[2, 2] == pytest.approx(_enhanced(255 * 5 / 13, 255), abs=1.0)   # 207.9
    assert out[1, 2] == pytest.approx(_enhanced(255 / 13, 0), abs=1.0)         # 5.9


def test_strong_view_applies_ops_of_the_list():
    image = _constant()
    singles = {name: np.asarray(randaugment_op(image, name, 10)) for name in RANDAUG_RANGES}
    seen = set()
    for seed in range(30):
        out = dupl_strong_view(np.asarray(image), np.random.default_rng(seed), num_ops=1)
        matches = {name for name, single in singles.items() if np.array_equal(out, single)}
        assert matches, seed
        seen |= matches
    assert {"brightness", "posterize"} <= seen
