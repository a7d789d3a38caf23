"""Training: the one loop (loop.py), the method contract it defines (method.py), checkpoints and
exact resume (checkpointer.py), DVCLive curves (live.py)."""
from .checkpointer import (
    BEST_MODEL,
    BEST_STATE,
    CHECKPOINT_GLOB,
    LAST_MODEL,
    Checkpointer,
    fingerprint,
    folder_digest,
    images_stamp,
    latest_checkpoint,
    rng_state,
    set_rng_state,
)
from .live import monitor_system, open_live, truncate_curves
from .loop import TrainingDiverged, train
from .method import TrainingMethod

__all__ = ["BEST_MODEL", "BEST_STATE", "CHECKPOINT_GLOB", "LAST_MODEL", "Checkpointer",
           "TrainingDiverged", "TrainingMethod", "fingerprint", "folder_digest", "images_stamp",
           "latest_checkpoint", "monitor_system", "open_live", "rng_state", "set_rng_state",
           "train", "truncate_curves"]
