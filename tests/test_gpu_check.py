"""benchmarks/gpu_check.py stops at once on a machine without CUDA: one line, exit status 2."""
from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO


def test_gpu_check_fails_fast_without_cuda():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}   # no device, even on a GPU machine
    result = subprocess.run([sys.executable, str(REPO / "benchmarks/gpu_check.py")], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA device visible")
