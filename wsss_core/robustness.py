"""The benchmark: every method from the same labels, pretrained demo init, seeds, held-out test.

The benchmark is its own DVC pipeline (`robustness/dvc.yaml`, run with `dvc repro
robustness/dvc.yaml`) whose matrix stages call the functions here. A cell is one method trained
on one label set with one seed; its label set (`labels`) is one of

* `cams`: CAM pseudo labels from image-level labels (the CAM classifier of `pseudo_labels.source:
  cams`, its CAMs, `pseudo_labels.refine`); the image-level regime, the headline;
* `dupl_cams`: a DuPL student's CAM pseudo labels (`pseudo_labels.source: dupl`), the two-stage
  DuPL → segmentation network pipeline, trained with `benchmark.two_stage_method`;
* `noise<level>`: the synthetic GT corrupted at a simulated noise level, the controlled regime;
* None: the method learns from image-level labels alone (DuPL single-stage).

* `make_pseudo_labels(labels)` makes and scores one label set in
  `data/robustness/pseudo_labels/<labels>/` (the same pipeline functions as the demo stages).
* `run_cell(method, labels, seed)` runs the ordinary pipeline (train → infer → CRF on val and
  test) for one cell: the repository's params with the cell's method, seed (and noise), one
  process with `benchmark.threads` CPU threads, writing into its own folder
  `data/robustness/work/<cell>/`. Only its scores are kept (`cell_result_path`); the folder goes
  when the cell's stage has finished, so an interrupted stage resumes its cells from their
  checkpoints.
* `run_cells(method, labels)` is one DVC stage: the cells of every benchmark seed,
  `benchmark.jobs` of them side by side in worker processes (small CPU models scale poorly with
  threads, so parallel 1-thread cells finish sooner than 2-thread cells in turn).

The report (`wsss_core.robustness_report`) gathers the cells into metrics/benchmark.json.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from .config import Params, load_params
from .errors import ConfigError, DataError
from .io import read_json, write_json
from .paths import RunPaths
from .registry import get_method

PSEUDO_DIR = Path("data/robustness/pseudo_labels")
WORK_DIR = Path("data/robustness/work")
RESULTS_DIR = Path("metrics/robustness")
# label sets learnt from image-level labels → the pseudo_labels.source that makes them
IMAGE_LABEL_SETS = {"cams": "cams", "dupl_cams": "dupl"}


def uses_pseudo_labels(method: str) -> bool:
    """Whether `method` trains on the pseudo labels (DeepLab family) or on image-level labels
    only (DuPL), as its registry record says."""
    return get_method(method).uses_pseudo_labels


def level_key(noise: float) -> str:
    """The noise level as the string DVC puts in stage and file names: 0.5 → "0.5"."""
    return str(float(noise))


def noise_labels(noise: float) -> str:
    """The label set of a simulated noise level: 0.5 → "noise0.5"."""
    return f"noise{level_key(noise)}"


def labels_noise(labels: str | None) -> float | None:
    """The noise level of a simulated label set, None for the others."""
    return float(labels[len("noise"):]) if labels and labels.startswith("noise") else None


def check_labels(labels: str | None) -> None:
    if labels is None or labels in IMAGE_LABEL_SETS:
        return
    try:
        if labels_noise(labels) is not None:
            return
    except ValueError:
        pass
    raise ConfigError(f"robustness: unknown label set '{labels}' (cams, dupl_cams or noise<level>)")


def cell_name(method: str, labels: str | None, seed: int) -> str:
    if labels is None or not uses_pseudo_labels(method):
        return f"{method}-seed{seed}"
    return f"{method}-{labels}-seed{seed}"


def group_dir(method: str | None, labels: str | None) -> Path:
    """The results folder of one stage (its seeds' files): runs/<method>-noise<l> and
    runs/<method> (single-stage), cams/<method>, and dupl_cams (whose method is chosen when it
    runs, so the folder does not name it)."""
    if labels == "dupl_cams":
        return RESULTS_DIR / "dupl_cams"
    if labels == "cams":
        return RESULTS_DIR / "cams" / method
    if labels is None or not uses_pseudo_labels(method):
        return RESULTS_DIR / "runs" / method
    return RESULTS_DIR / "runs" / f"{method}-{labels}"


def cell_result_path(method: str | None, labels: str | None, seed: int) -> Path:
    return group_dir(method, labels) / f"seed{seed}.json"


def pseudo_label_folder(labels: str) -> Path:
    return PSEUDO_DIR / labels


def pseudo_label_scores(labels: str) -> Path:
    return RESULTS_DIR / "pseudo_labels" / f"{labels}.json"


def benchmark_params(overrides: dict | None = None) -> Params:
    """params.yaml for the benchmark: the synthetic data with its held-out test split."""
    params = load_params(overrides={"pseudo_labels.source": "simulate", **(overrides or {})})
    if params.dataset != "synthetic":
        raise ConfigError("params.yaml: dataset: the benchmark needs 'synthetic' (its simulated "
                          "noise is drawn on the synthetic GT, and it reports on its test split)")
    if params.data.synthetic.num_test < 1:
        raise ConfigError("params.yaml: data.synthetic.num_test: the benchmark reports on the test "
                          "split, which needs at least one image")
    return params


def make_pseudo_labels(labels: str) -> dict:
    """Make and score one label set: simulate a noise level on the train GT, or train the CAM
    classifier (method cam) or DuPL on the image-level labels, store its CAMs and refine them
    (the demo's cam_classifier → cams → pseudo_labels stages, in a scratch folder)."""
    from .pipeline import (
        compute_cams,
        publish_pseudo_labels,
        score_pseudo_labels,
        train_cam_classifier,
    )

    check_labels(labels)
    started = time.time()
    out = pseudo_label_scores(labels)
    noise = labels_noise(labels)
    if noise is not None:
        params = benchmark_params({"data.noise": noise})
        paths = dataclasses.replace(RunPaths.defaults(params), pseudo_labels=pseudo_label_folder(labels))
        publish_pseudo_labels(params, paths)
        report = score_pseudo_labels(params, paths, out=out)
    else:
        params = benchmark_params({"pseudo_labels.source": IMAGE_LABEL_SETS[labels],
                                   "pseudo_labels.classifier.nproc": 1})
        work = WORK_DIR / f"labels-{labels}"
        paths = dataclasses.replace(RunPaths.defaults(params), classifier=work / "classifier",
                                    cams=work / "cams", pseudo_labels=pseudo_label_folder(labels))
        os.environ["WSSS_CPU_THREADS"] = str(params.benchmark.source_threads)
        train_cam_classifier(params, paths)
        compute_cams(params, paths)
        publish_pseudo_labels(params, paths)
        report = score_pseudo_labels(params, paths, out=out)
        shutil.rmtree(work)
    # the headline file score_pseudo_labels wrote (its per-class IoU and context figures are
    # beside it), with the time the label set took
    report = {**read_json(out), "wall_time_s": round(time.time() - started, 1)}
    write_json(out, report)
    return report


def _cell_params(method: str, labels: str | None, seed: int) -> Params:
    """params of a cell: the repository's, with the cell's method, seed (and noise), one process
    (side-by-side cells already fill the cores), no CRF overlays, and its own trained model
    scored (never a released checkpoint named by infer.weights)."""
    overrides = {"method": method, "seed": int(seed), "train.nproc": 1, "infer.nproc": 1,
                 "crf.overlays": 0, "infer.weights": ""}
    if labels_noise(labels) is not None:
        overrides["data.noise"] = labels_noise(labels)
    return benchmark_params(overrides)


def cell_paths(params: Params, method: str, labels: str | None, seed: int) -> RunPaths:
    """A cell reads the shared prepared data and its label set, and writes its model, logits,
    predictions and metrics into its own scratch folder (kept only while the cell is
    unfinished: its checkpoints resume it)."""
    work = WORK_DIR / cell_name(method, labels, seed)
    defaults = RunPaths.defaults(params)
    return dataclasses.replace(
        defaults, model_dir=work / "model", logits=work / "logits",
        predictions=work / "predictions", metrics=work / "metrics",
        pseudo_labels=pseudo_label_folder(labels) if uses_pseudo_labels(method) and labels
        else defaults.pseudo_labels)


def run_cell(method: str, labels: str | None, seed: int) -> dict:
    """Train one cell, infer and CRF val and test; returns (and writes) its scores: test
    (`miou`, `miou_crf`: what the benchmark reports) and val (`val_miou`, `val_miou_crf`: where
    things are chosen)."""
    from .pipeline import run_crf, run_inference, run_training

    check_labels(labels)
    if uses_pseudo_labels(method) and labels is None:
        raise ConfigError(f"robustness: method '{method}' needs a label set (--noise or --labels)")
    if not uses_pseudo_labels(method):
        labels = None  # DuPL never reads pseudo labels
    cell = _cell_params(method, labels, seed)
    paths = cell_paths(cell, method, labels, seed)
    if not paths.prepared.is_dir():
        raise DataError(paths.prepared, "prepared dataset not found (run the prepare_data stage)")
    if labels is not None and not paths.pseudo_labels.is_dir():
        raise DataError(paths.pseudo_labels, "pseudo labels not found (run the robustness "
                                             "pseudo-label stage of this label set)")
    # the cell's thread count is the benchmark's, whoever runs it (a worker of run_cells, or
    # `stages/robustness.py run --seed k`): `distributed()` reads this budget
    os.environ["WSSS_CPU_THREADS"] = str(cell.benchmark.threads)
    started = time.time()
    summary = run_training(cell, paths)
    val = run_inference(cell, paths, "val")  # first: DuPL's student is chosen on val
    test = run_inference(cell, paths, "test")
    val_crf = run_crf(cell, paths, "val")
    test_crf = run_crf(cell, paths, "test")
    finished = time.time()
    result = {
        "method": method, "labels": labels, "noise": labels_noise(labels), "seed": int(seed),
        "uses_pseudo_labels": uses_pseudo_labels(method), "split": "test",
        "miou": test["miou"], "miou_crf": test_crf["miou"],
        "val_miou": val["miou"], "val_miou_crf": val_crf["miou"],
        "iterations": summary["iterations"], "effective_batch": summary["effective_batch"],
        "train_wall_time_s": summary["wall_time_s"],
        "wall_time_s": round(finished - started, 1),
        "started_at": round(started, 1), "finished_at": round(finished, 1),
    }
    for key in ("predictor", "predictors_miou", "cam_miou"):  # DuPL's two students (val)
        if key in val:
            result[key] = val[key]
    write_json(cell_result_path(method, labels, seed), result)
    return result


def remove_workspaces(method: str, labels: str | None, seeds: list[int]) -> None:
    """Drop the cells' workspaces once their stage has finished. Until then a finished cell keeps
    its last checkpoint, so an interrupted stage (whose result files DVC clears before it reruns)
    repeats only that cell's inference and CRF, not its training."""
    for seed in seeds:
        shutil.rmtree(WORK_DIR / cell_name(method, labels, seed), ignore_errors=True)


def two_stage_method(params: Params | None = None) -> str:
    """The method trained on DuPL's CAM pseudo labels: `benchmark.two_stage_method`, or with
    `best` the pseudo-label method with the best mean val mIoU (CRF) on the CAM pseudo labels;
    val only, so the test numbers it is reported with played no part."""
    grid = (params or benchmark_params()).benchmark
    if grid.two_stage_method != "best":
        return grid.two_stage_method
    scores = {}
    for method in grid.pseudo_label_methods:
        values = []
        for seed in grid.seeds:
            path = cell_result_path(method, "cams", seed)
            if not path.is_file():
                raise DataError(path, "not found: benchmark.two_stage_method 'best' picks on the "
                                      "CAM-label cells (run the run_cams stages first)")
            values.append(read_json(path)["val_miou_crf"])
        scores[method] = sum(values) / len(values)
    return max(grid.pseudo_label_methods, key=lambda m: scores[m])  # first of equals


def _quiet_worker() -> None:
    """Worker initialiser: no progress bars (interleaved bars of side-by-side cells are
    unreadable)."""
    os.environ["WSSS_NO_PROGRESS"] = "1"


def _run_cell_in_worker(method: str, labels: str | None, seed: int) -> dict:
    try:
        return run_cell(method, labels, seed)
    finally:
        # the CRF's joblib workers idle for minutes before they exit, and a worker process
        # waits for its children when it exits: stop them now
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)


def resolve_method(method: str | None, labels: str | None) -> str:
    """The method a run command trains: `method`, or for dupl_cams without one the two-stage
    method (`two_stage_method`)."""
    if method is not None:
        return method
    if labels != "dupl_cams":
        raise ConfigError("robustness: --method is needed except with --labels dupl_cams")
    method = two_stage_method()
    print(f"dupl_cams: training {method} (benchmark.two_stage_method: "
          f"{benchmark_params().benchmark.two_stage_method})", flush=True)
    return method


def run_cells(method: str | None, labels: str | None) -> list[dict]:
    """Every benchmark seed of `method` on `labels` (method None: dupl_cams' two-stage method),
    `benchmark.jobs` cells at a time. Each cell writes its result when it finishes and keeps its
    workspace until the whole stage is done, so a rerun after a failure or an interruption resumes
    every cell from its checkpoints; the first failure is raised once all are done."""
    grid = benchmark_params().benchmark
    method = resolve_method(method, labels)
    seeds = list(grid.seeds)
    jobs = min(grid.jobs, len(seeds))
    if jobs == 1:
        results = [run_cell(method, labels, seed) for seed in seeds]
    else:
        results, failures = [], []
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_quiet_worker) as pool:
            futures = [pool.submit(_run_cell_in_worker, method, labels, seed) for seed in seeds]
            for future in futures:
                try:
                    results.append(future.result())
                except Exception as exc:  # noqa: BLE001 - re-raised below, after the other seeds
                    failures.append(exc)
        if failures:
            raise failures[0]  # every workspace stays: the rerun resumes each cell
    remove_workspaces(method, labels, seeds)
    return results
