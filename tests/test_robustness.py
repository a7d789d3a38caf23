"""The noise-robustness benchmark: the summary table by hand, and a tiny grid end to end with
`dvc repro robustness/dvc.yaml` in a throwaway clone (the CI smoke test of the benchmark)."""
import json
import math

import pytest
import yaml

from tests.conftest import copy_repo
from tests.test_pipeline import dvc, ran, sh
from wsss_core.errors import ConfigError
from wsss_core.robustness import (
    benchmark_csv,
    benchmark_wall_time,
    cell_name,
    cell_result_path,
    level_key,
    summarize,
)


def _run(method, noise, seed, miou, miou_crf):
    return {"method": method, "noise": noise, "seed": seed, "miou": miou, "miou_crf": miou_crf}


def test_summary_means_spreads_and_noise_free_methods():
    runs = [_run("baseline", 0.5, 0, 0.50, 0.60), _run("baseline", 0.5, 1, 0.60, 0.64),
            _run("baseline", 0.25, 0, 0.70, 0.72),
            _run("dupl", 0.5, 0, 0.30, 0.40), _run("dupl", 0.5, 1, 0.34, 0.40)]
    summary = summarize(runs, {"0.25": 0.85, "0.5": 0.69}, 0.5, ["baseline", "dupl"])
    assert summary["default_noise"] == "0.5"
    assert list(summary["levels"]) == ["0.25", "0.5"]  # sorted by noise
    half = summary["levels"]["0.5"]
    assert half["pseudo_labels"] == {"miou": 0.69}
    base = half["baseline"]
    assert base["miou_mean"] == pytest.approx(0.55)
    assert base["miou_std"] == pytest.approx(math.sqrt(2 * 0.05 ** 2))  # sample std, ddof 1
    assert base["miou_crf_mean"] == pytest.approx(0.62)
    assert base["seeds"] == 2 and base["seed_list"] == [0, 1]
    single = summary["levels"]["0.25"]["baseline"]
    assert single["miou_std"] == 0.0 and single["seeds"] == 1
    # DuPL never sees pseudo labels: the same cells at every level
    for key in ("0.25", "0.5"):
        dupl = summary["levels"][key]["dupl"]
        assert dupl["miou_mean"] == pytest.approx(0.32) and dupl["miou_crf_std"] == 0.0
        assert dupl["uses_pseudo_labels"] is False
    csv = benchmark_csv(summary, ["baseline", "dupl"]).splitlines()
    assert csv[0] == "noise,pseudo_labels,baseline,baseline_std,baseline_no_crf,dupl,dupl_std,dupl_no_crf"
    assert csv[2].startswith("0.5,0.690000,0.620000,0.028284,0.550000,0.400000,0.000000,0.320000")


def test_default_noise_must_be_a_benchmark_level():
    with pytest.raises(ConfigError, match="data.noise 0.3"):
        summarize([], {"0.25": 0.8, "0.5": 0.7}, 0.3, ["baseline"])


def test_wall_time_counts_side_by_side_cells_once():
    def cell(method, seed, start, end, noise=0.5, pseudo=True):
        return {"method": method, "noise": noise, "seed": seed, "uses_pseudo_labels": pseudo,
                "started_at": start, "finished_at": end, "wall_time_s": end - start}
    runs = [cell("baseline", 0, 100.0, 160.0), cell("baseline", 1, 100.5, 170.0),  # one stage
            cell("baseline", 0, 180.0, 200.0, noise=0.25),
            cell("dupl", 0, 300.0, 390.0, noise=0.5, pseudo=False),
            cell("dupl", 1, 300.0, 400.0, noise=0.5, pseudo=False),
            {"method": "cdl_b", "noise": 0.5, "seed": 0, "wall_time_s": 30.0},  # no timestamps
            {"method": "cdl_b", "noise": 0.5, "seed": 1, "wall_time_s": 40.0}]
    times = benchmark_wall_time(runs)
    assert times == {"cells": 7, "cells_sum": 60.0 + 69.5 + 20.0 + 90.0 + 100.0 + 30.0 + 40.0,
                     "stages": 70.0 + 20.0 + 100.0 + 30.0 + 40.0}


def test_cell_names_match_the_dvc_matrix_outputs():
    # robustness/dvc.yaml names files with DVC's rendering of the YAML floats
    assert level_key(0.5) == "0.5" and level_key(1) == "1.0"
    assert cell_name("cdl_b", 0.25, 2) == "cdl_b-noise0.25-seed2"
    assert cell_name("dupl", 0.25, 2) == "dupl-seed2"
    # one stage (and results folder) per method and level; DuPL's has no level
    assert cell_result_path("cdl_b", 0.25, 2).as_posix() == "metrics/robustness/runs/cdl_b-noise0.25/seed2.json"
    assert cell_result_path("dupl", 0.25, 1).as_posix() == "metrics/robustness/runs/dupl/seed1.json"


@pytest.mark.slow
def test_tiny_benchmark_end_to_end(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["synthetic"].update({"num_train": 8, "num_val": 3, "min_size": 40, "max_size": 48})
    params["train"].update({"iterations": 2, "batch_size": 2, "crop": 40, "checkpoint_every": 2,
                            "log_every": 1})
    params["benchmark"].update({"noise_levels": [0.5], "seeds": [0]})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(repo, "git", "init", "-q")
    dvc(repo, "init", "-q")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "init")

    out = dvc(repo, "repro", "robustness/dvc.yaml")
    stages = ran(out)
    assert {"prepare_data", "robustness/dvc.yaml:pseudo_labels@0.5", "robustness/dvc.yaml:report",
            "robustness/dvc.yaml:run@baseline-0.5", "robustness/dvc.yaml:run@cdl_b-0.5",
            "robustness/dvc.yaml:run@cdl_e-0.5", "robustness/dvc.yaml:run_image_labels@dupl"} <= stages
    assert "train" not in stages  # the benchmark does not touch the demo pipeline's outputs

    summary = json.loads((repo / "metrics/benchmark.json").read_text())
    assert summary["default_noise"] == "0.5" and list(summary["levels"]) == ["0.5"]
    level = summary["levels"]["0.5"]
    assert 0.0 < level["pseudo_labels"]["miou"] < 1.0
    for method in ("baseline", "cdl_b", "cdl_e", "dupl"):
        cell = level[method]
        assert cell["seeds"] == 1
        for key in ("miou_mean", "miou_std", "miou_crf_mean", "miou_crf_std"):
            assert 0.0 <= cell[key] <= 1.0
    assert (repo / "metrics/benchmark.csv").read_text().startswith("noise,pseudo_labels,baseline")
    assert (repo / "metrics/plots/benchmark_miou_vs_noise.png").read_bytes()[:4] == b"\x89PNG"
    assert not any((repo / "data/robustness/work").iterdir())  # finished cells leave no workspace

    # a second seed reruns the stages of the remaining methods, its two seeds side by side
    params["benchmark"]["seeds"] = [0, 1]
    params["benchmark"]["pseudo_label_methods"] = ["baseline"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    again = ran(dvc(repo, "repro", "robustness/dvc.yaml"))
    assert again == {"robustness/dvc.yaml:run@baseline-0.5",
                     "robustness/dvc.yaml:run_image_labels@dupl", "robustness/dvc.yaml:report"}
    summary = json.loads((repo / "metrics/benchmark.json").read_text())
    assert summary["levels"]["0.5"]["baseline"]["seed_list"] == [0, 1]
    assert "cdl_b" not in summary["levels"]["0.5"]
    times = summary["wall_time_s"]
    assert times["cells"] == 4 and 0 < times["stages"] <= times["cells_sum"]
