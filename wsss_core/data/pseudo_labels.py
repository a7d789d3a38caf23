"""Pseudo-label ingestion: take offline pseudo labels from a folder or an archive, check them
against the train split and publish them as one folder that DVC tracks (and `dvc pull` restores).

Published pseudo-label sets (A2GNN, EPS, RIB, VML, …) come as folders or `.zip` / `.tar` /
`.tar.gz` archives of `<image id>.png`, often inside a top-level folder. Files are validated
completely before anything is published: the output folder is replaced as a whole, so a failed
ingestion leaves the previous labels (or nothing) — never a partial set.
"""
from __future__ import annotations

import io as _io
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..cli import progress
from ..errors import DataError
from ..io import IGNORE_INDEX, atomic_dir, image_size
from .datasets import Split

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


class _LabelSource:
    """Uniform access to `<id>.png` members of a folder, zip or tar, found at any depth."""

    def __init__(self, path: Path):
        self.path = path
        self._members: dict[str, object] = {}
        if path.is_dir():
            entries = [(p.name, p) for p in path.rglob("*.png") if p.is_file()]
            self._read: Callable[[object], bytes] = lambda p: p.read_bytes()
        elif path.is_file() and path.name.lower().endswith(".zip"):
            try:
                self._zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise DataError(path, f"cannot open zip archive ({exc})") from None
            entries = [(PurePosixPath(i.filename).name, i.filename) for i in self._zip.infolist()
                       if not i.is_dir() and i.filename.lower().endswith(".png")]
            self._read = self._zip.read
        elif path.is_file() and _is_archive(path):
            try:
                self._tar = tarfile.open(path)
                members = self._tar.getmembers()
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise DataError(path, f"cannot open tar archive ({exc})") from None
            entries = [(PurePosixPath(m.name).name, m) for m in members
                       if m.isfile() and m.name.lower().endswith(".png")]
            self._read = lambda m: self._tar.extractfile(m).read()
        elif path.exists():
            raise DataError(path, "pseudo-label source must be a folder or a .zip/.tar/.tar.gz archive")
        else:
            raise DataError(path, "pseudo-label source not found")
        for name, member in entries:
            if name.startswith("._"):  # macOS resource forks inside archives
                continue
            if name in self._members:
                raise DataError(path, f"two files named {name} in the source; ids must be unique")
            self._members[name] = member

    def names(self) -> set[str]:
        return set(self._members)

    def read(self, name: str) -> bytes:
        try:
            return self._read(self._members[name])
        except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
            raise DataError(f"{self.path}:{name}", f"cannot read from source ({exc})") from None


def validate_label_bytes(data: bytes, where: str, num_classes: int,
                         expected_hw: tuple[int, int]) -> None:
    """The checks every pseudo label must pass; `where` names the file in the error."""
    try:
        img = Image.open(_io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(where, f"cannot decode PNG ({exc})") from None
    if img.format != "PNG":
        raise DataError(where, f"is {img.format}, expected PNG")
    if img.mode not in ("L", "P"):
        raise DataError(where, f"label has mode {img.mode}; expected a single-channel L or P PNG of class ids")
    label = np.asarray(img)
    if label.shape != tuple(expected_hw):
        raise DataError(where, f"label size {label.shape[1]}x{label.shape[0]} (WxH) differs from the "
                               f"image's {expected_hw[1]}x{expected_hw[0]}")
    bad = (label >= num_classes) & (label != IGNORE_INDEX)
    if bad.any():
        values = sorted(np.unique(label[bad]).tolist())[:5]
        raise DataError(where, f"label values {values} out of range (allowed 0..{num_classes - 1} or 255)")


def ingest_pseudo_labels(source: str | Path, split: Split, num_classes: int,
                         out_dir: str | Path) -> dict:
    """Validate `<id>.png` for every id of `split` in `source` and publish them to `out_dir`.

    Files are copied byte for byte (no re-encoding), so what `dvc push` stores is what the
    authors published. Extra files (other splits) are ignored and counted.
    """
    source = Path(source)
    labels = _LabelSource(source)
    ids = split.ids
    available = labels.names()
    missing = [i for i in ids if f"{i}.png" not in available]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(source, f"no pseudo label for id {missing[0]}{more} of {split.list_file}")
    with atomic_dir(out_dir) as tmp:
        for image_id in progress(ids, "pseudo labels"):
            data = labels.read(f"{image_id}.png")
            hw = image_size(split.image_path(image_id))
            validate_label_bytes(data, f"{source}:{image_id}.png" if not source.is_dir()
                                 else str(source / f"{image_id}.png"), num_classes, hw)
            (tmp / f"{image_id}.png").write_bytes(data)
    return {"source": str(source), "labels": len(ids), "ignored_extra_files": len(available) - len(ids)}



def synthesize_pseudo_labels(params, split: Split, out_dir: str | Path) -> dict:
    """Noisy, CAM-like pseudo labels for the synthetic train split (noise = `data.noise`)."""
    from .synthetic import write_noisy_pseudo_labels

    ids = split.ids
    with atomic_dir(out_dir) as tmp:
        write_noisy_pseudo_labels(split.gt_dir, ids, tmp, params.data.noise, params.data.noise_types,
                                  params.data.noise_seed, params.data.synthetic.classes)
    return {"source": "synthetic", "noise": params.data.noise, "labels": len(ids)}
