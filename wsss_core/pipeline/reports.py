"""How the stages write scores: a metric file of headline numbers for `dvc metrics show` and
its per-class IoU beside it for `dvc plots`."""
from __future__ import annotations

from pathlib import Path

from ..io import write_json, write_text
from ..metrics import headline, per_class_csv


def write_report(path: Path, report: dict) -> None:
    """A scores report as a metric file of headline numbers (`dvc metrics show`) and its
    per-class IoU as `<stem>_per_class.csv` beside it (`dvc plots`)."""
    write_json(path, headline(report))
    write_text(path.with_name(path.stem + "_per_class.csv"), per_class_csv(report))


def write_unscored(path: Path, split: str) -> None:
    """The metric file of a split without GT (DVC declares it for every dataset)."""
    write_report(path, {"split": split, "miou": None, "per_class_iou": {}})


def fmt_miou(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
