"""Does CDL's online correction make the training labels better? Trains CDL with the demo preset
on the synthetic data and prints, per logging window after the correction starts, the mIoU
against the ground truth of the pseudo labels the batch came with and of the labels CDL corrected
them to (full-resolution MSC output, the label both experts learn from), plus how many pixels
the correction rewrote, how many of those it rewrote to the GT class ("right") and how many it
rewrote away from a label that was right ("broken").

    python benchmarks/cdl_label_quality.py [--method cdl_b] [--labels data/robustness/pseudo_labels/cams]

Run `dvc repro` first (it generates the data and the pseudo labels). Training crops of the
pseudo labels and of the GT come from two datasets with the same seed, so they are the same crops.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from wsss_core.config import load_params
from wsss_core.data.datasets import resolve_split
from wsss_core.data.train_set import TrainSet
from wsss_core.methods import create_method
from wsss_core.methods.deeplab.baseline import resize_labels
from wsss_core.methods.deeplab.cdl import update_labels
from wsss_core.methods.registry import get_method
from wsss_core.metrics import ConfusionMatrix
from wsss_core.pipeline.paths import RunPaths
from wsss_core.pipeline.resolve import effective_train_config
from wsss_core.schedules import set_lr_factor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--method", default="cdl_b", choices=["cdl_b", "cdl_e"])
    parser.add_argument("--labels", default=None, help="pseudo-label folder (default: the pipeline's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=int, default=30)
    args = parser.parse_args()

    params = load_params(overrides={"method": args.method, "seed": args.seed})
    config = effective_train_config(params)
    family = create_method(args.method, params.num_classes, config)
    cdl = family.method
    split = resolve_split(params, "train")
    labels_dir = Path(args.labels) if args.labels else RunPaths.defaults(params).pseudo_labels
    record = get_method(args.method)
    noisy, truth = (TrainSet(split, record, params.num_classes, config, args.seed, labels,
                             strong_view=family.needs_strong_view)
                    for labels in (labels_dir, split.gt_dir))

    torch.manual_seed(args.seed)
    model = family.build_model()
    optimizer = family.optimizer(model)
    model.train()
    iterations, batch_size = config["iterations"], config["batch_size"]
    start = int(cdl.config.warmup_ratio * iterations) + 1
    generator = torch.Generator().manual_seed(args.seed)
    raw_cm = fixed_cm = None
    changed = total = right = broken = 0
    epoch, order, position = 0, [], 0
    started = time.time()
    print(f"{args.method}: correction from iteration {start} of {iterations}; labels {labels_dir}")
    print("iterations | pseudo labels mIoU | corrected labels mIoU | pixels rewritten | of them "
          "right | of them broken")
    for iteration in range(1, iterations + 1):
        if position + batch_size > len(order):
            noisy.set_epoch(epoch)
            truth.set_epoch(epoch)
            order, position, epoch = torch.randperm(len(noisy), generator=generator).tolist(), 0, epoch + 1
        indices = order[position:position + batch_size]
        position += batch_size
        batch = torch.utils.data.default_collate([noisy[i] for i in indices])
        gt = torch.stack([truth[i]["label"] for i in indices])

        set_lr_factor(optimizer, family.lr_factor(iteration))
        optimizer.zero_grad(set_to_none=True)
        outputs = model(batch["image"], batch.get("strong_image"))
        loss, _ = cdl.compute_loss(outputs, batch["label"], iteration, iterations)
        loss.backward()
        if config.get("grad_clip"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), config["grad_clip"])
        optimizer.step()

        if iteration < start:
            continue
        with torch.no_grad():  # the full-resolution MSC output, as compute_loss corrects it
            logits_1, logits_2 = outputs.main[0].detach(), outputs.second[0].detach()
            raw = resize_labels(batch["label"], logits_1.shape[-2:])
            corrected, _ = update_labels(logits_1, logits_2, outputs.affinity[0].detach(), raw,
                                         cdl.config.threshold_1, cdl.config.threshold_2,
                                         cdl.config.incredible_threshold, cdl.config.source_threshold)
            small_gt = resize_labels(gt, logits_1.shape[-2:]).numpy()
        if raw_cm is None:
            raw_cm, fixed_cm = ConfusionMatrix(params.num_classes), ConfusionMatrix(params.num_classes)
        raw, corrected = raw.numpy(), corrected.numpy()
        raw_cm.update(raw, small_gt)
        fixed_cm.update(corrected, small_gt)
        rewritten = corrected != raw
        changed += int(rewritten.sum())
        right += int((rewritten & (corrected == small_gt)).sum())
        broken += int((rewritten & (raw == small_gt)).sum())
        total += raw.size
        if (iteration - start + 1) % args.window == 0 or iteration == iterations:
            print(f"{iteration - args.window + 1:4d}-{iteration:<4d} | {raw_cm.scores()['miou']:.4f} | "
                  f"{fixed_cm.scores()['miou']:.4f} | {changed / total:.1%} | "
                  f"{right / max(changed, 1):.1%} | {broken / max(changed, 1):.1%}", flush=True)
            raw_cm = fixed_cm = None
            changed = total = right = broken = 0
    print(f"({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
