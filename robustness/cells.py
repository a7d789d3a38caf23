"""The benchmark's cells: every method from the same labels, demo init, seeds, held-out test.

The benchmark is its own DVC pipeline (`robustness/dvc.yaml`, run with `dvc repro
robustness/dvc.yaml`; params: `benchmark` of robustness/params.yaml, the rest of params.yaml)
whose matrix stages call the functions here. A cell is one method trained on one label set with
one seed; its label set (`labels`) is one of

* `cams`: CAM pseudo labels from image-level labels (the CAM classifier of `pseudo_labels.source:
  cams`, its CAMs, `pseudo_labels.refine`); the image-level regime, the headline;
* `dupl_cams`: a DuPL student's CAM pseudo labels (`pseudo_labels.source: dupl`), the two-stage
  DuPL → segmentation network pipeline, trained with `benchmark.two_stage_method`;
* `noise<level>`: the synthetic GT corrupted at a simulated noise level, the controlled regime;
* None: the method learns from image-level labels alone (DuPL single-stage).

* `make_pseudo_labels(labels)` makes and scores one label set in
  `data/robustness/pseudo_labels/<labels>/` (the same pipeline functions as the demo stages,
  with `benchmark.source_threads` CPU threads).
* `run_cell(method, labels, seed)` runs the ordinary pipeline (train → infer → CRF on val and
  test) for one cell: the repository's params with the cell's method, seed (and noise), one
  process with `benchmark.threads` CPU threads, writing into its own folder
  `data/robustness/work/<cell>/`. Only its scores are kept (`cell_result_path`); the folder goes
  when the cell's stage has finished, so an interrupted stage resumes its cells from their
  checkpoints.
* `run_cells(method, labels)` is one DVC stage: the cells of every benchmark seed,
  `benchmark.jobs` of them side by side in worker processes (small CPU models scale poorly with
  threads, so parallel 1-thread cells finish sooner than 2-thread cells in turn).

Every function takes the benchmark's params (`grid`, default: read from robustness/params.yaml)
and its files and folders (`where`, a `BenchmarkPaths`; default: the repository layout) as
arguments, so a test can point them elsewhere. The report (`robustness.report`) gathers the
cells into metrics/benchmark.json.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from wsss_core.config import PARAMS_FILE, Params, load_params
from wsss_core.errors import ConfigError, DataError
from wsss_core.io import read_json, write_json
from wsss_core.methods.registry import get_method
from wsss_core.pipeline.cam_classifier import train_cam_classifier
from wsss_core.pipeline.cams import compute_cams
from wsss_core.pipeline.crf import run_crf
from wsss_core.pipeline.evaluate import score_pseudo_labels
from wsss_core.pipeline.infer import run_inference
from wsss_core.pipeline.paths import RunPaths
from wsss_core.pipeline.pseudo_labels import publish_pseudo_labels
from wsss_core.pipeline.train import run_training

from .config import PARAMS_FILE as BENCHMARK_PARAMS_FILE
from .config import BenchmarkParams, load_benchmark_params

# label sets learnt from image-level labels → the pseudo_labels.source that makes them
IMAGE_LABEL_SETS = {"cams": "cams", "dupl_cams": "dupl"}


@dataclass(frozen=True)
class BenchmarkPaths:
    """The files the benchmark reads and the folders it writes (relative to the working
    directory, the repository root in the DVC stages)."""

    params: Path = Path(PARAMS_FILE)                     # the product's params.yaml
    # root of the demo pipeline's layout (`RunPaths.defaults`): the shared prepared data
    root: Path = Path(".")
    benchmark_params: Path = BENCHMARK_PARAMS_FILE       # robustness/params.yaml
    pseudo_labels: Path = Path("data/robustness/pseudo_labels")   # the label sets
    work: Path = Path("data/robustness/work")            # unfinished cells' workspaces
    results: Path = Path("metrics/robustness")           # the cells' and label sets' scores


DEFAULT_PATHS = BenchmarkPaths()


def load_grid(where: BenchmarkPaths = DEFAULT_PATHS) -> BenchmarkParams:
    """`benchmark` of robustness/params.yaml (`where.benchmark_params`)."""
    return load_benchmark_params(where.benchmark_params)


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


def group_dir(method: str | None, labels: str | None, where: BenchmarkPaths = DEFAULT_PATHS) -> Path:
    """The results folder of one stage (its seeds' files): runs/<method>-noise<l> and
    runs/<method> (single-stage), cams/<method>, and dupl_cams (whose method is chosen when it
    runs, so the folder does not name it)."""
    results = where.results
    if labels == "dupl_cams":
        return results / "dupl_cams"
    if labels == "cams":
        return results / "cams" / method
    if labels is None or not uses_pseudo_labels(method):
        return results / "runs" / method
    return results / "runs" / f"{method}-{labels}"


def cell_result_path(method: str | None, labels: str | None, seed: int,
                     where: BenchmarkPaths = DEFAULT_PATHS) -> Path:
    return group_dir(method, labels, where) / f"seed{seed}.json"


def pseudo_label_folder(labels: str, where: BenchmarkPaths = DEFAULT_PATHS) -> Path:
    return where.pseudo_labels / labels


def pseudo_label_scores(labels: str, where: BenchmarkPaths = DEFAULT_PATHS) -> Path:
    return where.results / "pseudo_labels" / f"{labels}.json"


def benchmark_params(overrides: dict | None = None, where: BenchmarkPaths = DEFAULT_PATHS) -> Params:
    """params.yaml (`where.params`) for the benchmark: the synthetic data with its held-out test
    split, `overrides` (dotted keys) applied."""
    params = load_params(where.params, {"pseudo_labels.source": "simulate", **(overrides or {})})
    if params.dataset != "synthetic":
        raise ConfigError(f"{where.params}: dataset: the benchmark needs 'synthetic' (its simulated "
                          "noise is drawn on the synthetic GT, and it reports on its test split)")
    if params.data.synthetic.num_test < 1:
        raise ConfigError(f"{where.params}: data.synthetic.num_test: the benchmark reports on the "
                          "test split, which needs at least one image")
    return params


def make_pseudo_labels(labels: str, grid: BenchmarkParams | None = None,
                       where: BenchmarkPaths = DEFAULT_PATHS) -> dict:
    """Make and score one label set: simulate a noise level on the train GT, or train the CAM
    classifier (method cam) or DuPL on the image-level labels with `grid.source_threads` CPU
    threads, store its CAMs and refine them (the demo's cam_classifier → cams → pseudo_labels
    stages, in a scratch folder)."""
    check_labels(labels)
    started = time.time()
    out = pseudo_label_scores(labels, where)
    noise = labels_noise(labels)
    if noise is not None:
        params = benchmark_params({"data.noise": noise}, where)
        paths = dataclasses.replace(RunPaths.defaults(params, where.root),
                                    pseudo_labels=pseudo_label_folder(labels, where))
        publish_pseudo_labels(params, paths)
        score_pseudo_labels(params, paths, out=out)
    else:
        threads = (grid or load_grid(where)).source_threads
        params = benchmark_params({"pseudo_labels.source": IMAGE_LABEL_SETS[labels],
                                   "pseudo_labels.classifier.nproc": 1}, where)
        work = where.work / f"labels-{labels}"
        paths = dataclasses.replace(RunPaths.defaults(params, where.root),
                                    classifier=work / "classifier", cams=work / "cams",
                                    pseudo_labels=pseudo_label_folder(labels, where))
        train_cam_classifier(params, paths, threads=threads)
        compute_cams(params, paths, threads=threads)
        publish_pseudo_labels(params, paths)
        score_pseudo_labels(params, paths, out=out)
        shutil.rmtree(work)
    # the headline file score_pseudo_labels wrote (its per-class IoU and context figures are
    # beside it), with the time the label set took
    report = {**read_json(out), "wall_time_s": round(time.time() - started, 1)}
    write_json(out, report)
    return report


def _cell_params(method: str, labels: str | None, seed: int, where: BenchmarkPaths) -> Params:
    """params of a cell: the repository's, with the cell's method, seed (and noise), one process
    (side-by-side cells already fill the cores), no CRF overlays, and its own trained model
    scored (never a released checkpoint named by infer.weights)."""
    overrides = {"method": method, "seed": int(seed), "train.nproc": 1, "infer.nproc": 1,
                 "crf.overlays": 0, "infer.weights": ""}
    if labels_noise(labels) is not None:
        overrides["data.noise"] = labels_noise(labels)
    return benchmark_params(overrides, where)


def cell_paths(params: Params, method: str, labels: str | None, seed: int,
               where: BenchmarkPaths = DEFAULT_PATHS) -> RunPaths:
    """A cell reads the shared prepared data and its label set, and writes its model, logits,
    predictions and metrics into its own scratch folder (kept only while the cell is
    unfinished: its checkpoints resume it)."""
    work = where.work / cell_name(method, labels, seed)
    defaults = RunPaths.defaults(params, where.root)
    return dataclasses.replace(
        defaults, model_dir=work / "model", logits=work / "logits",
        predictions=work / "predictions", metrics=work / "metrics",
        pseudo_labels=pseudo_label_folder(labels, where) if uses_pseudo_labels(method) and labels
        else defaults.pseudo_labels)


def run_cell(method: str, labels: str | None, seed: int, grid: BenchmarkParams | None = None,
             where: BenchmarkPaths = DEFAULT_PATHS) -> dict:
    """Train one cell, infer and CRF val and test; returns (and writes) its scores: test
    (`miou`, `miou_crf`: what the benchmark reports) and val (`val_miou`, `val_miou_crf`: where
    things are chosen). The cell's thread count is the benchmark's (`grid.threads`), whoever
    runs it (a worker of run_cells, or `python -m robustness run --seed k`)."""
    check_labels(labels)
    if uses_pseudo_labels(method) and labels is None:
        raise ConfigError(f"robustness: method '{method}' needs a label set (--noise or --labels)")
    if not uses_pseudo_labels(method):
        labels = None  # DuPL never reads pseudo labels
    threads = (grid or load_grid(where)).threads
    cell = _cell_params(method, labels, seed, where)
    paths = cell_paths(cell, method, labels, seed, where)
    if not paths.prepared.is_dir():
        raise DataError(paths.prepared, "prepared dataset not found (run the prepare_data stage)")
    if labels is not None and not paths.pseudo_labels.is_dir():
        raise DataError(paths.pseudo_labels, "pseudo labels not found (run the robustness "
                                             "pseudo-label stage of this label set)")
    started = time.time()
    summary = run_training(cell, paths, threads=threads)
    val = run_inference(cell, paths, "val", threads=threads)  # first: DuPL's student is chosen on val
    test = run_inference(cell, paths, "test", threads=threads)
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
    write_json(cell_result_path(method, labels, seed, where), result)
    return result


def remove_workspaces(method: str, labels: str | None, seeds: list[int],
                      where: BenchmarkPaths = DEFAULT_PATHS) -> None:
    """Drop the cells' workspaces once their stage has finished. Until then a finished cell keeps
    its last checkpoint, so an interrupted stage (whose result files DVC clears before it reruns)
    repeats only that cell's inference and CRF, not its training."""
    for seed in seeds:
        shutil.rmtree(where.work / cell_name(method, labels, seed), ignore_errors=True)


def two_stage_method(grid: BenchmarkParams | None = None, where: BenchmarkPaths = DEFAULT_PATHS) -> str:
    """The method trained on DuPL's CAM pseudo labels: `benchmark.two_stage_method`, or with
    `best` the pseudo-label method with the best mean val mIoU (CRF) on the CAM pseudo labels;
    val only, so the test numbers it is reported with played no part."""
    grid = grid or load_grid(where)
    if grid.two_stage_method != "best":
        return grid.two_stage_method
    scores = {}
    for method in grid.pseudo_label_methods:
        values = []
        for seed in grid.seeds:
            path = cell_result_path(method, "cams", seed, where)
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


def _run_cell_in_worker(method: str, labels: str | None, seed: int, grid: BenchmarkParams,
                        where: BenchmarkPaths) -> dict:
    try:
        return run_cell(method, labels, seed, grid, where)
    finally:
        # the CRF's joblib workers idle for minutes before they exit, and a worker process
        # waits for its children when it exits: stop them now
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)


def resolve_method(method: str | None, labels: str | None, grid: BenchmarkParams | None = None,
                   where: BenchmarkPaths = DEFAULT_PATHS) -> str:
    """The method a run command trains: `method`, or for dupl_cams without one the two-stage
    method (`two_stage_method`)."""
    if method is not None:
        return method
    if labels != "dupl_cams":
        raise ConfigError("robustness: --method is needed except with --labels dupl_cams")
    grid = grid or load_grid(where)
    method = two_stage_method(grid, where)
    print(f"dupl_cams: training {method} (benchmark.two_stage_method: {grid.two_stage_method})",
          flush=True)
    return method


def run_cells(method: str | None, labels: str | None, grid: BenchmarkParams | None = None,
              where: BenchmarkPaths = DEFAULT_PATHS) -> list[dict]:
    """Every benchmark seed of `method` on `labels` (method None: dupl_cams' two-stage method),
    `benchmark.jobs` cells at a time. Each cell writes its result when it finishes and keeps its
    workspace until the whole stage is done, so a rerun after a failure or an interruption resumes
    every cell from its checkpoints; the first failure is raised once all are done."""
    grid = grid or load_grid(where)
    method = resolve_method(method, labels, grid, where)
    seeds = list(grid.seeds)
    jobs = min(grid.jobs, len(seeds))
    if jobs == 1:
        results = [run_cell(method, labels, seed, grid, where) for seed in seeds]
    else:
        results, failures = [], []
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_quiet_worker) as pool:
            futures = [pool.submit(_run_cell_in_worker, method, labels, seed, grid, where)
                       for seed in seeds]
            for future in futures:
                try:
                    results.append(future.result())
                except Exception as exc:  # noqa: BLE001 - re-raised below, after the other seeds
                    failures.append(exc)
        if failures:
            raise failures[0]  # every workspace stays: the rerun resumes each cell
    remove_workspaces(method, labels, seeds, where)
    return results
