"""Inference writes one (C, h, w) float16 file per image, skips valid ones, and forgets files
written by another model."""
import numpy as np
import pytest
import torch

from wsss_core.data.datasets import voc_layout_split
from wsss_core.distributed import Context
from wsss_core.infer import MODEL_STAMP, infer_logits, prepare_output, valid_logits
from wsss_core.methods import create_method
from wsss_core.methods.deeplab.presets import DEEPLAB_PRESETS
from wsss_core.methods.registry import get_method

RECORD = get_method("cdl_b")
CPU = Context(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _method(name="cdl_b"):
    config = {**DEEPLAB_PRESETS["demo"], "init_weights": "", "seed": 0}
    config["model"] = {**config["model"], "blocks": [1, 1, 1, 1], "width": 8}
    return create_method(name, 21, config)


def test_infer_writes_resumes_and_discards_foreign_files(voc_root, tmp_path):
    split = voc_layout_split(voc_root, "val")
    method = _method()
    torch.manual_seed(0)
    model = method.build_model()
    out = tmp_path / "logits"
    prepare_output(out, "model-a", CPU)
    written = infer_logits(model, RECORD.predictors({}), RECORD.normalize, split, {"main": out}, 21, CPU)
    assert written == 2 and (out / MODEL_STAMP).read_text().strip() == "model-a"
    logits = np.load(out / "b1.npy")
    assert logits.dtype == np.float16 and logits.shape == (21, 3, 4)  # 20×24 image at stride 8
    model.eval()
    from wsss_core.data.transforms import to_bgr_mean_subtracted
    from wsss_core.io import read_image
    image = torch.from_numpy(to_bgr_mean_subtracted(read_image(split.image_path("b1"))))[None]
    expected = model.predict(image)[0].numpy().astype(np.float16)
    assert np.array_equal(logits, expected)

    # resume: valid files are kept, a truncated one is rewritten
    (out / "b2.npy").write_bytes((out / "b2.npy").read_bytes()[:20])
    assert not valid_logits(out / "b2.npy", 21)
    assert infer_logits(model, RECORD.predictors({}), RECORD.normalize, split, {"main": out}, 21, CPU) == 1
    assert valid_logits(out / "b2.npy", 21) and not valid_logits(out / "b2.npy", 81)

    # another model's files are discarded before inference
    prepare_output(out, "model-b", CPU)
    assert sorted(p.name for p in out.iterdir()) == [MODEL_STAMP]


def test_changed_or_corrupt_image_invalidates_its_logits(voc_root, tmp_path):
    from wsss_core.errors import DataError
    from wsss_core.io import read_image, write_image

    split = voc_layout_split(voc_root, "val")
    torch.manual_seed(0)
    model = _method().build_model()
    out = tmp_path / "logits"

    def infer():
        prepare_output(out, "model-a", CPU)
        return infer_logits(model, RECORD.predictors({}), RECORD.normalize, split, {"main": out}, 21, CPU)

    assert infer() == 2
    untouched = (out / "b1.npy").stat()
    assert infer() == 0  # same model, same images: everything reused
    changed = 255 - read_image(split.image_path("b2"))
    write_image(split.image_path("b2"), changed)
    assert infer() == 1  # only b2 again, from its new pixels
    model.eval()
    image = torch.from_numpy(RECORD.normalize(read_image(split.image_path("b2"))))[None]
    assert np.array_equal(np.load(out / "b2.npy"), model.predict(image)[0].numpy().astype(np.float16))
    assert (out / "b1.npy").stat().st_mtime_ns == untouched.st_mtime_ns
    split.image_path("b1").write_bytes(split.image_path("b1").read_bytes()[:40])  # became corrupt
    with pytest.raises(DataError, match=r"b1\.jpg: cannot decode image"):
        infer()  # re-read (not its old logits reused), so the corruption is reported
