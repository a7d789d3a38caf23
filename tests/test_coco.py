"""COCO instances JSON → VOC-style masks on a hand-made 4-image annotation file."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from wsss_core.config import params_from_dict
from wsss_core.data.coco import (
    DIGEST_KEY,
    _write_mask,
    annotations_digest,
    category_map,
    coco_image_ids,
    convert_coco,
    render_mask,
)
from wsss_core.data.datasets import resolve_split, subset_label
from wsss_core.errors import DataError
from wsss_core.io import voc_palette, write_id_list, write_image, write_label
from wsss_core.logits_io import write_logits
from wsss_core.pipeline.crf import run_crf
from wsss_core.pipeline.paths import RunPaths

REPO = Path(__file__).resolve().parents[1]
VENV_PYTHON = REPO / ".venv/bin/python"
PYTHON = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable

MISSING_COCO_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
COCO_IDS = [i for i in range(1, 91) if i not in MISSING_COCO_IDS]
H, W = 20, 30


def rect_polygon(x0, y0, x1, y1):
    """An axis-aligned rectangle; COCO rasterisation fills rows y0..y1-1 and columns x0..x1-1."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's list-counts RLE: column-major runs, starting with a (possibly empty) run of zeros."""
    flat = mask.flatten(order="F").astype(np.int64)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"size": list(mask.shape), "counts": counts}


def compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def box(x0, y0, x1, y1, shape=(H, W)):
    mask = np.zeros(shape, np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


# A toothbrush-ish shape for the compressed RLE: a staircase, not a rectangle.
STAIRS = np.zeros((H, W), np.uint8)
for _step in range(6):
    STAIRS[12 + _step, 20:22 + _step] = 1


def instances_json() -> dict:
    categories = [{"id": cid, "name": f"c{cid}", "supercategory": "x"} for cid in COCO_IDS]
    categories = categories[::-1][40:] + categories[::-1][:40]  # unsorted on purpose
    images = [  # unsorted by id on purpose
        {"id": 30, "file_name": "COCO_train2014_000000000030.jpg", "height": 16, "width": 24},
        {"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "height": H, "width": W},
        {"id": 42, "file_name": "COCO_train2014_000000000042.jpg", "height": H, "width": W},
        {"id": 25, "file_name": "COCO_train2014_000000000025.jpg", "height": H, "width": W},
    ]
    annotations = [
        # image 9: the small dog comes first in the file but must stay on top of the large person
        {"id": 1, "image_id": 9, "category_id": 18, "iscrowd": 0,
         "segmentation": [rect_polygon(5, 4, 10, 9)]},
        {"id": 2, "image_id": 9, "category_id": 1, "iscrowd": 0,
         "segmentation": [rect_polygon(2, 2, 20, 16)]},
        # a car in two polygon parts after a degenerate 2-point part (no area; pycocotools alone
        # would read a leading 4-number part as boxes)
        {"id": 3, "image_id": 9, "category_id": 3, "iscrowd": 0,
         "segmentation": [[22, 10, 26, 10], rect_polygon(22, 0, 26, 4), rect_polygon(22, 10, 26, 14)]},
        # image 25: a crowd (uncompressed RLE) partly under a car; a toothbrush as compressed RLE
        {"id": 4, "image_id": 25, "category_id": 1, "iscrowd": 1,
         "segmentation": uncompressed_rle(box(5, 5, 15, 15))},
        {"id": 5, "image_id": 25, "category_id": 3, "iscrowd": 0,
         "segmentation": [rect_polygon(0, 0, 10, 10)]},
        {"id": 6, "image_id": 25, "category_id": 90, "iscrowd": 0,
         "segmentation": compressed_rle(STAIRS)},
        # image 42: equal areas; the higher annotation id is painted last (on top)
        {"id": 11, "image_id": 42, "category_id": 27, "iscrowd": 0,
         "segmentation": [rect_polygon(3, 3, 9, 9)]},
        {"id": 10, "image_id": 42, "category_id": 13, "iscrowd": 0,
         "segmentation": [rect_polygon(0, 0, 6, 6)]},
        # image 30 has no annotation
    ]
    return {"info": {}, "images": images, "annotations": annotations, "categories": categories}


def expected_masks() -> dict[str, np.ndarray]:
    # class ids: 1→1, 3→3, 13→12, 18→17, 27→25, 90→80 (sorted ids with gaps at 12 and 26)
    m9 = np.zeros((H, W), np.uint8)
    m9[2:16, 2:20] = 1
    m9[4:9, 5:10] = 17
    m9[0:4, 22:26] = 3
    m9[10:14, 22:26] = 3
    m25 = np.zeros((H, W), np.uint8)
    m25[5:15, 5:15] = 255
    m25[0:10, 0:10] = 3
    m25[STAIRS == 1] = 80
    m42 = np.zeros((H, W), np.uint8)
    m42[0:6, 0:6] = 12
    m42[3:9, 3:9] = 25
    return {"COCO_train2014_000000000009": m9, "COCO_train2014_000000000025": m25,
            "COCO_train2014_000000000030": np.zeros((16, 24), np.uint8),
            "COCO_train2014_000000000042": m42}


@pytest.fixture
def ann_file(tmp_path) -> Path:
    path = tmp_path / "instances_train2014.json"
    path.write_text(json.dumps(instances_json()))
    return path


def read_png(path: Path) -> np.ndarray:
    img = Image.open(path)
    assert img.mode == "P"
    return np.asarray(img)


def test_category_map_is_sorted_and_contiguous():
    shuffled = COCO_IDS[::-1]
    mapping = category_map([{"id": cid} for cid in shuffled])
    assert sorted(mapping.values()) == list(range(1, 81))
    assert (mapping[1], mapping[11], mapping[13], mapping[18], mapping[27], mapping[90]) == (1, 11, 12, 17, 25, 80)
    assert category_map([90, 3, 1]) == {1: 1, 3: 2, 90: 3}


def test_masks_match_hand_computed(ann_file, tmp_path):
    out = tmp_path / "masks"
    summary = convert_coco(ann_file, out, progress=False)
    assert summary == {"images": 4, "written": 4, "skipped": 0, "annotations": 8,
                       "crowd_annotations": 1, "empty_images": 1, "categories": 80}
    expected = expected_masks()
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{stem}.png" for stem in expected)
    for stem, mask in expected.items():
        np.testing.assert_array_equal(read_png(out / f"{stem}.png"), mask, err_msg=stem)
    palette = np.asarray(Image.open(out / "COCO_train2014_000000000009.png").getpalette()).reshape(-1, 3)
    np.testing.assert_array_equal(palette, voc_palette()[: len(palette)])


def test_image_ids_in_id_order(ann_file):
    assert coco_image_ids(ann_file) == [f"COCO_train2014_{i:012d}" for i in (9, 25, 30, 42)]


def test_crowd_policies():
    crowd_box, car_box = box(5, 5, 15, 15), box(0, 0, 10, 10)
    anns = [(4, 1, 1, uncompressed_rle(crowd_box)), (5, 3, 0, [rect_polygon(0, 0, 10, 10)])]
    as_class = render_mask(H, W, anns, crowd="class")
    expected = np.zeros((H, W), np.uint8)
    expected[crowd_box == 1] = 1
    expected[car_box == 1] = 3  # equal areas (100 px): the higher id, the car, is painted last
    np.testing.assert_array_equal(as_class, expected)
    as_background = render_mask(H, W, anns, crowd="background")
    np.testing.assert_array_equal(as_background, car_box * 3)


def test_bytes_deterministic_across_runs_and_jobs(ann_file, tmp_path):
    runs = [("a", 1, 256), ("b", 1, 256), ("c", 2, 1)]
    for name, n_jobs, chunk in runs:
        convert_coco(ann_file, tmp_path / name, n_jobs=n_jobs, progress=False, chunk_size=chunk)
    for png in (tmp_path / "a").iterdir():
        reference = png.read_bytes()
        for name, *_ in runs[1:]:
            assert (tmp_path / name / png.name).read_bytes() == reference, (name, png.name)


def test_resume_keeps_valid_and_rewrites_invalid(ann_file, tmp_path):
    out = tmp_path / "masks"
    convert_coco(ann_file, out, progress=False)
    kept = out / "COCO_train2014_000000000009.png"
    truncated = out / "COCO_train2014_000000000025.png"
    wrong_size = out / "COCO_train2014_000000000030.png"
    rgb = out / "COCO_train2014_000000000042.png"
    originals = {p: p.read_bytes() for p in (truncated, wrong_size, rgb)}
    before = os.stat(kept)
    truncated.write_bytes(originals[truncated][: len(originals[truncated]) // 2])
    Image.fromarray(np.zeros((20, 30), np.uint8), "L").save(wrong_size)  # image is 16×24
    Image.fromarray(np.zeros((20, 30, 3), np.uint8), "RGB").save(rgb)
    summary = convert_coco(ann_file, out, progress=False)
    assert (summary["written"], summary["skipped"]) == (3, 1)
    after = os.stat(kept)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    for path, data in originals.items():
        assert path.read_bytes() == data, path.name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_changed_annotations_rewrite_their_masks(ann_file, tmp_path):
    out = tmp_path / "masks"
    convert_coco(ann_file, out, progress=False)
    kept = {p.name: os.stat(p) for p in out.iterdir()}
    data = instances_json()
    fixed = next(a for a in data["annotations"] if a["id"] == 10)
    fixed["segmentation"] = [rect_polygon(10, 10, 16, 16)]  # image 42: the class-12 box moved
    ann_file.write_text(json.dumps(data))
    summary = convert_coco(ann_file, out, progress=False)
    assert (summary["written"], summary["skipped"]) == (1, 3)
    expected = np.zeros((H, W), np.uint8)
    expected[10:16, 10:16] = 12
    expected[3:9, 3:9] = 25
    np.testing.assert_array_equal(read_png(out / "COCO_train2014_000000000042.png"), expected)
    for name, before in kept.items():
        if name != "COCO_train2014_000000000042.png":
            after = os.stat(out / name)
            assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), name

    # a mask without a digest (written by an older version, or by hand) is rendered again
    stale = out / "COCO_train2014_000000000009.png"
    write_label(stale, read_png(stale))
    assert convert_coco(ann_file, out, progress=False)["written"] == 1
    assert Image.open(stale).info[DIGEST_KEY]

    # so is every mask under another crowd policy: the crowd of image 25 becomes class 1
    assert convert_coco(ann_file, out, progress=False, crowd="class")["written"] == 4
    assert read_png(out / "COCO_train2014_000000000025.png")[14, 14] == 1


def _broken(data: dict, change) -> dict:
    change(data)
    return data


@pytest.mark.parametrize("content, problem", [
    ("{not json", "malformed JSON"),
    (json.dumps({"images": [], "categories": []}), "missing annotations"),
    (json.dumps(_broken(instances_json(), lambda d: d["annotations"][4].update(category_id=12))),
     "annotation 5 refers to unknown category id 12"),
    (json.dumps(_broken(instances_json(), lambda d: d["annotations"][0].update(image_id=7))),
     "annotation 1 refers to unknown image id 7"),
    (json.dumps(_broken(instances_json(), lambda d: d["categories"].append({"id": 91}))),
     "81 categories"),
    (json.dumps(_broken(instances_json(), lambda d: d["annotations"][3]["segmentation"].update(size=[10, 30]))),
     "annotation 4: RLE size [10, 30] differs"),
])
def test_bad_input_is_one_line_error_and_writes_nothing(tmp_path, content, problem):
    path = tmp_path / "instances_bad.json"
    path.write_text(content)
    out = tmp_path / "masks"
    with pytest.raises(DataError) as info:
        convert_coco(path, out, progress=False)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and problem in message and "\n" not in message
    assert not out.exists()


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WSSS_NO_PROGRESS": "1"}
    return subprocess.run([PYTHON, "stages/convert_coco.py", *args], cwd=REPO,
                          capture_output=True, text=True, env=env)


def test_cli_converts_and_writes_list(ann_file, tmp_path):
    proc = _run_cli(str(ann_file), str(tmp_path / "masks"), "--list", str(tmp_path / "train.txt"))
    assert proc.returncode == 0, proc.stderr
    assert "4 images (4 written, 0 kept)" in proc.stdout
    assert (tmp_path / "train.txt").read_text().split() == coco_image_ids(ann_file)
    np.testing.assert_array_equal(read_png(tmp_path / "masks/COCO_train2014_000000000025.png"),
                                  expected_masks()["COCO_train2014_000000000025"])


def test_cli_bad_input_exits_2_with_one_line(tmp_path):
    data = _broken(instances_json(), lambda d: d["annotations"][1].update(category_id=200))
    path = tmp_path / "instances_bad.json"
    path.write_text(json.dumps(data))
    proc = _run_cli(str(path), str(tmp_path / "masks"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {path}: annotation 2 refers to unknown category id 200"]
    assert not (tmp_path / "masks").exists()


def test_undecodable_compressed_rle_names_file_and_image(tmp_path):
    data = _broken(instances_json(), lambda d: d["annotations"][5]["segmentation"].update(counts="!!!!"))
    path = tmp_path / "instances_bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"instances_bad\.json: image COCO_train2014_000000000025: "
                                        r"cannot decode a segmentation"):
        convert_coco(path, tmp_path / "masks", progress=False)


def test_val_part_is_scored_and_named_in_the_metric_files(tmp_path):
    """COCO scores the whole val unless `data.coco14.val_part` names a list (DuPL's 4,999-image
    val_part.txt); then the split is that list and every metric file says so."""
    root = tmp_path / "coco"
    ids = ["COCO_val2014_000000000001", "COCO_val2014_000000000002", "COCO_val2014_000000000003"]
    write_id_list(root / "val.txt", ids)
    write_id_list(root / "val_part.txt", ids[:2])
    logits = np.full((81, 2, 3), -5.0, np.float32)
    logits[0] = 5.0                                  # background everywhere: GT is background
    for image_id in ids:
        write_image(root / "val2014" / f"{image_id}.jpg", np.full((16, 24, 3), 90, np.uint8))
        write_label(root / "SegmentationClass/val2014" / f"{image_id}.png", np.zeros((16, 24), np.uint8))
        write_logits(tmp_path / "run/data/logits/baseline/val" / f"{image_id}.npy", logits)

    def params(val_part: str):
        return params_from_dict({"dataset": "coco14", "data": {"coco14": {"root": str(root),
                                 "val_part": val_part}}, "crf": {"overlays": 0, "n_jobs": 1},
                                 "pseudo_labels": {"source": "files", "path": "labels"}})

    whole, part = params(""), params("val_part.txt")
    assert resolve_split(whole, "val").ids == ids and subset_label(whole, "val") is None
    assert resolve_split(part, "val").ids == ids[:2]
    assert subset_label(part, "val") == "val_part.txt: 2 of 3 val images"
    assert subset_label(part, "train") is None

    paths = RunPaths.defaults(part, tmp_path / "run")
    report = run_crf(part, paths)
    assert report["images"] == 2 and report["miou"] == 1.0
    saved = json.loads(paths.scores_of("val", crf=True).read_text())
    assert saved["subset"] == "val_part.txt: 2 of 3 val images" and saved["split"] == "val"
    paths = dataclasses.replace(paths, predictions=tmp_path / "whole", metrics=tmp_path / "whole")
    report = run_crf(whole, paths)
    assert report["images"] == 3 and "subset" not in report
    assert "subset" not in json.loads(paths.scores_of("val", crf=True).read_text())


# --------------------------------------------------------------------------- streamed conversion
def _scattered_instances_json(seed: int = 3) -> dict:
    """Twelve images of three sizes whose annotations (polygons, compressed and uncompressed RLE,
    crowds of both forms, overlaps, equal areas) are shuffled across the file, which lists the
    annotations before the images and categories."""
    rng = np.random.default_rng(seed)
    sizes = [(20, 30), (16, 24), (25, 18)]
    images = [{"id": 100 + 7 * i, "file_name": f"COCO_val2014_{100 + 7 * i:012d}.jpg",
               "height": sizes[i % 3][0], "width": sizes[i % 3][1]} for i in range(12)]
    annotations, next_id = [], 500
    for image in images[:-1]:                      # the last image has no annotation
        h, w = image["height"], image["width"]
        for k in range(int(rng.integers(1, 6))):
            x0, y0 = int(rng.integers(0, w - 4)), int(rng.integers(0, h - 4))
            x1, y1 = int(rng.integers(x0 + 2, w + 1)), int(rng.integers(y0 + 2, h + 1))
            form = k % 4
            if form == 0:      # a float polygon (a triangle) and a rectangle: one instance
                segmentation = [[x0 + 0.25, y0 + 0.5, x1 - 0.3, y0 + 0.7, x0 + 0.1, y1 - 0.45],
                                rect_polygon(x0, y0, x1, y1)]
            elif form == 1:
                segmentation = compressed_rle(box(x0, y0, x1, y1, (h, w)))
            elif form == 2:
                segmentation = uncompressed_rle(box(x0, y0, x1, y1, (h, w)))
            else:
                segmentation = [rect_polygon(x0, y0, x1, y1)]
            annotations.append({"id": next_id, "image_id": image["id"],
                                "category_id": int(rng.choice(COCO_IDS)),
                                "iscrowd": int(form == 2 or (form == 3 and k == 3)),
                                "segmentation": segmentation, "area": 0.0, "bbox": [0, 0, 1, 1]})
            next_id += int(rng.integers(1, 4))
    annotations = [annotations[i] for i in rng.permutation(len(annotations))]
    categories = [{"id": cid, "name": f"c{cid}"} for cid in COCO_IDS[::-1]]
    return {"annotations": annotations, "info": {"year": 2014}, "images": images[::-1],
            "categories": categories}


def _in_memory_reference(data: dict, crowd: str) -> dict[str, tuple[np.ndarray, str]]:
    """The straightforward rendering: the whole file in memory, annotations grouped per image
    in file order; stem → (mask, digest)."""
    classes = category_map(data["categories"])
    per_image: dict[int, list] = {}
    for ann in data["annotations"]:
        per_image.setdefault(ann["image_id"], []).append(
            (ann["id"], classes[ann["category_id"]], ann["iscrowd"], ann["segmentation"]))
    reference = {}
    for image in data["images"]:
        anns = per_image.get(image["id"], [])
        h, w = image["height"], image["width"]
        reference[Path(image["file_name"]).stem] = (render_mask(h, w, anns, crowd),
                                                    annotations_digest(h, w, anns, crowd))
    return reference


@pytest.mark.parametrize("crowd, n_jobs, chunk_size", [("ignore", 1, 256), ("ignore", 2, 2),
                                                       ("class", 2, 3)])
def test_streamed_conversion_equals_in_memory_rendering(tmp_path, crowd, n_jobs, chunk_size):
    data = _scattered_instances_json()
    path = tmp_path / "instances_val2014.json"
    path.write_text(json.dumps(data))
    out, id_list = tmp_path / "masks", tmp_path / "val.txt"
    summary = convert_coco(path, out, n_jobs=n_jobs, progress=False, crowd=crowd,
                           chunk_size=chunk_size, id_list=id_list)
    annotated = {a["image_id"] for a in data["annotations"]}
    assert summary == {"images": 12, "written": 12, "skipped": 0,
                       "annotations": len(data["annotations"]),
                       "crowd_annotations": sum(a["iscrowd"] for a in data["annotations"]),
                       "empty_images": 12 - len(annotated), "categories": 80}
    assert 0 < summary["crowd_annotations"] < summary["annotations"]
    reference = _in_memory_reference(data, crowd)
    if crowd == "ignore":   # crowd regions outside every instance: the RLE and polygon crowds show
        assert any((mask == 255).any() for mask, _ in reference.values())
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{stem}.png" for stem in reference)
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    for stem, (mask, digest) in reference.items():
        np.testing.assert_array_equal(read_png(out / f"{stem}.png"), mask, err_msg=stem)
        assert Image.open(out / f"{stem}.png").info[DIGEST_KEY] == digest, stem
        _write_mask(reference_dir / f"{stem}.png", mask, digest)
        assert (out / f"{stem}.png").read_bytes() == (reference_dir / f"{stem}.png").read_bytes(), stem
    assert id_list.read_text().split() == sorted(reference) == coco_image_ids(path)
    # the annotations' spill is gone; a second run keeps every mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["instances_val2014.json", "masks",
                                                          "reference", "val.txt"]
    assert convert_coco(path, out, n_jobs=n_jobs, progress=False, crowd=crowd,
                        chunk_size=chunk_size)["skipped"] == 12


def _truncated(text: str) -> str:
    return text[: text.index('"annotations"') + 200]   # inside the annotations


def _late_bad_category(data: dict) -> dict:
    data["annotations"][-1]["category_id"] = 12
    return data


@pytest.mark.parametrize("make, problem", [
    (lambda: _truncated(json.dumps(instances_json())), "malformed JSON (parse error: premature EOF)"),
    (lambda: json.dumps(instances_json()) + " {}", "malformed JSON (parse error: trailing garbage)"),
    (lambda: json.dumps(instances_json()).replace('"c90"', '"c9\udcff0"'), "malformed JSON"),
    (lambda: "", "malformed JSON"),
    (lambda: "[]", "top level is not an object"),
    (lambda: json.dumps(instances_json())[:-1] + ', "images": []}',
     "the key 'images' appears twice at the top level"),
    (lambda: json.dumps(_late_bad_category(instances_json())),
     "annotation 10 refers to unknown category id 12"),
])
def test_corrupt_json_is_one_line_error_naming_the_file(tmp_path, make, problem):
    path = tmp_path / "instances_train2014.json"
    path.write_bytes(make().encode("utf-8", "surrogateescape"))
    out = tmp_path / "masks"
    with pytest.raises(DataError) as info:
        convert_coco(path, out, progress=False, id_list=tmp_path / "train.txt")
    message = str(info.value)
    assert message.startswith(f"{path}: ") and problem in message and "\n" not in message
    assert [p.name for p in tmp_path.iterdir()] == [path.name]   # no masks, list or spill
    if "malformed" in problem:
        with pytest.raises(DataError, match="malformed JSON"):
            coco_image_ids(path)


def test_prepare_converts_coco_and_writes_the_lists_from_one_read(tmp_path, monkeypatch):
    """The prepare stage's COCO branch: masks and the missing id lists from the annotation files
    (the list comes from the conversion's own read of each file, not from a second one)."""
    from wsss_core.data import coco
    from wsss_core.pipeline.prepare import prepare_dataset

    root = tmp_path / "coco"
    data = instances_json()
    for folder in ("train2014", "val2014"):
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{folder}.json").write_text(json.dumps(data))
        for image in data["images"]:
            write_image(root / folder / image["file_name"],
                        np.zeros((image["height"], image["width"], 3), np.uint8))
    scans = []
    scan = coco._scan_images_and_categories
    monkeypatch.setattr(coco, "_scan_images_and_categories", lambda path: scans.append(path) or scan(path))
    params = params_from_dict({"dataset": "coco14", "data": {"coco14": {"root": str(root), "n_jobs": 1}},
                               "pseudo_labels": {"source": "files", "path": "labels"}})
    summary = prepare_dataset(params, tmp_path / "prepared")
    assert {name: split["images"] for name, split in summary["splits"].items()} == {"train": 4, "val": 4}
    assert [p.name for p in scans] == ["instances_train2014.json", "instances_val2014.json"]
    stems = [f"COCO_train2014_{i:012d}" for i in (9, 25, 30, 42)]
    for name, folder in (("train", "train2014"), ("val", "val2014")):
        assert (root / f"{name}.txt").read_text().split() == stems
        for stem, mask in expected_masks().items():
            np.testing.assert_array_equal(read_png(root / "SegmentationClass" / folder / f"{stem}.png"), mask)
    assert sorted(p.name for p in root.iterdir()) == ["SegmentationClass", "annotations", "train.txt",
                                                      "train2014", "val.txt", "val2014"]
