"""Stage pseudo_labels: publish the train split's pseudo labels to data/pseudo_labels/<name>/.

`pseudo_labels.source: synthetic` simulates CAM-like pseudo labels by corrupting the synthetic GT
with `data.noise`; any other source is a folder or archive of `<id>.png` that is validated and
copied. The output folder is a DVC output: `dvc push` stores it, `dvc pull` restores it.
"""


from wsss_core.cli import run_stage
from wsss_core.config import load_params
from wsss_core.pipeline import publish_pseudo_labels

if __name__ == "__main__":
    run_stage(lambda: publish_pseudo_labels(load_params()))
