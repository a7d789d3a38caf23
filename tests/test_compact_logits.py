"""Compact logits (`infer.logits: compact`): each cell's top k classes exactly, the rest as one
log-sum-exp; every reader gets the full (C, h, w) array back."""
import zipfile

import numpy as np
import pytest
import torch

from wsss_core.config import params_from_dict
from wsss_core.crf import CRF_PRESETS, dense_crf, refine_split, upsampled_softmax
from wsss_core.data.datasets import voc_layout_split
from wsss_core.distributed import Context
from wsss_core.errors import ConfigError, DataError
from wsss_core.evaluate import score_folder, softmax, upsample_bilinear
from wsss_core.infer import infer_logits, prepare_output, valid_logits
from wsss_core.io import read_label
from wsss_core.logits_io import (
    logits_file,
    read_logits,
    store_logits,
    top_classes,
    write_compact_logits,
    write_logits,
)
from wsss_core.metrics import ConfusionMatrix

CPU = Context(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _full_and_compact(tmp_path, logits, top_k):
    write_logits(tmp_path / "x.npy", logits)
    write_compact_logits(tmp_path / "x.npz", logits, top_k)
    return read_logits(tmp_path / "x.npy"), read_logits(tmp_path / "x.npz")


def test_round_trip_keeps_the_top_classes_softmax_and_every_argmax(tmp_path):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (21, 6, 8)).astype(np.float32)
    full, compact = _full_and_compact(tmp_path, logits, top_k=4)
    assert compact.shape == full.shape == (21, 6, 8) and compact.dtype == np.float32

    kept = top_classes(full, 4)
    kept_mask = np.zeros(full.shape, bool)
    np.put_along_axis(kept_mask, kept, True, axis=0)
    # kept values are the full file's float16 values, bit for bit
    assert np.array_equal(compact[kept_mask], full[kept_mask])
    # dropped classes never beat a kept one of their cell
    lowest_kept = np.where(kept_mask, compact, np.inf).min(axis=0)
    assert (np.where(kept_mask, -np.inf, compact).max(axis=0) < lowest_kept).all()
    # the kept softmax differs only by the float16 rounding of `rest` (relative 2^-11 of it)
    p_full, p_compact = softmax(full.copy()), softmax(compact.copy())
    rest_mass = np.where(kept_mask, 0.0, p_full).sum(axis=0)
    rest = np.log(np.where(kept_mask, 0.0, np.exp(full)).sum(axis=0))
    tolerance = p_full * rest_mass * (np.abs(rest) + 1) * 2.0 ** -10 + 1e-7
    assert (np.abs(p_compact - p_full) <= tolerance)[kept_mask].all()
    assert np.allclose(np.where(kept_mask, 0.0, p_compact).sum(axis=0), rest_mass, rtol=1e-2)
    assert np.array_equal(compact.argmax(axis=0), full.argmax(axis=0))


def test_hand_built_cells_keep_the_expected_classes_and_rest(tmp_path):
    # cell (y, x): class (x + y) % 5 at 5, the next class at 3, the other three at 0, -1, -2
    logits = np.zeros((5, 2, 3), np.float32)
    for y in range(2):
        for x in range(3):
            first = (x + y) % 5
            for rank, value in enumerate([5.0, 3.0, 0.0, -1.0, -2.0]):
                logits[(first + rank) % 5, y, x] = value
    write_compact_logits(tmp_path / "x.npz", logits, top_k=2)
    with np.load(tmp_path / "x.npz") as data:
        classes, kept, rest = data["classes"], data["logits"], data["rest"]
        assert int(data["num_classes"]) == 5
    expected = [[[(x + y) % 5, (x + y + 1) % 5] for x in range(3)] for y in range(2)]
    assert np.array_equal(np.moveaxis(classes, 0, -1), expected)
    assert np.array_equal(kept[0], np.full((2, 3), 5.0)) and np.array_equal(kept[1], np.full((2, 3), 3.0))
    assert np.allclose(rest, np.log(np.exp(0.0) + np.exp(-1.0) + np.exp(-2.0)), atol=1e-3)
    back = read_logits(tmp_path / "x.npz", num_classes=5)
    dropped = np.log((np.exp(0.0) + np.exp(-1.0) + np.exp(-2.0)) / 3)   # the three share it evenly
    for y in range(2):
        for x in range(3):
            first = (x + y) % 5
            assert back[first, y, x] == 5.0 and back[(first + 1) % 5, y, x] == 3.0
            others = [back[(first + r) % 5, y, x] for r in (2, 3, 4)]
            assert np.allclose(others, dropped, atol=1e-3)


def test_compact_file_is_smaller_than_full_for_coco_classes(tmp_path):
    # 81 classes of which three are likely (background and two objects), on a 12x16 grid
    rng = np.random.default_rng(1)
    logits = rng.normal(-6, 1, (81, 12, 16)).astype(np.float32)
    logits[0, :, :8] += 14
    logits[17, :, 8:] += 14
    logits[42, 4:8] += 10
    full, compact = tmp_path / "x.npy", tmp_path / "x.npz"
    write_logits(full, logits)
    write_compact_logits(compact, logits, top_k=8)
    payload = 12 * 16 * (8 * (1 + 2) + 2)        # k uint8 ids + k float16 values + rest per cell
    assert full.stat().st_size > 81 * 12 * 16 * 2
    assert payload < compact.stat().st_size < payload + 2048    # + zip and .npy headers
    assert compact.stat().st_size < 0.4 * full.stat().st_size
    assert np.array_equal(read_logits(compact).argmax(0), read_logits(full).argmax(0))


def test_corrupt_compact_files_are_errors_naming_the_file(tmp_path):
    logits = np.random.default_rng(2).normal(size=(21, 3, 4)).astype(np.float32)
    good = tmp_path / "good.npz"
    write_compact_logits(good, logits, top_k=3)

    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(DataError, match=r"cut\.npz: cannot read compact logits"):
        read_logits(cut)
    assert valid_logits(good, 21) and not valid_logits(cut, 21) and not valid_logits(good, 81)

    other = tmp_path / "other.npz"
    with open(other, "wb") as fh:
        np.savez(fh, cams=np.zeros((1, 3, 4)))
    with pytest.raises(DataError, match=r"other\.npz: not a compact logits file"):
        read_logits(other)

    npy_inside = tmp_path / "array.npz"
    with open(npy_inside, "wb") as fh:
        np.save(fh, logits)
    with pytest.raises(DataError, match=r"array\.npz: not a compact logits file"):
        read_logits(npy_inside)

    def rewritten(name, **changes):
        with np.load(good) as data:
            members = {key: data[key] for key in data.files} | changes
        path = tmp_path / name
        with open(path, "wb") as fh:
            np.savez(fh, **members)
        return path

    with np.load(good) as data:
        classes = data["classes"].copy()
    classes[1, 0, 0] = 21
    with pytest.raises(DataError, match=r"range\.npz: compact logits: class ids out of 0\.\.20"):
        read_logits(rewritten("range.npz", classes=classes))
    classes[1, 0, 0] = classes[0, 0, 0]
    with pytest.raises(DataError, match=r"repeat\.npz: .*repeated within a cell"):
        read_logits(rewritten("repeat.npz", classes=classes))
    with pytest.raises(DataError, match=r"shape\.npz: compact logits: classes"):
        read_logits(rewritten("shape.npz", rest=np.zeros((4, 3), np.float16)))
    with pytest.raises(DataError, match=r"good\.npz: logits have shape \(21, 3, 4\); expected \(81, h, w\)"):
        read_logits(good, num_classes=81)

    # a folder holding both forms of one image is ambiguous
    write_logits(tmp_path / "good.npy", logits)
    with pytest.raises(DataError, match=r"good\.npy: both full and compact logits of good"):
        logits_file(tmp_path, "good")
    assert zipfile.is_zipfile(good)   # the compact form is a plain (uncompressed) .npz


def _two_region_image():
    """A 24x32 image: left half dark, right half bright, a mid-grey square straddling both."""
    image = np.zeros((24, 32, 3), np.uint8)
    image[:, 16:] = 200
    image[8:16, 12:20] = 100
    return image


def test_dense_crf_labels_equal_for_full_and_compact_logits(tmp_path):
    # three classes compete at every cell (background 0, classes 5 and 9) with noisy, weak
    # margins the CRF has to settle; the other 18 sit at -20 (± 0.01), far below DenseCRF's
    # probability floor in both forms, so top-3 compact logits carry everything the CRF uses
    rng = np.random.default_rng(3)
    logits = -20 + rng.uniform(-0.01, 0.01, (21, 3, 4))
    logits[0] = [[2, 1, -1, -1], [2, 1, 0, -1], [2, 1, -1, -1]]
    logits[5] = [[-1, 0, 2, 2], [-1, 0, 1, 2], [-1, 0, 2, 2]]
    logits[9] = [[0, 1, 1, 0], [0, 1.5, 1.5, 0], [0, 1, 1, 0]]
    logits[[0, 5, 9]] += rng.normal(0, 0.7, (3, 3, 4))
    full, compact = _full_and_compact(tmp_path, logits.astype(np.float32), top_k=3)
    assert set(np.unique(top_classes(full, 3))) == {0, 5, 9}
    image = _two_region_image()
    settings = CRF_PRESETS["deeplab"]
    prob_full, prob_compact = upsampled_softmax(full, (24, 32)), upsampled_softmax(compact, (24, 32))
    assert np.allclose(prob_full, prob_compact, atol=1e-6)
    labels_full = dense_crf(image, prob_full, settings).argmax(0)
    labels_compact = dense_crf(image, prob_compact, settings).argmax(0)
    assert np.array_equal(labels_full, labels_compact)
    assert not np.array_equal(labels_full, prob_full.argmax(0))   # the CRF did change labels
    assert np.array_equal(upsample_bilinear(compact, (24, 32)).argmax(0),
                          upsample_bilinear(full, (24, 32)).argmax(0))


def _tiny_model():
    from wsss_core.methods import create_method
    from wsss_core.methods.deeplab.presets import DEEPLAB_PRESETS
    config = {**DEEPLAB_PRESETS["demo"], "init_weights": "", "seed": 0}
    config["model"] = {**config["model"], "blocks": [1, 1, 1, 1], "width": 8}
    torch.manual_seed(0)
    return create_method("cdl_b", 21, config).build_model()


def test_infer_writes_compact_files_that_crf_and_scoring_read(voc_root, tmp_path):
    from wsss_core.methods.registry import get_method
    record = get_method("cdl_b")
    split = voc_layout_split(voc_root, "val")
    model = _tiny_model()
    full_dir, compact_dir = tmp_path / "full", tmp_path / "compact"
    for folder, top_k in ((full_dir, None), (compact_dir, 4)):
        prepare_output(folder, "model-a", CPU)
        assert infer_logits(model, record.predictors({}), record.normalize, split,
                            {"main": folder}, 21, CPU, compact_top_k=top_k) == 2
    assert sorted(p.name for p in compact_dir.glob("b*")) == ["b1.npz", "b2.npz"]
    assert valid_logits(compact_dir / "b1.npz", 21)
    # scoring and the crf stage read the .npz files (an untrained model's logits are close to
    # uniform, so top-4 compact ones need not give full logits' labels: compared with their own)
    expected = ConfusionMatrix(21)
    for image_id in ("b1", "b2"):
        compact = read_logits(compact_dir / f"{image_id}.npz", 21)
        assert np.array_equal(compact.argmax(0), read_logits(full_dir / f"{image_id}.npy").argmax(0))
        gt = read_label(split.gt_path(image_id), 21)
        expected.update(upsample_bilinear(compact, gt.shape).argmax(0), gt)
    assert (score_folder(compact_dir, split, 21, "logits").matrix == expected.matrix).all()
    plain = refine_split(split, compact_dir, tmp_path / "pred", 21, None, n_jobs=1)
    assert (plain.no_crf.matrix == expected.matrix).all() and plain.images == 2

    # same model, the other form asked for: each file is replaced (never both forms at once)
    assert infer_logits(model, record.predictors({}), record.normalize, split,
                        {"main": compact_dir}, 21, CPU) == 2
    assert sorted(p.name for p in compact_dir.glob("b*")) == ["b1.npy", "b2.npy"]
    assert np.array_equal(np.load(compact_dir / "b1.npy"), np.load(full_dir / "b1.npy"))


def test_store_logits_replaces_the_other_form(tmp_path):
    logits = np.random.default_rng(4).normal(size=(21, 3, 4)).astype(np.float32)
    assert store_logits(tmp_path, "a", logits, compact_top_k=5) == tmp_path / "a.npz"
    assert logits_file(tmp_path, "a") == tmp_path / "a.npz"
    assert store_logits(tmp_path, "a", logits) == tmp_path / "a.npy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy"]
    assert logits_file(tmp_path, "missing") == tmp_path / "missing.npy"


@pytest.mark.parametrize("raw, message", [
    ({"infer": {"logits": "sparse"}}, "infer.logits: expected one of 'full', 'compact'"),
    ({"infer": {"compact_top_k": 0}}, "infer.compact_top_k: must be in 1..255"),
])
def test_compact_params_are_one_line_errors(raw, message):
    with pytest.raises(ConfigError) as info:
        params_from_dict(raw)
    assert message in str(info.value) and "\n" not in str(info.value)
    params = params_from_dict({"infer": {"logits": "compact", "compact_top_k": 6}})
    assert params.infer.stored_top_k == 6 and params_from_dict({}).infer.stored_top_k is None
