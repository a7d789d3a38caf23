"""Stage cams: multi-scale (+ flip) CAMs of every train image's present classes from the
classifier of the cam_classifier stage, stored compactly (wsss_core.cam.store)."""
from __future__ import annotations

from ..cam.extract import split_class_labels, write_split_cams
from ..cam.store import read_manifest, write_manifest
from ..config import Params
from ..data.datasets import resolve_split
from ..distributed import distributed
from ..errors import DataError
from ..infer import file_digest
from ..io import atomic_dir, read_json
from ..models.checkpoints import load_trained_weights
from .cam_classifier import classifier_params, mark_stage_unused
from .paths import RunPaths
from .resolve import resolve_run


def compute_cams(params: Params, paths: RunPaths, threads: int | None = None) -> dict:
    """The CAMs of the classifier in `paths.classifier` into `paths.cams` (with source
    cams/dupl; otherwise a manifest saying the stage is unused)."""
    group = params.pseudo_labels
    if not group.from_cams:
        return mark_stage_unused(paths.cams, group.source, whole_folder=True)
    cparams = classifier_params(params)
    run = resolve_run(cparams)
    weights, trained = paths.classifier / "model.pth", paths.classifier / "config.json"
    if not weights.is_file() or not trained.is_file():
        raise DataError(weights, "CAM classifier not found (run the cam_classifier stage)")
    read_manifest(paths.classifier, group.source)  # trained for this source (cam vs dupl)
    trained_classes = read_json(trained).get("num_classes")
    if trained_classes != params.num_classes:
        raise DataError(trained, f"the classifier was trained for {trained_classes} classes, "
                                 f"dataset '{params.dataset}' has {params.num_classes}")
    split = resolve_split(params, "train", paths.prepared)
    labels = split_class_labels(paths.class_labels, split, params.num_classes)
    model = run.method.build_model()
    load_trained_weights(model, weights)
    cam_model = run.record.cam_model(model) if run.record.cam_model is not None else model
    with distributed(group.classifier.device, threads) as ctx:
        model.to(ctx.device).eval()
        with atomic_dir(paths.cams) as tmp:
            count = write_split_cams(cam_model, run.record.normalize, split, labels,
                                     params.num_classes, group.cam.scales, group.cam.flip,
                                     group.cam.stride, tmp, ctx.device, weights)
            manifest = {"used": True, "source": group.source, "method": cparams.method,
                        "classifier_sha256": file_digest(weights), "scales": group.cam.scales,
                        "flip": group.cam.flip, "stride": group.cam.stride, "images": count}
            write_manifest(tmp, manifest)
    print(f"cams: {count} train images ({cparams.method} classifier) in {paths.cams}", flush=True)
    return manifest
