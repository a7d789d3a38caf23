"""CAMs → pseudo labels, independent of any training method: multi-scale CAMs of a ViT
classifier, the CAM label rules, PAR refinement and the two-background refinement (used by DuPL,
usable by any stage that turns a classifier's CAMs into pseudo labels).

The CAM stages of pseudo_labels.source cams/dupl use, beside these: `extract` (a split's CAMs
from a trained classifier), `store` (their compact float16 files and manifest) and `refine`
(stored CAMs → labels: none / PAR / DenseCRF); they are imported from their modules, not here,
since they reach into the data and CRF modules."""
from .boxes import box_mask, scale_box
from .cams import cam_to_train_label, cam_to_val_label, multi_scale_cams
from .par import PAR_DILATIONS, denormalize_to_unit, par_refine, refine_cams_two_backgrounds

__all__ = ["box_mask", "scale_box", "multi_scale_cams", "cam_to_train_label", "cam_to_val_label",
           "par_refine", "refine_cams_two_backgrounds", "denormalize_to_unit", "PAR_DILATIONS"]
