"""Bad input is one line `error: <file|key>: <problem>` and exit status 2, also under torchrun.

The slow tests run the train and infer commands of dvc.yaml (wsss_core.launch, two ranks where it
matters) on a tiny VOC-layout repo copy and check the whole of stderr; the fast ones check the
pieces in-process: WsssErrors out of DataLoader workers, full disk and missing permission in the
atomic writers, the modes of the files they create.
"""
from __future__ import annotations

import errno
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import copy_repo, make_voc_dataset, run_script, set_param
from wsss_core.cli import run_stage, user_error_message
from wsss_core.errors import DataError
from wsss_core.io import atomic_dir, atomic_path, write_label, write_text

TRAIN_IDS = ["t0", "t1", "t2", "t3"]
VAL_IDS = ["v0", "v1"]  # with two ranks, v0 is rank 0's and v1 rank 1's


# --------------------------------------------------------------------------- stages under torchrun
@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """Data stages done, and an (untrained) model.pth for the infer stage."""
    repo = copy_repo(tmp_path_factory.mktemp("errors") / "repo")
    gts = make_voc_dataset(repo / "voc/VOC2012", {"train": TRAIN_IDS, "val": VAL_IDS})
    for image_id in TRAIN_IDS:
        write_label(repo / "labels" / f"{image_id}.png", np.where(gts[image_id] == 255, 0, gts[image_id]))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params.update(dataset="voc12", method="baseline")
    params["data"]["voc12"]["root"] = "voc/VOC2012"
    params["pseudo_labels"] = {"name": "tiny", "source": "files", "path": "labels"}
    params["train"].update(iterations=1, batch_size=2, crop=16, device="cpu")
    params["infer"]["device"] = "cpu"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_script(repo, "stages/prepare_data.py", check=True)
    run_script(repo, "stages/pseudo_labels.py", check=True)

    from wsss_core.config import load_params
    from wsss_core.methods import create_method
    from wsss_core.pipeline.resolve import effective_train_config

    loaded = load_params(repo / "params.yaml")
    config = {**effective_train_config(loaded), "init_weights": ""}
    model = create_method("baseline", loaded.num_classes, config).build_model()
    (repo / "models/baseline").mkdir(parents=True)
    torch.save(model.state_dict(), repo / "models/baseline/model.pth")
    return repo


@pytest.fixture
def repo(prepared, tmp_path) -> Path:
    return Path(shutil.copytree(prepared, tmp_path / "repo", symlinks=True))


# Faults injected into every process of a run (launcher and ranks) through sitecustomize
FAULTS = textwrap.dedent("""
    import errno, os, tempfile
    import numpy

    fault = os.environ.get("WSSS_TEST_FAULT")
    if fault == "disk_full":  # what a write() on a full disk raises: no file name
        def save(*args, **kwargs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        numpy.save = save
    elif fault == "bug":
        def save(*args, **kwargs):
            raise ZeroDivisionError("injected bug")
        numpy.save = save
    elif fault == "read_only_logits":  # as if data/logits/ were not writable
        real_mkstemp = tempfile.mkstemp
        def mkstemp(suffix=None, prefix=None, dir=None, text=False):
            if dir is not None and "logits" in str(dir):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES),
                                      os.path.join(str(dir), f"{prefix}x{suffix}"))
            return real_mkstemp(suffix, prefix, dir, text)
        tempfile.mkstemp = mkstemp
""")


def dvc_stage(repo: Path, stage: str, nproc: int, fault: str | None = None) -> subprocess.CompletedProcess:
    """Run `stage`'s command of dvc.yaml with `nproc` processes (as `dvc repro` would)."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[stage]["nproc"] = nproc

    def param(match: re.Match) -> str:  # dvc's ${key.sub} interpolation of params.yaml values
        value = params
        for key in match[1].split("."):
            value = value[key]
        return str(value)

    cmd = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"][stage]["cmd"]
    args = shlex.split(re.sub(r"\$\{([\w.]+)\}", param, cmd))
    assert args[0] == "python", cmd
    env = {**os.environ, "WSSS_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    if fault:
        inject = repo / "inject"
        inject.mkdir(exist_ok=True)
        (inject / "sitecustomize.py").write_text(FAULTS)
        env.update(PYTHONPATH=str(inject), WSSS_TEST_FAULT=fault)
    return subprocess.run([sys.executable, *args[1:]], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=600)


def assert_one_line_error(proc: subprocess.CompletedProcess, pattern: str) -> None:
    """The whole of stderr is one `error:` line matching `pattern`; exit status 2."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr)
    assert lines[0].startswith("error: ") and re.search(pattern, lines[0]), lines[0]


def _truncate(path: Path) -> None:
    """Keep the JPEG header (prepare_data reads it) but cut the pixel data: decoding fails."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.slow
def test_train_missing_pseudo_labels(repo):
    shutil.rmtree(repo / "data/pseudo_labels/tiny")
    assert_one_line_error(dvc_stage(repo, "train", 2),
                          r"^error: data/pseudo_labels/tiny: pseudo labels not found")


@pytest.mark.slow
def test_train_bad_params_value(repo):
    set_param(repo, "train.lr", -1)
    assert_one_line_error(dvc_stage(repo, "train", 2), r"^error: params.yaml: train.lr: must be > 0$")


@pytest.mark.slow
def test_train_corrupt_image_in_a_dataloader_worker(repo):
    # one rank's worker fails while the other rank waits for it in DDP's gradient all-reduce
    set_param(repo, "train.num_workers", 1)
    _truncate(repo / "voc/VOC2012/JPEGImages/t1.jpg")
    assert_one_line_error(dvc_stage(repo, "train", 2),
                          r"^error: voc/VOC2012/JPEGImages/t1.jpg: cannot decode image \(image file "
                          r"is truncated")


@pytest.mark.slow
def test_infer_corrupt_image_on_rank_1(repo):
    # rank 1 fails on its image while rank 0 has finished and waits in a barrier
    _truncate(repo / "voc/VOC2012/JPEGImages/v1.jpg")
    assert_one_line_error(dvc_stage(repo, "infer", 2),
                          r"^error: voc/VOC2012/JPEGImages/v1.jpg: cannot decode image")
    assert (repo / "data/logits/baseline/val/v0.npy").is_file()  # rank 0's work is kept


@pytest.mark.slow
def test_infer_disk_full(repo):
    proc = dvc_stage(repo, "infer", 2, fault="disk_full")
    assert_one_line_error(proc, r"^error: data/logits/baseline/val/v[01].npy: no space left on device$")
    assert not list((repo / "data/logits/baseline/val").glob("*.npy"))
    assert not list((repo / "data/logits/baseline/val").glob(".*.tmp"))  # no temporary leftovers


@pytest.mark.slow
def test_infer_permission_denied(repo):
    assert_one_line_error(dvc_stage(repo, "infer", 1, fault="read_only_logits"),
                          r"^error: data/logits/baseline/val/\.model_sha256: permission denied$")


@pytest.mark.slow
def test_a_bug_keeps_its_traceback(repo):
    proc = dvc_stage(repo, "infer", 1, fault="bug")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == "Traceback (most recent call last):" and "ZeroDivisionError: injected bug" in lines
    assert lines[-1] == "error: stages/infer.py: rank 0 exited with status 1"


# --------------------------------------------------------------------------- the pieces, in-process
class _FailingSet(torch.utils.data.Dataset):
    def __init__(self, error: Exception):
        self.error = error

    def __len__(self):
        return 1

    def __getitem__(self, index):
        raise self.error


def _worker_exception(error: Exception) -> Exception:
    loader = torch.utils.data.DataLoader(_FailingSet(error), num_workers=1)
    with pytest.raises(Exception) as info:
        next(iter(loader))
    return info.value


def test_dataloader_worker_keeps_the_wsss_error_message():
    wrapped = _worker_exception(DataError("images/a.jpg", "cannot decode image (truncated)"))
    assert isinstance(wrapped, RuntimeError) and "Caught DataError" in str(wrapped)  # torch's wrapping
    assert user_error_message(wrapped) == "images/a.jpg: cannot decode image (truncated)"
    assert user_error_message(_worker_exception(ValueError("a bug"))) is None  # bugs stay bugs


def test_run_stage_reports_os_errors_of_the_machine(capsys):
    def full_disk():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "metrics/train.json")

    with pytest.raises(SystemExit) as info:
        run_stage(full_disk)
    assert info.value.code == 2
    assert capsys.readouterr().err == "error: metrics/train.json: no space left on device\n"
    with pytest.raises(FileNotFoundError):  # not a problem of the machine: a bug's traceback
        run_stage(lambda: open("/nonexistent/file"))


def test_atomic_path_names_the_destination_on_a_full_disk(tmp_path, monkeypatch):
    dest = tmp_path / "out" / "x.npy"
    with pytest.raises(DataError) as info:
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # write() on a full disk
    assert str(info.value) == f"{dest}: no space left on device"
    assert list(dest.parent.iterdir()) == []

    # torch.save reports a full disk as RuntimeError("... unexpected pos ..."): told by free space
    with pytest.raises(RuntimeError, match="unexpected pos"):
        with atomic_path(dest):
            raise RuntimeError("unexpected pos 704 vs 598")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=100, used=100, free=0))
    with pytest.raises(DataError, match=r"x\.npy: no space left on device$"):
        with atomic_path(dest):
            raise RuntimeError("unexpected pos 704 vs 598")


def test_atomic_writers_name_the_path_of_a_missing_permission(tmp_path, monkeypatch):
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp_path / ".x.tmp"))

    with monkeypatch.context() as patch:
        patch.setattr(tempfile, "mkstemp", refuse)
        with pytest.raises(DataError, match=r"/out/a\.json: permission denied$"):
            write_text(tmp_path / "out" / "a.json", "{}")
    with pytest.raises(DataError) as info:  # inside a folder being built: its final path
        with atomic_dir(tmp_path / "labels") as tmp:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp / "sub/b.png"))
    assert str(info.value) == f"{tmp_path}/labels/sub/b.png: permission denied"


def test_outputs_get_the_modes_the_umask_allows(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    write_text(tmp_path / "a.txt", "x")
    with atomic_dir(tmp_path / "folder") as tmp:
        (tmp / "b.txt").write_text("y")
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o777 & ~umask
    if umask == 0o022:  # the usual umask: readable by everyone, as plain open()/mkdir() give
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
        assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o755


# --------------------------------------------------------------------------- init weights
def _tiny_deeplab_method(init_weights: Path, **overrides):
    from wsss_core.methods import create_method
    from wsss_core.methods.deeplab.presets import DEEPLAB_PRESETS

    config = {**DEEPLAB_PRESETS["demo"], "init_weights": str(init_weights), "seed": 0, **overrides}
    config["model"] = {**config["model"], "blocks": [1, 1, 1, 1], "width": 8}
    return create_method("baseline", 21, config)


def test_init_weights_matching_too_few_keys_are_an_error(tmp_path):
    from wsss_core.methods import build_model

    method = _tiny_deeplab_method(tmp_path / "init.pth")  # the demo preset's share: one half

    base = build_model("baseline", 21, blocks=[1, 1, 1, 1], width=8).base.state_dict()
    keys = [k for k in base if not k.endswith("num_batches_tracked")]
    # two real backbone tensors and the Caffe file's unused classifier: a file of another model
    init = {k: torch.ones_like(base[k]) for k in keys[:2]} | {"fc.weight": torch.zeros(3, 3)}
    torch.save(init, tmp_path / "init.pth")
    with pytest.raises(DataError) as info:
        method.build_model()
    assert str(info.value).startswith(f"{tmp_path / 'init.pth'}: init weights match only 2 of the "
                                      f"model's {len(keys)} keys (")
    model = _tiny_deeplab_method(tmp_path / "init.pth", init_min_share=0.0).build_model()
    assert torch.equal(model.base.state_dict()[keys[0]], torch.ones_like(base[keys[0]]))


def test_init_weights_file_that_is_not_a_torch_file(tmp_path):
    path = tmp_path / "init.pth"
    path.write_bytes(os.urandom(64) + b"definitely not a checkpoint")
    with pytest.raises(DataError) as info:
        _tiny_deeplab_method(path).build_model()
    message = str(info.value)
    assert message.startswith(f"{path}: not a PyTorch weights file (") and "\n" not in message
    assert "weights_only" not in message  # torch's advice to unpickle arbitrary code is not ours
