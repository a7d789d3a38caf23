"""CRF stage performance: throughput, parallel efficiency, per-image overhead, peak memory.

    .venv/bin/python benchmarks/crf_speed.py [--images 24] [--size 200 260] [--rss 50 500]

Builds a throwaway VOC-layout dataset from the synthetic generator (textured images with objects,
so the bilateral lattice is realistic) with 21-class stride-8 logits (GT one-hot + noise), then:
1. a bare `dense_crf` call per image (inputs already in memory) → seconds per image;
2. `refine_split` with n_jobs=1 → images/s and the stage's overhead per image over the bare call
   (reading logits/image/GT, upsampling, softmax, PNG write, scoring);
3. `refine_split` with n_jobs=all cores on the same images, workers already started → images/s
   and parallel efficiency = speed-up / cores (plus the cold first call, which starts workers);
4. peak RSS of `refine_split` run in a fresh subprocess on N small images for each N in --rss:
   the main process and each of its joblib workers (VmHWM from /proc/<pid>/status), which should
   not grow with N because workers return confusion matrices, not predictions. (getrusage's
   ru_maxrss is not used: Linux carries the forking parent's peak into the child's figure.)
Timings are the best of --repeat runs; the machine's load average is printed, since other
processes on the cores distort wall-clock figures. For that reason the CPU time spent per image
in the workers and in the main process is reported too: it bounds the speed-up on idle cores.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from wsss_core.config import SyntheticData
from wsss_core.crf import CRF_PRESETS, dense_crf, refine_split, upsampled_softmax
from wsss_core.data.datasets import voc_layout_split
from wsss_core.io import read_image, write_id_list, write_image, write_label
from wsss_core.logits_io import write_logits
from wsss_core.synthetic import render_sample

NUM_CLASSES = 21
SETTINGS = CRF_PRESETS["deeplab"]


def deeplab_grid(side: int) -> int:
    """Output side of DeepLab v2 (stride 8, ceil-mode pool) for an input side."""
    a = (side - 1) // 2 + 1
    b = -(-(a - 1) // 2) + 1
    return (b - 1) // 2 + 1


def build_dataset(root: Path, count: int, min_size: int, max_size: int) -> list[str]:
    cfg = SyntheticData(min_size=min_size, max_size=max_size, classes=[1, 3, 8, 12, 15, 19])
    rng = np.random.default_rng(0)
    ids = [f"img_{i:05d}" for i in range(count)]
    for index, image_id in enumerate(ids):
        image, gt = render_sample(cfg, "val", index)
        write_image(root / "JPEGImages" / f"{image_id}.jpg", image)
        write_label(root / "SegmentationClassAug" / f"{image_id}.png", gt)
        h, w = deeplab_grid(gt.shape[0]), deeplab_grid(gt.shape[1])
        rows = ((np.arange(h) + 0.5) * gt.shape[0] / h).astype(int)
        cols = ((np.arange(w) + 0.5) * gt.shape[1] / w).astype(int)
        coarse = gt[rows][:, cols].astype(np.int64)
        coarse[coarse == 255] = 0
        logits = 3.0 * np.eye(NUM_CLASSES)[coarse].transpose(2, 0, 1)
        logits += rng.normal(0, 1.5, logits.shape)
        write_logits(root / "logits" / f"{image_id}.npy", logits)
    write_id_list(root / "ImageSets/Segmentation/val.txt", ids)
    return ids


def run_stage(root: Path, out: str, n_jobs: int, ids=None) -> tuple[float, float]:
    """(wall, CPU of this process) seconds of one non-resumed `refine_split` run."""
    wall, cpu = time.perf_counter(), time.process_time()
    refine_split(voc_layout_split(root, "val"), root / "logits", root / out, NUM_CLASSES, SETTINGS,
                 ids=ids, n_jobs=n_jobs, resume=False)
    return time.perf_counter() - wall, time.process_time() - cpu


def best(runs) -> tuple[float, float]:
    runs = list(runs)
    return min(r[0] for r in runs), min(r[1] for r in runs)


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += [int(child)] + _children(int(child))
    return found


def _children_cpu_seconds() -> float:
    """User+system CPU time used so far by this process's live descendants (loky workers)."""
    total = 0
    for pid in _children(os.getpid()):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def _vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def rss_child(root: Path, count: int, n_jobs: int) -> None:
    """Run in a fresh process: refine `count` images, print peak RSS figures as JSON."""
    ids = [f"img_{i:05d}" for i in range(count)]
    run_stage(root, f"rss_{count}_{n_jobs}", n_jobs, ids)
    workers = [pid for pid in _children(os.getpid()) if Path(f"/proc/{pid}").exists()]
    roles = {pid: _role(pid) for pid in workers}
    print(json.dumps({"main_kib": _vm_hwm_kib(os.getpid()),
                      "children_kib": [[roles[pid], _vm_hwm_kib(pid)] for pid in workers]}))


def _role(pid: int) -> str:
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return "tracker" if "tracker" in cmdline else "worker"


def measure_speed(root: Path, args, cores: int) -> None:
    ids = build_dataset(root, args.images, *args.size)
    n = len(ids)
    print(f"{n} synthetic images {args.size[0]}..{args.size[1]} px, {NUM_CLASSES} classes, "
          f"kernel {SETTINGS}, {cores} cores, load average {os.getloadavg()[0]:.2f}, "
          f"best of {args.repeat}")
    inputs = []
    for image_id in ids:
        image = read_image(root / "JPEGImages" / f"{image_id}.jpg")
        logits = np.load(root / "logits" / f"{image_id}.npy").astype(np.float32)
        inputs.append((np.array(image), upsampled_softmax(logits, image.shape[:2])))

    def bare_pass() -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        for image, prob in inputs:
            dense_crf(image, prob, SETTINGS)
        return time.perf_counter() - wall, time.process_time() - cpu

    bare, bare_cpu = (t / n for t in best(bare_pass() for _ in range(args.repeat)))
    print(f"bare dense_crf:          {bare * 1000:7.1f} ms/image ({1 / bare:5.2f} images/s), "
          f"CPU {bare_cpu * 1000:.1f} ms/image")
    runs = [run_stage(root, "serial", 1) for _ in range(args.repeat)]
    serial, serial_cpu = (t / n for t in best(runs))
    print(f"stage, n_jobs=1:         {serial * 1000:7.1f} ms/image ({1 / serial:5.2f} images/s), "
          f"CPU {serial_cpu * 1000:.1f} ms/image")
    print(f"  overhead over the bare call: CPU {1000 * (serial_cpu - bare_cpu):+.1f} ms/image "
          f"({100 * (serial_cpu / bare_cpu - 1):+.1f} %), wall {1000 * (serial - bare):+.1f} ms")

    cold = run_stage(root, "cold", cores, ids[:cores])[0]
    walls, main_cpu, worker_cpu = [], [], []
    for _ in range(args.repeat):
        before = _children_cpu_seconds()
        wall, cpu = run_stage(root, "parallel", cores)
        walls.append(wall)
        main_cpu.append(cpu)
        worker_cpu.append(_children_cpu_seconds() - before)
    parallel = min(walls) / n
    speedup = serial / parallel
    print(f"stage, n_jobs={cores} (warm): {parallel * 1000:7.1f} ms/image ({1 / parallel:5.2f} "
          f"images/s), speed-up {speedup:.2f}x, parallel efficiency {100 * speedup / cores:.0f} %")
    # load-independent view: CPU per image in the workers vs serially, and the serial share
    # left in the main process (dispatch, journal, merging matrices) that bounds the speed-up
    main_share = min(main_cpu) / (min(main_cpu) + min(worker_cpu))
    bound = 1 / (main_share + (1 - main_share) / cores)
    print(f"  CPU/image: workers {1000 * min(worker_cpu) / n:.1f} ms (serial stage "
          f"{1000 * serial_cpu:.1f} ms), main process {1000 * min(main_cpu) / n:.1f} ms "
          f"→ serial share {100 * main_share:.1f} %, Amdahl bound {bound:.2f}x on {cores} idle cores")
    print(f"  cold start: the first call on {cores} images took {cold:.2f} s (starting workers)")


def measure_rss(root: Path, args, cores: int) -> None:
    build_dataset(root, max(args.rss), *args.rss_size)
    print(f"peak RSS (VmHWM) on {args.rss_size[0]}..{args.rss_size[1]} px images, "
          f"main process and each loky child:")
    for n_jobs in (1, cores):
        for count in args.rss:
            command = [sys.executable, __file__, "--rss-child", str(root), str(count), str(n_jobs)]
            proc = subprocess.run(command, capture_output=True, text=True, check=True)
            figures = json.loads(proc.stdout.strip().splitlines()[-1])
            children = ", ".join(f"{role} {kib / 1024:.0f}"
                                 for role, kib in figures["children_kib"]) or "none"
            print(f"  n_jobs={n_jobs}, {count:4d} images: main {figures['main_kib'] / 1024:4.0f} "
                  f"MiB; children (MiB): {children}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", type=int, nargs=2, default=(200, 260), metavar=("MIN", "MAX"))
    parser.add_argument("--rss", type=int, nargs="*", default=[50, 500])
    parser.add_argument("--rss-size", type=int, nargs=2, default=(48, 64), metavar=("MIN", "MAX"))
    parser.add_argument("--repeat", type=int, default=3, help="timings: best of this many runs")
    parser.add_argument("--rss-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("WSSS_NO_PROGRESS", "1")
    if args.rss_child:
        rss_child(Path(args.rss_child[0]), int(args.rss_child[1]), int(args.rss_child[2]))
        return
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        measure_speed(Path(tmp) / "speed", args, cores)
        if args.rss:
            measure_rss(Path(tmp) / "rss", args, cores)


if __name__ == "__main__":
    main()
