"""Trainings side by side (benchmark cells, DVC's queue) share no file through DVCLive.

DVCLive's `next_step`/`end` write and delete `.dvc/tmp/exps/run/DVCLIVE_STEP_COMPLETED` in the
DVC repository named by $DVC_ROOT (which `dvc repro` and `dvc exp run` set) or found above the
working directory; two runs ending together raced on it (`FileNotFoundError` from `Live.end()`,
about 1 cell in 90 when 3 short cells ran side by side), and `Live()` opened the repository's
SQLite caches in DVC's site cache folder."""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from tests.tiny_training import train_toy

pytestmark = pytest.mark.slow

ITERATIONS = 30


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_three_side_by_side_trainings_five_times_in_a_row(tmp_path, monkeypatch):
    repo, site_cache = tmp_path / "repo", tmp_path / "site_cache"
    (repo / ".dvc").mkdir(parents=True)
    site_cache.mkdir()
    # as under `dvc repro`: the stage's DVC repository, and DVC's shared caches somewhere we see
    monkeypatch.setenv("DVC_ROOT", str(repo))
    monkeypatch.setenv("DVC_STAGE", "train")
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(site_cache))
    cells = [tmp_path / "runs" / f"round{r}" / f"cell{c}" for r in range(5) for c in range(3)]
    # spawned workers as the benchmark's run_cells uses, started inside the DVC repository
    with ProcessPoolExecutor(3, mp_context=multiprocessing.get_context("spawn"),
                             initializer=os.chdir, initargs=(str(repo),)) as pool:
        for first in range(0, len(cells), 3):
            futures = [pool.submit(train_toy, str(cell), ITERATIONS) for cell in cells[first:first + 3]]
            for future in futures:
                future.result()  # raises what a cell raised
    assert _files(repo) == [] and _files(site_cache) == []
    for cell in cells:
        rows = (cell / "live/plots/metrics/train/loss.tsv").read_text().splitlines()
        assert [int(r.split("\t")[0]) for r in rows[1:]] == list(range(1, ITERATIONS + 1))
        assert (cell / "model/model.pth").is_file()
