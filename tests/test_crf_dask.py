"""DenseCRF over a split and the CAM refinement on dask.distributed: the same PNG bytes and
confusion matrices as joblib, resumption on dask, an unreachable scheduler, the params keys.

One LocalCluster of two worker processes (one thread each) serves the module; the tests join it
by address, as a stage joins a running cluster (`crf.scheduler`)."""
from __future__ import annotations

import json
import logging
import shutil
import socket
import time

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import REPO, copy_repo, make_voc_dataset, run_script
from wsss_core import parallel
from wsss_core.cam.refine import refine_cam_labels
from wsss_core.cam.store import CAM_SUFFIX, save_cams
from wsss_core.config import params_from_dict
from wsss_core.crf import CRF_PRESETS, refine_split
from wsss_core.data.datasets import voc_layout_split
from wsss_core.errors import ConfigError, DataError
from wsss_core.logits_io import write_logits
from wsss_core.parallel import Workers

pytest.importorskip("pydensecrf")
distributed = pytest.importorskip("distributed")

NUM_CLASSES = 4
SIZE = (24, 32)      # image H, W
GRID = (4, 5)        # stride-8 logits
IDS = ["i1", "i2", "i3", "i4", "i5"]
SETTINGS = CRF_PRESETS["deeplab"]


@pytest.fixture(scope="module")
def cluster_address():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0", silence_logs=logging.ERROR) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A val split of 5 noise images with GT, their stride-8 logits, and stored CAMs of a
    train split (the same images) with their image-level labels."""
    tmp = tmp_path_factory.mktemp("crf_dask")
    root = tmp / "VOC2012"
    gts = make_voc_dataset(root, {"val": IDS, "train": IDS}, size=SIZE, num_classes=NUM_CLASSES)
    rng = np.random.default_rng(0)
    for image_id in IDS:
        rows = ((np.arange(GRID[0]) + 0.5) * SIZE[0] / GRID[0]).astype(int)
        cols = ((np.arange(GRID[1]) + 0.5) * SIZE[1] / GRID[1]).astype(int)
        coarse = gts[image_id][rows][:, cols].astype(np.int64)
        coarse[coarse == 255] = 0
        logits = 2.0 * np.eye(NUM_CLASSES)[coarse].transpose(2, 0, 1)
        write_logits(tmp / "logits" / f"{image_id}.npy",
                     (logits + rng.normal(0, 1.0, logits.shape)).astype(np.float32))
    classes = {i: [int(c) for c in np.unique(g) if 0 < c < 255] for i, g in gts.items()}
    (tmp / "cams").mkdir()
    for image_id, keys in classes.items():
        cams = torch.from_numpy(rng.uniform(0, 1, (len(keys), *SIZE)).astype(np.float32))
        save_cams(tmp / "cams" / f"{image_id}{CAM_SUFFIX}", cams, keys, stride=4)
    return {"tmp": tmp, "val": voc_layout_split(root, "val"),
            "train": voc_layout_split(root, "train"), "classes": classes}


def _pngs(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def _dask(address: str) -> Workers:
    return Workers("dask", n_jobs=2, scheduler=address)


def _refine(data, out, workers):
    return refine_split(data["val"], data["tmp"] / "logits", data["tmp"] / out, NUM_CLASSES,
                        SETTINGS, workers=workers)


# --------------------------------------------------------------------------- DenseCRF of a split
def test_refine_split_on_dask_equals_local(data, cluster_address):
    local1 = _refine(data, "local1", Workers(n_jobs=1))
    local2 = _refine(data, "local2", Workers(n_jobs=2))
    on_dask = _refine(data, "dask", _dask(cluster_address))
    assert on_dask.images == 5 and on_dask.reused == 0
    for other in (local2, on_dask):
        np.testing.assert_array_equal(other.crf.matrix, local1.crf.matrix)
        np.testing.assert_array_equal(other.no_crf.matrix, local1.no_crf.matrix)
    assert not np.array_equal(local1.crf.matrix, local1.no_crf.matrix)  # the CRF did something
    reference = _pngs(data["tmp"] / "local1")
    assert len(reference) == 5
    assert _pngs(data["tmp"] / "local2") == reference
    assert _pngs(data["tmp"] / "dask") == reference


def test_killed_dask_run_redoes_only_the_missing_images(data, cluster_address):
    full = _refine(data, "full", Workers(n_jobs=1))
    logits, out = data["tmp"] / "logits", data["tmp"] / "resumed"
    # a run that dies on one image (bad logits): a worker's DataError arrives as it was raised
    good = np.load(logits / "i4.npy")
    write_logits(logits / "i4.npy", good.transpose(0, 2, 1))
    try:
        with pytest.raises(DataError, match=r"i4\.npy: logits grid 5x4"):
            _refine(data, "resumed", _dask(cluster_address))
    finally:
        write_logits(logits / "i4.npy", good)
    # a run that finished, then loses one PNG and one journal entry
    assert _refine(data, "resumed", _dask(cluster_address)).images == 5
    journal_path = out.with_name(".resumed.refine.json")
    journal = json.loads(journal_path.read_text())
    assert sorted(journal["done"]) == IDS
    del journal["done"]["i2"]
    journal_path.write_text(json.dumps(journal))
    (out / "i5.png").unlink()
    kept = {i: (out / f"{i}.png").stat().st_mtime_ns for i in ("i1", "i3", "i4")}
    resumed = _refine(data, "resumed", _dask(cluster_address))
    assert resumed.reused == 3                       # i2 and i5 redone, the others kept
    assert {i: (out / f"{i}.png").stat().st_mtime_ns for i in kept} == kept
    np.testing.assert_array_equal(resumed.crf.matrix, full.crf.matrix)
    np.testing.assert_array_equal(resumed.no_crf.matrix, full.no_crf.matrix)
    assert _pngs(out) == _pngs(data["tmp"] / "full")


def test_scheduler_file_names_the_cluster(data, cluster_address):
    scheduler_file = data["tmp"] / "scheduler.json"
    scheduler_file.write_text(json.dumps({"type": "Scheduler", "address": cluster_address}))
    result = _refine(data, "by_file", Workers("dask", scheduler=str(scheduler_file)))
    assert result.images == 5
    _refine(data, "by_file_reference", Workers(n_jobs=1))
    assert _pngs(data["tmp"] / "by_file") == _pngs(data["tmp"] / "by_file_reference")


# --------------------------------------------------------------------------- CAM refinement
def _cam_labels(data, method: str, name: str, workers: Workers | None) -> dict[str, bytes]:
    refine = params_from_dict({"pseudo_labels": {"refine": {
        "method": method, "low": 0.3, "high": 0.6}}}).pseudo_labels.refine
    out = data["tmp"] / f"cam_{method}_{name}"
    info = refine_cam_labels(data["tmp"] / "cams", data["train"], data["classes"], NUM_CLASSES,
                             refine, out, workers=workers)
    assert info["labels"] == 5 and info["refine"] == method
    assert sorted(p.name for p in out.iterdir()) == [f"{i}.png" for i in IDS]  # only the PNGs
    return _pngs(out)


@pytest.mark.parametrize("method", ["crf", "par"])
def test_refine_cam_labels_on_dask_equals_serial(data, cluster_address, method):
    # the first call makes the workers import torch (a few seconds on a loaded machine)
    serial = _cam_labels(data, method, "serial", None)
    assert len(serial) == 5
    assert _cam_labels(data, method, "dask", _dask(cluster_address)) == serial


@pytest.mark.slow
# loky restarts a worker whose memory grew by 300 MB (importing torch) and warns about it
@pytest.mark.filterwarnings("ignore:A worker stopped while some jobs:UserWarning")
def test_refine_cam_labels_with_joblib_and_an_own_local_cluster(data):
    """local n_jobs 2 and backend dask with scheduler null (a LocalCluster of n_jobs workers,
    started and closed here) give the serial run's bytes; both start processes importing torch."""
    serial = _cam_labels(data, "crf", "serial2", None)
    assert _cam_labels(data, "crf", "joblib2", Workers(n_jobs=2)) == serial
    own = Workers("dask", n_jobs=2, key="pseudo_labels.refine")
    assert _cam_labels(data, "crf", "own_cluster", own) == serial


# --------------------------------------------------------------------------- errors and params
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_scheduler_is_one_line_quickly(data, monkeypatch):
    monkeypatch.setattr(parallel, "CONNECT_TIMEOUT", 1.0)
    address = f"tcp://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    with pytest.raises(ConfigError) as error:
        _refine(data, "nowhere", Workers("dask", scheduler=address))
    assert time.monotonic() - started < 10
    message = str(error.value)
    assert message.startswith(f"params.yaml: crf.scheduler: cannot reach {address} (")
    assert "\n" not in message
    with pytest.raises(ConfigError, match=r"^params.yaml: pseudo_labels.refine.scheduler: "
                                          r"cannot read the scheduler file .*missing\.json"):
        refine_cam_labels(data["tmp"] / "cams", data["train"], data["classes"], NUM_CLASSES,
                          params_from_dict({}).pseudo_labels.refine, data["tmp"] / "nowhere",
                          workers=Workers("dask", scheduler=str(data["tmp"] / "missing.json"),
                                          key="pseudo_labels.refine"))


@pytest.mark.parametrize("group, values, message", [
    ("crf", {"backend": "slurm"}, r"crf\.backend: expected one of 'local', 'dask'"),
    ("crf", {"scheduler": "tcp://h:8786"}, r"crf\.scheduler: is used only with crf\.backend: dask"),
    ("crf", {"backend": "dask", "scheduler": "tcp://h"}, r"crf\.scheduler: expected a dask "
                                                         r"scheduler address"),
    ("crf", {"backend": "dask", "scheduler": 8786}, r"crf\.scheduler: expected"),
    ("refine", {"backend": "ray"}, r"pseudo_labels\.refine\.backend: expected one of"),
    ("refine", {"n_jobs": 0}, r"pseudo_labels\.refine\.n_jobs: must be -1"),
    ("refine", {"scheduler": "tcp://h:1"}, r"pseudo_labels\.refine\.scheduler: is used only"),
])
def test_backend_keys_are_validated(group, values, message):
    raw = {"crf": values} if group == "crf" else {"pseudo_labels": {"refine": values}}
    with pytest.raises(ConfigError, match=r"^params\.yaml: " + message):
        params_from_dict(raw)


def test_backend_keys_and_their_defaults():
    params = params_from_dict({})
    assert (params.crf.backend, params.crf.scheduler, params.crf.n_jobs) == ("local", None, -1)
    refine = params.pseudo_labels.refine
    assert (refine.backend, refine.scheduler, refine.n_jobs) == ("local", None, 1)
    params = params_from_dict({
        "crf": {"backend": "dask", "scheduler": "tcp://10.1.2.3:8786", "n_jobs": 8},
        "pseudo_labels": {"refine": {"backend": "dask", "scheduler": "~/scheduler.json"}}})
    assert Workers.of(params.crf, "crf") == Workers("dask", 8, "tcp://10.1.2.3:8786", "crf")
    assert Workers.of(params.pseudo_labels.refine, "pseudo_labels.refine").scheduler == \
        "~/scheduler.json"


def test_worker_placement_is_not_a_stage_param():
    """Where images are refined changes no output, so no stage lists those keys (or their whole
    group): switching to dask must not rerun a stage."""
    placement = {f"{group}.{key}" for group in ("crf", "pseudo_labels.refine")
                 for key in ("backend", "scheduler", "n_jobs")}
    for dvc_file in (REPO / "dvc.yaml", REPO / "robustness" / "dvc.yaml"):
        for name, stage in yaml.safe_load(dvc_file.read_text())["stages"].items():
            listed = [p for p in stage.get("params", []) if isinstance(p, str)]
            assert not placement & set(listed), (dvc_file, name)
            assert not {"crf", "pseudo_labels", "pseudo_labels.refine"} & set(listed), (dvc_file, name)


@pytest.mark.slow
def test_crf_stage_script_on_dask(tmp_path):
    """stages/crf.py with crf.backend dask: its own LocalCluster gives the local run's PNGs; an
    unreachable scheduler is one line on stderr and exit status 2."""
    repo = copy_repo(tmp_path / "repo")
    ids = {"val": ["v1", "v2", "v3"], "test": ["t1"]}
    make_voc_dataset(repo / "voc" / "VOC2012", ids, size=SIZE, num_classes=21)
    for split, split_ids in ids.items():
        for seed, image_id in enumerate(split_ids):
            logits = np.random.default_rng(seed).normal(size=(21, *GRID))
            logits[0] += 2.0
            write_logits(repo / "data/logits/dupl" / split / f"{image_id}.npy", logits)
    base = yaml.safe_load((repo / "params.yaml").read_text())
    base.update(dataset="voc12", method="dupl")
    base["data"]["voc12"]["root"] = "voc/VOC2012"
    base["pseudo_labels"] = {"name": "x", "source": "files", "path": "labels"}

    def run_crf(crf: dict):
        (repo / "params.yaml").write_text(yaml.safe_dump({**base, "crf": crf}, sort_keys=False))
        return run_script(repo, "stages/crf.py")

    predictions = repo / "data/predictions/dupl/val"
    assert run_crf({"n_jobs": 1, "overlays": 0}).returncode == 0
    local = _pngs(predictions)
    shutil.rmtree(predictions)
    proc = run_crf({"n_jobs": 2, "overlays": 0, "backend": "dask"})
    assert proc.returncode == 0, proc.stderr
    assert _pngs(predictions) == local and len(local) == 3

    address = f"tcp://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    proc = run_crf({"backend": "dask", "scheduler": address})
    assert time.monotonic() - started < 30    # 5 s to connect, the rest is Python starting
    assert proc.returncode == 2
    message = proc.stderr.strip()
    assert message.startswith(f"error: params.yaml: crf.scheduler: cannot reach {address} (")
    assert "\n" not in message
