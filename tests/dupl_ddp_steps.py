"""Two DuPL optimisation steps of the shared training loop (`wsss_core.training.train`) on a tiny
in-memory dataset; run by tests/test_train.py under torchrun with 1 and with 2 processes:

    python -m torch.distributed.run --nproc-per-node=N tests/dupl_ddp_steps.py OUT_DIR

Writes OUT_DIR/model.pth and the DVCLive curves of every loss term under OUT_DIR/live/.

Phases (`method_options`, no rescaling since max_iters = iterations): step 1 (n_iter 0) trains
L_cls + L_dis (L_seg is built with weight 0, as the original, so the decoders get zero
gradients); step 2 (n_iter 1 > cam_iters) adds the cross segmentation loss on two-background
PAR labels with the dynamic τ_h; ANF and L_reg would start at n_iter 2, after the run.

DuPL normalises L_ptc, L_seg and L_reg over the pixels / token pairs of each process's batch (as
the original does on each GPU), so N processes equal one only when every process's batch has
the same label counts. The dataset gives rank 1, at every position of the 2-process split, the
mirror image of what rank 0 gets: CAMs are flip-merged, so the pseudo labels (hence the counts)
mirror too, while the students' outputs and gradients differ between the ranks. L_ptc is
weighted 0: its "+1" in Σ s / (N + 1) makes the 2-process value differ by ~1/(2N) whatever the
counts (0.75 % on this 4×4 token grid), which AdamW's sign-like first step turns into ±lr.
"""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, DistributedSampler

from wsss_core.distributed import distributed
from wsss_core.methods.dupl import DuplMethod
from wsss_core.training import train

NUM_CLASSES, SIZE, SEED, BATCH, STEPS = 21, 32, 0, 4, 2
CONFIG = {
    "iterations": STEPS, "batch_size": BATCH, "iter_size": 1, "crop": SIZE, "lr": 1e-4,
    "weight_decay": 0.01, "warmup_iter": 0, "warmup_ratio": 1e-6, "lr_power": 0.9,
    "num_workers": 0, "checkpoint_every": STEPS, "log_every": 1, "seed": SEED,
    "init_weights": "", "schedule": "voc",
    "model": {"backbone": "deit_tiny_patch16_224", "patch_size": 8, "depth": 1},
    "method_options": {"max_iters": STEPS, "cam_iters": 0, "gmm_iters": STEPS, "w_ptc": 0.0},
}


class MirroredSplit(Dataset):
    """STEPS × BATCH samples, in an order such that under the 2-process DistributedSampler each
    of rank 1's samples is the mirror image of rank 0's at the same position (same classes)."""

    def __init__(self):
        count = STEPS * BATCH
        order = [list(DistributedSampler(range(count), num_replicas=2, rank=rank, shuffle=True,
                                         seed=SEED, drop_last=True)) for rank in (0, 1)]
        generator = torch.Generator().manual_seed(1)
        self.samples: list[dict] = [{} for _ in range(count)]
        for index_0, index_1 in zip(*order):
            coarse = torch.randn(1, 3, 4, 4, generator=generator)
            image = F.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0]
            image = image + 0.1 * torch.randn(3, SIZE, SIZE, generator=generator)
            cls_label = torch.zeros(NUM_CLASSES - 1)
            cls_label[torch.randperm(NUM_CLASSES - 1, generator=generator)[:2]] = 1
            box = torch.tensor([0, SIZE, 0, SIZE])
            self.samples[index_0] = {"image": image, "cls_label": cls_label, "img_box": box}
            self.samples[index_1] = {"image": image.flip(-1), "cls_label": cls_label, "img_box": box}

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        return self.samples[index]


def main(out_dir: Path) -> None:
    method = DuplMethod(NUM_CLASSES, CONFIG)
    with distributed("cpu") as ctx:
        train(method, MirroredSplit(), ctx, CONFIG, out_dir, out_dir / "live")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
