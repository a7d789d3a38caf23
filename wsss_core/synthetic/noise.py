"""The pseudo-label noise model: CAM-like corruptions of GT maps.

`corrupt_label` turns a GT map into a noisy pseudo label (boundary shrink/grow, missed parts,
false-positive blobs, class confusion, ignore regions); `write_noisy_pseudo_labels` applies it to
a split with one RNG per image id, so outputs do not depend on order or parallelism.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..config import VOC_NUM_CLASSES, NoiseTypes
from ..errors import WsssError
from ..io import IGNORE_INDEX, read_label, write_label
from .render import add_void_border, smooth_noise
from .shapes import SIMILAR_CLASSES

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
    return smooth_noise(rng, h, w, 4)[:, :, 0]


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
    gt = read_label(Path(gt_dir) / f"{image_id}.png", num_classes=VOC_NUM_CLASSES)
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
