"""Stored CAMs → pixel labels (`pseudo_labels.refine`): one image's (`refine_slots`), and a
split's published as validated palette PNGs (`refine_cam_labels`).

A pixel's score is the max over the image's present classes of their CAMs (after the method's
refinement). With the band (low, high): the arg-max class where the score is > high, background
where it is <= low, IGNORE (255) in between — DuPL/ToCo's two background planes
(`cam_to_train_label`'s rule); low = high is one plain background threshold.

- `none`: the rule on the CAMs themselves;
- `par`: DuPL/ToCo's refinement (`refine_cams_two_backgrounds`): per plane the softmax of
  [background, CAMs] is refined by PAR with the image's colours, then arg-maxed;
- `crf`: per plane [background, CAMs] normalised to probabilities, DenseCRF (`crf.dense_crf`,
  the one wrapper) and arg-max.
Both refinements decide per plane whether a class beats the background level; the planes are
combined as in DuPL: class where it beats the high plane, background where nothing beats the
low plane, 255 otherwise.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..cli import progress
from ..crf import CRF_PRESETS, dense_crf
from ..data.datasets import Split
from ..io import IGNORE_INDEX, atomic_dir, read_image, read_label, write_label
from .par import refine_cams_two_backgrounds
from .store import CAM_SUFFIX, load_cams


def combine_planes(slot_high: torch.Tensor, slot_low: torch.Tensor) -> torch.Tensor:
    """Slot labels (0 = background, s = the s-th present class) of the high and the low plane →
    the slot, 0 or IGNORE (DuPL's rule)."""
    label = torch.where(slot_high == 0, torch.full_like(slot_high, IGNORE_INDEX), slot_high)
    return torch.where((slot_high == 0) & (slot_low == 0), torch.zeros_like(label), label)


def _plane_slots(cams: torch.Tensor, level: float) -> torch.Tensor:
    """Arg-max of [level, cams] (ties go to the background, i.e. score <= level is 0)."""
    background = torch.full_like(cams[:1], level)
    return torch.cat([background, cams]).argmax(0)


def _crf_slots(image: np.ndarray, cams: torch.Tensor, level: float, preset: str) -> torch.Tensor:
    scores = torch.cat([torch.full_like(cams[:1], level), cams]).clamp_min(0)
    prob = (scores / scores.sum(0, keepdim=True).clamp_min(1e-5)).numpy()
    marginals = dense_crf(image, prob, CRF_PRESETS[preset])
    return torch.from_numpy(marginals.argmax(0))


def refine_slots(image: np.ndarray, cams: torch.Tensor, method: str, band: Sequence[float],
                 crf_preset: str = "dupl") -> torch.Tensor:
    """(H, W) int64 slot labels of one image: 0 background, s in 1..P the s-th of the P present
    classes, IGNORE in the band. `image` H×W×3 uint8, `cams` (P, H, W) float32 in [0, 1]."""
    low, high = float(band[0]), float(band[1])
    height, width = cams.shape[-2:]
    if cams.shape[0] == 0:
        return torch.zeros(height, width, dtype=torch.int64)
    if method == "par":
        unit = torch.tensor(image, dtype=torch.float32).permute(2, 0, 1)[None] / 255.0
        present = torch.ones(1, cams.shape[0])
        return refine_cams_two_backgrounds(unit, cams[None], present, high, low)[0]
    if method == "crf":
        planes = {level: _crf_slots(image, cams, level, crf_preset) for level in {low, high}}
    elif method == "none":
        planes = {level: _plane_slots(cams, level) for level in {low, high}}
    else:
        raise ValueError(f"unknown refinement {method!r}")
    return combine_planes(planes[high], planes[low])


def slots_to_classes(slots: torch.Tensor, keys: Sequence[int]) -> np.ndarray:
    """Slot labels → class ids (uint8): slot s → keys[s - 1], 0 and IGNORE kept."""
    lookup = np.full(IGNORE_INDEX + 1, IGNORE_INDEX, dtype=np.uint8)
    lookup[0] = 0
    lookup[1:len(keys) + 1] = np.asarray(list(keys), dtype=np.uint8)
    return lookup[slots.numpy()]


def refine_cam_labels(cam_dir: str | Path, split: Split, class_labels: dict[str, list[int]],
                      num_classes: int, refine, out_dir: str | Path) -> dict:
    """Pseudo labels of `split` from the CAMs stored in `cam_dir` (stage cams), refined with
    `refine` (config.RefineParams), written and validated as ingested labels are (palette PNG,
    values in 0, the present classes, 255; the image's size)."""
    cam_dir = Path(cam_dir)
    ids = split.ids
    band = refine.band
    with atomic_dir(out_dir) as tmp:
        for image_id in progress(ids, "pseudo labels"):
            image = read_image(split.image_path(image_id))
            keys = class_labels[image_id]
            cams = load_cams(cam_dir / f"{image_id}{CAM_SUFFIX}", keys, image.shape[:2])
            slots = refine_slots(image, cams, refine.method, band, refine.crf_preset)
            path = tmp / f"{image_id}.png"
            write_label(path, slots_to_classes(slots, keys))
            read_label(path, num_classes, expected_hw=image.shape[:2])
    return {"source": str(cam_dir), "refine": refine.method, "band": list(band),
            "labels": len(ids)}
