"""Validation during training (`train.val_every`): the val/miou curve, the best checkpoint
`model_best.pth` beside the last, the best score carried over a resume, `infer.checkpoint: best`;
and DVCLive's system metrics only on CUDA."""
from __future__ import annotations

import copy
import dataclasses
import json
import shutil

import pytest
import torch
from conftest import make_voc_dataset, tiny_cam_run

from tests.tiny_training import ToyMethod, ToySet, toy_config
from wsss_core.config import params_from_dict
from wsss_core.distributed import Context
from wsss_core.infer import MODEL_STAMP, file_digest
from wsss_core.methods.deeplab.presets import DEEPLAB_PRESETS
from wsss_core.pipeline.infer import run_inference
from wsss_core.pipeline.paths import RunPaths
from wsss_core.pipeline.train import run_training
from wsss_core.training import BEST_MODEL, LAST_MODEL, monitor_system, open_live, train

CPU = Context(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture(autouse=True)
def one_thread():
    """One CPU thread: no stall of spinning threads on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class ScriptedValidation:
    """Returns the given score at each iteration and keeps a copy of the weights it scored."""

    def __init__(self, scores: dict[int, float]):
        self.scores, self.seen = scores, {}

    def __call__(self, model, iteration):
        assert not model.training
        self.seen[iteration] = copy.deepcopy(model.state_dict())
        return {"miou": self.scores[iteration]}


class _Interrupt(Exception):
    pass


class StopAt(ToyMethod):
    def __init__(self, iteration):
        self.stop = iteration

    def training_loss(self, model, batch, iteration):
        if iteration == self.stop:
            raise _Interrupt
        return super().training_loss(model, batch, iteration)


def curve(live_dir, name="val/miou") -> list[tuple[int, float]]:
    rows = (live_dir / f"plots/metrics/{name}.tsv").read_text().splitlines()[1:]
    return [(int(r.split("\t")[0]), float(r.split("\t")[-1])) for r in rows]


def load(path):
    return torch.load(path, weights_only=True)


def equal_states(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_curve_is_logged_and_best_file_holds_the_best_scored_weights(tmp_path):
    # 7 iterations, every 2nd and the last scored: 2, 4, 6, 7; the best is iteration 4
    validate = ScriptedValidation({2: 0.25, 4: 0.5, 6: 0.5, 7: 0.4})
    config = {**toy_config(7), "val_every": 2, "checkpoint_every": 3}
    summary = train(ToyMethod(), ToySet(), CPU, config, tmp_path / "model", tmp_path / "live",
                    validate)
    assert curve(tmp_path / "live") == [(2, 0.25), (4, 0.5), (6, 0.5), (7, 0.4)]
    best, last = load(tmp_path / "model" / BEST_MODEL), load(tmp_path / "model" / LAST_MODEL)
    # the earliest of equal scores stays the best
    assert equal_states(best, validate.seen[4]) and not equal_states(best, validate.seen[6])
    assert equal_states(last, validate.seen[7]) and not equal_states(best, last)
    assert summary["best_val"] == {"miou": 0.5, "iteration": 4}


def test_resume_keeps_the_best_score_of_before_the_interruption(tmp_path):
    scores = {2: 0.5, 4: 0.3, 6: 0.4}
    config = {**toy_config(6), "val_every": 2, "checkpoint_every": 3}
    whole = ScriptedValidation(scores)
    train(ToyMethod(), ToySet(), CPU, config, tmp_path / "whole/model", tmp_path / "whole/live",
          whole)
    killed = tmp_path / "killed"
    with pytest.raises(_Interrupt):  # after the checkpoint of 3, and the validation of 4
        train(StopAt(5), ToySet(), CPU, config, killed / "model", killed / "live",
              ScriptedValidation(scores))
    assert load(killed / "model/checkpoints/checkpoint_3.pth")["best"] == {"miou": 0.5,
                                                                            "iteration": 2}
    resumed = ScriptedValidation(scores)
    summary = train(ToyMethod(), ToySet(), CPU, config, killed / "model", killed / "live",
                    resumed)
    assert summary["resumed_from_iteration"] == 3 and sorted(resumed.seen) == [4, 6]
    # without the restored 0.5 of iteration 2, iteration 4's 0.3 would have become the best
    assert equal_states(load(killed / "model" / BEST_MODEL), whole.seen[2])
    for name in (BEST_MODEL, LAST_MODEL):
        assert (killed / "model" / name).read_bytes() == (tmp_path / "whole/model" / name).read_bytes()
    assert curve(killed / "live") == curve(tmp_path / "whole/live") == sorted(scores.items())


def test_without_validation_the_best_file_is_the_last(tmp_path):
    train(ToyMethod(), ToySet(), CPU, toy_config(3), tmp_path / "model", tmp_path / "live")
    assert (tmp_path / "model" / BEST_MODEL).read_bytes() == (
        tmp_path / "model" / LAST_MODEL).read_bytes()
    assert not (tmp_path / "live/plots/metrics/val").exists()
    # a CPU run logs no system metrics (they would make the curves machine-dependent)
    assert not (tmp_path / "live/plots/metrics/system").exists()


def test_system_metrics_only_on_cuda(tmp_path):
    assert monitor_system(torch.device("cpu")) is False
    assert monitor_system(torch.device("cuda", 0)) is True
    assert open_live(tmp_path / "off", None, system=False)._system_monitor is None
    live = open_live(tmp_path / "on", None, system=True)
    try:
        assert live._system_monitor is not None
    finally:
        live._system_monitor.end()


# --------------------------------------------------------------------------- through the pipeline
def test_pipeline_validation_scores_like_inference_and_infer_loads_the_best(tmp_path,
                                                                            monkeypatch):
    """The val/miou of the best iteration (inference scales) is the infer stage's score of
    model_best.pth (`infer.checkpoint: best`): one inference and one metric code."""
    tiny = copy.deepcopy(DEEPLAB_PRESETS["demo"])
    tiny.update(iterations=4, batch_size=2, crop=24, checkpoint_every=2, log_every=1,
                warmup_iter=1, init_weights="", model={"blocks": [1, 1, 1, 1], "width": 8, "msc_scales": [0.5],
                                      "test_scales": [0.5], "freeze_bn": False})
    tiny.pop("method_overrides")
    monkeypatch.setitem(DEEPLAB_PRESETS, "tiny", tiny)
    root = tmp_path / "VOC2012"
    make_voc_dataset(root, {"train": ["t1", "t2", "t3", "t4"], "val": ["v1", "v2"]},
                     size=(24, 28))
    params = params_from_dict({
        "method": "baseline", "dataset": "voc12", "data": {"voc12": {"root": str(root)}},
        "pseudo_labels": {"source": "files", "path": str(root / "SegmentationClassAug")},
        "train": {"preset": "tiny", "device": "cpu", "val_every": 2, "val_scales": "inference"},
        "infer": {"device": "cpu", "checkpoint": "best"}, "evaluate": {"n_jobs": 1}})
    paths = RunPaths.defaults(params, tmp_path / "run")
    paths = dataclasses.replace(paths, prepared=tmp_path / "prepared")
    paths.prepared.mkdir()
    shutil.copytree(root / "SegmentationClassAug", paths.pseudo_labels)

    summary = run_training(params, paths, threads=1)

    val = curve(paths.live_dir)
    assert [step for step, _ in val] == [2, 4]
    best = summary["best_val"]
    assert best["miou"] == max(score for _, score in val)
    report = run_inference(params, paths, threads=1)
    best_file = paths.model_dir / BEST_MODEL
    assert (paths.logits_dir("val") / MODEL_STAMP).read_text().strip() == file_digest(best_file)
    assert report["miou"] == pytest.approx(best["miou"], abs=1e-12)
    assert json.loads(paths.run_config.read_text())["val_every"] == 2


def test_validation_curves_carry_the_methods_val_extras(tmp_path):
    # the CAM classifier's val extras (its CAM mIoU with the GT image labels and its mAP) are
    # scored at every validation, so the last point is what the infer stage reports for the
    # last model; DuPL's per-student CAM mIoU comes through the same way
    params, paths = tiny_cam_run(tmp_path, {"val_every": 1})
    run_training(params, paths, threads=1)
    cam_curve = curve(paths.live_dir, "val/cam_miou_gt_labels")
    assert [step for step, _ in cam_curve] == [1, 2]
    assert [step for step, _ in curve(paths.live_dir, "val/classifier_map")] == [1, 2]
    report = run_inference(params, paths, threads=1)
    assert cam_curve[-1][1] == pytest.approx(report["cam_miou_gt_labels"], abs=1e-6)


@pytest.mark.parametrize("raw,message", [
    ({"train": {"val_every": -1}}, "train.val_every: must be >= 0"),
    ({"train": {"val_scales": "multi"}}, "train.val_scales: expected one of 'single', 'inference'"),
    ({"train": {"precision": "fp8"}}, "train.precision: expected one of 'fp32', 'bf16', 'fp16'"),
    ({"infer": {"checkpoint": "first"}}, "infer.checkpoint: expected one of 'last', 'best'"),
    ({"infer": {"precision": "half"}}, "infer.precision: expected one of 'fp32', 'bf16', 'fp16'"),
])
def test_bad_values_are_one_line_config_errors(raw, message):
    from wsss_core.errors import ConfigError

    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as info:
        params_from_dict(raw)
    assert "\n" not in str(info.value)


def test_defaults_change_nothing():
    params = params_from_dict({})
    assert (params.train.precision, params.train.val_every, params.infer.checkpoint,
            params.infer.precision) == ("fp32", None, "last", "fp32")


def test_validation_is_sharded_over_the_ranks(tmp_path):
    """Each rank scores every world_size-th val image; the shards add up to the whole split."""
    from wsss_core.data.datasets import voc_layout_split
    from wsss_core.infer import score_split
    from wsss_core.methods import create_method
    from wsss_core.methods.registry import get_method

    make_voc_dataset(tmp_path, {"val": ["v1", "v2", "v3"]}, size=(20, 24))
    split = voc_layout_split(tmp_path, "val")
    config = copy.deepcopy(DEEPLAB_PRESETS["demo"])
    config.update(seed=0, init_weights="", model={"blocks": [1, 1, 1, 1], "width": 8, "msc_scales": [0.5],
                                 "test_scales": [0.5], "freeze_bn": True})
    torch.manual_seed(0)
    model = create_method("baseline", 21, config).build_model()
    record = get_method("baseline")
    predictors = record.predictors(config)

    def score(rank, world):
        ctx = Context(rank=rank, world_size=world, local_rank=0, device=torch.device("cpu"))
        # no process group: gather_object returns this rank's own share
        return score_split(model, predictors, record.normalize, split, 21, ctx)["main"]

    whole, first, second = score(0, 1), score(0, 2), score(1, 2)
    assert second.matrix.sum() > 0 and first.matrix.sum() > second.matrix.sum()  # 2 vs 1 image
    assert (first + second).matrix.tolist() == whole.matrix.tolist()
