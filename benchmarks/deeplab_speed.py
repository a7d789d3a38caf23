"""Print DeepLab v2 MSC training-step and inference times on this machine, plus parameter counts.

One training step = MSC forward (scales 1.0, 0.5, 0.75) + the method's loss (label correction
included for CDL, after warm-up) + backward, batch 1 unless --batch. Figures are wall-clock
medians over --repeats runs after one warm-up run.

    .venv/bin/python benchmarks/deeplab_speed.py          # ResNet-101 baseline + demo preset
    .venv/bin/python benchmarks/deeplab_speed.py --full-methods baseline cdl_b cdl_e
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from wsss_core.methods import build_model
from wsss_core.methods.deeplab.baseline import BaselineMethod
from wsss_core.methods.deeplab.cdl import CdlMethod

DEMO_PRESET = dict(blocks=[1, 1, 1, 1], width=16)


def method_for(name: str):
    return BaselineMethod() if name == "baseline" else CdlMethod(name)


def time_calls(function, repeats: int) -> float:
    function()                                   # warm-up (allocations, oneDNN kernels)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def benchmark(name: str, preset: dict, crop: int, batch: int, repeats: int,
              num_classes: int = 21) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes, **preset).train()
    method = method_for(name)
    images = torch.randn(batch, 3, crop, crop)
    strong = torch.randn(batch, 3, crop, crop) if method.needs_strong_view else None
    labels = torch.randint(0, num_classes, (batch, crop, crop))

    def train_step():
        model.zero_grad(set_to_none=True)
        outputs = model(images, strong)
        loss, _ = method.compute_loss(outputs, labels, iteration=1000, max_iter=2000)
        loss.backward()

    def inference():
        model.eval()
        model.predict(images[:1])
        model.train()

    params = sum(p.numel() for p in model.parameters())
    step = time_calls(train_step, repeats)
    infer = time_calls(inference, repeats)
    print(f"{name:9s} blocks={preset.get('blocks', [3, 4, 23, 3])} width={preset.get('width', 64)} "
          f"params={params:,}  crop {crop}² batch {batch}: train step {step:.3f} s, "
          f"predict (1 image) {infer:.3f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-methods", nargs="*", default=["baseline"],
                        choices=["baseline", "cdl_b", "cdl_e"])
    parser.add_argument("--demo-methods", nargs="*", default=["baseline", "cdl_b", "cdl_e"],
                        choices=["baseline", "cdl_b", "cdl_e"])
    parser.add_argument("--crop", type=int, default=321)
    parser.add_argument("--demo-crops", type=int, nargs="*", default=[321, 128])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {load} (other processes distort the figures)")
    print("ResNet-101 (DeepLabV2_ResNet101_MSC layout):")
    for name in args.full_methods:
        benchmark(name, {}, args.crop, args.batch, args.repeats)
    print(f"demo preset {DEMO_PRESET}:")
    for crop in args.demo_crops:
        for name in args.demo_methods:
            benchmark(name, DEMO_PRESET, crop, args.batch, args.repeats)


if __name__ == "__main__":
    main()
