"""The train split's pseudo labels, published as one folder that DVC tracks (and `dvc pull`
restores), from each `pseudo_labels.source`: ingested from a folder or an archive (files),
simulated from the synthetic GT (simulate), or refined from the stored CAMs of a classifier
(cams, dupl).

Published pseudo-label sets (A2GNN, EPS, RIB, VML, …) come as folders or `.zip` / `.tar` /
`.tar.gz` archives of `<image id>.png`, often inside a top-level folder. Files are validated
completely before anything is published: the output folder is replaced as a whole, so a failed
ingestion leaves the previous labels (or nothing) — never a partial set. Refined CAM labels go
through the same PNG writer and the same validation.
"""
from __future__ import annotations

import shutil
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from ..cli import progress
from ..errors import DataError
from ..io import (
    atomic_dir,
    decode_label,
    image_size,
    read_image,
    read_label,
    write_json,
    write_label,
)
from .datasets import Split

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
# what the cam_classifier and cams stages write beside their outputs (wsss_core.cam.store)
STAGE_MANIFEST = "manifest.json"


def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


class _LabelSource:
    """Uniform access to `<id>.png` members of a folder, zip or tar, found at any depth."""

    def __init__(self, path: Path):
        self.path = path
        # file name -> (handle for `_read`, location named in errors: the file's own path in a
        # folder, `<archive>:<member path>` in an archive)
        self._members: dict[str, tuple[object, str]] = {}
        if path.is_dir():
            entries = [(p, str(p), p.name) for p in sorted(path.rglob("*.png")) if p.is_file()]
            self._read: Callable[[object], bytes] = lambda p: p.read_bytes()
        elif path.is_file() and path.name.lower().endswith(".zip"):
            try:
                self._zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise DataError(path, f"cannot open zip archive ({exc})") from None
            entries = [(i.filename, f"{path}:{i.filename}", PurePosixPath(i.filename).name)
                       for i in self._zip.infolist()
                       if not i.is_dir() and i.filename.lower().endswith(".png")]
            self._read = self._zip.read
        elif path.is_file() and _is_archive(path):
            try:
                self._tar = tarfile.open(path)
                members = self._tar.getmembers()
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise DataError(path, f"cannot open tar archive ({exc})") from None
            entries = [(m, f"{path}:{m.name}", PurePosixPath(m.name).name) for m in members
                       if m.isfile() and m.name.lower().endswith(".png")]
            self._read = lambda m: self._tar.extractfile(m).read()
        elif path.exists():
            raise DataError(path, "pseudo-label source must be a folder or a .zip/.tar/.tar.gz archive")
        else:
            raise DataError(path, "pseudo-label source not found")
        for member, where, name in entries:
            if name.startswith("._"):  # macOS resource forks inside archives
                continue
            if name in self._members:
                raise DataError(path, f"two files named {name} in the source "
                                      f"({self._members[name][1]} and {where}); ids must be unique")
            self._members[name] = (member, where)

    def names(self) -> set[str]:
        return set(self._members)

    def where(self, name: str) -> str:
        return self._members[name][1]

    def read(self, name: str) -> bytes:
        member, where = self._members[name]
        try:
            return self._read(member)
        except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
            raise DataError(where, f"cannot read from source ({exc})") from None


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
            name = f"{image_id}.png"
            data = labels.read(name)
            decode_label(data, labels.where(name), num_classes,
                         expected_hw=image_size(split.image_path(image_id)))
            (tmp / name).write_bytes(data)
    return {"source": str(source), "labels": len(ids), "ignored_extra_files": len(available) - len(ids)}


def synthesize_pseudo_labels(params, split: Split, gt_dir: str | Path, out_dir: str | Path) -> dict:
    """Noisy, CAM-like pseudo labels of the synthetic train split: the masks in `gt_dir`
    corrupted with `data.noise`."""
    from .synthetic import write_noisy_pseudo_labels

    ids = split.ids
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise DataError(gt_dir, "GT folder to simulate pseudo labels from not found (run the "
                                "prepare_data stage)")
    with atomic_dir(out_dir) as tmp:
        write_noisy_pseudo_labels(gt_dir, ids, tmp, params.data.noise, params.data.noise_types,
                                  params.data.noise_seed, params.data.synthetic.classes)
    return {"source": str(gt_dir), "noise": params.data.noise, "labels": len(ids)}


def refine_cam_labels(cam_dir: str | Path, split: Split, class_labels: dict[str, list[int]],
                      num_classes: int, refine, out_dir: str | Path) -> dict:
    """Pseudo labels of `split` from the CAMs stored in `cam_dir` (stage cams), refined with
    `refine` (config.RefineParams), written and validated as ingested labels are (palette PNG,
    values in 0, the present classes, 255; the image's size)."""
    from ..cam.refine import refine_slots, slots_to_classes
    from ..cam.store import CAM_SUFFIX, load_cams

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


def unused_stage_manifest(source: str) -> dict:
    return {"used": False, "source": source,
            "why": "pseudo_labels.source is neither cams nor dupl"}


def mark_stage_unused(folder: str | Path, source: str, whole_folder: bool,
                      keep: tuple[str, ...] = ()) -> dict:
    """The output of the cam_classifier / cams stage when the source does not use them: a
    manifest saying so, written at once (the stage's time is that of loading params).
    `whole_folder` replaces `folder` by one holding only the manifest; otherwise everything in
    it but the entries named in `keep` (the classifier's checkpoints, for a later resume) is
    removed first, so no model of an earlier run looks current."""
    folder = Path(folder)
    manifest = unused_stage_manifest(source)
    if whole_folder:
        with atomic_dir(folder) as tmp:
            write_json(tmp / STAGE_MANIFEST, manifest)
        return manifest
    for entry in (sorted(folder.iterdir()) if folder.is_dir() else []):
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    write_json(folder / STAGE_MANIFEST, manifest)
    return manifest
