"""Compact storage of a split's CAMs, so that refinement thresholds can be swept without running
the classifier again: `<folder>/<id>.npz` per image and `<folder>/manifest.json`.

Each file holds only the image's present classes (its image-level labels): `cams` float16
(P, ceil(H/stride), ceil(W/stride)) downsampled with area averaging, `keys` their class ids
(1..K-1, ascending), `size` the image's (H, W) and the `stride`. Reading upsamples bilinearly
back to the image and checks everything against the image and its labels.
"""
from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError
from ..io import read_json, write_json

CAM_SUFFIX = ".npz"
# what the cam_classifier and cams stages write beside their outputs
MANIFEST = "manifest.json"


def stored_grid(size: Sequence[int], stride: int) -> tuple[int, int]:
    """The stored grid of an H×W image: every `stride` pixels, rounded up."""
    return -(-int(size[0]) // stride), -(-int(size[1]) // stride)


def save_cams(path: str | Path, cams: torch.Tensor, keys: Sequence[int], stride: int) -> None:
    """Store `cams` (P, H, W), the CAMs of classes `keys` at the image's size, at `stride`.
    `path` is written in place: callers write into an `io.atomic_dir` folder."""
    cams = torch.as_tensor(cams, dtype=torch.float32)
    if cams.ndim != 3 or cams.shape[0] != len(keys):
        raise ValueError(f"cams must be (len(keys), H, W), got {tuple(cams.shape)} for keys {list(keys)}")
    size = cams.shape[-2:]
    grid = stored_grid(size, stride)
    if cams.shape[0] == 0:
        small = cams.new_zeros((0, *grid))
    elif grid == tuple(size):
        small = cams
    else:  # adaptive average pooling: the mean of the pixels of each stored cell
        small = F.interpolate(cams[None], size=grid, mode="area")[0]
    with open(path, "wb") as handle:
        np.savez_compressed(handle, cams=small.numpy().astype(np.float16),
                            keys=np.asarray(list(keys), dtype=np.int16),
                            size=np.asarray(size, dtype=np.int32), stride=np.int32(stride))


def load_cams(path: str | Path, keys: Sequence[int], image_hw: Sequence[int]) -> torch.Tensor:
    """The stored CAMs of one image as (P, H, W) float32 at the image's size `image_hw`; a file
    that is missing, unreadable, of other classes than `keys` or of another shape than the
    image's is a DataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "CAM file not found (run the cams stage)")
    try:
        with np.load(path) as data:
            cams, stored_keys = data["cams"], data["keys"].tolist()
            size, stride = tuple(int(v) for v in data["size"]), int(data["stride"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise DataError(path, f"not a CAM file of the cams stage ({exc})") from None
    if stored_keys != list(keys):
        raise DataError(path, f"CAMs of classes {stored_keys}, but the image-level labels are "
                              f"{list(keys)} (CAMs of another dataset or label file?)")
    if size != tuple(image_hw) or stride < 1 or cams.shape != (len(keys), *stored_grid(size, stride)):
        raise DataError(path, f"CAMs of shape {cams.shape} for an image of {size} at stride "
                              f"{stride}; the image is {tuple(image_hw)}, expected "
                              f"{(len(keys), *stored_grid(image_hw, max(stride, 1)))}")
    full = torch.from_numpy(cams.astype(np.float32))
    if full.shape[0] and full.shape[-2:] != tuple(image_hw):
        full = F.interpolate(full[None], size=tuple(image_hw), mode="bilinear",
                             align_corners=False)[0]
    return full.reshape(len(keys), *image_hw)


def write_manifest(folder: Path, manifest: dict) -> None:
    write_json(folder / MANIFEST, manifest)


def read_manifest(folder: Path, source: str) -> dict:
    """The manifest of the cams (or cam_classifier) stage's folder, which must have been made
    for pseudo_labels.source `source`."""
    path = folder / MANIFEST
    stage = "cam_classifier" if (folder / "config.json").exists() else "cams"
    if not path.is_file():
        raise DataError(path, f"not found (run the {stage} stage)")
    manifest = read_json(path)
    if not manifest.get("used") or manifest.get("source") != source:
        made = "a classifier" if stage == "cam_classifier" else "CAMs"
        raise DataError(path, f"{made} made for pseudo_labels.source "
                              f"{manifest.get('source')!r}, not {source!r} (run the {stage} stage)")
    return manifest
