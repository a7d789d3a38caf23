"""Stage train: train the configured method on the train split (run under torchrun).

Reads params `method`, `dataset`, `seed`, `train` (+ the preset it names); writes
models/<method>/model.pth, models/<method>/checkpoints/ (kept for resuming), DVCLive curves in
metrics/train/ and metrics/train.json (effective batch, world size, wall time, final losses).
"""


from wsss_core.cli import run_stage
from wsss_core.config import load_params
from wsss_core.pipeline import run_training

if __name__ == "__main__":
    run_stage(lambda: run_training(load_params()))
