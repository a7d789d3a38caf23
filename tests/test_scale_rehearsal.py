"""benchmarks/scale.py (the scale rehearsal of issue #21): its data have the real datasets'
statistics, and a tiny run writes metrics/scale.json in exactly the documented shape with
figures that follow from one another (no timing is asserted)."""
from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
from conftest import REPO

from wsss_core.data.coco import convert_coco
from wsss_core.io import decode_label, read_label
from wsss_core.logits_io import read_logits

STAGE_KEYS = {"n", "s_per_image", "speedup_2_cores", "rss_mib", "rss_ratio", "disk_bytes_per_image"}
DVC_KEYS = {"files", "dvc_add_s", "dvc_push_s", "dvc_pull_s", "dvc_status_s"}
PROJECTION_KEYS = {"core_hours", "hours_on_16_cores", "hours_on_4x16_cores"}


def _load(name: str):
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    spec = importlib.util.spec_from_file_location(f"benchmarks.{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_synthetic_samples_have_the_datasets_statistics():
    data = _load("scale_data")
    voc = [data.render_sample(data.DATASETS["voc12"], i) for i in range(60)]
    coco = [data.render_sample(data.DATASETS["coco14"], i) for i in range(60)]
    assert {s.hw for s in voc} == {(375, 500), (500, 375)}
    assert {s.hw for s in coco} == {(480, 640), (640, 480)}
    assert np.mean([len(s.classes) for s in voc]) < 2
    assert 2.8 < np.mean([len(s.classes) for s in coco]) < 4.2
    assert 0.3 < np.mean([1 in s.classes for s in coco]) < 0.7          # person in about half
    assert len({c for s in coco for c in s.classes}) > 40                # spread over the 80
    assert all(s.classes == sorted(int(v) for v in np.unique(s.label) if 0 < v < 81) for s in coco)


def test_coco_json_converts_to_the_rendered_gt_and_dvc_files_are_distinct(tmp_path):
    data = _load("scale_data")
    spec = data.DATASETS["coco14"]
    pool = data.Pool(spec, tmp_path / "pool", 4, scale=0.25)
    ids = [spec.val_id(i) for i in range(6)]
    data.write_coco_json(pool, ids, tmp_path / "val.json", start=2)
    summary = convert_coco(tmp_path / "val.json", tmp_path / "masks", progress=False)
    assert summary["images"] == 6 and summary["categories"] == 80
    for index, image_id in enumerate(ids, 2):
        np.testing.assert_array_equal(read_label(tmp_path / "masks" / f"{image_id}.png", 81),
                                      pool.of(index).label)
    data.write_unique_pngs(pool, ids, tmp_path / "labels")
    data.write_unique_logits(pool, ids, tmp_path / "logits")
    pngs = [(tmp_path / "labels" / f"{i}.png").read_bytes() for i in ids]
    assert spec.logits_suffix == ".npz"                                 # COCO's logits: compact
    logits_files = [(tmp_path / "logits" / f"{i}.npz").read_bytes() for i in ids]
    assert len(set(pngs)) == len(set(logits_files)) == 6                # DVC stores each
    np.testing.assert_array_equal(decode_label(pngs[4], "x", 81), pool.of(4).label)
    logits = read_logits(tmp_path / "logits" / f"{ids[1]}.npz", 81)
    h, w = pool.of(1).hw
    assert logits.shape == (81, data.deeplab_grid(h), data.deeplab_grid(w))
    # the top-8 form keeps each cell's winner: the same arg-max as the pool's full logits
    # (apart from the first values, which carry the file's index)
    pool_logits = read_logits(pool.file(1, data.LOGITS + ".npz"), 81)
    np.testing.assert_array_equal(logits.argmax(0).ravel()[3:], pool_logits.argmax(0).ravel()[3:])


@pytest.mark.slow
def test_tiny_rehearsal_writes_the_documented_shape(tmp_path):
    scale = _load("scale")
    out = tmp_path / "scale.json"
    common = ["--out", str(out), "--work", str(tmp_path / "work"), "--pool", "6",
              "--size-scale", "0.25", "--cheap-counts", "4", "8", "--medium-counts", "2", "4",
              "--heavy-counts", "2", "3"]
    returned = scale.main(["--dataset", "both", "--dvc-files", "20", "20", *common])
    results = json.loads(out.read_text())
    assert results == returned
    assert set(results) == {"voc12", "coco14"}
    facts = {"voc12": (10_582, 1_449, 21), "coco14": (82_081, 40_137, 81)}
    for name, entry in results.items():
        assert set(entry) == {"train_images", "val_images", "image_size", "num_classes", "stages",
                              "pseudo_labels", "logits", "projection"}
        assert (entry["train_images"], entry["val_images"], entry["num_classes"]) == facts[name]
        assert list(entry["stages"]) == list(scale.STAGES) == list(entry["projection"])
        for stage, s in entry["stages"].items():
            assert set(s) == STAGE_KEYS
            assert len(s["n"]) == len(s["rss_mib"]) == 2 and s["n"] == sorted(s["n"])
            assert s["rss_ratio"] == pytest.approx(s["rss_mib"][-1] / s["rss_mib"][0], rel=1e-3)
            assert s["s_per_image"] > 0 and s["speedup_2_cores"] > 0 and s["disk_bytes_per_image"] >= 0
            images = scale.stage_images(scale.DATASETS[name], stage)
            p = entry["projection"][stage]
            assert set(p) - {"source"} == PROJECTION_KEYS
            assert ("source" in p) == (stage in ("cams", "infer"))
            assert p["core_hours"] == pytest.approx(s["s_per_image"] * images / 3600, rel=1e-3)
            for key, cores in (("hours_on_16_cores", 16), ("hours_on_4x16_cores", 64)):
                cores = 1 if stage in scale.SERIAL else cores
                assert p[key] == pytest.approx(p["core_hours"] / cores, rel=2e-3)
        writes = {stage for stage, s in entry["stages"].items() if s["disk_bytes_per_image"] > 0}
        assert writes == {"prepare", "pseudo_labels", "cams", "cam_refine", "infer", "crf"}
        for kind in ("pseudo_labels", "logits"):
            assert set(entry[kind]) == DVC_KEYS and entry[kind]["files"] == 20
            assert all(entry[kind][k] > 0 for k in DVC_KEYS)

    # a subset of the stages is merged into the existing file, the rest kept as it was
    scale.main(["--dataset", "voc12", "--stages", "evaluate", *common])
    merged = json.loads(out.read_text())
    assert merged["coco14"] == results["coco14"]
    assert set(merged["voc12"]) == set(results["voc12"])
    for stage in scale.STAGES:
        if stage != "evaluate":
            assert merged["voc12"]["stages"][stage] == results["voc12"]["stages"][stage]
