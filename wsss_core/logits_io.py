"""Logits files: the infer stage's per-image scores, in one of two forms (full `.npy` or compact
`.npz`), written atomically through `wsss_core.io` and read back as the full (C, h, w) array."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .errors import DataError
from .io import as_data_error, atomic_path

# A logits file is one of two forms, told apart by its suffix:
#   <id>.npy  full: the (C, h, w) array (float16 by default)
#   <id>.npz  compact: at each cell of the grid the k most probable classes, exactly, and one
#             log-sum-exp for the other C − k (COCO: 8 of 81 classes, a third of the bytes)
FULL_LOGITS_SUFFIX = ".npy"
COMPACT_LOGITS_SUFFIX = ".npz"
LOGITS_SUFFIXES = (FULL_LOGITS_SUFFIX, COMPACT_LOGITS_SUFFIX)
COMPACT_TOP_K = 8
_COMPACT_MEMBERS = {"classes", "logits", "rest", "num_classes"}


def logits_path(folder: str | Path, image_id: str, compact: bool = False) -> Path:
    """Where the logits of `image_id` go in `folder`: `<id>.npy` (full) or `<id>.npz` (compact)."""
    suffix = COMPACT_LOGITS_SUFFIX if compact else FULL_LOGITS_SUFFIX
    return Path(folder) / f"{image_id}{suffix}"


def logits_file(folder: str | Path, image_id: str) -> Path:
    """The logits file of `image_id` in `folder`, full (.npy) or compact (.npz); the .npy name
    when there is neither (so "not found" names it). Both at once is a DataError: the infer
    stage never leaves two, so one of them is stale."""
    full, compact = logits_path(folder, image_id), logits_path(folder, image_id, compact=True)
    if compact.is_file():
        if full.is_file():
            raise DataError(full, f"both full and compact logits of {image_id} ({compact.name}); "
                                  f"delete the stale one")
        return compact
    return full


def has_logits(folder: str | Path) -> bool:
    """Whether `folder` holds at least one logits file of either form."""
    folder = Path(folder)
    return folder.is_dir() and any(p.suffix in LOGITS_SUFFIXES for p in folder.iterdir())


def _as_stored(logits: np.ndarray, dtype: str) -> np.ndarray:
    """The (C, h, w) array exactly as a full file of `dtype` holds it."""
    dtype = np.dtype(dtype)
    if dtype == np.float16:  # saturate instead of overflowing to inf (argmax and softmax stay sane)
        logits = np.clip(logits, -65504.0, 65504.0)
    arr = np.ascontiguousarray(logits, dtype=dtype)
    if arr.ndim != 3:
        raise ValueError(f"logits must be (C, h, w), got shape {arr.shape}")
    return arr


def write_logits(path: str | Path, logits: np.ndarray, dtype: str = "float16") -> None:
    """Store (C, h, w) logits as .npy; float16 by default (half the bytes, argmax-safe)."""
    arr = _as_stored(logits, dtype)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)


def _log_sum_exp(values: np.ndarray, axis: int = 0) -> np.ndarray:
    """log Σ exp over `axis` in float64 (−inf for an empty axis)."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape[axis] == 0:
        return np.full(np.delete(values.shape, axis), -np.inf)
    top = values.max(axis=axis, keepdims=True)
    return (top + np.log(np.exp(values - top).sum(axis=axis, keepdims=True))).squeeze(axis)


def top_classes(logits: np.ndarray, top_k: int = COMPACT_TOP_K) -> np.ndarray:
    """(min(k, C), h, w) ids of the k highest logits at each cell, highest first (the lower id
    first on a tie, so equal logits give equal files)."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    return np.argsort(-np.asarray(logits), axis=0, kind="stable")[:top_k]


def write_compact_logits(path: str | Path, logits: np.ndarray, top_k: int = COMPACT_TOP_K,
                         dtype: str = "float16") -> None:
    """Store (C, h, w) logits in the compact form (.npz, uncompressed, members below).

    `classes` (k, h, w) uint8: each cell's `top_classes`; `logits` (k, h, w) their values exactly
    as a full file of `dtype` holds them; `rest` (h, w) the log-sum-exp of the other C − k stored
    values of the cell (−inf when k = C); `num_classes` C. `read_logits` gives each of the others
    rest − log(C − k): their total probability, hence the softmax of the k kept classes, is the
    full file's up to the rounding of `rest` to `dtype`, and none of them beats a kept class.
    """
    stored = _as_stored(logits, dtype)
    num_classes = stored.shape[0]
    if num_classes > 256:
        raise ValueError(f"compact logits hold at most 256 classes (uint8 ids), got {num_classes}")
    order = np.argsort(-stored, axis=0, kind="stable")
    top_k = min(top_k, num_classes)
    kept = np.take_along_axis(stored, order[:top_k], axis=0)
    # saturate like the logits (−inf, nothing dropped, stays)
    rest = np.minimum(_log_sum_exp(np.take_along_axis(stored, order[top_k:], axis=0)),
                      np.finfo(stored.dtype).max)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, classes=order[:top_k].astype(np.uint8), logits=kept,
                     rest=rest.astype(stored.dtype), num_classes=np.int16(num_classes))


def store_logits(folder: str | Path, image_id: str, logits: np.ndarray, dtype: str = "float16",
                 compact_top_k: int | None = None) -> Path:
    """Write the logits of `image_id` to `folder` in one form: full `<id>.npy` when
    `compact_top_k` is None, else compact `<id>.npz` of the top k; returns the path. The other
    form's file goes first, so an interrupted write leaves no file rather than a stale one."""
    compact = compact_top_k is not None
    path, other = logits_path(folder, image_id, compact), logits_path(folder, image_id, not compact)
    with as_data_error(other):
        other.unlink(missing_ok=True)
    if compact:
        write_compact_logits(path, logits, compact_top_k, dtype)
    else:
        write_logits(path, logits, dtype)
    return path


def _read_compact(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(classes, kept logits, rest, num_classes) of a compact file, checked for consistency."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a bare .npy array under the .npz name
            raise DataError(path, "not a compact logits file (a .npy array, not an .npz archive)")
        with loaded as data:
            members = set(data.files)
            if members != _COMPACT_MEMBERS:
                raise DataError(path, f"not a compact logits file (members {sorted(members)}, "
                                      f"expected {sorted(_COMPACT_MEMBERS)})")
            classes, kept, rest = data["classes"], data["logits"], data["rest"]
            num_classes = data["num_classes"]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(path, f"cannot read compact logits ({exc})") from None
    if num_classes.shape != () or not np.issubdtype(num_classes.dtype, np.integer):
        raise DataError(path, f"compact logits: num_classes is {num_classes!r}, expected one integer")
    num_classes = int(num_classes)
    if (classes.ndim != 3 or classes.dtype != np.uint8 or not 1 <= classes.shape[0] <= num_classes
            or kept.shape != classes.shape or rest.shape != classes.shape[1:]):
        raise DataError(path, f"compact logits: classes {classes.shape} {classes.dtype}, logits "
                              f"{kept.shape} and rest {rest.shape} are not k uint8 ids and k "
                              f"values of one (h, w) grid, 1 <= k <= {num_classes}")
    ids = np.sort(classes, axis=0)
    if ids.size and (ids[-1].max() >= num_classes or np.any(np.diff(ids, axis=0) == 0)):
        raise DataError(path, f"compact logits: class ids out of 0..{num_classes - 1} or repeated "
                              f"within a cell")
    return classes, kept, rest, num_classes


def read_logits(path: str | Path, num_classes: int | None = None) -> np.ndarray:
    """(C, h, w) logits as float32, from either form (the suffix says which).

    For a compact file the classes a cell dropped are each rest − log(#dropped) there: they
    share the dropped probability mass evenly, each below every kept class of the cell, so the
    kept classes' softmax and every arg-max are the full file's."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "logits file not found")
    if path.suffix == COMPACT_LOGITS_SUFFIX:
        classes, kept, rest, total = _read_compact(path)
        arr = np.empty((total, *kept.shape[1:]), dtype=np.float32)
        if classes.shape[0] < total:
            arr[:] = rest.astype(np.float32) - np.float32(np.log(total - classes.shape[0]))
        np.put_along_axis(arr, classes.astype(np.intp), kept.astype(np.float32), axis=0)
    else:
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(path, f"cannot read logits ({exc})") from None
        if not isinstance(arr, np.ndarray):  # a zip archive under the .npy name
            arr.close()
            raise DataError(path, "cannot read logits (an .npz archive, not a .npy array)")
    if arr.ndim != 3 or (num_classes is not None and arr.shape[0] != num_classes):
        expected = f"({num_classes}, h, w)" if num_classes else "(C, h, w)"
        raise DataError(path, f"logits have shape {arr.shape}; expected {expected}")
    return arr.astype(np.float32, copy=False)


def logits_shape(path: str | Path) -> tuple[int, int, int]:
    """(C, h, w) of a complete logits file of either form, reading no more than needed (the
    header of a full file); a missing, truncated or malformed file is a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "logits file not found")
    if path.suffix == COMPACT_LOGITS_SUFFIX:
        _, kept, _, total = _read_compact(path)
        return total, *kept.shape[1:]
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(path, f"cannot read logits ({exc})") from None
    if not isinstance(arr, np.ndarray):  # a zip archive under the .npy name
        arr.close()
        raise DataError(path, "cannot read logits (an .npz archive, not a .npy array)")
    if arr.ndim != 3:
        raise DataError(path, f"logits have shape {arr.shape}; expected (C, h, w)")
    return tuple(arr.shape)
