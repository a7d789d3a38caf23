"""torchvision ResNet weights converted to the Caffe-style DeepLab backbone.

What is comparable: torchvision's ResNet built with `replace_stride_with_dilation=[False, True,
True]` is output stride 8 like DeepLab's. On an odd-sized input (65 px: the ceil-mode and floor
max pools agree) our `layer1` (stem) and `layer2` compute exactly torchvision's stem and
`layer1`. The first block of each later stage differs by design (stride in the 1×1 `reduce`
instead of the 3×3 for `layer3`; dilation 2/4 instead of the previous 1/2 for `layer4`/`layer5`),
so every *other* block is compared, fed torchvision's own output of the stage's first block.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import resnet50, resnet101

from wsss_core.errors import DataError
from wsss_core.methods import build_model
from wsss_core.models import load_init_weights
from wsss_core.models.convert_torchvision import convert_state_dict, main
from wsss_core.models.resnet import dilated_resnet_layers


def _randomise_bn(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial eval-mode BatchNorm (fresh models have mean 0, var 1, weight 1, bias 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


@torch.no_grad()
def test_converted_resnet50_computes_torchvision_features_where_the_architectures_agree():
    torch.manual_seed(0)
    tv = resnet50(weights=None, replace_stride_with_dilation=[False, True, True]).eval()
    _randomise_bn(tv)
    ours = nn.ModuleDict(dilated_resnet_layers((3, 4, 6, 3), 64)).eval()
    converted = convert_state_dict(tv.state_dict())
    ours.load_state_dict(converted, strict=True)   # every key, same shapes
    x = torch.randn(1, 3, 65, 65)

    stem = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    assert _close(ours["layer1"](x), stem)
    h = tv.layer1(stem)
    assert _close(ours["layer2"](stem), h)
    for our_stage, tv_stage in (("layer3", tv.layer2), ("layer4", tv.layer3), ("layer5", tv.layer4)):
        first = tv_stage[0](h)
        assert first.shape == ours[our_stage].block1(h).shape          # stride 8 on both sides
        assert not _close(ours[our_stage].block1(h), first)            # the documented difference
        rest = nn.Sequential(*list(ours[our_stage].children())[1:])
        h = tv_stage[1:](first)
        assert _close(rest(first), h), our_stage


def test_cli_writes_a_file_load_init_weights_takes_completely(tmp_path, capsys):
    source, out = tmp_path / "resnet101.pth", tmp_path / "init" / "resnet101-caffe.pth"
    torch.save(resnet101(weights=None).state_dict(), source)
    assert main([str(source), str(out)]) == 0
    assert "train.init_weights" in capsys.readouterr().out
    state = torch.load(out, weights_only=True)
    assert not any(k.startswith("fc.") for k in state)
    model = build_model("baseline", 21)
    report = load_init_weights(model, out, min_share=0.5)
    assert report.unexpected == []
    # all of the backbone, none of the heads (they keep their initialisation)
    assert set(report.missing) == {k for k in model.state_dict() if ".aspp." in k}


def test_other_architectures_are_refused(tmp_path, capsys):
    deep_stem = {"conv1.0.weight": torch.zeros(32, 3, 3, 3), "bn1.weight": torch.zeros(64)}
    with pytest.raises(DataError, match="conv1.0.weight"):
        convert_state_dict(deep_stem, "resnet101d.pth")
    path = tmp_path / "vit.pth"
    torch.save({"blocks.0.attn.qkv.weight": torch.zeros(3, 1)}, path)
    assert main([str(path), str(tmp_path / "out.pth")]) == 2
    assert "not a torchvision/timm ResNet" in capsys.readouterr().out
