"""What the DVC stages do, one module per stage, given validated params and the run's paths.

Each stage function takes `Params` and a `RunPaths` (the roots dvc.yaml passes the stage, or a
benchmark cell's own), calls `resolve.resolve_run` once (the method's record, the effective
training configuration, its adapter and the CRF kernel, validated before any data is read; the
per-split and per-run helpers, `infer_split`, `crf_split`, `train_run`, take the resolved run) and
drives the engine (`wsss_core.training`, `infer`, `crf`, `evaluate`, `cam`). The stage scripts in
stages/ only parse arguments and call these; the benchmark (robustness/) and the pretraining
(pretrain/) call them too. The top of the package: nothing in wsss_core imports it.
"""
