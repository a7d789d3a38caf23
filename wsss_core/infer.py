"""Multi-scale inference to logits files, sharded over torchrun ranks, resumable.

Each rank takes every world_size-th image, runs the method's predictors (their own multi-scale
logic) and writes one file per image and predictor, atomically: the `(C, h, w)` array
(`<id>.npy`, float16 by default) or its compact form (`<id>.npz`, each cell's top classes).
A folder remembers which model wrote it (`MODEL_STAMP`); files of another model are discarded.
It also remembers the sha256 of the image each file was computed from (`IMAGE_DIGESTS`: one JSON
line `[id, digest]` per file, each rank appending to its own `.rank<k>` shard, merged by rank 0);
a valid file of the same model and of an unchanged image is kept, so an interrupted run continues
where it stopped, and an image that changed (or became unreadable) is read and inferred again.

`score_split` is the same per-image inference without files (validation during training): the
logits, rounded to the stored dtype, are scored like the infer stage's files (bilinear upsampling
of `evaluate`, `metrics.ConfusionMatrix`), sharded over the ranks and summed on rank 0.
`precision` runs the predictors' forward under autocast (wsss_core.precision); the logits are
float32 before they are stored or scored.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .cli import progress
from .data.datasets import Split
from .distributed import Context, barrier, gather_object
from .errors import DataError, os_problem
from .evaluate import upsample_bilinear
from .io import read_image, read_label, write_text
from .logits_io import logits_path, logits_shape, store_logits
from .metrics import ConfusionMatrix
from .models import unwrap
from .precision import autocast

MODEL_STAMP = ".model_sha256"
IMAGE_DIGESTS = ".image_sha256"  # <folder>/.image_sha256.jsonl, .image_sha256.rank<k>.jsonl


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def valid_logits(path: Path, num_classes: int) -> bool:
    """A complete logits file (full .npy or compact .npz) of the right class count (of a full
    file only the header is read)."""
    try:
        return logits_shape(path)[0] == num_classes
    except DataError:
        return False


def _read_digest_lines(path: Path) -> dict[str, str]:
    digests = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                image_id, digest = json.loads(line)
            except (ValueError, TypeError):
                continue  # a line cut short by an interruption: that file is inferred again
            digests[image_id] = digest
    return digests


def _digest_shards(out_dir: Path) -> list[Path]:
    return sorted(out_dir.glob(f"{IMAGE_DIGESTS}.rank*.jsonl"))


def image_digests(out_dir: Path) -> dict[str, str]:
    """image id → sha256 of the image the folder's logits file was computed from."""
    digests = _read_digest_lines(out_dir / f"{IMAGE_DIGESTS}.jsonl")
    for shard in _digest_shards(out_dir):  # newer than the merged file; one rank per id
        digests.update(_read_digest_lines(shard))
    return digests


def _merge_image_digests(out_dir: Path) -> None:
    """Fold the ranks' shards into the one file (rank 0, while the others wait)."""
    digests = image_digests(out_dir)
    if digests:
        write_text(out_dir / f"{IMAGE_DIGESTS}.jsonl",
                   "".join(json.dumps([k, v]) + "\n" for k, v in sorted(digests.items())))
    for shard in _digest_shards(out_dir):
        shard.unlink()


def _record_digest(shard: Path, image_id: str, digest: str) -> None:
    try:
        with open(shard, "a", encoding="utf-8") as fh:
            fh.write(json.dumps([image_id, digest]) + "\n")
    except OSError as exc:
        if os_problem(exc) is None:
            raise
        raise DataError(shard, os_problem(exc)) from None


def _image_digest(path: Path) -> str:
    if not path.is_file():
        raise DataError(path, "file not found")
    return file_digest(path)


def prepare_output(out_dir: Path, model_digest: str, ctx: Context) -> None:
    """Rank 0 empties `out_dir` unless it holds logits of the same model; others wait."""
    if ctx.is_main:
        stamp = out_dir / MODEL_STAMP
        if out_dir.exists() and (not stamp.is_file() or stamp.read_text().strip() != model_digest):
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text(stamp, model_digest + "\n")
        _merge_image_digests(out_dir)
    barrier()


@contextlib.contextmanager
def single_scale(model: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
    """The model's predictors at scale 1.0 only for the block: a model's `test_scales` are the
    scales its predictors add to 1.0 (DeepLab's MSC, DuPL's students; flips are kept)."""
    net = unwrap(model)
    if not enabled:
        yield
        return
    missing = object()
    saved = getattr(net, "test_scales", missing)
    net.test_scales = []
    try:
        yield
    finally:
        if saved is missing:
            del net.test_scales
        else:
            net.test_scales = saved


def _logits(predictor, model: torch.nn.Module, image: np.ndarray, ctx: Context,
            precision: str) -> np.ndarray:
    """(C, h, w) float32 logits of one normalised (3, H, W) image."""
    batch = torch.from_numpy(image)[None].to(ctx.device)
    with autocast(ctx.device, precision):
        logits = predictor(model, batch)
    return logits[0].float().cpu().numpy()


@torch.no_grad()
def score_split(model: torch.nn.Module, predictors: dict, normalize, split: Split,
                num_classes: int, ctx: Context, dtype: str = "float16",
                precision: str = "fp32") -> dict[str, ConfusionMatrix] | None:
    """Confusion matrix of each predictor over the split (no files written): this rank's
    share, summed on rank 0 (None on the others)."""
    model.eval()
    matrices = {name: ConfusionMatrix(num_classes) for name in predictors}
    for image_id in progress(split.ids[ctx.rank::ctx.world_size], "validation"):
        image = normalize(read_image(split.image_path(image_id)))
        gt = read_label(split.gt_path(image_id), num_classes)
        for name, predictor in predictors.items():
            # rounded as write_logits stores them, so the score is the infer stage's
            logits = _logits(predictor, model, image, ctx, precision).astype(dtype)
            matrices[name].update(upsample_bilinear(logits, gt.shape).argmax(0), gt)
    gathered = gather_object(matrices)
    if gathered is None:
        return None
    return {name: sum(rank[name] for rank in gathered) for name in predictors}


@torch.no_grad()
def infer_logits(model: torch.nn.Module, predictors: dict, normalize, split: Split,
                 out_dirs: dict[str, Path], num_classes: int, ctx: Context,
                 dtype: str = "float16", precision: str = "fp32", *,
                 compact_top_k: int | None = None) -> int:
    """Write `<out_dirs[name]>/<id>.npy` for this rank's share of the split, or compact `<id>.npz`
    keeping each cell's `compact_top_k` most probable classes (`logits_io.store_logits`); returns
    files written. A file of the other form counts as missing (and is replaced)."""
    model.eval()
    ids = split.ids[ctx.rank::ctx.world_size]
    recorded = {name: image_digests(out_dirs[name]) for name in predictors}
    shards = {name: out_dirs[name] / f"{IMAGE_DIGESTS}.rank{ctx.rank}.jsonl" for name in predictors}
    written = 0
    for image_id in progress(ids, "inference"):
        image_path = split.image_path(image_id)
        digest = _image_digest(image_path)
        todo = {name: logits_path(out_dirs[name], image_id, compact_top_k is not None)
                for name in predictors}
        todo = {name: path for name, path in todo.items()
                if recorded[name].get(image_id) != digest or not valid_logits(path, num_classes)}
        if not todo:
            continue
        image = normalize(read_image(image_path))
        for name in todo:
            store_logits(out_dirs[name], image_id, _logits(predictors[name], model, image, ctx,
                                                           precision), dtype, compact_top_k)
            _record_digest(shards[name], image_id, digest)  # after the file: never ahead of it
            written += 1
    barrier()
    if ctx.is_main:
        for folder in out_dirs.values():
            _merge_image_digests(folder)
    barrier()
    return written
