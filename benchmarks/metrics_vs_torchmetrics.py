"""The project's ConfusionMatrix vs torchmetrics' MulticlassJaccardIndex on the same predictions.

    .venv/bin/pip install torchmetrics==1.9.0   # benchmark only, not a project requirement
    .venv/bin/python benchmarks/metrics_vs_torchmetrics.py [--images 200] [--size 375 500]

Draws VOC-sized GT maps (blocky regions of 2–4 of 18 classes, 255 on region borders) and
predictions that disagree on a fraction of pixels (shifted regions, class swaps, noise), then
accumulates per image with both implementations, as an evaluation loop would. Prints the
largest per-class IoU difference (classes with a non-empty union; torchmetrics reports absent
classes as 0, ours as null) and the wall time of each.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from wsss_core.metrics import ConfusionMatrix

NUM_CLASSES = 21
USED_CLASSES = 18  # classes 18..20 never occur, to show how each side reports an absent class


def make_pair(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    foreground = rng.choice(np.arange(1, USED_CLASSES), rng.integers(1, 4), replace=False)
    classes = np.concatenate([[0], foreground])
    cells = rng.choice(classes, size=(6, 8))
    rows = np.arange(height) * 6 // height
    cols = np.arange(width) * 8 // width
    gt = cells[rows][:, cols].astype(np.uint8)
    border = np.zeros_like(gt, bool)
    border[:-1] |= gt[:-1] != gt[1:]
    border[:, :-1] |= gt[:, :-1] != gt[:, 1:]
    pred = np.roll(gt, (int(rng.integers(-8, 9)), int(rng.integers(-8, 9))), axis=(0, 1))
    swap = rng.random(gt.shape) < 0.05
    pred = np.where(swap, rng.integers(0, USED_CLASSES, gt.shape), pred).astype(np.uint8)
    gt[border] = 255
    return pred, gt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, nargs=2, default=(375, 500), metavar=("H", "W"))
    args = parser.parse_args()
    try:
        import torch
        from torchmetrics.classification import MulticlassJaccardIndex
    except ImportError:
        sys.exit("torchmetrics is not installed; for this benchmark only: "
                 ".venv/bin/pip install torchmetrics==1.9.0")

    rng = np.random.default_rng(0)
    pairs = [make_pair(rng, *args.size) for _ in range(args.images)]
    pixels = args.images * args.size[0] * args.size[1]

    start = time.perf_counter()
    matrix = ConfusionMatrix(NUM_CLASSES)
    for pred, gt in pairs:
        matrix.update(pred, gt)
    ours = matrix.scores()["per_class_iou"]
    ours_time = time.perf_counter() - start

    tensors = [(torch.from_numpy(p).long(), torch.from_numpy(g).long()) for p, g in pairs]
    timings = {}
    for validate in (True, False):
        start = time.perf_counter()
        metric = MulticlassJaccardIndex(num_classes=NUM_CLASSES, ignore_index=255, average="none",
                                        validate_args=validate)
        for pred, gt in tensors:
            metric.update(pred, gt)
        theirs = metric.compute().double().numpy()
        timings[validate] = time.perf_counter() - start

    present = np.array([v is not None for v in ours])
    ours_arr = np.array([np.nan if v is None else v for v in ours])
    diff = np.abs(ours_arr[present] - theirs[present]).max()
    absent = np.flatnonzero(~present).tolist()
    print(f"{args.images} images {args.size[0]}x{args.size[1]} ({pixels / 1e6:.1f} Mpx), "
          f"{NUM_CLASSES} classes, torch threads {torch.get_num_threads()}")
    print(f"per-class IoU, {present.sum()} classes with a non-empty union: max |ours - torchmetrics| "
          f"= {diff:.2e} ({'identical up to float32 rounding' if diff < 1e-6 else 'DIFFERENT'})")
    if absent:
        print(f"classes in neither GT nor prediction {absent}: ours null, torchmetrics "
              f"{sorted(set(theirs[~present].tolist()))}")
    print(f"ConfusionMatrix (NumPy bincount):             {ours_time:6.2f} s  ({pixels / ours_time / 1e6:6.1f} Mpx/s)")
    for validate, seconds in timings.items():
        print(f"MulticlassJaccardIndex(validate_args={validate!s:5}): {seconds:6.2f} s  "
              f"({pixels / seconds / 1e6:6.1f} Mpx/s)  time ratio torchmetrics / ours "
              f"{seconds / ours_time:5.2f}")
    print("(torch tensors are built outside the timing; ours includes nothing else either)")


if __name__ == "__main__":
    main()
