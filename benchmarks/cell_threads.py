"""Why benchmark cells run side by side: time a demo training step with all cores' threads, with
one thread, and with one thread in each of `--jobs` processes at once.

    python benchmarks/cell_threads.py [--method baseline] [--jobs 2] [--steps 15]

Prints ms per step and the throughput of the side-by-side layout relative to one cell with every
core. Needs a quiet machine (the figures are ratios measured within this one run).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import time


def _tensors(value):
    """Every tensor in a model's output (tensors, lists, dicts, dataclasses)."""
    import dataclasses

    import torch

    if torch.is_tensor(value):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif dataclasses.is_dataclass(value):
        for field in dataclasses.fields(value):
            yield from _tensors(getattr(value, field.name))


def _step_ms(method: str, threads: int, steps: int) -> float:
    """Mean ms of a training forward/backward/SGD step of the method's demo model (its demo batch
    and crop; CDL-e and DuPL also get their strong view)."""
    import torch

    from wsss_core.config import load_params
    from wsss_core.methods import create_method
    from wsss_core.pipeline.resolve import effective_train_config

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    params = load_params(overrides={"method": method})
    config = effective_train_config(params)
    model = create_method(method, params.num_classes, config).build_model()
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    crop = config["crop"]
    images = torch.randn(config["batch_size"], 3, crop, crop)
    extra = {"strong_images": images.flip(-1)} if method in ("cdl_e", "dupl") else {}

    def step() -> None:
        loss = sum(t.float().mean() for t in _tensors(model(images, **extra)) if t.requires_grad)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up: allocator, oneDNN primitives
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / steps * 1000


def _worker(args: tuple[str, int, int]) -> float:
    return _step_ms(*args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--method", default="baseline", help="baseline | cdl_b | cdl_e | dupl")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--steps", type=int, default=15)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    every = _step_ms(args.method, cores, args.steps)
    single = _step_ms(args.method, 1, args.steps)
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        side = pool.map(_worker, [(args.method, 1, args.steps)] * args.jobs)
    gain = (args.jobs / max(side)) / (1 / every)
    print(f"{args.method}, {cores} cores: {every:.0f} ms/step with {cores} threads, {single:.0f} ms "
          f"with 1; {args.jobs} x 1 thread side by side: {', '.join(f'{t:.0f}' for t in side)} ms "
          f"→ {gain:.2f}x the steps per second of one {cores}-thread cell")


if __name__ == "__main__":
    main()
