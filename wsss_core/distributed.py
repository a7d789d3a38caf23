"""torch.distributed set-up shared by training and inference (torchrun environment variables).

CPU runs use gloo, GPU runs nccl; nothing else in the code knows which. A process started without
torchrun is a world of one and skips process-group set-up entirely.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from .errors import ConfigError


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _pick_device(local_rank: int, device: str) -> torch.device:
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA device is available")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


@contextlib.contextmanager
def distributed(device: str = "auto", threads: int | None = None) -> Iterator[Context]:
    """Join the torchrun process group (if any) for the duration of the block. On the CPU the
    process uses `threads` BLAS threads (a caller's budget: benchmark cells run side by side),
    by default the machine's cores shared among the ranks on it."""
    stop_with_launcher()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    target = _pick_device(local_rank, device)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo")
        owns_group = True
    else:
        owns_group = False
    if target.type == "cpu":
        # ranks share the machine's cores: oversubscribed BLAS threads slow everyone down
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get(
            "LOCAL_WORLD_SIZE", world_size)))))
    yield Context(rank=rank, world_size=world_size, local_rank=local_rank, device=target)
    # not on an exception: the failing rank keeps its connections until it has reported the
    # error and exits (wsss_core.cli.run_stage), so its peers never fail first with "connection
    # closed by peer"
    if owns_group:
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj, src: int = 0):
    """Send a picklable object from `src` to every rank (returns it everywhere)."""
    if not dist.is_initialized():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def gather_object(obj, dst: int = 0) -> list | None:
    """Every rank's picklable `obj`, in rank order, on rank `dst` (None on the others)."""
    if not dist.is_initialized():
        return [obj]
    gathered = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(obj, gathered, dst=dst)
    return gathered


# --------------------------------------------------------------------------- launcher death
# torchrun starts its workers in sessions of their own, so killing torchrun (or the `dvc repro`
# above it) would leave them training on as orphans that keep writing into models/.
_PR_SET_PDEATHSIG = 1
_watched = False


def _parent_of(pid: int) -> int | None:
    """The parent pid of `pid` (from /proc), None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return None if fields[0] in ("Z", "X") else int(fields[1])  # a zombie is gone too


def _environ_of(pid: int, name: str) -> str | None:
    try:
        entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    prefix = f"{name}=".encode()
    return next((e[len(prefix):].decode() for e in entries if e.startswith(prefix)), None)


def launcher_chain() -> list[tuple[int, int]]:
    """(pid, parent pid) of this process and of the launchers above it: its parent (torchrun)
    and, under DVC, every ancestor that was started for the same stage (the same DVC_STAGE:
    torchrun and the shell DVC runs the stage command in), up to the one DVC itself started."""
    links = [(os.getpid(), os.getppid())]
    stage = os.environ.get("DVC_STAGE")
    while stage is not None:
        pid = links[-1][1]
        parent = _parent_of(pid)
        if parent is None or parent <= 1 or _environ_of(pid, "DVC_STAGE") != stage:
            break
        links.append((pid, parent))
    return links


def _watch_launchers(links: list[tuple[int, int]], poll_s: float) -> None:
    while all(_parent_of(pid) == parent for pid, parent in links):
        time.sleep(poll_s)
    os.kill(os.getpid(), signal.SIGTERM)


def stop_with_launcher(poll_s: float = 1.0) -> None:
    """Make this torchrun worker end (SIGTERM) as soon as a launcher above it is gone.

    The kernel signals it when its parent dies (PR_SET_PDEATHSIG); a thread checks every
    `poll_s` seconds that each process of `launcher_chain()` still has the parent it had at
    start, which also catches a killed `dvc repro` (its torchrun would survive it). Only under
    torchrun and on Linux: a plain `python stages/...` run (e.g. under nohup) is left alone."""
    global _watched
    if _watched or "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    _watched = True
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    threading.Thread(target=_watch_launchers, args=(launcher_chain(), poll_s), daemon=True,
                     name="launcher-watch").start()


# --------------------------------------------------------------------------- global-batch losses
# A loss normalised over "the batch" (a mean over its valid pixels, Dice over its pixel sums, ...)
# must see the global batch under DDP, as the originals' nn.DataParallel does, or N processes take
# a different step from one process on the same images. The losses therefore build every batch
# sum and count with `global_sum` and hand the training loop `undo_gradient_averaging(loss)`.
def world_size() -> int:
    """Processes in the current process group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def global_sum(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over all processes, differentiable in this process's own part.

    The value is Σ_r tensor_r; the other processes' parts enter as constants, so a loss
    f(global sums) has, on process r, the gradient Σ_k ∂f/∂S_k · ∇S_k^r: this process's share of
    the global-batch gradient (the shares add up to it exactly, for any differentiable f). Every
    process must call it the same number of times, in the same order. Without a process group
    it returns `tensor` itself."""
    if world_size() == 1:
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return tensor + (total - tensor.detach())


def global_sums(*totals: torch.Tensor) -> list[torch.Tensor]:
    """`global_sum` of several same-shaped local totals (counts may be integer or bool; all are
    cast to the first floating dtype) in one all-reduce."""
    dtype = next(t.dtype for t in totals if t.is_floating_point())
    return list(global_sum(torch.stack([t.to(dtype) for t in totals])).unbind())


def undo_gradient_averaging(loss: torch.Tensor) -> torch.Tensor:
    """The loss to back-propagate through DDP for a global-batch loss built with `global_sum`.

    Each process's gradient is its share of the global-batch gradient and DDP averages the
    shares over the processes, so the loss is scaled by the world size to make the average their
    sum. Its value is then world_size × the loss: log the unscaled one."""
    size = world_size()
    return loss * size if size > 1 else loss
