"""DenseCRF and glibc's allocator: time, system time and page faults per image, with and without
`wsss_core.crf.keep_freed_memory`.

    PYTHONPATH=. .venv/bin/python benchmarks/crf_allocator.py [--dataset coco14] [--images 4]
        [--rounds 2]

pydensecrf allocates and frees several C×H×W float buffers per mean-field iteration. glibc maps
every block over 32 MB afresh (mmap) and unmaps it on free, so the kernel faults in and zeroes
those pages again each time; `keep_freed_memory` (called by `dense_crf`) makes malloc serve them
from its heap and keep what is freed. Here each configuration runs in its own child process
(the allocator setting is per process and cannot be undone), alternating default / kept for
`--rounds` rounds so that drift in the machine's speed hits both alike. Each child renders
`--images` samples of the rehearsal's generator (`benchmarks/scale_data.py`: the dataset's image
size and classes, stride-8 logits made from the GT), then times `dense_crf` (deeplab kernel) on
each, with getrusage's user and system time and minor page faults around the calls only, and
the child's peak RSS (VmHWM).
It prints per-image figures, the ratios default / kept, and checks that both settings give
the same marginals (a hash of their bytes).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def child(dataset: str, images: int, keep: bool) -> dict:
    import numpy as np
    from PIL import Image

    from benchmarks.scale_data import DATASETS, grid_logits, render_sample
    from wsss_core import crf

    if not keep:   # dense_crf would tune the allocator on its first call
        crf.keep_freed_memory = lambda: False
    spec = DATASETS[dataset]
    rng = np.random.default_rng(99)
    inputs = []
    for i in range(images):
        sample = render_sample(spec, i)
        logits = grid_logits(spec, sample, rng).astype(np.float16).astype(np.float32)  # as stored
        image = np.asarray(Image.open(BytesIO(sample.jpeg)).convert("RGB"))
        inputs.append((image, crf.upsampled_softmax(logits, sample.hw)))
    digest = hashlib.sha256()
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    for image, prob in inputs:
        digest.update(crf.dense_crf(image, prob, crf.CRF_PRESETS["deeplab"]).tobytes())
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"s": wall / images, "user_s": (after.ru_utime - before.ru_utime) / images,
            "sys_s": (after.ru_stime - before.ru_stime) / images,
            "minor_faults": (after.ru_minflt - before.ru_minflt) / images,
            "peak_rss_mib": _vm_hwm_mib(), "sha256": digest.hexdigest()}


def _vm_hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="coco14", choices=("voc12", "coco14"))
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", choices=("default", "kept"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.dataset, args.images, args.child == "kept")))
        return
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    runs: dict[str, list[dict]] = {"default": [], "kept": []}
    for round_ in range(args.rounds):
        for mode in ("default", "kept"):
            out = subprocess.run([sys.executable, __file__, "--child", mode, "--dataset", args.dataset,
                                  "--images", str(args.images)], env=env, check=True,
                                 capture_output=True, text=True).stdout
            runs[mode].append(json.loads(out.strip().splitlines()[-1]))
            r = runs[mode][-1]
            print(f"round {round_ + 1} {mode:7s}: {r['s']:.2f} s/image (user {r['user_s']:.2f}, "
                  f"system {r['sys_s']:.2f}), {r['minor_faults']:,.0f} minor faults/image, peak RSS {r['peak_rss_mib']:.0f} MiB",
                  flush=True)
    mean = {m: {k: sum(r[k] for r in rs) / len(rs) for k in ("s", "user_s", "sys_s", "minor_faults", "peak_rss_mib")}
            for m, rs in runs.items()}
    same = len({r["sha256"] for rs in runs.values() for r in rs}) == 1
    print(f"{args.dataset}, {args.images} images × {args.rounds} rounds, load average "
          f"{os.getloadavg()[0]:.2f}: default {mean['default']['s']:.2f} s/image, kept "
          f"{mean['kept']['s']:.2f} s/image (× {mean['default']['s'] / mean['kept']['s']:.2f}); system time "
          f"{mean['default']['sys_s']:.2f} → {mean['kept']['sys_s']:.2f} s/image; minor faults "
          f"{mean['default']['minor_faults']:,.0f} → {mean['kept']['minor_faults']:,.0f} per image; peak RSS "
          f"{mean['default']['peak_rss_mib']:.0f} → {mean['kept']['peak_rss_mib']:.0f} MiB; marginals identical: {same}")


if __name__ == "__main__":
    main()
