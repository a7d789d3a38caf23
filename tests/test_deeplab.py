"""DeepLab v2 / MSC models: upstream key layout, feature sizes, weights, outputs, frozen BN."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import fixtures_dir
from wsss_core.errors import ConfigError, DataError, WsssError
from wsss_core.methods import build_model
from wsss_core.methods.registry import method_names
from wsss_core.models import freeze_batchnorm, load_init_weights
from wsss_core.models.deeplab_v2 import MSC, MscOutputs, ScaleOutputs
from wsss_core.models.resnet import feature_size

FIXTURES = Path(os.environ.get("WSSS_CDL_FIXTURES", fixtures_dir("cdl")))
TINY = dict(blocks=[1, 1, 1, 1], width=8)


def tiny(method: str, num_classes: int = 5, **params) -> MSC:
    torch.manual_seed(0)
    return build_model(method, num_classes, **{**TINY, **params})


# --------------------------------------------------------------------------- full-size layout
@pytest.fixture(scope="module")
def full_models():
    with torch.device("meta"):   # no memory, no init cost, no forward
        return {method: build_model(method, 21) for method in ("baseline", "cdl_b", "cdl_e")}


def test_resnet101_msc_matches_upstream_layout(full_models):
    state = full_models["baseline"].state_dict()
    assert len(state) == 632
    assert sum(p.numel() for p in full_models["baseline"].parameters()) == 44_048_532
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["base.layer1.conv1.conv.weight"] == (64, 3, 7, 7)
    assert shapes["base.layer2.block1.shortcut.conv.weight"] == (256, 64, 1, 1)
    assert shapes["base.layer3.block1.reduce.conv.weight"] == (128, 256, 1, 1)
    assert shapes["base.layer4.block7.conv3x3.conv.weight"] == (256, 256, 3, 3)
    assert shapes["base.layer4.block23.increase.bn.running_var"] == (1024,)
    assert shapes["base.layer5.block3.increase.conv.weight"] == (2048, 512, 1, 1)
    assert shapes["base.aspp.c0.weight"] == (21, 2048, 3, 3)
    assert shapes["base.aspp.c3.bias"] == (21,)
    assert "base.layer4.block24.reduce.conv.weight" not in state
    assert "base.layer1.conv1.bn.num_batches_tracked" in state
    assert not any("shortcut" in k for k in state if ".block2." in k)


def test_cdl_models_add_heads_under_original_names(full_models):
    base_keys = set(full_models["baseline"].state_dict())
    cdl_b = full_models["cdl_b"].state_dict()
    cdl_e = full_models["cdl_e"].state_dict()
    # aspp_2nd (8) + affinity: 4 branches × (conv + 5 BN entries), stored twice, + reduce_dim
    assert len(cdl_b) == 632 + 8 + 2 * 4 * 6 + 1
    assert len(cdl_e) == len(cdl_b) + 8
    assert base_keys < set(cdl_b) < set(cdl_e)
    for key in ("base.aspp_2nd.c2.weight", "base.affinity_3rd.aff_conv_2.0.weight",
                "base.affinity_3rd.aff_module.0.0.weight", "base.affinity_3rd.aff_conv_5.1.bias",
                "base.affinity_3rd.aff_module.3.1.running_mean",
                "base.affinity_3rd.reduce_dim.weight"):
        assert key in cdl_b, key
    assert "base.aspp_3rd.c3.bias" in cdl_e and "base.aspp_3rd.c0.weight" not in cdl_b
    assert tuple(cdl_b["base.affinity_3rd.aff_conv_2.0.weight"].shape) == (32, 256, 1, 1)
    assert tuple(cdl_b["base.affinity_3rd.aff_conv_5.0.weight"].shape) == (128, 2048, 1, 1)
    assert tuple(cdl_b["base.affinity_3rd.reduce_dim.weight"].shape) == (128, 256, 1, 1)
    head_e = full_models["cdl_e"].base.affinity_3rd
    assert isinstance(head_e.aff_conv_3[3], nn.Dropout2d)
    assert head_e.aff_module[1] is head_e.aff_conv_3
    assert len(full_models["cdl_b"].base.affinity_3rd.aff_conv_3) == 3   # no dropout in CDL-b


def test_backbone_dilations_and_stem():
    base = tiny("baseline").base
    assert base.layer1.pool.ceil_mode and base.layer1.pool.stride == 2
    assert base.layer3.block1.reduce.conv.stride == (2, 2)
    assert base.layer4.block1.conv3x3.conv.dilation == (2, 2)
    assert base.layer5.block1.conv3x3.conv.dilation == (4, 4)
    assert [base.aspp.get_submodule(f"c{i}").dilation[0] for i in range(4)] == [6, 12, 18, 24]
    assert all(m.bias is None for n, m in base.named_modules()
               if isinstance(m, nn.Conv2d) and "layer" in n)


def test_aspp_sums_four_dilated_branches_with_small_gaussian_init():
    torch.manual_seed(0)
    aspp = build_model("baseline", 21, **TINY).base.aspp
    x = torch.randn(1, 256, 9, 9)
    branches = [aspp.get_submodule(f"c{i}")(x) for i in range(4)]
    assert torch.allclose(aspp(x), sum(branches), atol=1e-6)
    weights = torch.cat([aspp.get_submodule(f"c{i}").weight.flatten() for i in range(4)])
    weights = weights.detach()
    assert 0.0095 < float(weights.std()) < 0.0105 and abs(float(weights.mean())) < 5e-4
    assert all(not aspp.get_submodule(f"c{i}").bias.any() for i in range(4))


@pytest.mark.parametrize("side, expected", [(321, 41), (160, 21), (240, 31), (375, 48),
                                            (500, 63), (481, 61)])
def test_feature_size_formula(side, expected):
    assert feature_size(side) == expected


def test_feature_sizes_of_a_real_forward():
    model = tiny("baseline").eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 321, 321)).shape == (1, 5, 41, 41)
        assert model(torch.zeros(1, 3, 375, 500)).shape == (1, 5, 48, 63)
        assert model.base(torch.zeros(1, 3, 160, 240)).main.shape == (1, 5, 21, 31)


# --------------------------------------------------------------------------- build_model
def test_build_model_registry_and_parameter_checks():
    assert set(method_names()) == {"baseline", "cdl_b", "cdl_e", "dupl", "cam"}
    with pytest.raises(ConfigError, match="unknown method 'deeplab'"):
        build_model("deeplab", 21)
    with pytest.raises(ConfigError, match="'widht'"):
        build_model("baseline", 21, widht=16)
    model = build_model("cdl_b", 3, blocks=[1, 1, 1, 1], width=8, msc_scales=[0.5],
                        test_scales=[0.75])
    assert model.scales == [0.5] and model.test_scales == [0.75]
    assert model.base.aspp.c0.out_channels == 3
    assert model.base.layer5.block1.increase.conv.out_channels == 256


# --------------------------------------------------------------------------- outputs
def test_training_outputs_of_all_methods():
    images = torch.randn(2, 3, 41, 41)
    strong = torch.randn(2, 3, 41, 41)
    sizes = [(6, 6), (3, 3), (4, 4), (6, 6)]         # 1.0, 0.5 (20 px), 0.75 (30 px), max
    for method in ("baseline", "cdl_b", "cdl_e"):
        model = tiny(method).train()
        out = model(images, strong if method == "cdl_e" else None)
        assert isinstance(out, MscOutputs) and out.names == ["1.0", "0.5", "0.75", "max"]
        assert [tuple(z.shape) for z in out.main] == [(2, 5, *s) for s in sizes]
        if method == "baseline":
            assert out.second is out.third is out.affinity is out.affinity_strong is None
            continue
        assert [tuple(z.shape) for z in out.second] == [(2, 5, *s) for s in sizes]
        assert [tuple(a.shape) for a in out.affinity] == [(2, h * w, h * w) for h, w in sizes]
        assert all(((a > 0) & (a < 1)).all() for a in out.affinity)
        if method == "cdl_b":
            assert out.third is None and out.affinity_strong is None
            # sigmoid of a cosine lies in [sigmoid(-1), sigmoid(1)]
            assert out.affinity[0].min() >= 0.2689 and out.affinity[0].max() <= 0.7311
        else:
            assert [tuple(z.shape) for z in out.third] == [(2, 5, *s) for s in sizes]
            assert [tuple(a.shape) for a in out.affinity_strong] == [tuple(a.shape)
                                                                     for a in out.affinity]
        # fused entry = max over the 1.0 logits and the upsampled scaled logits
        assert torch.all(out.main[3] >= out.main[0])
    with pytest.raises(ValueError, match="strong"):
        tiny("cdl_e").train()(images)


def test_predict_is_the_test_head_max_over_scales():
    images = torch.randn(1, 3, 41, 41)
    for method, head, divisor in (("baseline", "aspp", 1.0), ("cdl_b", "aspp", 2.0),
                                  ("cdl_e", "aspp_3rd", 2.0)):
        model = tiny(method).eval()
        base = model.base
        with torch.no_grad():
            per_scale = []
            for scale in (1.0, 0.5, 0.75):
                x = images if scale == 1.0 else torch.nn.functional.interpolate(
                    images, scale_factor=scale, mode="bilinear", align_corners=False)
                logits = base.get_submodule(head)(base.backbone(x)[3])
                per_scale.append(torch.nn.functional.interpolate(
                    logits, size=(6, 6), mode="bilinear", align_corners=False))
            expected = torch.stack(per_scale).amax(0) / divisor
            assert torch.allclose(model.predict(images), expected, atol=1e-6)
            assert torch.allclose(model(images), expected, atol=1e-6)   # eval forward


def test_cdl_e_test_head_on_clean_image_equals_original_strong_half():
    model = tiny("cdl_e").eval()
    images = torch.randn(2, 3, 33, 33)
    with torch.no_grad():
        original = model.base(images, images).third      # what the original computes at test
        assert torch.allclose(model.base.test_head_logits(images), original, atol=1e-5)


def test_affinity_head_sends_no_gradient_to_backbone():
    model = tiny("cdl_b").train()
    out = model(torch.randn(1, 3, 33, 33))
    sum(a.sum() for a in out.affinity).backward()
    assert model.base.layer5.block1.reduce.conv.weight.grad is None
    assert model.base.affinity_3rd.reduce_dim.weight.grad is not None


# --------------------------------------------------------------------------- frozen BN
def test_batchnorm_stays_frozen_in_training():
    model = tiny("cdl_e").train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert model.training and model.base.affinity_3rd.aff_conv_2[3].training   # dropout active
    before = bns[0].running_mean.clone()
    model(torch.randn(2, 3, 33, 33) * 5 + 3, torch.randn(2, 3, 33, 33))
    assert torch.equal(bns[0].running_mean, before)
    model.eval().train()                                   # re-entering training keeps BN frozen
    assert not any(m.training for m in bns)


def test_freeze_batchnorm_helper():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Dropout(0.5)).train()
    freeze_batchnorm(net)
    assert not net[1].training and net[0].training and net[2].training
    unfrozen = MSC(tiny("baseline").base, freeze_bn=False).train()
    assert all(m.training for m in unfrozen.modules() if isinstance(m, nn.BatchNorm2d))


# --------------------------------------------------------------------------- weight loading
def _caffe_like_init(model: MSC) -> dict[str, torch.Tensor]:
    """Backbone weights as the Caffe conversion names them: no `base.`, no heads, plus `fc.*`."""
    init = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in model.base.state_dict().items()
            if k.startswith("layer") and not k.endswith("num_batches_tracked")}
    init["fc.weight"] = torch.randn(91, 16)
    init["fc.bias"] = torch.randn(91)
    return init


def test_load_init_weights_reports_missing_and_unexpected(tmp_path):
    model = tiny("cdl_b")
    init = _caffe_like_init(model)
    path = tmp_path / "init.pth"
    torch.save(init, path)
    report = load_init_weights(model, path)
    assert torch.equal(model.base.layer4.block1.conv3x3.conv.weight,
                       init["layer4.block1.conv3x3.conv.weight"])
    assert torch.equal(model.base.layer1.conv1.bn.running_var, init["layer1.conv1.bn.running_var"])
    assert sorted(report.unexpected) == ["fc.bias", "fc.weight"]
    assert report.missing and all(k.startswith(("base.aspp", "base.affinity_3rd"))
                                  for k in report.missing)
    assert "base.aspp_2nd.c0.weight" in report.missing and "base.aspp.c3.bias" in report.missing
    assert len(report.loaded) == len(init) - 2
    assert "fc.weight" in report.summary() and str(path) in report.summary()
    # a state dict works as well as a file
    assert load_init_weights(tiny("baseline"), init).unexpected == ["fc.weight", "fc.bias"]


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_init_weights(tiny("baseline"), tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="bad.pth: not a PyTorch weights file"):
        load_init_weights(tiny("baseline"), bad)
    init = {k.removeprefix("base."): v for k, v in
            tiny("baseline", num_classes=21).state_dict().items()}
    with pytest.raises(WsssError, match=r"'base\.aspp\.c0\.weight' has shape \(21, 256, 3, 3\) "
                                        r"in the weights but \(5, 256, 3, 3\) in the model"):
        load_init_weights(tiny("baseline", num_classes=5), init)


# --------------------------------------------------------------------------- MSC fixtures
class _StubBase(nn.Module):
    """Returns the fixture's stored per-scale base outputs, keyed by the input height."""

    def __init__(self, data: dict[str, np.ndarray], variant: str):
        super().__init__()
        height = int(data["input_hw"][0])
        self.tags = {height: "s100"}
        for scale in data["scales"]:
            self.tags[int(np.floor(height * scale))] = f"s{int(round(scale * 100)):03d}"
        self.data, self.variant = data, variant

    def _get(self, name: str, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.data[f"base_{name}_{self.tags[images.shape[2]]}"])

    def forward(self, images, strong_images=None):
        out = ScaleOutputs(main=self._get("logits", images), second=self._get("logits_2nd", images))
        embedding = self._get("fts", images)
        if self.variant == "e":
            batch = images.shape[0]
            out.third = self._get("logits_3rd", images)
            out.embedding, out.embedding_strong = embedding[:batch], embedding[batch:]
        else:
            out.embedding = embedding
        return out

    def test_head_logits(self, images):
        return self._get("logits_3rd" if self.variant == "e" else "logits", images)


@pytest.mark.parametrize("variant", ["b", "e"])
def test_msc_fusion_fixture(variant):
    with np.load(FIXTURES / f"msc_{variant}.npz") as npz:
        data = {k: npz[k] for k in npz.files}
    model = MSC(_StubBase(data, variant), scales=list(data["scales"]),
                test_scales=list(data["scales"]),
                affinity="cosine" if variant == "b" else "dot", test_divisor=2.0).train()
    images = torch.zeros(2, 3, *map(int, data["input_hw"]))
    out = model(images, images if variant == "e" else None)
    assert len(out) == 4

    def check(actual, expected):
        assert actual.shape == expected.shape
        assert np.allclose(actual.detach().numpy(), expected, rtol=1e-5, atol=1e-6)

    check(out.main[3], data["out_logits_max"])
    check(out.second[3], data["out_logits_2nd_max"])
    for k, tag in enumerate(["s100", "s050", "s075"]):   # per-scale entries: base outputs
        assert np.array_equal(out.main[k].numpy(), data[f"base_logits_{tag}"])
        assert np.array_equal(out.second[k].numpy(), data[f"base_logits_2nd_{tag}"])
    for k in range(4):
        maps = out.affinity[k] if variant == "b" else torch.cat(
            [out.affinity[k], out.affinity_strong[k]])
        check(maps, data[f"out_A_{k}"])
    if variant == "e":
        check(out.third[3], data["out_logits_3rd_max"])
    check(model.eval()(images), data["eval_out"])
