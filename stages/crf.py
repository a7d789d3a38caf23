"""Stage crf: DenseCRF refinement and scoring of the val logits.

Reads `data/logits/<method>/val/<id>.npy`, writes palette PNGs of class ids to
`data/predictions/<method>/val/<id>.png`, the scores with CRF (and, from the same pass, the
no-CRF mIoU) to metrics/scores_crf.json + metrics/scores_crf_per_class.csv, and a few
image | GT | no CRF | CRF panels to metrics/plots/overlays/. Rerunning after an interruption
reuses the predictions already written.
"""


from wsss_core.cli import run_stage
from wsss_core.config import load_params
from wsss_core.pipeline import run_crf

if __name__ == "__main__":
    run_stage(lambda: run_crf(load_params()))
