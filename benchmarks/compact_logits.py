"""Compact logits at COCO size: bytes per image and DenseCRF labels, full vs compact.

    .venv/bin/python benchmarks/compact_logits.py [--images 500] [--jobs 2] [--top-k 8]
        [--preset deeplab] [--sweep 4 8 16] [--out compact.json]

For each of `--images` sample images (480×640, COCO's typical size; 81 classes; DeepLab's stride-8
grid 60×80) it writes the logits both ways (`wsss_core.logits_io.write_logits`, `write_compact_logits`
keeping `--top-k` classes per cell), reads them back with `read_logits` and runs what the crf
stage runs on each (`upsampled_softmax` to the image, `dense_crf` with the `--preset` kernel,
arg-max). It reports bytes per image, the projected total for COCO val (× 40,137 images) and the
share of pixels whose CRF labels (and plain arg-max labels) are equal between the two forms.
`--sweep` adds the sizes (no CRF) of other k, and, for comparison, the size a per-image class
set would have (the classes whose probability reaches a floor at some cell, one plane each, +1).

No COCO model exists here, so the logits are made like a trained segmenter's from a synthetic
image and its GT (`sample_image`): 1–4 classes of the 80 per image drawn as 1–2 ellipses each on
a smooth background; the GT class gets a margin of 7–12 over a per-class bias (absent classes
N(−3, 1.5)), blurred across boundaries (partial cells of the stride-8 grid, then a Gaussian of
0.8 cells), so boundary cells are split between classes and absent classes come closer there;
a smooth spatial field (amplitude 1.5) and i.i.d. noise (σ 0.5) on all 81 classes; 1–3 absent
classes per image confusable with a present one (0.4–0.9 of its margin over its region, now and
then winning a blob of it). The images carry each class's colour and texture, so the bilateral
kernel sees the object edges.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed
from scipy.ndimage import gaussian_filter

from wsss_core.crf import CRF_PRESETS, dense_crf, upsampled_softmax
from wsss_core.io import write_json
from wsss_core.logits_io import COMPACT_TOP_K, read_logits, write_compact_logits, write_logits
from wsss_core.synthetic.fields import hsv, smooth_noise

HEIGHT, WIDTH, STRIDE = 480, 640, 8          # COCO's typical image; DeepLab v2's output stride
NUM_CLASSES = 81                             # COCO: background + 80
COCO_VAL_IMAGES = 40_137


def _ellipse(height: int, width: int, rng) -> np.ndarray:
    cy, cx = rng.uniform(0.1, 0.9) * height, rng.uniform(0.1, 0.9) * width
    ay, ax = rng.uniform(25, 160), rng.uniform(25, 200)
    angle = rng.uniform(0, np.pi)
    y, x = np.ogrid[:height, :width]
    u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
    v = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
    return (u / ax) ** 2 + (v / ay) ** 2 <= 1


def sample_image(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image H×W×3 uint8, GT H×W uint8, logits 81×h×w float32) of one synthetic COCO-size
    image (how: the module docstring)."""
    rng = np.random.default_rng(seed)
    grid = (HEIGHT // STRIDE, WIDTH // STRIDE)
    present = rng.choice(np.arange(1, NUM_CLASSES), size=rng.integers(1, 5), replace=False)
    gt = np.zeros((HEIGHT, WIDTH), np.uint8)
    shapes = [(_ellipse(HEIGHT, WIDTH, rng), c) for c in present for _ in range(rng.integers(1, 3))]
    for mask, cls in sorted(shapes, key=lambda s: -s[0].sum()):   # small objects stay on top
        gt[mask] = cls

    # image: smooth background, each class its own colour with a texture, sensor noise
    image = 0.45 + 0.2 * smooth_noise(rng, HEIGHT, WIDTH, 6, 3)
    for cls in present:
        mask = gt == cls
        colour = hsv((cls * 0.618) % 1.0, 0.6, 0.75)
        texture = 0.08 * smooth_noise(rng, HEIGHT, WIDTH, 24, 1)
        image[mask] = colour + texture[mask]
    image = np.clip(255 * (image + rng.normal(0, 0.03, image.shape)), 0, 255).astype(np.uint8)

    # logits on the stride-8 grid
    def soft(mask: np.ndarray) -> np.ndarray:  # share of each cell, blurred across boundaries
        cells = mask.reshape(grid[0], STRIDE, grid[1], STRIDE).mean(axis=(1, 3))
        return gaussian_filter(cells, 0.8, mode="nearest")

    margin = rng.uniform(7, 12)
    bias = rng.normal(-3, 1.5, NUM_CLASSES)
    bias[0] = 0.0
    bias[present] = 0.0
    logits = (bias[:, None, None]
              + 1.5 * np.moveaxis(smooth_noise(rng, *grid, 4, NUM_CLASSES), -1, 0)
              + rng.normal(0, 0.5, (NUM_CLASSES, *grid)))
    owners = [0, *present.tolist()]
    regions = {c: soft(gt == c) for c in owners}
    for cls in owners:
        logits[cls] += margin * regions[cls]
    absent = np.setdiff1d(np.arange(1, NUM_CLASSES), present)
    for confusable in rng.choice(absent, size=rng.integers(1, 4), replace=False):
        owner = owners[rng.integers(len(owners))]
        logits[confusable] += rng.uniform(0.4, 0.9) * margin * regions[owner]
        if rng.random() < 0.3:   # now and then it wins a blob of its owner's region
            blob = soft(_ellipse(HEIGHT, WIDTH, rng)) * regions[owner]
            logits[confusable] += 1.2 * margin * blob
    return image, gt, logits.astype(np.float32)


def _crf_labels(image: np.ndarray, logits: np.ndarray, settings) -> tuple[np.ndarray, np.ndarray]:
    prob = upsampled_softmax(logits, image.shape[:2])
    return prob.argmax(axis=0), dense_crf(image, prob, settings).argmax(axis=0)


PER_IMAGE_FLOORS = (1e-5, 1e-3)


def per_image_set_bytes(logits: np.ndarray, floor: float) -> int:
    """Bytes of the alternative not taken: one float16 plane per class whose softmax
    probability reaches `floor` at some cell, plus one plane for the rest (headers left out)."""
    stored = logits.astype(np.float16).astype(np.float64)
    top = stored.max(axis=0)
    log_prob = stored - top - np.log(np.exp(stored - top).sum(axis=0))
    kept = int((log_prob.reshape(len(stored), -1).max(axis=1) >= np.log(floor)).sum())
    return (kept + 1) * stored[0].size * 2


def measure_image(seed: int, top_k: int, preset: str, sweep: list[int],
                  run_crf: bool = True) -> dict:
    """Sizes of both forms and, with `run_crf`, the pixels equal between their labels."""
    image, _, logits = sample_image(seed)
    with tempfile.TemporaryDirectory() as tmp:
        full_path, compact_path = Path(tmp) / "x.npy", Path(tmp) / "x.npz"
        write_logits(full_path, logits)
        write_compact_logits(compact_path, logits, top_k)
        result = {"seed": seed, "full_bytes": full_path.stat().st_size,
                  "compact_bytes": compact_path.stat().st_size, "sweep_bytes": {},
                  "per_image_set_bytes": {repr(f): per_image_set_bytes(logits, f)
                                          for f in PER_IMAGE_FLOORS}}
        for k in sweep:
            write_compact_logits(compact_path.with_name("s.npz"), logits, k)
            result["sweep_bytes"][str(k)] = compact_path.with_name("s.npz").stat().st_size
        full, compact = read_logits(full_path, NUM_CLASSES), read_logits(compact_path, NUM_CLASSES)
    if run_crf:
        started = time.perf_counter()
        plain_full, crf_full = _crf_labels(image, full, CRF_PRESETS[preset])
        plain_compact, crf_compact = _crf_labels(image, compact, CRF_PRESETS[preset])
        result.update(pixels=int(plain_full.size),
                      crf_equal=int((crf_full == crf_compact).sum()),
                      plain_equal=int((plain_full == plain_compact).sum()),
                      crf_seconds=time.perf_counter() - started)
    return result


def _per_image_and_total(sizes: list[int]) -> dict:
    return {"bytes_per_image": float(np.mean(sizes)),
            "coco_val_gb": float(np.mean(sizes) * COCO_VAL_IMAGES / 1e9)}


def summarise(results: list[dict], args) -> dict:
    full = np.array([r["full_bytes"] for r in results])
    compact = np.array([r["compact_bytes"] for r in results])
    summary = {
        "images": len(results), "size": [HEIGHT, WIDTH], "grid": [HEIGHT // STRIDE, WIDTH // STRIDE],
        "num_classes": NUM_CLASSES, "top_k": args.top_k, "preset": args.preset,
        "full_bytes_per_image": float(full.mean()), "compact_bytes_per_image": float(compact.mean()),
        "compact_bytes_max": int(compact.max()),
        "coco_val_full_gb": float(full.mean() * COCO_VAL_IMAGES / 1e9),
        "coco_val_compact_gb": float(compact.mean() * COCO_VAL_IMAGES / 1e9),
        "sweep": {k: _per_image_and_total([r["sweep_bytes"][k] for r in results])
                  for k in results[0]["sweep_bytes"]},
        "per_image_set": {f: _per_image_and_total([r["per_image_set_bytes"][f] for r in results])
                          for f in results[0]["per_image_set_bytes"]},
    }
    if "pixels" in results[0]:
        pixels = sum(r["pixels"] for r in results)
        summary.update(
            crf_equal_share=sum(r["crf_equal"] for r in results) / pixels,
            crf_equal_share_worst_image=min(r["crf_equal"] / r["pixels"] for r in results),
            plain_equal_share=sum(r["plain_equal"] for r in results) / pixels,
            crf_seconds_per_image=float(np.mean([r["crf_seconds"] for r in results])) / 2)
    return summary


def _settings(args) -> dict:
    return {"top_k": args.top_k, "preset": args.preset, "sweep": [str(k) for k in args.sweep],
            "crf": not args.no_crf}


def measure_all(args) -> list[dict]:
    """Every image's figures, in seed order. With `--out`, the images already in it (from a run
    with the same settings) are kept and the file is rewritten after each batch of `--jobs`
    images, so a killed run loses at most one batch and its rerun goes on from there."""
    seeds = [args.seed + i for i in range(args.images)]
    done: dict[int, dict] = {}
    if args.out is not None and args.out.is_file():
        stored = json.loads(args.out.read_text())
        if stored.get("settings") == _settings(args):
            done = {r["seed"]: r for r in stored.get("images", []) if r["seed"] in seeds}
            print(f"{len(done)} of {len(seeds)} images already in {args.out}")
    todo = [seed for seed in seeds if seed not in done]
    batch = max(1, args.jobs if args.jobs > 0 else os.cpu_count() or 1)
    with Parallel(n_jobs=args.jobs) as parallel:
        for start in range(0, len(todo), batch):
            chunk = todo[start:start + batch]
            for result in parallel(delayed(measure_image)(seed, args.top_k, args.preset, args.sweep,
                                                          not args.no_crf) for seed in chunk):
                done[result["seed"]] = result
            if args.out is not None:
                write_json(args.out, {"settings": _settings(args),
                                      "images": [done[s] for s in seeds if s in done]})
    return [done[seed] for seed in seeds]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=1, help="joblib workers over images (-1: all cores)")
    parser.add_argument("--top-k", type=int, default=COMPACT_TOP_K,
                        help="classes per cell of the compact form (infer.compact_top_k)")
    parser.add_argument("--preset", choices=sorted(CRF_PRESETS), default="deeplab")
    parser.add_argument("--sweep", type=int, nargs="*", default=[4, 16],
                        help="further k whose sizes (no CRF) are reported")
    parser.add_argument("--no-crf", action="store_true", help="sizes only")
    parser.add_argument("--seed", type=int, default=0, help="first image's seed")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the figures as JSON; rewritten after each batch of images, and "
                             "a rerun with the same settings measures only the images it lacks")
    args = parser.parse_args()
    results = measure_all(args)
    summary = summarise(results, args)

    print(f"{summary['images']} images {HEIGHT}x{WIDTH}, {NUM_CLASSES} classes, grid "
          f"{HEIGHT // STRIDE}x{WIDTH // STRIDE} float16")
    print(f"  {'form':36s} {'B/image':>10s} {'COCO val (x40,137)':>20s}")
    print(f"  {'full (.npy)':36s} {summary['full_bytes_per_image']:>10,.0f} "
          f"{summary['coco_val_full_gb']:>17.2f} GB")
    print(f"  {f'compact (.npz), top {args.top_k}':36s} {summary['compact_bytes_per_image']:>10,.0f} "
          f"{summary['coco_val_compact_gb']:>17.2f} GB")
    rows = [(f"compact, top {k}", row) for k, row in summary["sweep"].items()]
    rows += [(f"per-image class set, p >= {f}", row) for f, row in summary["per_image_set"].items()]
    for name, row in rows:
        print(f"  {name:36s} {row['bytes_per_image']:>10,.0f} {row['coco_val_gb']:>17.2f} GB")
    if "crf_equal_share" in summary:
        print(f"  pixels with equal labels, full vs compact: DenseCRF ({args.preset}) "
              f"{100 * summary['crf_equal_share']:.4f} % (worst image "
              f"{100 * summary['crf_equal_share_worst_image']:.4f} %), no CRF "
              f"{100 * summary['plain_equal_share']:.4f} %; "
              f"{summary['crf_seconds_per_image']:.1f} s per CRF")
    if args.out:
        write_json(args.out, {"settings": _settings(args), "summary": summary, "images": results})


if __name__ == "__main__":
    main()
