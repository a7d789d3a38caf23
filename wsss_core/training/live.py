"""The training loop's DVCLive curves (rank 0 only): train terms, learning rates and fp16's loss
scale every log-step, `val/<score>` every validation, and DVCLive's system metrics on CUDA.

The log functions take `live=None` (other ranks, no live folder) and then do nothing.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..io import write_text


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


def log_train_step(live, iteration: int, terms: dict[str, float],
                   optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """`train/<term>` (the mean loss terms), `lr/<group name or index>` and, with fp16,
    `train/loss_scale` at step `iteration`."""
    if live is None:
        return
    live.step = iteration
    for name, value in terms.items():
        live.log_metric(f"train/{name}", value)
    for index, group in enumerate(optimizer.param_groups):
        live.log_metric(f"lr/{group.get('name', index)}", group["lr"])
    if scaler.is_enabled():
        live.log_metric("train/loss_scale", scaler.get_scale())
    live.sync()


def log_validation(live, iteration: int, scores: dict | None) -> None:
    """`val/<name>` of each score at step `iteration`; a None score (no GT class in the split)
    is left out."""
    if live is None:
        return
    live.step = iteration
    for name, value in scores.items():
        if value is not None:
            live.log_metric(f"val/{name}", value)
    live.sync()


def end_system_monitor(live) -> None:
    """Stop DVCLive's system-metrics thread, which would keep the process alive."""
    if live is not None and live._system_monitor is not None:
        live._system_monitor.end()
