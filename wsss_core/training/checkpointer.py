"""Resume and saving for the training loop: `Checkpointer` owns `<out_dir>/checkpoints/`.

A checkpoint holds everything the next iteration depends on (weights, optimiser, fp16's loss
scaler, the epoch and the number of its batches already consumed, every process's random
generators and running log sums, the best validation score so far), so a run killed at any point
and re-run ends with the same bytes as one that was never interrupted. It is resumed only by a
run of the same configuration (`fingerprint`); rank 0 alone reads the folder and writes files.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..distributed import Context, barrier, broadcast_object, gather_object
from ..errors import DataError
from ..io import save_torch

CHECKPOINT_GLOB = "checkpoint_*.pth"
LAST_MODEL, BEST_MODEL = "model.pth", "model_best.pth"
# weights of the best validation so far, in the persistent checkpoint folder (DVC deletes
# model_best.pth before it reruns the stage; a resumed run copies it from here at its end)
BEST_STATE = "best.pth"
# configuration keys that cannot change what a run computes: a checkpoint made with other
# values is resumed all the same (a test checks that a changed worker count gives the same bytes)
NEUTRAL_KEYS = ("num_workers",)


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


# --------------------------------------------------------------------------- the checkpointer
@dataclass
class Resumed:
    """Where a run continues; the defaults are a fresh start."""
    checkpoint: str | None = None     # the file resumed
    iteration: int = 0                # the last one done
    epoch: int = 0
    position: int = 0                 # batches of `epoch` consumed (all of them once it is over)
    # this process's generators and share of the log sums; None and empty when the checkpoint
    # was made by another number of processes
    rng: dict | None = None
    log_sums: dict[str, float] = field(default_factory=dict)
    log_count: int = 0
    # the run's training time and last logged losses carry over, so a resumed (or an already
    # finished) run reports the whole run, not just the iterations left
    train_time_s: float = 0.0
    last_terms: dict[str, float] = field(default_factory=dict)
    best: dict | None = None          # {"miou", "iteration"} of the best validation so far


class Checkpointer:
    """The checkpoints of the run of `config` writing to `out_dir`, and its final weights."""

    def __init__(self, out_dir: Path, config: dict, ctx: Context):
        self.out_dir, self.folder = out_dir, out_dir / "checkpoints"
        self.config, self.ctx = config, ctx
        self.run_id = fingerprint(config)

    def resume(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler) -> Resumed:
        """Load the newest checkpoint of this configuration into `model`, `optimizer` and
        `scaler` (every rank the file rank 0 chose); returns where the run continues. The random
        generators are left to the caller: restore `rng` after everything that draws from them."""
        checkpoint = broadcast_object(self._choose() if self.ctx.is_main else None)
        if checkpoint is None:
            return Resumed()
        # on the CPU: the generators' states must stay there (load_state_dict moves the rest)
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        resumed = Resumed(checkpoint, state["iteration"], state["epoch"], state["position"],
                          train_time_s=state.get("train_time_s", 0.0),
                          last_terms=state.get("last_terms", {}), best=state.get("best"))
        processes = state["processes"]
        if len(processes) == self.ctx.world_size:
            own = processes[self.ctx.rank]
            resumed.rng, resumed.log_sums, resumed.log_count = (own["rng"], own["log_sums"],
                                                                own["log_count"])
        if self.ctx.is_main:
            print(f"resuming from {checkpoint} (iteration {resumed.iteration})", flush=True)
            if resumed.rng is None:
                print(f"note: {checkpoint} was made by {len(processes)} process(es), not "
                      f"{self.ctx.world_size}: the rest of the run is not the one an uninterrupted "
                      f"run would have made", flush=True)
        return resumed

    def _choose(self) -> str | None:
        """Rank 0: the checkpoint to resume, if this configuration made it; another one's are
        deleted, and so is an earlier run's best when the run starts afresh."""
        self.folder.mkdir(parents=True, exist_ok=True)
        candidate = latest_checkpoint(self.folder)
        if candidate is not None:
            meta = torch.load(candidate, map_location="cpu", weights_only=True)
            if meta.get("fingerprint") == self.run_id:
                return str(candidate)
            for stale in self.folder.glob(CHECKPOINT_GLOB):
                stale.unlink()
        (self.folder / BEST_STATE).unlink(missing_ok=True)
        return None

    def save(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             scaler: torch.amp.GradScaler, *, iteration: int, epoch: int, position: int,
             log_sums: dict[str, float], log_count: int, train_time_s: float,
             last_terms: dict[str, float], best: dict | None) -> None:
        """Write `checkpoint_<iteration>.pth` and delete the older ones (every rank calls it);
        `train_time_s`: the run's training time so far."""
        # every process's own state (its generators, its share of the log sums) goes to rank 0,
        # which writes the one checkpoint
        processes = gather_object({"rng": rng_state(self.ctx.device), "log_sums": log_sums,
                                   "log_count": log_count})
        if self.ctx.is_main:
            path = self.folder / f"checkpoint_{iteration}.pth"
            save_torch({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "iteration": iteration, "epoch": epoch, "position": position,
                        "processes": processes, "fingerprint": self.run_id,
                        "train_time_s": train_time_s, "last_terms": last_terms, "best": best,
                        **({"scaler": scaler.state_dict()} if scaler.is_enabled() else {}),
                        "config": json.loads(json.dumps(self.config, default=str))}, path)
            for old in self.folder.glob(CHECKPOINT_GLOB):
                if old != path:
                    old.unlink()
        barrier()

    def keep_best(self, model: torch.nn.Module, scores: dict | None, iteration: int,
                  best: dict | None) -> dict | None:
        """After a validation (every rank calls it; `scores` on rank 0): when it beats the best
        so far (strictly: the earliest of equal scores stays), its weights go to BEST_STATE.
        Returns the best so far."""
        if self.ctx.is_main:
            miou = scores["miou"]
            if best is None or (miou is not None and (best["miou"] is None or miou > best["miou"])):
                best = {"miou": miou, "iteration": iteration}
                save_torch({"model": model.state_dict(), "fingerprint": self.run_id, **best},
                           self.folder / BEST_STATE)
        return broadcast_object(best)

    def finish(self, model: torch.nn.Module, best: dict | None) -> None:
        """Write the last weights (LAST_MODEL) and the best validation's (BEST_MODEL; without
        validation, or before the first one, the best model is the last)."""
        if self.ctx.is_main:
            save_torch(model.state_dict(), self.out_dir / LAST_MODEL)
            best_file = self.folder / BEST_STATE
            if best is not None and not best_file.is_file():
                raise DataError(best_file, "the best validation's weights are missing (delete the "
                                           "checkpoints folder to train afresh)")
            best_state = (torch.load(best_file, map_location="cpu", weights_only=True)["model"]
                          if best is not None else model.state_dict())
            save_torch(best_state, self.out_dir / BEST_MODEL)
        barrier()
