"""DuPL hyper-parameters (`DuplConfig`, VOC/COCO presets of the released scripts) and the phase
schedule: which loss terms are computed and how they are weighted at each iteration."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ...cam import PAR_DILATIONS
from ...errors import ConfigError
from ...io import IGNORE_INDEX

# per-class end of the VOC τ_h descent: 0.70 for aeroplane, bicycle, bird, boat, chair, train
VOC_THRE_END = (0.70, 0.70, 0.70, 0.70, 0.55, 0.55, 0.55, 0.55, 0.70, 0.55,
                0.55, 0.55, 0.55, 0.55, 0.55, 0.55, 0.55, 0.55, 0.70, 0.55)
LOSS_TERMS = ("cls", "ptc", "seg", "dis", "reg")


@dataclass
class DuplConfig:
    """DuPL hyper-parameters (defaults: VOC, `train_final_voc.py`) and re-implementation flags.
    Iteration boundaries are in the original's 0-based `n_iter`."""

    max_iters: int = 20000
    cam_iters: int = 2000       # n < cam_iters: no seg labels, PTC with the fixed high_thre
    gmm_iters: int = 8000       # n ≥ gmm_iters: ANF; n > gmm_iters: + L_reg
    high_thre: float = 0.7      # fixed τ_h (PTC before cam_iters; aux-CAM seg labels)
    low_thre: float = 0.25
    bkg_thre: float = 0.5       # validation CAM rule
    thre_start: float = 0.7
    thre_end: list[float] = field(default_factory=lambda: list(VOC_THRE_END))  # or one value
    thre_offset: int | None = None        # τ_h descent starts here (None: cam_iters)
    aux_seg_label_until: int = -1         # COCO: n ≤ this → seg labels from aux CAMs, fixed τ_h
    ptc_from: int = -1                    # PTC weighted only for n > ptc_from (COCO 12000)
    dis_from: int = -1                    # L_dis weighted only for n > dis_from (COCO 8000)
    reg_from: int | None = None           # L_reg weighted for n > reg_from (None: gmm_iters;
                                          # COCO 12000, computed from gmm_iters on)
    w_cls: float = 1.0
    w_ptc: float = 0.2
    w_seg: float = 0.2
    w_dis: float = 0.1
    w_reg: float = 0.05
    cam_scales: list[float] = field(default_factory=lambda: [1.0, 0.5, 1.5])
    gamma: float = 0.95
    gmm_valid_thre: float = 1.0
    gmm_loss_min: float = 0.1
    gmm_min_samples: int = 1000
    gmm_backend: Literal["torch", "sklearn"] = "torch"
    reg_confidence: float = 0.9
    strong_scale: float = 0.75
    strong_flip: bool = True              # the original always mirrors the strong view
    ptc_scale_img_box: bool = False       # True: fix ToCo's unscaled img_box on the token grid
    discrepancy: Literal["code", "paper"] = "code"
    par_iters: int = 10
    par_dilations: list[int] = field(default_factory=lambda: list(PAR_DILATIONS))
    ignore_index: int = IGNORE_INDEX

    @classmethod
    def voc(cls, **overrides: Any) -> DuplConfig:
        return cls(**overrides)

    @classmethod
    def coco(cls, **overrides: Any) -> DuplConfig:
        values = dict(max_iters=80000, cam_iters=8000, gmm_iters=32000, high_thre=0.65,
                      bkg_thre=0.45, thre_start=0.65, thre_end=[0.55], thre_offset=12000,
                      aux_seg_label_until=12000, ptc_from=12000, dis_from=8000, reg_from=12000,
                      w_dis=0.05)
        values.update(overrides)
        return cls(**values)

    def rescaled(self, max_iters: int, crop_size: int | None = None,
                 reference_crop: int = 448) -> DuplConfig:
        """The same schedule over `max_iters` iterations (every boundary scaled
        proportionally); with `crop_size`, `gmm_min_samples` scales with the crop area (a
        deliberate adaptation for small demo crops: 1000 of 448² pixels)."""
        ratio = max_iters / self.max_iters

        def scale(value: int | None) -> int | None:
            return value if value is None or value < 0 else int(round(value * ratio))

        changes: dict[str, Any] = dict(
            max_iters=max_iters, cam_iters=scale(self.cam_iters), gmm_iters=scale(self.gmm_iters),
            thre_offset=scale(self.thre_offset), aux_seg_label_until=scale(self.aux_seg_label_until),
            ptc_from=scale(self.ptc_from), dis_from=scale(self.dis_from),
            reg_from=scale(self.reg_from))
        if crop_size is not None:
            changes["gmm_min_samples"] = max(1, int(round(
                self.gmm_min_samples * (crop_size / reference_crop) ** 2)))
        return dataclasses.replace(self, **changes)

    def validate(self, where: str = "train.method_options") -> None:
        def check(ok: bool, key: str, problem: str) -> None:
            if not ok:
                raise ConfigError(f"params.yaml: {where}.{key}: {problem}")

        check(self.max_iters >= 1, "max_iters", "must be >= 1")
        check(0 <= self.cam_iters <= self.gmm_iters, "gmm_iters", "need 0 <= cam_iters <= gmm_iters")
        check(0 <= self.low_thre <= self.high_thre <= 1, "high_thre", "need 0 <= low_thre <= high_thre <= 1")
        check(len(self.thre_end) >= 1, "thre_end", "needs one value or one per class")
        check(len(self.cam_scales) >= 1 and all(s > 0 for s in self.cam_scales), "cam_scales",
              "needs positive scales")
        check(0 < self.gamma < 1, "gamma", "must be in (0, 1)")
        check(self.gmm_backend in ("torch", "sklearn"), "gmm_backend", "must be 'torch' or 'sklearn'")
        check(self.discrepancy in ("code", "paper"), "discrepancy", "must be 'code' or 'paper'")
        check(0 < self.strong_scale <= 1, "strong_scale", "must be in (0, 1]")

    def class_thresholds(self, num_fg: int, device: torch.device
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """(start, end) per-class τ_h tensors (float32) for `num_fg` foreground classes."""
        end = list(self.thre_end)
        if len(end) == 1:
            end = end * num_fg
        if len(end) != num_fg:
            raise ConfigError(f"params.yaml: train.method_options.thre_end: has {len(end)} values, the dataset "
                              f"has {num_fg} foreground classes (give one value or one per class)")
        start = torch.full((num_fg,), self.thre_start, dtype=torch.float32, device=device)
        return start, torch.tensor(end, dtype=torch.float32, device=device)


def phase_weights(n_iter: int, cfg: DuplConfig) -> dict[str, float]:
    """Loss weights at the original's 0-based `n_iter`. As in the scripts the weights switch
    with `<=` while the computations switch with `<` (see `computed_terms`), so at
    n = cam_iters the seg loss is built but weighted 0, and at n = gmm_iters the labels are
    filtered and L_reg is built but weighted 0 (VOC; COCO weights it from 12001 on, before
    it is built, so at n = gmm_iters it counts)."""
    reg_from = cfg.gmm_iters if cfg.reg_from is None else cfg.reg_from
    return {
        "cls": cfg.w_cls,
        "ptc": cfg.w_ptc if n_iter > cfg.ptc_from else 0.0,
        "seg": cfg.w_seg if n_iter > cfg.cam_iters else 0.0,
        "dis": cfg.w_dis if n_iter > cfg.dis_from else 0.0,
        "reg": cfg.w_reg if n_iter > reg_from else 0.0,
    }


def computed_terms(n_iter: int, cfg: DuplConfig) -> dict[str, bool]:
    """The loss terms the released scripts compute at `n_iter`, weighted or not: L_cls and
    L_dis always; L_ptc once weighted or from cam_iters on (COCO builds it, weighted 0, over
    8000-12000); L_seg from cam_iters on; L_reg (with the strong-view forward) from gmm_iters
    on. A term built with weight 0 still reaches the parameters it touches as a zero gradient
    (e.g. the decoders at n = cam_iters: AdamW then counts the step and applies weight decay),
    as the original's `0.0 * seg_loss`. A term whose configured weight `w_*` is 0 is switched
    off and never computed."""
    configured = {"cls": cfg.w_cls, "ptc": cfg.w_ptc, "seg": cfg.w_seg, "dis": cfg.w_dis,
                  "reg": cfg.w_reg}
    in_phase = {
        "cls": True,
        "ptc": n_iter >= cfg.cam_iters or n_iter > cfg.ptc_from,
        "seg": n_iter >= cfg.cam_iters,
        "dis": True,
        "reg": n_iter >= cfg.gmm_iters,
    }
    return {name: in_phase[name] and configured[name] != 0 for name in LOSS_TERMS}
