"""GPU check (≤ 8 minutes on one card): throughput and peak memory of the paper-size training
steps in fp32 and bf16 autocast, with the memory savers, plus an nccl init and a bf16-vs-fp32
loss comparison.

    python benchmarks/gpu_check.py [--steps 10] [--loss-steps 50]

Rows: DeepLab v2 ResNet-101 MSC at the CDL VOC config (crop 321, 5 images per micro-batch, MSC
0.5/0.75, frozen BN) and a DuPL student pair on `deit_base_patch16_224` at 448 (2 images per GPU);
each in fp32, bf16, bf16 + channels_last (DeepLab), bf16 + grad checkpointing; images/s over
`--steps` timed SGD steps after 2 warm-up steps, and `torch.cuda.max_memory_allocated`. Random
weights and data: speed and memory do not depend on them. Then a one-process nccl process group
(all_reduce of a tensor) and `--loss-steps` SGD steps of the demo DeepLab on fixed random data
in fp32 and in bf16 from the same initial weights (final losses and their largest relative
gap). Without CUDA it stops at once with a one-line message and exit status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import time

import torch


def _require_cuda() -> None:
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible (torch.cuda.is_available() is False); run it "
              "on a GPU machine", file=sys.stderr)
        raise SystemExit(2)


def _autocast(dtype: str, device: str = "cuda"):
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=torch.bfloat16)


def _deeplab_step(savers: dict):
    from wsss_core.models import build_model

    model = build_model("baseline", 21, msc_scales=[0.5, 0.75], freeze_bn=True, **savers).cuda()
    images = torch.randn(5, 3, 321, 321, device="cuda")
    if savers.get("channels_last"):
        images = images.contiguous(memory_format=torch.channels_last)

    def loss(out):
        return sum(t.float().square().mean() for t in out.main)
    return model, (images,), loss, 5


def _dupl_step(savers: dict):
    from wsss_core.models import build_model

    model = build_model("dupl", 21, backbone="deit_base_patch16_224", **savers).cuda()
    images = torch.randn(2, 3, 448, 448, device="cuda")

    def loss(out):
        return sum(s.seg.float().square().mean() + s.cls.float().sum()
                   for s in (out.student1, out.student2))
    return model, (images,), loss, 2


def measure(build, savers: dict, dtype: str, steps: int) -> tuple[float, float]:
    """(images/s, peak GiB) of `steps` SGD steps after 2 warm-up steps."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model, inputs, loss_of, batch = build(savers)
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-6,
                                momentum=0.9)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with _autocast(dtype):
            loss = loss_of(model(*inputs))
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30
    return batch * steps / elapsed, peak


def nccl_single_process() -> str:
    import torch.distributed as dist

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda", 0))
    try:
        value = torch.ones(4, device="cuda")
        dist.all_reduce(value)
        torch.cuda.synchronize()
        return f"nccl {torch.cuda.nccl.version()}: 1-process all_reduce -> {value.tolist()}"
    finally:
        dist.destroy_process_group()


def loss_curves(steps: int, device: str = "cuda", batch: int = 8, side: int = 81) -> str:
    """fp32 vs bf16 losses of the demo DeepLab (CE on a fixed random batch of `batch` images
    `side` px square, SGD); `device` "cpu" lets the tests run it without a GPU."""
    from wsss_core.models import build_model
    from wsss_core.models.resnet import feature_size

    torch.manual_seed(0)
    reference = build_model("baseline", 21, blocks=[1, 1, 1, 1], width=16, msc_scales=[0.5, 0.75],
                            freeze_bn=False).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    images = torch.randn(batch, 3, side, side, device=device, generator=gen)
    grid = feature_size(side)
    labels = torch.randint(0, 21, (batch, grid, grid), device=device, generator=gen)
    curves = {}
    for dtype in ("fp32", "bf16"):
        model = build_model("baseline", 21, blocks=[1, 1, 1, 1], width=16,
                            msc_scales=[0.5, 0.75], freeze_bn=False).to(device)
        model.load_state_dict(reference.state_dict())
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        losses = []
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            with _autocast(dtype, device):
                out = model(images)
            # the loss in fp32, as training does
            loss = sum(torch.nn.functional.cross_entropy(
                torch.nn.functional.interpolate(t.float(), size=labels.shape[-2:],
                                                mode="bilinear", align_corners=False), labels)
                for t in out.main)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        curves[dtype] = losses
    gap = max(abs(b - a) / abs(a) for a, b in zip(curves["fp32"], curves["bf16"]))
    return (f"{steps} steps: final loss fp32 {curves['fp32'][-1]:.4f}, bf16 "
            f"{curves['bf16'][-1]:.4f}; largest relative gap over the curve {gap:.3%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--loss-steps", type=int, default=50)
    args = parser.parse_args()
    _require_cuda()
    torch.backends.cudnn.benchmark = True
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    rows = [("DeepLab v2 R101 MSC, 5×321²", _deeplab_step, [
                ("fp32", {}), ("bf16", {}), ("bf16", {"channels_last": True}),
                ("bf16", {"grad_checkpointing": True})]),
            ("DuPL 2× DeiT-B/16, 2×448²", _dupl_step, [
                ("fp32", {}), ("bf16", {}), ("bf16", {"grad_checkpointing": True})])]
    print("| step | precision | savers | images/s | peak GiB | vs fp32 (speed, memory) |")
    print("|---|---|---|---|---|---|")
    for title, build, cases in rows:
        base = None
        for dtype, savers in cases:
            speed, peak = measure(build, savers, dtype, args.steps)
            base = base or (speed, peak)
            print(f"| {title} | {dtype} | {'+'.join(savers) or '-'} | {speed:.2f} | {peak:.2f} | "
                  f"{speed / base[0]:.2f}×, {peak / base[1]:.2f}× |", flush=True)
    print(nccl_single_process(), flush=True)
    print(loss_curves(args.loss_steps), flush=True)


if __name__ == "__main__":
    main()
