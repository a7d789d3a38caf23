"""Class-specific context in the synthetic data, and the statistics that measure it."""
import numpy as np
import pytest
from scipy import ndimage

from wsss_core.config import SyntheticData, params_from_dict
from wsss_core.data.classes import read_class_labels
from wsss_core.data.datasets import resolve_split, voc_layout_split
from wsss_core.errors import ConfigError
from wsss_core.io import read_id_list, read_label, write_label
from wsss_core.pipeline.prepare import prepare_dataset
from wsss_core.synthetic import CLASS_STYLES, render_sample, render_sample_with_context
from wsss_core.synthetic.context import context_statistics
from wsss_core.synthetic.context_styles import AREA_RATIO, CONTEXT_STYLES
from wsss_core.synthetic.render import generator_context_statistics

ALL = SyntheticData(classes=list(range(1, 21)), min_size=48, max_size=64, seed=2)
WITH_CONTEXT = SyntheticData(**{**ALL.__dict__, "context": 1.0})


def test_every_class_has_a_context_style():
    assert set(CONTEXT_STYLES) == set(CLASS_STYLES) == set(range(1, 21))


@pytest.mark.parametrize("index", range(0, 40, 3))
def test_context_lies_on_background_beside_its_objects_and_leaves_the_gt_alone(index):
    image0, gt0 = render_sample(ALL, "train", index)
    image, gt, context = render_sample_with_context(WITH_CONTEXT, "train", index)
    np.testing.assert_array_equal(gt, gt0)                  # the very same label map
    objects = (gt != 0) & (gt != 255)
    np.testing.assert_array_equal(image[objects], image0[objects])
    assert context.shape == gt.shape and context.dtype == np.uint8
    assert set(np.unique(gt[context > 0]).tolist()) <= {0, 255}   # background (or its void rim)
    changed = (image != image0).any(axis=-1)
    assert not (changed & (context == 0)).any()             # only context pixels are repainted
    for cls in set(np.unique(gt).tolist()) - {0, 255}:
        own = context == cls
        assert own.any(), f"class {cls} has no context"
        # touching: within the 2 px void band that separates an object from its surroundings
        near = ndimage.binary_dilation(gt == cls, iterations=3)
        assert (own & near).any(), f"class {cls}'s context does not touch it"
        # at most AREA_RATIO[1] × the objects' visible area, which lies inside their GT pixels
        # and the void rim around them
        visible_at_most = ((gt == cls) | (near & (gt == 255))).sum()
        assert own.sum() <= AREA_RATIO[1] * visible_at_most + 1
    assert set(np.unique(context).tolist()) - {0} <= set(np.unique(gt).tolist())


def test_context_area_follows_the_object_area():
    stats = generator_context_statistics(WITH_CONTEXT, "train", limit=40)
    ratios = [s["area_ratio"] for s in stats.values() if s["area_ratio"] is not None]
    assert len(ratios) >= 15
    # context / GT object pixels: about AREA_RATIO of the visible area (less at the image border,
    # more for thin objects, whose GT loses much of their area to the void rim)
    assert AREA_RATIO[0] < np.median(ratios) < AREA_RATIO[1] * 1.2, stats
    assert all(s["with_context"] == 1.0 for s in stats.values() if s["images"])
    none = generator_context_statistics(ALL, "train", limit=5)
    assert all(s["with_context"] in (0.0, None) for s in none.values())


def test_context_option_is_validated():
    with pytest.raises(ConfigError, match="data.synthetic.context: must be in"):
        params_from_dict({"data": {"synthetic": {"context": 1.5}}})
    with pytest.raises(ConfigError, match="data.synthetic.part_focus: must be in"):
        params_from_dict({"data": {"synthetic": {"part_focus": -0.1}}})


def test_prepare_writes_context_maps_and_the_test_split(tmp_path):
    params = params_from_dict({"data": {"synthetic": {
        "num_train": 4, "num_val": 2, "num_test": 3, "min_size": 40, "max_size": 48,
        "context": 0.5, "classes": [4, 19]}}})
    summary = prepare_dataset(params, tmp_path / "prepared")
    root = tmp_path / "prepared" / "VOC2012"
    assert {k: v["images"] for k, v in summary["splits"].items()} == {"train": 4, "val": 2, "test": 3}
    assert set(summary["context"]) == {"boat", "train"}
    test = resolve_split(params, "test", tmp_path / "prepared")
    assert test.gt_dir is not None
    assert test.ids == ["syn_test_000000", "syn_test_000001", "syn_test_000002"]
    labels = read_class_labels(tmp_path / "prepared" / "cls_labels.json", 21)
    for split in ("train", "val", "test"):
        for image_id in resolve_split(params, split, tmp_path / "prepared").ids:
            gt = read_label(root / "SegmentationClassAug" / f"{image_id}.png")
            context = read_label(root / "SegmentationContext" / f"{image_id}.png")
            assert context.shape == gt.shape
            assert set(np.unique(context).tolist()) <= {0, 4, 19}
            assert labels[image_id] == sorted(set(np.unique(gt).tolist()) - {0, 255})
    assert read_id_list(root / "ImageSets/Segmentation/test.txt") == test.ids
    # without context: no context folder
    plain = params_from_dict({"data": {"synthetic": {"num_train": 2, "num_val": 1, "num_test": 0,
                                                     "min_size": 40, "max_size": 48}}})
    summary = prepare_dataset(plain, tmp_path / "plain")
    assert not (tmp_path / "plain/VOC2012/SegmentationContext").exists()
    assert "context" not in summary and set(summary["splits"]) == {"train", "val"}


def test_voc_test_split_keeps_no_gt(tmp_path):
    assert voc_layout_split(tmp_path, "test").gt_dir is None          # VOC 2012's test split
    assert voc_layout_split(tmp_path, "test", test_has_gt=True).gt_dir == \
        tmp_path / "SegmentationClassAug"


def test_context_statistics_on_hand_made_maps(tmp_path):
    # one 3x4 image; GT: 2 object pixels (class 3), one void pixel, 9 background pixels, of which
    # 4 are context
    gt = np.array([[0, 0, 0, 0],
                   [3, 3, 255, 0],
                   [0, 0, 0, 0]], np.uint8)
    context = np.array([[3, 3, 0, 0],
                        [0, 0, 3, 0],       # the void pixel is context too: not counted
                        [3, 3, 0, 0]], np.uint8)
    pred = np.array([[3, 0, 3, 0],          # FP on context (0,0), FP elsewhere (0,2)
                     [0, 3, 3, 255],        # one object pixel missed; 255 is not foreground
                     [3, 3, 0, 3]], np.uint8)   # FP on context x2, FP elsewhere (2,3)
    write_label(tmp_path / "gt" / "a.png", gt)
    write_label(tmp_path / "ctx" / "a.png", context)
    expected = {
        "images": 1,
        "fp_on_context_share": round(3 / 5, 6),       # FP: (0,0) (0,2) (2,0) (2,1) (2,3)
        "fp_share_elsewhere": round(2 / 5, 6),
        "context_fp_rate": round(3 / 4, 6),           # context bg: (0,0) (0,1) (2,0) (2,1)
        "other_background_fp_rate": round(2 / 5, 6),  # other bg: (0,2) (0,3) (1,3) (2,2) (2,3)
        "missed_object_share": 0.5,
        "context_share_of_background": round(4 / 9, 6),
    }
    assert context_statistics({"a": pred}, tmp_path / "gt", tmp_path / "ctx", ["a"], 21) == expected
    write_label(tmp_path / "pred" / "a.png", pred)
    assert context_statistics(tmp_path / "pred", tmp_path / "gt", tmp_path / "ctx", ["a"], 21) == expected
    # no foreground on background at all: shares of nothing are None, rates are 0
    clean = gt.copy()
    clean[1, 2] = 0
    out = context_statistics({"a": clean}, tmp_path / "gt", tmp_path / "ctx", ["a"], 21)
    assert out["fp_on_context_share"] is None and out["context_fp_rate"] == 0.0
    assert out["missed_object_share"] == 0.0


def test_pseudo_label_scores_report_the_context_headline(tmp_path):
    import json

    from wsss_core.pipeline.evaluate import score_pseudo_labels
    from wsss_core.pipeline.paths import RunPaths

    params = params_from_dict({"data": {"synthetic": {
        "num_train": 3, "num_val": 1, "num_test": 0, "min_size": 40, "max_size": 48,
        "context": 1.0, "classes": [7, 19]}}})
    paths = RunPaths.defaults(params, tmp_path)
    prepare_dataset(params, paths.prepared)
    split = resolve_split(params, "train", paths.prepared)
    # pseudo labels: the GT with every context pixel called its class (a CAM that fully spills)
    for image_id in split.ids:
        gt = read_label(split.gt_path(image_id))
        context = read_label(paths.synthetic_root / "SegmentationContext" / f"{image_id}.png")
        write_label(paths.pseudo_labels / f"{image_id}.png", np.where(context > 0, context, gt))
    report = score_pseudo_labels(params, paths)
    assert report["context"]["context_fp_rate"] == 1.0
    assert report["context"]["other_background_fp_rate"] == 0.0
    assert report["context"]["fp_on_context_share"] == 1.0
    assert report["context"]["missed_object_share"] == 0.0
    # the figures go beside the metric file, not into it (dvc metrics show stays narrow)
    assert "context" not in json.loads(paths.pseudo_label_scores.read_text())
    written = json.loads((paths.metrics / "pseudo_labels_context.json").read_text())
    assert written == report["context"]
