"""The one training loop. Methods plug in through `wsss_core.methods.TrainingMethod`.

Iteration-based (not epochs), DDP over torchrun ranks (gloo on CPU, nccl on GPU) with a
`DistributedSampler`, gradient accumulation over `iter_size` batches (gradients synchronised only
on the last one), the method's LR schedule applied before every optimiser step, checkpoints every
`checkpoint_every` iterations, and resume from the newest checkpoint when a run with the same
configuration was interrupted. Rank 0 alone writes files, logs to DVCLive and shows progress.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from .cli import progress
from .distributed import Context, all_reduce_sum, barrier, broadcast_object
from .errors import ConfigError, WsssError
from .io import atomic_path, write_json
from .methods import TrainingMethod
from .schedules import set_lr_factor

CHECKPOINT_GLOB = "checkpoint_*.pth"


class TrainingDiverged(WsssError):
    """The loss became NaN or infinite."""


def fingerprint(config: dict) -> str:
    """Identifies a run's configuration; a checkpoint is resumed only by the same configuration."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def latest_checkpoint(directory: Path) -> Path | None:
    found = sorted(directory.glob(CHECKPOINT_GLOB), key=lambda p: int(p.stem.split("_")[1]))
    return found[-1] if found else None


def folder_digest(folder: Path) -> str:
    """Content digest of the files in `folder` (the training labels a checkpoint was made from)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _batches(loader: DataLoader, sampler: DistributedSampler, epoch: int) -> Iterator[tuple[int, dict]]:
    """Endless stream of batches; a new epoch reshuffles (sampler) and re-augments (dataset)."""
    while True:
        sampler.set_epoch(epoch)
        loader.dataset.set_epoch(epoch)
        for batch in loader:
            yield epoch, batch
        epoch += 1


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def train(method: TrainingMethod, dataset, ctx: Context, config: dict, out_dir: Path,
          live_dir: Path | None = None) -> dict:
    """Train `method` on `dataset` as configured; returns the summary written to metrics.

    `config` is the effective training configuration (preset + overrides); it must hold
    iterations, batch_size (global, split over the ranks), iter_size, num_workers,
    checkpoint_every, log_every, seed; an optional grad_clip clips the global gradient norm of
    each optimiser step to that value (the norm before clipping is logged as `grad_norm`);
    anything else in it (e.g. a digest of the training labels) only serves to tell whether a
    checkpoint belongs to this run.
    """
    iterations, iter_size = config["iterations"], config["iter_size"]
    if config["batch_size"] % ctx.world_size:
        raise ConfigError(f"train.batch_size {config['batch_size']} is not divisible by the "
                          f"{ctx.world_size} processes")
    batch_size = config["batch_size"] // ctx.world_size
    ckpt_dir = out_dir / "checkpoints"
    run_id = fingerprint(config)
    torch.manual_seed(config["seed"] + ctx.rank)
    np.random.seed(config["seed"] + ctx.rank)

    model = method.build_model().to(ctx.device)
    optimizer = method.optimizer(model)

    # resume: rank 0 decides, every rank loads the same file
    resume_from = None
    if ctx.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        candidate = latest_checkpoint(ckpt_dir)
        if candidate is not None:
            meta = torch.load(candidate, map_location="cpu", weights_only=False)
            if meta.get("fingerprint") == run_id:
                resume_from = str(candidate)
            else:  # another configuration's checkpoints: start afresh
                for stale in ckpt_dir.glob(CHECKPOINT_GLOB):
                    stale.unlink()
    resume_from = broadcast_object(resume_from)
    start, epoch = 0, 0
    earlier_time, last_terms = 0.0, {}
    if resume_from is not None:
        state = torch.load(resume_from, map_location=ctx.device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, epoch = state["iteration"], state["epoch"] + 1
        # the run's training time and last logged losses carry over, so a resumed (or an
        # already finished) run reports the whole run, not just the iterations left
        earlier_time, last_terms = state.get("train_time_s", 0.0), state.get("last_terms", {})
        if ctx.is_main:
            print(f"resuming from {resume_from} (iteration {start})", flush=True)

    net = model
    if ctx.world_size > 1:
        net = DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            find_unused_parameters=method.find_unused_parameters)

    sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=config["seed"], drop_last=True)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True,
                        num_workers=config["num_workers"], pin_memory=ctx.device.type == "cuda",
                        persistent_workers=False)
    if len(loader) == 0:
        raise ConfigError(f"train.batch_size {config['batch_size']} exceeds the "
                          f"{len(dataset)} training images")
    batches = _batches(loader, sampler, epoch)

    live = None
    if ctx.is_main and live_dir is not None:
        from dvclive import Live

        live = Live(dir=str(live_dir), resume=resume_from is not None, dvcyaml=None,
                    save_dvc_exp=False, report=None)

    effective_batch = config["batch_size"] * iter_size
    started = time.time()
    sums: dict[str, float] = {}
    count = 0
    model.train()  # MSC.train() keeps BatchNorm frozen where the preset says so
    for iteration in progress(range(start + 1, iterations + 1), f"train {method.name}",
                              total=iterations - start):
        set_lr_factor(optimizer, method.lr_factor(iteration))
        optimizer.zero_grad(set_to_none=True)
        for micro in range(iter_size):
            epoch, batch = next(batches)
            sync = micro == iter_size - 1 or ctx.world_size == 1
            with contextlib.nullcontext() if sync else net.no_sync():
                loss, terms = method.training_loss(net, _to_device(batch, ctx.device), iteration)
                (loss / iter_size).backward()
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + float(value) / iter_size
        if config.get("grad_clip"):
            # gradients are already averaged over the ranks, so every rank clips alike
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config["grad_clip"])
            sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(norm)
        optimizer.step()
        count += 1

        if iteration % config["log_every"] == 0 or iteration == iterations:
            names = sorted(sums)
            stacked = torch.tensor([sums[n] for n in names] + [float(count)], dtype=torch.float64)
            stacked = all_reduce_sum(stacked)  # mean over ranks and logged iterations
            last_terms = {n: float(v) / float(stacked[-1]) for n, v in zip(names, stacked[:-1])}
            if not all(np.isfinite(v) for v in last_terms.values()):
                # every rank sees the same reduced values, so all stop together
                raise TrainingDiverged(f"loss is {last_terms} at iteration {iteration}; lower "
                                       f"train.lr or check the labels")
            if live is not None:
                live.step = iteration
                for name, value in last_terms.items():
                    live.log_metric(f"train/{name}", value)
                for index, group in enumerate(optimizer.param_groups):
                    live.log_metric(f"lr/{group.get('name', index)}", group["lr"])
                live.next_step()
            sums, count = {}, 0

        if iteration % config["checkpoint_every"] == 0 or iteration == iterations:
            if ctx.is_main:
                path = ckpt_dir / f"checkpoint_{iteration}.pth"
                _save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                       "iteration": iteration, "epoch": epoch, "fingerprint": run_id,
                       "train_time_s": earlier_time + time.time() - started,
                       "last_terms": last_terms,
                       "config": json.loads(json.dumps(config, default=str))}, path)
                for old in ckpt_dir.glob(CHECKPOINT_GLOB):
                    if old != path:
                        old.unlink()
            barrier()

    wall_time = earlier_time + time.time() - started
    summary = {
        "method": method.name,
        "iterations": iterations,
        "resumed_from_iteration": start,
        "world_size": ctx.world_size,
        "batch_size": config["batch_size"],
        "batch_per_process": batch_size,
        "iter_size": iter_size,
        "effective_batch": effective_batch,
        "device": ctx.device.type,
        "wall_time_s": round(wall_time, 1),
        "final_losses": last_terms,
    }
    if ctx.is_main:
        _save(model.state_dict(), out_dir / "model.pth")
        if live is not None:
            live.end()
    barrier()
    return summary


def write_train_summary(path: Path, summary: dict, config: dict) -> None:
    """The run's figures for `dvc metrics` (the configuration itself is in params and dvc.lock)."""
    write_json(path, {**summary, "preset": config.get("preset")})

