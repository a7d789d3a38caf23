"""GPU check (≤ 8 minutes on one card): throughput and peak memory of the paper-size training
steps in fp32, bf16 and fp16 (`train.precision`), with the memory savers, plus an nccl init and
a bf16/fp16-vs-fp32 loss comparison.

    python benchmarks/gpu_check.py [--steps 10] [--loss-steps 50]

Every step is the training loop's (`wsss_core.training`): the method's own `training_loss` (its
losses, label correction, CAMs, GMM filter) under `wsss_core.precision.autocast`, backward and
optimiser step through `precision.grad_scaler` (loss scaling for fp16). Rows: CDL-b's DeepLab v2
ResNet-101 MSC at the CDL VOC config (crop 321, 5 images per micro-batch, MSC 0.5/0.75, frozen
BN) and a DuPL student pair on `deit_base_patch16_224` at 448 (2 images per GPU, in the phase
with every loss term and the noise filter on); each in fp32, bf16, fp16, bf16 + channels_last
(DeepLab), bf16 + grad checkpointing; images/s over `--steps` timed steps after 2 warm-up steps,
and `torch.cuda.max_memory_allocated`. Random weights and data: speed and memory do not depend
on them. Then a one-process nccl process group (all_reduce of a tensor) and `--loss-steps` steps
of the demo baseline on a fixed random batch in each precision from the same initial weights
(final losses and their largest relative gap to fp32). Without CUDA it stops at once with a
one-line message and exit status 2.
"""
from __future__ import annotations

import argparse
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


def _deeplab_step(savers: dict, device: str = "cuda") -> tuple:
    """CDL-b at the voc12_coco_predtrain config (no init file: random weights)."""
    from wsss_core.methods import create_method
    from wsss_core.methods.deeplab.presets import DEEPLAB_PRESETS

    config = {**DEEPLAB_PRESETS["voc12_coco_predtrain"], "init_weights": "", "seed": 0}
    config["model"] = {**config["model"], **savers}
    method = create_method("cdl_b", 21, config)
    gen = torch.Generator(device=device).manual_seed(0)
    batch = {"image": torch.randn(5, 3, 321, 321, device=device, generator=gen),
             "label": torch.randint(0, 21, (5, 321, 321), device=device, generator=gen)}
    # after CDL's warm-up: label correction and Dice on
    return method, batch, config["iterations"] // 2, 5


def _dupl_step(savers: dict, device: str = "cuda") -> tuple:
    """DuPL at the voc config, late in the run (every loss term and the GMM filter on)."""
    from wsss_core.methods import create_method
    from wsss_core.methods.dupl.presets import DUPL_PRESETS

    config = {**DUPL_PRESETS["voc"], "init_weights": "", "seed": 0}
    config["model"] = {**config["model"], **savers}
    method = create_method("dupl", 21, config)
    gen = torch.Generator(device=device).manual_seed(0)
    cls_label = torch.zeros(2, 20, device=device)
    cls_label[:, 14] = 1
    batch = {"image": torch.randn(2, 3, 448, 448, device=device, generator=gen),
             "strong_image": torch.randn(2, 3, 448, 448, device=device, generator=gen),
             "cls_label": cls_label,
             "img_box": torch.tensor([[0, 448, 0, 448]] * 2, device=device)}
    return method, batch, config["iterations"] - 10, 2


def _training_step(method, model, optimizer, scaler, batch: dict, iteration: int,
                   precision: str, device: str) -> float:
    """One step of the training loop (wsss_core.training): autocast forward and float32 losses,
    scaled backward, unscale + clip, scaler step."""
    from wsss_core.precision import autocast

    optimizer.zero_grad(set_to_none=True)
    with autocast(device, precision):
        loss, _ = method.training_loss(model, batch, iteration)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1e3)
    scaler.step(optimizer)
    scaler.update()
    return float(loss.detach())


def measure(build, savers: dict, precision: str, steps: int) -> tuple[float, float]:
    """(images/s, peak GiB) of `steps` training steps after 2 warm-up steps."""
    from wsss_core.precision import grad_scaler

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    method, batch, iteration, images = build(savers)
    model = method.build_model().cuda()
    model.train()
    optimizer = method.optimizer(model)
    scaler = grad_scaler("cuda", precision)
    for _ in range(2):
        _training_step(method, model, optimizer, scaler, batch, iteration, precision, "cuda")
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        _training_step(method, model, optimizer, scaler, batch, iteration, precision, "cuda")
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30
    return images * steps / elapsed, peak


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


def loss_curves(steps: int, device: str = "cuda", batch: int = 8, side: int = 81,
                precisions: tuple[str, ...] = ("fp32", "bf16", "fp16")) -> str:
    """Losses of the demo baseline (its training loss: CE of every MSC output in float32) on a
    fixed random batch of `batch` images `side` px square, in each precision from the same
    initial weights; `device` "cpu" lets the tests run it without a GPU."""
    from wsss_core.methods import create_method
    from wsss_core.methods.deeplab.presets import DEEPLAB_PRESETS
    from wsss_core.precision import grad_scaler

    config = {**DEEPLAB_PRESETS["demo"], "seed": 0, "crop": side}
    method = create_method("baseline", 21, config)
    torch.manual_seed(0)
    reference = method.build_model().to(device).state_dict()
    gen = torch.Generator(device=device).manual_seed(0)
    data = {"image": torch.randn(batch, 3, side, side, device=device, generator=gen),
            "label": torch.randint(0, 21, (batch, side, side), device=device, generator=gen)}
    curves = {}
    for precision in precisions:
        model = method.build_model().to(device)
        model.load_state_dict(reference)
        model.train()
        optimizer = method.optimizer(model)
        scaler = grad_scaler(device, precision)
        # past the demo's warm-up, at its full learning rate
        curves[precision] = [_training_step(method, model, optimizer, scaler, data,
                                            config["warmup_iter"], precision, device)
                             for _ in range(steps)]
    parts = [f"{p} {curves[p][-1]:.4f}" for p in precisions]
    gaps = [f"{p} {max(abs(b - a) / abs(a) for a, b in zip(curves['fp32'], curves[p])):.3%}"
            for p in precisions if p != "fp32"]
    return (f"{steps} steps: final loss {', '.join(parts)}; largest relative gap to fp32 over "
            f"the curve: {', '.join(gaps)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--loss-steps", type=int, default=50)
    args = parser.parse_args()
    _require_cuda()
    torch.backends.cudnn.benchmark = True
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    rows = [("CDL-b DeepLab v2 R101 MSC, 5×321²", _deeplab_step, [
                ("fp32", {}), ("bf16", {}), ("fp16", {}), ("bf16", {"channels_last": True}),
                ("bf16", {"grad_checkpointing": True})]),
            ("DuPL 2× DeiT-B/16, 2×448²", _dupl_step, [
                ("fp32", {}), ("bf16", {}), ("fp16", {}), ("bf16", {"grad_checkpointing": True})])]
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
