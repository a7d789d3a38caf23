"""Released checkpoints (`infer.weights`): files in the original repositories' key layouts load
strictly and score through the pipeline.

The key lists below are written out from the original model code (kazuto1011/deeplab-pytorch
`DeepLabV2`/`MSC`, zbf1991/CDL's extra heads, Wu0409/DuPL `siamese_network`, rulixiang/ToCo
`network` with its CTC projection heads), not taken from this project's models, with random
values; DDP files carry the `module.` prefix of `torch.save(ddp_model.state_dict())`.
"""
from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import make_voc_dataset

from wsss_core.config import params_from_dict
from wsss_core.errors import DataError
from wsss_core.infer import MODEL_STAMP, file_digest
from wsss_core.methods import build_model
from wsss_core.methods.deeplab.presets import DEEPLAB_PRESETS
from wsss_core.methods.dupl.presets import DUPL_PRESETS
from wsss_core.models.checkpoints import detect_layout, load_trained_weights
from wsss_core.pipeline.infer import run_inference
from wsss_core.pipeline.paths import RunPaths

K = 21  # VOC classes
TINY_DEEPLAB = {"blocks": [1, 1, 1, 1], "width": 8, "msc_scales": [0.5], "test_scales": [0.5],
                "freeze_bn": True}
TINY_VIT = {"backbone": "deit_tiny_patch16_224", "patch_size": 8, "depth": 2, "embed_dim": 32,
            "num_heads": 2, "decoder_width": 16}


# --------------------------------------------------------------------------- original key lists
def _bn(prefix: str, ch: int, counter: bool = True) -> dict[str, tuple]:
    keys = {f"{prefix}.weight": (ch,), f"{prefix}.bias": (ch,), f"{prefix}.running_mean": (ch,),
            f"{prefix}.running_var": (ch,)}
    return {**keys, f"{prefix}.num_batches_tracked": ()} if counter else keys


def _conv_bn(prefix: str, cin: int, cout: int, k: int, counter: bool) -> dict[str, tuple]:
    return {f"{prefix}.conv.weight": (cout, cin, k, k), **_bn(f"{prefix}.bn", cout, counter)}


def deeplab_keys(width: int = 8, cdl: bool = False, counter: bool = True) -> dict[str, tuple]:
    """deeplab-pytorch's DeepLabV2_ResNet101_MSC state dict for blocks 1-1-1-1 (`base.` = MSC),
    CDL-b's aspp_2nd / affinity_3rd with `cdl`; `counter` False: a Caffe-style conversion."""
    keys = _conv_bn("base.layer1.conv1", 3, width, 7, counter)
    cin = width
    for stage, cout in zip(range(2, 6), (4 * width, 8 * width, 16 * width, 32 * width)):
        mid, block = cout // 4, f"base.layer{stage}.block1"
        keys.update(_conv_bn(f"{block}.reduce", cin, mid, 1, counter))
        keys.update(_conv_bn(f"{block}.conv3x3", mid, mid, 3, counter))
        keys.update(_conv_bn(f"{block}.increase", mid, cout, 1, counter))
        keys.update(_conv_bn(f"{block}.shortcut", cin, cout, 1, counter))
        cin = cout
    heads = ["aspp", "aspp_2nd"] if cdl else ["aspp"]
    for head in heads:
        for c in range(4):
            keys[f"base.{head}.c{c}.weight"] = (K, 32 * width, 3, 3)
            keys[f"base.{head}.c{c}.bias"] = (K,)
    if cdl:  # branches registered twice (aff_conv_<level> and aff_module.<i>), as CDL does
        embed = 2 * width
        outs = [embed // 4, embed // 4, embed // 2, embed]
        for i, (cin, cout) in enumerate(zip((4 * width, 8 * width, 16 * width, 32 * width), outs)):
            for name in (f"aff_conv_{i + 2}", f"aff_module.{i}"):
                keys[f"base.affinity_3rd.{name}.0.weight"] = (cout, cin, 1, 1)
                keys.update(_bn(f"base.affinity_3rd.{name}.1", cout))
        keys["base.affinity_3rd.reduce_dim.weight"] = (embed, sum(outs), 1, 1)
    return keys


def vit_network_keys(dim: int = 32, depth: int = 2, patch: int = 8, head: int = 1000
                     ) -> dict[str, tuple]:
    """One DuPL/ToCo `network`: the ViT encoder (timm names, 224-px position grid), LargeFOV
    decoder of width 16 (DuPL/ToCo: 512), classifiers."""
    tokens = (224 // patch) ** 2 + 1
    keys = {"encoder.cls_token": (1, 1, dim), "encoder.pos_embed": (1, tokens, dim),
            "encoder.patch_embed.proj.weight": (dim, 3, patch, patch),
            "encoder.patch_embed.proj.bias": (dim,)}
    for b in range(depth):
        p = f"encoder.blocks.{b}"
        keys.update({f"{p}.norm1.weight": (dim,), f"{p}.norm1.bias": (dim,),
                     f"{p}.attn.qkv.weight": (3 * dim, dim), f"{p}.attn.qkv.bias": (3 * dim,),
                     f"{p}.attn.proj.weight": (dim, dim), f"{p}.attn.proj.bias": (dim,),
                     f"{p}.norm2.weight": (dim,), f"{p}.norm2.bias": (dim,),
                     f"{p}.mlp.fc1.weight": (4 * dim, dim), f"{p}.mlp.fc1.bias": (4 * dim,),
                     f"{p}.mlp.fc2.weight": (dim, 4 * dim), f"{p}.mlp.fc2.bias": (dim,)})
    keys.update({"encoder.norm.weight": (dim,), "encoder.norm.bias": (dim,),
                 "encoder.head.weight": (head, dim), "encoder.head.bias": (head,),
                 "decoder.conv6.weight": (16, dim, 3, 3), "decoder.conv7.weight": (16, 16, 3, 3),
                 "decoder.conv8.weight": (K, 16, 1, 1), "classifier.weight": (K - 1, dim, 1, 1),
                 "aux_classifier.weight": (K - 1, dim, 1, 1)})
    return keys


def toco_keys(dim: int = 32) -> dict[str, tuple]:
    """ToCo's network: one student plus the student/teacher CTC heads (3-layer MLP 2048 wide,
    bottleneck 256, weight-normed last layer to 1024)."""
    keys = vit_network_keys(dim)
    for head in ("proj_head", "proj_head_t"):
        for index, (cin, cout) in ((0, (dim, 2048)), (2, (2048, 2048)), (4, (2048, 256))):
            keys[f"{head}.mlp.{index}.weight"] = (cout, cin)
            keys[f"{head}.mlp.{index}.bias"] = (cout,)
        keys[f"{head}.last_layer.weight_g"] = (1024, 1)
        keys[f"{head}.last_layer.weight_v"] = (1024, 256)
    return keys


def random_state(shapes: dict[str, tuple], prefix: str = "", seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[prefix + key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[prefix + key] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[prefix + key] = torch.randn(shape, generator=gen) * 0.1
    return state


def cdl_state(prefix: str = "") -> dict:
    """A CDL-b file: each affinity branch is one module under two names, so one tensor each."""
    state = random_state(deeplab_keys(cdl=True), prefix)
    for key in list(state):
        if ".aff_module." in key:
            index = int(key.split(".aff_module.")[1].split(".")[0])
            state[key] = state[key.replace(f"aff_module.{index}", f"aff_conv_{index + 2}")]
    return state


def dupl_keys() -> dict[str, tuple]:
    network = vit_network_keys()
    return {f"{branch}.{k}": v for branch in ("branch1", "branch2") for k, v in network.items()}


# --------------------------------------------------------------------------- strict loading
@pytest.mark.parametrize("method,state,prefix", [
    ("baseline", random_state(deeplab_keys()), ""),                          # deeplab-pytorch
    ("baseline", random_state(deeplab_keys(counter=False), "module."), "module."),  # Caffe, DP
    ("cdl_b", cdl_state("module."), "module."),                              # CDL under DataParallel
    ("dupl", random_state(dupl_keys(), "module."), "module."),               # DuPL checkpoint.pth
])
def test_original_layouts_load_strictly_with_equal_tensors(method, state, prefix, tmp_path):
    path = tmp_path / "released.pth"
    torch.save(state, path)
    model = build_model(method, K, **(TINY_VIT if method == "dupl" else TINY_DEEPLAB))
    assert load_trained_weights(model, path).name == "wsss"
    own = model.state_dict()
    for key, value in state.items():
        assert torch.equal(own[key[len(prefix):]], value), key
    # the model has nothing the file did not set (besides counters the Caffe file lacks)
    assert {k for k in own if not k.endswith("num_batches_tracked")} <= {
        k[len(prefix):] for k in state}


def test_toco_network_becomes_both_students_without_its_projection_heads(tmp_path):
    state = random_state(toco_keys(), "module.")
    path = tmp_path / "model_iter_20000.pth"
    torch.save(state, path)
    model = build_model("dupl", K, **TINY_VIT)
    assert detect_layout([k[7:] for k in state]).name == "toco"
    assert load_trained_weights(model, path).name == "toco"
    own = model.state_dict()
    for key, value in state.items():
        if ".proj_head" in key:
            continue
        for branch in ("branch1", "branch2"):
            assert torch.equal(own[f"{branch}.{key[7:]}"], value), key
    # the students are independent copies, not one shared tensor
    assert own["branch1.classifier.weight"].data_ptr() != own["branch2.classifier.weight"].data_ptr()


def test_mismatch_is_one_line_data_error_naming_file_and_first_keys(tmp_path):
    path = tmp_path / "other.pth"
    shapes = deeplab_keys()
    del shapes["base.aspp.c3.weight"]
    shapes["base.aspp.extra"] = (2,)
    torch.save(random_state(shapes), path)
    with pytest.raises(DataError) as info:
        load_trained_weights(build_model("baseline", K, **TINY_DEEPLAB), path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "base.aspp.c3.weight" in message and "base.aspp.extra" in message
    # a DuPL file given to a DeepLab model, and a model of another class count
    torch.save(random_state(dupl_keys()), path)
    with pytest.raises(DataError, match="branch1.encoder.cls_token"):
        load_trained_weights(build_model("baseline", K, **TINY_DEEPLAB), path)
    torch.save(random_state(deeplab_keys()), path)
    with pytest.raises(DataError, match=r"base.aspp.c0.weight \(21, 256, 3, 3\) vs \(5, 256"):
        load_trained_weights(build_model("baseline", 5, **TINY_DEEPLAB), path)


def test_own_checkpoint_roundtrip_and_strictness(tmp_path):
    """The one loader of trained weights also reads this project's training checkpoints (the
    weights under `model`) and refuses another method's model in both directions."""
    def tiny(method):
        torch.manual_seed(0)
        return build_model(method, 5, **TINY_DEEPLAB)

    trained = tiny("cdl_e")
    for parameter in trained.parameters():
        parameter.data.add_(1.0)
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": trained.state_dict(), "iteration": 7}, path)
    fresh = tiny("cdl_e")
    assert load_trained_weights(fresh, path).name == "wsss"
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(),
                                                 fresh.state_dict().values()))
    # a CDL-e checkpoint into a CDL-b model: aspp_3rd is not in the model
    with pytest.raises(DataError, match="file keys not in the model .*base.aspp_3rd"):
        load_trained_weights(tiny("cdl_b"), path)
    # a baseline state dict into CDL-b: expert 2 and the affinity head are missing
    with pytest.raises(DataError, match="model keys not in the file .*base.aspp_2nd"):
        load_trained_weights(tiny("cdl_b"), tiny("baseline").state_dict())


# --------------------------------------------------------------------------- through the pipeline
@pytest.mark.parametrize("method,shapes", [("baseline", deeplab_keys()), ("dupl", toco_keys())])
def test_run_inference_scores_a_released_checkpoint(method, shapes, tmp_path, monkeypatch):
    """No train stage: `infer.weights` points at the file, models/<method>/model.pth never exists."""
    presets = DUPL_PRESETS if method == "dupl" else DEEPLAB_PRESETS
    tiny = copy.deepcopy(presets["demo"])
    tiny["model"] = TINY_VIT if method == "dupl" else TINY_DEEPLAB
    monkeypatch.setitem(presets, "tiny", tiny)
    root = tmp_path / "VOC2012"
    gts = make_voc_dataset(root, {"train": ["t1"], "val": ["v1", "v2"]}, size=(20, 24))
    weights = tmp_path / "released.pth"
    torch.save(random_state(shapes, "module."), weights)
    params = params_from_dict({
        "method": method, "dataset": "voc12", "data": {"voc12": {"root": str(root)}},
        "pseudo_labels": {"source": "files", "path": str(root / "SegmentationClassAug")},
        "train": {"preset": "tiny"}, "infer": {"device": "cpu", "weights": str(weights)},
        "evaluate": {"n_jobs": 1}})
    paths = RunPaths.defaults(params, tmp_path / "run")
    paths = dataclasses.replace(paths, prepared=tmp_path / "prepared")
    paths.prepared.mkdir()
    (paths.prepared / "cls_labels.json").write_text(json.dumps(  # DuPL's CAM scores read them
        {i: sorted(int(c) for c in np.unique(gt) if c not in (0, 255)) for i, gt in gts.items()}))
    assert not paths.model_file.exists()

    report = run_inference(params, paths)

    assert 0.0 <= report["miou"] <= 1.0 and json.loads(paths.scores.read_text())["miou"] == report["miou"]
    logits = paths.logits_dir("val")
    # 20×24 image: stride 8 of the DeepLab stem (ceil-mode pool), of DuPL's ceil(side / 8)
    assert np.load(logits / "v1.npy").shape == ((K, 3, 3) if method == "dupl" else (K, 3, 4))
    assert (logits / MODEL_STAMP).read_text().strip() == file_digest(weights)
    if method == "dupl":  # ToCo's one network in both students: they score the same
        assert len(set(report["predictors_miou"].values())) == 1
