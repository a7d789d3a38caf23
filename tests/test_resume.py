"""Exact resume: a training killed (SIGKILL) between two checkpoints and re-run ends with the
bytes of a run that was never interrupted; stable bytes of the saved torch files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from tests.tiny_training import CHECKPOINT_EVERY, ITERATIONS, running
from wsss_core.io import save_torch
from wsss_core.training import truncate_curves
from wsss_core.training.loop import _batches

# one thread per run: the same thread count gives the same floating-point sums
ENV = {**os.environ, "WSSS_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}


def start(out: Path, method: str, *options: str, nproc: int | None = None) -> subprocess.Popen:
    """The tiny training as a process of its own (under torchrun with `nproc` processes)."""
    launcher = [sys.executable] if nproc is None else [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={nproc}",
        "--rdzv-backend=c10d", "--rdzv-endpoint=localhost:0"]
    return subprocess.Popen([*launcher, "-m", "tests.tiny_training", str(out), method, *options],
                            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish(proc: subprocess.Popen) -> str:
    output = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, output
    return output


def kill_when_hanging(proc: subprocess.Popen, iteration: int, processes: int = 1) -> None:
    """SIGKILL `proc` once its `processes` training processes report that they reached the
    forward pass of `iteration`; return when they are gone (under torchrun they die with it)."""
    seen, hanging = [], []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(f"hanging at {iteration} "):
            hanging.append(int(line.split()[-1]))
            if len(hanging) == processes:
                proc.kill()
                proc.wait()
                deadline = time.time() + 10
                while any(running(pid) for pid in hanging) and time.time() < deadline:
                    time.sleep(0.1)
                assert not any(running(pid) for pid in hanging)
                return
    raise AssertionError("the run ended before the kill point:\n" + "".join(seen))


def curve_steps(out: Path) -> list[int]:
    rows = (out / "live/plots/metrics/train/loss.tsv").read_text().splitlines()[1:]
    return [int(row.split("\t")[0]) for row in rows]


def live_files(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out / "live")): p.read_text()
            for p in sorted((out / "live").rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["cdl_e", "dupl"])
def test_killed_run_resumes_to_the_bytes_of_an_uninterrupted_run(tmp_path, method):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    reference = start(whole, method)
    # killed in the 6th iteration: after the checkpoint of iteration 4, in the middle of the
    # third epoch (3 batches an epoch) and after the curves got steps 5; with 2 DataLoader
    # workers, which the resumed run does without
    kill_when_hanging(start(killed, method, "--hang-at", "6", "--num-workers", "2"), 6)
    assert [p.name for p in (killed / "model/checkpoints").iterdir()] == [
        f"checkpoint_{CHECKPOINT_EVERY}.pth"]
    assert curve_steps(killed) == [1, 2, 3, 4, 5]
    resumed = finish(start(killed, method))
    finish(reference)

    assert f"checkpoints/checkpoint_{CHECKPOINT_EVERY}.pth (iteration {CHECKPOINT_EVERY})" in resumed
    summaries = [json.loads((out / "summary.json").read_text()) for out in (whole, killed)]
    assert summaries[1]["resumed_from_iteration"] == CHECKPOINT_EVERY
    assert summaries[0]["final_losses"] == summaries[1]["final_losses"]
    weights = [torch.load(out / "model/model.pth", weights_only=True) for out in (whole, killed)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert (whole / "model/model.pth").read_bytes() == (killed / "model/model.pth").read_bytes()
    # every curve holds each step once, with the uninterrupted run's values
    assert curve_steps(killed) == list(range(1, ITERATIONS + 1))
    assert live_files(whole) == live_files(killed)


@pytest.mark.slow
def test_killed_two_process_run_resumes_to_the_bytes_of_an_uninterrupted_one(tmp_path):
    """Under torchrun each process has its own generators (dropout here) and log sums: the
    checkpoint holds both processes' and each gets its own back."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    reference = start(whole, "toy", nproc=2)
    kill_when_hanging(start(killed, "toy", "--hang-at", "6", nproc=2), 6, processes=2)
    resumed = finish(start(killed, "toy", nproc=2))
    finish(reference)
    assert f"checkpoint_{CHECKPOINT_EVERY}.pth (iteration {CHECKPOINT_EVERY})" in resumed
    assert (whole / "model/model.pth").read_bytes() == (killed / "model/model.pth").read_bytes()
    assert live_files(whole) == live_files(killed)


def test_save_torch_gives_the_same_bytes_for_the_same_object(tmp_path):
    state = {"weight": torch.arange(6.0).reshape(2, 3), "step": torch.tensor(7)}
    save_torch(state, tmp_path / "a.pth")
    save_torch(state, tmp_path / "b.pth")  # another name: torch.save alone names records after it
    save_torch(state, tmp_path / "a.pth")  # over an existing file
    assert (tmp_path / "a.pth").read_bytes() == (tmp_path / "b.pth").read_bytes()
    loaded = torch.load(tmp_path / "a.pth", weights_only=True)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pth", "b.pth"]  # no temporary left


def test_forced_retrain_writes_the_same_model_bytes(tmp_path):
    """`dvc repro -f train` must leave model.pth's hash alone when the weights are the same:
    a re-run of the finished run (it resumes at its last checkpoint) and a run from scratch."""
    from tests.tiny_training import train_toy

    model = tmp_path / "model/model.pth"
    train_toy(str(tmp_path), 4)
    first = model.read_bytes()
    assert train_toy(str(tmp_path), 4)["resumed_from_iteration"] == 4
    assert model.read_bytes() == first
    for checkpoint in (tmp_path / "model/checkpoints").iterdir():
        checkpoint.unlink()
    assert train_toy(str(tmp_path), 4)["resumed_from_iteration"] == 0
    assert model.read_bytes() == first


class _Indexed(torch.utils.data.Dataset):
    """Sample = (epoch, index), the two things a TrainSet sample's randomness derives from."""

    def __init__(self):
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return 7

    def __getitem__(self, index):
        return torch.tensor([self.epoch, index])


def _stream(epoch, position, count, workers=0):
    dataset = _Indexed()
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=1, rank=0, seed=5,
                                                  drop_last=True)
    stream = _batches(dataset, sampler, 2, {"num_workers": workers}, epoch, position)
    return [(e, p, batch.tolist()) for (e, p, batch), _ in zip(stream, range(count))]


def test_batch_stream_started_inside_an_epoch_continues_the_whole_stream():
    whole = _stream(0, 0, 9)  # 3 batches an epoch (7 images, batch 2, last one dropped)
    assert [(e, p) for e, p, _ in whole[:4]] == [(0, 1), (0, 2), (0, 3), (1, 1)]
    assert sorted(i for _, _, b in whole[:3] for _, i in b) != [0, 1, 2, 3, 4, 5]  # shuffled
    assert whole[0][2] != whole[3][2]  # reshuffled in the next epoch
    assert _stream(1, 1, 5) == whole[4:]  # 4 batches consumed: epoch 1 after its first batch
    assert _stream(1, 1, 5, workers=2) == whole[4:]


def test_truncated_curves_keep_the_steps_up_to_the_checkpoint(tmp_path):
    curve = tmp_path / "plots/metrics/train/loss.tsv"
    curve.parent.mkdir(parents=True)
    curve.write_text("step\tloss\n1\t0.5\n2\t0.25\n3\t0.125\n")
    timed = tmp_path / "plots/metrics/lr.tsv"
    timed.write_text("timestamp\tstep\tlr\n100\t2\t0.1\n101\t3\t0.1\n")
    (tmp_path / "plots/metrics/empty.tsv").write_text("")
    truncate_curves(tmp_path, 2)
    assert curve.read_text() == "step\tloss\n1\t0.5\n2\t0.25\n"
    assert timed.read_text() == "timestamp\tstep\tlr\n100\t2\t0.1\n"


def test_checkpoint_loads_weights_only_and_holds_the_resume_position(tmp_path):
    from tests.tiny_training import train_toy

    train_toy(str(tmp_path), 6)  # 4 samples, batch 2: 2 batches an epoch
    state = torch.load(tmp_path / "model/checkpoints/checkpoint_6.pth", weights_only=True)
    assert (state["iteration"], state["epoch"], state["position"]) == (6, 2, 2)
    assert len(state["processes"]) == 1 and set(state["processes"][0]["rng"]) == {
        "torch", "numpy", "python"}



def test_images_stamp_changes_when_the_images_are_redrawn(tmp_path):
    # the CAM classifier's labels (image-level) stay the same when the synthetic images are
    # redrawn with another appearance: the stamp of the images must tell the runs apart
    from wsss_core.training import images_stamp

    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    a.write_bytes(b"1234")
    b.write_bytes(b"5678")
    os.utime(a, ns=(10**18, 10**18))
    os.utime(b, ns=(10**18, 10**18))
    stamp = images_stamp([a, b])
    assert images_stamp([a, b]) == stamp                    # same files: an interrupted run resumes
    b.write_bytes(b"5679")                                  # same size, redrawn
    os.utime(b, ns=(10**18 + 1, 10**18 + 1))
    assert images_stamp([a, b]) != stamp
    os.utime(b, ns=(10**18, 10**18))
    assert images_stamp([a, b]) == stamp                    # (name, size, mtime) only
    b.write_bytes(b"56789")
    os.utime(b, ns=(10**18, 10**18))
    assert images_stamp([a, b]) != stamp                    # another size
