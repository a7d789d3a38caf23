"""The one place that reads and writes images, label PNGs, JSON and id lists (logits files:
`wsss_core.logits_io`, on top of this module's atomic writes).

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
def as_data_error(dest: Path, inside: Path | None = None) -> Iterator[None]:
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
    with as_data_error(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        os.close(fd)
    tmp = Path(tmp_name)
    try:
        with as_data_error(dest):
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
    with as_data_error(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        with as_data_error(dest, inside=tmp):
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
def _list_ids(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number, id) of each non-blank line of a split list, read line by line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "list file not found")
    try:
        with open(path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                line = line.strip()
                if line:
                    first = line.split()[0]
                    yield number, (Path(first).stem if ("/" in first or "." in first) else first)
    except UnicodeDecodeError:
        raise DataError(path, "list is not a UTF-8 text file") from None


def read_id_list(path: str | Path) -> list[str]:
    """Image ids from a split list.

    Accepts one id per line (VOC `ImageSets/Segmentation`, DuPL/ToCo) and the DeepLab/CDL form
    `/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png`, whose id is the first file's stem.
    """
    first_line: dict[str, int] = {}  # id -> line number where it first appears
    for number, image_id in _list_ids(path):
        if image_id in first_line:
            raise DataError(path, f"line {number}: duplicate id {image_id} "
                                  f"(first on line {first_line[image_id]})")
        first_line[image_id] = number
    if not first_line:
        raise DataError(path, "list is empty")
    return list(first_line)


def iter_id_list(path: str | Path) -> Iterator[str]:
    """The ids of a split list one by one, in constant memory, for a pass over a list too long
    to hold twice (COCO's 82,081); unlike `read_id_list` it does not look for repeated ids."""
    empty = True
    for _, image_id in _list_ids(path):
        empty = False
        yield image_id
    if empty:
        raise DataError(path, "list is empty")


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
