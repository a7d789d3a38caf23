"""Tiny real trainings of the shared loop (`wsss_core.training.train`) for the resume, orphan and
side-by-side tests; importable, and runnable as the process those tests kill:

    python -m tests.tiny_training OUT_DIR METHOD [--hang-at N] [--num-workers K]   (repo root)

METHOD is `baseline`, `cdl_e` or `dupl` (tiny models on a generated 6-image dataset, 9 iterations of
batch 2: 3 batches an epoch, checkpoints every 4 iterations, curves logged every iteration) or
`toy` (a 3-weight model with dropout on 4 vectors). Writes OUT_DIR/model/{model.pth,checkpoints/}, the DVCLive
curves in OUT_DIR/live/ and the loop's summary in OUT_DIR/summary.json. With --hang-at N the
process prints `hanging at N pid P` when it reaches the forward pass of iteration N and then
waits to be killed, so a test can kill it at a known point between two checkpoints.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ITERATIONS, CHECKPOINT_EVERY, NUM_CLASSES, SIZE = 9, 4, 21, 32
TRAIN_IDS = [f"t{i}" for i in range(6)]

_COMMON = {"iterations": ITERATIONS, "batch_size": 2, "iter_size": 1, "crop": SIZE,
           "checkpoint_every": CHECKPOINT_EVERY, "log_every": 1, "seed": 3, "init_weights": "",
           "num_workers": 0}
# a 1-block-per-stage DeepLab v2 of width 8, BatchNorm trained, clipped gradients, 2 scales
_DEEPLAB = {**_COMMON, "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "lr_step": 2,
            "lr_power": 0.9, "warmup_iter": 2, "train_scales": [0.75, 1.0], "grad_clip": 5.0,
            "method_options": {},
            "model": {"blocks": [1, 1, 1, 1], "width": 8, "msc_scales": [0.75],
                      "test_scales": [1.0], "freeze_bn": False}}
CONFIGS = {
    "baseline": _DEEPLAB,
    # CDL-e adds the strong view and Dropout2d (the loop's torch generator matters); the
    # experts correct the labels from iteration 3 on
    "cdl_e": {**_DEEPLAB, "method_options": {"warmup_ratio": 0.3}},
    # one-block ViT students (8-px patches: a 4×4 token grid); CAM labels train the students'
    # decoders from iteration 3 on and the noise filter runs from iteration 6 on, both after the
    # first checkpoint, so a resumed run goes through every phase
    "dupl": {**_COMMON, "lr": 1e-4, "weight_decay": 0.01, "warmup_iter": 2, "warmup_ratio": 1e-6,
             "lr_power": 0.9, "schedule": "voc",
             "model": {"backbone": "deit_tiny_patch16_224", "patch_size": 8, "depth": 1},
             "method_options": {"max_iters": ITERATIONS, "cam_iters": 2, "gmm_iters": 5}},
}


def make_dataset(root: Path) -> None:
    """The generated images, image-level labels and pseudo labels (the GT) in VOC layout."""
    from tests.conftest import make_voc_dataset
    from wsss_core.io import write_text

    gts = make_voc_dataset(root, {"train": TRAIN_IDS}, size=(40, 44), seed=1)
    write_text(root / "cls_labels.json", json.dumps(
        {i: sorted(int(c) for c in np.unique(gt) if 0 < c < 255) for i, gt in gts.items()}))


class HangAt:
    """`method` that prints each iteration it starts and hangs at iteration `hang_at`."""

    def __init__(self, method, hang_at: int | None):
        self._method, self._hang_at = method, hang_at

    def __getattr__(self, name):
        return getattr(self._method, name)

    def training_loss(self, model, batch, iteration):
        if iteration == self._hang_at:
            print(f"hanging at {iteration} pid {os.getpid()}", flush=True)
            while True:
                time.sleep(1)
        return self._method.training_loss(model, batch, iteration)


class ToySet(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        return {"x": torch.tensor([float(index), 1.0])}

    def set_epoch(self, epoch):
        pass


class ToyMethod:
    """w·x with dropout (so the loop's torch RNG matters) on a 4-sample set."""
    name, family, needs_strong_view, find_unused_parameters = "toy", "deeplab", False, False

    def build_model(self):
        return torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(2, 1))

    def optimizer(self, model):
        return torch.optim.SGD([{"params": model.parameters(), "lr": 0.1, "initial_lr": 0.1}])

    def lr_factor(self, iteration):
        return 1.0

    def training_loss(self, model, batch, iteration):
        loss = model(batch["x"]).pow(2).mean()
        return loss, {"loss": float(loss.detach())}

    def predictors(self):
        return {}


def toy_config(iterations: int) -> dict:
    return {**_COMMON, "iterations": iterations, "checkpoint_every": iterations}


def train_toy(out_dir: str, iterations: int) -> dict:
    """A toy training in this process (what a benchmark cell's worker does, in miniature)."""
    from wsss_core.distributed import Context
    from wsss_core.training import train

    ctx = Context(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    out = Path(out_dir)
    return train(ToyMethod(), ToySet(), ctx, toy_config(iterations), out / "model", out / "live")


def running(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie has ended, whoever reaps it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("method", choices=[*CONFIGS, "toy"])
    parser.add_argument("--hang-at", type=int)
    parser.add_argument("--num-workers", type=int, default=0)
    args = parser.parse_args()
    from wsss_core.data.datasets import voc_layout_split
    from wsss_core.data.train_set import TrainSet
    from wsss_core.distributed import distributed
    from wsss_core.methods import create_method
    from wsss_core.methods.registry import get_method
    from wsss_core.training import train

    if args.method == "toy":
        method, dataset, config = ToyMethod(), ToySet(), dict(_COMMON)
    else:
        data = args.out_dir / "data"
        if not data.is_dir():
            make_dataset(data)
        config = {**CONFIGS[args.method], "num_workers": args.num_workers}
        method = create_method(args.method, NUM_CLASSES, config)
        record = get_method(args.method)
        split = voc_layout_split(data, "train")
        inputs = (data / "SegmentationClassAug" if record.uses_pseudo_labels
                  else data / "cls_labels.json")
        dataset = TrainSet(split, record, NUM_CLASSES, config, config["seed"], inputs,
                           strong_view=method.needs_strong_view)
    with distributed("cpu") as ctx:
        summary = train(HangAt(method, args.hang_at), dataset, ctx, config,
                        args.out_dir / "model", args.out_dir / "live")
        if ctx.is_main:
            (args.out_dir / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    sys.exit(main())
