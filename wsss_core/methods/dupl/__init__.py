"""DuPL (spec dupl.md §1.3–§3): pseudo labels from CAMs + PAR, progressive threshold, GMM
noise filter and the losses, plus test-time prediction. Follows the released code (Wu0409/DuPL
`train_final_voc.py` / `train_final_coco.py`); paper variants sit behind flags.

Modules: `config` (DuplConfig, phase schedule), `thresholds` (τ_h), `losses/` (one per term),
`noise_filter` (ANF), `method` (training step, DuplMethod, predict), `presets` (train.preset),
`record` (its registry record). The CAM and PAR functions
live in `wsss_core.cam` (method-independent) and are re-exported here.

Interface used by the shared training loop (`model` is a `models.vit_seg.DuplNet`, possibly
wrapped in DDP; `iteration` is 1-based like every method, the original's `n_iter` is
`iteration - 1`):

    method = DuplMethod(num_classes, train_config)   # method.cfg: the effective DuplConfig
    loss, terms = method.training_loss(model, batch, iteration)
    # = compute_loss(model, dupl_batch, iteration, method.cfg)
    optimizer = method.optimizer(model)               # AdamW over param_groups(model, lr, wd)
    factor = method.lr_factor(iteration)              # warm-up + poly lr factor

`compute_loss`'s batch is a dict:
    images          (B, 3, H, W) float, ImageNet mean/std normalised crops
    cls_labels      (B, K-1) multi-hot image labels (no background entry)
    img_box         (B, 4) int [h0, h1, w0, w1] valid (non-padded) crop region; optional
    strong_images   (B, 3, H, W) normalised strong photometric view, pixel-aligned with
                    `images` (not flipped: the flip of the original is done here); needed once
                    the consistency loss is computed (iteration - 1 >= gmm_iters)

Test time: `predict(model, images, scales, flip, student)` (seg logits, flip-summed, max over
scales); `DuplMethod.cam_matrices` scores each student's CAMs by the `bkg_thre` rule.
"""
from ...cam import (
    box_mask,
    cam_to_train_label,
    cam_to_val_label,
    denormalize_to_unit,
    multi_scale_cams,
    par_refine,
    refine_cams_two_backgrounds,
    scale_box,
)
from .config import DuplConfig, computed_terms, phase_weights
from .losses import (
    balanced_seg_loss,
    consistency_loss,
    consistency_target,
    discrepancy_loss,
    ptc_affinity_target,
    ptc_loss,
    ptc_token_labels,
)
from .method import DuplMethod, compute_loss, param_groups, predict
from .noise_filter import NoiseFilterResult, TwoGaussians, filter_noisy_labels, fit_two_gaussians
from .record import RECORD  # registers dupl
from .thresholds import cosine_descent, image_high_thresholds

__all__ = [
    "RECORD", "DuplConfig", "DuplMethod", "compute_loss", "param_groups", "phase_weights", "computed_terms",
    "predict",
    "multi_scale_cams", "cam_to_train_label", "cam_to_val_label",
    "par_refine", "refine_cams_two_backgrounds", "cosine_descent", "image_high_thresholds",
    "balanced_seg_loss", "ptc_affinity_target", "ptc_loss", "ptc_token_labels",
    "discrepancy_loss", "consistency_loss", "consistency_target", "filter_noisy_labels",
    "fit_two_gaussians", "TwoGaussians", "NoiseFilterResult", "denormalize_to_unit", "box_mask",
    "scale_box",
]
