"""Ingestion of published pseudo labels (`pseudo_labels.source: files`) into the one folder
that DVC tracks (and `dvc pull` restores).

Published pseudo-label sets (A2GNN, EPS, RIB, VML, …) come as folders or `.zip` / `.tar` /
`.tar.gz` archives of `<image id>.png`, often inside a top-level folder. Files are validated
completely before anything is published: the output folder is replaced as a whole, so a failed
ingestion leaves the previous labels (or nothing) — never a partial set.
"""
from __future__ import annotations

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
