"""Stage pseudo_labels: publish the train split's pseudo labels to data/pseudo_labels/<name>/.

`pseudo_labels.source: synthetic` simulates CAM-like pseudo labels by corrupting the synthetic GT
with `data.noise`; any other source is a folder or archive of `<id>.png` that is validated and
copied. The output folder is a DVC output: `dvc push` stores it, `dvc pull` restores it.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wsss_core.cli import run_stage  # noqa: E402
from wsss_core.config import load_params  # noqa: E402
from wsss_core.data.datasets import pseudo_label_dir, resolve_split  # noqa: E402
from wsss_core.data.pseudo_labels import ingest_pseudo_labels, synthesize_pseudo_labels  # noqa: E402


def main() -> None:
    params = load_params()
    split = resolve_split(params, "train")
    out_dir = pseudo_label_dir(params)
    if params.pseudo_labels.source == "synthetic":
        info = synthesize_pseudo_labels(params, split, out_dir)
    else:
        info = ingest_pseudo_labels(params.pseudo_labels.source, split, params.num_classes, out_dir)
    print(f"pseudo labels: {info['labels']} files in {out_dir}")


if __name__ == "__main__":
    run_stage(main)
