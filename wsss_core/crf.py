"""DenseCRF post-processing: logits → upsampled softmax → fully connected CRF → label PNGs.

`dense_crf` is one pydensecrf call with the DeepLab/CDL or DuPL kernel. `refine_split` runs it
over a split with joblib workers or on a dask.distributed cluster (`wsss_core.parallel`); every
worker writes its image's PNG and returns confusion matrices (with CRF and without, from the same
upsampled logits), never the prediction, so memory does not grow with the number of images.
It is resumable: a prediction PNG left by an interrupted run is read back and scored instead of
being recomputed, as long as its journal entry (kernel, image flag, logits and image files, the
PNG itself) still matches. `export_voc_test` writes the VOC evaluation-server layout and its tarball.
"""
from __future__ import annotations

import ctypes
import dataclasses
import functools
import gzip
import math
import tarfile
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np

from .config import VOC_NUM_CLASSES, CrfParams
from .data.datasets import Split
from .errors import DataError, WsssError
from .evaluate import softmax, upsample_bilinear
from .io import (
    IGNORE_INDEX,
    atomic_dir,
    atomic_path,
    colorize,
    image_size,
    read_image,
    read_json,
    read_label,
    write_image,
    write_json,
    write_label,
)
from .logits_io import has_logits, logits_file, read_logits
from .metrics import ConfusionMatrix
from .parallel import Workers, imap_unordered

# Caffe/DeepLab mean colour that CDL subtracts (B 104.008, G 116.669, R 122.675), in RGB order.
CAFFE_MEAN_RGB = np.array([122.675, 116.669, 104.008], dtype=np.float64)


@dataclass(frozen=True)
class CrfSettings:
    """The DenseCRF kernel: mean-field iterations, Gaussian (pos_*) and bilateral (bi_*) terms."""

    iter_max: int
    pos_w: float
    pos_xy_std: float
    bi_w: float
    bi_xy_std: float
    bi_rgb_std: float


CRF_PRESETS = {
    # deeplab-pytorch / CDL configs (identical in all three CDL configs)
    "deeplab": CrfSettings(iter_max=10, pos_w=3, pos_xy_std=1, bi_w=4, bi_xy_std=67, bi_rgb_std=3),
    # DuPL utils/dcrf.py
    "dupl": CrfSettings(iter_max=10, pos_w=1, pos_xy_std=1, bi_w=4, bi_xy_std=121, bi_rgb_std=5),
}


def crf_settings(params: CrfParams, auto_preset: str) -> CrfSettings:
    """The kernel of `params`: its preset (`auto`: `auto_preset`, the method's own, from its
    registry record) with non-null overrides."""
    preset = auto_preset if params.preset == "auto" else params.preset
    overrides = {f.name: getattr(params, f.name) for f in dataclasses.fields(CrfSettings)
                 if getattr(params, f.name) is not None}
    return dataclasses.replace(CRF_PRESETS[preset], **overrides)


# --------------------------------------------------------------------------- per image
def wrapped_mean_subtracted(image: np.ndarray) -> np.ndarray:
    """The image CDL/deeplab-pytorch hand to the bilateral term (fidelity flag).

    Their test image is mean-subtracted float and is cast with `astype(uint8)`, which on x86
    truncates toward zero and wraps modulo 256 (-3.7 → 253). Done explicitly here so it does
    not depend on NumPy's undefined float→uint8 overflow. CDL's image is BGR; the bilateral
    kernel uses one std for all three channels, so the channel order does not matter.
    """
    centred = image.astype(np.float64) - CAFFE_MEAN_RGB
    return np.mod(np.trunc(centred).astype(np.int64), 256).astype(np.uint8)


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4   # glibc mallopt parameters (malloc.h)


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc's malloc serve large blocks from its heap and keep what is freed (once per
    process; False where the C library has no `mallopt`).

    A mean-field iteration of pydensecrf allocates and frees several C×H×W float buffers (≈ 100 MB
    each at COCO size). By default glibc maps every block over 32 MB afresh and unmaps it on free,
    so the kernel faults in and zeroes ≈ 2 M pages per COCO image again and again; kept on the
    heap they are reused. The process then holds its peak heap between images, which is the peak
    it already reached. Numerics are unchanged (`benchmarks/crf_allocator.py` checks the bytes).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def dense_crf(image: np.ndarray, prob: np.ndarray, params) -> np.ndarray:
    """Marginals Q (C×H×W float32) of a fully connected CRF (pydensecrf `DenseCRF2D`).

    `image`: H×W×3 uint8, `prob`: C×H×W softmax probabilities; `params` has the `CrfSettings`
    fields. Unary = −log(max(prob, 1e-5)), Gaussian pairwise term (pos_xy_std, Potts pos_w),
    bilateral term (bi_xy_std, bi_rgb_std, Potts bi_w), `iter_max` mean-field iterations.
    """
    try:  # compiled optional dependency: only the CRF needs it
        from pydensecrf import densecrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError:
        raise WsssError("pydensecrf is not installed (pip install pydensecrf2==1.1)") from None
    num_classes, height, width = prob.shape
    if image.shape != (height, width, 3) or image.dtype != np.uint8:
        raise ValueError(f"image must be {height}x{width}x3 uint8 to match prob {prob.shape}, "
                         f"got {image.shape} {image.dtype}")
    keep_freed_memory()
    crf = densecrf.DenseCRF2D(width, height, num_classes)  # width first
    unary = unary_from_softmax(np.asarray(prob, dtype=np.float32))
    crf.setUnaryEnergy(np.ascontiguousarray(unary))
    crf.addPairwiseGaussian(sxy=params.pos_xy_std, compat=params.pos_w)
    # C-contiguous and writable: the Cython signature rejects read-only (e.g. PIL-backed) arrays
    rgbim = np.require(image, requirements=["C", "W"])
    crf.addPairwiseBilateral(sxy=params.bi_xy_std, srgb=params.bi_rgb_std, rgbim=rgbim,
                             compat=params.bi_w)
    marginals = crf.inference(params.iter_max)
    return np.asarray(marginals, dtype=np.float32).reshape(num_classes, height, width)


def upsampled_softmax(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """C×h×w logits → C×H×W probabilities: bilinear upsampling (align_corners=False, as the
    original test code), then softmax over classes (so CDL's /2 temperature matters)."""
    return softmax(upsample_bilinear(logits, size), axis=0)


def check_logits_grid(logits_hw: tuple[int, int], image_hw: tuple[int, int], path) -> None:
    """Raise `DataError` unless the logits can be the image seen at some output stride.

    Rule: the grid is never finer than the image, and there is one stride s (any real ≥ 1, so
    stride 8 of DeepLab, 16 of ViT and full resolution all pass) with |H/s − h| ≤ 1 and
    |W/s − w| ≤ 1, i.e. each side equals the image side over s up to one cell of rounding.
    Transposed logits or logits of an image of another shape fail.
    """
    (h, w), (height, width) = logits_hw, image_hw
    if h > height or w > width:
        raise DataError(path, f"logits grid {h}x{w} (h x w) is finer than its image "
                              f"{height}x{width}")
    low = max(height / (h + 1), width / (w + 1))
    high = min(height / (h - 1) if h > 1 else math.inf, width / (w - 1) if w > 1 else math.inf)
    if low > high:
        raise DataError(path, f"logits grid {h}x{w} (h x w) does not fit its image "
                              f"{height}x{width}: no common output stride (transposed, or "
                              f"logits of another image?)")


@dataclass(frozen=True)
class _ImageJob:
    image_id: str
    logits_path: Path
    image_path: Path
    gt_path: Path | None
    out_path: Path
    num_classes: int
    settings: CrfSettings | None      # None: write the plain argmax (no CRF)
    wrapped_mean: bool
    reuse: bool                       # the PNG on disk is this run's own output: keep it


@dataclass(frozen=True)
class _ImageResult:
    image_id: str
    crf: ConfusionMatrix | None       # None without GT
    no_crf: ConfusionMatrix | None
    reused: bool
    output_key: list                  # (size, mtime) of the PNG, for the journal


def _file_key(path: Path) -> list:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _read_back(job: _ImageJob, size) -> np.ndarray | None:
    try:
        return read_label(job.out_path, job.num_classes, expected_hw=size)
    except DataError:  # damaged since it was written: recompute it
        return None


def _refine_image(job: _ImageJob) -> _ImageResult:
    """Score one image; its prediction goes to its PNG (or is read back from it)."""
    size = image_size(job.image_path)
    logits = read_logits(job.logits_path, job.num_classes)
    check_logits_grid(logits.shape[1:], size, job.logits_path)
    gt = None if job.gt_path is None else read_label(job.gt_path, job.num_classes, expected_hw=size)
    pred = _read_back(job, size) if job.reuse else None
    reused = pred is not None
    if reused and gt is None:
        return _ImageResult(job.image_id, None, None, True, _file_key(job.out_path))
    prob = upsampled_softmax(logits, size)
    plain = prob.argmax(axis=0).astype(np.uint8)
    if pred is None:
        if job.settings is None:
            pred = plain
        else:
            image = read_image(job.image_path)
            if job.wrapped_mean:
                image = wrapped_mean_subtracted(image)
            pred = dense_crf(image, prob, job.settings).argmax(axis=0).astype(np.uint8)
        write_label(job.out_path, pred)
    matrices = (None, None) if gt is None else (
        ConfusionMatrix(job.num_classes).update(pred, gt),
        ConfusionMatrix(job.num_classes).update(plain, gt))
    return _ImageResult(job.image_id, *matrices, reused, _file_key(job.out_path))


# --------------------------------------------------------------------------- a whole split
@dataclass(frozen=True)
class RefineResult:
    """Scores of a refinement run (`crf`/`no_crf` are None for a split without GT)."""

    crf: ConfusionMatrix | None
    no_crf: ConfusionMatrix | None
    images: int
    reused: int  # predictions kept from an earlier, interrupted run


class _Journal:
    """Which PNGs in `out_dir` this code wrote, from which inputs, with which settings.

    Kept beside the folder (`.<name>.refine.json`) so the folder holds nothing but `<id>.png`.
    A PNG is reused only if the journal has it under the same settings, with the same logits and
    image (size, mtime) and the PNG's own (size, mtime) unchanged — so changed CRF parameters,
    new logits, a truncated file or a PNG put there by `dvc checkout` or by hand are recomputed.
    Written atomically every few seconds and at the end (also when interrupted), so a killed run
    loses at most those seconds of work.
    """

    FLUSH_SECONDS = 5.0

    def __init__(self, out_dir: Path, run: dict):
        self.path = out_dir.with_name(f".{out_dir.name}.refine.json")
        self.run = run
        old = None
        if self.path.is_file():
            try:
                old = read_json(self.path)
            except DataError:
                pass
        same = isinstance(old, dict) and old.get("run") == run
        self.done: dict = dict(old.get("done", {})) if same else {}
        self._flushed = time.monotonic()

    def reusable(self, out_path: Path, image_id: str, inputs: list) -> bool:
        entry = self.done.get(image_id)
        return (entry is not None and entry["inputs"] == inputs and out_path.is_file()
                and entry["output"] == _file_key(out_path))

    def record(self, image_id: str, inputs: list, output: list) -> None:
        self.done[image_id] = {"inputs": inputs, "output": output}
        if time.monotonic() - self._flushed > self.FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        write_json(self.path, {"run": self.run, "done": self.done})
        self._flushed = time.monotonic()


def refine_split(split: Split, logits_dir: str | Path, out_dir: str | Path, num_classes: int,
                 settings: CrfSettings | None, *, ids: list[str] | None = None,
                 wrapped_mean: bool = False, n_jobs: int = -1, resume: bool = True,
                 desc: str = "crf", workers: Workers | None = None) -> RefineResult:
    """Refine `<logits_dir>/<id>.npy` (or compact `.npz`) of `ids` (default: the split's list) into
    `<out_dir>/<id>.png` (palette PNG of class ids) and score them if the split has GT.

    `settings` None writes the plain argmax of the upsampled logits (no CRF). Inputs are
    checked before any work: an empty logits folder, missing logits, images or GT are one
    `DataError`. `resume` reuses the predictions an interrupted run of the same settings on
    the same inputs already wrote (see `_Journal`). `workers` (default: joblib with `n_jobs`)
    may be a dask cluster (`wsss_core.parallel`); its workers must see these paths.
    """
    logits_dir, out_dir = Path(logits_dir), Path(out_dir)
    ids = list(split.ids if ids is None else ids)
    if num_classes > IGNORE_INDEX:
        raise ValueError("uint8 label PNGs hold at most 255 classes")
    if not has_logits(logits_dir):
        raise DataError(logits_dir, "no logits (<id>.npy or .npz) found; run the infer stage first")
    logits_paths = {i: logits_file(logits_dir, i) for i in ids}
    _require_files(logits_dir, list(logits_paths.values()), "logits")
    _require_files(split.image_dir, [split.image_path(i) for i in ids], "images")
    has_gt = split.gt_dir is not None
    if has_gt:
        _require_files(split.gt_dir, [split.gt_path(i) for i in ids], "ground-truth labels")

    inputs = {i: _file_key(logits_paths[i]) + _file_key(split.image_path(i)) for i in ids}
    journal = _Journal(out_dir, {
        "crf": None if settings is None else dataclasses.asdict(settings),
        "wrapped_mean_image": bool(wrapped_mean and settings is not None),
        "num_classes": num_classes, "logits_dir": str(logits_dir.resolve())})
    out_dir.mkdir(parents=True, exist_ok=True)

    def job(image_id: str) -> _ImageJob:
        # absolute paths: workers (joblib's reused processes, dask's) run in other directories
        out_path = out_dir / f"{image_id}.png"
        return _ImageJob(
            image_id=image_id, logits_path=logits_paths[image_id].absolute(),
            image_path=split.image_path(image_id).absolute(),
            gt_path=split.gt_path(image_id).absolute() if has_gt else None,
            out_path=out_path.absolute(),
            num_classes=num_classes, settings=settings, wrapped_mean=wrapped_mean,
            reuse=resume and journal.reusable(out_path, image_id, inputs[image_id]))

    crf_total, plain_total = ConfusionMatrix(num_classes), ConfusionMatrix(num_classes)
    reused = 0
    workers = Workers(n_jobs=n_jobs) if workers is None else workers
    try:
        with imap_unordered(_refine_image, [job(i) for i in ids], workers, desc) as results:
            for result in results:
                journal.record(result.image_id, inputs[result.image_id], result.output_key)
                if has_gt:
                    crf_total, plain_total = crf_total + result.crf, plain_total + result.no_crf
                reused += result.reused
    finally:
        journal.flush()
    return RefineResult(crf=crf_total if has_gt else None, no_crf=plain_total if has_gt else None,
                        images=len(ids), reused=reused)


def _require_files(folder: Path, paths: list[Path], what: str) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(p.name for p in missing[:3]) + (", …" if len(missing) > 3 else "")
        raise DataError(folder, f"{len(missing)} of {len(paths)} {what} missing ({shown})")


# --------------------------------------------------------------------------- overlays
def write_overlays(split: Split, logits_dir: str | Path, pred_dir: str | Path, ids: list[str],
                   out_dir: str | Path, num_classes: int, gap: int = 4) -> None:
    """`<out_dir>/<id>.png` = image | GT | prediction without CRF | with CRF, for `dvc plots`.

    The folder is replaced as a whole. The CRF prediction is read from `pred_dir` (written by
    `refine_split`); the no-CRF one is recomputed, which for a handful of images is cheap.
    """
    logits_dir, pred_dir = Path(logits_dir), Path(pred_dir)
    with atomic_dir(out_dir) as tmp:
        for image_id in ids:
            image = read_image(split.image_path(image_id))
            size = image.shape[:2]
            logits_path = logits_file(logits_dir, image_id)
            logits = read_logits(logits_path, num_classes)
            check_logits_grid(logits.shape[1:], size, logits_path)
            plain = upsampled_softmax(logits, size).argmax(axis=0)
            refined = read_label(pred_dir / f"{image_id}.png", num_classes, expected_hw=size)
            panels = [image]
            if split.gt_dir is not None:
                panels.append(colorize(read_label(split.gt_path(image_id), num_classes, size)))
            panels += [colorize(plain), colorize(refined)]
            spacer = np.full((size[0], gap, 3), 255, np.uint8)
            row = [p for panel in panels for p in (panel, spacer)][:-1]
            write_image(tmp / f"{image_id}.png", np.concatenate(row, axis=1))


# --------------------------------------------------------------------------- VOC test server
VOC_SERVER_DIR = "results/VOC2012/Segmentation/comp6_test_cls"


def export_voc_test(split: Split, logits_dir: str | Path, out_root: str | Path,
                    archive: str | Path, settings: CrfSettings | None, *,
                    ids: list[str] | None = None, wrapped_mean: bool = False,
                    n_jobs: int = -1, num_classes: int = VOC_NUM_CLASSES,
                    workers: Workers | None = None) -> tuple[Path, RefineResult]:
    """Palette PNGs in `<out_root>/results/VOC2012/Segmentation/comp6_test_cls/<id>.png` and a
    gzipped tar of them with members `results/VOC2012/...` (the evaluation server's layout).

    No GT is read. The archive lists exactly `ids` (sorted) and is deterministic (zero mtimes
    and owners), so it hashes the same for the same predictions. Returns the PNG folder.
    """
    ids = list(split.ids if ids is None else ids)
    png_dir = Path(out_root) / VOC_SERVER_DIR
    no_gt = dataclasses.replace(split, gt_dir=None)  # test has no GT; never score it
    result = refine_split(no_gt, logits_dir, png_dir, num_classes, settings, ids=ids,
                          wrapped_mean=wrapped_mean, n_jobs=n_jobs, desc="export",
                          workers=workers)
    _write_server_tarball(png_dir, sorted(ids), Path(archive))
    return png_dir, result


def _write_server_tarball(png_dir: Path, ids: list[str], archive: Path) -> None:
    def info(name: str, size: int = 0, is_dir: bool = False) -> tarfile.TarInfo:
        member = tarfile.TarInfo(name)
        member.size, member.mtime, member.uid, member.gid = size, 0, 0, 0
        member.uname = member.gname = ""
        member.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
        member.mode = 0o755 if is_dir else 0o644
        return member

    parts = VOC_SERVER_DIR.split("/")
    with atomic_path(archive) as tmp, open(tmp, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as zipped, \
            tarfile.open(fileobj=zipped, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for depth in range(1, len(parts) + 1):
            tar.addfile(info("/".join(parts[:depth]), is_dir=True))
        for image_id in ids:
            data = (png_dir / f"{image_id}.png").read_bytes()
            tar.addfile(info(f"{VOC_SERVER_DIR}/{image_id}.png", len(data)), BytesIO(data))
