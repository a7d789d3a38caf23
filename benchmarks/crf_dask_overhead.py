"""Per-image overhead of running the crf stage's `refine_split` on dask.distributed instead of
joblib, on the same cores.

    .venv/bin/python benchmarks/crf_dask_overhead.py [--images 64] [--jobs 2] [--repeat 2]

Writes N synthetic 375×500 images (textured rectangles of a few classes, GT) with 21-class logits
at stride 8 (48×63: GT one-hot + noise) to a temporary folder, then refines them with the DeepLab
kernel (resume off, so every run computes every image):
1. local: joblib with `--jobs` processes (workers started by a first, untimed call);
2. dask: a `distributed.LocalCluster` of `--jobs` worker processes with one thread each, joined
   by address (`crf.scheduler: tcp://...`; workers warmed by a first, untimed call);
3. dask with `scheduler: null` as a stage runs it: the LocalCluster started and closed inside
   the call (once: that start-up is paid once per stage run, not per image).
Runs of 1 and 2 alternate and each figure is the best of `--repeat`, so a load change on the
shared machine hits both alike; the ratio and the per-image difference come from the same run.
The PNGs of every run are compared byte for byte.
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

NUM_CLASSES = 21
HEIGHT, WIDTH, STRIDE = 375, 500, 8


def build_dataset(root: Path, count: int) -> list[str]:
    from wsss_core.io import write_id_list, write_image, write_label
    from wsss_core.logits_io import write_logits

    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (NUM_CLASSES, 3))
    grid_h, grid_w = -(-HEIGHT // STRIDE), -(-WIDTH // STRIDE)
    ids = [f"img_{i:05d}" for i in range(count)]
    for image_id in ids:
        gt = np.zeros((HEIGHT, WIDTH), np.uint8)
        for cls in rng.choice(np.arange(1, NUM_CLASSES), size=3, replace=False):
            top, left = rng.integers(0, HEIGHT - 60), rng.integers(0, WIDTH - 60)
            gt[top: top + rng.integers(40, 200), left: left + rng.integers(40, 250)] = cls
        image = colours[gt] + rng.normal(0, 25, (HEIGHT, WIDTH, 3))
        write_image(root / "JPEGImages" / f"{image_id}.jpg", np.clip(image, 0, 255).astype(np.uint8))
        write_label(root / "SegmentationClassAug" / f"{image_id}.png", gt)
        rows = ((np.arange(grid_h) + 0.5) * HEIGHT / grid_h).astype(int)
        cols = ((np.arange(grid_w) + 0.5) * WIDTH / grid_w).astype(int)
        logits = 3.0 * np.eye(NUM_CLASSES)[gt[rows][:, cols]].transpose(2, 0, 1)
        write_logits(root / "logits" / f"{image_id}.npy",
                     logits + rng.normal(0, 1.5, logits.shape))
    write_id_list(root / "ImageSets/Segmentation/val.txt", ids)
    return ids


def timed(root: Path, out: str, workers, ids=None) -> float:
    from wsss_core.crf import CRF_PRESETS, refine_split
    from wsss_core.data.datasets import voc_layout_split

    started = time.perf_counter()
    refine_split(voc_layout_split(root, "val"), root / "logits", root / out, NUM_CLASSES,
                 CRF_PRESETS["deeplab"], ids=ids, resume=False, workers=workers)
    return time.perf_counter() - started


def pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--jobs", type=int, default=2, help="joblib processes = dask workers")
    parser.add_argument("--repeat", type=int, default=2, help="timings: best of this many runs")
    args = parser.parse_args()
    os.environ.setdefault("WSSS_NO_PROGRESS", "1")
    from distributed import LocalCluster

    from wsss_core.parallel import Workers

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ids = build_dataset(root, args.images)
        n = len(ids)
        print(f"{n} synthetic images {HEIGHT}x{WIDTH}, {NUM_CLASSES}-class logits at stride "
              f"{STRIDE}, DeepLab kernel; {args.jobs} joblib processes vs {args.jobs} dask "
              f"workers (1 thread each) on {os.cpu_count()} cores; load average "
              f"{os.getloadavg()[0]:.2f}; best of {args.repeat}")
        local = Workers("local", n_jobs=args.jobs)
        started = time.perf_counter()
        with LocalCluster(n_workers=args.jobs, threads_per_worker=1, processes=True,
                          dashboard_address=":0", silence_logs=logging.ERROR) as cluster:
            cluster_start = time.perf_counter() - started
            on_dask = Workers("dask", n_jobs=args.jobs, scheduler=cluster.scheduler_address)
            warm = ids[: 2 * args.jobs]
            timed(root, "warm_local", local, warm)
            timed(root, "warm_dask", on_dask, warm)
            local_runs, dask_runs = [], []
            for _ in range(args.repeat):
                local_runs.append(timed(root, "local", local))
                dask_runs.append(timed(root, "dask", on_dask))
        own = timed(root, "own_cluster", Workers("dask", n_jobs=args.jobs))
        reference = pngs(root / "local")
        same = all(pngs(root / out) == reference for out in ("dask", "own_cluster"))
        local_s, dask_s = min(local_runs) / n, min(dask_runs) / n
        print(f"local joblib n_jobs={args.jobs}:      {1000 * local_s:7.1f} ms/image wall "
              f"(runs: {', '.join(f'{t:.1f}' for t in local_runs)} s)")
        print(f"dask LocalCluster {args.jobs} workers: {1000 * dask_s:7.1f} ms/image wall "
              f"(runs: {', '.join(f'{t:.1f}' for t in dask_runs)} s)")
        print(f"overhead of dask per image: {1000 * (dask_s - local_s):+.1f} ms "
              f"({100 * (dask_s / local_s - 1):+.1f} %; dask/local {dask_s / local_s:.3f})")
        print(f"dask with scheduler null (cluster started and closed in the call): "
              f"{own:.1f} s for {n} images = {1000 * own / n:.1f} ms/image; LocalCluster start "
              f"{cluster_start:.1f} s")
        print(f"PNGs byte-identical across local, dask and the own cluster: {same}; load "
              f"average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
