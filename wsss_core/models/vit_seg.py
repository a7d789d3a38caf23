"""DuPL's two-student ViT segmentation network on timm backbones (spec dupl.md §1).

Each student is a plain timm ViT (`timm.create_model(name, pretrained=False)`, weights read from
a local file) with

    classifier       1×1 conv D→(K−1), no bias, on the global-max-pooled final tokens
    aux_classifier   1×1 conv D→(K−1), no bias, on the global-max-pooled tokens of block −3
    decoder          LargeFOV: 3×3 dil-5 conv D→512, ReLU, 3×3 dil-5 conv 512→512, ReLU,
                     1×1 conv 512→K (no biases, PyTorch default init), at 1/16 resolution

The two students share no module or tensor. The learned position embedding is frozen and
resized bicubically (no antialiasing, as the original) to the token grid of every input, so any
input size works (the patch convolution floors H/16, W/16). The unused ImageNet `head` of the
timm model is kept but frozen, so state dicts have the original DuPL layout
(`branch1.encoder.blocks.0.attn.qkv.weight`, `branch2.decoder.conv6.weight`, ...) and released
DuPL checkpoints load with `models.checkpoints.load_trained_weights`.

Forward (`DuplNet.forward(images, strong_images=None, strong_scale=0.75)`) runs both students
once with gradients and returns a `DuplOutputs`; the strong view (already in the orientation the
caller wants) is resized by `strong_scale` and only its segmentation logits are returned.
`Student.cams(images)` gives the raw (pre-ReLU) CAMs used by `wsss_core.cam.multi_scale_cams`.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import WsssError
from . import read_state_dict

DECODER_DIM = 512
DECODER_DILATION = 5


# --------------------------------------------------------------------------- heads
class LargeFOV(nn.Module):
    """DeepLab-LargeFOV head of ToCo/DuPL (no biases; default PyTorch init, as the original never
    calls its `_init_weights`)."""

    def __init__(self, in_ch: int, num_classes: int, width: int = DECODER_DIM,
                 dilation: int = DECODER_DILATION):
        super().__init__()
        self.conv6 = nn.Conv2d(in_ch, width, 3, padding=dilation, dilation=dilation, bias=False)
        self.conv7 = nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation, bias=False)
        self.conv8 = nn.Conv2d(width, num_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv6(x))
        x = F.relu(self.conv7(x))
        return self.conv8(x)


# --------------------------------------------------------------------------- backbone
def create_vit(backbone: str, patch_size: int | None = None, depth: int | None = None,
               embed_dim: int | None = None, num_heads: int | None = None) -> nn.Module:
    """A timm ViT by name, randomly initialised, with its position embedding frozen.
    `patch_size`, `depth`, `embed_dim` and `num_heads` override the name's (the CPU demo uses
    8-px patches for a finer token grid on small crops, and a smaller encoder; pretrained
    weights need the name's own)."""
    try:
        import timm
    except ImportError as exc:  # pragma: no cover - timm is a hard dependency
        raise WsssError(f"DuPL needs timm ({exc})") from None
    try:
        extra = {key: value for key, value in (("patch_size", patch_size), ("depth", depth),
                                               ("embed_dim", embed_dim), ("num_heads", num_heads))
                 if value is not None}
        vit = timm.create_model(backbone, pretrained=False, **extra)
    except RuntimeError as exc:
        raise WsssError(f"backbone '{backbone}': not a timm model ({exc})") from None
    for name in ("patch_embed", "blocks", "norm", "pos_embed"):
        if getattr(vit, name, None) is None:
            raise WsssError(f"backbone '{backbone}': not a plain ViT (no '{name}')")
    if not hasattr(vit.patch_embed, "proj") or not hasattr(vit, "num_prefix_tokens"):
        raise WsssError(f"backbone '{backbone}': not a plain ViT (unsupported patch embedding)")
    vit.pos_embed.requires_grad_(False)
    # the ImageNet head is never used; kept (frozen) only so checkpoints keep DuPL's layout
    for parameter in vit.get_classifier().parameters():
        parameter.requires_grad_(False)
    return vit


def _resample_pos_embed(pos_embed: torch.Tensor, grid: Sequence[int], new_grid: Sequence[int],
                        num_prefix: int) -> torch.Tensor:
    """timm's position-embedding resampling, bicubic without antialiasing (as the original
    resizes on every forward); prefix tokens kept, the same grid returned as is."""
    from timm.layers import resample_abs_pos_embed

    return resample_abs_pos_embed(pos_embed, new_size=list(new_grid), old_size=list(grid),
                                  num_prefix_tokens=num_prefix, interpolation="bicubic",
                                  antialias=False)


def vit_tokens(vit: nn.Module, images: torch.Tensor, aux_layer: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(final tokens after the last norm, tokens output by block `aux_layer`), both as
    (B, D, H//p, W//p) maps. Works for any input size."""
    patch_embed = vit.patch_embed
    x = patch_embed.proj(images)  # strided conv: floors H/p, W/p like the original
    batch, dim, grid_h, grid_w = x.shape
    x = patch_embed.norm(x.flatten(2).transpose(1, 2))
    no_embed_class = bool(getattr(vit, "no_embed_class", False))
    num_prefix = int(vit.num_prefix_tokens)
    pos = _resample_pos_embed(vit.pos_embed, tuple(patch_embed.grid_size), (grid_h, grid_w),
                            0 if no_embed_class else num_prefix)
    prefix = [token.expand(batch, -1, -1) for token in
              (getattr(vit, "cls_token", None), getattr(vit, "reg_token", None)) if token is not None]
    if no_embed_class:
        x = torch.cat(prefix + [x + pos], dim=1)
    else:
        x = torch.cat(prefix + [x], dim=1) + pos
    x = vit.pos_drop(x)
    x = vit.patch_drop(x) if hasattr(vit, "patch_drop") else x
    x = vit.norm_pre(x) if hasattr(vit, "norm_pre") else x
    depth = len(vit.blocks)
    aux_index = aux_layer % depth
    aux = None
    # timm's `set_grad_checkpointing` flag: each block keeps only its input for backward
    save_memory = bool(getattr(vit, "grad_checkpointing", False)) and torch.is_grad_enabled()
    for index, block in enumerate(vit.blocks):
        x = checkpoint(block, x, use_reentrant=False) if save_memory else block(x)
        if index == aux_index:
            aux = x
    x = vit.norm(x)
    if aux_index == depth - 1:
        aux = x  # the original replaces the last block's output by the normed tokens

    def to_map(tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, num_prefix:].transpose(1, 2).reshape(batch, dim, grid_h, grid_w)

    return to_map(x), to_map(aux)


# --------------------------------------------------------------------------- weights
def load_vit_weights(vit: nn.Module, path: str | Path) -> list[str]:
    """Load ImageNet ViT weights (timm/DeiT key layout) into `vit` from a local `.pth` or
    `.safetensors` file. Classifier-head keys are optional (the head is unused); any other
    missing or unexpected key, or a shape mismatch, is a `WsssError`. A position embedding of a
    different grid is resized bicubically. Returns the names of the keys that were not loaded."""
    path = Path(path)
    state, _ = read_state_dict(path, kind="ViT weights")
    own = vit.state_dict()
    head_keys = {f"head.{n}" for n in ("weight", "bias")} | {
        k for k in set(own) | set(state) if k.startswith(("head.", "head_dist.", "pre_logits."))}
    weight = state.get("patch_embed.proj.weight")
    if weight is not None and weight.ndim == 2:  # old timm checkpoints: linear patchify
        state["patch_embed.proj.weight"] = weight.reshape(own["patch_embed.proj.weight"].shape)
    pos = state.get("pos_embed")
    if pos is not None and pos.shape != own["pos_embed"].shape:
        num_prefix = 0 if getattr(vit, "no_embed_class", False) else int(vit.num_prefix_tokens)
        side = int(round((pos.shape[1] - num_prefix) ** 0.5))
        if side * side != pos.shape[1] - num_prefix or pos.shape[-1] != own["pos_embed"].shape[-1]:
            raise WsssError(f"{path}: 'pos_embed' has shape {tuple(pos.shape)}, model needs "
                            f"{tuple(own['pos_embed'].shape)}")
        state["pos_embed"] = _resample_pos_embed(pos, (side, side), vit.patch_embed.grid_size,
                                                 num_prefix)
    skipped = []
    for key in list(state):
        if key in head_keys and (key not in own or state[key].shape != own[key].shape):
            skipped.append(key)  # e.g. a 21k head on a 1k model: irrelevant, never used
            del state[key]
    missing = [k for k in own if k not in state and k not in head_keys]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        problems = [f"{len(keys)} {what} keys ({', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''})"
                    for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise WsssError(f"{path}: ViT weights do not match the backbone: " + "; ".join(problems))
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise WsssError(f"{path}: '{key}' has shape {tuple(value.shape)} in the weights but "
                            f"{tuple(own[key].shape)} in the backbone")
    vit.load_state_dict(state, strict=False)
    return skipped + [k for k in own if k not in state]


# --------------------------------------------------------------------------- students
class StudentOutput(NamedTuple):
    """Training-forward outputs of one student."""

    cls: torch.Tensor       # (B, K-1) classification logits (final tokens, GMP)
    seg: torch.Tensor       # (B, K, h, w) LargeFOV logits at the token grid
    fmap: torch.Tensor      # (B, D, h, w) final-norm tokens (PTC and discrepancy losses)
    cls_aux: torch.Tensor   # (B, K-1) classification logits of the aux tokens


class DuplOutputs(NamedTuple):
    """`DuplNet.forward` result: both students on the clean view, and optionally their seg
    logits on the (rescaled) strong view."""

    student1: StudentOutput
    student2: StudentOutput
    strong_seg1: torch.Tensor | None = None
    strong_seg2: torch.Tensor | None = None


class Student(nn.Module):
    """One DuPL student: ViT encoder, main and aux classifiers, LargeFOV decoder."""

    def __init__(self, backbone: str, num_classes: int, aux_layer: int = -3,
                 decoder_width: int = DECODER_DIM, **vit_overrides: int | None):
        super().__init__()
        self.encoder = create_vit(backbone, **vit_overrides)
        dim = int(self.encoder.embed_dim)
        self.aux_layer = aux_layer
        self.classifier = nn.Conv2d(dim, num_classes - 1, 1, bias=False)
        self.aux_classifier = nn.Conv2d(dim, num_classes - 1, 1, bias=False)
        self.decoder = LargeFOV(dim, num_classes, width=decoder_width)

    def tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return vit_tokens(self.encoder, images, self.aux_layer)

    def forward(self, images: torch.Tensor) -> StudentOutput:
        fmap, aux = self.tokens(images)
        cls = self.classifier(F.adaptive_max_pool2d(fmap, 1)).flatten(1)
        cls_aux = self.aux_classifier(F.adaptive_max_pool2d(aux, 1)).flatten(1)
        return StudentOutput(cls, self.decoder(fmap), fmap, cls_aux)

    def seg_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Decoder logits only (inference, strong view)."""
        return self.decoder(self.tokens(images)[0])

    def cams(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw CAMs (final, aux): the classifier weights applied to every token, no ReLU."""
        fmap, aux = self.tokens(images)
        return (F.conv2d(fmap, self.classifier.weight), F.conv2d(aux, self.aux_classifier.weight))


class DuplNet(nn.Module):
    """Two independent students (`branch1`, `branch2`, the original attribute names)."""

    def __init__(self, backbone: str, num_classes: int, aux_layer: int = -3,
                 decoder_width: int = DECODER_DIM, **vit_overrides: int | None):
        super().__init__()
        if num_classes < 2:
            raise WsssError(f"DuPL needs at least 2 classes (background + one), got {num_classes}")
        self.branch1 = Student(backbone, num_classes, aux_layer, decoder_width, **vit_overrides)
        self.branch2 = Student(backbone, num_classes, aux_layer, decoder_width, **vit_overrides)

    @property
    def students(self) -> tuple[Student, Student]:
        return self.branch1, self.branch2

    def student(self, index: int) -> Student:
        if index not in (1, 2):
            raise ValueError(f"student must be 1 or 2, got {index!r}")
        return self.branch1 if index == 1 else self.branch2

    def forward(self, images: torch.Tensor, strong_images: torch.Tensor | None = None,
                strong_scale: float = 0.75) -> DuplOutputs:
        out1, out2 = self.branch1(images), self.branch2(images)
        if strong_images is None:
            return DuplOutputs(out1, out2)
        strong = F.interpolate(strong_images, scale_factor=strong_scale, mode="bilinear",
                               align_corners=False)
        return DuplOutputs(out1, out2, self.branch1.seg_logits(strong),
                           self.branch2.seg_logits(strong))


def build_dupl_model(num_classes: int, backbone: str = "deit_tiny_patch16_224",
                     pretrained_path: str = "", aux_layer: int = -3,
                     patch_size: int | None = None, depth: int | None = None,
                     embed_dim: int | None = None, num_heads: int | None = None,
                     decoder_width: int = DECODER_DIM, grad_checkpointing: bool = False) -> DuplNet:
    """The two-student DuPL network. `backbone` is any timm ViT name (paper: deit_base_patch16_224
    or vit_base_patch16_224), its `patch_size`, `depth`, `embed_dim`, `num_heads` overridable;
    `decoder_width` the LargeFOV width (512 in the paper); `pretrained_path` a local
    .pth/.safetensors file of ImageNet weights loaded into both encoders ("" = random init,
    which the method is not meant for); `grad_checkpointing` recomputes each transformer block
    of both encoders in backward (timm's `set_grad_checkpointing`; same gradients, less memory)."""
    model = DuplNet(backbone, num_classes, aux_layer, decoder_width, patch_size=patch_size,
                    depth=depth, embed_dim=embed_dim, num_heads=num_heads)
    if pretrained_path:
        load_vit_weights(model.branch1.encoder, pretrained_path)
        model.branch2.encoder.load_state_dict(model.branch1.encoder.state_dict())
    for student in model.students:
        student.encoder.set_grad_checkpointing(grad_checkpointing)
    return model


__all__ = ["LargeFOV", "Student", "StudentOutput", "DuplNet", "DuplOutputs", "build_dupl_model",
           "create_vit", "vit_tokens", "load_vit_weights"]
