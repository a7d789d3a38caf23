"""The method-independent CAM package (`wsss_core.cam`): importable without any training method,
and PAR's view of the images (`denormalize_to_unit`) exactly as the original's
`denormalize_img2`."""
import subprocess
import sys

import numpy as np
import torch

from wsss_core.cam import denormalize_to_unit

# `imutils.denormalize_img` of ToCo/DuPL: x·std + mean with these literals, cast to uint8, / 255
LITERAL_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
LITERAL_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
# what a port from the 0-1 ImageNet constants would use: float32(0.224)·255 ≠ float32(57.12)
SCALED_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * np.float32(255)
SCALED_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * np.float32(255)


def uint8_unit(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(N, 3) float32 normalised values → the original's [0, 1] uint8 steps (float32 ops)."""
    pixels = x * std[None, :] + mean[None, :]
    return np.trunc(np.clip(pixels, 0, 255)).astype(np.float32) / np.float32(255)


def boundary_inputs() -> np.ndarray:
    """(N, 3) normalised values at every level k = 0..255 of each channel and the float32
    neighbours on both sides, where the truncation to uint8 is decided by the last bit."""
    levels = np.arange(256, dtype=np.float64)[:, None]
    at = ((levels - LITERAL_MEAN.astype(np.float64)) / LITERAL_STD.astype(np.float64)).astype(np.float32)
    return np.concatenate([at, np.nextafter(at, np.float32(np.inf)),
                           np.nextafter(at, np.float32(-np.inf))])


def as_images(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).T.reshape(1, 3, -1, 1)


def test_denormalize_uses_the_original_literals():
    x = boundary_inputs()
    expected = uint8_unit(x, LITERAL_MEAN, LITERAL_STD)
    scaled = uint8_unit(x, SCALED_MEAN, SCALED_STD)
    assert (expected != scaled).any()  # these inputs tell the two constant sets apart
    result = denormalize_to_unit(as_images(x))
    assert result.dtype == torch.float32
    assert np.array_equal(result[0, :, :, 0].numpy().T, expected)


def test_denormalize_clamps_to_the_unit_range():
    x = np.array([[-10.0, -10.0, -10.0], [10.0, 10.0, 10.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    result = denormalize_to_unit(as_images(x))[0, :, :, 0].T
    # 0·std + mean truncates to 123, 116, 103
    assert result.tolist() == [[0.0] * 3, [1.0] * 3,
                               [np.float32(123) / 255, np.float32(116) / 255, np.float32(103) / 255]]


def test_cam_package_imports_no_training_method():
    code = ("import sys, wsss_core.cam; "
            "print(sorted(m for m in sys.modules if m.startswith('wsss_core.methods')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
