"""Where a run reads and writes: the roots of every stage's inputs and outputs.

The pipeline owns the paths: `dvc.yaml` passes each stage the roots it uses as arguments (built
from params there), and the benchmark hands each cell its own roots, so no code finds its files
through the working directory. Left-out arguments (a stage script run by hand) take the demo
pipeline's layout, relative to the working directory.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..config import Params
from ..training import LAST_MODEL


@dataclass(frozen=True)
class RunPaths:
    prepared: Path        # the prepare stage's output for the dataset (data/prepared/<dataset>)
    pseudo_labels: Path   # the train split's pseudo labels (data/pseudo_labels/<name>)
    model_dir: Path       # model.pth, config.json, checkpoints/ (models/<method>)
    logits: Path          # <split>/<id>.npy (compact: .npz), per method (data/logits/<method>)
    predictions: Path     # <split>/<id>.png after the CRF (data/predictions/<method>)
    metrics: Path         # metric files, DVCLive curves, plots (metrics)
    # the CAM classifier of pseudo_labels.source cams/dupl: model, checkpoints, its training
    # metrics (models/cam_classifier)
    classifier: Path = Path("models/cam_classifier")
    cams: Path = Path("data/cams/synthetic")   # its stored train CAMs (data/cams/<name>)

    @classmethod
    def defaults(cls, params: Params, root: str | Path = ".") -> RunPaths:
        root = Path(root)
        return cls(prepared=root / "data/prepared" / params.dataset,
                   pseudo_labels=root / "data/pseudo_labels" / params.pseudo_labels.name,
                   model_dir=root / "models" / params.method,
                   logits=root / "data/logits" / params.method,
                   predictions=root / "data/predictions" / params.method,
                   metrics=root / "metrics",
                   classifier=root / "models/cam_classifier",
                   cams=root / "data/cams" / params.pseudo_labels.name)

    # ----------------------------------------------------------------- derived files
    @property
    def class_labels(self) -> Path:
        """Image-level labels of every train/val image (written by the prepare stage)."""
        return self.prepared / "cls_labels.json"

    @property
    def synthetic_root(self) -> Path:
        """The generated synthetic dataset in VOC layout."""
        return self.prepared / "VOC2012"

    @property
    def model_file(self) -> Path:
        return self.model_dir / LAST_MODEL

    @property
    def run_config(self) -> Path:
        """The effective training configuration of the model beside it."""
        return self.model_dir / "config.json"

    def logits_dir(self, split: str) -> Path:
        return self.logits / split

    def predictions_dir(self, split: str) -> Path:
        return self.predictions / split

    @property
    def live_dir(self) -> Path:
        return self.metrics / "train"

    @property
    def train_summary(self) -> Path:
        return self.metrics / "train.json"

    @property
    def train_metrics(self) -> Path:
        return self.metrics / "train_metrics.json"

    @property
    def scores(self) -> Path:
        return self.scores_of("val")

    @property
    def scores_crf(self) -> Path:
        return self.scores_of("val", crf=True)

    def scores_of(self, split: str, crf: bool = False) -> Path:
        """The scores of a split: val keeps the historical names (scores.json,
        scores_crf.json), the held-out test split gets scores_test.json, scores_crf_test.json."""
        stem = "scores_crf" if crf else "scores"
        return self.metrics / (f"{stem}.json" if split == "val" else f"{stem}_{split}.json")

    @property
    def pseudo_label_scores(self) -> Path:
        return self.metrics / "pseudo_labels.json"

    @property
    def overlays(self) -> Path:
        return self.metrics / "plots" / "overlays"


def add_path_arguments(parser: argparse.ArgumentParser, *names: str) -> None:
    """`--<name>` options (e.g. `--model-dir`) for the roots a stage uses (fields of RunPaths)."""
    for name in names:
        parser.add_argument(f"--{name.replace('_', '-')}", type=Path, default=None,
                            help=f"{name.replace('_', ' ')} root (default: the demo layout)")


def paths_from_args(params: Params, args: argparse.Namespace) -> RunPaths:
    """The default layout with every root given on the command line replaced."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunPaths)
             if getattr(args, f.name, None) is not None}
    return dataclasses.replace(RunPaths.defaults(params), **given)
