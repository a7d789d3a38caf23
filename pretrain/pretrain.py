"""The pretraining's steps: per demo backbone, render its classification set, train a CAM
classifier on it, export and check its backbone (`dvc repro pretrain/dvc.yaml`; params
`pretrain` of pretrain/params.yaml: shared keys and the backbone's own group `pretrain.resnet` /
`pretrain.vit`; `train.device` of params.yaml).

The papers fine-tune ImageNet (or COCO) pretrained backbones; the CPU demo cannot download them,
so this pipeline makes its own: per backbone a synthetic multi-label classification set
disjoint from the demo data (`pretrain.classification`: all 20 VOC classes, another seed,
image-level labels only, distractor textures on the background; its size, context and part
focus the backbone's own, in data/pretrain/<backbone>), on which method `cam` (a CAM
classifier) is trained through the one training loop with that demo backbone:

    resnet   the demo DeepLab's dilated ResNet (blocks and width of its demo preset)
             → models/init/demo_resnet.pth, keys `layer1.conv1.conv.weight`, ... (what
               `models.load_init_weights` loads into `model.base` of any DeepLab v2 model)
    vit      the demo DuPL student's ViT (its demo preset's timm name and overrides)
             → models/init/demo_vit.pth, timm keys (what `build_dupl_model(pretrained_path=)`
               loads into both students), the unused ImageNet head left out

Each export is loaded back into the demo network it is for before it is published, and each
classifier is scored on the held-out part of the set (mAP, label accuracy, exact match) in
metrics/pretrain/<backbone>.json. The folders and files (`DATA_DIRS`, `MODEL_DIR`, `INIT_FILES`,
`METRICS_DIR`) are the functions' defaults; a test passes its own.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch

from wsss_core.cli import progress
from wsss_core.config import VOC_NUM_CLASSES
from wsss_core.data.classes import multi_hot, read_class_labels
from wsss_core.data.datasets import voc_layout_split
from wsss_core.data.train_set import TrainSet
from wsss_core.data.transforms import to_bgr_mean_subtracted
from wsss_core.distributed import distributed
from wsss_core.errors import DataError, WsssError
from wsss_core.infer import file_digest
from wsss_core.io import read_image, save_torch, write_json
from wsss_core.methods import create_method
from wsss_core.methods.deeplab.presets import DEEPLAB_PRESETS
from wsss_core.methods.dupl.presets import DUPL_PRESETS
from wsss_core.methods.registry import get_method
from wsss_core.metrics import mean_average_precision
from wsss_core.models import load_init_weights, read_state_dict, unwrap
from wsss_core.models.vit_seg import build_dupl_model
from wsss_core.training import images_stamp, train

from .classification import classification_config, generate_classification_set
from .config import BACKBONES, PretrainParams, backbone_params

DATA_DIR = Path("data/pretrain")
# each backbone's classification set
DATA_DIRS = {backbone: DATA_DIR / backbone for backbone in BACKBONES}
MODEL_DIR = Path("models/pretrain")
METRICS_DIR = Path("metrics/pretrain")
INIT_FILES = {"resnet": Path("models/init/demo_resnet.pth"), "vit": Path("models/init/demo_vit.pth")}
# the cam presets whose optimiser and augmentation the pretraining uses
CAM_PRESET = {"resnet": "demo", "vit": "demo_vit"}


def make_classification_set(p: PretrainParams, backbone: str, out: Path | None = None) -> dict:
    """Render the `backbone`'s classification set (the shared set keys of params `pretrain` and
    its own `pretrain.<backbone>`) into `out`, default `DATA_DIRS[backbone]`."""
    cfg = classification_config(p, backbone)
    out = DATA_DIRS[backbone] if out is None else Path(out)
    return generate_classification_set(out, cfg, p.distractors, p.n_jobs)


def pretrain_config(p: PretrainParams, backbone: str) -> dict:
    """Effective training configuration of the `backbone` classifier: the cam preset with the
    batch and crop of params `pretrain` and the run length of `pretrain.<backbone>`, from
    scratch, seeded by `pretrain.seed`; the ViT pools by `pretrain.vit.pooling` (the ResNet's
    classifier always averages)."""
    iterations = backbone_params(p, backbone).iterations
    config = copy.deepcopy(get_method("cam").presets[CAM_PRESET[backbone]])
    config.update(iterations=iterations, batch_size=p.batch_size, crop=p.crop, init_weights="",
                  checkpoint_every=max(1, min(200, iterations)), log_every=10, num_workers=0,
                  seed=p.seed, preset=CAM_PRESET[backbone])
    config["method_options"] = {**config.get("method_options", {}), "backbone": backbone}
    if backbone == "vit":
        config["model"] = {**config["model"], "pooling": p.vit.pooling}
    return config


def _split(data: Path, name: str):
    split = voc_layout_split(data / "VOC2012", name)
    if not split.list_file.is_file():
        raise DataError(split.list_file, "classification set not found (run the pretrain data stage)")
    return split


@torch.no_grad()
def evaluate_classifier(model: torch.nn.Module, split, class_labels: dict[str, list[int]],
                        device: torch.device) -> dict:
    """Held-out figures of a multi-label classifier on whole images: mAP over classes, accuracy
    of the 20 per-class decisions (sigmoid > 0.5) and the share of images with all of them right."""
    net = unwrap(model).eval()
    scores, targets = [], []
    for image_id in progress(split.ids, "pretrain val"):
        image = torch.from_numpy(to_bgr_mean_subtracted(read_image(split.image_path(image_id))))
        scores.append(torch.sigmoid(net(image[None].to(device)))[0].cpu().numpy())
        targets.append(multi_hot(class_labels[image_id], VOC_NUM_CLASSES))
    scores, targets = np.stack(scores), np.stack(targets)
    decisions = (scores > 0.5) == (targets > 0.5)
    return {"val_map": round(float(mean_average_precision(scores, targets)), 4),
            "val_label_accuracy": round(float(decisions.mean()), 4),
            "val_exact_match": round(float(decisions.all(axis=1).mean()), 4),
            "val_images": len(split.ids)}


def backbone_state(model: torch.nn.Module, backbone: str) -> dict[str, torch.Tensor]:
    """The backbone's weights in the key layout of the network they initialise (see the module
    docstring); the ViT's unused ImageNet head is left out (`load_vit_weights` skips it)."""
    net = unwrap(model)
    if backbone == "resnet":
        return {k: v.detach().clone() for k, v in net.base.state_dict().items()}
    return {k: v.detach().clone() for k, v in net.encoder.state_dict().items()
            if not k.startswith("head.")}


def check_init_file(path: Path, backbone: str) -> None:
    """Load `path` into the demo network it is for, as the demo presets do, or fail: resnet into
    the demo DeepLab (`load_init_weights`, every backbone key supplied), vit into the demo DuPL
    (`build_dupl_model(pretrained_path=...)`, strict)."""
    if backbone == "resnet":
        preset = DEEPLAB_PRESETS["demo"]
        method = create_method("baseline", VOC_NUM_CLASSES, {**preset, "init_weights": ""})
        model = method.build_model()
        report = load_init_weights(model, path, min_share=preset["init_min_share"])
        backbone_missing = [k for k in report.missing if not k.startswith("base.aspp.")]
        if backbone_missing or report.unexpected:
            raise WsssError(f"{path}: does not cover the demo DeepLab's backbone (missing "
                            f"{backbone_missing[:3]}, unexpected {report.unexpected[:3]})")
    else:
        build_dupl_model(VOC_NUM_CLASSES, pretrained_path=str(path), **DUPL_PRESETS["demo"]["model"])


def pretrain_backbone(p: PretrainParams, backbone: str, data: Path | None = None,
                      model_dir: Path | None = None, init_file: Path | None = None,
                      metrics_dir: Path = METRICS_DIR, device: str = "auto") -> dict:
    """Train the `backbone` CAM classifier on the classification set in `data` (default
    `DATA_DIRS[backbone]`; resuming its checkpoints in `model_dir`, default
    models/pretrain/<backbone>) on `device` (params.yaml's `train.device`) with `p.threads` CPU
    threads, score it on the held-out split, export and check its backbone (`init_file`,
    default models/init/demo_<backbone>.pth) and write `metrics_dir`/<backbone>.json; returns
    that report."""
    config = pretrain_config(p, backbone)   # first: an unknown backbone is a one-line error
    data = DATA_DIRS[backbone] if data is None else Path(data)
    model_dir = MODEL_DIR / backbone if model_dir is None else Path(model_dir)
    init_file = INIT_FILES[backbone] if init_file is None else Path(init_file)
    labels_file = data / "cls_labels.json"
    if not labels_file.is_file():
        raise DataError(labels_file, "classification set not found (run the pretrain data stage)")
    train_split, val_split = _split(data, "train"), _split(data, "val")
    method = create_method("cam", VOC_NUM_CLASSES, config)
    dataset = TrainSet(train_split, get_method("cam"), VOC_NUM_CLASSES, config, p.seed, labels_file)
    # a checkpoint is resumed only by the same configuration on the same images (the labels
    # stay the same when pretrain.<backbone>.context or part_focus redraws them)
    identity = {**config, "labels_digest": file_digest(labels_file),
                "images_stamp": images_stamp([train_split.image_path(i) for i in train_split.ids])}
    started = time.process_time()
    with distributed(device, p.threads) as ctx:
        summary = train(method, dataset, ctx, identity, model_dir)
        model = method.build_model()
        model.load_state_dict(torch.load(model_dir / "model.pth", map_location="cpu",
                                         weights_only=True))
        scores = evaluate_classifier(model.to(ctx.device), val_split,
                                     read_class_labels(labels_file, VOC_NUM_CLASSES), ctx.device)
    save_torch(backbone_state(model.cpu(), backbone), init_file)
    try:
        check_init_file(init_file, backbone)
    except Exception:
        init_file.unlink()  # never leave an init file the demo cannot load
        raise
    report = {
        "backbone": backbone,
        "preset": config["preset"],
        "pooling": config["model"].get("pooling", "avg"),
        "iterations": summary["iterations"],
        "batch_size": config["batch_size"],
        "crop": config["crop"],
        "train_images": len(train_split.ids),
        "train_time_s": summary["wall_time_s"],
        "process_cpu_time_s": round(time.process_time() - started, 1),
        "threads": p.threads,
        "final_loss": round(float(summary["final_losses"]["loss"]), 4),
        **scores,
        "init_file": str(init_file),
        "init_tensors": len(read_state_dict(init_file)[0]),
        "init_bytes": init_file.stat().st_size,
    }
    write_json(metrics_dir / f"{backbone}.json", report)
    return report
