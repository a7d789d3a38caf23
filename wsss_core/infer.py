"""Multi-scale inference to `.npy` logits, sharded over torchrun ranks, resumable.

Each rank takes every world_size-th image, runs the method's predictors (their own multi-scale
logic) and writes one `(C, h, w)` file per image and predictor, float16 by default, atomically.
A folder remembers which model wrote it (`MODEL_STAMP`); files of another model are discarded, and
valid files of the same model are kept, so an interrupted run continues where it stopped.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import torch

from .cli import progress
from .data.datasets import Split
from .distributed import Context, barrier
from .io import read_image, write_logits, write_text

MODEL_STAMP = ".model_sha256"


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def valid_logits(path: Path, num_classes: int) -> bool:
    """A complete logits file of the right class count (only the header is read)."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return False
    return arr.ndim == 3 and arr.shape[0] == num_classes


def prepare_output(out_dir: Path, model_digest: str, ctx: Context) -> None:
    """Rank 0 empties `out_dir` unless it holds logits of the same model; others wait."""
    if ctx.is_main:
        stamp = out_dir / MODEL_STAMP
        if out_dir.exists() and (not stamp.is_file() or stamp.read_text().strip() != model_digest):
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text(stamp, model_digest + "\n")
    barrier()


@torch.no_grad()
def infer_logits(model: torch.nn.Module, predictors: dict, normalize, split: Split,
                 out_dirs: dict[str, Path], num_classes: int, ctx: Context,
                 dtype: str = "float16") -> int:
    """Write `<out_dirs[name]>/<id>.npy` for this rank's share of the split; returns files written."""
    model.eval()
    ids = split.ids[ctx.rank::ctx.world_size]
    written = 0
    for image_id in progress(ids, "inference"):
        todo = {name: out_dirs[name] / f"{image_id}.npy" for name in predictors}
        todo = {name: path for name, path in todo.items() if not valid_logits(path, num_classes)}
        if not todo:
            continue
        image = torch.from_numpy(normalize(read_image(split.image_path(image_id))))[None]
        image = image.to(ctx.device)
        for name, path in todo.items():
            logits = predictors[name](model, image)
            write_logits(path, logits[0].float().cpu().numpy(), dtype)
            written += 1
    barrier()
    return written
