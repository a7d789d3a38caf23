"""The one training loop. Methods plug in through `wsss_core.methods.TrainingMethod`.

Iteration-based (not epochs), DDP over torchrun ranks (gloo on CPU, nccl on GPU) with a
`DistributedSampler`, gradient accumulation over `iter_size` batches (gradients synchronised only
on the last one), the method's LR schedule applied before every optimiser step, checkpoints every
`checkpoint_every` iterations, and resume from the newest checkpoint when a run with the same
configuration was interrupted. Rank 0 alone writes files, logs to DVCLive and shows progress.

Resume is exact: a checkpoint holds everything the next iteration depends on (weights, optimiser,
fp16's loss scaler, the epoch and the number of its batches already consumed, every process's
random generators and running log sums, the best validation score so far), so a run killed at
any point and re-run ends with the same bytes as one that was never interrupted (on CPU, with the
same thread count and number of processes).

`precision` (fp32 | bf16 | fp16) runs each micro-batch's forward under autocast (the methods keep
their losses in float32, see wsss_core.precision); fp16 scales the loss with a GradScaler,
unscaled before the gradient is clipped. `val_every` N scores the model every N iterations and
at the end with a `validate` callback, logs `val/miou` and keeps the best-scoring weights as
`model_best.pth` beside the last, `model.pth` (without validation `model_best.pth` is the last).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from ..cli import progress
from ..distributed import Context, all_reduce_sum, barrier, broadcast_object, gather_object
from ..errors import ConfigError, DataError, WsssError
from ..io import save_torch, write_text
from ..methods import TrainingMethod
from ..precision import autocast, grad_scaler
from ..schedules import set_lr_factor

CHECKPOINT_GLOB = "checkpoint_*.pth"
LAST_MODEL, BEST_MODEL = "model.pth", "model_best.pth"
# weights of the best validation so far, in the persistent checkpoint folder (DVC deletes
# model_best.pth before it reruns the stage; a resumed run copies it from here at its end)
BEST_STATE = "best.pth"
# configuration keys that cannot change what a run computes: a checkpoint made with other
# values is resumed all the same (a test checks that a changed worker count gives the same bytes)
NEUTRAL_KEYS = ("num_workers",)


class TrainingDiverged(WsssError):
    """The loss became NaN or infinite."""


def fingerprint(config: dict) -> str:
    """Identifies a run's configuration; a checkpoint is resumed only by the same configuration."""
    relevant = {k: v for k, v in config.items() if k not in NEUTRAL_KEYS}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def latest_checkpoint(directory: Path) -> Path | None:
    found = sorted(directory.glob(CHECKPOINT_GLOB), key=lambda p: int(p.stem.split("_")[1]))
    return found[-1] if found else None


def images_stamp(paths: list[Path]) -> str:
    """Stamp of the training images (name, size, modification time): regenerated or replaced
    images (new data.synthetic appearance, another dataset copy) give another stamp, while an
    interrupted run on the same files keeps it. Cheap on COCO-sized splits, unlike a content
    digest; a false mismatch only costs a fresh start."""
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return digest.hexdigest()


def folder_digest(folder: Path) -> str:
    """Content digest of the files in `folder` (the training labels a checkpoint was made from)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


# --------------------------------------------------------------------------- random generators
def rng_state(device: torch.device) -> dict:
    """This process's global random generators (torch, CUDA, NumPy, Python) as tensors, numbers
    and lists, so that a checkpoint holding them loads with `torch.load(weights_only=True)`."""
    _, key, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": [torch.from_numpy(key.astype(np.int64)), pos, has_gauss, cached_gaussian],
             "python": [version, list(internal), gauss_next]}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    key, pos, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state(("MT19937", key.numpy().astype(np.uint32), pos, has_gauss, cached_gaussian))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


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


# --------------------------------------------------------------------------- DVCLive
def truncate_curves(live_dir: Path, step: int) -> None:
    """Drop the rows after `step` from every DVCLive curve (.tsv) under `live_dir`: what a
    killed run logged after its last checkpoint, which the resumed run logs again."""
    for path in sorted((live_dir / "plots").rglob("*.tsv")):
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        if not lines:
            continue
        header, *rows = lines
        column = header.rstrip("\r\n").split("\t").index("step")
        kept = [row for row in rows if row.strip() and int(row.split("\t")[column]) <= step]
        if len(kept) != len(rows):
            write_text(path, header + "".join(kept))


def monitor_system(device: torch.device) -> bool:
    """DVCLive's system metrics (GPU memory and utilisation, CPU, RAM) on CUDA runs only: on
    the CPU they would only add machine-dependent curves to the run's outputs."""
    return device.type == "cuda"


def open_live(live_dir: Path, resume_step: int | None, system: bool = False):
    """The DVCLive logger of a run's curves, continuing after `resume_step` when resuming;
    `system`: DVCLive's `monitor_system` curves (see `monitor_system`).

    It shares no file with other runs (benchmark cells train side by side, DVC's queue runs
    experiments in parallel): DVCLive's `next_step` and `end` write and delete a signal file
    for DVC's VS Code extension in the enclosing DVC repository
    (`.dvc/tmp/exps/run/DVCLIVE_STEP_COMPLETED`, found from $DVC_ROOT or the working
    directory), which made side-by-side runs fail at random with FileNotFoundError, so the
    loop logs through `log_metric` and `sync` only; and `Live()` opens the repository itself
    (its SQLite caches under DVC's site cache dir) to name an experiment and read Studio
    settings, which a pipeline stage with `save_dvc_exp=False` has no use for, so that step is
    skipped. tests/test_live_race.py checks both on the pinned dvclive."""
    from dvclive import Live

    class RepoFreeLive(Live):
        def _init_dvc(self):
            """No DVC repository: `dvcyaml=None`, no experiment to save."""

    if resume_step is not None:
        truncate_curves(live_dir, resume_step)
    return RepoFreeLive(dir=str(live_dir), resume=resume_step is not None, dvcyaml=None,
                        save_dvc_exp=False, report=None, monitor_system=system)


# --------------------------------------------------------------------------- the loop
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
    precision = config.get("precision", "fp32")
    val_every = config.get("val_every") or 0
    if val_every and validate is None:
        raise ConfigError("train.val_every is set but no validation split was given")
    ckpt_dir = out_dir / "checkpoints"
    run_id = fingerprint(config)
    torch.manual_seed(config["seed"] + ctx.rank)
    np.random.seed(config["seed"] + ctx.rank)
    random.seed(config["seed"] + ctx.rank)

    model = method.build_model().to(ctx.device)
    optimizer = method.optimizer(model)
    scaler = grad_scaler(ctx.device, precision)

    sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=config["seed"], drop_last=True)
    batches_per_epoch = len(sampler) // batch_size
    if batches_per_epoch == 0:
        raise ConfigError(f"train.batch_size {config['batch_size']} exceeds the "
                          f"{len(dataset)} training images")

    # resume: rank 0 decides, every rank loads the same file
    resume_from = None
    if ctx.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        candidate = latest_checkpoint(ckpt_dir)
        if candidate is not None:
            meta = torch.load(candidate, map_location="cpu", weights_only=True)
            if meta.get("fingerprint") == run_id:
                resume_from = str(candidate)
            else:  # another configuration's checkpoints: start afresh
                for stale in ckpt_dir.glob(CHECKPOINT_GLOB):
                    stale.unlink()
        if resume_from is None:
            (ckpt_dir / BEST_STATE).unlink(missing_ok=True)  # an earlier run's best
    resume_from = broadcast_object(resume_from)
    start, epoch, position = 0, 0, 0
    earlier_time, last_terms = 0.0, {}
    best = None  # {"miou", "iteration"} of the best validation so far
    sums: dict[str, float] = {}  # this process's loss terms since the last log line
    count = 0
    process_state = None
    if resume_from is not None:
        # on the CPU: the generators' states must stay there (load_state_dict moves the rest)
        state = torch.load(resume_from, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        best = state.get("best")
        start, epoch, position = state["iteration"], state["epoch"], state["position"]
        if position == batches_per_epoch:  # the checkpoint's epoch was complete
            epoch, position = epoch + 1, 0
        processes = state["processes"]
        if len(processes) == ctx.world_size:
            process_state = processes[ctx.rank]
            sums, count = process_state["log_sums"], process_state["log_count"]
        # the run's training time and last logged losses carry over, so a resumed (or an
        # already finished) run reports the whole run, not just the iterations left
        earlier_time, last_terms = state.get("train_time_s", 0.0), state.get("last_terms", {})
        if ctx.is_main:
            print(f"resuming from {resume_from} (iteration {start})", flush=True)
            if process_state is None:
                print(f"note: {resume_from} was made by {len(processes)} process(es), not "
                      f"{ctx.world_size}: the rest of the run is not the one an uninterrupted "
                      f"run would have made", flush=True)

    net = model
    if ctx.world_size > 1:
        net = DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            find_unused_parameters=method.find_unused_parameters)

    loader_options = {"num_workers": config["num_workers"],
                      "pin_memory": ctx.device.type == "cuda", "persistent_workers": False}
    batches = _batches(dataset, sampler, batch_size, loader_options, epoch, position)

    live = None
    if ctx.is_main and live_dir is not None:
        live = open_live(live_dir, start if resume_from is not None else None,
                         system=monitor_system(ctx.device))

    # restored last: building the model, the optimiser and DDP above draws from the generators
    if process_state is not None:
        set_rng_state(process_state["rng"], ctx.device)

    try:
        effective_batch = config["batch_size"] * iter_size
        stepped = [p for group in optimizer.param_groups for p in group["params"]]  # clipped ones
        started = time.time()
        model.train()  # MSC.train() keeps BatchNorm frozen where the preset says so
        for iteration in progress(range(start + 1, iterations + 1), f"train {method.name}",
                                  total=iterations - start):
            set_lr_factor(optimizer, method.lr_factor(iteration))
            # the model's, not the optimiser's: a parameter the optimiser does not step (CDL-e's
            # affinity head) would otherwise add up gradients over the whole run, a state no
            # checkpoint holds
            model.zero_grad(set_to_none=True)
            for micro in range(iter_size):
                epoch, position, batch = next(batches)
                sync = micro == iter_size - 1 or ctx.world_size == 1
                with contextlib.nullcontext() if sync else net.no_sync():
                    with autocast(ctx.device, precision):
                        loss, terms = method.training_loss(net, _to_device(batch, ctx.device),
                                                           iteration)
                    scaler.scale(loss / iter_size).backward()
                for name, value in terms.items():
                    sums[name] = sums.get(name, 0.0) + float(value) / iter_size
            if config.get("grad_clip"):
                # clip the true gradient: fp16's scaled one is unscaled first (a no-op otherwise);
                # gradients are already averaged over the ranks, so every rank clips alike
                scaler.unscale_(optimizer)
                norm = float(torch.nn.utils.clip_grad_norm_(stepped, config["grad_clip"]))
                if np.isfinite(norm) or not scaler.is_enabled():
                    sums["grad_norm"] = sums.get("grad_norm", 0.0) + norm
                # else: an fp16 overflow, whose step the scaler skips (and lowers its scale)
            scaler.step(optimizer)  # optimizer.step() unless fp16 overflowed
            scaler.update()
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
                    if scaler.is_enabled():
                        live.log_metric("train/loss_scale", scaler.get_scale())
                    live.sync()
                sums, count = {}, 0

            if val_every and (iteration % val_every == 0 or iteration == iterations):
                best = _validate(model, validate, iteration, best, live, ctx, ckpt_dir, run_id)

            if iteration % config["checkpoint_every"] == 0 or iteration == iterations:
                # every process's own state (its generators, its share of the log sums) goes to
                # rank 0, which writes the one checkpoint
                processes = gather_object({"rng": rng_state(ctx.device), "log_sums": sums,
                                           "log_count": count})
                if ctx.is_main:
                    path = ckpt_dir / f"checkpoint_{iteration}.pth"
                    save_torch({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                "iteration": iteration, "epoch": epoch, "position": position,
                                "processes": processes, "fingerprint": run_id,
                                "train_time_s": earlier_time + time.time() - started,
                                "last_terms": last_terms, "best": best,
                                **({"scaler": scaler.state_dict()} if scaler.is_enabled() else {}),
                                "config": json.loads(json.dumps(config, default=str))}, path)
                    for old in ckpt_dir.glob(CHECKPOINT_GLOB):
                        if old != path:
                            old.unlink()
                barrier()
    finally:  # its thread would keep the process alive
        if live is not None and live._system_monitor is not None:
            live._system_monitor.end()

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
    if best is not None:
        summary["best_val"] = best
    if ctx.is_main:
        save_torch(model.state_dict(), out_dir / LAST_MODEL)
        best_file = ckpt_dir / BEST_STATE
        if best is not None and not best_file.is_file():
            raise DataError(best_file, "the best validation's weights are missing (delete the "
                                       "checkpoints folder to train afresh)")
        # without validation (or before the first one) the best model is the last
        best_state = (torch.load(best_file, map_location="cpu", weights_only=True)["model"]
                      if best is not None else model.state_dict())
        save_torch(best_state, out_dir / BEST_MODEL)
    barrier()
    return summary


def _validate(model: torch.nn.Module, validate, iteration: int, best: dict | None, live,
              ctx: Context, ckpt_dir: Path, run_id: str) -> dict | None:
    """Score the model at `iteration` (every rank), log `val/<name>` (rank 0) and, when it beats
    the best so far (strictly: the earliest of equal scores stays), write its weights to the
    checkpoint folder; returns the best so far."""
    model.eval()
    scores = validate(model, iteration)
    model.train()
    if ctx.is_main:
        if live is not None:
            live.step = iteration
            for name, value in scores.items():
                if value is not None:  # None: no GT class in the split
                    live.log_metric(f"val/{name}", value)
            live.sync()
        miou = scores["miou"]
        if best is None or (miou is not None and (best["miou"] is None or miou > best["miou"])):
            best = {"miou": miou, "iteration": iteration}
            save_torch({"model": model.state_dict(), "fingerprint": run_id, **best},
                       ckpt_dir / BEST_STATE)
    return broadcast_object(best)

