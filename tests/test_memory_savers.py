"""Memory savers change memory, not results: `train.grad_checkpointing` (ResNet stages, ViT
blocks) gives the plain run's gradients, `train.channels_last` its outputs. Peak memory is
measured by `benchmarks/memory_savers.py` (no timings or memory figures asserted here)."""
from __future__ import annotations

import pytest
import torch

from wsss_core.config import params_from_dict
from wsss_core.errors import ConfigError
from wsss_core.methods import build_model
from wsss_core.pipeline.resolve import effective_train_config

TINY_DEEPLAB = {"blocks": [1, 1, 1, 1], "width": 8, "msc_scales": [0.5]}
TINY_VIT = {"backbone": "deit_tiny_patch16_224", "patch_size": 8, "depth": 2, "embed_dim": 32,
            "num_heads": 2, "decoder_width": 16}


def _pair(method: str, params: dict, option: str):
    torch.manual_seed(0)
    plain = build_model(method, 5, **params)
    saver = build_model(method, 5, **params, **{option: True})
    saver.load_state_dict(plain.state_dict())
    return plain, saver


def _loss(outputs) -> torch.Tensor:
    if hasattr(outputs, "student1"):   # DuPL: both students' heads
        return sum((s.seg.square().mean() + s.cls.sum() + s.cls_aux.sum())
                   for s in (outputs.student1, outputs.student2))
    return sum(t.square().mean() for field in (outputs.main, outputs.second or [],
                                               outputs.affinity or []) for t in field)


def _grads(model, images, strong=None):
    model.train()
    torch.manual_seed(1)   # the same dropout masks in both runs (CDL-e's Dropout2d)
    outputs = model(images, strong) if strong is not None else model(images)
    _loss(outputs).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("method,freeze_bn", [("cdl_b", False), ("cdl_e", True),
                                              ("baseline", False)])
def test_checkpointed_resnet_gives_the_same_gradients_and_bn_statistics(method, freeze_bn):
    plain, saver = _pair(method, {**TINY_DEEPLAB, "freeze_bn": freeze_bn}, "grad_checkpointing")
    images = torch.randn(2, 3, 41, 41, generator=torch.Generator().manual_seed(2))
    strong = images.flip(-1) if method == "cdl_e" else None
    expected, actual = _grads(plain, images, strong), _grads(saver, images, strong)
    assert expected.keys() == actual.keys() and len(expected) > 20
    for name, grad in expected.items():
        scale = float(grad.abs().max()) or 1.0
        assert float((actual[name] - grad).abs().max()) <= 1e-6 * scale, name
    # trained BatchNorm: the recomputation did not update the running statistics a second time
    plain_state, saver_state = plain.state_dict(), saver.state_dict()
    for key in plain_state:
        if "running_" in key or "num_batches_tracked" in key:
            assert torch.equal(plain_state[key], saver_state[key]), key
    if not freeze_bn:
        # one forward per MSC scale (1.0 and 0.5), not one more per recomputation
        assert int(saver_state["base.layer1.conv1.bn.num_batches_tracked"]) == 2
    assert saver.base.grad_checkpointing and not plain.base.grad_checkpointing


def test_checkpointed_vit_students_give_the_same_gradients():
    plain, saver = _pair("dupl", TINY_VIT, "grad_checkpointing")
    assert all(s.encoder.grad_checkpointing for s in saver.students)
    images = torch.randn(2, 3, 48, 40, generator=torch.Generator().manual_seed(3))
    expected, actual = _grads(plain, images), _grads(saver, images)
    assert expected.keys() == actual.keys()
    for name, grad in expected.items():
        scale = float(grad.abs().max()) or 1.0
        assert float((actual[name] - grad).abs().max()) <= 1e-6 * scale, name


@pytest.mark.parametrize("method", ["baseline", "cdl_b"])
def test_channels_last_gives_the_same_outputs(method):
    plain, saver = _pair(method, {**TINY_DEEPLAB, "freeze_bn": True}, "channels_last")
    assert saver.base.layer1.conv1.conv.weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 41, 45, generator=torch.Generator().manual_seed(4))
    plain.eval(), saver.eval()
    expected, actual = plain.predict(images), saver.predict(images)
    assert actual.is_contiguous()
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    plain.train(), saver.train()
    for a, b in zip(_grads(plain, images).values(), _grads(saver, images).values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * float(a.abs().max()))


def test_train_options_reach_the_model_parameters_only_when_on():
    def config(method, **train):
        return effective_train_config(params_from_dict({"method": method, "train": train}))

    assert "grad_checkpointing" not in config("baseline")["model"]   # existing runs unchanged
    assert config("baseline", grad_checkpointing=True, channels_last=True)["model"] == {
        **config("baseline")["model"], "grad_checkpointing": True, "channels_last": True}
    assert config("dupl", grad_checkpointing=True)["model"]["grad_checkpointing"] is True
    with pytest.raises(ConfigError, match="train.channels_last: not supported by method 'dupl'"):
        config("dupl", channels_last=True)
