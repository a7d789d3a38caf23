"""Method `cam`: the CAM classifier's maps and logits against hand computations, its loss, its
test-time rule, weights shared with the DeepLab backbone, and a short run of the training loop."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import make_voc_dataset, tiny_cam_run
from wsss_core.data.classes import classes_in_label, write_class_labels
from wsss_core.data.datasets import voc_layout_split
from wsss_core.data.train_set import TrainSet
from wsss_core.data.transforms import to_bgr_mean_subtracted, to_imagenet_normalized
from wsss_core.distributed import Context
from wsss_core.errors import ConfigError
from wsss_core.methods import build_model, create_method
from wsss_core.methods.cam_classifier import (
    CAM_PRESETS,
    CamOptions,
    cam_predictors,
    cam_scores,
)
from wsss_core.methods.registry import get_method
from wsss_core.models import load_init_weights
from wsss_core.models.classifier import ImagenetInput
from wsss_core.training import train

TINY_RESNET = {"blocks": [1, 1, 1, 1], "width": 8}
TINY_VIT = {"vit_name": "deit_tiny_patch16_224", "patch_size": 8, "depth": 1, "embed_dim": 32,
            "num_heads": 2}


@pytest.mark.parametrize("backbone,model,grid", [("resnet", TINY_RESNET, (5, 6)),
                                                 ("vit", TINY_VIT, (4, 5))])
def test_cams_are_the_classifier_on_every_feature_and_logits_their_mean(backbone, model, grid):
    torch.manual_seed(0)
    net = build_model("cam", 6, backbone=backbone, **model).eval()
    images = torch.randn(2, 3, 33, 41)
    with torch.no_grad():
        features = net.features(images)
        cam, aux = net.cams(images)
        logits = net(images)
    weight = net.classifier.weight[:, :, 0, 0]                      # (K-1, D)
    assert features.shape[-2:] == grid and cam.shape == (2, 5, *grid) and logits.shape == (2, 5)
    expected = torch.einsum("cd,bdhw->bchw", weight, features)      # no ReLU
    assert torch.allclose(cam, expected, atol=1e-5) and torch.equal(aux, cam)
    assert (cam < 0).any()
    assert torch.allclose(logits, cam.mean(dim=(2, 3)), atol=1e-5)
    assert net.classifier.bias is None


@pytest.mark.parametrize("backbone,model", [("resnet", TINY_RESNET), ("vit", TINY_VIT)])
def test_max_pooling_scores_the_classifier_on_the_per_channel_maxima(backbone, model):
    # DuPL's students pool by max: the logits are the classifier on each feature channel's
    # largest value, which need not sit at one position (so not the CAM's maximum)
    torch.manual_seed(0)
    net = build_model("cam", 4, backbone=backbone, pooling="max", **model).eval()
    images = torch.randn(2, 3, 33, 41)
    with torch.no_grad():
        features = net.features(images)
        logits = net(images)
    weight = net.classifier.weight[:, :, 0, 0]
    expected = features.amax(dim=(2, 3)) @ weight.T
    assert torch.allclose(logits, expected, atol=1e-5)
    with pytest.raises(ConfigError, match="pooling 'sum' is not one of avg, max"):
        build_model("cam", 4, backbone=backbone, pooling="sum", **model)


def test_multilabel_soft_margin_loss_on_a_hand_example():
    class Fixed(nn.Module):
        def forward(self, images):
            return torch.tensor([[0.0, 2.0], [-1.0, 1.0]])

    method = create_method("cam", 3, {**CAM_PRESETS["demo"], "seed": 0})
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    loss, terms = method.training_loss(Fixed(), {"image": torch.zeros(2, 3, 8, 8),
                                                 "cls_label": labels}, 1)

    def log_sigmoid(x):
        return -math.log1p(math.exp(-x))
    # per image: -mean over classes of y log σ(x) + (1 - y) log σ(-x); then mean over images
    first = -(log_sigmoid(0.0) + log_sigmoid(-2.0)) / 2
    second = -(log_sigmoid(-1.0) + log_sigmoid(1.0)) / 2
    assert float(loss) == pytest.approx((first + second) / 2, rel=1e-6)
    assert terms == {"loss": pytest.approx((first + second) / 2, rel=1e-6)}


def test_vit_input_is_what_dupl_students_see():
    image = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    converted = ImagenetInput()(torch.from_numpy(to_bgr_mean_subtracted(image))[None])[0]
    assert torch.allclose(converted, torch.from_numpy(to_imagenet_normalized(image)), atol=1e-5)


class RampCams(nn.Module):
    """A stand-in classifier: fixed logits; every class's raw CAM is the input's first channel."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor([logits])

    def forward(self, images):
        return self.logits.expand(images.shape[0], -1)

    def cams(self, images):
        cam = images[:, :1].expand(-1, self.logits.shape[1], -1, -1)
        return cam, cam


def test_predictor_background_threshold_and_presence_from_the_classifier():
    # raw CAM = column index 0..15; at scale 1.0 only it is normalised to (x - 0) / (15 + 1e-5)
    images = torch.arange(16.0).expand(1, 3, 16, 16).clone()
    config = {"method_options": {"cam_scales": [1.0], "bkg_threshold": 0.25}}
    predict = cam_predictors(config)["cam"]
    # class 3 alone above sigmoid 0.5 (logit 2 > 0; others -2): labels 0 / 3 split at 0.25
    logits = predict(RampCams([-2.0, -2.0, 2.0, -2.0]), images)
    # stored on the stride-8 grid as log scores: the background's is log 0.25 everywhere
    assert logits.shape == (1, 5, 2, 2)
    assert torch.allclose(logits[0, 0], torch.full((2, 2), math.log(0.25)))
    assert torch.allclose(logits[0, 1], torch.full((2, 2), math.log(1e-5)))
    scores = cam_scores(RampCams([-2.0, -2.0, 2.0, -2.0]), images, CamOptions(cam_scales=[1.0]))
    label = scores.argmax(1)[0]
    expected_column = np.where(np.arange(16) / (15 + 1e-5) > 0.25, 3, 0)
    assert np.array_equal(label.numpy(), np.tile(expected_column, (16, 1)))
    assert torch.all(scores[0, [1, 2, 4]] == 0) and torch.all(scores[0, 0] == 0.25)
    # nothing present: all background
    nothing = cam_scores(RampCams([-2.0] * 4), images, CamOptions(cam_scales=[1.0]))
    assert torch.all(nothing.argmax(1) == 0)


def test_backbone_weights_are_the_deeplab_ones_both_ways():
    cam = build_model("cam", 21, backbone="resnet", **TINY_RESNET)
    deeplab = build_model("baseline", 21, **TINY_RESNET, msc_scales=[0.5], test_scales=[0.5])
    # every backbone key is supplied; only the ASPP head (8 tensors) keeps its initialisation
    report = load_init_weights(deeplab, cam.base.state_dict(), min_share=0.5)
    assert report.missing == [f"base.aspp.c{i}.{p}" for i in range(4) for p in ("weight", "bias")]
    assert not report.unexpected
    assert torch.equal(deeplab.base.layer5.block1.increase.conv.weight,
                       cam.base.layer5.block1.increase.conv.weight)
    other = build_model("cam", 21, backbone="resnet", **TINY_RESNET)
    report = load_init_weights(other, deeplab.state_dict(), min_share=1.0)
    assert not report.missing and all(k.startswith("aspp.") for k in report.unexpected)


def test_backbone_parameters_are_checked():
    with pytest.raises(ConfigError, match="'patch_size' is not used by the cam method's backbone 'resnet'"):
        build_model("cam", 21, backbone="resnet", patch_size=8)
    with pytest.raises(ConfigError, match="'width' is not used .* backbone 'vit'"):
        build_model("cam", 21, backbone="vit", width=8)
    with pytest.raises(ConfigError, match="method_options.backbone"):
        create_method("cam", 21, {**CAM_PRESETS["demo"], "model": {"backbone": "vit"}})
    with pytest.raises(ConfigError, match="train.method_options.backbone: expected one of"):
        create_method("cam", 21, {**CAM_PRESETS["demo"], "method_options": {"backbone": "vgg"}})


@pytest.mark.parametrize("backbone,model", [("resnet", TINY_RESNET), ("vit", TINY_VIT)])
def test_three_iterations_of_the_training_loop(tmp_path, backbone, model):
    root = tmp_path / "VOC2012"
    gts = make_voc_dataset(root, {"train": ["a", "b", "c", "d"]}, size=(24, 28))
    write_class_labels(tmp_path / "cls_labels.json",
                       {i: classes_in_label(gt, 21) for i, gt in gts.items()})
    config = {**CAM_PRESETS["demo"], "iterations": 3, "batch_size": 2, "crop": 24,
              "checkpoint_every": 3, "log_every": 1, "seed": 0, "model": model, "init_weights": "",
              "method_options": {"backbone": backbone}}
    method = create_method("cam", 21, config)
    dataset = TrainSet(voc_layout_split(root, "train"), get_method("cam"), 21, config, 0,
                       tmp_path / "cls_labels.json")
    sample = dataset[0]
    assert sample["image"].shape == (3, 24, 24) and sample["cls_label"].shape == (20,)
    summary = train(method, dataset, Context(0, 1, 0, torch.device("cpu")), config, tmp_path / "run")
    assert summary["iterations"] == 3 and np.isfinite(summary["final_losses"]["loss"])
    state = torch.load(tmp_path / "run" / "model.pth", weights_only=True)
    prefix = "base." if backbone == "resnet" else "encoder."
    assert "classifier.weight" in state and all(
        k == "classifier.weight" or k.startswith(prefix) for k in state)


@pytest.mark.slow
def test_cam_only_baseline_through_train_infer_and_crf(tmp_path):
    from wsss_core.pipeline.crf import run_crf
    from wsss_core.pipeline.infer import run_inference
    from wsss_core.pipeline.train import run_training

    # the synthetic dataset's layout: the prepare stage's folder holds VOC2012/ and cls_labels.json
    params, paths = tiny_cam_run(tmp_path, crf={"n_jobs": 1, "overlays": 1})
    assert run_training(params, paths)["iterations"] == 2
    scores = run_inference(params, paths)
    assert 0.0 <= scores["miou"] <= 1.0 and 0.0 <= scores["cam_miou_gt_labels"] <= 1.0
    assert np.load(paths.logits_dir("val") / "v1.npy").shape == (21, 3, 4)
    assert run_crf(params, paths)["crf"] is True
