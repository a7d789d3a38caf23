"""The one training loop, `train`. Methods plug in through `TrainingMethod` (method.py).

Iteration-based (not epochs), DDP over torchrun ranks (gloo on CPU, nccl on GPU) with a
`DistributedSampler`, gradient accumulation over `iter_size` batches (gradients synchronised only
on the last one), the method's LR schedule applied before every optimiser step. Checkpoints and
exact resume are checkpointer.py's, the DVCLive curves live.py's; rank 0 alone writes files, logs
and shows progress. Resume is exact because every draw of randomness is either in a checkpoint
(the processes' generators) or a function of seed, rank and epoch (the data order below), so a
run killed at any point and re-run ends with the same bytes as one that was never interrupted
(on CPU, with the same thread count and number of processes).

`precision` (fp32 | bf16 | fp16) runs each micro-batch's forward under autocast (the methods keep
their losses in float32, see wsss_core.precision); fp16 scales the loss with a GradScaler,
unscaled before the gradient is clipped. `val_every` N scores the model every N iterations and
at the end with a `validate` callback, logs `val/miou` and keeps the best-scoring weights as
`model_best.pth` beside the last, `model.pth` (without validation `model_best.pth` is the last).
"""
from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from ..cli import progress
from ..distributed import Context, all_reduce_sum
from ..errors import ConfigError, WsssError
from ..precision import autocast, grad_scaler
from ..schedules import set_lr_factor
from .checkpointer import Checkpointer, set_rng_state
from .live import end_system_monitor, log_train_step, log_validation, monitor_system, open_live
from .method import TrainingMethod


class TrainingDiverged(WsssError):
    """The loss became NaN or infinite."""


def train(method: TrainingMethod, dataset, ctx: Context, config: dict, out_dir: Path,
          live_dir: Path | None = None, validate=None) -> dict:
    """Train `method` on `dataset` as configured; returns the summary written to metrics.

    `config` is the effective training configuration (preset + overrides); it must hold
    iterations, batch_size (global, split over the ranks), iter_size, num_workers,
    checkpoint_every, log_every, seed; an optional grad_clip clips the global gradient norm of
    each optimiser step to that value (the norm before clipping is logged as `grad_norm`);
    optional precision (default fp32) and val_every (0/None: no validation); anything else in
    it (e.g. a digest of the training labels) only serves to tell whether a checkpoint belongs
    to this run. `dataset` needs `set_epoch(epoch)`. `validate(model, iteration)`, called on
    every rank with the model in eval mode, returns the scores `{"miou": ..., other names}` on
    rank 0 (None elsewhere); it is needed when val_every is set.
    """
    iterations, iter_size = config["iterations"], config["iter_size"]
    if config["batch_size"] % ctx.world_size:
        raise ConfigError(f"train.batch_size {config['batch_size']} is not divisible by the "
                          f"{ctx.world_size} processes")
    batch_size = config["batch_size"] // ctx.world_size
    val_every = config.get("val_every") or 0
    if val_every and validate is None:
        raise ConfigError("train.val_every is set but no validation split was given")
    torch.manual_seed(config["seed"] + ctx.rank)
    np.random.seed(config["seed"] + ctx.rank)
    random.seed(config["seed"] + ctx.rank)

    model = method.build_model().to(ctx.device)
    optimizer = method.optimizer(model)
    scaler = grad_scaler(ctx.device, config.get("precision", "fp32"))
    sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=config["seed"], drop_last=True)
    batches_per_epoch = len(sampler) // batch_size
    if batches_per_epoch == 0:
        raise ConfigError(f"train.batch_size {config['batch_size']} exceeds the "
                          f"{len(dataset)} training images")

    checkpointer = Checkpointer(out_dir, config, ctx)
    resumed = checkpointer.resume(model, optimizer, scaler)
    start, best, last_terms = resumed.iteration, resumed.best, resumed.last_terms
    sums, count = resumed.log_sums, resumed.log_count  # this process's terms since the last log
    epoch, position = resumed.epoch, resumed.position
    if position == batches_per_epoch:  # the checkpoint's epoch was complete
        epoch, position = epoch + 1, 0
    net = model if ctx.world_size == 1 else DistributedDataParallel(
        model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
        find_unused_parameters=method.find_unused_parameters)
    loader_options = {"num_workers": config["num_workers"],
                      "pin_memory": ctx.device.type == "cuda", "persistent_workers": False}
    batches = _batches(dataset, sampler, batch_size, loader_options, epoch, position)
    live = (open_live(live_dir, start if resumed.checkpoint else None, system=monitor_system(ctx.device))
            if ctx.is_main and live_dir is not None else None)
    if resumed.rng is not None:  # last: building the model, the optimiser and DDP draws from them
        set_rng_state(resumed.rng, ctx.device)

    # the whole run's training time (earlier interrupted runs' included) as of its last
    # checkpoint: a finished run and a rerun of it that has nothing left to train report the same
    elapsed = resumed.train_time_s
    try:
        started = time.time()
        model.train()  # MSC.train() keeps BatchNorm frozen where the preset says so
        for iteration in progress(range(start + 1, iterations + 1), f"train {method.name}",
                                  total=iterations - start):
            set_lr_factor(optimizer, method.lr_factor(iteration))
            epoch, position = _accumulate_gradients(method, net, scaler, batches, iteration,
                                                    ctx, config, sums)
            _clip_and_step(optimizer, scaler, config.get("grad_clip"), sums)
            count += 1

            if iteration % config["log_every"] == 0 or iteration == iterations:
                last_terms = _mean_terms(sums, count, iteration)
                log_train_step(live, iteration, last_terms, optimizer, scaler)
                sums, count = {}, 0
            if val_every and (iteration % val_every == 0 or iteration == iterations):
                best = _validate(model, validate, iteration, best, live, checkpointer)
            if iteration % config["checkpoint_every"] == 0 or iteration == iterations:
                elapsed = resumed.train_time_s + time.time() - started
                checkpointer.save(model, optimizer, scaler, iteration=iteration, epoch=epoch,
                                  position=position, log_sums=sums, log_count=count,
                                  train_time_s=elapsed, last_terms=last_terms, best=best)
    finally:
        end_system_monitor(live)

    summary = {
        "method": method.name,
        "iterations": iterations,
        "resumed_from_iteration": start,
        "world_size": ctx.world_size,
        "batch_size": config["batch_size"],
        "batch_per_process": batch_size,
        "iter_size": iter_size,
        "effective_batch": config["batch_size"] * iter_size,
        "device": ctx.device.type,
        "wall_time_s": round(elapsed, 1),
        "final_losses": last_terms,
    }
    if best is not None:
        summary["best_val"] = best
    checkpointer.finish(model, best)
    return summary


# --------------------------------------------------------------------------- the step
def _accumulate_gradients(method: TrainingMethod, net: torch.nn.Module, scaler: torch.amp.GradScaler,
                          batches: Iterator, iteration: int, ctx: Context, config: dict,
                          sums: dict[str, float]) -> tuple[int, int]:
    """The step's gradient, from zero: backward of `iter_size` micro-batches (DDP synchronises
    the gradients on the last one only), each loss divided by `iter_size`; their terms are added
    to `sums`. Returns the epoch and position of the last batch."""
    iter_size, precision = config["iter_size"], config.get("precision", "fp32")
    # every parameter of the model, not only the optimiser's: one it does not step (CDL-e's
    # affinity head) would otherwise add up gradients over the whole run, a state no checkpoint
    # holds (the DDP wrapper's parameters are the model's)
    net.zero_grad(set_to_none=True)
    for micro in range(iter_size):
        epoch, position, batch = next(batches)
        sync = micro == iter_size - 1 or ctx.world_size == 1
        with contextlib.nullcontext() if sync else net.no_sync():
            with autocast(ctx.device, precision):
                loss, terms = method.training_loss(net, _to_device(batch, ctx.device), iteration)
            scaler.scale(loss / iter_size).backward()
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + float(value) / iter_size
    return epoch, position


def _clip_and_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   grad_clip: float | None, sums: dict[str, float]) -> None:
    """Clip the accumulated gradient's global norm to `grad_clip` (adding the norm before
    clipping to `sums["grad_norm"]`) and step the optimiser through fp16's scaler."""
    if grad_clip:
        # clip the true gradient: fp16's scaled one is unscaled first (a no-op otherwise);
        # gradients are already averaged over the ranks, so every rank clips alike
        scaler.unscale_(optimizer)
        stepped = [p for group in optimizer.param_groups for p in group["params"]]
        norm = float(torch.nn.utils.clip_grad_norm_(stepped, grad_clip))
        if np.isfinite(norm) or not scaler.is_enabled():
            sums["grad_norm"] = sums.get("grad_norm", 0.0) + norm
        # else: an fp16 overflow, whose step the scaler skips (and lowers its scale)
    scaler.step(optimizer)  # optimizer.step() unless fp16 overflowed
    scaler.update()


def _mean_terms(sums: dict[str, float], count: int, iteration: int) -> dict[str, float]:
    """The terms in `sums` averaged over the ranks and the `count` iterations they add up;
    raises TrainingDiverged on a NaN or infinite one."""
    names = sorted(sums)
    stacked = torch.tensor([sums[n] for n in names] + [float(count)], dtype=torch.float64)
    stacked = all_reduce_sum(stacked)
    terms = {n: float(v) / float(stacked[-1]) for n, v in zip(names, stacked[:-1])}
    if not all(np.isfinite(v) for v in terms.values()):
        # every rank sees the same reduced values, so all stop together
        raise TrainingDiverged(f"loss is {terms} at iteration {iteration}; lower "
                               f"train.lr or check the labels")
    return terms


def _validate(model: torch.nn.Module, validate, iteration: int, best: dict | None, live,
              checkpointer: Checkpointer) -> dict | None:
    """Score the model at `iteration` (every rank), log the scores and keep its weights when
    they are the best so far; returns the best so far."""
    model.eval()
    scores = validate(model, iteration)
    model.train()
    log_validation(live, iteration, scores)
    return checkpointer.keep_best(model, scores, iteration, best)


# --------------------------------------------------------------------------- data order
def _batches(dataset, sampler: DistributedSampler, batch_size: int, loader_options: dict,
             epoch: int, position: int) -> Iterator[tuple[int, int, dict]]:
    """Endless stream of (epoch, batches of it consumed so far, batch), from the batch after
    the first `position` of `epoch` on.

    Both the order (the sampler's permutation) and the augmentation (the dataset draws each
    sample's randomness from seed, epoch and index) are functions of the epoch, so starting in
    the middle of one only skips its first indices, without loading their images. Each epoch's
    DataLoader has a generator of its own, seeded by seed, rank and epoch: creating one would
    otherwise take a draw from the global torch generator, which a resumed run would take at a
    different point."""
    while True:
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        order = list(sampler)[position * batch_size:]
        seed = np.random.SeedSequence([sampler.seed, sampler.rank, epoch]).generate_state(1)[0]
        loader = DataLoader(dataset, batch_size=batch_size, sampler=order, drop_last=True,
                            generator=torch.Generator().manual_seed(int(seed)), **loader_options)
        for batch in loader:
            position += 1
            yield epoch, position, batch
        epoch, position = epoch + 1, 0


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
