"""How well does a pretrained demo ViT stand in for ImageNet pretraining? Figures per variant.

    python benchmarks/vit_standin.py pretrain --variant max900 -S vit.num_train=2700 \
        -S vit.context=0.8 -S vit.part_focus=0.5 -S vit.iterations=900 [-S vit.pooling=max ...]
    python benchmarks/vit_standin.py evaluate --variant max900
    python benchmarks/vit_standin.py dupl --variant max900 --seeds 0 1
    python benchmarks/vit_standin.py dupl --variant scratch --seeds 0 1     # no init
    python benchmarks/vit_standin.py dupl --variant max900 --iterations 600  # a longer DuPL run

DuPL fine-tunes DeiT-B/16 pretrained on ImageNet-1k, and collapses without it (its authors,
Wu0409/DuPL #13). What such an init gives DuPL, measured here for a stand-in:
- `pretrain`: the demo ViT pretrained as `pretrain/dvc.yaml` does (`pretrain.pretrain`),
  with params `pretrain` of pretrain/params.yaml and the `-S` overrides (keys of that group:
  `vit.num_train`, `vit.iterations`, `vit.pooling`, `seed`, ...), into the scratch folder
  data/vit_standin/<variant>/ (classifier, checkpoints, its init file, the pretraining's
  report with held-out mAP and time). A classification set with other params than
  pretrain/params.yaml's ViT set (data/pretrain/vit, the pipeline's) is rendered there too.
- `evaluate`: the pretrained classifier (before any DuPL training) on the demo's val split:
  CAM mIoU with the image-level GT (`cam.quality.cam_confusions`, the CAM classifier's
  measure) at the background thresholds of `BKG_THRESHOLDS`, and, at the best of them, where
  its CAMs put foreground (`synthetic.context.context_statistics`: share of object pixels
  missed, share of the class-specific context labelled foreground, share of the other
  background). An ImageNet DeiT localises objects before fine-tuning (its CAMs cover parts of
  objects and little of the rest); a stand-in that does not gives DuPL's first phase
  (classification only, then CAM pseudo labels) nothing to start from.
- `dupl`: DuPL's demo preset trained from that init (or from scratch for `scratch`), per seed,
  scored on val (no test: variants are chosen on val): mIoU of the chosen student, both
  students' val CAM mIoU.
Each command merges its figures into metrics/pretrain/vit_standin.json under the variant.
"""
from __future__ import annotations

import argparse
import dataclasses
import fcntl
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from pretrain.config import load_pretrain_params
from pretrain.pretrain import DATA_DIRS, make_classification_set, pretrain_backbone, pretrain_config
from wsss_core.cam import cam_to_val_label, multi_scale_cams
from wsss_core.cam.quality import cam_confusions
from wsss_core.config import VOC_NUM_CLASSES, load_params
from wsss_core.data.classes import multi_hot, read_class_labels
from wsss_core.data.datasets import resolve_split
from wsss_core.data.transforms import to_bgr_mean_subtracted
from wsss_core.io import read_image, read_json, write_json
from wsss_core.methods import create_method
from wsss_core.pipeline.infer import run_inference
from wsss_core.pipeline.paths import RunPaths
from wsss_core.pipeline.resolve import effective_train_config
from wsss_core.pipeline.train import run_training
from wsss_core.synthetic import CONTEXT_FOLDER
from wsss_core.synthetic.context import context_statistics

WORK = Path("data/vit_standin")
CAM_CLASSIFIER = "cam_classifier"     # the demo's ResNet CAM classifier, for reference
RESULTS = Path("metrics/pretrain/vit_standin.json")
BKG_THRESHOLDS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)
# the params of the ViT's classification set itself, keys of group `pretrain` (the shared set
# keys and the ViT's own; others only change the training)
SET_KEYS = ("min_size", "max_size", "max_objects", "seed", "distractors",
            "vit.num_train", "vit.num_val", "vit.context", "vit.part_focus")


def param(p, key: str):
    """The value of a dotted key of group `pretrain` (`seed`, `vit.num_train`)."""
    for name in key.split("."):
        p = getattr(p, name)
    return p


def parse_overrides(pairs: list[str]) -> dict:
    """`-S key=value` pairs as overrides of group `pretrain` (`vit.num_train=5400` →
    `pretrain.vit.num_train`), values parsed as YAML (as `dvc exp run -S` does)."""
    overrides = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        overrides[key if key.startswith("pretrain.") else f"pretrain.{key}"] = yaml.safe_load(value)
    return overrides


def merge_results(variant: str, figures: dict) -> None:
    """Merge `figures` into the variant's entry; locked, as variants may run side by side."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = read_json(RESULTS) if RESULTS.is_file() else {}
        entry = results.get(variant, {})
        for key, value in figures.items():   # per-seed entries add up across runs
            entry[key] = {**entry[key], **value} if isinstance(entry.get(key), dict) and \
                isinstance(value, dict) and key.startswith("dupl_val") else value
        results[variant] = entry
        write_json(RESULTS, results)


def pretrain_variant(variant: str, overrides: dict, threads: int | None) -> dict:
    p = load_pretrain_params(overrides=overrides)
    if threads:
        p = dataclasses.replace(p, threads=threads)
    default = load_pretrain_params()
    work = WORK / variant
    data = DATA_DIRS["vit"]
    if any(param(p, key) != param(default, key) for key in SET_KEYS):
        data = work / "data"
    if not (data / "cls_labels.json").is_file():
        make_classification_set(p, "vit", data)
    report = pretrain_backbone(p, "vit", data, model_dir=work / "model",
                               init_file=work / "demo_vit.pth", metrics_dir=work)
    figures = {"overrides": overrides, "pooling": report["pooling"],
               "iterations": report["iterations"], "train_images": report["train_images"],
               "threads": p.threads, "pretrain_time_s": report["train_time_s"],
               "pretrain_cpu_s": report["process_cpu_time_s"], "held_out_map": report["val_map"],
               "held_out_label_accuracy": report["val_label_accuracy"]}
    merge_results(variant, figures)
    return figures


def classifier_of(variant: str) -> tuple[torch.nn.Module, dict]:
    """The trained classifier and its configuration: a pretraining variant's, or for
    `CAM_CLASSIFIER` the demo's CAM classifier (stage cam_classifier, models/cam_classifier)."""
    if variant == CAM_CLASSIFIER:
        config = effective_train_config(load_params(overrides={"method": "cam"}))
        model_file = Path("models/cam_classifier/model.pth")
    else:
        overrides = read_json(RESULTS)[variant].get("overrides", {})
        config = pretrain_config(load_pretrain_params(overrides=overrides), "vit")
        model_file = WORK / variant / "model" / "model.pth"
    model = create_method("cam", VOC_NUM_CLASSES, {**config, "init_weights": ""}).build_model()
    model.load_state_dict(torch.load(model_file, map_location="cpu", weights_only=True))
    return model.eval(), config


@torch.no_grad()
def evaluate_variant(variant: str) -> dict:
    """The classifier's CAMs on the demo val split (a pretraining variant: before any DuPL
    training)."""
    model, config = classifier_of(variant)
    params = load_params()
    paths = RunPaths.defaults(params)
    split = resolve_split(params, "val", paths.prepared)
    class_labels = read_class_labels(paths.class_labels, VOC_NUM_CLASSES)
    scales = config["method_options"].get("cam_scales", [1.0, 0.5, 1.5])
    device = torch.device("cpu")
    miou = {}
    for threshold in BKG_THRESHOLDS:
        matrix = cam_confusions({"net": model}, to_bgr_mean_subtracted, split, class_labels,
                                VOC_NUM_CLASSES, device, scales, threshold)["net"]
        miou[threshold] = float(matrix.scores()["miou"])
    best = max(miou, key=miou.get)
    labels = {}
    for image_id in split.ids:
        image = torch.from_numpy(to_bgr_mean_subtracted(read_image(split.image_path(image_id))))[None]
        hot = torch.from_numpy(multi_hot(class_labels[image_id], VOC_NUM_CLASSES))[None]
        cams, _ = multi_scale_cams(model, image, scales)
        labels[image_id] = cam_to_val_label(cams, hot, best)[0].numpy().astype(np.uint8)
    coverage = context_statistics(labels, split.gt_dir, split.image_dir.parent / CONTEXT_FOLDER,
                                  list(split.ids), VOC_NUM_CLASSES)
    result = {"val_cam_miou": {str(t): round(v, 4) for t, v in miou.items()},
              "val_cam_miou_best": round(miou[best], 4), "best_bkg_threshold": best,
              "val_cam_coverage": coverage}
    merge_results(variant, result)
    return result


def filtered_share(metrics: Path) -> float | None:
    """Mean share of pixels DuPL's GMM filter ignored, over the logged steps where it ran."""
    rows = (metrics / "train/plots/metrics/train/filtered.tsv").read_text().split("\n")[1:]
    values = [float(row.split("\t")[1]) for row in rows if row.strip()]
    active = [v for v in values if v > 0]
    return round(float(np.mean(active)), 4) if active else None


def cam_curves(live_dir: Path) -> dict[str, list]:
    """[iteration, val CAM mIoU] of each student from the run's validation curves."""
    curves = {}
    for student in ("student1", "student2"):
        rows = (live_dir / f"plots/metrics/val/cam_miou_{student}.tsv").read_text().split("\n")[1:]
        curves[student] = [[int(r.split("\t")[0]), round(float(r.split("\t")[-1]), 4)]
                           for r in rows if r.strip()]
    return curves


def dupl_variant(variant: str, seeds: list[int], threads: int | None,
                 iterations: int | None = None, val_every: int = 0) -> dict:
    """DuPL's demo preset from the variant's init (scratch: none), val scores per seed; with
    `iterations`, a run of that length (the phase table rescaled to it) under its own key;
    with `val_every`, both students' val CAM mIoU every that many iterations (`cam_curve`:
    how the CAMs move through DuPL's phases)."""
    init = "" if variant == "scratch" else str(WORK / variant / "demo_vit.pth")
    key, tag = ("dupl_val", "") if iterations is None else (f"dupl_val_{iterations}it", f"{iterations}it")
    if val_every:  # its own runs: validating adds CAM passes, kept apart from the plain runs
        key, tag = f"{key}_curve", f"{tag}curve"
    runs = {}
    for seed in seeds:
        params = load_params(overrides={"method": "dupl", "seed": seed, "train.init_weights": init,
                                        "train.nproc": 1, "infer.nproc": 1, "infer.weights": "",
                                        "train.iterations": iterations,
                                        "train.val_every": val_every or None})
        cell = WORK / variant / f"dupl{tag}-seed{seed}"
        paths = dataclasses.replace(RunPaths.defaults(params), model_dir=cell / "model",
                                    logits=cell / "logits", predictions=cell / "predictions",
                                    metrics=cell / "metrics")
        started = time.time()
        summary = run_training(params, paths, threads=threads)
        val = run_inference(params, paths, "val", threads=threads)
        runs[str(seed)] = {"val_miou": round(val["miou"], 4), "predictor": val.get("predictor"),
                           "students_val_cam_miou": {k: round(v, 4) for k, v in
                                                     val.get("cam_miou", {}).items()},
                           "gmm_filtered_share": filtered_share(paths.metrics),
                           **({"cam_curve": cam_curves(paths.live_dir)} if val_every else {}),
                           "train_wall_time_s": summary["wall_time_s"],
                           "wall_time_s": round(time.time() - started, 1)}
        shutil.rmtree(cell / "logits", ignore_errors=True)
        merge_results(variant, {key: {str(seed): runs[str(seed)]}})
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("pretrain", "evaluate", "dupl"))
    parser.add_argument("--variant", required=True)
    parser.add_argument("-S", "--set", action="append", default=[], metavar="[pretrain.]KEY=VALUE",
                        help="override of group pretrain, e.g. vit.num_train=5400")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--iterations", type=int, default=None, help="DuPL's run length")
    parser.add_argument("--val-every", type=int, default=0, help="CAM mIoU curve of the students")
    args = parser.parse_args()
    if args.command == "pretrain":
        print(pretrain_variant(args.variant, parse_overrides(args.set), args.threads))
    elif args.command == "evaluate":
        print(evaluate_variant(args.variant))
    else:
        print(dupl_variant(args.variant, args.seeds, args.threads, args.iterations, args.val_every))


if __name__ == "__main__":
    main()
