"""The one place that reads and writes images, label PNGs, logits, JSON and id lists.

Every writer is atomic: data goes to a hidden temporary file in the destination folder and is
renamed over the destination only when complete, so an interrupted stage never leaves a
half-written file behind.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import OS_PROBLEMS, DataError, WsssError, os_problem

IGNORE_INDEX = 255


def voc_palette(num_entries: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (bit-interleaved class index), shape (num_entries, 3) uint8."""
    palette = np.zeros((num_entries, 3), dtype=np.uint8)
    for index in range(num_entries):
        value, r, g, b = index, 0, 0, 0
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette[index] = (r, g, b)
    return palette


_VOC_PALETTE_FLAT = voc_palette().reshape(-1).tolist()


# --------------------------------------------------------------------------- atomic writes
def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create private 0600/0700 entries; outputs get the modes a plain open() or
# mkdir() would give them under the umask (0644/0755 under umask 022), read once at import
_UMASK = _current_umask()
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK


@contextlib.contextmanager
def _as_data_error(dest: Path, inside: Path | None = None) -> Iterator[None]:
    """A full disk or a missing permission while writing `dest` becomes a one-line DataError
    naming it (or, for a file under the temporary folder `inside`, its place under `dest`).

    Some writers (torch.save) report a full disk as a RuntimeError of their own: any failure
    while the destination's file system has no space left is taken for one."""
    try:
        yield
    except WsssError:
        raise
    except Exception as exc:
        problem = os_problem(exc)
        if problem is None and _no_space_left(dest.parent):
            problem = OS_PROBLEMS[errno.ENOSPC]
        if problem is None:
            raise
        where = dest
        name = getattr(exc, "filename", None)
        if inside is not None and name and Path(name).is_relative_to(inside):
            where = dest / Path(name).relative_to(inside)
        raise DataError(where, problem) from None


def _no_space_left(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free == 0
    except OSError:
        return False


@contextlib.contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `dest`; rename it onto `dest` if the block succeeds."""
    dest = Path(dest)
    with _as_data_error(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        os.close(fd)
    tmp = Path(tmp_name)
    try:
        with _as_data_error(dest):
            yield tmp
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(dest: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder; it replaces `dest` as a whole if the block succeeds.

    On failure the temporary folder is removed and an existing `dest` is left untouched.
    """
    dest = Path(dest)
    with _as_data_error(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        with _as_data_error(dest, inside=tmp):
            os.chmod(tmp, DIR_MODE)
            yield tmp
            if dest.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
                os.replace(dest, old / "x")
                os.replace(tmp, dest)
                shutil.rmtree(old)
            else:
                os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj) -> None:
    """Strict JSON (NaN/inf are an error: `dvc metrics` and other tools reject them)."""
    write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def save_torch(obj, path: str | Path) -> None:
    """`torch.save` atomically and byte-stably: equal objects give byte-identical files.

    torch names the records inside its zip archive after the file it writes to, so saving to
    a temporary name would make every file different (and DVC see a changed model); written
    through a file object the archive gets torch's fixed name "archive"."""
    import torch  # here, not at the top: most stages never write torch files

    with atomic_path(path) as tmp, open(tmp, "wb") as stream:
        torch.save(obj, stream)


def read_json(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(path, f"malformed JSON ({exc})") from None


# --------------------------------------------------------------------------- id lists
def read_id_list(path: str | Path) -> list[str]:
    """Image ids from a split list.

    Accepts one id per line (VOC `ImageSets/Segmentation`, DuPL/ToCo) and the DeepLab/CDL form
    `/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png`, whose id is the first file's stem.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "list file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(path, "list is not a UTF-8 text file") from None
    first_line: dict[str, int] = {}  # id -> line number where it first appears
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        first = line.split()[0]
        image_id = Path(first).stem if ("/" in first or "." in first) else first
        if image_id in first_line:
            raise DataError(path, f"line {number}: duplicate id {image_id} "
                                  f"(first on line {first_line[image_id]})")
        first_line[image_id] = number
    if not first_line:
        raise DataError(path, "list is empty")
    return list(first_line)


def write_id_list(path: str | Path, ids) -> None:
    write_text(path, "".join(f"{i}\n" for i in ids))


# --------------------------------------------------------------------------- images
def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        img = Image.open(path)
        img.load()  # decode now: truncated or corrupt files fail here, not later
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(path, f"cannot decode image ({exc})") from None
    return img


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        with Image.open(path) as img:
            width, height = img.size
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(path, f"cannot read image header ({exc})") from None
    return height, width


def read_image(path: str | Path) -> np.ndarray:
    """An image as H×W×3 uint8 RGB."""
    img = _open(Path(path))
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def write_image(path: str | Path, image: np.ndarray, quality: int = 95) -> None:
    """Write H×W×3 uint8 RGB; the format follows the suffix (.jpg or .png)."""
    path = Path(path)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    with atomic_path(path) as tmp:
        kwargs = {"quality": quality} if fmt == "JPEG" else {}
        Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB").save(tmp, fmt, **kwargs)


# --------------------------------------------------------------------------- label maps
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_label(
    path: str | Path,
    num_classes: int | None = None,
    expected_hw: tuple[int, int] | None = None,
) -> np.ndarray:
    """A label PNG file as an H×W uint8 array of class indices (255 = ignore); see `decode_label`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(path, f"cannot read file ({exc.strerror})") from None
    return decode_label(data, path, num_classes, expected_hw)


def decode_label(
    data: bytes,
    where: str | Path,
    num_classes: int | None = None,
    expected_hw: tuple[int, int] | None = None,
) -> np.ndarray:
    """Label PNG bytes as an H×W uint8 array of class indices (255 = ignore).

    The one validation of label files: GT, predictions and ingested pseudo labels. The data must
    be a single-channel PNG (`L` or palette `P`, whose indices are the classes, as in VOC). With
    `num_classes`, every value must be < num_classes or 255; with `expected_hw`, the size must
    match (the image's size). `where` names the file in errors: a path, or `<archive>:<member>`.
    """
    try:
        img = Image.open(BytesIO(data))
        if img.format == "PNG":
            img.load()  # decode now: truncated or corrupt files fail here, not later
    except UnidentifiedImageError:
        # PIL's own message names the in-memory buffer, not the file
        problem = ("cannot decode PNG (truncated or corrupt header)" if data.startswith(_PNG_SIGNATURE)
                   else "not a readable PNG image")
        raise DataError(where, problem) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(where, f"cannot decode PNG ({exc})") from None
    if img.format != "PNG":
        raise DataError(where, f"is {img.format}, expected PNG")
    if img.mode not in ("L", "P"):
        raise DataError(
            where, f"label has mode {img.mode}; expected a single-channel L or P PNG of class ids"
        )
    label = np.asarray(img, dtype=np.uint8)
    if expected_hw is not None and tuple(label.shape) != tuple(expected_hw):
        raise DataError(
            where, f"label size {label.shape[1]}x{label.shape[0]} (WxH) differs from the image's "
            f"{expected_hw[1]}x{expected_hw[0]}"
        )
    if num_classes is not None:
        bad = (label >= num_classes) & (label != IGNORE_INDEX)
        if bad.any():
            values = np.unique(label[bad])[:5].tolist()
            raise DataError(
                where, f"label values {values} out of range (allowed 0..{num_classes - 1} or 255)"
            )
    return label


def label_to_png_image(label: np.ndarray) -> Image.Image:
    if label.ndim != 2:
        raise ValueError(f"label must be 2-D, got shape {label.shape}")
    img = Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8), "P")
    img.putpalette(_VOC_PALETTE_FLAT)
    return img


def write_label(path: str | Path, label: np.ndarray) -> None:
    """Write class ids as a VOC palette PNG (index = class, so it also shows in colour)."""
    with atomic_path(path) as tmp:
        label_to_png_image(label).save(tmp, "PNG")


def colorize(label: np.ndarray) -> np.ndarray:
    """Class ids → H×W×3 RGB with the VOC palette (255 = VOC's cream border colour)."""
    return voc_palette()[label]


# --------------------------------------------------------------------------- logits
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
    with _as_data_error(other):
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
