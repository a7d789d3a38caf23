import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from wsss_core.data.datasets import voc_layout_split
from wsss_core.data.pseudo_labels import ingest_pseudo_labels
from wsss_core.errors import DataError
from wsss_core.io import write_label


@pytest.fixture
def labels_dir(tmp_path, voc_root):
    src = tmp_path / "published" / "rib_voc"  # authors' archives hold a top-level folder
    for i, image_id in enumerate(["a1", "a2", "a3", "b1"]):  # b1 is a val id: extra file
        label = np.full((20, 24), i, np.uint8)
        label[0, 0] = 255
        write_label(src / f"{image_id}.png", label)
    return src


def _train(voc_root):
    return voc_layout_split(voc_root, "train")


def _archive(kind, src, dest):
    if kind == "zip":
        with zipfile.ZipFile(dest, "w") as zf:
            for p in sorted(src.rglob("*.png")):
                zf.write(p, f"{src.name}/{p.relative_to(src).as_posix()}")
    else:
        with tarfile.open(dest, "w:gz" if kind == "tar.gz" else "w") as tf:
            tf.add(src, arcname=src.name)
    return dest


@pytest.mark.parametrize("kind", ["folder", "zip", "tar", "tar.gz"])
def test_ingest_copies_labels_byte_for_byte(tmp_path, voc_root, labels_dir, kind):
    source = labels_dir if kind == "folder" else _archive(kind, labels_dir, tmp_path / f"labels.{kind}")
    out = tmp_path / "data" / "pseudo_labels" / "rib"
    info = ingest_pseudo_labels(source, _train(voc_root), 21, out)
    assert info["labels"] == 3 and info["ignored_extra_files"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["a1.png", "a2.png", "a3.png"]
    for p in out.iterdir():
        assert p.read_bytes() == (labels_dir / p.name).read_bytes()


def _break(labels_dir, problem):
    target = labels_dir / "a2.png"
    if problem == "missing":
        target.unlink()
    elif problem == "rgb":
        Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(target)
    elif problem == "range":
        write_label(target, np.full((20, 24), 21, np.uint8))
    elif problem == "size":
        write_label(target, np.zeros((20, 25), np.uint8))
    elif problem == "truncated":
        target.write_bytes(target.read_bytes()[:30])
    elif problem == "jpeg":
        Image.fromarray(np.zeros((20, 24), np.uint8)).save(target, "JPEG")


@pytest.mark.parametrize(
    "problem, message",
    [
        ("missing", "rib_voc: no pseudo label for id a2"),
        ("rgb", "a2.png: label has mode RGB; expected a single-channel L or P PNG"),
        ("range", r"a2.png: label values \[21\] out of range \(allowed 0..20 or 255\)"),
        ("size", "a2.png: label size 25x20 .* differs from the image's 24x20"),
        ("truncated", "a2.png: cannot decode PNG"),
        ("jpeg", "a2.png: is JPEG, expected PNG"),
    ],
)
def test_bad_labels_fail_and_leave_previous_output(tmp_path, voc_root, labels_dir, problem, message):
    out = tmp_path / "out"
    ingest_pseudo_labels(labels_dir, _train(voc_root), 21, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _break(labels_dir, problem)
    with pytest.raises(DataError, match=message) as info:
        ingest_pseudo_labels(labels_dir, _train(voc_root), 21, out)
    assert "\n" not in str(info.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["VOC2012", "published", "out"])


def test_error_inside_archive_names_member(tmp_path, voc_root, labels_dir):
    _break(labels_dir, "range")
    archive = _archive("zip", labels_dir, tmp_path / "labels.zip")
    with pytest.raises(DataError, match=r"labels.zip:rib_voc/a2.png: label values"):
        ingest_pseudo_labels(archive, _train(voc_root), 21, tmp_path / "out")
    assert not (tmp_path / "out").exists()



@pytest.mark.parametrize("kind", ["folder", "zip", "tar"])
def test_error_in_nested_folder_names_its_path(tmp_path, voc_root, labels_dir, kind):
    nested = labels_dir / "more" / "deep"
    nested.mkdir(parents=True)
    (labels_dir / "a2.png").rename(nested / "a2.png")
    write_label(nested / "a2.png", np.full((20, 24), 21, np.uint8))
    source = labels_dir if kind == "folder" else _archive(kind, labels_dir, tmp_path / f"labels.{kind}")
    where = (str(nested / "a2.png") if kind == "folder"
             else f"{source}:{labels_dir.name}/more/deep/a2.png")
    with pytest.raises(DataError) as info:
        ingest_pseudo_labels(source, _train(voc_root), 21, tmp_path / "out")
    assert str(info.value) == f"{where}: label values [21] out of range (allowed 0..20 or 255)"


def test_non_png_member_is_one_clean_line(tmp_path, voc_root, labels_dir):
    (labels_dir / "a2.png").write_bytes(b"<html>404 not found</html>")
    archive = _archive("zip", labels_dir, tmp_path / "labels.zip")
    with pytest.raises(DataError) as info:
        ingest_pseudo_labels(archive, _train(voc_root), 21, tmp_path / "out")
    assert str(info.value) == f"{archive}:{labels_dir.name}/a2.png: not a readable PNG image"

def test_bad_sources(tmp_path, voc_root):
    with pytest.raises(DataError, match="nowhere: pseudo-label source not found"):
        ingest_pseudo_labels(tmp_path / "nowhere", _train(voc_root), 21, tmp_path / "out")
    (tmp_path / "labels.zip").write_bytes(b"garbage")
    with pytest.raises(DataError, match="labels.zip: cannot open zip archive"):
        ingest_pseudo_labels(tmp_path / "labels.zip", _train(voc_root), 21, tmp_path / "out")
    (tmp_path / "labels.rar").write_bytes(b"x")
    with pytest.raises(DataError, match="must be a folder or a .zip/.tar/.tar.gz archive"):
        ingest_pseudo_labels(tmp_path / "labels.rar", _train(voc_root), 21, tmp_path / "out")


def test_duplicate_names_in_source(tmp_path, voc_root, labels_dir):
    write_label(labels_dir / "sub" / "a1.png", np.zeros((20, 24), np.uint8))
    with pytest.raises(DataError, match="two files named a1.png"):
        ingest_pseudo_labels(labels_dir, _train(voc_root), 21, tmp_path / "out")
