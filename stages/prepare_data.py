"""Stage prepare_data: generate (synthetic) or check/convert (voc12, coco14) the dataset.

Reads params `dataset`, `data.synthetic|voc12|coco14`; writes data/prepared/<dataset>/.
"""


from wsss_core.cli import run_stage
from wsss_core.config import load_params
from wsss_core.data.prepare import prepare_dataset


def main() -> None:
    summary = prepare_dataset(load_params())
    counts = ", ".join(f"{name}: {s['images']} images" for name, s in summary["splits"].items())
    print(f"prepared {summary['dataset']} ({counts})")


if __name__ == "__main__":
    run_stage(main)
