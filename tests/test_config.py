import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from wsss_core.config import NUM_CLASSES, VOC_NUM_CLASSES, load_params, params_from_dict
from wsss_core.data.classes import DATASET_CLASSES
from wsss_core.errors import ConfigError
from wsss_core.pipeline.resolve import resolve_run


def test_repo_params_load_with_defaults():
    params = load_params(REPO / "params.yaml")
    assert params.method in ("baseline", "cdl_b", "cdl_e", "dupl")
    assert params.dataset == "synthetic" and params.num_classes == 21
    assert params.data.synthetic.classes == [1, 3, 8, 12, 15, 19]


def test_params_file_uses_block_lists():
    # `dvc exp run -S` rewrites flow lists; keeping block style keeps diffs small
    text = (REPO / "params.yaml").read_text()
    assert all("[" not in line.split("#")[0] for line in text.splitlines())


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"dataset": "ade20k"}, "dataset: expected one of 'synthetic', 'voc12', 'coco14'"),
        ({"data": {"nosie": 0.3}}, "unknown key 'data.nosie' (allowed: synthetic, noise,"),
        ({"learning_rate": 1}, "unknown key 'learning_rate' (allowed: method, dataset,"),
        ({"data": {"synthetic": {"num_train": "many"}}}, "data.synthetic.num_train: expected an integer, got 'many'"),
        ({"data": {"noise": True}}, "data.noise: expected a number, got True"),
        ({"data": {"noise": 1.5}}, "data.noise: must be in [0, 1]"),
        ({"data": {"synthetic": {"classes": [1, 25]}}}, "classes must be VOC ids in 1..20"),
        ({"data": "x"}, "data: expected a mapping"),
    ],
)
def test_invalid_params_are_one_line_errors(raw, message):
    with pytest.raises(ConfigError) as info:
        params_from_dict(raw)
    text = str(info.value)
    assert message in text and "\n" not in text


def test_class_counts_are_those_of_the_class_names():
    # the configuration's counts (no import of the data layer) and the names the reports use
    assert {name: len(names) for name, names in DATASET_CLASSES.items()} == NUM_CLASSES
    assert NUM_CLASSES["voc12"] == VOC_NUM_CLASSES == 21 and NUM_CLASSES["coco14"] == 81


def test_an_unknown_method_fails_when_a_stage_resolves_its_run():
    params = params_from_dict({"method": "cdl_x"})   # the loader does not import the methods
    with pytest.raises(ConfigError) as info:
        resolve_run(params)
    assert str(info.value) == ("params.yaml: method: unknown method 'cdl_x' (allowed: baseline, "
                               "cam, cdl_b, cdl_e, dupl)")


def test_loading_params_imports_neither_torch_nor_a_method():
    code = ("import sys; from wsss_core.config import load_params; load_params('params.yaml'); "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('wsss_core.methods')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_ints_are_accepted_for_floats_and_overrides_apply(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"data": {"noise": 0}}))
    params = load_params(path, overrides={"method": "cdl_e", "data.noise_seed": 3})
    assert params.data.noise == 0.0 and isinstance(params.data.noise, float)
    assert params.method == "cdl_e" and params.data.noise_seed == 3


def test_simulated_pseudo_labels_need_synthetic_dataset_and_legacy_keys_name_the_fix():
    with pytest.raises(ConfigError, match="pseudo_labels.source: simulate needs dataset 'synthetic'"):
        params_from_dict({"dataset": "voc12", "pseudo_labels": {"source": "simulate"}})
    with pytest.raises(ConfigError, match="pseudo_labels.simulate: removed; write "
                                          "pseudo_labels.source: simulate"):
        params_from_dict({"pseudo_labels": {"simulate": True}})
    with pytest.raises(ConfigError, match="pseudo_labels.source: is now the mode .* write "
                                          "source: files and path: labels.zip"):
        params_from_dict({"pseudo_labels": {"source": "labels.zip"}})
    params = params_from_dict({"dataset": "voc12", "pseudo_labels": {
        "source": "files", "path": "labels.zip", "name": "rib"}})
    assert params.num_classes == 21 and params.pseudo_labels.path == "labels.zip"
    assert params_from_dict({}).pseudo_labels.source == "simulate"


def test_refine_band_must_contain_the_background_threshold():
    with pytest.raises(ConfigError, match="pseudo_labels.refine: need low <= bkg_threshold <= high"):
        params_from_dict({"pseudo_labels": {"refine": {"bkg_threshold": 0.5, "high": 0.4}}})
    refine = params_from_dict({"pseudo_labels": {"refine": {"low": 0.3}}}).pseudo_labels.refine
    assert refine.band == (0.3, 0.4)  # high: the default bkg_threshold


def test_missing_and_malformed_params_file(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("method: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_method_options_reach_the_method_and_are_checked():
    from wsss_core.methods import create_method
    from wsss_core.pipeline.resolve import effective_train_config

    params = params_from_dict({"method": "cdl_e", "train": {"method_options": {"train_affinity_head": True}}})
    method = create_method("cdl_e", 21, effective_train_config(params))
    assert method.method.config.train_affinity_head is True
    params = params_from_dict({"method": "dupl", "train": {"method_options": {"discrepancy": "paper"}}})
    assert create_method("dupl", 21, effective_train_config(params)).cfg.discrepancy == "paper"
    params = params_from_dict({"method": "cdl_b", "train": {"method_options": {"tresh": 1}}})
    with pytest.raises(ConfigError, match="train.method_options.tresh: unknown key of method 'cdl_b'"):
        create_method("cdl_b", 21, effective_train_config(params))


@pytest.mark.parametrize("method, options, message", [
    ("dupl", {"gamma": "x"}, "params.yaml: train.method_options.gamma: expected a number, got 'x'"),
    ("dupl", {"discrepancy": "both"},
     "params.yaml: train.method_options.discrepancy: expected one of 'code', 'paper', got 'both'"),
    ("cdl_b", {"threshold_1": [0.9]},
     "params.yaml: train.method_options.threshold_1: expected a number, got [0.9]"),
    ("cdl_e", {"train_affinity_head": "yes"},
     "params.yaml: train.method_options.train_affinity_head: expected true/false or null, got 'yes'"),
    ("baseline", {"imagenet_init": 1},
     "params.yaml: train.method_options.imagenet_init: expected true/false, got 1"),
])
def test_method_options_are_typed_one_line_errors_before_any_data(method, options, message):
    """A wrong type fails in the configuration step (no data is read), naming the real key."""
    from wsss_core.pipeline.resolve import effective_train_config

    params = params_from_dict({"method": method, "train": {"method_options": options}})
    with pytest.raises(ConfigError) as info:
        effective_train_config(params)
    assert str(info.value) == message


def test_unknown_preset_names_the_allowed_ones():
    from wsss_core.pipeline.resolve import effective_train_config

    with pytest.raises(ConfigError, match="'voc' is not a preset of method 'cdl_b' .*voc12_coco_predtrain"):
        effective_train_config(params_from_dict({"method": "cdl_b", "train": {"preset": "voc"}}))


def test_demo_preset_adapts_cdl_and_train_values_still_win():
    from wsss_core.methods import create_method
    from wsss_core.pipeline.resolve import effective_train_config

    baseline = effective_train_config(params_from_dict({"method": "baseline"}))
    cdl = effective_train_config(params_from_dict({"method": "cdl_b"}))
    assert baseline["lr"] == 0.01 and baseline["method_options"] == {}
    assert cdl["lr"] == 0.025 and cdl["method_options"] == {"warmup_ratio": 0.4}
    assert "method_overrides" not in cdl and cdl["crop"] == baseline["crop"]
    mine = effective_train_config(params_from_dict({"method": "cdl_e", "train": {
        "lr": 0.001, "method_options": {"warmup_ratio": 0.2, "threshold_1": 0.8}}}))
    assert mine["lr"] == 0.001
    assert mine["method_options"] == {"warmup_ratio": 0.2, "threshold_1": 0.8}
    # paper presets keep the original schedule: correction from 10 %, no lr warm-up
    paper = effective_train_config(params_from_dict({"method": "cdl_b",
                                                     "train": {"preset": "voc12_coco_predtrain"}}))
    assert paper["lr"] == 2.5e-4 and "warmup_ratio" not in paper["method_options"]
    assert create_method("cdl_b", 21, paper).lr_factor(1) == 1.0


def test_deeplab_demo_lr_warms_up_linearly_then_decays():
    from wsss_core.methods import create_method
    from wsss_core.pipeline.resolve import effective_train_config

    method = create_method("baseline", 21, effective_train_config(params_from_dict({})))
    assert method.lr_factor(6) == pytest.approx(0.2)           # 6/30, poly still at k = 0
    assert method.lr_factor(15) == pytest.approx(0.5 * (1 - 10 / 300) ** 0.9)
    assert method.lr_factor(30) == pytest.approx((1 - 20 / 300) ** 0.9)  # last update at k=20
    assert method.lr_factor(31) == pytest.approx((1 - 30 / 300) ** 0.9)
