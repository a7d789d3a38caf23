"""The benchmark's report (stage `report` of robustness/dvc.yaml): its cells (robustness.cells)
→ metrics/benchmark.json, a CSV per regime for `dvc plots`, a PNG, and a few headline metric
files (`ReportFiles`).

metrics/benchmark.json, fractions in [0, 1], test split (val where named):

    {"split": "test",
     "regimes": {"image_labels": {"cams": {"pseudo_labels": {"miou": …}, "baseline": M, …},
                                  "dupl_cams": {"pseudo_labels": {"miou": …}, "<method>": M},
                                  "single_stage": {"dupl": M}},
                 "simulated_noise": {"<level>": {"pseudo_labels": {"miou": …}, "<method>": M}}},
     "two_stage_method": …, "wall_time_s": {…}}

    M = {"miou_mean", "miou_std", "miou_crf_mean", "miou_crf_std", "val_miou_crf_mean", "seeds"}

(std: sample standard deviation over seeds, 0 for one seed; the pseudo labels' mIoU is on train.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from wsss_core.errors import DataError
from wsss_core.io import atomic_path, read_json, write_json, write_text

from .cells import (
    DEFAULT_PATHS,
    IMAGE_LABEL_SETS,
    BenchmarkPaths,
    cell_result_path,
    group_dir,
    load_grid,
    noise_labels,
    pseudo_label_scores,
    two_stage_method,
)
from .config import BenchmarkParams


@dataclass(frozen=True)
class ReportFiles:
    """What the report writes (relative to the working directory, the repository root in the
    DVC stage)."""

    json: Path = Path("metrics/benchmark.json")
    csv: Path = Path("metrics/benchmark.csv")                # image-level regime, a row per pipeline
    noise_csv: Path = Path("metrics/benchmark_noise.csv")    # controlled regime, a row per level
    # the benchmark's metric: one small file per pipeline of the image-level regime, with the keys
    # of the demo's metric files, so `dvc metrics show` adds rows, not columns
    metrics_dir: Path = Path("metrics/benchmark")
    plot: Path = Path("metrics/plots/benchmark.png")


DEFAULT_FILES = ReportFiles()


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single seed)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def method_summary(cells: list[dict]) -> dict:
    """M of one method on one label set: test mIoU without / with CRF over the seeds."""
    miou_mean, miou_std = mean_std([c["miou"] for c in cells])
    crf_mean, crf_std = mean_std([c["miou_crf"] for c in cells])
    return {"miou_mean": miou_mean, "miou_std": miou_std, "miou_crf_mean": crf_mean,
            "miou_crf_std": crf_std,
            "val_miou_crf_mean": mean_std([c["val_miou_crf"] for c in cells])[0],
            "seeds": len(cells)}


def _by_method(cells: list[dict]) -> dict[str, dict]:
    methods: dict[str, list[dict]] = {}
    for cell in sorted(cells, key=lambda c: c["seed"]):
        methods.setdefault(cell["method"], []).append(cell)
    return {method: method_summary(group) for method, group in methods.items()}


def summarize(cells: list[dict], pseudo_miou: dict[str, float]) -> dict:
    """The benchmark table from its cells (each with method, labels, seed and scores) and the
    label sets' own train mIoU (`pseudo_miou`, by label set)."""
    def entry(labels: str) -> dict:
        return {"pseudo_labels": {"miou": pseudo_miou[labels]},
                **_by_method([c for c in cells if c["labels"] == labels])}

    image = {name: entry(name) for name in IMAGE_LABEL_SETS if name in pseudo_miou}
    image["single_stage"] = _by_method([c for c in cells if c["labels"] is None])
    levels = sorted((key for key in pseudo_miou if key.startswith("noise")),
                    key=lambda k: float(k[len("noise"):]))
    noise = {key[len("noise"):]: entry(key) for key in levels}
    return {"split": "test", "regimes": {"image_labels": image, "simulated_noise": noise}}


def benchmark_wall_time(cells: list[dict], pseudo_seconds: dict[str, float],
                        where: BenchmarkPaths = DEFAULT_PATHS) -> dict:
    """Seconds spent: the cells' sum, the run stages' wall time (side-by-side cells of one stage
    overlap, so a stage lasts from its first cell's start to its last cell's end), and the
    pseudo-label stages'."""
    spans: dict[str, list[float]] = {}
    for c in cells:
        key = group_dir(c["method"], c["labels"], where).as_posix()
        span = spans.setdefault(key, [c["started_at"], c["finished_at"]])
        span[0], span[1] = min(span[0], c["started_at"]), max(span[1], c["finished_at"])
    stages = {key: round(end - start, 1) for key, (start, end) in spans.items()}
    return {"cells": len(cells), "cells_sum": round(sum(c["wall_time_s"] for c in cells), 1),
            "run_stages": round(sum(stages.values()), 1),
            "pseudo_label_stages": round(sum(pseudo_seconds.values()), 1),
            "per_stage": {**{f"pseudo_labels/{k}": v for k, v in pseudo_seconds.items()}, **stages}}


def headline_metrics(summary: dict) -> dict[str, dict]:
    """The benchmark's metric files by name: each pipeline of the image-level regime, its mean
    test mIoU with CRF (`miou`) and without (`miou_no_crf`) over seeds, and the label sets'
    train mIoU (the whole table is benchmark.json and the CSVs, plain outputs)."""
    files = {}
    for labels, entry in summary["regimes"]["image_labels"].items():
        for method, cell in entry.items():
            if method == "pseudo_labels":
                files[f"{labels}-pseudo_labels"] = {"split": "train", "miou": cell["miou"]}
                continue
            name = method if labels == "single_stage" else f"{labels}-{method}"
            files[name] = {"method": method, "split": "test", "crf": True,
                           "miou": cell["miou_crf_mean"], "miou_no_crf": cell["miou_mean"]}
    return files


def _row(cell: dict) -> list[str]:
    return [f"{cell[k]:.6f}" for k in ("miou_crf_mean", "miou_crf_std", "miou_mean", "miou_std",
                                       "val_miou_crf_mean")] + [str(cell["seeds"])]


def image_labels_csv(summary: dict) -> str:
    """One row per pipeline of the image-level regime: label set, method, the labels' train
    mIoU and the method's test mIoU (mean, std; with CRF first) and val mIoU with CRF."""
    lines = ["pipeline,labels,method,pseudo_labels,miou_crf_mean,miou_crf_std,miou_mean,"
             "miou_std,val_miou_crf_mean,seeds"]
    for labels, entry in summary["regimes"]["image_labels"].items():
        pseudo = entry.get("pseudo_labels", {}).get("miou")
        for method, cell in entry.items():
            if method == "pseudo_labels":
                continue
            pipeline = method if labels == "single_stage" else f"{labels} → {method}"
            lines.append(",".join([pipeline, labels, method,
                                   "" if pseudo is None else f"{pseudo:.6f}", *_row(cell)]))
    return "\n".join(lines) + "\n"


def noise_csv(summary: dict, methods: list[str]) -> str:
    """One row per simulated noise level: the labels' mIoU and each method's test mIoU."""
    header = ["noise", "pseudo_labels"] + [f"{m}{suffix}" for m in methods
                                           for suffix in ("", "_std", "_no_crf")]
    lines = [",".join(header)]
    for key, entry in summary["regimes"]["simulated_noise"].items():
        row = [key, f"{entry['pseudo_labels']['miou']:.6f}"]
        for method in methods:
            cell = entry.get(method)
            row += ["", "", ""] if cell is None else [
                f"{cell['miou_crf_mean']:.6f}", f"{cell['miou_crf_std']:.6f}", f"{cell['miou_mean']:.6f}"]
        lines.append(",".join(row))
    return "\n".join(lines) + "\n"


def plot_benchmark(summary: dict, methods: list[str], path: Path) -> None:
    """Left: each image-level pipeline's test mIoU (CRF, mean ± std over seeds) with its label
    set's train mIoU marked. Right: test mIoU against simulated noise, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, lines) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    names, means, stds, labels_miou = [], [], [], []
    for labels, entry in summary["regimes"]["image_labels"].items():
        for method, cell in entry.items():
            if method == "pseudo_labels":
                continue
            names.append(method if labels == "single_stage" else f"{labels}\n→ {method}")
            means.append(100 * cell["miou_crf_mean"])
            stds.append(100 * cell["miou_crf_std"])
            labels_miou.append(100 * entry["pseudo_labels"]["miou"] if "pseudo_labels" in entry
                               else None)
    x = list(range(len(names)))
    bars.bar(x, means, yerr=stds, capsize=3, color="tab:blue", alpha=0.8, label="test, CRF")
    marked = [(i, v) for i, v in zip(x, labels_miou) if v is not None]
    if marked:
        bars.scatter([i for i, _ in marked], [v for _, v in marked], marker="_", s=900,
                     linewidths=3, color="tab:red", zorder=3, label="its pseudo labels (train)")
    bars.set_xticks(x, names, fontsize=7)
    bars.set_ylabel("mIoU (%)")
    bars.set_title("From image-level labels")
    bars.legend(fontsize=8)
    bars.grid(alpha=0.3, axis="y")
    noise = summary["regimes"]["simulated_noise"]
    keys = list(noise)
    lines.plot([float(k) for k in keys], [100 * noise[k]["pseudo_labels"]["miou"] for k in keys],
               "k--", marker="s", label="pseudo labels (train)")
    for method in methods:
        points = [(float(k), noise[k][method]) for k in keys if method in noise[k]]
        if points:
            lines.errorbar([p[0] for p in points], [100 * p[1]["miou_crf_mean"] for p in points],
                           yerr=[100 * p[1]["miou_crf_std"] for p in points], marker="o",
                           capsize=3, label=f"{method} (test, CRF)")
    lines.set_xlabel("simulated pseudo-label noise (data.noise)")
    lines.set_ylabel("mIoU (%)")
    lines.set_title("Controlled: simulated noise")
    lines.grid(alpha=0.3)
    lines.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_report(grid: BenchmarkParams | None = None, where: BenchmarkPaths = DEFAULT_PATHS,
                 files: ReportFiles = DEFAULT_FILES) -> dict:
    """Gather the cells of the benchmark (`grid`, default robustness/params.yaml; read from
    `where`) into benchmark.json, the CSVs, the headline metric files and the plot (`files`)."""
    grid = grid or load_grid(where)
    sets = [*IMAGE_LABEL_SETS, *(noise_labels(n) for n in grid.noise_levels)]
    scores = {labels: read_json(pseudo_label_scores(labels, where)) for labels in sets}
    pseudo = {labels: report["miou"] for labels, report in scores.items()}
    two_stage = two_stage_method(grid, where)
    wanted = [(m, "cams") for m in grid.pseudo_label_methods]
    wanted += [(two_stage, "dupl_cams")] + [(m, None) for m in grid.image_label_methods]
    wanted += [(m, noise_labels(n)) for n in grid.noise_levels for m in grid.pseudo_label_methods]
    cells = [read_json(cell_result_path(method, labels, seed, where))
             for method, labels in wanted for seed in grid.seeds]
    for cell in cells:
        if cell["labels"] == "dupl_cams" and cell["method"] != two_stage:  # trained before a change
            raise DataError(cell_result_path(two_stage, "dupl_cams", cell["seed"], where),
                            f"trained {cell['method']}, but benchmark.two_stage_method picks "
                            f"{two_stage} now (rerun the run_dupl_cams stage)")
    summary = summarize(cells, pseudo)
    summary["two_stage_method"] = two_stage
    summary["wall_time_s"] = benchmark_wall_time(
        cells, {labels: report.get("wall_time_s", 0.0) for labels, report in scores.items()}, where)
    write_json(files.json, summary)
    for name, headline in headline_metrics(summary).items():
        write_json(files.metrics_dir / f"{name}.json", headline)
    write_text(files.csv, image_labels_csv(summary))
    write_text(files.noise_csv, noise_csv(summary, grid.pseudo_label_methods))
    plot_benchmark(summary, grid.pseudo_label_methods, files.plot)
    return summary

