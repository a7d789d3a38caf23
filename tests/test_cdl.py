"""CDL / baseline method logic: the original code's fixtures and small hand-computed cases."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import fixtures_dir
from wsss_core.data.transforms import cdl_strong_view
from wsss_core.errors import WsssError
from wsss_core.methods import build_model
from wsss_core.methods.deeplab.baseline import (
    BaselineConfig,
    BaselineMethod,
    balanced_cross_entropy,
    cross_entropy_ignore,
    imagenet_ramp,
    resize_labels,
)
from wsss_core.methods.deeplab.cdl import CdlConfig, CdlMethod, affinity_loss, dice_loss, update_labels
from wsss_core.models.deeplab_v2 import MscOutputs, affinity_cosine, affinity_dot
from wsss_core.schedules import set_lr_factor, stepped_poly_factor

# WSSS_CDL_FIXTURES points the tests at another fixture set with the same layout (held-out set)
FIXTURES = Path(os.environ.get("WSSS_CDL_FIXTURES", fixtures_dir("cdl")))


def load(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / name) as data:
        return {key: data[key] for key in data.files}


def cases(data: dict[str, np.ndarray]) -> list[str]:
    return sorted({key.split("__")[0] for key in data if "__" in key})


def t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


def close(value: torch.Tensor | float, expected: float, rel: float = 1e-5) -> bool:
    value = value.detach() if isinstance(value, torch.Tensor) else value
    return math.isclose(float(value), float(expected), rel_tol=rel, abs_tol=1e-7)


# --------------------------------------------------------------------------- fixtures
@pytest.mark.parametrize("variant", ["b", "e"])
def test_update_labels_fixture(variant):
    data = load(f"update_labels_{variant}.npz")
    for case in cases(data):
        get = lambda name, case=case: data[f"{case}__{name}"]  # noqa: E731
        labels = t(get("y").copy())
        corrected, credible = update_labels(
            t(get("z1")), t(get("z2")), t(get("A")), labels,
            threshold_1=float(get("main_th")), threshold_2=float(get("aux_th")))
        assert np.array_equal(corrected.numpy(), get("y_main")), case
        assert np.array_equal(corrected.numpy(), get("y_aux")), case
        assert np.array_equal(credible.numpy(), get("y_aff")), case
        assert np.array_equal(labels.numpy(), get("y")), "input labels must not be modified"


def test_dice_loss_fixture():
    data = load("dice_loss.npz")
    for case in cases(data):
        loss = dice_loss(t(data[f"{case}__logits"]), t(data[f"{case}__target"]))
        assert close(loss, data[f"{case}__loss"]), case
    assert float(dice_loss(t(data["all255__logits"]), t(data["all255__target"]))) == 1.0


@pytest.mark.parametrize("name, function", [("balanced_ce.npz", balanced_cross_entropy),
                                            ("ce_ignore.npz", cross_entropy_ignore)])
def test_cross_entropy_fixtures(name, function):
    data = load(name)
    for case in cases(data):
        logits, labels = t(data[f"{case}__logits"]), t(data[f"{case}__labels"])
        expected = float(data[f"{case}__loss"])
        unguarded = float(function(logits, labels, guard_empty=False))
        guarded = float(function(logits, labels))
        if math.isnan(expected):
            assert math.isnan(unguarded), case   # the original's behaviour
            assert math.isfinite(guarded), case  # our default guard
        else:
            assert close(unguarded, expected) and close(guarded, expected), case


@pytest.mark.parametrize("variant", ["b", "e"])
def test_affinity_loss_fixture(variant):
    data = load(f"affinity_loss_{variant}.npz")
    for case in cases(data):
        A, labels = t(data[f"{case}__A"]), t(data[f"{case}__labels"])
        weight = float(data[f"{case}__neg_weight"])
        for nclass in (None, 21):
            loss = affinity_loss(A, labels, negative_weight=weight, nclass=nclass)
            assert close(loss, data[f"{case}__loss"]), (case, nclass)
        pos = affinity_loss(A, labels, negative_weight=0.0)
        assert close(pos, data[f"{case}__loss_pos_term"]), case
    assert CdlMethod(f"cdl_{variant}").negative_weight == float(data["main__neg_weight"])


def test_affinity_loss_e_uses_mean_of_weak_and_strong_maps():
    data = load("affinity_loss_e.npz")
    weak = affinity_dot(t(data["main__f_weak"]))
    strong = affinity_dot(t(data["main__f_strong"]))
    assert np.allclose(weak.numpy(), load("update_labels_e.npz")["main__A"], rtol=1e-6)
    assert np.allclose((0.5 * weak + 0.5 * strong).numpy(), data["main__A"], rtol=1e-6)


@pytest.mark.parametrize("variant, function", [("b", affinity_cosine), ("e", affinity_dot)])
def test_affinity_map_fixture(variant, function):
    data = load(f"affinity_map_{variant}.npz")
    A = function(t(data["f"]))
    assert A.shape == data["A"].shape
    assert np.allclose(A.numpy(), data["A"], rtol=1e-5, atol=1e-6)
    if variant == "b":  # the all-zero embedding at pixel 0 gives exactly 0.5
        assert torch.all(A[0, 0] == 0.5) and torch.all(A[0, :, 0] == 0.5)


def test_resize_labels_fixture():
    data = load("resize_labels.npz")
    labels = t(data["square__labels"])
    outputs = [key for key in data if key.startswith("square__out_")]
    assert outputs
    for key in outputs:
        expected = data[key]
        assert np.array_equal(resize_labels(labels, expected.shape[-2:]).numpy(), expected), key
    # the original's (H, W) argument was read by PIL as (W, H): its output is our (W, H) call
    height, width = data["nonsquare__size_arg"]
    out = resize_labels(t(data["nonsquare__labels"]), (int(width), int(height)))
    assert np.array_equal(out.numpy(), data["nonsquare__out"])


@pytest.mark.parametrize("prefix", ["", "extra__"])
def test_poly_lr_fixture(prefix):
    data = load("poly_lr.npz")
    base_lr, step, power = float(data["base_lr"]), int(data["lr_decay"]), float(data["poly_power"])
    max_iter = int(data[f"{prefix}iter_max"])
    mults = data["group_mult"]
    for row, iteration in enumerate(data[f"{prefix}iterations"]):
        used = [m * base_lr * stepped_poly_factor(int(iteration), max_iter, step, power)
                for m in mults]
        after = [m * base_lr * stepped_poly_factor(int(iteration) + 1, max_iter, step, power)
                 for m in mults]
        assert np.allclose(used, data[f"{prefix}lr_used"][row], rtol=1e-12, atol=0)
        assert np.allclose(after, data[f"{prefix}lr_after_step"][row], rtol=1e-12, atol=0)


def test_set_lr_factor_drives_optimizer_groups():
    weights = [torch.nn.Parameter(torch.zeros(1)) for _ in range(3)]
    optimizer = torch.optim.SGD([{"params": [w], "lr": m * 2.5e-4, "initial_lr": m * 2.5e-4}
                                 for w, m in zip(weights, (1, 10, 20))], momentum=0.9)
    for iteration in (1, 10, 11, 21):
        set_lr_factor(optimizer, stepped_poly_factor(iteration, 20000))
    expected = (1 - 20 / 20000) ** 0.9
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(
        [2.5e-4 * expected, 2.5e-3 * expected, 5e-3 * expected], rel=1e-12)


# --------------------------------------------------------------------------- hand-computed
def _correction_case(affinity_to_target: tuple[float, float]):
    """1×4 image, 3 classes. Pixel 0: expert 1 credible (class 0); pixel 1: expert 2 credible
    (class 1); pixel 2: both unsure (incredible); pixel 3: mid confidences (unchanged)."""
    z1 = torch.tensor([[4.0, 0, 0], [0, 4.0, 0], [0.2, 0, 0], [0, 2.0, 0]]).T.reshape(1, 3, 1, 4)
    z2 = torch.tensor([[0.0, 0, 0], [0, 5.0, 0], [0, 0, 0.1], [0, 0, 1.5]]).T.reshape(1, 3, 1, 4)
    A = torch.full((1, 4, 4), 0.5)
    A[0, 0, 2], A[0, 1, 2] = affinity_to_target
    A[0, 2, 2] = A[0, 3, 2] = 1.0   # non-source pixels must not matter
    labels = torch.tensor([[[255, 0, 2, 2]]])
    return z1, z2, A, labels


@pytest.mark.parametrize("affinity_to_target, transferred", [((1.0, 0.0), 0), ((0.0, 1.0), 1)])
def test_update_labels_hand_computed(affinity_to_target, transferred):
    z1, z2, A, labels = _correction_case(affinity_to_target)
    corrected, credible = update_labels(z1, z2, A, labels)
    # q_2 = ½(z1+z2)_2 + ½(w0·(z1+z2)_0 + w1·(z1+z2)_1), w = softmax over sources of A[:, 2]
    w0 = math.exp(affinity_to_target[0] - 1)
    w1 = math.exp(affinity_to_target[1] - 1)
    w0, w1 = w0 / (w0 + w1 + 1e-5), w1 / (w0 + w1 + 1e-5)
    q = [0.5 * 0.2 + 0.5 * 4 * w0, 0.5 * 9 * w1, 0.5 * 0.1]
    assert int(np.argmax(q)) == transferred
    assert corrected.tolist() == [[[0, 1, transferred, 2]]]
    assert credible.tolist() == [[[0, 1, 255, 255]]]


def test_update_labels_without_sources_falls_back_to_expert_mean():
    z1 = torch.tensor([[0.2, 0.0, 0.0], [0.0, 0.3, 0.0]]).T.reshape(1, 3, 1, 2)
    z2 = torch.tensor([[0.0, 0.1, 0.0], [0.0, 0.0, 0.4]]).T.reshape(1, 3, 1, 2)
    corrected, credible = update_labels(z1, z2, torch.rand(1, 2, 2), torch.tensor([[[255, 255]]]))
    assert corrected.tolist() == [[[0, 2]]]        # argmax of ½(z1 + z2)
    assert credible.tolist() == [[[255, 255]]]


def test_update_labels_thresholds_belong_to_their_expert():
    # expert 1 at 0.9526 (credible for threshold_1 = 0.95, not for 0.96)
    z1 = torch.tensor([0.0, 3.0]).reshape(1, 2, 1, 1)
    z2 = torch.zeros(1, 2, 1, 1)
    labels = torch.tensor([[[0]]])
    A = torch.ones(1, 1, 1)
    assert update_labels(z1, z2, A, labels, threshold_1=0.95)[1].item() == 1
    assert update_labels(z1, z2, A, labels, threshold_1=0.96)[1].item() == 255
    assert update_labels(z2, z1, A, labels, threshold_2=0.96)[1].item() == 255


def test_dice_loss_hand_computed():
    logits = torch.zeros(1, 2, 1, 2)                 # p = 0.5 everywhere
    labels = torch.tensor([[[0, 255]]])
    # class 0: I = 0.5, U = 0.5 + 0.5 + 1 = 2; class 1: I = 0 → dice = (0.5 + 0) / 2
    assert close(dice_loss(logits, labels), 1 - 0.25)
    # masking the ignored pixel: U_0 = 1.5 → dice = (1/1.5 + 0) / 2
    assert close(dice_loss(logits, labels, mask_ignore=True), 1 - 1 / 3)
    assert close(dice_loss(logits, torch.full((1, 1, 2), 255)), 1.0)


def _ce_case():
    # per-pixel CE: ln 2, ln(4/3), ln 2, (ignored)
    logits = torch.tensor([[0.0, 0.0], [math.log(3), 0.0], [0.0, 0.0], [5.0, 0.0]])
    return logits.T.reshape(1, 2, 1, 4).clone().requires_grad_(True)


def test_balanced_and_plain_ce_hand_computed():
    ln2, ln43 = math.log(2), math.log(4 / 3)
    labels = torch.tensor([[[0, 0, 1, 255]]])
    assert close(balanced_cross_entropy(_ce_case(), labels), 0.5 * ((ln2 + ln43) / 2 + ln2))
    assert close(cross_entropy_ignore(_ce_case(), labels), (2 * ln2 + ln43) / 3)


@pytest.mark.parametrize("labels, expected", [
    ([0, 0, 255, 255], (math.log(2) + math.log(4 / 3)) / 2),   # no foreground
    ([255, 255, 1, 255], math.log(2)),                          # no background
    ([255, 255, 255, 255], 0.0),                                # nothing valid
])
def test_balanced_ce_empty_groups_are_finite(labels, expected):
    logits = _ce_case()
    labels = torch.tensor([[labels]])
    loss = balanced_cross_entropy(logits, labels)
    assert close(loss, expected)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert math.isnan(float(balanced_cross_entropy(_ce_case(), labels, guard_empty=False).detach()))


def test_affinity_loss_hand_computed():
    labels = torch.tensor([[[0, 0, 1, 255]]])
    A = torch.full((1, 4, 4), 0.5)
    A[0, 0, 1] = A[0, 1, 0] = 0.9
    A[0, 0, 2] = 0.2
    A[0, 3, :] = A[0, :, 3] = 0.01   # ignored pixel: no pair with it counts
    # P = {00, 11, 22 (0.5), 01, 10 (0.9)}; Q = {02 (0.2), 20, 12, 21 (0.5)}
    pos = -(3 * math.log(0.5 + 1e-5) + 2 * math.log(0.9 + 1e-5)) / (5 + 1e-5)
    neg = -(math.log(0.8 + 1e-5) + 3 * math.log(0.5 + 1e-5)) / (4 + 1e-5)
    assert close(affinity_loss(A, labels), pos + neg)
    assert close(affinity_loss(A, labels, negative_weight=2.0), pos + 2 * neg)


def test_affinity_loss_nclass_emulation():
    A = torch.full((1, 2, 2), 0.5)
    A[0, 0, 1] = A[0, 1, 0] = 0.9
    twenty_one = torch.tensor([[[21, 21]]])
    # with the original's nclass=21 a label 21 matches nothing: all four pairs are negatives
    expected = -(2 * math.log(0.5 + 1e-5) + 2 * math.log(0.1 + 1e-5)) / (4 + 1e-5)
    assert close(affinity_loss(A, twenty_one, nclass=21), expected)
    fixed = -(2 * math.log(0.5 + 1e-5) + 2 * math.log(0.9 + 1e-5)) / (4 + 1e-5)
    assert close(affinity_loss(A, twenty_one), fixed)
    with pytest.raises(WsssError, match="affinity_nclass"):
        affinity_loss(A, torch.tensor([[[22, 0]]]), nclass=21)


def test_imagenet_ramp():
    assert imagenet_ramp(1, True) == pytest.approx(0.02)
    assert imagenet_ramp(99, True) == pytest.approx(1.0)
    assert imagenet_ramp(100, True) == 1.0 and imagenet_ramp(5, False) == 1.0


# --------------------------------------------------------------------------- methods

def scalar(value: torch.Tensor) -> float:
    return float(value.detach())

def _fake_outputs(variant: str, batch=2, classes=4, seed=0) -> tuple[MscOutputs, torch.Tensor]:
    """Two MSC outputs (a 6×6 "1.0" entry and a 3×3 "0.5" entry) of random logits/maps."""
    generator = torch.Generator().manual_seed(seed)
    sizes = [(6, 6), (3, 3)]

    def logits(scale=3.0):
        return [(scale * torch.randn(batch, classes, *s, generator=generator)).requires_grad_()
                for s in sizes]

    def maps():
        return [torch.rand(batch, s[0] * s[1], s[0] * s[1], generator=generator).requires_grad_()
                for s in sizes]

    outputs = MscOutputs(names=["1.0", "0.5"], main=logits(), second=logits(),
                         third=logits() if variant == "cdl_e" else None, affinity=maps(),
                         affinity_strong=maps() if variant == "cdl_e" else None)
    labels = torch.randint(0, classes, (batch, 12, 12), generator=generator)
    labels[:, :3] = 255
    return outputs, labels


@pytest.mark.parametrize("variant", ["cdl_b", "cdl_e"])
@pytest.mark.parametrize("iteration, dice, correct", [(9, False, False), (10, True, False),
                                                       (11, True, True)])
def test_cdl_loss_matches_its_terms(variant, iteration, dice, correct):
    outputs, labels = _fake_outputs(variant)
    method = CdlMethod(variant)
    assert method.phase(iteration, 100) == (dice, correct)
    total, parts = method.compute_loss(outputs, labels, iteration, max_iter=100)
    expected = {"expert1": 0.0, "expert2": 0.0, "strong": 0.0, "affinity": 0.0}
    for i, z1 in enumerate(outputs.main):
        raw = resize_labels(labels, z1.shape[-2:])
        target = aff_target = raw
        if correct:
            target, aff_target = update_labels(z1, outputs.second[i], outputs.affinity[i], raw)
        expected["expert1"] += 0.2 * scalar(cross_entropy_ignore(z1, target))
        z2 = outputs.second[i]
        expected["expert2"] += 0.2 * scalar(dice_loss(z2, target) if dice
                                            else cross_entropy_ignore(z2, target))
        A = outputs.affinity[i]
        if variant == "cdl_e":
            expected["strong"] += 0.2 * scalar(cross_entropy_ignore(outputs.third[i], target))
            A = 0.5 * A + 0.5 * outputs.affinity_strong[i]
        expected["affinity"] += 0.4 * scalar(affinity_loss(A, aff_target, method.negative_weight))
    for name, value in expected.items():
        if name in parts:
            assert close(parts[name], value), name
    assert close(total, sum(expected.values()))
    assert close(parts["loss"], scalar(total))
    total.backward()
    assert outputs.main[0].grad is not None and outputs.affinity[1].grad is not None
    if correct:   # correction changed at least one label in this random case
        z1 = outputs.main[0]
        raw = resize_labels(labels, z1.shape[-2:])
        fixed, _ = update_labels(z1, outputs.second[0], outputs.affinity[0], raw)
        assert not torch.equal(fixed, raw)


def test_cdl_imagenet_init_uses_balanced_ce_and_ramp():
    outputs, labels = _fake_outputs("cdl_b")
    plain, _ = CdlMethod("cdl_b").compute_loss(outputs, labels, 5, 1000)
    ramped, _ = CdlMethod("cdl_b", CdlConfig(imagenet_init=True)).compute_loss(
        outputs, labels, 5, 1000)
    balanced = 0.0
    for i, z1 in enumerate(outputs.main):
        raw = resize_labels(labels, z1.shape[-2:])
        balanced += 0.2 * scalar(balanced_cross_entropy(z1, raw))
        balanced += 0.2 * scalar(balanced_cross_entropy(outputs.second[i], raw))
        balanced += 0.4 * scalar(affinity_loss(outputs.affinity[i], raw))
    assert close(ramped, balanced * (5 / 100 + 0.01))
    assert not close(plain, scalar(ramped))


def test_baseline_loss_is_ce_over_every_output():
    outputs, labels = _fake_outputs("cdl_b")
    total, parts = BaselineMethod().compute_loss(outputs, labels, 1, 10)
    expected = sum(scalar(cross_entropy_ignore(z, resize_labels(labels, z.shape[-2:])))
                   for z in outputs.main)
    assert close(total, expected) and close(parts["loss"], expected)
    balanced, _ = BaselineMethod(BaselineConfig(imagenet_init=True)).compute_loss(
        outputs, labels, 200, 1000)
    assert close(balanced, sum(scalar(balanced_cross_entropy(z, resize_labels(labels, z.shape[-2:])))
                               for z in outputs.main))


def _group_sizes(groups):
    return {g["name"]: len(g["params"]) for g in groups}


@pytest.mark.parametrize("method, flag, expected", [
    ("baseline", None, {"10x": 4, "20x": 4}),
    ("cdl_b", None, {"10x": 8, "20x": 8 + 13}),        # affinity: 5 convs + 4 BN × (γ, β)
    ("cdl_e", None, {"10x": 12, "20x": 12}),           # affinity head not optimised
    ("cdl_e", True, {"10x": 12, "20x": 12 + 13}),
    ("cdl_b", False, {"10x": 8, "20x": 8}),
])
def test_param_groups(method, flag, expected):
    model = build_model(method, 5, blocks=[1, 1, 1, 1], width=8)
    if method == "baseline":
        groups = BaselineMethod().param_groups(model, 1e-3, 5e-4)
    else:
        groups = CdlMethod(method, CdlConfig(train_affinity_head=flag)).param_groups(
            model, 1e-3, 5e-4)
    backbone_convs = [m for n, m in model.named_modules()
                      if "layer" in n and isinstance(m, torch.nn.Conv2d)]
    assert _group_sizes(groups) == {"1x": len(backbone_convs), **expected}
    assert [(g["lr"], g["initial_lr"], g["weight_decay"]) for g in groups] == [
        (1e-3, 1e-3, 5e-4), (1e-2, 1e-2, 5e-4), (2e-2, 2e-2, 0.0)]
    grouped = {id(p) for g in groups for p in g["params"]}
    backbone_bn = [p for n, p in model.named_parameters() if "layer" in n and ".bn." in n]
    assert backbone_bn and not any(id(p) in grouped for p in backbone_bn)
    assert len(grouped) == sum(len(g["params"]) for g in groups)   # no parameter twice
    torch.optim.SGD(groups, lr=1e-3, momentum=0.9)                  # accepted by torch


# --------------------------------------------------------------------------- strong view
def test_strong_photometric_is_seeded_photometric_and_keeps_shape():
    image = (np.arange(20 * 30 * 3) % 256).astype(np.uint8).reshape(20, 30, 3)
    first = cdl_strong_view(image, np.random.default_rng(3))
    again = cdl_strong_view(image, np.random.default_rng(3))
    assert first.shape == image.shape and first.dtype == np.uint8
    assert np.array_equal(first, again)
    outputs = [cdl_strong_view(image, np.random.default_rng(seed)) for seed in range(8)]
    assert any(not np.array_equal(out, image) for out in outputs)
    # some seed takes the grayscale branch: equal channels
    assert any(np.array_equal(o[..., 0], o[..., 1]) and np.array_equal(o[..., 1], o[..., 2])
               for o in (cdl_strong_view(image, np.random.default_rng(s)) for s in range(40)))
    with pytest.raises(ValueError):
        cdl_strong_view(image.astype(np.float32), np.random.default_rng(0))
