"""The benchmark, a pipeline beside the product (`dvc repro robustness/dvc.yaml`): every method
trained on the same label sets with several seeds, reported on the synthetic test split.

`robustness.config` reads its params (group `benchmark` of robustness/params.yaml),
`robustness.cells` makes the label sets and trains the cells through `wsss_core.pipeline`, and
`robustness.report` gathers them into metrics/benchmark.json. It imports `wsss_core`; nothing in
`wsss_core` imports it.
"""
