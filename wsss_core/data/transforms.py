"""Training-time augmentation for the two families of methods.

DeepLab v2 / CDL (spec cdl.md §3): random scale from a discrete list, pad bottom/right with the
mean colour (label 255), random crop, horizontal flip, BGR mean subtraction (no std); CDL-e also
gets a photometrically strong copy of the same crop (pixels stay aligned).

DuPL / ToCo (spec dupl.md §3.9, §3.5): random rescale U(0.5, 2.0), flip, random crop on a black
canvas with `img_box` marking the valid region, colour jitter + grayscale + Gaussian blur,
ImageNet normalisation; the strong view for self-consistency is RandAugment colour ops, always
flipped.

Every random choice comes from the `rng` argument (a NumPy Generator the dataset derives from the
seed, epoch and sample index), so a sample's augmentation does not depend on worker scheduling.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from ..io import IGNORE_INDEX

# DeepLab caffe models: BGR mean, no std division
BGR_MEAN = np.array([104.008, 116.669, 122.675], dtype=np.float32)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def resize_image(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize (half-pixel centres, no antialias, like cv2.INTER_LINEAR) of H×W×3."""
    if tuple(image.shape[:2]) == tuple(size_hw):
        return image
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    out = F.interpolate(t, size=size_hw, mode="bilinear", align_corners=False)
    return out[0].permute(1, 2, 0).numpy()


def resize_label(label: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize as PIL does it (the label resizing of both original codes)."""
    if tuple(label.shape) == tuple(size_hw):
        return label
    return np.asarray(Image.fromarray(label).resize((size_hw[1], size_hw[0]), Image.NEAREST))


def to_bgr_mean_subtracted(image_rgb: np.ndarray) -> np.ndarray:
    """H×W×3 RGB (uint8 or float) → 3×H×W float32 BGR minus the caffe mean."""
    bgr = np.asarray(image_rgb, dtype=np.float32)[..., ::-1] - BGR_MEAN
    return np.ascontiguousarray(bgr.transpose(2, 0, 1))


def to_imagenet_normalized(image_rgb: np.ndarray) -> np.ndarray:
    """H×W×3 RGB uint8 → 3×H×W float32 normalised with ImageNet mean/std."""
    x = np.asarray(image_rgb, dtype=np.float32) / 255.0
    return np.ascontiguousarray(((x - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1))


# --------------------------------------------------------------------------- DeepLab / CDL
def deeplab_train_crop(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                       crop: int, scales: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Scale, pad, crop and flip an RGB image and its label; returns uint8 RGB crop and label."""
    scale = float(scales[rng.integers(len(scales))])
    h, w = label.shape
    size = (int(h * scale), int(w * scale))
    image = resize_image(image.astype(np.float32), size)
    label = resize_label(label, size)
    pad_h, pad_w = max(crop - size[0], 0), max(crop - size[1], 0)
    if pad_h or pad_w:
        mean_rgb = BGR_MEAN[::-1]  # padding becomes 0 after mean subtraction
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="constant")
        image[size[0]:, :, :] = mean_rgb
        image[:, size[1]:, :] = mean_rgb
        label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=IGNORE_INDEX)
    top = int(rng.integers(image.shape[0] - crop + 1))
    left = int(rng.integers(image.shape[1] - crop + 1))
    image = image[top:top + crop, left:left + crop]
    label = label[top:top + crop, left:left + crop]
    if rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return np.clip(image, 0, 255), np.ascontiguousarray(label)


def _color_jitter(img: Image.Image, rng: np.random.Generator, brightness: float, contrast: float,
                  saturation: float, hue: float) -> Image.Image:
    """torchvision ColorJitter semantics (factors uniform in [1-x, 1+x], hue in [-h, h],
    the four ops in random order), drawn from `rng`."""
    ops = []
    if brightness:
        f = rng.uniform(max(0.0, 1 - brightness), 1 + brightness)
        ops.append(lambda im, f=f: TF.adjust_brightness(im, f))
    if contrast:
        f = rng.uniform(max(0.0, 1 - contrast), 1 + contrast)
        ops.append(lambda im, f=f: TF.adjust_contrast(im, f))
    if saturation:
        f = rng.uniform(max(0.0, 1 - saturation), 1 + saturation)
        ops.append(lambda im, f=f: TF.adjust_saturation(im, f))
    if hue:
        f = rng.uniform(-hue, hue)
        ops.append(lambda im, f=f: TF.adjust_hue(im, f))
    for index in rng.permutation(len(ops)):
        img = ops[index](img)
    return img


def cdl_strong_view(image_rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """CDL-e's strong photometric view: ColorJitter(0.5, 0.5, 0.5, 0.25) p=0.8, grayscale p=0.2,
    Gaussian blur radius U(0.1, 2.0) p=0.5; no geometric change."""
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image_rgb.dtype} {image_rgb.shape}")
    img = Image.fromarray(image_rgb)
    if rng.random() < 0.8:
        img = _color_jitter(img, rng, 0.5, 0.5, 0.5, 0.25)
    if rng.random() < 0.2:
        img = ImageOps.grayscale(img).convert("RGB")
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.1, 2.0)))
    return np.asarray(img)


# --------------------------------------------------------------------------- DuPL / ToCo
def dupl_train_crop(image: np.ndarray, rng: np.random.Generator, crop: int,
                    scale_range: tuple[float, float] = (0.5, 2.0)) -> tuple[np.ndarray, np.ndarray]:
    """Rescale, flip and crop onto a black canvas; returns the uint8 crop and
    `img_box = [h0, h1, w0, w1]`, the valid region inside the crop."""
    ratio = rng.uniform(*scale_range)
    h, w = image.shape[:2]
    size = (max(int(h * ratio), 1), max(int(w * ratio), 1))
    img = np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))
    if rng.random() < 0.5:
        img = img[:, ::-1]
    ch, cw = max(crop, size[0]), max(crop, size[1])
    canvas = np.zeros((ch, cw, 3), np.uint8)
    # place a small image at a random offset; then take a random crop of the canvas
    off_h, off_w = int(rng.integers(ch - size[0] + 1)), int(rng.integers(cw - size[1] + 1))
    canvas[off_h:off_h + size[0], off_w:off_w + size[1]] = img
    top, left = int(rng.integers(ch - crop + 1)), int(rng.integers(cw - crop + 1))
    out = canvas[top:top + crop, left:left + crop]
    box = np.array([max(off_h - top, 0), min(off_h + size[0] - top, crop),
                    max(off_w - left, 0), min(off_w + size[1] - left, crop)], dtype=np.int64)
    return np.ascontiguousarray(out), box


def dupl_color_pipeline(image_rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """ToCo/DuPL photometric augmentation: ColorJitter(0.4, 0.4, 0.2, 0.1) p=0.8, grayscale p=0.2,
    Gaussian blur always (radius U(0.1, 2.0))."""
    img = Image.fromarray(image_rgb)
    if rng.random() < 0.8:
        img = _color_jitter(img, rng, 0.4, 0.4, 0.2, 0.1)
    if rng.random() < 0.2:
        img = ImageOps.grayscale(img).convert("RGB")
    img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.1, 2.0)))
    return np.asarray(img)


# RandAugment as DuPL uses it (its utils/randomaug.py, after rpmcruz/autoaugment): the colour ops
# and the value range each maps the magnitude m ∈ [0, 30] into, value = low + m/30·(high − low).
# At DuPL's m = 10 the four enhance ops get factor 0.7 (always below 1: no random sign) and
# posterize keeps 2 bits.
RANDAUG_RANGES: dict[str, tuple[float, float]] = {
    "autocontrast": (0, 1), "equalize": (0, 1), "posterize": (0, 6),
    "color": (0.1, 1.9), "contrast": (0.1, 1.9), "brightness": (0.1, 1.9), "sharpness": (0.1, 1.9),
}
_ENHANCERS = {"color": ImageEnhance.Color, "contrast": ImageEnhance.Contrast,
              "brightness": ImageEnhance.Brightness, "sharpness": ImageEnhance.Sharpness}


def randaugment_value(name: str, magnitude: float) -> float:
    """The op's strength at `magnitude` (the original's expression, same float rounding)."""
    low, high = RANDAUG_RANGES[name]
    return (float(magnitude) / 30) * float(high - low) + low


def randaugment_op(img: Image.Image, name: str, magnitude: float) -> Image.Image:
    """One RandAugment colour op of DuPL's list at `magnitude` (PIL's own implementations)."""
    value = randaugment_value(name, magnitude)
    if name == "autocontrast":
        return ImageOps.autocontrast(img)
    if name == "equalize":
        return ImageOps.equalize(img)
    if name == "posterize":
        return ImageOps.posterize(img, max(1, int(value)))
    return _ENHANCERS[name](img).enhance(value)


def dupl_strong_view(image_rgb: np.ndarray, rng: np.random.Generator, num_ops: int = 5,
                     magnitude: int = 10) -> np.ndarray:
    """DuPL's strong view: RandAugment of `num_ops` colour ops drawn with replacement, each at
    `magnitude` (`randaugment_op`). The original's mirroring of this view happens in the method
    (`DuplConfig.strong_flip`), not here."""
    img = Image.fromarray(image_rgb)
    for name in rng.choice(list(RANDAUG_RANGES), size=num_ops, replace=True):
        img = randaugment_op(img, str(name), magnitude)
    return np.asarray(img)
