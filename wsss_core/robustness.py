"""Noise-robustness benchmark: every method × pseudo-label noise level × seed on the demo data.

The benchmark is its own DVC pipeline (`robustness/dvc.yaml`, run with `dvc repro
robustness/dvc.yaml`) whose matrix stages call the functions here:

* `make_pseudo_labels(noise)` simulates the synthetic train split's pseudo labels at one noise
  level (`data/robustness/pseudo_labels/noise_<level>/`) and scores them against the GT.
* `run_cell(method, noise, seed)` runs the ordinary pipeline (train → infer → CRF, the same
  functions the main stages call) for one configuration: the repository's params with the
  cell's method, seed and noise (one process, `benchmark.threads` CPU threads), reading the
  shared prepared data and that level's pseudo labels and writing into the cell's own folder
  `data/robustness/work/<cell>/` (`cell_paths`). Only the cell's scores are kept
  (`metrics/robustness/runs/<group>/seed<k>.json`); an interrupted cell resumes from the
  checkpoints left in its folder.
* `run_cells(method, noise)` is one DVC stage: the cells of every benchmark seed, `benchmark.jobs`
  of them side by side in worker processes (small CPU models scale poorly with threads, so
  parallel 1-thread cells finish sooner than 2-thread cells in turn).
* `write_report()` gathers every cell into `metrics/benchmark.json` (mean and spread over
  seeds, per noise level, next to the pseudo labels' own mIoU), `metrics/benchmark.csv` for
  `dvc plots` and the PNG plot of mIoU against noise.

DuPL learns from image-level labels only, so it has no noise axis: it is trained once per seed
and its numbers are reported at every level (`"uses_pseudo_labels": false`).
"""
from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from .config import Params, load_params
from .errors import ConfigError, DataError
from .io import atomic_path, read_json, write_json, write_text
from .paths import RunPaths
from .registry import get_method

PSEUDO_DIR = Path("data/robustness/pseudo_labels")
WORK_DIR = Path("data/robustness/work")
RESULTS_DIR = Path("metrics/robustness")
BENCHMARK_JSON = Path("metrics/benchmark.json")
BENCHMARK_CSV = Path("metrics/benchmark.csv")
# the benchmark's metric: one small file per method (and the pseudo labels) at the default noise,
# with the keys of the demo's metric files, so `dvc metrics show` adds rows, not columns
BENCHMARK_METRICS_DIR = Path("metrics/benchmark")
BENCHMARK_PLOT = Path("metrics/plots/benchmark_miou_vs_noise.png")


def uses_pseudo_labels(method: str) -> bool:
    """Whether `method` trains on the pseudo labels (DeepLab family) or on image-level labels
    only (DuPL), as its registry record says."""
    return get_method(method).uses_pseudo_labels


def level_key(noise: float) -> str:
    """The noise level as the string DVC puts in stage and file names: 0.5 → "0.5"."""
    return str(float(noise))


def cell_name(method: str, noise: float | None, seed: int) -> str:
    if not uses_pseudo_labels(method):
        return f"{method}-seed{seed}"
    return f"{method}-noise{level_key(noise)}-seed{seed}"


def group_name(method: str, noise: float | None) -> str:
    """The stage (and results folder) of a method at a noise level; one cell per seed inside."""
    return method if not uses_pseudo_labels(method) else f"{method}-noise{level_key(noise)}"


def cell_result_path(method: str, noise: float | None, seed: int) -> Path:
    return RESULTS_DIR / "runs" / group_name(method, noise) / f"seed{seed}.json"


def _benchmark_params() -> Params:
    """params.yaml with simulated pseudo labels: the benchmark's noise axis is simulated,
    whatever source the demo pipeline uses."""
    params = load_params(overrides={"pseudo_labels.source": "simulate"})
    if params.dataset != "synthetic":
        raise ConfigError("params.yaml: dataset: the robustness benchmark needs 'synthetic' (its "
                          "pseudo-label noise is simulated on the synthetic GT)")
    return params


def pseudo_label_folder(noise: float) -> Path:
    return PSEUDO_DIR / f"noise_{level_key(noise)}"


def pseudo_label_scores(noise: float) -> Path:
    return RESULTS_DIR / "pseudo_labels" / f"noise_{level_key(noise)}.json"


def make_pseudo_labels(noise: float) -> dict:
    """Simulate and score the train pseudo labels at `noise` (other data.* as in params.yaml)."""
    from .pipeline import publish_pseudo_labels, score_pseudo_labels

    _benchmark_params()
    params = load_params(overrides={"data.noise": float(noise), "pseudo_labels.source": "simulate"})
    paths = dataclasses.replace(RunPaths.defaults(params), pseudo_labels=pseudo_label_folder(noise))
    publish_pseudo_labels(params, paths)
    return score_pseudo_labels(params, paths, out=pseudo_label_scores(noise))


def _cell_params(method: str, noise: float, seed: int) -> Params:
    """params of a cell: the repository's, with the cell's method, seed and noise, one process
    (side-by-side cells already fill the cores), no CRF overlays, and its own trained model
    scored (never a released checkpoint named by infer.weights)."""
    return load_params(overrides={"method": method, "seed": int(seed), "data.noise": float(noise),
                                  "train.nproc": 1, "infer.nproc": 1, "crf.overlays": 0,
                                  "infer.weights": "", "pseudo_labels.source": "simulate"})


def cell_paths(params: Params, method: str, noise: float | None, seed: int) -> RunPaths:
    """A cell reads the shared prepared data and its level's pseudo labels, and writes its
    model, logits, predictions and metrics into its own scratch folder (kept only while the cell
    is unfinished: its checkpoints resume it)."""
    work = WORK_DIR / cell_name(method, noise, seed)
    defaults = RunPaths.defaults(params)
    return dataclasses.replace(
        defaults, model_dir=work / "model", logits=work / "logits",
        predictions=work / "predictions", metrics=work / "metrics",
        pseudo_labels=pseudo_label_folder(noise) if uses_pseudo_labels(method)
        else defaults.pseudo_labels)


def run_cell(method: str, noise: float | None, seed: int) -> dict:
    """Train, infer and CRF one configuration; returns (and writes) its scores."""
    from .pipeline import run_crf, run_inference, run_training

    params = _benchmark_params()
    if not uses_pseudo_labels(method):
        noise = params.data.noise  # unused by the method; recorded for completeness
    elif noise is None:
        raise ConfigError(f"robustness: method '{method}' needs a noise level")
    cell = _cell_params(method, noise, seed)
    paths = cell_paths(cell, method, noise, seed)
    if not paths.prepared.is_dir():
        raise DataError(paths.prepared, "prepared dataset not found (run the prepare_data stage)")
    if uses_pseudo_labels(method) and not paths.pseudo_labels.is_dir():
        raise DataError(paths.pseudo_labels, "pseudo labels of this noise level not found (run "
                                             "the robustness pseudo_labels stage)")
    # the cell's thread count is the benchmark's, whoever runs it (a worker of run_cells, or
    # `stages/robustness.py run --seed k`): `distributed()` reads this budget
    os.environ["WSSS_CPU_THREADS"] = str(params.benchmark.threads)
    started = time.time()
    summary = run_training(cell, paths)
    scores = run_inference(cell, paths)
    crf = run_crf(cell, paths)
    finished = time.time()
    result = {
        "method": method, "noise": float(noise), "seed": int(seed),
        "uses_pseudo_labels": uses_pseudo_labels(method),
        "miou": scores["miou"], "miou_crf": crf["miou"],
        "iterations": summary["iterations"], "effective_batch": summary["effective_batch"],
        "train_wall_time_s": summary["wall_time_s"],
        "wall_time_s": round(finished - started, 1),
        "started_at": round(started, 1), "finished_at": round(finished, 1),
    }
    for key in ("predictor", "predictors_miou", "cam_miou"):  # DuPL's two students
        if key in scores:
            result[key] = scores[key]
    write_json(cell_result_path(method, noise, seed), result)
    shutil.rmtree(WORK_DIR / cell_name(method, noise, seed))
    return result


def _quiet_worker() -> None:
    """Worker initialiser: no progress bars (interleaved bars of side-by-side cells are
    unreadable)."""
    os.environ["WSSS_NO_PROGRESS"] = "1"


def _run_cell_in_worker(method: str, noise: float | None, seed: int) -> dict:
    try:
        return run_cell(method, noise, seed)
    finally:
        # the CRF's joblib workers idle for minutes before they exit, and a worker process
        # waits for its children when it exits: stop them now
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)


def run_cells(method: str, noise: float | None) -> list[dict]:
    """Every benchmark seed of `method` at `noise`, `benchmark.jobs` cells at a time. Each cell
    writes its result when it finishes, so a failing seed does not lose the others' (their
    workspaces are gone, a rerun repeats them); the first failure is raised once all are done."""
    grid = _benchmark_params().benchmark
    seeds = list(grid.seeds)
    jobs = min(grid.jobs, len(seeds))
    if jobs == 1:
        return [run_cell(method, noise, seed) for seed in seeds]
    results, failures = [], []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_quiet_worker) as pool:
        futures = [pool.submit(_run_cell_in_worker, method, noise, seed) for seed in seeds]
        for future in futures:
            try:
                results.append(future.result())
            except Exception as exc:  # noqa: BLE001 - re-raised below, after the other seeds
                failures.append(exc)
    if failures:
        raise failures[0]
    return results


# --------------------------------------------------------------------------- the report
def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single seed)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarize(runs: list[dict], pseudo_miou: dict[str, float], default_noise: float,
              methods: list[str]) -> dict:
    """The benchmark table: per noise level the pseudo labels' mIoU and, per method, the mean
    and spread over seeds of the val mIoU without and with CRF."""
    default = level_key(default_noise)
    if default not in pseudo_miou:
        raise ConfigError(f"params.yaml: data.noise {default} is not one of the benchmark's "
                          f"noise levels ({', '.join(pseudo_miou)})")
    levels: dict[str, dict] = {}
    for key in sorted(pseudo_miou, key=float):
        entry: dict = {"pseudo_labels": {"miou": pseudo_miou[key]}}
        for method in methods:
            cells = [r for r in runs if r["method"] == method
                     and (not uses_pseudo_labels(method) or level_key(r["noise"]) == key)]
            if not cells:
                continue
            cells.sort(key=lambda r: r["seed"])
            miou_mean, miou_std = _mean_std([r["miou"] for r in cells])
            crf_mean, crf_std = _mean_std([r["miou_crf"] for r in cells])
            entry[method] = {"miou_mean": miou_mean, "miou_std": miou_std,
                             "miou_crf_mean": crf_mean, "miou_crf_std": crf_std,
                             "seeds": len(cells), "seed_list": [r["seed"] for r in cells],
                             "uses_pseudo_labels": uses_pseudo_labels(method)}
        levels[key] = entry
    return {"default_noise": default, "levels": levels}


def benchmark_wall_time(runs: list[dict]) -> dict:
    """Seconds spent in the cells: their sum, and the stages' wall time (side-by-side cells of
    one stage overlap, so a stage lasts from its first cell's start to its last cell's end)."""
    spans: dict[tuple, list[float]] = {}
    for r in runs:
        key = (group_name(r["method"], r["noise"]),)
        start, end = r.get("started_at"), r.get("finished_at")
        if start is None or end is None:  # results written before cells ran side by side
            start, end = 0.0, r["wall_time_s"]
            key = key + (r["seed"],)
        span = spans.setdefault(key, [start, end])
        span[0], span[1] = min(span[0], start), max(span[1], end)
    return {"cells": len(runs), "cells_sum": round(sum(r["wall_time_s"] for r in runs), 1),
            "stages": round(sum(end - start for start, end in spans.values()), 1)}


def headline_metrics(summary: dict, methods: list[str]) -> dict[str, dict]:
    """The benchmark's metric files by name: at the default noise level, the pseudo labels' mIoU
    and each method's mean val mIoU with CRF (`miou`) and without (`miou_no_crf`) over seeds
    (the whole grid is benchmark.json and benchmark.csv, plain outputs)."""
    noise = float(summary["default_noise"])
    level = summary["levels"][summary["default_noise"]]
    files = {"pseudo_labels": {"split": "train", "noise": noise, "miou": level["pseudo_labels"]["miou"]}}
    for method in methods:
        if method in level:
            files[method] = {"method": method, "split": "val", "crf": True, "noise": noise,
                             "miou": level[method]["miou_crf_mean"],
                             "miou_no_crf": level[method]["miou_mean"]}
    return files


def benchmark_csv(summary: dict, methods: list[str]) -> str:
    """One row per noise level: the pseudo labels' mIoU and each method's mean mIoU (CRF)."""
    header = ["noise", "pseudo_labels"] + [f"{m}{suffix}" for m in methods
                                           for suffix in ("", "_std", "_no_crf")]
    lines = [",".join(header)]
    for key, entry in summary["levels"].items():
        row = [key, f"{entry['pseudo_labels']['miou']:.6f}"]
        for method in methods:
            cell = entry.get(method)
            row += ["", "", ""] if cell is None else [
                f"{cell['miou_crf_mean']:.6f}", f"{cell['miou_crf_std']:.6f}", f"{cell['miou_mean']:.6f}"]
        lines.append(",".join(row))
    return "\n".join(lines) + "\n"


def plot_benchmark(summary: dict, methods: list[str], path: Path) -> None:
    """mIoU (CRF, mean ± std over seeds) against pseudo-label noise, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(summary["levels"])
    x = [float(k) for k in keys]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    ax.plot(x, [100 * summary["levels"][k]["pseudo_labels"]["miou"] for k in keys], "k--",
            marker="s", label="pseudo labels (train)")
    for method in methods:
        points = [(float(k), summary["levels"][k][method]) for k in keys if method in summary["levels"][k]]
        if not points:
            continue
        xs = [p[0] for p in points]
        mean = [100 * p[1]["miou_crf_mean"] for p in points]
        std = [100 * p[1]["miou_crf_std"] for p in points]
        ax.errorbar(xs, mean, yerr=std, marker="o", capsize=3, label=f"{method} (val, CRF)")
    ax.set_xlabel("pseudo-label noise (data.noise)")
    ax.set_ylabel("mIoU (%)")
    ax.set_title("Noise robustness on the synthetic demo data")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_report() -> dict:
    """Gather the cells of the configured grid into benchmark.json, .csv and the plot."""
    params = _benchmark_params()
    grid = params.benchmark
    methods = grid.methods
    pseudo = {level_key(n): read_json(pseudo_label_scores(n))["miou"] for n in grid.noise_levels}
    runs = []
    for method in methods:
        levels = [None] if not uses_pseudo_labels(method) else grid.noise_levels
        for noise in levels:
            for seed in grid.seeds:
                runs.append(read_json(cell_result_path(method, noise, seed)))
    summary = summarize(runs, pseudo, params.data.noise, methods)
    summary["wall_time_s"] = benchmark_wall_time(runs)
    write_json(BENCHMARK_JSON, summary)
    for name, headline in headline_metrics(summary, methods).items():
        write_json(BENCHMARK_METRICS_DIR / f"{name}.json", headline)
    write_text(BENCHMARK_CSV, benchmark_csv(summary, methods))
    plot_benchmark(summary, methods, BENCHMARK_PLOT)
    return summary
