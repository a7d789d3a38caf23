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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..crf import CRF_PRESETS, dense_crf
from ..data.datasets import Split
from ..errors import DataError
from ..io import IGNORE_INDEX, atomic_dir, read_image, read_label, write_label
from ..parallel import Workers, imap_unordered
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


@dataclass(frozen=True)
class _CamJob:
    """One image of `refine_cam_labels`, with absolute paths (workers run elsewhere)."""

    image_path: Path
    cam_path: Path
    keys: tuple[int, ...]
    out_path: Path
    num_classes: int
    method: str
    band: tuple[float, float]
    crf_preset: str


def _refine_cam_image(job: _CamJob) -> str:
    """Write one image's pseudo-label PNG and validate it (read back as ingested labels are)."""
    image = read_image(job.image_path)
    cams = load_cams(job.cam_path, job.keys, image.shape[:2])
    slots = refine_slots(image, cams, job.method, job.band, job.crf_preset)
    write_label(job.out_path, slots_to_classes(slots, job.keys))
    read_label(job.out_path, job.num_classes, expected_hw=image.shape[:2])
    return job.out_path.name


def refine_cam_labels(cam_dir: str | Path, split: Split, class_labels: dict[str, list[int]],
                      num_classes: int, refine, out_dir: str | Path,
                      workers: Workers | None = None) -> dict:
    """Pseudo labels of `split` from the CAMs stored in `cam_dir` (stage cams), refined with
    `refine` (config.RefineParams), written and validated as ingested labels are (palette PNG,
    values in 0, the present classes, 255; the image's size).

    Images are refined by `workers` (default: serial, in this process; `wsss_core.parallel`):
    each writes its PNG into the temporary folder beside `out_dir` that replaces it at the end,
    so on a cluster the workers must share that filesystem (and the images' and CAMs')."""
    cam_dir = Path(cam_dir)
    ids = split.ids
    band = refine.band
    workers = Workers(n_jobs=1) if workers is None else workers
    with atomic_dir(out_dir) as tmp:
        jobs = [_CamJob(image_path=split.image_path(i).absolute(),
                        cam_path=(cam_dir / f"{i}{CAM_SUFFIX}").absolute(), keys=tuple(class_labels[i]),
                        out_path=(tmp / f"{i}.png").absolute(), num_classes=num_classes,
                        method=refine.method, band=band, crf_preset=refine.crf_preset)
                for i in ids]
        with imap_unordered(_refine_cam_image, jobs, workers, "pseudo labels") as results:
            for _ in results:
                pass
        missing = [job.out_path.name for job in jobs if not job.out_path.is_file()]
        if missing:  # written where this process cannot see: not a shared filesystem
            raise DataError(tmp, f"{len(missing)} of {len(jobs)} pseudo labels written by the "
                                 f"workers are not here ({missing[0]}, ...); the workers must "
                                 f"share this filesystem")
    return {"source": str(cam_dir), "refine": refine.method, "band": list(band),
            "labels": len(ids)}
