"""The shared training loop run as the pipeline runs it (torchrun): DDP gradient averaging and
resume after a kill."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import copy_repo, make_voc_dataset, repo_env, run_script
from wsss_core.io import write_label


def torchrun(repo: Path, nproc: int | None, *, wait=True, script="stages/train.py", args=()):
    """Run the train stage (or another `script`) under torchrun with `nproc` processes (None:
    plain python, one process)."""
    cmd = [sys.executable, script, *args] if nproc is None else [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={nproc}",
        "--rdzv-backend=c10d", "--rdzv-endpoint=localhost:0", script, *args]
    env = {**repo_env(repo), "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


@pytest.fixture
def repo(tmp_path):
    """A repo copy on a tiny VOC-layout dataset whose pseudo labels have no ignore pixels and whose
    images equal the crop size, so every process sees the same number of valid pixels."""
    repo = copy_repo(tmp_path / "repo")
    ids = [f"t{i}" for i in range(8)]
    gts = make_voc_dataset(repo / "voc/VOC2012", {"train": ids, "val": ["v0", "v1"]}, size=(32, 32))
    for image_id, gt in gts.items():
        label = np.where(gt == 255, 0, gt)
        write_label(repo / "labels" / f"{image_id}.png", label)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params.update(dataset="voc12", method="baseline")
    params["data"]["voc12"]["root"] = "voc/VOC2012"
    params["pseudo_labels"] = {"name": "tiny", "source": "files", "path": "labels"}
    params["train"].update(iterations=3, batch_size=4, iter_size=1, crop=32, lr=0.01,
                           log_every=1, checkpoint_every=1, device="cpu")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # frozen BN and a single training scale: per-sample computation independent of the batch split
    preset_patch = repo / "wsss_core" / "methods" / "deeplab" / "presets.py"
    text = preset_patch.read_text()
    for before, after in (('"train_scales": [0.75, 1.0, 1.25]', '"train_scales": [1.0]'),
                          ('"freeze_bn": False}', '"freeze_bn": True}')):
        assert text.count(before) == 1, f"the demo preset no longer has {before}"
        text = text.replace(before, after)
    preset_patch.write_text(text)
    run_script(repo, "stages/prepare_data.py", check=True)
    run_script(repo, "stages/pseudo_labels.py", check=True)
    return repo


def _curve(live_dir: Path, term: str = "loss") -> list[float]:
    rows = (live_dir / f"plots/metrics/train/{term}.tsv").read_text().split("\n")[1:]
    return [float(r.split("\t")[1]) for r in rows if r]


def _losses(repo):
    return _curve(repo / "metrics/train")


@pytest.mark.slow
def test_two_processes_equal_one_process(repo):
    torchrun(repo, 1)
    one = _losses(repo)
    weights_one = torch.load(repo / "models/baseline/model.pth", weights_only=True)
    for path in ("models/baseline/checkpoints", "metrics/train"):
        for f in sorted((repo / path).rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
    torchrun(repo, 2)
    two = _losses(repo)
    weights_two = torch.load(repo / "models/baseline/model.pth", weights_only=True)
    assert len(one) == len(two) == 3
    assert np.allclose(one, two, rtol=1e-4, atol=0), (one, two)
    assert one[0] != one[-1]  # the model did learn between the compared steps
    for key in weights_one:
        assert torch.allclose(weights_one[key].float(), weights_two[key].float(), atol=1e-5), key
    summary = json.loads((repo / "metrics/train.json").read_text())
    assert summary["world_size"] == 2 and summary["effective_batch"] == 4


DUPL_STEPS = Path(__file__).with_name("dupl_ddp_steps.py")


@pytest.mark.slow
def test_dupl_two_processes_equal_one_process(tmp_path):
    """Two DuPL steps of the training loop, the second with the cross segmentation loss, on the
    same global batch of 4: 2 gloo processes × 2 images give the losses and weights of 1 × 4.
    tests/dupl_ddp_steps.py explains the batch: rank 1 gets the mirror images of rank 0's, so
    the per-process normalisation of L_seg sees equal counts while the gradients differ; PTC
    (its +1 in N + 1 is per process, as in the original) is weighted 0 there."""
    outs = {nproc: tmp_path / f"world_{nproc}" for nproc in (1, 2)}
    procs = {nproc: torchrun(tmp_path, nproc, wait=False, script=str(DUPL_STEPS), args=(str(out),))
             for nproc, out in outs.items()}  # both at once: most of their time is start-up
    for proc in procs.values():
        output = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, output
    terms = ("loss", "cls", "seg", "dis", "ptc", "reg", "filtered")
    one, two = ({term: _curve(out / "live", term) for term in terms} for out in outs.values())
    for term in terms:
        assert len(one[term]) == len(two[term]) == 2, term
        assert np.allclose(one[term], two[term], rtol=1e-4, atol=1e-6), (term, one[term], two[term])
    assert one["seg"][0] == 0 and one["seg"][1] > 0  # step 2 trains the cross seg loss
    assert one["filtered"] == one["reg"] == [0.0, 0.0]  # ANF and L_reg start after the run
    assert one["loss"][0] != one["loss"][1]
    weights_one, weights_two = (torch.load(out / "model.pth", weights_only=True)
                                for out in outs.values())
    for key in weights_one:
        assert torch.allclose(weights_one[key].float(), weights_two[key].float(), atol=1e-5), key


@pytest.mark.slow
def test_killed_run_resumes_from_checkpoint(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"].update(iterations=40, checkpoint_every=5, log_every=5, lr=0.001)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = torchrun(repo, None, wait=False)  # one process we can kill outright
    ckpt_dir = repo / "models/baseline/checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not any(ckpt_dir.glob("checkpoint_*.pth")):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = sorted(int(p.stem.split("_")[1]) for p in ckpt_dir.glob("checkpoint_*.pth"))
    assert saved and not (repo / "models/baseline/model.pth").exists()
    done = saved[-1]
    assert done < 40
    out = torchrun(repo, 1)
    assert f"resuming from models/baseline/checkpoints/checkpoint_{done}.pth" in out
    summary = json.loads((repo / "metrics/train.json").read_text())
    assert summary["resumed_from_iteration"] == done and summary["iterations"] == 40
    assert (repo / "models/baseline/model.pth").is_file()
    steps = [int(r.split("\t")[0]) for r in
             (repo / "metrics/train/plots/metrics/train/loss.tsv").read_text().split("\n")[1:] if r]
    assert steps[-1] == 40


@pytest.mark.slow
def test_rerun_of_a_finished_run_reports_the_whole_run(repo):
    # `dvc repro -f` on a finished run resumes at its last iteration: nothing left to train, but
    # the summary must still carry the run's training time and last losses, not 0 s and {}
    torchrun(repo, 1)
    first = json.loads((repo / "metrics/train.json").read_text())
    out = torchrun(repo, 1)
    assert "resuming from" in out
    again = json.loads((repo / "metrics/train.json").read_text())
    assert again["resumed_from_iteration"] == again["iterations"]
    assert again["wall_time_s"] >= first["wall_time_s"] > 0
    assert again["final_losses"] == first["final_losses"] and first["final_losses"]["loss"] > 0


@pytest.mark.slow
def test_changed_configuration_does_not_resume(repo):
    torchrun(repo, 1)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["lr"] = 0.005
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = torchrun(repo, 1)
    assert "resuming" not in out
    assert json.loads((repo / "metrics/train.json").read_text())["resumed_from_iteration"] == 0


class _ToySet(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        return {"x": torch.tensor([3.0, 4.0])}

    def set_epoch(self, epoch):
        pass


class _ToyMethod:
    """w·x with a huge loss scale: one SGD step (lr 1) moves w by the (clipped) gradient."""
    name, family, needs_strong_view, find_unused_parameters = "toy", "deeplab", False, False

    def build_model(self):
        model = torch.nn.Linear(2, 1, bias=False)
        torch.nn.init.zeros_(model.weight)
        return model

    def optimizer(self, model):
        return torch.optim.SGD([{"params": model.parameters(), "lr": 1.0, "initial_lr": 1.0}])

    def lr_factor(self, iteration):
        return 1.0

    def training_loss(self, model, batch, iteration):
        loss = 1000.0 * model(batch["x"]).mean()
        return loss, {"loss": float(loss.detach())}

    def predictors(self):
        return {}


@pytest.mark.parametrize("clip, expected", [(None, [3000.0, 4000.0]), (1.0, [0.6, 0.8])])
def test_loop_clips_the_gradient_norm_when_configured(tmp_path, clip, expected):
    from wsss_core.distributed import Context
    from wsss_core.training import train

    config = {"iterations": 1, "batch_size": 2, "iter_size": 1, "num_workers": 0,
              "checkpoint_every": 1, "log_every": 1, "seed": 0, "grad_clip": clip}
    ctx = Context(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    summary = train(_ToyMethod(), _ToySet(), ctx, config, tmp_path)
    weight = torch.load(tmp_path / "model.pth")["weight"]
    # gradient of 1000·mean(w·x) is 1000·x = (3000, 4000), norm 5000; SGD subtracts it
    assert torch.allclose(-weight, torch.tensor([expected]), rtol=1e-5)
    assert ("grad_norm" in summary["final_losses"]) == (clip is not None)
    if clip is not None:
        assert summary["final_losses"]["grad_norm"] == pytest.approx(5000.0)
