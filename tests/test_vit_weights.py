"""ImageNet ViT weights for DuPL's students (`models.vit_seg.load_vit_weights`): DeiT/timm key
layout from .pth and .safetensors, position-embedding resizing, one-line errors, and both
students initialised by `build_model("dupl", ...)` / the DuPL method."""
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from wsss_core.cli import run_stage
from wsss_core.errors import DataError, WsssError
from wsss_core.methods import build_model
from wsss_core.methods.dupl import DuplMethod
from wsss_core.methods.dupl.presets import DUPL_PRESETS
from wsss_core.models.vit_seg import create_vit, load_vit_weights

BACKBONE = "deit_tiny_patch16_224"
DEPTH = 2


def weights(name: str = BACKBONE, seed: int = 1, **kwargs) -> dict[str, torch.Tensor]:
    """A DeiT/timm-layout state dict of a fresh tiny timm ViT (`depth` DEPTH unless given) with
    every tensor drawn at random, so that a model can only equal it by loading it (timm
    initialises biases, LayerNorms and tokens to constants)."""
    vit = timm.create_model(name, pretrained=False, weight_init="skip", **{"depth": DEPTH, **kwargs})
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.randn(value.shape, generator=generator)
            for key, value in vit.state_dict().items()}


def write(obj, path):
    if path.suffix == ".safetensors":
        save_file(obj, str(path))
    else:
        torch.save(obj, path)
    return path


def assert_equal_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = module.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def deit_release(state):  # DeiT's released .pth files: {"model": state_dict, ...}
    return {"model": state, "epoch": torch.tensor(300)}


def ddp_checkpoint(state):  # a training checkpoint of a DDP-wrapped ViT
    return {"state_dict": {f"module.{key}": value for key, value in state.items()}}


@pytest.mark.parametrize("name, layout", [("vit.pth", dict), ("vit.safetensors", dict),
                                          ("deit_release.pth", deit_release),
                                          ("checkpoint.pth", ddp_checkpoint)])
def test_loads_a_deit_state_dict(tmp_path, name, layout):
    state = weights()
    path = write(layout(state), tmp_path / name)
    vit = create_vit(BACKBONE, depth=DEPTH)
    assert load_vit_weights(vit, path) == []  # every key loaded, the (unused) head included
    assert_equal_state(vit, state)
    assert not vit.pos_embed.requires_grad and not vit.head.weight.requires_grad  # still frozen


@pytest.mark.parametrize("file_size", [112, 384])  # 7×7 and 24×24 grids → the model's 14×14
def test_position_embedding_of_another_grid_is_resized_bicubically(tmp_path, file_size):
    state = weights(img_size=file_size)
    path = write(state, tmp_path / "vit.safetensors")
    vit = create_vit(BACKBONE, depth=DEPTH)
    load_vit_weights(vit, path)
    side = file_size // 16
    # documented: bicubic, no antialiasing (as DuPL resizes on every forward), class token kept
    expected = resample_abs_pos_embed(state["pos_embed"], new_size=[14, 14], old_size=[side, side],
                                      num_prefix_tokens=1, interpolation="bicubic",
                                      antialias=False)
    assert vit.pos_embed.shape == (1, 1 + 14 * 14, 192)
    assert torch.allclose(vit.pos_embed, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(vit.pos_embed[:, 0], state["pos_embed"][:, 0])
    assert_equal_state(vit, {**state, "pos_embed": vit.pos_embed.detach()})


def stage_error(capsys, call) -> str:
    """The message a stage prints for `call`'s error: exactly one line, exit status 2."""
    with pytest.raises(SystemExit) as exit_info:
        run_stage(call)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1, err
    return err.rstrip("\n")


def test_missing_file_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "deit_base_patch16_224-b5f2ef4d.pth"
    vit = create_vit(BACKBONE, depth=DEPTH)
    with pytest.raises(DataError):
        load_vit_weights(vit, path)
    assert stage_error(capsys, lambda: load_vit_weights(vit, path)).startswith(
        f"error: {path}: ViT weights file not found")


def _wrong_fc1():
    state = weights()
    state["blocks.0.mlp.fc1.weight"] = torch.zeros(10, 192)
    return state


@pytest.mark.parametrize("make_state, message", [
    (_wrong_fc1,
     "'blocks.0.mlp.fc1.weight' has shape (10, 192) in the weights but (768, 192) in the backbone"),
    (lambda: weights(img_size=(112, 128)),  # a 7×8 grid cannot be a square DeiT grid
     "'pos_embed' has shape (1, 57, 192), model needs (1, 197, 192)"),
    (lambda: weights("deit_small_patch16_224"),
     "'pos_embed' has shape (1, 197, 384), model needs (1, 197, 192)"),  # another ViT's width
    (lambda: weights(depth=1),
     "ViT weights do not match the backbone: 12 missing keys (blocks.1.norm1.weight,"),
], ids=["block shape", "non-square grid", "other width", "fewer blocks"])
def test_weights_that_do_not_fit_are_a_one_line_error(tmp_path, capsys, make_state, message):
    path = write(make_state(), tmp_path / "vit.pth")
    vit = create_vit(BACKBONE, depth=DEPTH)
    before = {key: value.clone() for key, value in vit.state_dict().items()}
    with pytest.raises(WsssError):
        load_vit_weights(vit, path)
    assert stage_error(capsys, lambda: load_vit_weights(vit, path)).startswith(
        f"error: {path}: {message}")
    assert_equal_state(vit, before)  # nothing half-loaded


def test_unreadable_file_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "vit.safetensors"
    path.write_bytes(b"not a weights file")
    vit = create_vit(BACKBONE, depth=DEPTH)
    assert stage_error(capsys, lambda: load_vit_weights(vit, path)).startswith(
        f"error: {path}: cannot read ViT weights (")


def assert_both_students_loaded(model, state):
    for student in model.students:
        assert_equal_state(student.encoder, state)
    first, second = (dict(s.encoder.named_parameters()) for s in model.students)
    assert all(first[k].data_ptr() != second[k].data_ptr() for k in first)  # own copies
    with torch.no_grad():
        model.branch1.encoder.blocks[0].attn.qkv.weight.add_(1.0)
    assert torch.equal(model.branch2.encoder.blocks[0].attn.qkv.weight,
                       state["blocks.0.attn.qkv.weight"])


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_build_model_loads_the_weights_into_both_students(tmp_path, suffix):
    state = weights()
    path = write(state, tmp_path / f"vit{suffix}")
    model = build_model("dupl", 5, backbone=BACKBONE, depth=DEPTH, pretrained_path=str(path))
    assert_both_students_loaded(model, state)


def test_dupl_method_init_weights_loads_both_students(tmp_path):
    model_params = {"backbone": BACKBONE, "patch_size": 8, "depth": DEPTH}
    state = weights(patch_size=8)
    path = write(state, tmp_path / "vit.pth")
    config = {**DUPL_PRESETS["demo"], "model": model_params, "init_weights": str(path)}
    model = DuplMethod(21, config).build_model()
    assert_both_students_loaded(model, state)
    # the heads keep their own (random) initialisation, different per student
    assert not torch.equal(model.branch1.classifier.weight, model.branch2.classifier.weight)
