"""DuPL's loss terms, one per module."""
from .consistency import consistency_loss, consistency_target
from .discrepancy import discrepancy_loss
from .ptc import ptc_affinity_target, ptc_loss, ptc_token_labels
from .seg import balanced_seg_loss

__all__ = ["balanced_seg_loss", "ptc_affinity_target", "ptc_loss", "ptc_token_labels",
           "discrepancy_loss", "consistency_loss", "consistency_target"]
