"""Training and inference as 2 nodes × 1 process on localhost equal 1 process.

Each "node" is its own torchrun launch with `--nnodes=2 --node-rank=<k>` and the shared c10d
rendezvous endpoint localhost:<port> (what README "Several nodes" shows for real machines), gloo
between the ranks. The repo copy is test_train's: baseline on a tiny VOC-layout set with frozen
BatchNorm (the demo preset trains BN from scratch, and BN statistics are per process, so with
trained BN 2 processes could not equal 1 on any split of the batch) and one training scale.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.test_train import repo  # noqa: F401  (the fixture: a tiny repo copy)

pytestmark = pytest.mark.slow

STAGES = {"train": "stages/train.py", "infer": "stages/infer.py"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(copy: Path, script: str, nodes: int) -> None:
    """`script` as `nodes` nodes × 1 process: one torchrun launch per node, all meeting at one
    c10d rendezvous (node ranks are given, c10d assigns the process ranks). PYTHONPATH makes the
    stages import the copy's wsss_core (with the fixture's patched presets), not the editable
    install's."""
    endpoint = f"localhost:{_free_port()}"
    env = {**os.environ, "WSSS_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(copy)}
    launches = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}", "--nproc-per-node=1",
         f"--node-rank={rank}", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}",
         "--rdzv-id=multinode-test", script],
        cwd=copy, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in range(nodes)]
    outputs = [node.communicate(timeout=300)[0] for node in launches]
    for node, output in zip(launches, outputs):
        assert node.returncode == 0, output


def _logits(copy: Path) -> dict[str, np.ndarray]:
    folder = copy / "data/logits/baseline/val"
    return {path.name: np.load(path) for path in sorted(folder.glob("*.npy"))}


def _reset_outputs(copy: Path) -> None:
    for path in ("models/baseline", "metrics/train", "data/logits/baseline"):
        shutil.rmtree(copy / path, ignore_errors=True)


def test_two_nodes_train_and_infer_as_one_process(repo):  # noqa: F811
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["infer"].update(device="cpu", dtype="float32")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    launch(repo, STAGES["train"], nodes=1)
    launch(repo, STAGES["infer"], nodes=1)
    weights_one = torch.load(repo / "models/baseline/model.pth", weights_only=True)
    logits_one = _logits(repo)
    _reset_outputs(repo)

    launch(repo, STAGES["train"], nodes=2)
    launch(repo, STAGES["infer"], nodes=2)
    weights_two = torch.load(repo / "models/baseline/model.pth", weights_only=True)
    logits_two = _logits(repo)

    summary = json.loads((repo / "metrics/train.json").read_text())
    assert summary["world_size"] == 2 and summary["batch_per_process"] == 2
    assert weights_one.keys() == weights_two.keys()
    for key in weights_one:
        assert torch.allclose(weights_one[key].float(), weights_two[key].float(), atol=1e-5), key
    assert logits_one.keys() == logits_two.keys() and len(logits_one) == 2  # v0, v1 (sharded)
    for name, logits in logits_one.items():
        assert np.allclose(logits, logits_two[name], rtol=1e-4, atol=1e-4), name
