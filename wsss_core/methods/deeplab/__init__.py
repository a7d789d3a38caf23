"""The DeepLab v2 family: the plain `baseline` and CDL's `cdl_b` / `cdl_e` (zbf1991/CDL), one
training adapter over their model heads and losses (`family`), presets in `presets`."""
from . import family  # noqa: F401  registers baseline, cdl_b, cdl_e
