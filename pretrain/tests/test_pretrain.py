"""The pretraining pipeline: its classification set (disjoint from the demo data, image-level
labels only, distractors that leave the labels alone), backbone exports that the demo DeepLab and
DuPL load, and the demo presets' init weights (missing file, from scratch)."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from pretrain import pretrain as pretraining
from pretrain.classification import (
    add_distractors,
    classification_config,
    generate_classification_set,
    render_classification_sample,
)
from pretrain.config import PretrainParams, ResnetParams, VitParams, load_pretrain_params
from wsss_core.cli import user_error_message
from wsss_core.config import VOC_NUM_CLASSES, SyntheticData, params_from_dict
from wsss_core.data.classes import classes_in_label, read_class_labels
from wsss_core.errors import ConfigError, DataError
from wsss_core.methods import create_method
from wsss_core.methods.deeplab.presets import DEEPLAB_PRESETS
from wsss_core.methods.dupl.presets import DUPL_PRESETS
from wsss_core.models import load_init_weights
from wsss_core.models.vit_seg import build_dupl_model
from wsss_core.synthetic.render import render_sample_with_context, split_ids

TINY = PretrainParams(min_size=32, max_size=40, max_objects=2, distractors=3, batch_size=2,
                      crop=32, threads=1, n_jobs=1,
                      resnet=ResnetParams(num_train=20, num_val=3, iterations=3),
                      vit=VitParams(num_train=20, num_val=3, iterations=3))


def _with(p, backbone, **changes):
    """`p` with `changes` to its `backbone` group."""
    return dataclasses.replace(p, **{backbone: dataclasses.replace(getattr(p, backbone), **changes)})


def test_classification_set_is_disjoint_labels_only_and_has_every_class(tmp_path):
    demo = SyntheticData(context=0.3, part_focus=0.2)
    cfg = classification_config(_with(TINY, "resnet", context=0.6, part_focus=0.4), "resnet")
    assert (cfg.context, cfg.part_focus) == (0.6, 0.4)         # the set's own, not the demo's
    assert cfg.seed == 1000 != demo.seed and cfg.classes == list(range(1, 21))
    summary = generate_classification_set(tmp_path / "set", cfg, TINY.distractors)
    root = tmp_path / "set"
    assert not list(root.rglob("*.png"))                       # no masks
    ids = {split: (root / "VOC2012/ImageSets/Segmentation" / name).read_text().split()
           for split, name in (("train", "train_aug.txt"), ("val", "val.txt"))}
    assert ids["train"][0] == "cls_train_000000" and len(ids["val"]) == 3
    demo_ids = {i for names in split_ids(demo).values() for i in names}
    assert not demo_ids & {i for names in ids.values() for i in names}
    labels = read_class_labels(root / "cls_labels.json", VOC_NUM_CLASSES)
    for index, image_id in enumerate(ids["train"]):
        _, gt, _ = render_sample_with_context(cfg, "train", index)
        assert labels[image_id] == classes_in_label(gt, VOC_NUM_CLASSES)   # the objects' classes
        # the generator cycles the first object's class: image i of train starts with i + 1
        assert (index + 1) % 20 + 1 in labels[image_id]
    assert set().union(*(labels[i] for i in ids["train"])) == set(range(1, 21))
    assert summary["images"] == {"train": 20, "val": 3}
    assert sum(summary["images_per_class"]["train"].values()) == sum(
        len(labels[i]) for i in ids["train"])


def test_distractors_paint_the_background_only_and_keep_the_labels():
    cfg = classification_config(_with(TINY, "resnet", context=0.0, part_focus=0.0), "resnet")
    changed = 0
    for index in range(6):
        plain, plain_classes = render_classification_sample(cfg, "train", index, 0)
        painted, classes = render_classification_sample(cfg, "train", index, 3)
        _, gt, _ = render_sample_with_context(cfg, "train", index)
        assert classes == plain_classes == classes_in_label(gt, VOC_NUM_CLASSES)
        assert np.array_equal(painted[gt != 0], plain[gt != 0])
        changed += int((painted != plain).any())
    assert changed >= 3
    # directly: nothing outside the allowed pixels moves, something inside does
    rng = np.random.default_rng(0)
    image = np.full((40, 40, 3), 128, np.uint8)
    allowed = np.zeros((40, 40), bool)
    allowed[:, :20] = True
    out = add_distractors(image, allowed, rng, 6)
    assert np.array_equal(out[:, 20:], image[:, 20:]) and (out[:, :20] != 128).any()


def test_each_backbone_renders_its_own_set(tmp_path):
    """The two sets share the set keys of `pretrain` and differ by their own group only."""
    p = _with(_with(TINY, "resnet", num_train=6, num_val=2, context=0.8, part_focus=0.5),
              "vit", num_train=9, num_val=4, context=0.3, part_focus=0.0)
    configs = {b: classification_config(p, b) for b in ("resnet", "vit")}
    own = ("num_train", "num_val", "context", "part_focus")
    shared = {k: v for k, v in dataclasses.asdict(configs["resnet"]).items() if k not in own}
    assert {k: v for k, v in dataclasses.asdict(configs["vit"]).items() if k not in own} == shared
    for backbone, cfg in configs.items():
        assert {k: getattr(cfg, k) for k in own} == {k: getattr(getattr(p, backbone), k) for k in own}
    summaries = {b: pretraining.make_classification_set(p, b, tmp_path / b) for b in configs}
    assert summaries["resnet"]["images"] == {"train": 6, "val": 2}
    assert summaries["vit"]["images"] == {"train": 9, "val": 4}
    assert (summaries["resnet"]["context"], summaries["vit"]["context"]) == (0.8, 0.3)
    for backbone, n in (("resnet", 6), ("vit", 9)):
        ids = (tmp_path / backbone / "VOC2012/ImageSets/Segmentation/train_aug.txt").read_text().split()
        assert len(ids) == n
    # the same seed and ids, other co-occurrence statistics: other images
    first = "VOC2012/JPEGImages/cls_train_000000.jpg"
    assert (tmp_path / "resnet" / first).read_bytes() != (tmp_path / "vit" / first).read_bytes()
    # the run lengths are the backbones' own too
    p = _with(_with(p, "resnet", iterations=5), "vit", iterations=7)
    assert [pretraining.pretrain_config(p, b)["iterations"] for b in configs] == [5, 7]


def test_params_file_overrides_reach_the_backbones(tmp_path, monkeypatch):
    p = load_pretrain_params()     # the committed file (tests run from the repository root)
    assert (p.resnet.num_train, p.resnet.context, p.resnet.part_focus, p.resnet.iterations) == \
        (2700, 0.8, 0.5, 600)      # the set and run of the committed demo_resnet.pth
    assert (p.vit.num_train, p.vit.context, p.vit.part_focus, p.vit.iterations, p.vit.pooling) == \
        (5400, 0.3, 0.0, 2400, "max")
    assert pretraining.pretrain_config(p, "vit")["model"]["pooling"] == "max"
    p = load_pretrain_params(overrides={"pretrain.vit.pooling": "avg", "pretrain.vit.num_train": 100})
    assert (p.vit.pooling, p.vit.num_train, p.resnet.num_train) == ("avg", 100, 2700)
    config = pretraining.pretrain_config(p, "vit")
    assert config["model"]["pooling"] == "avg"
    assert create_method("cam", VOC_NUM_CLASSES, config).build_model().pooling == "avg"
    assert pretraining.pretrain_config(p, "resnet")["model"].get("pooling", "avg") == "avg"
    assert classification_config(p, "vit").num_train == 100


@pytest.mark.parametrize("override,message", [
    ({"pretrain.vit.pooling": "mean"}, "pretrain/params.yaml: pretrain.vit.pooling: must be avg or max"),
    ({"pretrain.resnet.context": 1.5}, "pretrain/params.yaml: pretrain.resnet.context: must be in [0, 1]"),
    ({"pretrain.resnet.pooling": "max"}, "unknown key 'pretrain.resnet.pooling'"),
    ({"pretrain.vit_pooling": "max"}, "unknown key 'pretrain.vit_pooling'"),
    ({"pretrain.batch_size": 50, "pretrain.vit.num_train": 40},
     "pretrain.batch_size: exceeds pretrain.vit.num_train"),
])
def test_invalid_params_name_the_full_key(override, message):
    with pytest.raises(ConfigError) as caught:
        load_pretrain_params(overrides=override)
    assert message in user_error_message(caught.value)


def _demo_classifier(backbone):
    config = pretraining.pretrain_config(PretrainParams(), backbone)
    return create_method("cam", VOC_NUM_CLASSES, config).build_model()


def test_exported_resnet_is_the_whole_backbone_of_the_demo_deeplab(tmp_path):
    path = tmp_path / "demo_resnet.pth"
    classifier = _demo_classifier("resnet")
    torch.save(pretraining.backbone_state(classifier, "resnet"), path)
    pretraining.check_init_file(path, "resnet")
    deeplab = create_method("baseline", VOC_NUM_CLASSES, {**DEEPLAB_PRESETS["demo"], "init_weights": ""}).build_model()
    report = load_init_weights(deeplab, path, min_share=DEEPLAB_PRESETS["demo"]["init_min_share"])
    assert report.missing == [f"base.aspp.c{i}.{p}" for i in range(4) for p in ("weight", "bias")]
    assert not report.unexpected
    for key, value in classifier.base.state_dict().items():
        assert torch.equal(deeplab.base.state_dict()[key], value), key


def test_exported_vit_loads_strictly_into_the_demo_dupl(tmp_path):
    path = tmp_path / "demo_vit.pth"
    classifier = _demo_classifier("vit")
    state = pretraining.backbone_state(classifier, "vit")
    assert not any(k.startswith("head.") for k in state)
    torch.save(state, path)
    model = build_dupl_model(VOC_NUM_CLASSES, pretrained_path=str(path), **DUPL_PRESETS["demo"]["model"])
    for student in model.students:
        own = student.encoder.state_dict()
        assert all(torch.equal(own[k], v) for k, v in state.items())
    torch.save({**state, "blocks.9.extra": torch.zeros(1)}, path)
    with pytest.raises(Exception, match="unexpected keys"):
        pretraining.check_init_file(path, "vit")


@pytest.mark.parametrize("backbone", ["resnet", "vit"])
def test_pretrain_backbone_trains_scores_and_exports(tmp_path, backbone):
    data = tmp_path / "data"
    pretraining.make_classification_set(TINY, backbone, data)
    report = pretraining.pretrain_backbone(TINY, backbone, data, tmp_path / "model",
                                           tmp_path / "init.pth", tmp_path / "metrics", device="cpu")
    assert report["iterations"] == 3 and report["train_images"] == 20
    assert report["threads"] == TINY.threads == 1                # passed to distributed()
    # the ViT is pretrained with its DuPL student's max pooling (pretrain.vit.pooling)
    assert report["pooling"] == {"resnet": "avg", "vit": TINY.vit.pooling}[backbone] == \
        {"resnet": "avg", "vit": "max"}[backbone]
    assert _demo_classifier(backbone).pooling == report["pooling"]
    assert 0.0 <= report["val_map"] <= 1.0 and report["val_images"] == 3
    assert json.loads((tmp_path / "metrics" / f"{backbone}.json").read_text()) == report
    pretraining.check_init_file(tmp_path / "init.pth", backbone)


@pytest.mark.parametrize("method,init", [("baseline", None), ("cam", None),
                                         ("dupl", None)])
def test_missing_init_file_is_a_one_line_error_naming_it(tmp_path, method, init, monkeypatch):
    monkeypatch.chdir(tmp_path)   # no models/init/ here
    params = params_from_dict({"method": method, "train": {"init_weights": init}})
    from wsss_core.pipeline.resolve import effective_train_config

    config = effective_train_config(params)
    assert config["init_weights"].startswith("models/init/demo_")
    with pytest.raises(DataError) as caught:
        create_method(method, VOC_NUM_CLASSES, config).build_model()
    assert user_error_message(caught.value).startswith(f"{config['init_weights']}: ")


def test_empty_init_weights_trains_from_scratch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from wsss_core.pipeline.resolve import effective_train_config

    for method in ("baseline", "dupl", "cam"):
        config = effective_train_config(params_from_dict({"method": method,
                                                          "train": {"init_weights": ""}}))
        assert config["init_weights"] == ""
        create_method(method, VOC_NUM_CLASSES, config).build_model()   # nothing is read
