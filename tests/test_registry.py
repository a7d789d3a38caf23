"""Adding a method is one module plus one record: a tiny method defined and registered here is
trained, run for inference and scored (with and without CRF) by the ordinary pipeline functions,
which find everything they need in its registry record."""
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import make_voc_dataset
from wsss_core.config import params_from_dict
from wsss_core.errors import ConfigError
from wsss_core.methods.registry import (
    MethodRecord,
    get_method,
    method_names,
    register_method,
    unregister_method,
)
from wsss_core.pipeline.crf import run_crf
from wsss_core.pipeline.infer import run_inference
from wsss_core.pipeline.paths import RunPaths
from wsss_core.pipeline.train import run_training


class PixelClassifier(nn.Module):
    """A 1×1 convolution over 8×8 average-pooled colours: logits at stride 8, like DeepLab's."""

    def __init__(self, num_classes: int, width: int = 4):
        super().__init__()
        self.embed = nn.Conv2d(3, width, 1)
        self.classify = nn.Conv2d(width, num_classes, 1)

    def forward(self, images):
        return self.classify(torch.relu(self.embed(F.avg_pool2d(images, 8, ceil_mode=True))))


@dataclasses.dataclass
class PixelOptions:
    label_smoothing: float = 0.0


class PixelMethod:
    """The training adapter: plain CE of the upsampled logits, SGD, constant LR."""

    needs_strong_view = False
    find_unused_parameters = False

    def __init__(self, name, num_classes, config):
        self.name, self.num_classes, self.config = name, num_classes, config
        self.options = PixelOptions(**config["method_options"])

    def build_model(self):
        return PixelClassifier(self.num_classes, **self.config["model"])

    def optimizer(self, model):
        return torch.optim.SGD([{"params": list(model.parameters()), "initial_lr": self.config["lr"],
                                 "lr": self.config["lr"]}], lr=self.config["lr"])

    def lr_factor(self, iteration):
        return 1.0

    def training_loss(self, model, batch, iteration):
        logits = F.interpolate(model(batch["image"]), size=batch["label"].shape[-2:], mode="bilinear",
                               align_corners=False)
        loss = F.cross_entropy(logits, batch["label"], ignore_index=255,
                               label_smoothing=self.options.label_smoothing)
        return loss, {"loss": float(loss.detach())}


def _unit_chw(image):
    return (image.astype(np.float32) / 255.0).transpose(2, 0, 1).copy()


def _top_left_crop(image, label, rng, crop, config, strong_view):
    flip = bool(rng.integers(2))
    image, label = image[:crop, :crop], label[:crop, :crop]
    if flip:
        image, label = image[:, ::-1], label[:, ::-1]
    return {"image": torch.from_numpy(_unit_chw(image)), "label": torch.from_numpy(label.astype(np.int64))}


TINY_PRESET = {"iterations": 4, "batch_size": 2, "iter_size": 1, "crop": 16, "lr": 0.1,
               "checkpoint_every": 2, "log_every": 2, "num_workers": 0, "init_weights": "",
               "method_options": {}, "model": {"width": 4}}


@pytest.fixture
def pixel_method():
    record = register_method(MethodRecord(
        name="pixel", create=PixelMethod, build_model=PixelClassifier, learns_from="pseudo_labels",
        normalize=_unit_chw, train_sample=_top_left_crop, crf_preset="deeplab",
        presets={"tiny": TINY_PRESET}, predictors=lambda config: {"main": lambda m, x: m(x)},
        options=PixelOptions, description="a 1x1-conv pixel classifier (test only)"))
    yield record
    unregister_method("pixel")


def test_registered_method_trains_infers_and_scores_through_the_pipeline(pixel_method, tmp_path):
    root = tmp_path / "VOC2012"
    make_voc_dataset(root, {"train": ["t1", "t2", "t3", "t4"], "val": ["v1", "v2"]}, size=(20, 24))
    labels = tmp_path / "pseudo"
    shutil.copytree(root / "SegmentationClassAug", labels)
    params = params_from_dict({
        "method": "pixel", "dataset": "voc12", "data": {"voc12": {"root": str(root)}},
        "pseudo_labels": {"source": "files", "path": str(labels)},
        "train": {"preset": "tiny", "device": "cpu", "method_options": {"label_smoothing": 0.1}},
        "infer": {"device": "cpu"}, "crf": {"n_jobs": 1, "overlays": 1}, "evaluate": {"n_jobs": 1}})
    paths = dataclasses.replace(RunPaths.defaults(params, tmp_path / "run"), pseudo_labels=labels)

    summary = run_training(params, paths)
    assert summary["iterations"] == 4 and summary["effective_batch"] == 2
    config = json.loads(paths.run_config.read_text())
    assert config["method"] == "pixel" and config["method_options"] == {"label_smoothing": 0.1}
    assert json.loads(paths.train_summary.read_text())["config"] == config
    state = torch.load(paths.model_file, weights_only=True)
    assert set(state) == {"embed.weight", "embed.bias", "classify.weight", "classify.bias"}

    scores = run_inference(params, paths)
    assert scores["method"] == "pixel" and 0.0 <= scores["miou"] <= 1.0
    logits = np.load(paths.logits_dir("val") / "v1.npy")
    assert logits.shape == (21, 3, 3)  # 20×24 image at stride 8 (ceil)
    crf = run_crf(params, paths)
    assert crf["crf"] is True and crf["miou_no_crf"] == pytest.approx(scores["miou"])
    assert sorted(p.name for p in paths.predictions_dir("val").iterdir()) == ["v1.png", "v2.png"]
    metric = json.loads(paths.scores_crf.read_text())
    assert "per_class_iou" not in metric and metric["method"] == "pixel"


def test_registry_lists_methods_and_names_the_key_of_an_unknown_one(pixel_method):
    assert {"baseline", "cdl_b", "cdl_e", "dupl", "pixel"} <= set(method_names())
    assert get_method("cdl_e").crf_preset == "deeplab" and get_method("dupl").crf_preset == "dupl"
    assert not get_method("dupl").uses_pseudo_labels and get_method("pixel").uses_pseudo_labels
    with pytest.raises(ConfigError, match=r"^params.yaml: benchmark.x\[0\]: unknown method 'pxl'"):
        get_method("pxl", "benchmark.x[0]")
    bad = params_from_dict({"method": "pixel", "train": {"preset": "tiny",
                                                         "method_options": {"label_smoothing": "x"}}})
    from wsss_core.pipeline.resolve import effective_train_config

    with pytest.raises(ConfigError, match="^params.yaml: train.method_options.label_smoothing: "
                                          "expected a number, got 'x'$"):
        effective_train_config(bad)
