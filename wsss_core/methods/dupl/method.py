"""DuPL's training step, optimiser groups, the `DuplMethod` plug-in of the shared training loop
and test-time prediction."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...cam import (
    denormalize_to_unit,
    multi_scale_cams,
    refine_cams_two_backgrounds,
)
from ...cam.quality import cam_confusions
from ...data.transforms import to_imagenet_normalized
from ...errors import WsssError
from ...metrics import ConfusionMatrix
from ...models import unwrap
from ...models.vit_seg import build_dupl_model
from ...precision import as_float, full_precision
from ...schedules import warmup_poly_factor
from ..registry import parse_options
from .config import LOSS_TERMS, DuplConfig, computed_terms, phase_weights
from .losses import (
    balanced_seg_loss,
    consistency_loss,
    discrepancy_loss,
    ptc_affinity_target,
    ptc_loss,
    ptc_token_labels,
)
from .noise_filter import filter_noisy_labels
from .thresholds import cosine_descent, image_high_thresholds


def _batch_tensor(batch: Mapping[str, Any], key: str, device: torch.device | None = None
                  ) -> torch.Tensor:
    if key not in batch or batch[key] is None:
        raise WsssError(f"DuPL batch: missing '{key}'")
    value = batch[key]
    return torch.as_tensor(value) if device is None else torch.as_tensor(value).to(device)


def compute_loss(model: nn.Module, batch: Mapping[str, Any], iteration: int, cfg: DuplConfig
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """One DuPL training step's loss. `iteration` is 1-based (the original `n_iter + 1`).

    CAMs of both students (no grad) → PTC token labels (aux CAMs) and two-background PAR seg
    labels (final CAMs; aux CAMs with fixed τ_h up to `aux_seg_label_until`) → ANF filtering of
    each student's own labels (n ≥ gmm_iters) → cross supervision Y2 → student 1, Y1 → student 2
    → consistency on the strong view (n ≥ gmm_iters). The gradient forward is a single call of
    `model` (so DDP sees it). The terms of `computed_terms` are built and multiplied by their
    `phase_weights` weight, 0 included (as the original); the others are not computed. Returns
    (total, {"loss", "cls", "ptc", "seg", "dis", "reg", "filtered"}): each term's unweighted
    value, reported as 0 where its weight is 0, and "filtered", the fraction of pixels ANF set
    to 255."""
    net = unwrap(model)
    images = _batch_tensor(batch, "images")
    device = images.device
    cls_labels = _batch_tensor(batch, "cls_labels", device).float()
    img_box = batch.get("img_box")
    img_box = None if img_box is None else torch.as_tensor(img_box).to(device).long()
    n_iter = iteration - 1
    computed = computed_terms(n_iter, cfg)

    # mixed precision: the students' forwards (CAMs, training outputs) run under the caller's
    # autocast; the raw CAMs are float32 before their upsampling, min-max normalisation and
    # thresholds (a bf16 CAM of 0.55 is 0.5508: borderline pixels would change label)
    cams = [multi_scale_cams(_Float32Cams(student), images, cfg.cam_scales)
            for student in net.students]
    strong = None
    if computed["reg"]:
        strong = _batch_tensor(batch, "strong_images", device)
        strong = strong.flip(-1) if cfg.strong_flip else strong
    out = model(images, strong_images=strong, strong_scale=cfg.strong_scale)
    # everything after the forward in float32: thresholds, PAR, the GMM filter, the losses
    with full_precision(images):
        return _loss_terms(_float_outputs(out), cams, images, cls_labels, img_box, n_iter, cfg)


class _Float32Cams:
    """A student whose raw CAMs come out as float32 (its forward keeps the autocast around
    it), so `multi_scale_cams` upsamples, merges and normalises them in float32 (autocast
    casts none of those ops down)."""

    def __init__(self, student: nn.Module):
        self.student = student

    def cams(self, images: torch.Tensor):
        return as_float(self.student.cams(images))


def _float_outputs(out):
    """The training outputs of both students (and the strong views) as float32."""
    fields = {name: as_float(getattr(out, name)) for name in ("strong_seg1", "strong_seg2")
              if getattr(out, name, None) is not None}
    for name in ("student1", "student2"):
        student = getattr(out, name)
        fields[name] = student._replace(**{k: as_float(v) for k, v in student._asdict().items()
                                           if torch.is_tensor(v)})
    return out._replace(**fields)


def _loss_terms(out, cams: list, images: torch.Tensor, cls_labels: torch.Tensor,
                img_box: torch.Tensor | None, n_iter: int, cfg: DuplConfig
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss terms of `compute_loss` from the float32 outputs `out` and CAMs `cams`."""
    device = images.device
    height, width = images.shape[-2:]
    weights = phase_weights(n_iter, cfg)
    computed = computed_terms(n_iter, cfg)
    ignore = cfg.ignore_index
    students = (out.student1, out.student2)

    if n_iter < cfg.cam_iters:
        high: float | torch.Tensor = cfg.high_thre
    else:
        start, end = cfg.class_thresholds(cls_labels.shape[1], device)
        offset = cfg.cam_iters if cfg.thre_offset is None else cfg.thre_offset
        class_thresholds = cosine_descent(start, end, n_iter - offset, cfg.max_iters - offset)
        high = image_high_thresholds(class_thresholds, cls_labels)

    terms: dict[str, torch.Tensor] = {}
    if computed["cls"]:
        terms["cls"] = sum(F.multilabel_soft_margin_loss(o.cls, cls_labels) +
                           F.multilabel_soft_margin_loss(o.cls_aux, cls_labels) for o in students)
    if computed["ptc"]:
        terms["ptc"] = sum(
            ptc_loss(o.fmap, ptc_affinity_target(ptc_token_labels(
                cam_aux, cls_labels, o.fmap.shape[-2:], img_box, high, cfg.low_thre,
                cfg.bkg_thre, cfg.ptc_scale_img_box, ignore), ignore))
            for o, (_, cam_aux) in zip(students, cams))
    filtered_fraction = images.new_zeros(())
    if computed["seg"] or computed["reg"]:
        images_unit = denormalize_to_unit(images)
        from_aux = n_iter <= cfg.aux_seg_label_until
        labels = [refine_cams_two_backgrounds(
            images_unit, (cam_aux if from_aux else cam) * cls_labels[:, :, None, None],
            cls_labels, cfg.high_thre if from_aux else high, cfg.low_thre, img_box, ignore,
            dilations=cfg.par_dilations, num_iter=cfg.par_iters) for cam, cam_aux in cams]
        segs = [F.interpolate(o.seg, size=(height, width), mode="bilinear", align_corners=False)
                for o in students]
        if n_iter >= cfg.gmm_iters:
            before = labels
            labels = [filter_noisy_labels(
                F.cross_entropy(seg.detach(), label, ignore_index=ignore, reduction="none"),
                label, cfg.gamma, cfg.gmm_valid_thre, cfg.gmm_loss_min, cfg.gmm_min_samples,
                cfg.gmm_backend, ignore).labels for seg, label in zip(segs, labels)]
            filtered_fraction = sum((b != a).float().mean() for b, a in zip(before, labels)) / 2
        if computed["seg"]:
            terms["seg"] = (balanced_seg_loss(segs[0], labels[1], ignore) +
                            balanced_seg_loss(segs[1], labels[0], ignore))
        if computed["reg"]:
            terms["reg"] = (
                consistency_loss(segs[0], out.strong_seg1, labels[1], cfg.reg_confidence,
                                 cfg.strong_flip, ignore) +
                consistency_loss(segs[1], out.strong_seg2, labels[0], cfg.reg_confidence,
                                 cfg.strong_flip, ignore))
    if computed["dis"]:
        terms["dis"] = discrepancy_loss(out.student1.fmap, out.student2.fmap, cfg.discrepancy)

    total = sum(weights[name] * terms[name] for name in LOSS_TERMS if name in terms)
    reported = [terms[name] if name in terms and weights[name] != 0 else images.new_zeros(())
                for name in LOSS_TERMS]
    values = torch.stack([torch.as_tensor(v).detach().float().to(device)
                          for v in (total, *reported, filtered_fraction)]).tolist()
    return total, dict(zip(("loss", *LOSS_TERMS, "filtered"), values))


def param_groups(model: nn.Module, base_lr: float = 6e-5, weight_decay: float = 0.01,
                 head_lr_mult: float = 10.0) -> list[dict]:
    """AdamW groups of the original (weight decay on all of them): "backbone" (encoder
    parameters of both students without "norm" in the name), "backbone_norm", "classifier"
    (both students' classifier + aux_classifier, lr ×10), "decoder" (both LargeFOV heads, ×10).
    Frozen parameters (pos_embed, unused ImageNet head) are left out. Each group records `name`
    and `initial_lr`; use AdamW(betas=(0.9, 0.999), eps=1e-8)."""
    net = unwrap(model)
    groups: dict[str, list[nn.Parameter]] = {"backbone": [], "backbone_norm": [],
                                             "classifier": [], "decoder": []}
    for student in net.students:
        for name, parameter in student.encoder.named_parameters():
            if parameter.requires_grad:
                groups["backbone_norm" if "norm" in name else "backbone"].append(parameter)
        groups["classifier"] += [student.classifier.weight, student.aux_classifier.weight]
        groups["decoder"] += list(student.decoder.parameters())
    mult = {"backbone": 1.0, "backbone_norm": 1.0, "classifier": head_lr_mult,
            "decoder": head_lr_mult}
    return [{"name": name, "params": params, "lr": base_lr * mult[name],
             "initial_lr": base_lr * mult[name], "weight_decay": weight_decay}
            for name, params in groups.items()]


class DuplMethod:
    """DuPL as a plug-in of the shared training loop (`wsss_core.training.TrainingMethod`).

    `config` is the effective training configuration: `iterations`, `lr`, `weight_decay`,
    `warmup_iter`, `warmup_ratio`, `lr_power`, `crop`, `model` (kwargs of `build_dupl_model`),
    `init_weights`, `schedule` ("voc" | "coco": the released scripts' phase tables, rescaled
    to `iterations` when that differs) and `method_options` (any `DuplConfig` field)."""

    name = "dupl"
    needs_strong_view = True
    # the unused ImageNet head and the terms switched off in early phases get no gradient
    find_unused_parameters = True

    def __init__(self, num_classes: int, config: Mapping[str, Any]):
        self.num_classes = num_classes
        self.config = dict(config)
        base = DuplConfig.coco if config.get("schedule", "voc") == "coco" else DuplConfig.voc
        cfg = parse_options(DuplConfig, "dupl", config.get("method_options", {}), factory=base)
        if cfg.max_iters != config["iterations"]:
            cfg = cfg.rescaled(config["iterations"], crop_size=config["crop"])
        cfg.validate()
        self.cfg = cfg

    def build_model(self) -> nn.Module:
        return build_dupl_model(self.num_classes, pretrained_path=self.config.get("init_weights") or "",
                                **self.config["model"])

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        groups = param_groups(model, self.config["lr"], self.config["weight_decay"])
        return torch.optim.AdamW(groups, lr=self.config["lr"], betas=(0.9, 0.999), eps=1e-8,
                                 weight_decay=self.config["weight_decay"])

    def lr_factor(self, iteration: int) -> float:
        return warmup_poly_factor(iteration - 1, self.config["warmup_iter"], self.config["iterations"],
                                  self.config["warmup_ratio"], self.config["lr_power"])

    def training_loss(self, model: nn.Module, batch: Mapping[str, Any], iteration: int
                      ) -> tuple[torch.Tensor, dict[str, float]]:
        inputs = {"images": batch["image"], "cls_labels": batch["cls_label"],
                  "img_box": batch["img_box"], "strong_images": batch.get("strong_image")}
        return compute_loss(model, inputs, iteration, self.cfg)

    def cam_matrices(self, model: nn.Module, split, class_labels: Mapping[str, list[int]],
                     device: torch.device) -> dict[str, ConfusionMatrix]:
        """CAM quality of each student on a split (`validate_siamase`'s CAM mIoU, at full image
        resolution): multi-scale + flip CAMs of the image-level GT classes, the `bkg_thre` rule."""
        net = unwrap(model).eval()
        students = {f"student{i + 1}": student for i, student in enumerate(net.students)}
        return cam_confusions(students, to_imagenet_normalized, split, class_labels,
                              self.num_classes, device, self.cfg.cam_scales, self.cfg.bkg_thre)


# --------------------------------------------------------------------------- inference
TEST_SCALES = (1.5, 1.25)  # eval_seg_voc.py's scales besides 1.0


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, scales: Sequence[float] | None = None,
            flip: bool = True, student: int = 1, output_size: Sequence[int] | None = None
            ) -> torch.Tensor:
    """Test-time segmentation logits (B, K, h, w) of one student (`eval_seg_voc.py`): per scale
    the image (and its mirror) is resized bilinearly, the decoder logits are upsampled to
    `output_size` (default: the input size) and the flips summed; the element-wise max over
    scales is returned. `scales` default: 1.0 and the model's `test_scales` attribute if it
    has one (`wsss_core.infer.single_scale` empties it), else 1.0, 1.5, 1.25."""
    if scales is None:
        scales = (1.0, *getattr(unwrap(model), "test_scales", TEST_SCALES))
    net = unwrap(model).student(student)
    batch, _, height, width = images.shape
    size = (height, width) if output_size is None else (int(output_size[0]), int(output_size[1]))
    best = None
    for scale in scales:
        x = F.interpolate(images, size=(int(height * scale), int(width * scale)),
                          mode="bilinear", align_corners=False)
        if flip:
            x = torch.cat([x, x.flip(-1)], dim=0)
        logits = F.interpolate(net.seg_logits(x), size=size, mode="bilinear", align_corners=False)
        if flip:
            logits = logits[:batch] + logits[batch:].flip(-1)
        best = logits if best is None else torch.max(best, logits)
    return best
