"""The synthetic VOC-layout dataset generator and the pseudo-label noise model."""
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from wsss_core.config import NoiseTypes, SyntheticData
from wsss_core.errors import DataError, WsssError
from wsss_core.io import read_id_list, read_image, read_label, write_label
from wsss_core.metrics import ConfusionMatrix
from wsss_core.synthetic import (
    SIMILAR_CLASSES,
    add_void_border,
    corrupt_label,
    generate_dataset,
    render_sample,
    write_noisy_pseudo_labels,
)

TINY = SyntheticData(num_train=6, num_val=3, min_size=40, max_size=56, max_objects=3,
                     classes=[3, 8, 12], seed=3, num_test=2)
NO_NOISE = dict(boundary=0.0, missing_parts=0.0, false_positives=0.0, class_confusion=0.0,
                ignore=0.0)


def _only(**knobs) -> NoiseTypes:
    return NoiseTypes(**{**NO_NOISE, **knobs})


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("syn") / "VOC2012"
    return root, generate_dataset(root, TINY)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _gts(root: Path) -> dict[str, np.ndarray]:
    ids = read_id_list(root / "ImageSets/Segmentation/train_aug.txt")
    return {i: read_label(root / "SegmentationClassAug" / f"{i}.png") for i in ids}


# --------------------------------------------------------------------------- dataset
def test_layout_and_lists(tiny_root):
    root, summary = tiny_root
    train = [f"syn_train_{i:06d}" for i in range(6)]
    val = [f"syn_val_{i:06d}" for i in range(3)]
    test = ["syn_test_000000", "syn_test_000001"]
    lists = root / "ImageSets/Segmentation"
    assert (lists / "train_aug.txt").read_text() == "".join(f"{i}\n" for i in train)
    assert (lists / "val.txt").read_text() == "".join(f"{i}\n" for i in val)
    assert (lists / "test.txt").read_text() == "".join(f"{i}\n" for i in test)
    expected = {"ImageSets/Segmentation/train_aug.txt", "ImageSets/Segmentation/val.txt",
                "ImageSets/Segmentation/test.txt"}
    expected |= {f"JPEGImages/{i}.jpg" for i in train + val + test}
    expected |= {f"SegmentationClassAug/{i}.png" for i in train + val + test}
    # nothing else (no temporary files left, no context maps with context 0)
    assert set(_files(root)) == expected
    assert summary["images"] == {"train": 6, "val": 3, "test": 2}
    assert "context" not in summary
    assert set(summary["pixel_frequency"]) == {"background", "bird", "cat", "dog"}
    assert abs(sum(summary["pixel_frequency"].values()) - 1.0) < 1e-3


def test_generation_is_deterministic(tiny_root, tmp_path):
    root, summary = tiny_root
    again = generate_dataset(tmp_path / "VOC2012", TINY)
    assert _files(tmp_path / "VOC2012") == _files(root)
    assert again == summary
    other = generate_dataset(tmp_path / "other", SyntheticData(**{**TINY.__dict__, "seed": 4}))
    assert _files(tmp_path / "other") != _files(root) and other != summary


def test_images_and_ground_truth(tiny_root):
    root, summary = tiny_root
    allowed = {0, 255, *TINY.classes}
    sizes = set()
    for label_path in sorted((root / "SegmentationClassAug").glob("*.png")):
        assert Image.open(label_path).mode == "P"
        gt = read_label(label_path)
        image = read_image(root / "JPEGImages" / f"{label_path.stem}.jpg")
        assert image.shape == (*gt.shape, 3)
        assert all(40 <= s <= 56 for s in gt.shape)
        sizes.add(gt.shape)
        assert set(np.unique(gt).tolist()) <= allowed
        assert ((gt != 0) & (gt != 255)).any(), "every image has an object"
        void = gt == 255
        assert void.any()
        # every label change passes through void: no two 4-neighbours hold different labels
        for a, b in ((gt[:-1], gt[1:]), (gt[:, :-1], gt[:, 1:])):
            assert not ((a != b) & (a != 255) & (b != 255)).any()
        # ...and the void band is thin (~2 px): nearly all void pixels touch a labelled pixel
        # (only where thin parts meet is a void pixel further away)
        distance = ndimage.distance_transform_edt(void)[void]
        assert (distance <= 1.5).mean() > 0.9 and void.mean() < 0.25
        # objects are drawn in their own colours, not background grey: the image differs on them
        assert image[(gt != 0) & (gt != 255)].std() > 5
    assert any(h != w for h, w in sizes)
    assert all(summary["images_per_class"][name] >= 3 for name in ("bird", "cat", "dog"))


def test_add_void_border_marks_both_sides_of_each_change():
    label = np.zeros((5, 6), np.uint8)
    label[1:3, 1:3] = 8
    label[1:3, 3] = 12
    expected = np.array([
        [0, 255, 255, 255, 0, 0],
        [255, 255, 255, 255, 255, 0],
        [255, 255, 255, 255, 255, 0],
        [0, 255, 255, 255, 0, 0],
        [0, 0, 0, 0, 0, 0],
    ], np.uint8)
    np.testing.assert_array_equal(add_void_border(label), expected)


def test_render_sample_depends_only_on_config_split_and_index():
    image_a, gt_a = render_sample(TINY, "val", 2)
    render_sample(TINY, "train", 5)
    image_b, gt_b = render_sample(TINY, "val", 2)
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(gt_a, gt_b)


# sha256 of image bytes + GT bytes + str(image shape) of render_sample(cfg, split, i), computed
# with the generator before `context`, `part_focus` and the test split existed: with both options
# at 0 every image and GT must stay exactly what it was (DVC caches, published results)
PRE_CONTEXT_DIGESTS = {
    ("default", "train", 0): "6ad9c121a1e267943bccaa093d285cc29ccc76394a4e7783ec0f15af84265db1",
    ("default", "train", 1): "bff2998f736d8e735c604ff4edc7e005dbbddd0dd16b656afde8d4c2c31e971c",
    ("default", "train", 7): "240283f25be156281db442ce6b1f361bf9393c475bd8fb95deb9b6548fd92f67",
    ("default", "val", 0): "53cad9f91b398405e255f230d5a185617c98a94f4530533c8db9da235d238c62",
    ("default", "val", 1): "d926734fe01344955494eb79f65bb8a16bc497101ea228ac30995e760d8ed263",
    ("default", "val", 7): "b5accfe04512724c905390b1f967dfbfc2029b105128cf9c6647f6be532c3f72",
    ("all20", "train", 0): "f1da9f3047dc399a058759fc25f0f33bc62d992a4af47425c4c4809358a34755",
    ("all20", "train", 1): "e68a03f57184016d36627887d15bb32257780e8370b5b55f0e6a671d573fe365",
    ("all20", "train", 7): "452ae46a501b3dde244d41f7f0ce07d199bb13bd93de4a59ec8d4095cc6e0356",
    ("all20", "val", 0): "8f6a12fabf5728438b155bd6507f0c4d660230f84cf3929c80c253d85c4fd892",
    ("all20", "val", 1): "ce138833c8c144492b42190e013807ad43235dacd31c0c3111a9cdbc207953f3",
    ("all20", "val", 7): "edc5aca3d3bffdf2e7bdb6824a4d65edf4db0aff85048f0d29b57856323f9ee9",
}
DIGEST_CONFIGS = {
    "default": SyntheticData(),
    "all20": SyntheticData(classes=list(range(1, 21)), seed=5, min_size=48, max_size=64),
}


@pytest.mark.parametrize("name", sorted(DIGEST_CONFIGS))
def test_context_and_part_focus_at_zero_keep_the_pre_context_images(name):
    cfg = DIGEST_CONFIGS[name]
    assert cfg.context == 0.0 and cfg.part_focus == 0.0     # the dataclass defaults
    for split in ("train", "val"):
        for index in (0, 1, 7):
            image, gt = render_sample(cfg, split, index)
            digest = hashlib.sha256(image.tobytes() + gt.tobytes() + str(image.shape).encode())
            assert digest.hexdigest() == PRE_CONTEXT_DIGESTS[(name, split, index)], (split, index)


def test_part_focus_dulls_the_body_but_keeps_shape_and_the_discriminative_part():
    cfg = SyntheticData(classes=[8, 12], max_objects=1, min_size=64, max_size=64)
    focused = SyntheticData(**{**cfg.__dict__, "part_focus": 1.0})
    for index in range(4):
        image, gt = render_sample(cfg, "train", index)
        image_f, gt_f = render_sample(focused, "train", index)
        np.testing.assert_array_equal(gt_f, gt)          # same objects in the same places
        background = gt == 0
        # only object pixels change (the background and its sensor noise are the same draws)
        assert (image_f[background] == image[background]).all()
        obj = (gt != 0) & (gt != 255)
        assert (image_f[obj] != image[obj]).any(axis=-1).mean() > 0.3
        # at full strength the body is a flat shared colour: its spread shrinks
        assert image_f[obj].std(axis=0).mean() < image[obj].std(axis=0).mean()


def test_test_split_has_its_own_ids_and_images(tiny_root):
    root, _ = tiny_root
    ids = {name: read_id_list(root / "ImageSets/Segmentation" / f"{name}.txt")
           for name in ("train_aug", "val", "test")}
    assert not set(ids["test"]) & (set(ids["train_aug"]) | set(ids["val"]))
    image_test, gt_test = render_sample(TINY, "test", 0)
    image_val, _ = render_sample(TINY, "val", 0)
    assert image_test.shape != image_val.shape or (image_test != image_val).any()
    np.testing.assert_array_equal(read_label(root / "SegmentationClassAug/syn_test_000000.png"),
                                  gt_test)


def test_unknown_class_style_is_a_config_error(tmp_path):
    cfg = SyntheticData(**{**TINY.__dict__, "classes": [8, 25]})   # bypasses config validation
    with pytest.raises(WsssError, match=r"data.synthetic.classes: no synthetic style for class ids \[25\]"):
        generate_dataset(tmp_path / "x", cfg)


# --------------------------------------------------------------------------- noise model
def _scene() -> np.ndarray:
    """40x48 GT: a cat, a bird and a person, with void borders."""
    label = np.zeros((40, 48), np.uint8)
    label[4:18, 4:20] = 8
    label[22:36, 6:22] = 3
    label[8:32, 30:42] = 15
    return add_void_border(label)


def test_noise_zero_returns_the_ground_truth(tiny_root):
    root, _ = tiny_root
    for gt in _gts(root).values():
        out = corrupt_label(gt, 0.0, NoiseTypes(), np.random.default_rng(0), TINY.classes)
        np.testing.assert_array_equal(out, gt)
        assert out is not gt


def test_void_takes_the_nearest_label_when_nothing_else_is_corrupted():
    gt = np.array([[8, 8, 255, 255, 0, 0],
                   [8, 8, 8, 255, 255, 0]], np.uint8)
    expected = np.array([[8, 8, 8, 0, 0, 0],
                         [8, 8, 8, 8, 0, 0]], np.uint8)
    out = corrupt_label(gt, 1.0, NoiseTypes(**NO_NOISE), np.random.default_rng(0), [8])
    np.testing.assert_array_equal(out, expected)


def test_more_noise_gives_lower_miou(tiny_root):
    root, _ = tiny_root
    gts = _gts(root)
    mious = []
    for noise in (0.0, 0.2, 0.5, 0.9):
        pseudo = [corrupt_label(gt, noise, NoiseTypes(), np.random.default_rng(7), TINY.classes)
                  for gt in gts.values()]
        matrix = sum((ConfusionMatrix(21).update(p, g) for p, g in zip(pseudo, gts.values())),
                     ConfusionMatrix(21))
        mious.append(matrix.scores()["miou"])
    assert mious[0] == 1.0
    assert mious[0] > mious[1] > mious[2] > mious[3]


def test_class_confusion_uses_only_similar_classes():
    gt = _scene()
    fg = (gt != 0) & (gt != 255)
    seen = set()
    for seed in range(30):
        out = corrupt_label(gt, 1.0, _only(class_confusion=5.0), np.random.default_rng(seed),
                            [1, 3, 8, 12, 15])
        np.testing.assert_array_equal(out == 0, corrupt_label(
            gt, 1.0, _only(), np.random.default_rng(seed), [1, 3, 8, 12, 15]) == 0)
        for cls in (8, 3, 15):
            values = set(np.unique(out[gt == cls]).tolist())
            assert len(values) == 1, "a whole object changes class, not a part"
            new = values.pop()
            assert new == cls or new in SIMILAR_CLASSES[cls]
            seen.add((cls, new))
        assert out[fg].size and not (out == 255).any()
    assert {(8, 12), (3, 1), (8, 8), (3, 3), (15, 15)} <= seen
    assert all(new == 15 for cls, new in seen if cls == 15)     # person has no look-alike
    # a similar class outside the dataset's classes is never used
    for seed in range(10):
        out = corrupt_label(gt, 1.0, _only(class_confusion=5.0), np.random.default_rng(seed),
                            [3, 8, 15])
        assert set(np.unique(out).tolist()) <= {0, 3, 8, 15}


def test_false_positives_use_a_class_of_the_image_on_background():
    gt = np.zeros((48, 48), np.uint8)
    gt[16:32, 16:32] = 12
    filled = corrupt_label(gt, 1.0, _only(), np.random.default_rng(0), [8, 12])
    grew = 0
    for seed in range(10):
        out = corrupt_label(gt, 1.0, _only(false_positives=3.0), np.random.default_rng(seed), [8, 12])
        assert set(np.unique(out).tolist()) <= {0, 12}
        assert (out[filled == 12] == 12).all()          # objects untouched
        grew += int(((out == 12) & (filled == 0)).sum())
    assert grew > 0


def test_missing_parts_and_boundary_noise():
    gt = _scene()
    filled = corrupt_label(gt, 1.0, _only(), np.random.default_rng(0), [3, 8, 15])
    lost = changed = 0
    for seed in range(10):
        out = corrupt_label(gt, 1.0, _only(missing_parts=2.0), np.random.default_rng(seed), [3, 8, 15])
        # parts only go to background
        assert ((out == filled) | (out == 0)).all()
        lost += int(((out == 0) & (filled != 0)).sum())
        out = corrupt_label(gt, 1.0, _only(boundary=1.0), np.random.default_rng(seed), [3, 8, 15])
        assert set(np.unique(out).tolist()) <= {0, 3, 8, 15}
        changed += int((out != filled).sum())
    assert lost > 0 and changed > 0


def test_ignore_regions_are_255_and_noise_is_validated():
    gt = _scene()
    out = corrupt_label(gt, 1.0, _only(ignore=1.0), np.random.default_rng(0), [3, 8, 15])
    assert (out == 255).any()
    filled = corrupt_label(gt, 1.0, _only(), np.random.default_rng(0), [3, 8, 15])
    assert ((out == filled) | (out == 255)).all()
    with pytest.raises(WsssError, match="data.noise: must be in \\[0, 1\\]"):
        corrupt_label(gt, 1.5, NoiseTypes(), np.random.default_rng(0), [3, 8, 15])


def test_write_noisy_pseudo_labels_is_order_independent(tiny_root, tmp_path):
    root, _ = tiny_root
    gt_dir = root / "SegmentationClassAug"
    ids = read_id_list(root / "ImageSets/Segmentation/train_aug.txt")
    args = (0.5, NoiseTypes(), 11, TINY.classes)
    write_noisy_pseudo_labels(gt_dir, ids, tmp_path / "a", *args)
    write_noisy_pseudo_labels(gt_dir, ids[::-1], tmp_path / "b", *args)
    write_noisy_pseudo_labels(gt_dir, ids[2:4], tmp_path / "c", *args)
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert sorted(a) == [f"{i}.png" for i in ids] and a == b
    assert c == {k: a[k] for k in c}
    assert Image.open(tmp_path / "a" / f"{ids[0]}.png").mode == "P"
    write_noisy_pseudo_labels(gt_dir, ids, tmp_path / "d", 0.5, NoiseTypes(), 12, TINY.classes)
    assert _files(tmp_path / "d") != a
    write_noisy_pseudo_labels(gt_dir, ids, tmp_path / "zero", 0.0, NoiseTypes(), 11, TINY.classes)
    for i in ids:
        np.testing.assert_array_equal(read_label(tmp_path / "zero" / f"{i}.png"),
                                      read_label(gt_dir / f"{i}.png"))


def test_write_noisy_pseudo_labels_names_a_missing_gt(tmp_path):
    write_label(tmp_path / "gt" / "x.png", _scene())
    with pytest.raises(DataError, match="gt/y.png: file not found"):
        write_noisy_pseudo_labels(tmp_path / "gt", ["x", "y"], tmp_path / "out", 0.5, NoiseTypes(),
                                  0, [3, 8, 15])


@pytest.mark.slow
def test_parallel_generation_matches_serial(tiny_root, tmp_path):
    root, summary = tiny_root
    assert generate_dataset(tmp_path / "VOC2012", TINY, n_jobs=2) == summary
    assert _files(tmp_path / "VOC2012") == _files(root)
