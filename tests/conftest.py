"""Shared test helpers: tiny VOC-layout datasets and a throwaway copy of the repository."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from wsss_core.io import write_id_list, write_image, write_label

REPO = Path(__file__).resolve().parents[1]
# The numeric reference fixtures computed by running the original CDL and DuPL code live in the
# project's shared material beside the repository; tests/fixtures/ holds a copy so that a clone
# on its own runs every test (test_fixture_copies_match_the_shared_ones keeps the two identical).
SHARED = Path(os.environ.get("WSSS_SHARED", REPO.parent / "shared"))
VENDORED_FIXTURES = REPO / "tests" / "fixtures"


def fixtures_dir(method: str) -> Path:
    """The reference fixtures of `method` ("cdl" | "dupl"): the shared set if present, else the copy."""
    shared = SHARED / "fixtures" / method
    return shared if shared.is_dir() else VENDORED_FIXTURES / method


PYTHON = sys.executable

os.environ.setdefault("WSSS_NO_PROGRESS", "1")


def make_voc_dataset(root: Path, splits: dict[str, list[str]], size=(20, 24), num_classes=21,
                     seed=0) -> dict[str, np.ndarray]:
    """A tiny dataset in VOC layout under `root`; returns the GT arrays by id."""
    rng = np.random.default_rng(seed)
    gts = {}
    for split, ids in splits.items():
        list_name = "train_aug.txt" if split == "train" else f"{split}.txt"
        write_id_list(root / "ImageSets/Segmentation" / list_name, ids)
        for image_id in ids:
            h, w = size
            write_image(root / "JPEGImages" / f"{image_id}.jpg",
                        rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            gt = np.zeros((h, w), np.uint8)
            cls = int(rng.integers(1, num_classes))
            gt[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = cls
            gt[0, :] = 255
            write_label(root / "SegmentationClassAug" / f"{image_id}.png", gt)
            gts[image_id] = gt
    return gts


def tiny_cam_run(tmp_path: Path, train: dict | None = None, **groups):
    """(params, paths) of method `cam` (demo preset, from scratch, 2 iterations at crop 24) on
    a 4-train / 2-val VOC-layout dataset in `tmp_path`/prep with its image-level labels;
    `train` adds train keys, `groups` other params groups (infer, crf, evaluate)."""
    import dataclasses

    from wsss_core.config import params_from_dict
    from wsss_core.data.classes import classes_in_label, write_class_labels
    from wsss_core.pipeline.paths import RunPaths

    gts = make_voc_dataset(tmp_path / "prep" / "VOC2012",
                           {"train": ["t1", "t2", "t3", "t4"], "val": ["v1", "v2"]}, size=(24, 28))
    params = params_from_dict({
        "method": "cam", "dataset": "synthetic",
        "train": {"preset": "demo", "device": "cpu", "iterations": 2, "batch_size": 2, "crop": 24,
                  "checkpoint_every": 2, "log_every": 1, "init_weights": "",
                  "method_options": {"cam_scales": [1.0]}, **(train or {})},
        "infer": {"device": "cpu"}, "evaluate": {"n_jobs": 1}, **groups})
    paths = dataclasses.replace(RunPaths.defaults(params, tmp_path / "run"), prepared=tmp_path / "prep")
    write_class_labels(paths.class_labels, {i: classes_in_label(gt, 21) for i, gt in gts.items()})
    return params, paths


def copy_repo(dest: Path) -> Path:
    """The code, config and committed init weights of this repository (no data, no venv) in
    `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("wsss_core", "stages", "robustness", "pretrain"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("params.yaml", "dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy2(REPO / name, dest / name)
    # the demo presets' committed init weights (pretrain/dvc.yaml)
    (dest / "models/init").mkdir(parents=True, exist_ok=True)
    for weights in (REPO / "models/init").glob("demo_*.pth"):
        shutil.copy2(weights, dest / "models/init" / weights.name)
    return dest


def repo_env(repo: Path) -> dict:
    """Environment of a process run in a copied repository: the copy's own `wsss_core` comes
    before the editable install of this checkout (a test may patch the copy's code)."""
    return {**os.environ, "WSSS_NO_PROGRESS": "1",
            "PYTHONPATH": os.pathsep.join([str(repo), *filter(None, [os.environ.get("PYTHONPATH")])])}


def set_param(repo: Path, dotted: str, value) -> None:
    """Set one dotted key of the copied repository's params.yaml."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    *parents, leaf = dotted.split(".")
    node = params
    for key in parents:
        node = node[key]
    node[leaf] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_script(cwd: Path, *args: str, check=False) -> subprocess.CompletedProcess:
    env = repo_env(cwd)
    proc = subprocess.run([PYTHON, *args], cwd=cwd, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def voc_root(tmp_path):
    root = tmp_path / "VOC2012"
    make_voc_dataset(root, {"train": ["a1", "a2", "a3"], "val": ["b1", "b2"]})
    return root
