"""Training: the one loop (loop.py)."""
from .loop import (
    BEST_MODEL,
    BEST_STATE,
    CHECKPOINT_GLOB,
    LAST_MODEL,
    TrainingDiverged,
    fingerprint,
    folder_digest,
    images_stamp,
    latest_checkpoint,
    monitor_system,
    open_live,
    rng_state,
    set_rng_state,
    train,
    truncate_curves,
)

__all__ = ["BEST_MODEL", "BEST_STATE", "CHECKPOINT_GLOB", "LAST_MODEL", "TrainingDiverged",
           "fingerprint", "folder_digest", "images_stamp", "latest_checkpoint", "monitor_system",
           "open_live", "rng_state", "set_rng_state", "train", "truncate_curves"]
