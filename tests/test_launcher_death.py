"""A torchrun worker does not outlive its launchers: killing torchrun, or the `dvc repro` that
started it, ends the training process within seconds instead of leaving an orphan that keeps
writing into models/."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.tiny_training import running

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")]

ENV = {**os.environ, "WSSS_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=1",
            "--rdzv-backend=c10d", "--rdzv-endpoint=localhost:0"]


def _hanging_worker(proc: subprocess.Popen) -> int:
    """The pid of the training worker once it reports that it hangs in iteration 2."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("hanging at 2 pid "):
            return int(line.split()[-1])
    raise AssertionError("the worker ended early:\n" + "".join(seen))


def _launch(tmp_path: Path, prefix: list[str], env: dict) -> subprocess.Popen:
    command = [*TORCHRUN, "-m", "tests.tiny_training", str(tmp_path / "run"), "toy",
               "--hang-at", "2"]
    return subprocess.Popen([*prefix, *command] if not prefix else [*prefix, " ".join(command)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _assert_ends(pid: int, within_s: float = 8.0) -> None:
    deadline = time.time() + within_s
    while running(pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not running(pid), f"worker {pid} still running {within_s} s after its launcher died"


@pytest.mark.parametrize("launcher", ["torchrun", "dvc"])
def test_worker_ends_when_its_launcher_is_killed(tmp_path, launcher):
    env, prefix = ENV, []
    if launcher == "dvc":
        # what `dvc repro` does: the stage command in a shell, DVC_ROOT and DVC_STAGE set
        # (`; true` keeps the shell from replacing itself by torchrun, as a longer command would)
        env = {**ENV, "DVC_ROOT": str(tmp_path), "DVC_STAGE": "train"}
        prefix = [sys.executable, "-c", "import subprocess, sys; subprocess.run(['/bin/sh', "
                  "'-c', sys.argv[1] + '; true'])"]
    proc = _launch(tmp_path, prefix, env)
    try:
        worker = _hanging_worker(proc)
        assert running(worker)
        os.kill(proc.pid, signal.SIGKILL)  # the launcher alone, not its process group
        proc.wait()
        _assert_ends(worker)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of what this test started
        except ProcessLookupError:
            pass
