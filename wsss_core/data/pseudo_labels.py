"""Ingestion of published pseudo labels (`pseudo_labels.source: files`) into the one folder
that DVC tracks (and `dvc pull` restores).

Published pseudo-label sets (A2GNN, EPS, RIB, VML, …) come as folders or `.zip` / `.tar` /
`.tar.gz` archives of `<image id>.png`, often inside a top-level folder. Files are validated
completely before anything is published: the output folder is replaced as a whole, so a failed
ingestion leaves the previous labels (or nothing) — never a partial set.
"""
from __future__ import annotations

import os
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from ..cli import progress
from ..errors import DataError
from ..io import atomic_dir, decode_label, image_size
from .datasets import Split

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


class _LabelSource:
    """Uniform access to `<id>.png` members of a folder, zip or tar, found at any depth.

    A flat folder (no subfolders: what the pipeline's own sets and most downloads unpack to) is
    not indexed: a name is found by its path, so memory stays flat however many labels it holds.
    Nested folders and archives are indexed once, name -> member, and the location named in
    errors is built only when needed."""

    def __init__(self, path: Path):
        self.path = path
        self._members: dict[str, object] | None = None   # None: flat folder, looked up by path
        if path.is_dir():
            with os.scandir(path) as entries:
                nested = any(entry.is_dir() for entry in entries)
            if nested:
                self._members, self._dirs = {}, []
                for folder, subfolders, files in os.walk(path):
                    subfolders.sort()
                    self._dirs.append(folder)
                    self._index((((len(self._dirs) - 1, name), name) for name in sorted(files)
                                 if name.endswith(".png") and os.path.isfile(os.path.join(folder, name))),
                                lambda member: os.path.join(self._dirs[member[0]], member[1]))
                self._read: Callable[[object], bytes] = lambda m: Path(self._where(m)).read_bytes()
        elif path.is_file() and path.name.lower().endswith(".zip"):
            try:
                self._zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise DataError(path, f"cannot open zip archive ({exc})") from None
            self._members = {}
            self._index(((info, PurePosixPath(info.filename).name) for info in self._zip.infolist()
                         if not info.is_dir() and info.filename.lower().endswith(".png")),
                        lambda info: f"{path}:{info.filename}")
            self._read = self._zip.read
        elif path.is_file() and _is_archive(path):
            try:
                self._tar = tarfile.open(path)
                members = self._tar.getmembers()
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise DataError(path, f"cannot open tar archive ({exc})") from None
            self._members = {}
            self._index(((m, PurePosixPath(m.name).name) for m in members
                         if m.isfile() and m.name.lower().endswith(".png")),
                        lambda m: f"{path}:{m.name}")
            self._read = lambda m: self._tar.extractfile(m).read()
        elif path.exists():
            raise DataError(path, "pseudo-label source must be a folder or a .zip/.tar/.tar.gz archive")
        else:
            raise DataError(path, "pseudo-label source not found")

    def _index(self, entries, where: Callable[[object], str]) -> None:
        self._where = where
        for member, name in entries:
            if name.startswith("._"):  # macOS resource forks inside archives
                continue
            if name in self._members:
                raise DataError(self.path, f"two files named {name} in the source "
                                           f"({where(self._members[name])} and {where(member)}); "
                                           f"ids must be unique")
            self._members[name] = member

    def __contains__(self, name: str) -> bool:
        if self._members is None:
            return os.path.isfile(self.path / name)
        return name in self._members

    def count(self) -> int:
        """How many label files the source holds."""
        if self._members is not None:
            return len(self._members)
        with os.scandir(self.path) as entries:
            return sum(1 for e in entries if e.name.endswith(".png") and not e.name.startswith("._")
                       and e.is_file())

    def where(self, name: str) -> str:
        if self._members is None:
            return str(self.path / name)
        return self._where(self._members[name])

    def read(self, name: str) -> bytes:
        try:
            if self._members is None:
                return (self.path / name).read_bytes()
            return self._read(self._members[name])
        except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
            raise DataError(self.where(name), f"cannot read from source ({exc})") from None


def ingest_pseudo_labels(source: str | Path, split: Split, num_classes: int,
                         out_dir: str | Path) -> dict:
    """Validate `<id>.png` for every id of `split` in `source` and publish them to `out_dir`.

    Files are copied byte for byte (no re-encoding), so what `dvc push` stores is what the
    authors published. Extra files (other splits) are ignored and counted. The split's ids are
    streamed twice (all present? then validate and copy), never held: peak memory does not grow
    with the set's size (COCO: 82,081 labels).
    """
    source = Path(source)
    labels = _LabelSource(source)
    wanted, missing, first_missing = 0, 0, None
    for image_id in split.iter_ids():
        wanted += 1
        if f"{image_id}.png" not in labels:
            missing, first_missing = missing + 1, first_missing or image_id
    if missing:
        more = f" (and {missing - 1} more)" if missing > 1 else ""
        raise DataError(source, f"no pseudo label for id {first_missing}{more} of {split.list_file}")
    with atomic_dir(out_dir) as tmp:
        for image_id in progress(split.iter_ids(), "pseudo labels", total=wanted):
            name = f"{image_id}.png"
            data = labels.read(name)
            decode_label(data, labels.where(name), num_classes,
                         expected_hw=image_size(split.image_path(image_id)))
            (tmp / name).write_bytes(data)
    return {"source": str(source), "labels": wanted, "ignored_extra_files": labels.count() - wanted}
