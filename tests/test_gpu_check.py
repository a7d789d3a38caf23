"""benchmarks/gpu_check.py stops at once on a machine without CUDA: one line, exit status 2."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import torch
from conftest import REPO


def test_gpu_check_fails_fast_without_cuda():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}   # no device, even on a GPU machine
    result = subprocess.run([sys.executable, str(REPO / "benchmarks/gpu_check.py")], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA device visible")


def test_loss_comparison_runs_on_the_cpu():
    """The one part of the check that needs no GPU, so a GPU run cannot fail on it."""
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks/gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # no stall of spinning threads on a loaded machine
    try:
        line = gpu_check.loss_curves(2, device="cpu", batch=1, side=25,
                                     precisions=("fp32", "bf16"))
    finally:
        torch.set_num_threads(threads)
    match = re.fullmatch(r"2 steps: final loss fp32 ([\d.]+), bf16 ([\d.]+); largest relative "
                         r"gap to fp32 over the curve: bf16 ([\d.]+)%", line)
    assert match, line
    fp32, bf16, gap = map(float, match.groups())
    # the training loop's bf16 path (autocast forward, float32 losses): within 10 %
    assert fp32 > 0 and bf16 != fp32 and abs(bf16 - fp32) / fp32 < 0.1 and gap < 10
