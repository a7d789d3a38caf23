"""The checkpointer's resume decision on a 2-weight model: the newest checkpoint of the run's
own configuration is loaded; another configuration's are deleted and the run starts afresh."""
from __future__ import annotations

import shutil

import torch

from wsss_core.distributed import Context
from wsss_core.training import BEST_STATE, Checkpointer, fingerprint

CPU = Context(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
CONFIG = {"iterations": 10, "seed": 3, "num_workers": 0}


def _parts(weight: float, lr: float = 0.1):
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(weight)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return model, optimizer, torch.amp.GradScaler("cpu", enabled=False)


def _save(checkpointer: Checkpointer, iteration: int) -> None:
    """A checkpoint whose weights and learning rate are the iteration's number."""
    model, optimizer, scaler = _parts(float(iteration), lr=float(iteration))
    checkpointer.save(model, optimizer, scaler, iteration=iteration, epoch=iteration // 3,
                      position=iteration % 3, log_sums={"loss": 0.5 * iteration}, log_count=1,
                      train_time_s=7.0, last_terms={"loss": 1.5},
                      best={"miou": 0.25, "iteration": 2})


def test_the_newest_checkpoint_of_the_same_configuration_is_resumed(tmp_path, capsys):
    checkpointer = Checkpointer(tmp_path, CONFIG, CPU)
    checkpointer.folder.mkdir()
    _save(checkpointer, 2)
    kept = tmp_path / "checkpoint_2.pth"
    shutil.copy(checkpointer.folder / "checkpoint_2.pth", kept)
    _save(checkpointer, 10)   # deletes checkpoint_2.pth
    assert sorted(p.name for p in checkpointer.folder.iterdir()) == ["checkpoint_10.pth"]
    shutil.copy(kept, checkpointer.folder / "checkpoint_2.pth")   # "10" sorts before "2" as text
    (checkpointer.folder / BEST_STATE).write_bytes(b"best")

    model, optimizer, scaler = _parts(0.0)
    # num_workers cannot change what a run computes: its checkpoints resume all the same
    resumed = Checkpointer(tmp_path, {**CONFIG, "num_workers": 4}, CPU).resume(model, optimizer,
                                                                              scaler)
    assert resumed.checkpoint == str(checkpointer.folder / "checkpoint_10.pth")
    assert (resumed.iteration, resumed.epoch, resumed.position) == (10, 3, 1)
    assert model.weight.tolist() == [[10.0, 10.0]]
    assert optimizer.param_groups[0]["lr"] == 10.0
    assert (resumed.log_sums, resumed.log_count) == ({"loss": 5.0}, 1)
    assert set(resumed.rng) == {"torch", "numpy", "python"}
    assert (resumed.train_time_s, resumed.last_terms) == (7.0, {"loss": 1.5})
    assert resumed.best == {"miou": 0.25, "iteration": 2}
    assert (checkpointer.folder / BEST_STATE).read_bytes() == b"best"   # this run's best stays
    assert capsys.readouterr().out == f"resuming from {resumed.checkpoint} (iteration 10)\n"


def test_another_configuration_s_checkpoints_are_deleted_and_the_run_starts_afresh(tmp_path):
    other = Checkpointer(tmp_path, {**CONFIG, "seed": 4}, CPU)
    assert other.run_id != fingerprint(CONFIG)
    other.folder.mkdir()
    _save(other, 2)
    (other.folder / BEST_STATE).write_bytes(b"best")

    model, optimizer, scaler = _parts(0.0)
    resumed = Checkpointer(tmp_path, CONFIG, CPU).resume(model, optimizer, scaler)
    assert resumed.checkpoint is None and resumed.iteration == 0 and resumed.rng is None
    assert (resumed.log_sums, resumed.log_count, resumed.best) == ({}, 0, None)
    assert list(other.folder.iterdir()) == []   # the checkpoint and the earlier best are gone
    assert model.weight.tolist() == [[0.0, 0.0]] and optimizer.param_groups[0]["lr"] == 0.1


def test_a_checkpoint_of_another_process_count_resumes_without_the_process_state(tmp_path,
                                                                                    capsys):
    two = Context(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    checkpointer = Checkpointer(tmp_path, CONFIG, CPU)
    checkpointer.folder.mkdir()
    _save(checkpointer, 4)   # made by 1 process
    resumed = Checkpointer(tmp_path, CONFIG, two).resume(*_parts(0.0))
    assert resumed.iteration == 4
    assert (resumed.rng, resumed.log_sums, resumed.log_count) == (None, {}, 0)
    assert "was made by 1 process(es), not 2" in capsys.readouterr().out
