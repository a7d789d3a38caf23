"""The data stages run as scripts on a tiny VOC-layout dataset, and fail cleanly on bad input."""
import json

import numpy as np
import pytest
import yaml

from tests.conftest import copy_repo, make_voc_dataset, run_script, set_param
from wsss_core.io import write_label


@pytest.fixture
def repo(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    gts = make_voc_dataset(repo / "voc" / "VOC2012", {"train": ["t1", "t2", "t3"], "val": ["v1", "v2"]})
    labels = repo / "my_labels"
    for image_id in ("t1", "t2", "t3"):
        noisy = gts[image_id].copy()
        noisy[noisy == 255] = 0
        noisy[:, 6:9] = 0  # drop a strip of each object: mIoU < 1
        write_label(labels / f"{image_id}.png", noisy)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["dataset"] = "voc12"
    params["data"]["voc12"]["root"] = "voc/VOC2012"
    params["pseudo_labels"] = {"name": "mine", "source": "files", "path": "my_labels"}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return repo


@pytest.mark.slow
def test_data_stages_on_voc_layout(repo):
    run_script(repo, "stages/prepare_data.py", check=True)
    cls = json.loads((repo / "data/prepared/voc12/cls_labels.json").read_text())
    assert set(cls) == {"t1", "t2", "t3", "v1", "v2"} and all(len(v) == 1 for v in cls.values())
    run_script(repo, "stages/pseudo_labels.py", check=True)
    assert sorted(p.name for p in (repo / "data/pseudo_labels/mine").iterdir()) == ["t1.png", "t2.png", "t3.png"]
    proc = run_script(repo, "stages/evaluate.py", "pseudo_labels", check=True)
    report = json.loads((repo / "metrics/pseudo_labels.json").read_text())
    assert 0 < report["miou"] < 1 and report["split"] == "train" and "mIoU" in proc.stdout
    assert "per_class_iou" not in report  # the metric keeps headline numbers; classes go to the CSV
    rows = (repo / "metrics/pseudo_labels_per_class.csv").read_text().splitlines()
    assert rows[0] == "class,iou" and rows[1].startswith("background,") and rows[1] != "background,"


def _corrupt_jpeg(repo):
    path = repo / "voc/VOC2012/JPEGImages/t2.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0garbage")


def _rgb_gt(repo):
    from PIL import Image
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(repo / "voc/VOC2012/SegmentationClassAug/t2.png")


@pytest.mark.parametrize(
    "breakage, message",
    [
        pytest.param(lambda r: _corrupt_jpeg(r), "JPEGImages/t2.jpg: cannot read image header", marks=pytest.mark.slow),
        pytest.param(lambda r: _rgb_gt(r), "SegmentationClassAug/t2.png: label has mode RGB", marks=pytest.mark.slow),
        (lambda r: (r / "voc/VOC2012/SegmentationClassAug/t3.png").unlink(), "SegmentationClassAug/t3.png: file not found"),
        pytest.param(lambda r: (r / "voc/VOC2012/JPEGImages/v1.jpg").unlink(), "JPEGImages/v1.jpg: file not found",
                     marks=pytest.mark.slow),
        pytest.param(lambda r: (r / "voc/VOC2012/ImageSets/Segmentation/val.txt").write_text(""), "val.txt: list is empty",
                     marks=pytest.mark.slow),
        pytest.param(lambda r: write_label(r / "voc/VOC2012/SegmentationClassAug/t1.png", np.zeros((21, 24), np.uint8)),
                     "t1.png: label size 24x21 .* differs from the image's 24x20", marks=pytest.mark.slow),
        pytest.param(lambda r: write_label(r / "voc/VOC2012/SegmentationClassAug/t1.png", np.full((20, 24), 99, np.uint8)),
                     r"t1.png: label values \[99\] out of range", marks=pytest.mark.slow),
        pytest.param(lambda r: set_param(r, "method", "deeplab"),
                     r"method: unknown method 'deeplab' \(allowed: baseline, cam, cdl_b, cdl_e, dupl\)", marks=pytest.mark.slow),
        (lambda r: set_param(r, "dataset", "cityscapes"), "dataset: expected one of 'synthetic', 'voc12', 'coco14'"),
        (lambda r: set_param(r, "data.voc12.rooot", "x"), "unknown key 'data.voc12.rooot'"),
    ],
)
def test_prepare_bad_input_is_one_line_error(repo, breakage, message):
    import re

    breakage(repo)
    proc = run_script(repo, "stages/prepare_data.py")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(message, lines[0]), proc.stderr
    prepared = repo / "data/prepared"
    assert not prepared.exists() or list(prepared.iterdir()) == []  # no partial or temporary output


@pytest.mark.slow
def test_failed_ingestion_keeps_published_labels(repo):
    run_script(repo, "stages/prepare_data.py", check=True)
    run_script(repo, "stages/pseudo_labels.py", check=True)
    before = {p.name: p.read_bytes() for p in (repo / "data/pseudo_labels/mine").iterdir()}
    write_label(repo / "my_labels/t3.png", np.full((20, 24), 50, np.uint8))
    proc = run_script(repo, "stages/pseudo_labels.py")
    assert proc.returncode == 2 and "my_labels/t3.png: label values [50] out of range" in proc.stderr
    assert {p.name: p.read_bytes() for p in (repo / "data/pseudo_labels/mine").iterdir()} == before


@pytest.mark.slow
def test_infer_test_split_then_export(repo):
    """Train briefly, infer on val, then on the test list (no GT), then export for the server."""

    root = repo / "voc/VOC2012"
    make_voc_dataset(root, {"test": ["s1", "s2"]}, seed=3)
    for name, value in (("train.iterations", 2), ("train.batch_size", 2), ("train.crop", 16),
                        ("infer.device", "cpu")):
        set_param(repo, name, value)
    for script in ("stages/prepare_data.py", "stages/pseudo_labels.py", "stages/train.py", "stages/infer.py"):
        run_script(repo, script, check=True)
    run_script(repo, "stages/infer.py", "--split", "test", check=True)
    assert sorted(p.name for p in (repo / "data/logits/baseline/test").glob("*.npy")) == ["s1.npy", "s2.npy"]
    run_script(repo, "stages/export_voc_test.py", "--no-crf", check=True)
    pngs = sorted(p.name for p in (repo / "results/VOC2012/Segmentation/comp6_test_cls").iterdir())
    assert pngs == ["s1.png", "s2.png"] and (repo / "results/voc2012_test_baseline.tar.gz").is_file()


@pytest.mark.slow
def test_bad_method_option_is_reported_before_missing_data(tmp_path):
    """The configuration is validated before any data is read: with no prepared data at all, a
    mistyped CDL option is the error, named by its real key."""
    repo = copy_repo(tmp_path / "repo")
    set_param(repo, "method", "cdl_b")
    set_param(repo, "train.method_options", {"threshold_1": "high"})
    for script in ("stages/pseudo_labels.py", "stages/train.py", "stages/crf.py"):
        proc = run_script(repo, script)
        assert proc.returncode == 2 and proc.stderr.strip() == (
            "error: params.yaml: train.method_options.threshold_1: expected a number, got 'high'"), proc.stderr
