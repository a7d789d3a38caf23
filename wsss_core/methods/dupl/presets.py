"""Presets (`train.preset`) of DuPL: the released VOC and COCO scripts for GPU users and the
CPU demo."""
from __future__ import annotations

from ...models.demo import DEMO_VIT

_DUPL_COMMON = {
    "weight_decay": 0.01,
    "warmup_iter": 1500,      # linear LR warm-up (PolyWarmupAdamW), then poly 0.9
    "warmup_ratio": 1e-6,
    "lr_power": 0.9,
    "num_workers": 2,
    "method_options": {},
}

DUPL_PRESETS = {
    # CPU demo: two small ViT students (DeiT-Tiny layout cut to 4 blocks of width 128, 8-px
    # patches for a 12×12 token grid on 96-px crops, LargeFOV of width 128), batch 4 as the
    # authors insist. 600 iterations: 8 passes over the 300 demo images, as the paper's 20k
    # iterations of batch 4 are 7.6 over VOC's 10,582. The VOC phase table rescaled to the run:
    # classifier only to iteration 60, CAM pseudo labels from 60, the GMM noise filter and L_reg
    # from 240. Initialised, as DuPL's DeiT-B by ImageNet, by the synthetic pretraining's ViT
    # (pretrain/dvc.yaml: whole objects, max-pooled classifier as DuPL's students). Init and
    # length chosen on val among the pretraining variants and 300 or 600 iterations (README
    # "Pretrained initialisation"); `train.init_weights: ""` trains from scratch
    "demo": {
        **_DUPL_COMMON,
        "iterations": 600, "batch_size": 4, "iter_size": 1, "crop": 96, "lr": 5e-4,
        "warmup_iter": 30, "checkpoint_every": 100, "log_every": 10, "num_workers": 0,
        "init_weights": "models/init/demo_vit.pth", "schedule": "voc",
        "model": {"backbone": DEMO_VIT["vit_name"],
                  **{key: DEMO_VIT[key] for key in ("patch_size", "depth", "embed_dim", "num_heads")},
                  "decoder_width": 128},
    },
    # Wu0409/DuPL train_final_voc.py: effective batch 4 (the authors stress it), 448 crops; the
    # paper ran it on 2 GPUs × 2 images (DUPL_PAPER_PROCESSES)
    "voc": {
        **_DUPL_COMMON,
        "iterations": 20000, "batch_size": 4, "iter_size": 1, "crop": 448, "lr": 6e-5,
        "checkpoint_every": 2000, "log_every": 100, "schedule": "voc",
        "init_weights": "models/init/deit_base_patch16_224-b5f2ef4d.pth",
        "model": {"backbone": "deit_base_patch16_224"},
    },
    # Wu0409/DuPL train_final_coco.py: batch 8, run on 8 GPUs × 1 image (DUPL_PAPER_PROCESSES)
    "coco": {
        **_DUPL_COMMON,
        "iterations": 80000, "batch_size": 8, "iter_size": 1, "crop": 448, "lr": 6e-5,
        "checkpoint_every": 4000, "log_every": 100, "schedule": "coco",
        "init_weights": "models/init/deit_base_patch16_224-b5f2ef4d.pth",
        "model": {"backbone": "deit_base_patch16_224"},
    },
}
# Processes of the DuPL paper runs per preset. DuPL keeps the per-process loss normalisation of
# its original (which is DDP: L_seg, L_ptc and L_reg are normalised over each GPU's images), so
# the normalisation unit is batch_size / processes: train with this many processes
# (`torchrun --nproc-per-node=2` for voc) to reproduce the paper's; 1 process pools over the
# whole batch (README "Differences from the original code"). Documentation only: nothing reads it.
DUPL_PAPER_PROCESSES = {"voc": 2, "coco": 8}
