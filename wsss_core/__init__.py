"""wsss_core: weakly supervised semantic segmentation pipeline (CDL, DuPL, DeepLab v2 baseline)."""

__version__ = "0.1.0"
