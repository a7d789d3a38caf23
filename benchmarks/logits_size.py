"""Disk bytes per image of stored logits, in the project's format and the alternatives.

    .venv/bin/python benchmarks/logits_size.py [--size 375 500] [--classes 21]

Writes one logits file per variant with `wsss_core.logits_io.write_logits` (.npy, (C, h, w)) and
reports its size, and the total for VOC val (1 449 images) and COCO val (40 137) as if every
image had this size and class count (COCO has 81 classes: `--classes 81`). The project stores
DeepLab v2's stride-8 grid (375×500 → 48×63) as float16 and upsamples at CRF/scoring time; the
original CDL code stored the same grid as float32, DuPL full-resolution float32 maps. The compact
form (`infer.logits: compact`) and its DenseCRF agreement: `benchmarks/compact_logits.py`.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from wsss_core.logits_io import write_logits


def deeplab_grid(side: int) -> int:
    """DeepLab v2 output side: stride-2 conv, ceil-mode stride-2 pool, stride-2 layer3."""
    a = (side - 1) // 2 + 1
    b = -(-(a - 1) // 2) + 1
    return (b - 1) // 2 + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=(375, 500), metavar=("H", "W"))
    parser.add_argument("--classes", type=int, default=21)
    args = parser.parse_args()
    height, width = args.size
    variants = [
        ("stride 8, float16 (stored)", (deeplab_grid(height), deeplab_grid(width)), "float16"),
        ("stride 8, float32 (CDL)", (deeplab_grid(height), deeplab_grid(width)), "float32"),
        ("stride 16, float16 (ViT grid)", (height // 16, width // 16), "float16"),
        ("full resolution, float32 (DuPL)", (height, width), "float32"),
    ]
    print(f"{args.classes}-class logits of a {height}x{width} image:")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for name, (h, w), dtype in variants:
            path = Path(tmp) / f"{h}x{w}_{dtype}.npy"
            write_logits(path, rng.normal(size=(args.classes, h, w)), dtype=dtype)
            size = path.stat().st_size
            print(f"  {name:33s} ({args.classes}, {h:3d}, {w:3d}): {size:>10,d} B/image   "
                  f"VOC val {size * 1449 / 2**20:9.1f} MiB   COCO val {size * 40137 / 2**30:7.2f} GiB")


if __name__ == "__main__":
    main()
