"""DuPL's adaptive noise filter: batched torch EM vs the original per-image scikit-learn loop.

    .venv/bin/python benchmarks/gmm_filter.py [--repeats 10] [--threads N] [--seed 0]

`filter_noisy_labels(..., backend="torch")` (the default) against `backend="sklearn"` (the
released code's `GaussianMixture` per image) on synthetic per-pixel CE maps shaped like DuPL's
(background ≈ 0, 255 regions 0, foreground bimodal: a clean low-loss mode and a high-loss noisy
blob), for two batches of 4 images: the VOC preset's 448×448 crops (min_samples 1000) and the
CPU demo's 96×96 crops (min_samples scaled with the crop area, as `DuplConfig.rescaled` does).
Prints, for each backend, the best wall time and the best CPU time (this process, all threads) of
--repeats calls after two warm-ups, the wall-time ratio, and how well the filtered labels agree: the fraction of all pixels with the same label, and the
overlap |A ∩ B| / |A ∪ B| of the pixels each backend set to 255. A training step calls the
filter twice (once per student). The load average is printed: other jobs distort wall times,
multi-threaded ones most (`--threads 1` is the steadier figure on a shared machine).
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from wsss_core.methods.dupl import DuplConfig, filter_noisy_labels

IGNORE = 255


def synthetic_batch(rng: np.random.Generator, batch: int, size: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss (B, H, W) float32, label (B, H, W) int64): per image one or two foreground
    ellipses of random classes, a 255 band around them (PAR's uncertain region) and a noisy
    blob inside the first one whose loss is high (mislabelled pixels)."""
    rows, cols = np.mgrid[:size, :size] / size
    losses, labels = [], []
    for _ in range(batch):
        label = np.zeros((size, size), np.int64)
        loss = np.abs(rng.normal(0.03, 0.05, (size, size)))          # confident background
        noisy_region = None
        for index in range(int(rng.integers(1, 3))):
            cy, cx, ry, rx = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), *rng.uniform(0.12, 0.3, 2)
            distance = ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2
            label[(distance < 1.3) & (label == 0)] = IGNORE
            inside = distance < 1
            label[inside] = int(rng.integers(1, 21))
            loss[inside] = np.abs(rng.normal(0.35, 0.25, inside.sum()))  # clean foreground
            if index == 0:
                ny, nx = cy + rng.uniform(-0.5, 0.5) * ry, cx + rng.uniform(-0.5, 0.5) * rx
                noisy_region = inside & (((rows - ny) / (0.5 * ry)) ** 2 +
                                         ((cols - nx) / (0.5 * rx)) ** 2 < 1)
        loss[noisy_region] = rng.normal(3.0, 0.7, noisy_region.sum()).clip(0.5)
        loss[label == IGNORE] = 0.0                                   # CE ignores 255
        losses.append(loss.astype(np.float32))
        labels.append(label)
    return torch.from_numpy(np.stack(losses)), torch.from_numpy(np.stack(labels))


def best_time(function, repeats: int) -> tuple[float, float]:
    """(best wall, best CPU) seconds; two warm-ups first (the first calls on 448² maps pay for
    fresh allocations)."""
    function()
    function()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def compare(name: str, loss: torch.Tensor, label: torch.Tensor, min_samples: int,
            repeats: int) -> None:
    cfg = DuplConfig.voc()

    def run(backend: str):
        return filter_noisy_labels(loss, label, cfg.gamma, cfg.gmm_valid_thre, cfg.gmm_loss_min,
                                   min_samples, backend)

    results = {backend: run(backend) for backend in ("torch", "sklearn")}
    times = {backend: best_time(lambda b=backend: run(b), repeats) for backend in results}
    fast, reference = results["torch"], results["sklearn"]
    same = float((fast.labels == reference.labels).float().mean())
    set_fast = (fast.labels == IGNORE) & (label != IGNORE)
    set_ref = (reference.labels == IGNORE) & (label != IGNORE)
    union = int((set_fast | set_ref).sum())
    overlap = int((set_fast & set_ref).sum()) / union if union else 1.0
    batch, height, width = label.shape
    print(f"{name}: {batch} × {height}×{width}, min_samples {min_samples}, fg samples per image "
          f"{fast.n_samples.tolist()}, filter applied {fast.applied.tolist()} "
          f"(sklearn {reference.applied.tolist()})")
    for backend, (wall, cpu) in times.items():
        print(f"  {backend:7s} {wall * 1000:8.1f} ms/batch wall, {cpu * 1000:8.1f} ms CPU")
    print(f"  sklearn / torch = {times['sklearn'][0] / times['torch'][0]:.2f}× (wall), "
          f"{times['sklearn'][1] / times['torch'][1]:.2f}× (CPU)")
    print(f"  agreement: {same:.6f} of all pixels; filtered sets overlap {overlap:.4f} "
          f"({int(set_fast.sum())} vs {int(set_ref.sum())} pixels set to 255, "
          f"{float(set_ref.float().mean()):.1%} of the batch)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}")
    rng = np.random.default_rng(args.seed)
    voc = DuplConfig.voc()
    compare("VOC crops", *synthetic_batch(rng, 4, 448), voc.gmm_min_samples, args.repeats)
    demo_min = voc.rescaled(300, crop_size=96).gmm_min_samples
    compare("demo crops", *synthetic_batch(rng, 4, 96), demo_min, args.repeats)


if __name__ == "__main__":
    main()
