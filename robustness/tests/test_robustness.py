"""The benchmark: the summary table by hand, the choice of the two-stage method on val, and a
tiny benchmark end to end with `dvc repro robustness/dvc.yaml` in a throwaway clone (the CI
smoke test of the benchmark)."""
import json
import math

import pytest
import yaml

from robustness import cells
from robustness.cells import (
    BenchmarkPaths,
    cell_name,
    cell_result_path,
    check_labels,
    two_stage_method,
)
from robustness.config import BenchmarkParams, load_benchmark_params
from robustness.report import (
    benchmark_wall_time,
    headline_metrics,
    image_labels_csv,
    noise_csv,
    summarize,
)
from tests.conftest import REPO, copy_repo
from tests.test_pipeline import dvc, ran, sh
from wsss_core.errors import ConfigError, DataError
from wsss_core.io import write_json


def _cell(method, labels, seed, miou, miou_crf, val_crf=0.5):
    return {"method": method, "labels": labels, "seed": seed, "miou": miou, "miou_crf": miou_crf,
            "val_miou_crf": val_crf}


def test_summary_shape_means_and_spreads():
    cells = [_cell("baseline", "cams", 0, 0.50, 0.60, 0.7), _cell("baseline", "cams", 1, 0.60, 0.64, 0.5),
             _cell("cdl_b", "cams", 0, 0.40, 0.45),
             _cell("baseline", "dupl_cams", 0, 0.30, 0.35),
             _cell("dupl", None, 0, 0.30, 0.40), _cell("dupl", None, 1, 0.34, 0.40),
             _cell("baseline", "noise0.75", 0, 0.20, 0.25), _cell("baseline", "noise0.5", 0, 0.70, 0.72)]
    pseudo = {"cams": 0.55, "dupl_cams": 0.42, "noise0.75": 0.57, "noise0.5": 0.69}
    summary = summarize(cells, pseudo)
    assert summary["split"] == "test"
    image, noise = summary["regimes"]["image_labels"], summary["regimes"]["simulated_noise"]
    assert list(image) == ["cams", "dupl_cams", "single_stage"]
    assert list(noise) == ["0.5", "0.75"]  # sorted by level
    assert image["cams"]["pseudo_labels"] == {"miou": 0.55}
    base = image["cams"]["baseline"]
    assert base["miou_mean"] == pytest.approx(0.55)
    assert base["miou_std"] == pytest.approx(math.sqrt(2 * 0.05 ** 2))  # sample std, ddof 1
    assert base["miou_crf_mean"] == pytest.approx(0.62)
    assert base["miou_crf_std"] == pytest.approx(math.sqrt(2 * 0.02 ** 2))
    assert base["val_miou_crf_mean"] == pytest.approx(0.6) and base["seeds"] == 2
    assert set(base) == {"miou_mean", "miou_std", "miou_crf_mean", "miou_crf_std",
                         "val_miou_crf_mean", "seeds"}
    assert image["cams"]["cdl_b"]["miou_std"] == 0.0 and image["cams"]["cdl_b"]["seeds"] == 1
    assert "pseudo_labels" not in image["single_stage"]
    assert image["single_stage"]["dupl"]["miou_mean"] == pytest.approx(0.32)
    assert image["single_stage"]["dupl"]["miou_crf_std"] == 0.0
    assert noise["0.75"] == {"pseudo_labels": {"miou": 0.57}, "baseline": {
        "miou_mean": 0.20, "miou_std": 0.0, "miou_crf_mean": 0.25, "miou_crf_std": 0.0,
        "val_miou_crf_mean": 0.5, "seeds": 1}}

    headline = headline_metrics(summary)
    assert set(headline) == {"cams-pseudo_labels", "cams-baseline", "cams-cdl_b",
                             "dupl_cams-pseudo_labels", "dupl_cams-baseline", "dupl"}
    assert headline["cams-baseline"] == {"method": "baseline", "split": "test", "crf": True,
                                         "miou": pytest.approx(0.62), "miou_no_crf": pytest.approx(0.55)}
    rows = image_labels_csv(summary).splitlines()
    assert rows[0].startswith("pipeline,labels,method,pseudo_labels,miou_crf_mean")
    assert rows[1] == "cams → baseline,cams,baseline,0.550000,0.620000,0.028284,0.550000,0.070711,0.600000,2"
    assert rows[-1].startswith("dupl,single_stage,dupl,,0.400000,0.000000,0.320000")
    lines = noise_csv(summary, ["baseline", "cdl_b"]).splitlines()
    assert lines[0] == "noise,pseudo_labels,baseline,baseline_std,baseline_no_crf,cdl_b,cdl_b_std,cdl_b_no_crf"
    assert lines[1] == "0.5,0.690000,0.720000,0.000000,0.700000,,,"


def test_wall_time_counts_side_by_side_cells_once():
    def cell(method, labels, seed, start, end):
        return {"method": method, "labels": labels, "seed": seed, "started_at": start,
                "finished_at": end, "wall_time_s": end - start}
    cells = [cell("baseline", "cams", 0, 100.0, 160.0), cell("baseline", "cams", 1, 100.5, 170.0),
             cell("baseline", "noise0.5", 0, 180.0, 200.0),
             cell("dupl", None, 0, 300.0, 390.0), cell("dupl", None, 1, 300.0, 400.0)]
    times = benchmark_wall_time(cells, {"cams": 40.0, "noise0.5": 2.5})
    assert times["cells"] == 5 and times["cells_sum"] == 60.0 + 69.5 + 20.0 + 90.0 + 100.0
    assert times["run_stages"] == 70.0 + 20.0 + 100.0 and times["pseudo_label_stages"] == 42.5
    assert times["per_stage"]["metrics/robustness/cams/baseline"] == 70.0


def test_cell_names_match_the_dvc_matrix_outputs():
    # robustness/dvc.yaml names files with DVC's rendering of the YAML floats
    assert cell_name("cdl_b", "noise0.25", 2) == "cdl_b-noise0.25-seed2"
    assert cell_name("cdl_b", "cams", 0) == "cdl_b-cams-seed0"
    assert cell_name("dupl", None, 2) == "dupl-seed2"
    assert cell_result_path("cdl_b", "noise0.25", 2).as_posix() == "metrics/robustness/runs/cdl_b-noise0.25/seed2.json"
    assert cell_result_path("cdl_e", "cams", 1).as_posix() == "metrics/robustness/cams/cdl_e/seed1.json"
    # the two-stage method is chosen when the stage runs: its folder does not name it
    assert cell_result_path("cdl_b", "dupl_cams", 0).as_posix() == "metrics/robustness/dupl_cams/seed0.json"
    assert cell_result_path("dupl", None, 1).as_posix() == "metrics/robustness/runs/dupl/seed1.json"
    with pytest.raises(ConfigError, match="unknown label set 'noisy'"):
        check_labels("noisy")


def test_two_stage_method_is_the_best_on_val_of_the_cam_label_cells(tmp_path):
    grid = load_benchmark_params(REPO / "robustness/params.yaml", overrides={"benchmark.pseudo_label_methods": ["baseline", "cdl_b"],
                                            "benchmark.seeds": [0, 1],
                                            "benchmark.two_stage_method": "best"})
    where = BenchmarkPaths(results=tmp_path / "results")   # the results root is an argument
    with pytest.raises(DataError, match="cams/baseline/seed0.json: not found"):
        two_stage_method(grid, where)
    # baseline: mean val 0.55, test 0.9; cdl_b: mean val 0.60, test 0.1 → cdl_b (val decides)
    for method, seed, val, test in (("baseline", 0, 0.5, 0.9), ("baseline", 1, 0.6, 0.9),
                                    ("cdl_b", 0, 0.7, 0.1), ("cdl_b", 1, 0.5, 0.1)):
        write_json(cell_result_path(method, "cams", seed, where), {"val_miou_crf": val, "miou_crf": test})
    assert cell_result_path("cdl_b", "cams", 1, where) == tmp_path / "results/cams/cdl_b/seed1.json"
    assert two_stage_method(grid, where) == "cdl_b"
    grid.two_stage_method = "baseline"
    assert two_stage_method(grid, where) == "baseline"


def test_cells_and_label_sets_run_with_the_benchmarks_thread_counts(tmp_path, monkeypatch):
    # the thread budgets are arguments of the pipeline functions (no environment variable):
    # each cell's training and inference get benchmark.threads, the CAM label sets' classifier
    # and CAMs benchmark.source_threads
    calls = []

    def record(name, result=None):
        def fake(params, paths, *args, threads="not passed", **kwargs):
            calls.append((name, threads))
            if name == "train_cam_classifier":
                paths.classifier.mkdir(parents=True)
            if name == "score_pseudo_labels":
                write_json(kwargs["out"], {"miou": 0.5})
            return result
        return fake

    monkeypatch.setattr(cells, "run_training", record("run_training", {
        "iterations": 1, "effective_batch": 2, "wall_time_s": 0.1}))
    monkeypatch.setattr(cells, "run_inference", record("run_inference", {"miou": 0.4}))
    monkeypatch.setattr(cells, "run_crf", record("run_crf", {"miou": 0.45}))
    monkeypatch.setattr(cells, "train_cam_classifier", record("train_cam_classifier"))
    monkeypatch.setattr(cells, "compute_cams", record("compute_cams"))
    monkeypatch.setattr(cells, "publish_pseudo_labels", record("publish_pseudo_labels"))
    monkeypatch.setattr(cells, "score_pseudo_labels", record("score_pseudo_labels"))
    where = BenchmarkPaths(params=REPO / "params.yaml", root=tmp_path / "repo",
                           pseudo_labels=tmp_path / "labels", work=tmp_path / "work",
                           results=tmp_path / "results")
    grid = BenchmarkParams(threads=3, source_threads=5)

    report = cells.make_pseudo_labels("cams", grid, where)
    assert report["miou"] == 0.5 and (tmp_path / "results/pseudo_labels/cams.json").is_file()
    assert calls == [("train_cam_classifier", 5), ("compute_cams", 5),
                     ("publish_pseudo_labels", "not passed"), ("score_pseudo_labels", "not passed")]
    assert not (tmp_path / "work/labels-cams").exists()

    calls.clear()
    (tmp_path / "repo/data/prepared/synthetic").mkdir(parents=True)
    (tmp_path / "labels/cams").mkdir(parents=True)
    result = cells.run_cell("baseline", "cams", 0, grid, where)
    assert calls == [("run_training", 3), ("run_inference", 3), ("run_inference", 3),
                     ("run_crf", "not passed"), ("run_crf", "not passed")]
    assert (result["miou"], result["miou_crf"]) == (0.4, 0.45)
    assert cell_result_path("baseline", "cams", 0, where).is_file()


@pytest.mark.slow
def test_tiny_benchmark_end_to_end(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["synthetic"].update({"num_train": 8, "num_val": 3, "num_test": 3,
                                        "min_size": 40, "max_size": 48})
    tiny = {"iterations": 2, "batch_size": 2, "crop": 40, "checkpoint_every": 2, "log_every": 1}
    params["train"].update(tiny)
    params["pseudo_labels"]["classifier"].update(tiny)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    benchmark = yaml.safe_load((repo / "robustness/params.yaml").read_text())
    benchmark["benchmark"].update({"noise_levels": [0.5], "seeds": [0]})
    (repo / "robustness/params.yaml").write_text(yaml.safe_dump(benchmark, sort_keys=False))
    sh(repo, "git", "init", "-q")
    dvc(repo, "init", "-q")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "init")

    stages = ran(dvc(repo, "repro", "robustness/dvc.yaml"))
    pipeline = "robustness/dvc.yaml:"
    assert {"prepare_data", *(pipeline + s for s in (
        "pseudo_labels@0.5", "image_label_pseudo_labels@cams", "image_label_pseudo_labels@dupl_cams",
        "run@baseline-0.5", "run@cdl_b-0.5", "run@cdl_e-0.5", "run_cams@baseline", "run_cams@cdl_b",
        "run_cams@cdl_e", "run_dupl_cams", "run_image_labels@dupl", "report"))} <= stages
    assert "train" not in stages  # the benchmark does not touch the demo pipeline's outputs

    summary = json.loads((repo / "metrics/benchmark.json").read_text())
    assert summary["split"] == "test" and summary["two_stage_method"] in ("baseline", "cdl_b", "cdl_e")
    image = summary["regimes"]["image_labels"]
    assert set(image["cams"]) == {"pseudo_labels", "baseline", "cdl_b", "cdl_e"}
    assert set(image["dupl_cams"]) == {"pseudo_labels", summary["two_stage_method"]}
    assert set(image["single_stage"]) == {"dupl"}
    assert list(summary["regimes"]["simulated_noise"]) == ["0.5"]
    for entry in [*image.values(), *summary["regimes"]["simulated_noise"].values()]:
        for name, cell in entry.items():
            if name == "pseudo_labels":
                assert 0.0 < cell["miou"] < 1.0
                continue
            assert cell["seeds"] == 1 and cell["miou_std"] == 0.0
            for key in ("miou_mean", "miou_crf_mean", "val_miou_crf_mean"):
                assert 0.0 <= cell[key] <= 1.0
    assert (repo / "metrics/benchmark.csv").read_text().startswith("pipeline,labels,method")
    assert (repo / "metrics/benchmark_noise.csv").read_text().startswith("noise,pseudo_labels,baseline")
    assert (repo / "metrics/plots/benchmark.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((repo / "metrics/benchmark/cams-baseline.json").read_text())["split"] == "test"
    assert not any((repo / "data/robustness/work").iterdir())  # finished cells leave no workspace

    # a second seed reruns only the stages whose cells change, its two seeds side by side
    benchmark["benchmark"].update({"seeds": [0, 1], "pseudo_label_methods": ["baseline"]})
    (repo / "robustness/params.yaml").write_text(yaml.safe_dump(benchmark, sort_keys=False))
    again = ran(dvc(repo, "repro", "robustness/dvc.yaml"))
    assert again == {pipeline + s for s in ("run@baseline-0.5", "run_cams@baseline", "run_dupl_cams",
                                             "run_image_labels@dupl", "report")}
    summary = json.loads((repo / "metrics/benchmark.json").read_text())
    assert summary["two_stage_method"] == "baseline"
    assert summary["regimes"]["image_labels"]["cams"]["baseline"]["seeds"] == 2
    assert "cdl_b" not in summary["regimes"]["image_labels"]["cams"]
    times = summary["wall_time_s"]
    assert times["cells"] == 8 and 0 < times["run_stages"] <= times["cells_sum"]


def test_a_stage_keeps_its_cells_workspaces_until_every_seed_has_finished(tmp_path, monkeypatch):
    # DVC clears a rerun stage's result files, so a finished cell must still have its final
    # checkpoint when an interrupted or failed stage runs again: only the stage's end removes it
    grid = BenchmarkParams(seeds=[0, 1], jobs=1)
    where = BenchmarkPaths(work=tmp_path / "work", results=tmp_path / "results")
    failing = {1}

    def fake_cell(method, labels, seed, grid, where):
        workspace = where.work / cell_name(method, labels, seed)
        workspace.mkdir(parents=True, exist_ok=True)
        (workspace / "checkpoint.pth").write_bytes(b"state")
        if seed in failing:
            raise RuntimeError(f"seed {seed} interrupted")
        return {"seed": seed}

    monkeypatch.setattr(cells, "run_cell", fake_cell)
    with pytest.raises(RuntimeError, match="seed 1 interrupted"):
        cells.run_cells("baseline", "cams", grid, where)
    for seed in (0, 1):
        assert (tmp_path / "work" / f"baseline-cams-seed{seed}/checkpoint.pth").is_file()
    failing.clear()
    assert cells.run_cells("baseline", "cams", grid, where) == [{"seed": 0}, {"seed": 1}]
    assert not any((tmp_path / "work").iterdir())
