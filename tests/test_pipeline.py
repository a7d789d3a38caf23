"""The DVC pipeline end to end in a throwaway clone: repro, no-op repro, exp run -S, push/pull."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import copy_repo, repo_env

pytestmark = pytest.mark.slow

TINY = {"num_train": 12, "num_val": 4, "min_size": 40, "max_size": 56}
ALL_STAGES = {"prepare_data", "cam_classifier", "cams", "pseudo_labels", "evaluate_pseudo_labels",
              "train", "infer", "crf"}


def _env(cwd):
    bin_dir = str(Path(sys.executable).parent)  # stages call `python`: use this venv's
    return {**repo_env(cwd), "PATH": bin_dir + os.pathsep + os.environ["PATH"],
            "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t"}


def sh(cwd, *cmd):
    proc = subprocess.run(list(cmd), cwd=cwd, env=_env(cwd), capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def dvc(cwd, *args):
    return sh(cwd, sys.executable, "-m", "dvc", *args)


def ran(output):
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("clone") / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["synthetic"].update(TINY)
    params["train"].update({"nproc": 1, "iterations": 4, "batch_size": 2, "crop": 48,
                            "checkpoint_every": 2, "log_every": 2})
    # the default pseudo labels are CAMs: a tiny CAM classifier too
    params["pseudo_labels"]["classifier"].update({"iterations": 4, "batch_size": 2, "crop": 48,
                                                  "checkpoint_every": 2, "log_every": 2})
    params["infer"]["nproc"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(repo, "git", "init", "-q")
    dvc(repo, "init", "-q")
    dvc(repo, "config", "core.analytics", "false")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "init")
    return repo


def test_repro_then_noop(repo):
    out = dvc(repo, "repro")
    assert ran(out) == ALL_STAGES
    # CAM pseudo labels of a 4-iteration classifier: a score, not a good one
    miou = json.loads((repo / "metrics/pseudo_labels.json").read_text())["miou"]
    assert 0.0 < miou < 1.0
    assert len(list((repo / "data/pseudo_labels/synthetic").glob("*.png"))) == TINY["num_train"]
    assert json.loads((repo / "metrics/scores_crf_test.json").read_text())["split"] == "test"
    scores = json.loads((repo / "metrics/scores.json").read_text())
    assert scores["method"] == "baseline" and 0.0 <= scores["miou"] <= 1.0
    logits = sorted((repo / "data/logits/baseline/val").glob("*.npy"))
    assert len(logits) == TINY["num_val"]
    crf = json.loads((repo / "metrics/scores_crf.json").read_text())
    assert crf["crf"] is True and crf["miou_no_crf"] == pytest.approx(scores["miou"])
    out = dvc(repo, "repro")
    assert ran(out) == set() and "up to date" in out
    assert "miou" in dvc(repo, "metrics", "show")


def test_metrics_show_fits_a_terminal(repo):
    """Metric files keep headline numbers, so `dvc metrics show` of the demo (baseline) stays
    readable (per-class IoU lives in the CSVs that `dvc plots` draws)."""
    shown = dvc(repo, "metrics", "show").splitlines()
    assert shown and max(len(line) for line in shown) <= 160, "\n".join(shown)
    assert any("miou" in line for line in shown)
    assert not any("per_class" in line or "background" in line for line in shown)


def test_push_pull_restores_pseudo_labels_byte_identical(repo, tmp_path):
    labels = repo / "data/pseudo_labels/synthetic"
    before = {p.name: p.read_bytes() for p in labels.iterdir()}
    assert len(before) == TINY["num_train"]
    dvc(repo, "remote", "add", "-d", "--local", "store", str(tmp_path / "remote"))
    dvc(repo, "push")
    shutil.rmtree(repo / ".dvc/cache")
    shutil.rmtree(labels)
    dvc(repo, "pull")
    assert {p.name: p.read_bytes() for p in labels.iterdir()} == before


def test_exp_run_refinement_reruns_only_dependents(repo):
    """A new CAM refinement threshold re-refines the stored CAMs: the classifier and the CAMs
    are not recomputed."""
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "lock")
    labels = repo / "data/pseudo_labels/synthetic"
    before = {p.name: p.read_bytes() for p in labels.iterdir()}
    out = dvc(repo, "exp", "run", "-S", "pseudo_labels.refine.bkg_threshold=0.7")
    assert ran(out) == {"pseudo_labels", "evaluate_pseudo_labels", "train", "infer", "crf"}
    assert {p.name: p.read_bytes() for p in labels.iterdir()} != before


def test_exp_run_switches_method(repo):
    out = dvc(repo, "exp", "run", "-S", "method=cdl_b")
    assert ran(out) == {"train", "infer", "crf"}
    assert json.loads((repo / "metrics/scores.json").read_text())["method"] == "cdl_b"
    assert json.loads((repo / "metrics/scores_crf.json").read_text())["method"] == "cdl_b"
    assert (repo / "models/cdl_b/model.pth").is_file()


def test_exp_run_cdl_e(repo):
    out = dvc(repo, "exp", "run", "-S", "method=cdl_e")
    assert ran(out) == {"train", "infer", "crf"}
    assert json.loads((repo / "metrics/scores.json").read_text())["method"] == "cdl_e"


def test_exp_run_dupl(repo):
    out = dvc(repo, "exp", "run", "-S", "method=dupl")
    assert ran(out) == {"train", "infer", "crf"}
    scores = json.loads((repo / "metrics/scores.json").read_text())
    assert scores["method"] == "dupl" and scores["predictor"] in ("student1", "student2")
    assert set(scores["predictors_miou"]) == {"student1", "student2"}
    assert set(scores["cam_miou"]) == {"student1", "student2"}
    chosen = repo / f"data/logits/dupl/val_{scores['predictor']}"
    final = repo / "data/logits/dupl/val"
    assert sorted(p.name for p in final.glob("*.npy")) == sorted(p.name for p in chosen.glob("*.npy"))
    assert json.loads((repo / "metrics/train.json").read_text())["effective_batch"] == 2


def test_changed_pseudo_label_source_reruns_the_stage(tmp_path):
    """The source of ingested pseudo labels is a DVC dependency: new contents at the same path
    rerun the stage instead of "didn't change, skipping" with stale labels."""
    repo = copy_repo(tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["synthetic"].update(TINY)
    params["pseudo_labels"].update({"name": "mine", "source": "files", "path": "my_labels"})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(repo, "git", "init", "-q")
    dvc(repo, "init", "-q")
    dvc(repo, "repro", "prepare_data")
    shutil.copytree(repo / "data/prepared/synthetic/VOC2012/SegmentationClassAug", repo / "my_labels")
    # the CAM stages run too (unused with source files: a manifest each)
    assert ran(dvc(repo, "repro", "pseudo_labels")) == {"cam_classifier", "cams", "pseudo_labels"}
    assert ran(dvc(repo, "repro", "pseudo_labels")) == set()
    first = sorted((repo / "my_labels").glob("syn_train_*.png"))[0]   # a train id (published)
    published = repo / "data/pseudo_labels/mine" / first.name
    label = np.array(Image.open(first))
    label[label != 255] = 0  # the same file, now all background
    Image.fromarray(label).save(first)
    assert ran(dvc(repo, "repro", "pseudo_labels")) == {"pseudo_labels"}
    assert published.read_bytes() == first.read_bytes()


def test_queued_sweep_runs_every_combination(repo):
    """The README's sweep, the DVC way: queue a grid, run it with workers, compare."""
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "before the sweep", "--allow-empty")
    dvc(repo, "exp", "run", "--queue", "-S", "method=baseline,cdl_b", "-S", "seed=0,1")
    dvc(repo, "queue", "start", "-j", "2")
    deadline = time.time() + 900
    while time.time() < deadline:
        status = dvc(repo, "queue", "status")
        if not any(word in status for word in ("Queued", "Running")):
            break
        time.sleep(5)
    assert "Failed" not in status, status + dvc(repo, "queue", "logs", "--help")
    rows = json.loads(dvc(repo, "exp", "show", "--json"))
    done = []
    for commit in rows:
        for exp in commit.get("experiments") or []:
            for revision in exp.get("revs", []):
                data = revision.get("data") or {}
                params = data.get("params", {}).get("params.yaml", {}).get("data", {})
                metrics = data.get("metrics", {}).get("metrics/scores_crf.json", {}).get("data", {})
                if "miou" in metrics:
                    done.append((params.get("method"), params.get("seed")))
    assert sorted(done) == [("baseline", 0), ("baseline", 1), ("cdl_b", 0), ("cdl_b", 1)]
