"""The benchmark's params: group `benchmark` of robustness/params.yaml (read like params.yaml:
an unknown key, a wrong type or a bad value is one line naming the key)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from wsss_core.config import load_group
from wsss_core.config_types import _check
from wsss_core.methods.registry import get_method

PARAMS_FILE = Path("robustness/params.yaml")


@dataclass
class BenchmarkParams:
    """The benchmark (robustness/dvc.yaml) on the synthetic data, reported on its test split.
    Image-level regime: CAM pseudo labels (pseudo_labels.cam / refine) → each pseudo-label
    method; each image-label method (DuPL) single-stage; DuPL's CAM pseudo labels → the
    `two_stage_method`. Controlled regime: each pseudo-label method at every simulated noise
    level. Every cell once per seed."""

    pseudo_label_methods: list[str] = field(default_factory=lambda: ["baseline", "cdl_b", "cdl_e"])
    image_label_methods: list[str] = field(default_factory=lambda: ["dupl"])
    noise_levels: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    # cells trained at once within one stage (its seeds)
    jobs: int = 3
    # CPU threads of each cell: fixed by the benchmark, not by the machine, because float sums
    # depend on the thread count (a rerun elsewhere with the same value gives the same numbers)
    threads: int = 1
    # CPU threads of the stages that make the CAM pseudo-label sets (one at a time)
    source_threads: int = 2
    # the method trained on DuPL's CAM pseudo labels: one of pseudo_label_methods, or best (the
    # best mean val mIoU with CRF on the CAM pseudo labels; chosen on val, reported on test)
    two_stage_method: str = "best"

    @property
    def methods(self) -> list[str]:
        return [*self.pseudo_label_methods, *self.image_label_methods]

    def validate(self, where: str) -> None:
        for key, learns_from in (("pseudo_label_methods", "pseudo_labels"),
                                 ("image_label_methods", "image_labels")):
            for index, name in enumerate(getattr(self, key)):
                record = get_method(name, f"{where}.{key}[{index}]")
                _check(record.learns_from == learns_from, f"{where}.{key}[{index}]",
                       f"method '{name}' learns from {record.learns_from.replace('_', ' ')}")
        for key in ("pseudo_label_methods", "noise_levels", "seeds"):
            values = getattr(self, key)
            _check(len(values) >= 1 and len(set(values)) == len(values), f"{where}.{key}",
                   "must list at least one value, without repeats")
        _check(isinstance(self.jobs, int) and self.jobs >= 1, f"{where}.jobs",
               "must be a whole number >= 1")
        _check(self.threads >= 1, f"{where}.threads", "must be >= 1")
        _check(self.source_threads >= 1, f"{where}.source_threads", "must be >= 1")
        _check(self.two_stage_method == "best" or self.two_stage_method in self.pseudo_label_methods,
               f"{where}.two_stage_method", "must be 'best' or one of pseudo_label_methods")
        _check(len(set(self.image_label_methods)) == len(self.image_label_methods),
               f"{where}.image_label_methods", "must not repeat a method")
        _check(all(0.0 <= n <= 1.0 for n in self.noise_levels), f"{where}.noise_levels",
               "must be in [0, 1]")


def load_benchmark_params(path: str | Path = PARAMS_FILE, overrides: dict | None = None
                          ) -> BenchmarkParams:
    """`benchmark` of robustness/params.yaml; `overrides` map dotted keys (`benchmark.seeds`)."""
    return load_group(path, "benchmark", BenchmarkParams, overrides)
